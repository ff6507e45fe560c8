//! `keyrequest`: KEYREQUEST answers per second for local accounts' key
//! statements, one request at a time per connection and pipelined. With
//! `--proof`, KEYPROOF instead (PROTOCOL.md §20.5): the statement with its
//! epoch head, cosignatures and lookup proof; the server publishes an epoch
//! every second until every account is in the directory. With
//! `--after-epoch` as well, what a new epoch costs: after a key change and
//! the epoch that publishes it, every account's first KEYPROOF of the new
//! epoch, once as soon as the epoch is served (while the server makes the
//! proofs asked for before ahead) and once after it has made them.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use clap::Args;
use cmtp_proto::command::Command;
use cmtp_proto::reply::Status;
use cmtp_proto::statements::KeyStatement;
use serde_json::json;

use crate::conn::BenchConn;
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts};

/// Parameters of `keyrequest`.
#[derive(Args, Debug, Clone)]
pub(crate) struct KeyRequestArgs {
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 20)]
    pub(crate) connections: usize,
    /// Requests in all, per mode.
    #[arg(short = 'n', long, default_value_t = 50_000)]
    pub(crate) requests: usize,
    /// Requests outstanding per connection in the pipelined mode.
    #[arg(long, default_value_t = 16)]
    pub(crate) depth: usize,
    /// Accounts asked about, round robin.
    #[arg(short = 'u', long, default_value_t = 20)]
    pub(crate) users: usize,
    /// Which modes: both, single or pipelined.
    #[arg(long, default_value = "both")]
    pub(crate) mode: String,
    /// Ask KEYPROOF (statement and key directory proof) instead of KEYREQUEST.
    #[arg(long)]
    pub(crate) proof: bool,
    /// With --proof: then two new epochs, and after each every account's
    /// first KEYPROOF of the epoch (`after_epoch_now`: as soon as the epoch
    /// is served; `after_epoch_ready`: once the server has made the proofs
    /// ahead). `--mode none` skips the cached modes.
    #[arg(long)]
    pub(crate) after_epoch: bool,
    /// The server does not make proofs ahead after an epoch
    /// (`[transparency] precompute = false`), for comparison.
    #[arg(long)]
    pub(crate) no_precompute: bool,
}

impl KeyRequestArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "requests": self.requests,
            "depth": self.depth,
            "users": self.users,
            "mode": self.mode,
            "proof": self.proof,
            "after_epoch": self.after_epoch,
            "no_precompute": self.no_precompute,
        })
    }
}

struct Outcome {
    latencies: Vec<Duration>,
    ok: u64,
    errors: u64,
    first_error: Option<String>,
}

/// Sends `frames` (cycling) `count` times with at most `depth` outstanding.
async fn drive(conn: &mut BenchConn, frames: &[Vec<u8>], count: usize, depth: usize) -> Outcome {
    let mut out = Outcome {
        latencies: Vec::with_capacity(count),
        ok: 0,
        errors: 0,
        first_error: None,
    };
    let mut sent = 0usize;
    let mut in_flight: VecDeque<Instant> = VecDeque::with_capacity(depth);
    let mut batch = Vec::new();
    while out.ok + out.errors < count as u64 {
        // Top up the window in one write.
        batch.clear();
        while in_flight.len() < depth && sent < count {
            batch.extend_from_slice(&frames[sent % frames.len()]);
            in_flight.push_back(Instant::now());
            sent += 1;
        }
        if !batch.is_empty()
            && let Err(e) = conn.send(&batch).await
        {
            out.errors += (count - out.ok as usize - out.errors as usize) as u64;
            out.first_error.get_or_insert_with(|| format!("{e:#}"));
            break;
        }
        match conn.reply().await {
            Ok((r, _)) => {
                let t = in_flight.pop_front().expect("a request is in flight");
                out.latencies.push(t.elapsed());
                if r.status == Status::Success {
                    out.ok += 1;
                } else {
                    out.errors += 1;
                    out.first_error
                        .get_or_insert_with(|| format!("{} {}", r.status, r.text()));
                }
            }
            Err(e) => {
                out.errors += (count - out.ok as usize - out.errors as usize) as u64;
                out.first_error.get_or_insert_with(|| format!("{e:#}"));
                break;
            }
        }
    }
    out
}

