//! `bigmail`: K connections each stream one large message at once; reports
//! the server's peak resident memory (VmHWM).
//!
//! The server never opens a body, so the bodies are random bytes (as a
//! sealed box looks to it) from one buffer filled before the clock starts,
//! each with its own first 32 bytes so that every message has its own hash.

use std::time::{Duration, Instant};

use clap::Args;
use cmtp_proto::command::Command;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::reply::Status;
use rand_core::RngCore;
use serde_json::json;

use crate::report::Run;
use crate::server::{BenchServer, ServerOpts};
use crate::setup::logged_in;

/// Parameters of `bigmail`.
#[derive(Args, Debug, Clone)]
pub(crate) struct BigMailArgs {
    /// Concurrent connections, one message each.
    #[arg(short = 'k', long, default_value_t = 100)]
    pub(crate) connections: usize,
    /// Body size of each message in MiB.
    #[arg(short = 's', long, default_value_t = 16.0)]
    pub(crate) size_mib: f64,
    /// Bytes per write while streaming.
    #[arg(long, default_value_t = 256 * 1024)]
    pub(crate) write_size: usize,
    /// Accounts (default: min(K, 20)).
    #[arg(short = 'u', long)]
    pub(crate) users: Option<usize>,
}

impl BigMailArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "size_mib": self.size_mib,
            "write_size": self.write_size,
        })
    }
}

/// One run of `bigmail`.
pub(crate) async fn run(opts: &ServerOpts, args: &BigMailArgs) -> anyhow::Result<Run> {
    let k = args.connections.max(1);
    let u = args.users.unwrap_or(k.min(20)).max(1);
    let size = (args.size_mib * (1 << 20) as f64) as u64;
    let mut server = BenchServer::start(opts, "a.test", u, 0, |cfg| {
        cfg.limits.max_message_size = cfg.limits.max_message_size.max(size + (1 << 20));
        cfg.connections.max_per_peer = cfg.connections.max_per_peer.max(k + 64);
        let reserved = cfg.connection_limits().reserved_for_users;
        cfg.connections.max = cfg.connections.max.max(k + 64 + reserved);
    })
    .await?;
    server.login_all().await?;
    let mut body = vec![0u8; size as usize];
    rand_core::OsRng.fill_bytes(&mut body);
    let body = std::sync::Arc::new(body);
    let conns = logged_in(server.addr, &server.users, k).await?;
    let mut run = Run::default();
    let hwm_before = server.hwm_kib();
    if let Some(kib) = hwm_before {
        run.add("server_hwm_before", kib as f64 / 1024.0, "MiB");
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(k + 1));
    let mut handles = Vec::with_capacity(k);
    for (i, mut conn) in conns.into_iter().enumerate() {
        let from = &server.users[i % u];
        let to = &server.users[(i + 1) % u];
        let m = Message {
            version: 1,
            destination: to.address.clone(),
            source: Source::user(from.address.clone()),
            log: vec![],
            body: vec![],
            attachments: vec![],
            trailer: [0; 64],
        };
        let mut env = m.envelope();
        env.body_len = size;
        let mut head = Command::Mail.to_bytes();
        env.encode_head(0, &mut head);
        let mut unique = [0u8; 32];
        rand_core::OsRng.fill_bytes(&mut unique);
        let body = body.clone();
        let barrier = barrier.clone();
        let write = args.write_size.max(1);
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let t = Instant::now();
            let r = async {
                let first = unique.len().min(body.len());
                head.extend_from_slice(&unique[..first]);
                conn.send(&head).await?;
                for piece in body[first..].chunks(write) {
                    conn.send(piece).await?;
                }
                conn.send(&[0u8; 64]).await?;
                let (reply, _) = conn.reply().await?;
                if reply.status != Status::Success {
                    anyhow::bail!("MAIL: {} {}", reply.status, reply.text().replace('\0', " "));
                }
                Ok(t.elapsed())
            }
            .await;
            (conn, r)
        }));
    }
    // Watch the server's resident memory while it works.
    let pid = server.pid;
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let sampler = tokio::spawn(async move {
        let mut peak = 0u64;
        loop {
            if let Some(kib) = pid.and_then(crate::procfs::rss_kib) {
                peak = peak.max(kib);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stop_rx.changed() => return peak,
            }
        }
    });
    let cpu = crate::mail::cpu_now(&server);
    barrier.wait().await;
    let start = Instant::now();
    let mut lat = Vec::new();
    let mut errors = 0u64;
    for h in handles {
        let (_conn, r) = h.await.expect("sender task");
        match r {
            Ok(d) => lat.push(d),
            Err(e) => {
                errors += 1;
                if run.notes.len() < 5 {
                    run.notes.push(format!("{e:#}"));
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    let sampled_peak = sampler.await.unwrap_or(0);
    let accepted = lat.len() as u64;
    run.add("accepted", accepted as f64, "msgs");
    run.add("errors", errors as f64, "msgs");
    run.add("elapsed", secs, "s");
    run.add(
        "mib_per_s",
        accepted as f64 * size as f64 / secs / (1 << 20) as f64,
        "MiB/s",
    );
    run.add_latency("latency", &mut lat);
    crate::mail::add_cpu(&mut run, &server, cpu, accepted);
    if let Some(kib) = server.hwm_kib() {
        run.add("server_hwm", kib as f64 / 1024.0, "MiB");
    }
    if sampled_peak > 0 {
        run.add(
            "server_rss_sampled_peak",
            sampled_peak as f64 / 1024.0,
            "MiB",
        );
    }
    if let Some(kib) = server.rss_kib() {
        run.add("server_rss_after", kib as f64 / 1024.0, "MiB");
    }
    Ok(run)
}
