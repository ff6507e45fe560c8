//! The checker's own CMTP domain (`--as-domain D --serve ADDR`).
//!
//! Some rules need a second domain whose key the target can fetch: a
//! forged trailer is only a forgery if the target knows the real key
//! (§7.4), a remote KEYREQUEST is only "unchanged" if the original is known
//! (§6.3), and relaying needs somewhere to relay to. The target's operator
//! routes `D` to `ADDR` (a static route, or DNS), and the checker serves it
//! there as CMTP/2 (§4.1, §4.4): the banner in clear, then TLS 1.3 with the
//! served domain's key as a raw public key (or in a self-issued certificate
//! for a client that offers no raw public keys, picked by the ClientHello as
//! cmtpd does), then OHAI, KEYREQUEST for its server key and its one user
//! `conform`, NOOP, HELP, OBAI and MAIL for `conform@D` (kept in memory
//! for the rules to inspect). Every reply is signed as §5.3 says. A peer
//! that speaks in clear after the banner gets the clear refusal and a close.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use cmtp_proto::banner::{clear_refusal, ready_line};
use cmtp_proto::command::{Command, CommandError, decode_command, request_digest};
use cmtp_proto::crypto::{IdentityKey, SignatureTag};
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::message::{Message, MessageEvent, MessageReader};
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::payload::{DeliveryFailure, FailureReason, Greeting};
use cmtp_proto::reply::{REPLY_VERSION, Reply, ReplyBinding, ReplyHeader, Status, body_hash};
use cmtp_proto::statements::{KeyStatement, ReceiptBody, ServerKeyBundle, sign_trailer};
use cmtp_proto::tls::{KeyExchange, ServerTlsConfig};
use rand_core::RngCore;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::transport::{ReadOutcome, Transport};

/// Software name in the banner and greeting.
const SOFTWARE: &str = concat!("cmtp-conform ", env!("CARGO_PKG_VERSION"));
/// How long a connection to the served domain may sit idle.
const IDLE: Duration = Duration::from_secs(60);
/// How long a peer has for the TLS handshake.
const HANDSHAKE: Duration = Duration::from_secs(30);
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The state shared with the connection threads.
struct Inner {
    domain: Domain,
    key: IdentityKey,
    tls: ServerTlsConfig,
    user: Account,
    user_key: IdentityKey,
    bundle: Vec<u8>,
    statement: Vec<u8>,
    limits: MessageLimits,
    received: Mutex<Vec<Message>>,
    arrived: Condvar,
    stop: AtomicBool,
}

/// A running served domain; stops when dropped.
pub(crate) struct Served {
    inner: Arc<Inner>,
    addr: SocketAddr,
}

