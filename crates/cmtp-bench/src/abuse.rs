//! `abuse`: a stranger's attack on a server with its default budgets
//! (issue 12; PROTOCOL.md §4.3, §12.3, §15), while a legitimate user on a
//! fresh address logs in and sends.
//!
//! For `--secs` (60) seconds, from `--addrs` (200) loopback addresses
//! (127.66.x.y, all in 127.0.0.0/8):
//! - **drip**: up to `--drip-per-addr` connections per address (default
//!   128, the server's per-peer limit), each completing TLS and then
//!   sending a NOOP one byte every `--drip-byte-secs` seconds, for as long
//!   as the server keeps it; a refused or closed connection is opened again
//!   after about `--drip-retry-ms`;
//! - **uploads**: `--uploaders` connections at a time, each announcing a
//!   `--upload-mib` (16) MiB message to a local account from a sender at
//!   b.test — a real, honest CMTP domain (a second server, routed by
//!   `dns.routes`) whose key a.test can fetch — sending a random part of
//!   it and hanging up;
//! - **login spam**: `--login-spammers` connections at a time sending
//!   LOGIN for the legitimate user's account, half of them followed by a
//!   wrong LOGINFINISH, the others left unfinished.
//!
//! Meanwhile the legitimate user, from 127.77.0.1, connects (TLS, OHAI),
//! logs in with its password (OPAQUE), sends `--legit-messages` messages
//! (durable SUCCESS, every signature and receipt checked), closes, pauses
//! `--legit-pause-ms` and starts again. Reported: its login and MAIL
//! latencies and its errors, the growth of a.test's data directory (peak,
//! sampled every 100 ms, and after the attack) against the staging budget,
//! the server's peak resident memory, and what the attackers achieved.
//!
//! a.test runs with the production defaults (the bench only lowers the
//! Argon2id floor for account creation): per-peer connection limits, the
//! share reserved for logged-in sessions, staging budgets, login limits and
//! the remote KEYREQUEST rate limit are all on.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cmtp_proto::account::{Login, open_release};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::{LoginChallenge, XzibitRelease};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::ReceiptBody;
use cmtp_proto::tls::ClientTlsConfig;
use rand_core::RngCore;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::{sleep, sleep_until, timeout_at};

use crate::conn::{BenchConn, Hello, OpenError};
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts, User, free_port};
use crate::setup::{Prebuilt, seal_all};

/// Parameters of `abuse`.
#[derive(Args, Debug, Clone)]
pub(crate) struct AbuseArgs {
    /// How long the attack lasts, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) secs: f64,
    /// Attacking source addresses (127.66.x.y).
    #[arg(long, default_value_t = 200)]
    pub(crate) addrs: usize,
    /// Dripping connections per attacking address.
    #[arg(long, default_value_t = 128)]
    pub(crate) drip_per_addr: usize,
    /// A dripping connection sends one byte every this many seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) drip_byte_secs: f64,
    /// A refused dripping connection tries again after about this long, ms.
    #[arg(long, default_value_t = 1000)]
    pub(crate) drip_retry_ms: u64,
    /// Connections being opened at once by the drippers.
    #[arg(long, default_value_t = 200)]
    pub(crate) open_parallel: usize,
    /// Abandoned uploads under way at once.
    #[arg(long, default_value_t = 16)]
    pub(crate) uploaders: usize,
    /// Size each upload announces, MiB.
    #[arg(long, default_value_t = 16.0)]
    pub(crate) upload_mib: f64,
    /// LOGIN spammers at once.
    #[arg(long, default_value_t = 4)]
    pub(crate) login_spammers: usize,
    /// Messages the legitimate user sends per login.
    #[arg(long, default_value_t = 5)]
    pub(crate) legit_messages: usize,
    /// The legitimate user's pause between sessions, ms.
    #[arg(long, default_value_t = 200)]
    pub(crate) legit_pause_ms: u64,
    /// The legitimate user starts this many seconds into the attack.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) legit_delay: f64,
    /// Run the legitimate user on the bench's own runtime, among the
    /// attacking tasks. By default it runs on a thread and runtime of its
    /// own, as a client on another machine would: its latency then
    /// measures the server, not its wait behind the bench's attackers.
    #[arg(long)]
    pub(crate) legit_shared_runtime: bool,
    /// The default (kept for scripts written when it was an option).
    #[arg(long, hide = true, conflicts_with = "legit_shared_runtime")]
    pub(crate) legit_thread: bool,
    /// Size of the legitimate user's messages' text, bytes.
    #[arg(short = 's', long, default_value_t = 4096)]
    pub(crate) size: usize,
}

