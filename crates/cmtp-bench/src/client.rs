//! `client`: the mail program's sync (issue 13). A mailbox of M messages is
//! filled over MAIL (pipelined on several connections, not timed); the
//! client then syncs it into a fresh local store — listing newest first,
//! fetching, decrypting and verifying each message once — which gives the
//! initial sync rate. Then N new messages arrive and `inbox` runs again:
//! its time and the bytes on the wire (counted by a proxy between client
//! and server) show that it costs O(new messages). When the `cmtp` binary
//! is found next to this one, the same is timed as a real `cmtp inbox`
//! process, as a person runs it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cmtp_app::home::{Config, Home, KsfSetting};
use cmtp_app::session::{Client, Options};
use cmtp_app::store::LocalStore;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::reply::Status;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::report::Run;
use crate::server::{BenchServer, ServerOpts, User};
use crate::setup::{Prebuilt, logged_in, seal_all};

/// Parameters of `client`.
#[derive(Args, Debug, Clone)]
pub(crate) struct ClientArgs {
    /// Messages in the mailbox before the first sync.
    #[arg(short = 'm', long, default_value_t = 10_000)]
    pub(crate) messages: usize,
    /// New messages before the second `inbox`.
    #[arg(short = 'n', long, default_value_t = 10)]
    pub(crate) new: usize,
    /// Size of each message's text in bytes.
    #[arg(short = 's', long, default_value_t = 200)]
    pub(crate) size: usize,
    /// Connections that fill the mailbox.
    #[arg(long, default_value_t = 8)]
    pub(crate) fill_connections: usize,
    /// The `cmtp` binary to time as a process (default: next to this one).
    #[arg(long, value_name = "FILE")]
    pub(crate) cmtp: Option<PathBuf>,
}

impl ClientArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "messages": self.messages,
            "new": self.new,
            "size": self.size,
        })
    }
}

