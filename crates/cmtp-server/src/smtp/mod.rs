//! The SMTP gateway (PROTOCOL.md §19): cmtpd as a domain's whole mail
//! server.
//!
//! - **Inbound** (this module): `[smtp] listen` accepts SMTP for the
//!   domain's users and aliases (never relays), within the same connection
//!   slots and per-peer budgets as CMTP (`limiter`, `budget`) plus a
//!   message rate per peer. The rules of the SMTP conversation live in the
//!   sans-IO [`cmtp_smtp::server::SmtpServer`]; this is its tokio shell
//!   (socket, STARTTLS with rustls, deadlines, shutdown). A message is kept
//!   in memory while it arrives (at most `smtp.max_message_size`, reserved
//!   against the peer's staging budget at `MAIL FROM`), checked
//!   ([`verify`]: SPF, DKIM, DMARC, ARC), then sealed to each recipient's
//!   identity key and stored durably ([`seal`]) before the `250`. No
//!   plaintext copy of it is ever written to disk.
//! - **Outbound** ([`outbound`]): a message a local user submitted in crypto
//!   system 0 (with consent) to a domain without CMTP service leaves by
//!   SMTP from the relay queue: built as RFC 5322/MIME, DKIM-signed
//!   ([`dkim`]), sent with STARTTLS to the domain's MX hosts.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::Account;
use cmtp_smtp::address::Mailbox;
use cmtp_smtp::reply::Reply;
use cmtp_smtp::server::{Event, ServerConfig, SmtpServer, Transaction};
use cmtp_store::Store;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use zeroize::Zeroize;

use crate::budget::Reservation;
use crate::limiter::{ConnectionSlot, PeerKey, RateLimiter};
use crate::state::{Shared, now};

pub mod dkim;
pub mod outbound;
pub(crate) mod seal;
pub(crate) mod tls;
pub(crate) mod verify;

/// Room a sealed copy needs beyond the message itself (the arrival record,
/// the trace fields the server adds, the sealed boxes, the envelope): an
/// SMTP message may be at most `limits.max_message_size` minus this.
pub const SEAL_OVERHEAD: u64 = 64 * 1024;

/// What a transaction reserves at `MAIL FROM` without `SIZE=`; it grows
/// with the bytes that arrive.
const INITIAL_RESERVATION: u64 = 64 * 1024;

/// What every SMTP session shares.
pub(crate) struct Gateway {
    pub(crate) sh: Arc<Shared>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    rate: RateLimiter,
    auth: Option<mail_auth::MessageAuthenticator>,
    pub(crate) hostname: String,
    /// Recipients' identity keys already decoded and checked, by their
    /// stored bytes: the checks (a decompression and a scalar
    /// multiplication for the subgroup) cost more than a signature, and a
    /// changed key has other bytes, so an entry is never stale.
    keys: std::sync::Mutex<std::collections::HashMap<[u8; 32], PublicKey>>,
}

/// Most keys [`Gateway::keys`] holds (it is emptied when full).
const MAX_CACHED_KEYS: usize = 10_000;