impl AbuseArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "secs": self.secs,
            "addrs": self.addrs,
            "drip_per_addr": self.drip_per_addr,
            "drip_byte_secs": self.drip_byte_secs,
            "uploaders": self.uploaders,
            "upload_mib": self.upload_mib,
            "login_spammers": self.login_spammers,
            "legit_messages": self.legit_messages,
            "legit_pause_ms": self.legit_pause_ms,
            "legit_thread": !self.legit_shared_runtime,
            "size": self.size,
        })
    }
}

/// What the attackers did and were told.
#[derive(Default)]
struct Counters {
    drip_open: AtomicU64,
    drip_peak: AtomicU64,
    drip_opened: AtomicU64,
    drip_refused: AtomicU64,
    drip_failed: AtomicU64,
    drip_cut: AtomicU64,
    upload_started: AtomicU64,
    upload_refused: AtomicU64,
    upload_conn_refused: AtomicU64,
    upload_abandoned: AtomicU64,
    upload_bytes: AtomicU64,
    upload_failed: AtomicU64,
    login_sent: AtomicU64,
    login_challenges: AtomicU64,
    login_ratelimited: AtomicU64,
    login_other: AtomicU64,
    login_finish_refused: AtomicU64,
    login_finish_accepted: AtomicU64,
    login_conn_refused: AtomicU64,
    login_failed: AtomicU64,
    notes: Mutex<Vec<String>>,
}

impl Counters {
    fn note(&self, what: &str, e: impl std::fmt::Display) {
        let mut n = self.notes.lock().unwrap_or_else(|p| p.into_inner());
        if n.len() < 8 && !n.iter().any(|x| x.starts_with(what)) {
            n.push(format!("{what}: {e}"));
        }
    }
}

fn bump(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Attacking address `i`: 127.66.(i / 250).(i % 250 + 1).
fn attacker(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 66, (i / 250) as u8, (i % 250 + 1) as u8))
}

/// The legitimate user's address, used by nobody else.
const LEGIT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 77, 0, 1));

/// `base` ± 50%.
fn jitter(base: Duration) -> Duration {
    let f = 0.5 + f64::from(rand_core::OsRng.next_u32() % 1000) / 1000.0;
    base.mul_f64(f)
}