/// A TCP proxy that counts the bytes it forwards (both directions).
struct CountingProxy {
    addr: SocketAddr,
    bytes: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    async fn start(upstream: SocketAddr) -> anyhow::Result<CountingProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let bytes = Arc::new(AtomicU64::new(0));
        let counter = bytes.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(upstream).await else {
                    continue;
                };
                let (cr, cw) = client.into_split();
                let (sr, sw) = server.into_split();
                for (mut from, mut to) in [
                    (
                        Box::new(cr) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                        Box::new(sw) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                    ),
                    (Box::new(sr), Box::new(cw)),
                ] {
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 64 * 1024];
                        while let Ok(n) = from.read(&mut buf).await {
                            if n == 0 || to.write_all(&buf[..n]).await.is_err() {
                                break;
                            }
                            counter.fetch_add(n as u64, Ordering::Relaxed);
                        }
                        let _ = to.shutdown().await;
                    });
                }
            }
        });
        Ok(CountingProxy { addr, bytes, task })
    }

    fn take(&self) -> u64 {
        self.bytes.swap(0, Ordering::Relaxed)
    }
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delivers `messages` to the server over `conns` connections, each
/// pipelining a window of messages before it reads their replies.
async fn fill(
    addr: SocketAddr,
    sender: &User,
    messages: Vec<Prebuilt>,
    conns: usize,
) -> anyhow::Result<()> {
    let senders = vec![sender.clone()];
    let connections = logged_in(addr, &senders, conns.max(1)).await?;
    let per = messages.len().div_ceil(conns.max(1)).max(1);
    let mut parts: Vec<Vec<Prebuilt>> = Vec::new();
    let mut it = messages.into_iter().peekable();
    while it.peek().is_some() {
        parts.push(it.by_ref().take(per).collect());
    }
    let mut set = tokio::task::JoinSet::new();
    for (mut c, part) in connections.into_iter().zip(parts) {
        set.spawn(async move {
            for window in part.chunks(32) {
                for m in window {
                    c.send(&m.bytes).await?;
                }
                for _ in window {
                    let (r, _) = c.reply().await?;
                    if r.status != Status::Success {
                        bail!("MAIL: {} {}", r.status, r.text());
                    }
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// A home for `user` whose configuration names `server`.
fn home_for(dir: &std::path::Path, user: &User, server: SocketAddr) -> anyhow::Result<Home> {
    let home = Home::at(dir);
    home.save_identity(user.key(), &user.address)?;
    let mut cfg = Config {
        address: Some(user.address.to_string()),
        server: Some(server.to_string()),
        ..Config::default()
    };
    cfg.security.min_ksf = Some(KsfSetting::from(KsfParams::INSECURE_TEST));
    home.save_config(&cfg)?;
    Ok(home)
}

/// What `cmtp inbox` does, in this process: log in, send what waits, sync,
/// read the newest page of threads of the inbox from the local store.
async fn inbox(home: &Home) -> anyhow::Result<(u64, usize)> {
    let client = Client::open(home.clone(), Options::default())?;
    let address = client.address()?;
    let mut store = LocalStore::open(&home.store_path(), &address.to_string())?;
    let mut session = client.session().await?;
    cmtp_app::send::flush(&mut session, &mut store, true, |_| {}).await?;
    let report = cmtp_app::sync::sync(&mut session, &mut store, |_| {}).await?;
    session.close().await;
    // What `cmtp inbox` shows: the newest 50 threads, and the counts.
    let page = store.threads("Inbox", 0, 50)?;
    store.count("Inbox")?;
    store.changed_keys()?;
    Ok((report.fetched, page.len()))
}

fn cmtp_binary(args: &ClientArgs) -> Option<PathBuf> {
    if let Some(p) = &args.cmtp {
        return Some(p.clone());
    }
    let exe = std::env::current_exe().ok()?;
    let p = exe.parent()?.join("cmtp");
    p.is_file().then_some(p)
}

pub(crate) async fn run(opts: &ServerOpts, args: &ClientArgs) -> anyhow::Result<Run> {
    let mut server = BenchServer::start(opts, "a.test", 2, 0, |_| {}).await?;
    server.login_all().await?;
    let (sender, recipient) = (server.users[0].clone(), server.users[1].clone());
    let mut run = Run::default();

    let t = Instant::now();
    let pairs = vec![(0usize, 1usize); args.messages + args.new];
    let mut sealed = seal_all(&pairs, &server.users, &server.users, args.size)?;
    let new = sealed.split_off(args.messages);
    fill(server.addr, &sender, sealed, args.fill_connections).await?;
    eprintln!(
        "cmtp-bench client: {} messages in the mailbox after {:.1} s",
        args.messages,
        t.elapsed().as_secs_f64()
    );

    let proxy = CountingProxy::start(server.addr).await?;
    let dir = tempfile::Builder::new()
        .prefix("cmtp-bench-home-")
        .tempdir()?;
    let home = home_for(dir.path(), &recipient, proxy.addr)?;

    // The first sync: everything.
    let t = Instant::now();
    let (fetched, _) = inbox(&home).await?;
    let secs = t.elapsed().as_secs_f64();
    if fetched != args.messages as u64 {
        bail!(
            "the first sync fetched {fetched} messages, not {}",
            args.messages
        );
    }
    run.add("initial_sync_s", secs, "s");
    run.add("initial_sync_rate", fetched as f64 / secs, "msg/s");
    run.add("initial_sync_bytes", proxy.take() as f64, "B");
    let store_size = std::fs::metadata(home.store_path())?.len();
    run.add(
        "local_store_size",
        store_size as f64 / (1 << 20) as f64,
        "MiB",
    );

    // Nothing new: the cost of a sync that finds nothing.
    let t = Instant::now();
    inbox(&home).await?;
    run.add(
        "inbox_nothing_new_ms",
        t.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    run.add("inbox_nothing_new_bytes", proxy.take() as f64, "B");

    // N new messages.
    fill(server.addr, &sender, new, 1).await?;
    proxy.take();
    let t = Instant::now();
    let (fetched, shown) = inbox(&home).await?;
    run.add("inbox_new_ms", t.elapsed().as_secs_f64() * 1e3, "ms");
    run.add("inbox_new_bytes", proxy.take() as f64, "B");
    if fetched != args.new as u64 || shown == 0 {
        bail!(
            "the second inbox fetched {fetched} messages, not {}",
            args.new
        );
    }

    // The same as a person runs it: the `cmtp` process (text output).
    if let Some(bin) = cmtp_binary(args) {
        let extra: Vec<Prebuilt> = seal_all(
            &vec![(0, 1); args.new],
            &server.users,
            &server.users,
            args.size,
        )?;
        fill(server.addr, &sender, extra, 1).await?;
        proxy.take();
        let t = Instant::now();
        let out = tokio::process::Command::new(&bin)
            .arg("--home")
            .arg(dir.path())
            .arg("inbox")
            .env_remove("CMTP_HOME")
            .env_remove("CMTP_SERVER")
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", bin.display()))?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!(
                "cmtp inbox failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        run.add("cmtp_inbox_process_new_ms", ms, "ms");
        run.add("cmtp_inbox_process_new_bytes", proxy.take() as f64, "B");
        let t = Instant::now();
        let out = tokio::process::Command::new(&bin)
            .arg("--home")
            .arg(dir.path())
            .args(["inbox", "--offline"])
            .stdin(std::process::Stdio::null())
            .output()
            .await?;
        if !out.status.success() {
            bail!("cmtp inbox --offline failed");
        }
        run.add(
            "cmtp_inbox_process_offline_ms",
            t.elapsed().as_secs_f64() * 1e3,
            "ms",
        );
    } else {
        run.notes.push(
            "no cmtp binary next to cmtp-bench: the process timing was skipped (build it with cargo build --release -p cmtp)".into(),
        );
    }
    tokio::time::sleep(Duration::from_millis(10)).await;
    Ok(run)
}
