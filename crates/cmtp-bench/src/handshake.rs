//! `handshake`: full TLS 1.3 handshakes per second and the server's CPU
//! time per handshake (PROTOCOL.md §4.1), with the hybrid post-quantum
//! group X25519MLKEM768 (the default) and with X25519 alone.
//!
//! One handshake is what a new connection costs before its first command:
//! TCP connect, the banner, the whole TLS handshake (no resumption: the
//! server issues no tickets), the checks of the `cmtp/2` protocol and the
//! raw public key, then `close_notify`; the bench waits until the server
//! has closed its side, so the server has processed everything by then.
//! C connections at a time, N handshakes per group; the server's CPU time
//! (utime + stime from /proc) over each phase divided by N.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use cmtp_proto::tls::{ClientTlsConfig, KeyExchange, NamedGroup};
use serde_json::json;

use crate::conn::{BenchConn, Hello};
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts};

/// Parameters of `handshake`.
#[derive(Args, Debug, Clone)]
pub(crate) struct HandshakeArgs {
    /// Handshakes under way at once.
    #[arg(short = 'c', long, default_value_t = 8)]
    pub(crate) connections: usize,
    /// Handshakes per group.
    #[arg(short = 'n', long, default_value_t = 5_000)]
    pub(crate) handshakes: usize,
    /// Which key exchange the client offers: both (one phase each),
    /// hybrid (X25519MLKEM768, the default of cmtp) or classical (X25519 only).
    #[arg(long, default_value = "both", value_parser = ["both", "hybrid", "classical"])]
    pub(crate) groups: String,
}

impl HandshakeArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "handshakes": self.handshakes,
            "groups": self.groups,
        })
    }
}

/// What one handshaking task did.
#[derive(Default)]
struct Outcome {
    /// Connect to established, per handshake.
    latencies: Vec<Duration>,
    ok: u64,
    errors: u64,
    bytes: u64,
    wrong_group: u64,
    first_error: Option<String>,
}

async fn handshakes(
    server: std::net::SocketAddr,
    tls: ClientTlsConfig,
    expect: NamedGroup,
    count: usize,
) -> Outcome {
    let mut out = Outcome {
        latencies: Vec::with_capacity(count),
        ..Outcome::default()
    };
    for _ in 0..count {
        let t = Instant::now();
        let r = async {
            let conn = BenchConn::open(server, None, &tls, Hello::Early)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let established = t.elapsed();
            let group = conn.handshake.group;
            let (bytes_in, bytes_out) = conn.close().await?;
            anyhow::Ok((established, group, bytes_in + bytes_out))
        }
        .await;
        match r {
            Ok((latency, group, bytes)) => {
                out.ok += 1;
                out.latencies.push(latency);
                out.bytes += bytes;
                if group != Some(expect) {
                    out.wrong_group += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("negotiated {group:?}, not {expect:?}"));
                }
            }
            Err(e) => {
                out.errors += 1;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
            }
        }
    }
    out
}

/// One phase: `total` handshakes offering `kx`.
async fn phase(
    run: &mut Run,
    prefix: &str,
    server: &BenchServer,
    kx: KeyExchange,
    c: usize,
    total: usize,
) -> anyhow::Result<()> {
    let tls = ClientTlsConfig::new(kx);
    let expect = match kx {
        KeyExchange::ClassicalOnly => NamedGroup::X25519,
        _ => NamedGroup::X25519MLKEM768,
    };
    // Warm-up, not counted: one handshake, which also checks the group.
    let warm = handshakes(server.addr, tls.clone(), expect, 1).await;
    if warm.ok != 1 || warm.wrong_group != 0 {
        bail!(
            "{prefix}: the first handshake failed: {}",
            warm.first_error.unwrap_or_default()
        );
    }
    let barrier = Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut tasks = Vec::with_capacity(c);
    for i in 0..c {
        let count = total / c + usize::from(i < total % c);
        let barrier = barrier.clone();
        let tls = tls.clone();
        let addr = server.addr;
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            handshakes(addr, tls, expect, count).await
        }));
    }
    let cpu = crate::mail::cpu_now(server);
    barrier.wait().await;
    let start = Instant::now();
    let mut all = Outcome::default();
    for t in tasks {
        let mut o = t.await.expect("handshake task");
        all.latencies.append(&mut o.latencies);
        all.ok += o.ok;
        all.errors += o.errors;
        all.bytes += o.bytes;
        all.wrong_group += o.wrong_group;
        if let Some(e) = o.first_error
            && run.notes.len() < 5
        {
            run.notes.push(format!("{prefix}: {e}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    // The server finishes each connection as the bench sees its close; let
    // its last tasks end before reading its CPU time.
    tokio::time::sleep(Duration::from_millis(100)).await;
    run.add(&format!("{prefix}_handshakes"), all.ok as f64, "");
    run.add(&format!("{prefix}_errors"), all.errors as f64, "");
    run.add(&format!("{prefix}_wrong_group"), all.wrong_group as f64, "");
    run.add(&format!("{prefix}_per_s"), all.ok as f64 / secs, "hs/s");
    if all.ok > 0 {
        run.add(
            &format!("{prefix}_bytes_per_hs"),
            all.bytes as f64 / all.ok as f64,
            "B",
        );
    }
    run.add_latency(&format!("{prefix}_latency"), &mut all.latencies);
    let me = std::process::id();
    if let (Some((au, asys)), Some((bu, bsys))) = (cpu.0, server.cpu_split())
        && all.ok > 0
    {
        let n = all.ok as f64;
        run.add(
            &format!("{prefix}_server_cpu_per_hs"),
            ((bu + bsys) - (au + asys)) / n * 1e6,
            "µs",
        );
        run.add(
            &format!("{prefix}_server_cpu_sys_per_hs"),
            (bsys - asys) / n * 1e6,
            "µs",
        );
    }
    if let (Some(a), Some(b)) = (cpu.1, crate::procfs::cpu_secs(me))
        && all.ok > 0
    {
        run.add(
            &format!("{prefix}_bench_cpu_per_hs"),
            (b - a) / all.ok as f64 * 1e6,
            "µs",
        );
    }
    Ok(())
}

/// One run of `handshake`.
pub(crate) async fn run(opts: &ServerOpts, args: &HandshakeArgs) -> anyhow::Result<Run> {
    let c = args.connections.max(1);
    let server = BenchServer::start(opts, "a.test", 0, 0, |cfg| {
        cfg.connections.max_per_peer = cfg.connections.max_per_peer.max(c + 64);
    })
    .await?;
    let mut run = Run::default();
    if matches!(args.groups.as_str(), "both" | "hybrid") {
        phase(
            &mut run,
            "hybrid",
            &server,
            KeyExchange::HybridPostQuantum,
            c,
            args.handshakes,
        )
        .await?;
    }
    if matches!(args.groups.as_str(), "both" | "classical") {
        phase(
            &mut run,
            "classical",
            &server,
            KeyExchange::ClassicalOnly,
            c,
            args.handshakes,
        )
        .await?;
    }
    if let Some(kib) = server.rss_kib() {
        run.add("server_rss", kib as f64 / 1024.0, "MiB");
    }
    Ok(run)
}