/// One dripping connection slot: open, drip, open again, until `end`.
async fn drip(
    server: SocketAddr,
    src: IpAddr,
    args: Arc<AbuseArgs>,
    end: Instant,
    opening: Arc<Semaphore>,
    tls: ClientTlsConfig,
    st: Arc<Counters>,
) {
    let frame = Command::Noop.to_bytes();
    let every = Duration::from_secs_f64(args.drip_byte_secs.max(0.001));
    let retry = Duration::from_millis(args.drip_retry_ms);
    // Spread the first attempts over the first second.
    sleep(jitter(Duration::from_millis(500))).await;
    while Instant::now() < end {
        let opened = {
            let Ok(_permit) = opening.acquire().await else {
                return;
            };
            timeout_at(
                end.into(),
                BenchConn::open(server, Some(src), &tls, Hello::AfterBanner),
            )
            .await
        };
        let mut conn = match opened {
            Err(_) => return,
            Ok(Err(OpenError::Busy(_))) => {
                bump(&st.drip_refused);
                sleep_until(end.min(Instant::now() + jitter(retry)).into()).await;
                continue;
            }
            Ok(Err(OpenError::Other(e))) => {
                bump(&st.drip_failed);
                st.note("drip connect", format!("{e:#}"));
                sleep_until(end.min(Instant::now() + jitter(retry)).into()).await;
                continue;
            }
            Ok(Ok(c)) => c,
        };
        bump(&st.drip_opened);
        let now_open = st.drip_open.fetch_add(1, Ordering::Relaxed) + 1;
        st.drip_peak.fetch_max(now_open, Ordering::Relaxed);
        conn.shrink();
        let dripping = async {
            loop {
                for b in &frame {
                    sleep(every).await;
                    conn.send(std::slice::from_ref(b)).await?;
                }
                conn.reply().await?;
            }
        };
        let r: anyhow::Result<()> = match timeout_at(end.into(), dripping).await {
            Err(_) => Ok(()),
            Ok(r) => r,
        };
        st.drip_open.fetch_sub(1, Ordering::Relaxed);
        if let Err(e) = r {
            bump(&st.drip_cut);
            st.note("drip cut", format!("{e:#}"));
        }
    }
}

/// The bytes an upload starts with: `MAIL` and the envelope of a message
/// of `size` bytes to `to` from a sender at `from_domain`.
fn upload_head(to: &Address, from_domain: &Domain, size: u64) -> anyhow::Result<Vec<u8>> {
    let m = Message {
        version: 1,
        destination: to.clone(),
        source: Source::user(Address::new(
            Account::parse("someone")?,
            from_domain.clone(),
        )),
        log: vec![],
        body: vec![],
        attachments: vec![],
        trailer: [0; 64],
    };
    let mut env = m.envelope();
    env.body_len = size;
    let mut head = Command::Mail.to_bytes();
    env.encode_head(0, &mut head);
    Ok(head)
}

/// One uploader: upload, abandon, again, until `end`.
#[allow(clippy::too_many_arguments)] // the scenario's shared pieces
async fn upload(
    server: SocketAddr,
    first: usize,
    args: Arc<AbuseArgs>,
    end: Instant,
    head: Arc<Vec<u8>>,
    size: u64,
    tls: ClientTlsConfig,
    st: Arc<Counters>,
) {
    let chunk = vec![0x5au8; 256 * 1024];
    let mut k = first;
    while Instant::now() < end {
        let src = attacker(k % args.addrs.max(1));
        k += args.uploaders.max(1);
        let attempt = async {
            let mut c = match BenchConn::open(server, Some(src), &tls, Hello::AfterBanner).await {
                Ok(c) => c,
                Err(OpenError::Busy(_)) => {
                    bump(&st.upload_conn_refused);
                    sleep(jitter(Duration::from_millis(200))).await;
                    return Ok(());
                }
                Err(OpenError::Other(e)) => return Err(e),
            };
            c.ohai_unchecked().await?;
            c.send(&head).await?;
            bump(&st.upload_started);
            // Abandoned somewhere after the first MiB.
            let stop_at = (1 << 20)
                + u64::from(rand_core::OsRng.next_u32()) % size.saturating_sub(1 << 20).max(1);
            let mut sent = 0u64;
            while sent < stop_at {
                let n = (stop_at - sent).min(chunk.len() as u64) as usize;
                c.send(&chunk[..n]).await?;
                sent += n as u64;
                st.upload_bytes.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(r) = c.reply_now()? {
                    bump(&st.upload_refused);
                    st.note(
                        "upload refused",
                        format!("{} {}", r.status, r.text().replace('\0', " ")),
                    );
                    return Ok(());
                }
            }
            // Hang up in the middle of the message.
            bump(&st.upload_abandoned);
            drop(c);
            anyhow::Ok(())
        };
        match timeout_at(end.into(), attempt).await {
            Err(_) => return,
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                bump(&st.upload_failed);
                st.note("upload", format!("{e:#}"));
            }
        }
    }
}