impl Gateway {
    /// The gateway of a server whose configuration has `[smtp] listen`.
    pub(crate) fn new(sh: Arc<Shared>) -> anyhow::Result<Gateway> {
        let cfg = sh.cfg();
        let hostname = cfg
            .smtp
            .hostname
            .clone()
            .unwrap_or_else(|| sh.domain.to_string());
        let tls = if cfg.smtp.starttls {
            Some(tls::acceptor(&cfg.smtp, &hostname).context("preparing STARTTLS")?)
        } else {
            None
        };
        let auth = if cfg.smtp.verify {
            Some(verify::authenticator(&cfg).context("preparing SPF/DKIM/DMARC checks")?)
        } else {
            None
        };
        let rate = RateLimiter::new(cfg.smtp.messages_per_minute, cfg.smtp.message_burst);
        drop(cfg);
        Ok(Gateway {
            sh,
            tls,
            rate,
            auth,
            hostname,
            keys: std::sync::Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The identity key stored as `bytes`, checked as
    /// [`PublicKey::from_bytes`] does (once per distinct key).
    fn identity_key(&self, bytes: &[u8; 32]) -> Result<PublicKey, cmtp_proto::crypto::CryptoError> {
        if let Some(k) = self.keys.lock().expect("key cache").get(bytes) {
            return Ok(*k);
        }
        let key = PublicKey::from_bytes(bytes)?;
        let mut keys = self.keys.lock().expect("key cache");
        if keys.len() >= MAX_CACHED_KEYS {
            keys.clear();
        }
        keys.insert(*bytes, key);
        Ok(key)
    }

    fn machine_config(&self) -> ServerConfig {
        let cfg = self.sh.cfg();
        let s = &cfg.smtp;
        ServerConfig {
            hostname: self.hostname.clone(),
            max_message_size: s.max_message_size,
            max_recipients: s.max_recipients,
            max_bad_commands: cfg.connections.max_bad_commands,
            starttls: self.tls.is_some(),
            require_tls: s.require_tls && self.tls.is_some(),
            command_timeout: Duration::from_secs(s.command_timeout_secs),
            data_timeout: Duration::from_secs(s.data_timeout_secs),
        }
    }
}

/// Binds `[smtp] listen` and starts accepting; the bound addresses and the
/// accept tasks. Sessions join `sessions` (the server's shutdown waits for
/// them like for CMTP sessions).
pub(crate) async fn start(
    sh: &Arc<Shared>,
    shutdown: &watch::Receiver<bool>,
    sessions: &TaskTracker,
    cancel: &CancellationToken,
) -> anyhow::Result<(Vec<SocketAddr>, Vec<JoinHandle<()>>)> {
    let listen = sh.cfg().smtp.listen.clone();
    if listen.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let gw = Arc::new(Gateway::new(sh.clone())?);
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    for addr in listen {
        let listener = TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening for SMTP on {addr}"))?;
        let local = listener.local_addr()?;
        tracing::info!(addr = %local, hostname = %gw.hostname, starttls = gw.tls.is_some(), "SMTP gateway listening");
        addrs.push(local);
        tasks.push(tokio::spawn(accept_loop(
            gw.clone(),
            listener,
            shutdown.clone(),
            sessions.clone(),
            cancel.clone(),
        )));
    }
    Ok((addrs, tasks))
}

async fn accept_loop(
    gw: Arc<Gateway>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    sessions: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "SMTP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // The same slots and per-peer limits as CMTP connections.
        let limits = gw.sh.cfg().connection_limits();
        let peer_key = gw.sh.peer_key(peer.ip());
        let slot = match gw.sh.conns.acquire_stranger(peer_key, &limits) {
            Ok(slot) => slot,
            Err(why) => {
                tracing::info!(%peer, reason = why.reason(), "SMTP connection refused");
                metrics::counter!("cmtp_smtp_connections_refused_total", "reason" => why.reason())
                    .increment(1);
                let bytes = SmtpServer::busy(&gw.hostname, why.text());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&bytes))
                        .await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
        };
        let (gw, shutdown, cancel) = (gw.clone(), shutdown.clone(), cancel.clone());
        sessions.spawn(async move {
            let mut s = SmtpSession::new(gw, stream, peer, peer_key, slot, shutdown);
            tokio::select! {
                _ = s.serve() => {}
                _ = cancel.cancelled() => {
                    tracing::info!(%peer, "closing the SMTP connection: shutdown grace period over");
                }
            }
            s.io.shutdown().await;
        });
    }
}

/// The socket, before and after STARTTLS.
enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Gone,
}

impl Io {
    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Io::Plain(s) => s.read(buf).await,
            Io::Tls(s) => s.read(buf).await,
            Io::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        async fn w(s: &mut (impl AsyncWrite + Unpin), b: &[u8]) -> std::io::Result<()> {
            s.write_all(b).await?;
            s.flush().await
        }
        match self {
            Io::Plain(s) => w(s, bytes).await,
            Io::Tls(s) => w(s.as_mut(), bytes).await,
            Io::Gone => Err(std::io::ErrorKind::NotConnected.into()),
        }
    }

    async fn shutdown(&mut self) {
        match self {
            Io::Plain(s) => {
                let _ = s.shutdown().await;
            }
            Io::Tls(s) => {
                let _ = s.shutdown().await;
            }
            Io::Gone => {}
        }
    }
}