impl Served {
    /// Binds `addr` and serves `domain` with `key` (a fresh one if none).
    /// The user's key is derived from the server key, so that a target that
    /// pinned the served domain's key on an earlier run keeps trusting both.
    pub(crate) fn start(
        domain: Domain,
        addr: SocketAddr,
        key: Option<IdentityKey>,
        now: u64,
    ) -> io::Result<Served> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let key = key.unwrap_or_else(|| IdentityKey::generate(&mut rand_core::OsRng));
        let mut h = Sha256::new();
        h.update(b"cmtp-conform served user\0");
        h.update(key.seed());
        let user_seed = Zeroizing::new(<[u8; 32]>::from(h.finalize()));
        let user_key = IdentityKey::from_seed(&user_seed);
        let user = Account::parse("conform").expect("valid");
        // Issued an hour back (clock skew), valid for 30 days from then.
        let from = now.saturating_sub(3600);
        let to = from + 30 * 24 * 3600;
        let bundle = ServerKeyBundle {
            statement: KeyStatement::issue(&key, None, domain.clone(), key.public(), from, to),
            rotations: Vec::new(),
        }
        .to_bytes();
        let statement = KeyStatement::issue(
            &key,
            Some(user.clone()),
            domain.clone(),
            user_key.public(),
            from,
            to,
        )
        .to_bytes();
        let tls = ServerTlsConfig::new(&key, &domain, KeyExchange::default())
            .map_err(io::Error::other)?;
        let inner = Arc::new(Inner {
            domain,
            key,
            tls,
            user,
            user_key,
            bundle,
            statement,
            limits: MessageLimits::default(),
            received: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let shared = inner.clone();
        std::thread::Builder::new()
            .name("served-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if shared.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let conn = shared.clone();
                    let _ = std::thread::Builder::new()
                        .name("served-conn".into())
                        .spawn(move || serve(&conn, stream));
                }
            })?;
        Ok(Served { inner, addr })
    }

    /// The domain served.
    pub(crate) fn domain(&self) -> &Domain {
        &self.inner.domain
    }

    /// Its one user.
    pub(crate) fn user(&self) -> &Account {
        &self.inner.user
    }

    /// The user's identity key.
    pub(crate) fn user_key(&self) -> &IdentityKey {
        &self.inner.user_key
    }

    /// The served domain's server key.
    pub(crate) fn key(&self) -> cmtp_proto::crypto::PublicKey {
        self.inner.key.public()
    }

    /// The served domain's trailer over `hash`.
    pub(crate) fn sign_trailer(&self, hash: &[u8; 32]) -> [u8; 64] {
        sign_trailer(&self.inner.key, hash)
    }

    /// Fingerprint of the served domain's key (for a `_cmtpkey` record).
    pub(crate) fn fingerprint(&self) -> String {
        self.inner.key.public().fingerprint_hex()
    }

    /// Where it listens.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Waits up to `timeout` for a message with `hash` to arrive.
    pub(crate) fn wait_for(&self, hash: &[u8; 32], timeout: Duration) -> Option<Message> {
        let deadline = Instant::now() + timeout;
        let mut got = self.inner.received.lock().expect("lock");
        loop {
            if let Some(m) = got.iter().find(|m| &m.hash() == hash) {
                return Some(m.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            got = self
                .inner
                .arrived
                .wait_timeout(got, deadline - now)
                .expect("lock")
                .0;
        }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so that it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// One connection's state.
struct Conn<'a> {
    inner: &'a Inner,
    t: Transport,
    buf: Vec<u8>,
    nonce: [u8; 32],
    seq: u64,
}

impl Conn<'_> {
    fn reply(&mut self, status: Status, body: &[u8], request: [u8; 32]) -> io::Result<()> {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status,
            body_len: body.len() as u64,
        };
        let data = ReplyBinding {
            nonce: self.nonce,
            seq: self.seq,
            request,
        }
        .signed_data(&header, &body_hash(body));
        let signature = self.inner.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        let mut out = Vec::with_capacity(body.len() + 100);
        Reply {
            version: REPLY_VERSION,
            status: header.status,
            body: body.to_vec(),
            signature,
        }
        .encode(&mut out);
        self.t.write_all(&out)
    }

    /// Reads more bytes; false when the peer is gone or idle too long.
    fn fill(&mut self) -> bool {
        matches!(
            self.t.read_until(&mut self.buf, Instant::now() + IDLE),
            ReadOutcome::Data
        )
    }
}

fn serve(inner: &Inner, stream: TcpStream) {
    let Ok(mut t) = Transport::accepted(stream, IDLE) else {
        return;
    };
    if t.write_all(ready_line(&inner.domain, SOFTWARE).as_bytes())
        .is_err()
    {
        return;
    }
    // §4.1: TLS follows the banner; a peer that speaks in clear is refused.
    let mut first = Vec::new();
    if !matches!(
        t.read_until(&mut first, Instant::now() + HANDSHAKE),
        ReadOutcome::Data
    ) {
        return;
    }
    if first[0] != TLS_HANDSHAKE_RECORD {
        let _ = t.write_all(clear_refusal(&inner.domain).as_bytes());
        t.shutdown_write();
        return;
    }
    if t.accept_tls(&inner.tls, &first, Instant::now() + HANDSHAKE)
        .is_err()
    {
        return;
    }
    let mut nonce = [0u8; 32];
    rand_core::OsRng.fill_bytes(&mut nonce);
    let mut c = Conn {
        inner,
        t,
        buf: Vec::new(),
        nonce,
        seq: 0,
    };
    let _ = commands(&mut c);
    c.t.shutdown_write();
}