async fn measure(
    run: &mut Run,
    prefix: &str,
    conns: Vec<BenchConn>,
    frames: &[Vec<u8>],
    // Requests in all; `None`: every account once.
    total: Option<usize>,
    depth: usize,
    server: &BenchServer,
) -> Vec<BenchConn> {
    let c = conns.len();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(c + 1));
    let mut handles = Vec::new();
    for (i, mut conn) in conns.into_iter().enumerate() {
        let (mine, count) = if let Some(total) = total {
            // Each connection starts at another account.
            let mut mine = frames.to_vec();
            mine.rotate_left(i % frames.len());
            (mine, total / c + usize::from(i < total % c))
        } else {
            // Every account once: connection i asks for every c-th.
            let mine: Vec<Vec<u8>> = frames.iter().skip(i).step_by(c).cloned().collect();
            let n = mine.len();
            (mine, n)
        };

        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let o = drive(&mut conn, &mine, count, depth).await;
            (conn, o)
        }));
    }
    let cpu = crate::mail::cpu_now(server);
    barrier.wait().await;
    let start = Instant::now();
    let mut conns = Vec::new();
    let mut lat = Vec::new();
    let (mut ok, mut errors) = (0, 0);
    for h in handles {
        let (conn, mut o) = h.await.expect("request task");
        conns.push(conn);
        lat.append(&mut o.latencies);
        ok += o.ok;
        errors += o.errors;
        if let Some(e) = o.first_error {
            run.notes.push(format!("{prefix}: {e}"));
        }
    }
    let secs = start.elapsed().as_secs_f64();
    run.add(&format!("{prefix}_answers"), ok as f64, "");
    run.add(&format!("{prefix}_errors"), errors as f64, "");
    run.add(&format!("{prefix}_per_s"), ok as f64 / secs, "ans/s");
    run.add_latency(&format!("{prefix}_latency"), &mut lat);
    if let (Some((u, s)), Some(b)) = (cpu.0, server.cpu_secs())
        && let a = u + s
        && ok > 0
    {
        run.add(
            &format!("{prefix}_server_cpu_per_req"),
            (b - a) / ok as f64 * 1e6,
            "µs",
        );
    }
    conns
}

