//! `idle`: N connections held open after OHAI; then the server must still
//! answer a new connection's NOOP quickly. Reports the server's resident
//! memory in all and per connection.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use cmtp_proto::command::Command;
use cmtp_proto::reply::Status;
use serde_json::json;
use tokio::sync::Semaphore;

use crate::conn::BenchConn;
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts};

/// Parameters of `idle`.
#[derive(Args, Debug, Clone)]
pub(crate) struct IdleArgs {
    /// Connections to hold open.
    #[arg(short = 'n', long, default_value_t = 10_000)]
    pub(crate) connections: usize,
    /// Spread the connections over source addresses 127.0.0.1 ..
    /// 127.0.0.K (for a server whose per-address limit is lower than N).
    #[arg(long, default_value_t = 1)]
    pub(crate) source_addrs: u8,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    pub(crate) open_parallel: usize,
    /// How long to hold them before measuring, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub(crate) hold: f64,
    /// NOOPs sent on the new connection (and on as many idle ones).
    #[arg(long, default_value_t = 200)]
    pub(crate) noops: usize,
}

impl IdleArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "source_addrs": self.source_addrs,
            "hold_s": self.hold,
            "noops": self.noops,
        })
    }
}

async fn noops(conn: &mut BenchConn, n: usize) -> anyhow::Result<Vec<Duration>> {
    let frame = Command::Noop.to_bytes();
    let mut lat = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        conn.send(&frame).await?;
        let (r, _) = conn.reply().await?;
        lat.push(t.elapsed());
        if r.status != Status::Success {
            anyhow::bail!("NOOP: {} {}", r.status, r.text());
        }
    }
    Ok(lat)
}

/// One run of `idle`.
pub(crate) async fn run(opts: &ServerOpts, args: &IdleArgs) -> anyhow::Result<Run> {
    let n = args.connections;
    let nofile = crate::procfs::raise_nofile();
    if (nofile as usize) < n + 64 {
        anyhow::bail!(
            "the open-file limit of the bench is {nofile}; {n} connections need more (ulimit -Hn)"
        );
    }
    let server = BenchServer::start(opts, "a.test", 0, 0, |cfg| {
        // (connections that are not logged in leave the reserved share free)
        let reserved = cfg.connection_limits().reserved_for_users;
        cfg.connections.max = cfg.connections.max.max(n + 64 + reserved);
        cfg.connections.max_per_peer = cfg.connections.max_per_peer.max(n + 64);
    })
    .await?;
    let mut run = Run::default();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server.rss_kib();
    if let Some(kib) = before {
        run.add("server_rss_before", kib as f64 / 1024.0, "MiB");
    }
    let k = args.source_addrs.max(1);
    let sem = Arc::new(Semaphore::new(args.open_parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let t = Instant::now();
    for i in 0..n {
        let sem = sem.clone();
        let addr = server.addr;
        let source =
            (k > 1).then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % k as usize) as u8)));
        set.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore");
            let mut c = BenchConn::connect(addr, source).await?;
            c.ohai_unchecked().await?;
            c.shrink();
            anyhow::Ok(c)
        });
    }
    let mut held = Vec::with_capacity(n);
    let mut failed = 0u64;
    while let Some(r) = set.join_next().await {
        match r.expect("connect task") {
            Ok(c) => held.push(c),
            Err(e) => {
                failed += 1;
                if run.notes.len() < 3 {
                    run.notes.push(format!("{e:#}"));
                }
            }
        }
    }
    run.add("connections", held.len() as f64, "");
    run.add("failed", failed as f64, "");
    run.add("open_time", t.elapsed().as_secs_f64(), "s");
    tokio::time::sleep(Duration::from_secs_f64(args.hold)).await;
    let after = server.rss_kib();
    if let (Some(b), Some(a)) = (before, after) {
        run.add("server_rss", a as f64 / 1024.0, "MiB");
        if !held.is_empty() {
            run.add(
                "server_rss_per_conn",
                a.saturating_sub(b) as f64 / held.len() as f64,
                "KiB",
            );
        }
    }
    // A new connection while all those are open: banner, then NOOPs.
    let t = Instant::now();
    let mut fresh = BenchConn::connect(server.addr, None).await?;
    run.add("new_conn_banner", t.elapsed().as_secs_f64() * 1e3, "ms");
    let mut lat = noops(&mut fresh, args.noops).await?;
    run.add_latency("noop", &mut lat);
    // And the idle ones still answer.
    let step = (held.len() / args.noops.max(1)).max(1);
    let mut alive = 0;
    let mut lat = Vec::new();
    for c in held.iter_mut().step_by(step).take(args.noops) {
        if let Ok(mut l) = noops(c, 1).await {
            alive += 1;
            lat.append(&mut l);
        }
    }
    run.add("idle_sampled_alive", alive as f64, "");
    run.add_latency("idle_noop", &mut lat);
    if let Some(kib) = server.hwm_kib() {
        run.add("server_hwm", kib as f64 / 1024.0, "MiB");
    }
    drop(held);
    Ok(run)
}