fn commands(c: &mut Conn<'_>) -> io::Result<()> {
    loop {
        let (cmd, used) = match decode_command(&c.buf) {
            Ok(Some(x)) => x,
            Ok(None) => {
                if !c.fill() {
                    return Ok(());
                }
                continue;
            }
            Err(e) => {
                let Some(n) = e.resume_at else {
                    return c.reply(Status::TooLong, e.kind.to_string().as_bytes(), [0; 32]);
                };
                let frame: Vec<u8> = c.buf.drain(..n).collect();
                let status = match e.kind {
                    CommandError::UnknownCommand(_) => Status::BadCommand,
                    _ => Status::BadArgument,
                };
                c.reply(
                    status,
                    e.kind.to_string().as_bytes(),
                    request_digest(&frame),
                )?;
                continue;
            }
        };
        let frame: Vec<u8> = c.buf.drain(..used).collect();
        let digest = request_digest(&frame);
        let inner = c.inner;
        let ours = |d: &Option<Domain>| d.as_ref().is_none_or(|d| *d == inner.domain);
        match cmd {
            Command::Ohai => {
                let g = Greeting {
                    domain: inner.domain.clone(),
                    software: SOFTWARE.into(),
                    extensions: Vec::new(),
                    key: inner.key.public(),
                    nonce: c.nonce,
                    max_message_size: inner.limits.max_message_size,
                    max_attachments: inner.limits.max_attachments,
                };
                c.reply(Status::Success, g.to_text().as_bytes(), digest)?;
            }
            Command::KeyRequest { user: None, domain } if ours(&domain) => {
                let b = inner.bundle.clone();
                c.reply(Status::Success, &b, digest)?;
            }
            Command::KeyRequest {
                user: Some(u),
                domain,
            } if ours(&domain) && u == inner.user => {
                let s = inner.statement.clone();
                c.reply(Status::Success, &s, digest)?;
            }
            Command::KeyRequest { .. } => {
                c.reply(
                    Status::KeyNotAvailable,
                    b"no such key here (cmtp-conform serves one user)",
                    digest,
                )?;
            }
            Command::Noop => c.reply(Status::Success, b"", digest)?,
            Command::Help => c.reply(
                Status::Success,
                b"cmtp-conform's served domain: OHAI MAIL KEYREQUEST NOOP HELP OBAI\n",
                digest,
            )?,
            Command::Obai => {
                c.reply(Status::Success, b"bye", digest)?;
                return Ok(());
            }
            Command::Mail => {
                if !receive(c, digest)? {
                    return Ok(());
                }
            }
            other => {
                let text = format!("{} is not served by cmtp-conform", other.word());
                c.reply(Status::BadCommand, text.as_bytes(), digest)?;
            }
        }
    }
}

/// Receives one message after MAIL; false when the connection must close.
fn receive(c: &mut Conn<'_>, digest: [u8; 32]) -> io::Result<bool> {
    let mut reader = MessageReader::new(c.inner.limits);
    let mut raw = Vec::new();
    loop {
        let (n, ev) = match reader.next(&c.buf) {
            Ok(x) => x,
            Err(e) => {
                let status = if e.is_limit() {
                    Status::TooBig
                } else {
                    Status::BadMessage
                };
                c.reply(status, e.to_string().as_bytes(), digest)?;
                return Ok(false);
            }
        };
        let done = matches!(ev, Some(MessageEvent::End { .. }));
        let need_more = ev.is_none();
        raw.extend(c.buf.drain(..n));
        if done {
            break;
        }
        if need_more && !c.fill() {
            return Ok(false);
        }
    }
    let message = match Message::decode(&raw, c.inner.limits) {
        Ok(m) => m,
        Err(e) => {
            c.reply(Status::BadMessage, e.to_string().as_bytes(), digest)?;
            return Ok(true);
        }
    };
    let inner = c.inner;
    if message.destination.domain != inner.domain || message.destination.account != inner.user {
        let reason = if message.destination.domain == inner.domain {
            FailureReason::NoSuchUser
        } else {
            FailureReason::NoRelay
        };
        let body =
            DeliveryFailure::new(reason, "cmtp-conform takes mail for conform only").to_bytes();
        c.reply(Status::DeliveryFailure, &body, digest)?;
        return Ok(true);
    }
    let hash = message.hash();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let receipt = ReceiptBody {
        hash,
        accepted_at: now,
        domain: inner.domain.clone(),
    };
    {
        let mut got = inner.received.lock().expect("lock");
        got.push(message);
        inner.arrived.notify_all();
    }
    c.reply(Status::Success, &receipt.to_bytes(), digest)?;
    Ok(true)
}