/// A recipient accepted at `RCPT TO`.
struct Recipient {
    /// As the client wrote it.
    mailbox: Mailbox,
    /// The local name it addressed (an account or an alias).
    name: Account,
    /// The account whose mailbox it goes to.
    account: Account,
    /// That account's identity key, read at `RCPT TO`.
    key: PublicKey,
}

struct SmtpSession {
    gw: Arc<Gateway>,
    smtp: SmtpServer,
    io: Io,
    peer: SocketAddr,
    peer_key: PeerKey,
    _slot: ConnectionSlot,
    shutdown: watch::Receiver<bool>,
    reservation: Option<Reservation>,
    announced: u64,
    recipients: Vec<Recipient>,
}

impl SmtpSession {
    fn new(
        gw: Arc<Gateway>,
        stream: TcpStream,
        peer: SocketAddr,
        peer_key: PeerKey,
        slot: ConnectionSlot,
        shutdown: watch::Receiver<bool>,
    ) -> SmtpSession {
        stream.set_nodelay(true).ok();
        let smtp = SmtpServer::new(gw.machine_config(), Instant::now());
        metrics::counter!("cmtp_smtp_connections_total").increment(1);
        SmtpSession {
            gw,
            smtp,
            io: Io::Plain(stream),
            peer,
            peer_key,
            _slot: slot,
            shutdown,
            reservation: None,
            announced: 0,
            recipients: Vec::new(),
        }
    }