/// One LOGIN spammer against `target`'s account, until `end`.
async fn spam_logins(
    server: SocketAddr,
    first: usize,
    args: Arc<AbuseArgs>,
    end: Instant,
    target: Account,
    tls: ClientTlsConfig,
    st: Arc<Counters>,
) {
    let Ok((_, ke1)) = Login::start(b"not the password", &mut rand_core::OsRng) else {
        return;
    };
    let login = Command::Login {
        user: target,
        ke1: ke1.to_vec(),
    }
    .to_bytes();
    let finish = Command::LoginFinish { ke3: vec![7; 64] }.to_bytes();
    let mut k = first;
    while Instant::now() < end {
        let src = attacker(k % args.addrs.max(1));
        k += args.login_spammers.max(1);
        let attempt = async {
            let mut c = match BenchConn::open(server, Some(src), &tls, Hello::AfterBanner).await {
                Ok(c) => c,
                Err(OpenError::Busy(_)) => {
                    bump(&st.login_conn_refused);
                    sleep(jitter(Duration::from_millis(200))).await;
                    return Ok(());
                }
                Err(OpenError::Other(e)) => return Err(e),
            };
            c.ohai_unchecked().await?;
            for j in 0..10 {
                c.send(&login).await?;
                let (r, _) = c.reply().await?;
                bump(&st.login_sent);
                match &r.status {
                    Status::Success => {
                        bump(&st.login_challenges);
                        if j % 2 == 0 {
                            c.send(&finish).await?;
                            let (r, _) = c.reply().await?;
                            if r.status == Status::Success {
                                bump(&st.login_finish_accepted);
                            } else {
                                bump(&st.login_finish_refused);
                            }
                        }
                    }
                    Status::RateLimited => bump(&st.login_ratelimited),
                    other => {
                        bump(&st.login_other);
                        st.note("login spam", format!("{other} {}", r.text()));
                    }
                }
            }
            anyhow::Ok(())
        };
        match timeout_at(end.into(), attempt).await {
            Err(_) => return,
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                bump(&st.login_failed);
                st.note("login spam connection", format!("{e:#}"));
            }
        }
    }
}

/// What the legitimate user saw.
#[derive(Default)]
struct Legit {
    login: Vec<Duration>,
    mail: Vec<Duration>,
    /// The parts of a login: TCP connect, banner and TLS handshake; OHAI;
    /// LOGIN's round trip; the client's own work on the challenge (OPRF,
    /// Argon2id); LOGINFINISH's round trip.
    phases: [Vec<Duration>; 5],
    sessions: u64,
    errors: u64,
    refused: u64,
    notes: Vec<String>,
}