/// One run of `keyrequest`.
pub(crate) async fn run(opts: &ServerOpts, args: &KeyRequestArgs) -> anyhow::Result<Run> {
    let u = args.users.max(1);
    let proof = args.proof;
    let precompute = !args.no_precompute;
    let server = BenchServer::start(opts, "a.test", u, 0, |c| {
        if proof {
            c.transparency.epoch_secs = 1;
            c.transparency.precompute = precompute;
            // The server says when it has made the proofs ahead.
            c.log.level = format!("{},cmtp_server::kt=info", c.log.level);
        }
    })
    .await?;
    let frames: Vec<Vec<u8>> = server
        .users
        .iter()
        .map(|user| {
            if proof {
                Command::KeyProof {
                    user: user.address.account.clone(),
                    domain: Some(server.domain.clone()),
                }
            } else {
                Command::KeyRequest {
                    user: Some(user.address.account.clone()),
                    domain: Some(server.domain.clone()),
                }
            }
            .to_bytes()
        })
        .collect();
    let mut conns = Vec::new();
    for _ in 0..args.connections.max(1) {
        let mut c = BenchConn::connect(server.addr, None).await?;
        c.ohai().await?;
        conns.push(c);
    }
    // Warm-up: the first request for an account issues and stores its
    // statement; check each answer whole once (signature, statement). With
    // --proof, wait until each account's key is proven (the next epoch).
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut proof_size = None;
    for (i, f) in frames.iter().enumerate() {
        let n = conns.len();
        let c = &mut conns[i % n];
        loop {
            c.send(f).await?;
            let (r, seq) = c.reply().await?;
            if r.status != Status::Success {
                anyhow::bail!("KEYREQUEST: {} {}", r.status, r.text());
            }
            c.verify(&r, seq, f)?;
            if !proof {
                KeyStatement::decode(&r.body)?;
                break;
            }
            let p = cmtp_proto::kt::ProvenKey::decode(&r.body)?;
            if let Some((_, lookup)) = &p.proof {
                proof_size = Some((lookup.len(), r.body.len()));
                break;
            }
            if Instant::now() > deadline {
                anyhow::bail!("no epoch published the accounts within 120 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut run = Run::default();
    if let Some((lookup, body)) = proof_size {
        run.add("lookup_proof_bytes", lookup as f64, "B");
        run.add("answer_bytes", body as f64, "B");
    }
    if matches!(args.mode.as_str(), "both" | "single") {
        conns = measure(
            &mut run,
            "single",
            conns,
            &frames,
            Some(args.requests),
            1,
            &server,
        )
        .await;
    }
    if matches!(args.mode.as_str(), "both" | "pipelined") {
        let depth = args.depth.max(1);
        conns = measure(
            &mut run,
            "pipelined",
            conns,
            &frames,
            Some(args.requests),
            depth,
            &server,
        )
        .await;
    }
    if proof && args.after_epoch {
        for (round, ready) in [(1, false), (2, true)] {
            conns =
                after_epoch(&mut run, conns, &frames, &server, round, ready, precompute).await?;
        }
    }
    Ok(run)
}

/// The epoch of the head in a KEYPROOF answer to `frame`.
async fn proven_epoch(c: &mut BenchConn, frame: &[u8]) -> anyhow::Result<Option<u64>> {
    c.send(frame).await?;
    let (r, _) = c.reply().await?;
    if r.status != Status::Success {
        anyhow::bail!("KEYPROOF: {} {}", r.status, r.text());
    }
    let p = cmtp_proto::kt::ProvenKey::decode(&r.body)?;
    Ok(p.proof.map(|(h, _)| h.head.head.epoch))
}

/// A key change (a new account), the epoch that publishes it, then every
/// account's first KEYPROOF of that epoch: at once (`ready` false) or once
/// the server has made the proofs ahead (if it makes them: `precompute`).
async fn after_epoch(
    run: &mut Run,
    mut conns: Vec<BenchConn>,
    frames: &[Vec<u8>],
    server: &BenchServer,
    round: usize,
    ready: bool,
    precompute: bool,
) -> anyhow::Result<Vec<BenchConn>> {
    let before = proven_epoch(&mut conns[0], &frames[0]).await?;
    server.add_account(&format!("newcomer{round}")).await?;
    let t = Instant::now();
    let epoch = loop {
        let e = proven_epoch(&mut conns[0], &frames[0]).await?;
        if e > before {
            break e.unwrap_or_default();
        }
        if t.elapsed() > Duration::from_secs(120) {
            anyhow::bail!("no new epoch within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let prefix = if ready {
        if precompute {
            // The server logs when it has made them, with its count and time.
            let made = format!("key directory proofs made ahead epoch={epoch} ");
            let t = Instant::now();
            while server.log_lines(&made) == 0 {
                if t.elapsed() > Duration::from_secs(600) {
                    anyhow::bail!("epoch {epoch}'s proofs not made within 600 s");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            run.add("made_ahead_wait_s", t.elapsed().as_secs_f64(), "s");
            if let (Some(n), Some(ms)) = (
                server.log_number(&made, "made="),
                server.log_number(&made, "elapsed_ms="),
            ) {
                run.add("made_ahead", n as f64, "");
                run.add("made_ahead_s", ms as f64 / 1000.0, "s");
                run.add(
                    "made_ahead_per_s",
                    n as f64 * 1000.0 / ms.max(1) as f64,
                    "proofs/s",
                );
            }
        }
        "after_epoch_ready"
    } else {
        "after_epoch_now"
    };
    Ok(measure(run, prefix, conns, frames, None, 1, server).await)
}