    async fn serve(&mut self) {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let mut starttls = false;
            while let Some(ev) = self.smtp.poll_event() {
                match ev {
                    Event::StartTls => {
                        starttls = true;
                        break;
                    }
                    Event::Closed => {}
                    ev => self.handle(ev).await,
                }
            }
            self.reserve_arrived();
            let out = self.smtp.take_output();
            if !out.is_empty() && self.io.write_all(&out).await.is_err() {
                return;
            }
            if starttls {
                if !self.start_tls().await {
                    return;
                }
                self.smtp.tls_established(Instant::now());
                continue;
            }
            if self.smtp.is_closed() {
                return;
            }
            if *self.shutdown.borrow() {
                self.smtp.close(Reply::new(
                    421,
                    "4.3.2",
                    format!("{} shutting down; try again later", self.gw.hostname),
                ));
                continue;
            }
            let deadline = self.smtp.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d.into()).await,
                    None => std::future::pending().await,
                }
            };
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                r = self.io.read(&mut buf) => match r {
                    Ok(0) | Err(_) => self.smtp.handle_eof(),
                    Ok(n) => self.smtp.receive(&buf[..n], Instant::now()),
                },
                _ = sleep => self.smtp.handle_timeout(Instant::now()),
                _ = shutdown.changed() => {}
            }
        }
    }

    /// Grows the transaction's reservation to the bytes held in memory;
    /// over the budget, the message is refused (and read to its end).
    fn reserve_arrived(&mut self) {
        let held = self.smtp.data_len() as u64;
        if held == 0 {
            return;
        }
        let Some(r) = &mut self.reservation else {
            return;
        };
        if held > r.bytes()
            && let Err(refusal) = r.grow_to(held.saturating_add(INITIAL_RESERVATION))
        {
            tracing::info!(peer = %self.peer, %refusal, "SMTP message over the staging budget");
            self.smtp.refuse_data(Reply::new(
                452,
                "4.3.1",
                format!("{refusal}; try again later"),
            ));
        }
    }

    async fn start_tls(&mut self) -> bool {
        let Some(acceptor) = self.gw.tls.clone() else {
            return false;
        };
        let Io::Plain(tcp) = std::mem::replace(&mut self.io, Io::Gone) else {
            return false;
        };
        let timeout = Duration::from_secs(self.gw.sh.cfg().smtp.command_timeout_secs);
        match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(tls)) => {
                self.io = Io::Tls(Box::new(tls));
                true
            }
            Ok(Err(e)) => {
                tracing::info!(peer = %self.peer, error = %e, "SMTP STARTTLS handshake failed");
                false
            }
            Err(_) => {
                tracing::info!(peer = %self.peer, "SMTP STARTTLS handshake timed out");
                false
            }
        }
    }

    fn tls_version(&self) -> Option<String> {
        match &self.io {
            Io::Tls(s) => s
                .get_ref()
                .1
                .protocol_version()
                .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1.")),
            _ => None,
        }
    }

    async fn handle(&mut self, ev: Event) {
        match ev {
            Event::MailFrom {
                reverse_path, size, ..
            } => self.mail_from(reverse_path, size),
            Event::RcptTo { forward_path } => self.rcpt_to(forward_path).await,
            Event::Message(t) => self.message(t).await,
            Event::Hello { .. } | Event::StartTls | Event::Closed => {}
        }
    }

    fn mail_from(&mut self, reverse_path: Option<Mailbox>, size: Option<u64>) {
        self.recipients.clear();
        self.reservation = None;
        if let Err(wait) = self.gw.rate.check(self.peer_key, Instant::now()) {
            metrics::counter!("cmtp_messages_refused_total", "reason" => "smtp_rate").increment(1);
            tracing::info!(peer = %self.peer, "SMTP message rate exceeded");
            return self.smtp.refuse(Reply::new(
                450,
                "4.7.1",
                format!(
                    "too much mail from your network; try again in {} seconds",
                    wait.as_secs().max(1)
                ),
            ));
        }
        let max = self.smtp.config().max_message_size;
        let announced = size.unwrap_or(INITIAL_RESERVATION).min(max);
        // Charged to the peer and to the domain it claims, like a stranger's
        // CMTP message: the bytes are held in memory until sealed.
        let claimed = reverse_path
            .as_ref()
            .and_then(|m| cmtp_proto::names::Domain::parse(&m.domain).ok())
            .unwrap_or_else(|| self.gw.sh.domain.clone());
        match self
            .gw
            .sh
            .admit_mail(self.peer.ip(), &claimed, false, announced)
        {
            Ok(r) => {
                self.reservation = Some(r);
                self.announced = announced;
                self.smtp.accept();
            }
            Err(refusal) => self.smtp.refuse(Reply::new(
                452,
                "4.3.1",
                format!("{refusal}; try again later"),
            )),
        }
    }

    async fn rcpt_to(&mut self, m: Mailbox) {
        let sh = &self.gw.sh;
        let local = if m.domain.is_empty() {
            "postmaster".to_owned()
        } else if m.domain == sh.domain.as_str() {
            m.local.clone()
        } else {
            metrics::counter!("cmtp_smtp_refused_total", "reason" => "relay").increment(1);
            return self.smtp.refuse(Reply::new(
                550,
                "5.7.1",
                format!(
                    "<{m}>: relay access denied: this server takes mail for {} only",
                    sh.domain
                ),
            ));
        };
        let no_such_user =
            |m: &Mailbox| Reply::new(550, "5.1.1", format!("<{m}>: no such user here"));
        let Ok(name) = Account::parse(&local) else {
            return self.smtp.refuse(no_such_user(&m));
        };
        let temporary = || Reply::new(451, "4.3.0", "temporary failure; try again later");
        let account = match sh.resolve_local(&name).await {
            Ok(Some(a)) => a,
            Ok(None) => {
                metrics::counter!("cmtp_smtp_refused_total", "reason" => "nosuchuser").increment(1);
                return self.smtp.refuse(no_such_user(&m));
            }
            Err(e) => {
                tracing::warn!(error = %e, "SMTP: looking up a recipient failed");
                return self.smtp.refuse(temporary());
            }
        };
        // One read of the account for its quota and the key its copy is
        // sealed to.
        let user = match sh.store.user(account.as_str()).await {
            Ok(Some(u)) => u,
            Ok(None) => return self.smtp.refuse(no_such_user(&m)),
            Err(e) => {
                tracing::warn!(error = %e, "SMTP: reading a recipient's account failed");
                return self.smtp.refuse(temporary());
            }
        };
        let key = match self.gw.identity_key(&user.identity_pk) {
            Ok(k) => k,
            Err(e) => {
                tracing::warn!(account = %account, error = %e, "SMTP: the recipient's stored key is unusable");
                return self.smtp.refuse(temporary());
            }
        };
        if let Err(text) = sh
            .check_quota_of(&account, user.quota, self.announced)
            .await
        {
            return self.smtp.refuse(Reply::new(452, "4.2.2", text));
        }
        self.recipients.push(Recipient {
            mailbox: m,
            name,
            account,
            key,
        });
        self.smtp.accept();
    }

    async fn message(&mut self, mut t: Transaction) {
        let received_at = now();
        let helo = self.smtp.helo().unwrap_or("unknown").to_owned();
        let ip = self.peer.ip();
        let tls = self.tls_version();
        let verdicts = match &self.gw.auth {
            Some(auth) => {
                verify::check(
                    auth,
                    &t.data,
                    ip,
                    &helo,
                    t.reverse_path.as_ref(),
                    &self.gw.hostname,
                )
                .await
            }
            None => verify::Verdicts::unchecked(&self.gw.hostname),
        };
        let trace = seal::trace_fields(
            &self.gw.hostname,
            &helo,
            ip,
            tls.as_deref(),
            &verdicts.header,
            received_at,
        );
        let mut eml = Vec::with_capacity(trace.len() + t.data.len());
        eml.extend_from_slice(trace.as_bytes());
        eml.extend_from_slice(&t.data);
        t.data.zeroize();
        let mail_from = t
            .reverse_path
            .as_ref()
            .map(|m| m.to_string())
            .unwrap_or_default();
        // One copy per mailbox, even when two names lead to it.
        let mut copies: Vec<seal::CopyFor> = Vec::with_capacity(self.recipients.len());
        for r in &self.recipients {
            if copies.iter().any(|c| c.account == r.account) {
                continue;
            }
            copies.push(seal::CopyFor {
                arrival: cmtp_smtp::arrival::Arrival {
                    helo: helo.clone(),
                    ip: ip.to_string(),
                    mail_from: mail_from.clone(),
                    rcpt_to: r.mailbox.to_string(),
                    tls: tls.clone(),
                    spf: verdicts.spf.clone(),
                    dkim: verdicts.dkim.clone(),
                    dmarc: verdicts.dmarc.clone(),
                    arc: verdicts.arc.clone(),
                    received_at: crate::state::rfc3339(received_at),
                },
                name: r.name.clone(),
                account: r.account.clone(),
                key: r.key,
            });
        }
        // The sealing (two X25519 boxes and two signatures per copy) runs on
        // the blocking pool, so that the runtime's workers go on reading the
        // other sessions meanwhile; it wipes `eml` when done.
        let sh = self.gw.sh.clone();
        let seal_helo = helo.clone();
        let sealed = tokio::task::spawn_blocking(move || {
            seal::seal_copies(&sh, eml, &copies, received_at, ip, &seal_helo)
        })
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("sealing failed: {e}")));
        let outcome: anyhow::Result<Vec<[u8; 32]>> = match sealed {
            Ok(sealed) => {
                let hashes: Vec<[u8; 32]> = sealed.iter().map(|c| c.hash).collect();
                let mut stored = Ok(hashes);
                for copy in sealed {
                    if let Err(e) = seal::deliver(&self.gw.sh, copy, received_at, ip).await {
                        stored = Err(e);
                        break;
                    }
                }
                stored
            }
            Err(e) => Err(e),
        };
        self.reservation = None;
        match outcome {
            Ok(hashes) => {
                let id = hashes
                    .first()
                    .map(|h| hex::encode(&h[..8]))
                    .unwrap_or_default();
                metrics::counter!("cmtp_smtp_messages_total", "result" => "accepted").increment(1);
                tracing::info!(
                    peer = %self.peer,
                    helo = %helo,
                    from = %mail_from,
                    recipients = hashes.len(),
                    hashes = %hashes.iter().map(hex::encode).collect::<Vec<_>>().join(","),
                    spf = %verdicts.spf.result,
                    dkim = %verdicts.dkim.first().map(|d| d.result.as_str()).unwrap_or("none"),
                    dmarc = %verdicts.dmarc.result,
                    tls = %tls.as_deref().unwrap_or("none"),
                    "accepted by SMTP, sealed and stored"
                );
                self.smtp.accept_message(&id);
            }
            Err(e) => {
                metrics::counter!("cmtp_smtp_messages_total", "result" => "tempfail").increment(1);
                tracing::warn!(peer = %self.peer, from = %mail_from, error = %format!("{e:#}"), "storing an SMTP message failed");
                self.smtp.refuse(Reply::new(
                    451,
                    "4.3.0",
                    "temporary failure storing the message; try again later",
                ));
            }
        }
        self.recipients.clear();
    }
}