/// One session of the legitimate user: connect, OHAI, password login,
/// `messages`, close.
async fn legit_session(
    out: &mut Legit,
    server: SocketAddr,
    user: &User,
    messages: &mut impl Iterator<Item = Prebuilt>,
    per_session: usize,
) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let tls = ClientTlsConfig::default_shared();
    let mut c = match BenchConn::open(server, Some(LEGIT), &tls, Hello::Early).await {
        Ok(c) => c,
        Err(OpenError::Busy(text)) => {
            out.refused += 1;
            bail!("refused: {text}");
        }
        Err(OpenError::Other(e)) => return Err(e),
    };
    let t1 = Instant::now();
    let g = c.ohai().await?;
    let t2 = Instant::now();
    let address = &user.address;
    let (login, ke1) = Login::start(user.password.as_bytes(), &mut rand_core::OsRng)?;
    let r = c
        .command(&Command::Login {
            user: address.account.clone(),
            ke1: ke1.to_vec(),
        })
        .await?;
    if r.status != Status::Success {
        bail!("LOGIN: {} {}", r.status, r.text());
    }
    let t3 = Instant::now();
    let proof = login.finish(
        user.password.as_bytes(),
        &LoginChallenge::decode(&r.body)?,
        address,
        &KsfParams::INSECURE_TEST,
        &c.channel_binding,
        &mut rand_core::OsRng,
    )?;
    let t4 = Instant::now();
    let r = c
        .command(&Command::LoginFinish {
            ke3: proof.ke3.to_vec(),
        })
        .await?;
    if r.status != Status::Success {
        bail!("LOGINFINISH: {} {}", r.status, r.text());
    }
    let t5 = Instant::now();
    let release = XzibitRelease::decode(&r.body)?;
    let (key, _) = open_release(&release, &g.key, address, &proof.export_key, None)?;
    if key.public() != user.key().public() {
        bail!("the login released another identity key");
    }
    out.login.push(t0.elapsed());
    for (i, d) in [t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4]
        .into_iter()
        .enumerate()
    {
        out.phases[i].push(d);
    }
    for _ in 0..per_session {
        let Some(m) = messages.next() else { break };
        let t = Instant::now();
        c.send(&m.bytes).await?;
        let (reply, seq) = c.reply().await?;
        let elapsed = t.elapsed();
        if reply.status != Status::Success {
            bail!("MAIL: {} {}", reply.status, reply.text().replace('\0', " "));
        }
        // The reply's signature is the receipt's (PROTOCOL.md §10.1).
        c.verify(&reply, seq, b"MAIL\0")?;
        let receipt = ReceiptBody::decode(&reply.body)?;
        if receipt.hash != m.hash {
            bail!("the receipt is for another message");
        }
        out.mail.push(elapsed);
    }
    c.close().await?;
    out.sessions += 1;
    Ok(())
}

async fn legit(
    server: SocketAddr,
    user: User,
    messages: Vec<Prebuilt>,
    args: Arc<AbuseArgs>,
    start: Instant,
    end: Instant,
) -> Legit {
    let mut out = Legit::default();
    let mut messages = messages.into_iter();
    sleep_until(start.into()).await;
    while Instant::now() < end {
        if let Err(e) =
            legit_session(&mut out, server, &user, &mut messages, args.legit_messages).await
        {
            out.errors += 1;
            if out.notes.len() < 5 {
                out.notes.push(format!("legitimate user: {e:#}"));
            }
        }
        sleep(Duration::from_millis(args.legit_pause_ms)).await;
    }
    out
}

/// Bytes allocated on disk under `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut total = 0;
    for e in rd.flatten() {
        let Ok(md) = e.path().symlink_metadata() else {
            continue;
        };
        total += if md.is_dir() {
            dir_bytes(&e.path())
        } else {
            md.blocks() * 512
        };
    }
    total
}

/// Samples the server's resident memory and its data directory's size
/// every 100 ms on a thread of its own, keeping the peaks.
struct Monitor {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64)>,
}

impl Monitor {
    fn start(pid: Option<u32>, dir: Option<PathBuf>) -> Monitor {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut rss, mut disk) = (0u64, 0u64);
            while !flag.load(Ordering::Relaxed) {
                if let Some(kib) = pid.and_then(crate::procfs::rss_kib) {
                    rss = rss.max(kib);
                }
                if let Some(d) = &dir {
                    disk = disk.max(dir_bytes(d));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            (rss, disk)
        });
        Monitor { stop, thread }
    }

    /// Peak resident KiB and peak directory bytes.
    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or((0, 0))
    }
}

const MIB: f64 = (1 << 20) as f64;

/// One run of `abuse`.
pub(crate) async fn run(opts: &ServerOpts, args: &AbuseArgs) -> anyhow::Result<Run> {
    if opts.target.is_some() {
        bail!("abuse starts its own two servers; --target is not supported");
    }
    let args = Arc::new(args.clone());
    let drippers = args.addrs * args.drip_per_addr;
    let nofile = crate::procfs::raise_nofile();
    let needed = drippers + args.uploaders + args.login_spammers + 256;
    if (nofile as usize) < needed {
        bail!(
            "the open-file limit of the bench is {nofile}; this attack needs {needed} (ulimit -Hn, or run as root)"
        );
    }
    let dns = crate::dns::start_nxdomain()?;
    let (pa, pb) = (free_port()?, free_port()?);
    let mut staging = (0u64, 0u64);
    let mut a = BenchServer::start(opts, "a.test", 2, pa, |cfg| {
        cfg.dns.nameservers = vec![dns];
        cfg.dns.timeout_ms = 1000;
        cfg.dns
            .routes
            .insert("b.test".into(), vec![format!("127.0.0.1:{pb}")]);
        staging = cfg.limits.staging();
    })
    .await?;
    let b = BenchServer::start(opts, "b.test", 1, pb, |cfg| {
        cfg.dns.nameservers = vec![dns];
        cfg.dns.timeout_ms = 1000;
        cfg.dns
            .routes
            .insert("a.test".into(), vec![format!("127.0.0.1:{pa}")]);
    })
    .await?;
    a.login_all().await?;
    let (user, recipient) = (a.users[0].clone(), a.users[1].clone());

    // The legitimate user's messages, sealed before the clock starts.
    let cycle = args.legit_pause_ms.max(1) as f64 / 1000.0;
    let sessions = (args.secs / cycle).ceil() as usize + 1;
    let needed = sessions * args.legit_messages.max(1);
    let sealed = seal_all(&vec![(0, 1); needed], &a.users, &a.users, args.size)?;
    let size = (args.upload_mib * MIB) as u64;
    let head = Arc::new(upload_head(&recipient.address, &b.domain, size)?);

    let st = Arc::new(Counters::default());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let disk_before = a.data_dir.as_deref().map_or(0, dir_bytes);
    let hwm_before = a.hwm_kib();
    let cpu = crate::mail::cpu_now(&a);
    let monitor = Monitor::start(a.pid, a.data_dir.clone());
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.secs);
    let tls = ClientTlsConfig::default_shared();
    let opening = Arc::new(Semaphore::new(args.open_parallel.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..drippers {
        tasks.spawn(drip(
            a.addr,
            attacker(i % args.addrs.max(1)),
            args.clone(),
            end,
            opening.clone(),
            tls.clone(),
            st.clone(),
        ));
    }
    for i in 0..args.uploaders {
        tasks.spawn(upload(
            a.addr,
            i,
            args.clone(),
            end,
            head.clone(),
            size,
            tls.clone(),
            st.clone(),
        ));
    }
    for i in 0..args.login_spammers {
        tasks.spawn(spam_logins(
            a.addr,
            i,
            args.clone(),
            end,
            user.address.account.clone(),
            tls.clone(),
            st.clone(),
        ));
    }
    let legit_task = legit(
        a.addr,
        user,
        sealed,
        args.clone(),
        start + Duration::from_secs_f64(args.legit_delay),
        end,
    );
    let legit_task = if !args.legit_shared_runtime {
        let (tx, rx) = tokio::sync::oneshot::channel();
        std::thread::Builder::new()
            .name("legit".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the legitimate user");
                let _ = tx.send(rt.block_on(legit_task));
            })?;
        tokio::spawn(async move { rx.await.expect("the legitimate user's thread") })
    } else {
        tokio::spawn(legit_task)
    };
    while tasks.join_next().await.is_some() {}
    let mut seen = legit_task.await.context("the legitimate user's task")?;
    let attack_secs = start.elapsed().as_secs_f64();
    let cpu_after = a.cpu_split();
    // Let the server close what the attackers left and drop their staged bytes.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (rss_peak, disk_peak) = monitor.finish();
    let disk_after = a.data_dir.as_deref().map_or(0, dir_bytes);

    let mut run = Run::default();
    run.add("attack_secs", attack_secs, "s");
    run.add("legit_sessions", seen.sessions as f64, "");
    run.add("legit_logins", seen.login.len() as f64, "");
    run.add("legit_mails", seen.mail.len() as f64, "msgs");
    run.add("legit_errors", seen.errors as f64, "");
    run.add("legit_refused", seen.refused as f64, "");
    let mut both: Vec<Duration> = seen.login.iter().chain(&seen.mail).copied().collect();
    run.add_latency("legit_latency", &mut both);
    run.add_latency("legit_login_latency", &mut seen.login);
    run.add_latency("legit_mail_latency", &mut seen.mail);
    for (name, samples) in [
        "legit_login_connect",
        "legit_login_ohai",
        "legit_login_login",
        "legit_login_client_work",
        "legit_login_finish",
    ]
    .into_iter()
    .zip(seen.phases.iter_mut())
    {
        run.add_latency(name, samples);
    }
    run.notes.append(&mut seen.notes);
    run.add("data_dir_before", disk_before as f64 / MIB, "MiB");
    run.add(
        "data_dir_peak_growth",
        disk_peak.saturating_sub(disk_before) as f64 / MIB,
        "MiB",
    );
    run.add(
        "data_dir_growth_after",
        disk_after as f64 / MIB - disk_before as f64 / MIB,
        "MiB",
    );
    run.add("staging_budget_per_peer", staging.0 as f64 / MIB, "MiB");
    run.add("staging_budget_per_domain", staging.1 as f64 / MIB, "MiB");
    if let Some(kib) = hwm_before {
        run.add("server_hwm_before", kib as f64 / 1024.0, "MiB");
    }
    if let Some(kib) = a.hwm_kib() {
        run.add("server_hwm", kib as f64 / 1024.0, "MiB");
    }
    run.add("server_rss_sampled_peak", rss_peak as f64 / 1024.0, "MiB");
    if let (Some((au, asys)), Some((bu, bsys))) = (cpu.0, cpu_after) {
        run.add("server_cpu", (bu + bsys) - (au + asys), "s");
    }
    if let (Some(x), Some(y)) = (cpu.1, crate::procfs::cpu_secs(std::process::id())) {
        run.add("bench_cpu", y - x, "s");
    }
    let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
    run.add("drip_peak_open", g(&st.drip_peak), "conns");
    run.add("drip_opened", g(&st.drip_opened), "conns");
    run.add("drip_refused", g(&st.drip_refused), "conns");
    run.add("drip_failed", g(&st.drip_failed), "conns");
    run.add("drip_cut", g(&st.drip_cut), "conns");
    run.add("upload_started", g(&st.upload_started), "");
    run.add("upload_refused", g(&st.upload_refused), "");
    run.add("upload_abandoned", g(&st.upload_abandoned), "");
    run.add("upload_conn_refused", g(&st.upload_conn_refused), "");
    run.add("upload_failed", g(&st.upload_failed), "");
    run.add("upload_sent", g(&st.upload_bytes) / MIB, "MiB");
    run.add("login_spam_sent", g(&st.login_sent), "");
    run.add("login_spam_challenges", g(&st.login_challenges), "");
    run.add("login_spam_ratelimited", g(&st.login_ratelimited), "");
    run.add("login_spam_finish_refused", g(&st.login_finish_refused), "");
    run.add(
        "login_spam_finish_accepted",
        g(&st.login_finish_accepted),
        "",
    );
    run.add("login_spam_other", g(&st.login_other), "");
    run.add("login_spam_conn_refused", g(&st.login_conn_refused), "");
    run.add("login_spam_failed", g(&st.login_failed), "");
    run.notes
        .extend(st.notes.lock().unwrap_or_else(|p| p.into_inner()).drain(..));
    drop(b);
    Ok(run)
}
