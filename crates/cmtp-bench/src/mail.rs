//! `mail`: local delivery with durable SUCCESS. C logged-in connections send
//! M pre-sealed messages between local accounts; each connection waits for
//! the signed SUCCESS (the server answers only after its durable commit)
//! before it sends the next message.

use std::time::{Duration, Instant};

use clap::Args;
use cmtp_proto::reply::Status;
use cmtp_proto::statements::ReceiptBody;
use serde_json::json;

use crate::conn::BenchConn;
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts};
use crate::setup::{Prebuilt, logged_in, mailbox_count, seal_all};

/// Parameters of `mail`.
#[derive(Args, Debug, Clone)]
pub(crate) struct MailArgs {
    /// Concurrent connections.
    #[arg(short = 'c', long, default_value_t = 20)]
    pub(crate) connections: usize,
    /// Messages in all.
    #[arg(short = 'm', long, default_value_t = 20_000)]
    pub(crate) messages: usize,
    /// Size of each message's text in bytes (as smtp-source -l); the sealed
    /// message on the wire is about 330 bytes larger.
    #[arg(short = 's', long, default_value_t = 4096)]
    pub(crate) size: usize,
    /// Accounts (default: one per connection). Connection i sends as
    /// account i mod U to account (i+1) mod U.
    #[arg(short = 'u', long)]
    pub(crate) users: Option<usize>,
    /// Check the signature of every reply and receipt (client CPU!); by
    /// default the first reply of each connection is checked, and every
    /// receipt's hash is compared with the message's.
    #[arg(long)]
    pub(crate) verify: bool,
}

impl MailArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "messages": self.messages,
            "size": self.size,
            "users": self.user_count(),
            "verify": self.verify,
        })
    }

    fn user_count(&self) -> usize {
        self.users.unwrap_or(self.connections).max(1)
    }
}

/// What one connection did.
pub(crate) struct ConnResult {
    pub(crate) latencies: Vec<Duration>,
    pub(crate) accepted: u64,
    pub(crate) errors: u64,
    pub(crate) bytes: u64,
    pub(crate) first_error: Option<String>,
}

/// Sends `messages` one after the other on `conn`, each after the SUCCESS
/// of the previous one.
pub(crate) async fn send_sequentially(
    conn: &mut BenchConn,
    messages: &[Prebuilt],
    verify_all: bool,
) -> ConnResult {
    let mut res = ConnResult {
        latencies: Vec::with_capacity(messages.len()),
        accepted: 0,
        errors: 0,
        bytes: 0,
        first_error: None,
    };
    for (i, m) in messages.iter().enumerate() {
        let t = Instant::now();
        let outcome = async {
            conn.send(&m.bytes).await?;
            let (reply, seq) = conn.reply().await?;
            let elapsed = t.elapsed();
            if reply.status != Status::Success {
                anyhow::bail!("MAIL: {} {}", reply.status, reply.text().replace('\0', " "));
            }
            let receipt = ReceiptBody::decode(&reply.body)?;
            if receipt.hash != m.hash {
                anyhow::bail!("the receipt is for another message");
            }
            // The reply's signature is the receipt's (PROTOCOL.md §10.1).
            if verify_all || i == 0 {
                conn.verify(&reply, seq, b"MAIL\0")?;
            }
            Ok(elapsed)
        }
        .await;
        match outcome {
            Ok(elapsed) => {
                res.latencies.push(elapsed);
                res.accepted += 1;
                res.bytes += m.bytes.len() as u64;
            }
            Err(e) => {
                res.errors += 1;
                res.first_error.get_or_insert_with(|| format!("{e:#}"));
                if conn_is_unusable(&e) {
                    res.errors += (messages.len() - i - 1) as u64;
                    break;
                }
            }
        }
    }
    res
}

fn conn_is_unusable(e: &anyhow::Error) -> bool {
    let s = format!("{e:#}");
    s.contains("closed") || s.contains("connecting") || s.contains("no answer")
}

/// Runs the connections' sends at once; returns the results and the wall time.
pub(crate) async fn send_all(
    conns: Vec<BenchConn>,
    plan: Vec<Vec<Prebuilt>>,
    verify_all: bool,
) -> (Vec<(BenchConn, ConnResult)>, Duration) {
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(conns.len() + 1));
    let mut handles = Vec::with_capacity(conns.len());
    for (mut conn, messages) in conns.into_iter().zip(plan) {
        let barrier = barrier.clone();
        handles.push(tokio::spawn(async move {
            barrier.wait().await;
            let r = send_sequentially(&mut conn, &messages, verify_all).await;
            (conn, r)
        }));
    }
    barrier.wait().await;
    let start = Instant::now();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(h.await.expect("sender task"));
    }
    (out, start.elapsed())
}

/// Adds what a set of connection results says to `run`.
pub(crate) fn add_results(
    run: &mut Run,
    prefix: &str,
    results: &mut [(BenchConn, ConnResult)],
    elapsed: Duration,
) -> (u64, u64) {
    let mut lat = Vec::new();
    let (mut accepted, mut errors, mut bytes) = (0, 0, 0);
    for (_, r) in results.iter_mut() {
        lat.append(&mut r.latencies);
        accepted += r.accepted;
        errors += r.errors;
        bytes += r.bytes;
        if let Some(e) = r.first_error.take()
            && run.notes.len() < 5
        {
            run.notes.push(e);
        }
    }
    let secs = elapsed.as_secs_f64();
    run.add(&format!("{prefix}accepted"), accepted as f64, "msgs");
    run.add(&format!("{prefix}errors"), errors as f64, "msgs");
    run.add(&format!("{prefix}elapsed"), secs, "s");
    run.add(
        &format!("{prefix}msgs_per_s"),
        accepted as f64 / secs,
        "msg/s",
    );
    run.add(
        &format!("{prefix}mib_per_s"),
        bytes as f64 / secs / (1 << 20) as f64,
        "MiB/s",
    );
    run.add_latency(&format!("{prefix}latency"), &mut lat);
    (accepted, errors)
}

/// Adds the server's and the bench's CPU time over the measured phase.
pub(crate) fn add_cpu(run: &mut Run, server: &BenchServer, before: CpuMark, messages: u64) {
    let me = std::process::id();
    if let (Some((au, asys)), Some((bu, bsys))) = (before.0, server.cpu_split()) {
        let (a, b) = (au + asys, bu + bsys);
        run.add("server_cpu", b - a, "s");
        if b > a {
            run.add("server_cpu_sys_share", (bsys - asys) / (b - a) * 100.0, "%");
        }
        if messages > 0 {
            run.add("server_cpu_per_msg", (b - a) / messages as f64 * 1e6, "µs");
        }
    }
    if let (Some(a), Some(b)) = (before.1, crate::procfs::cpu_secs(me)) {
        run.add("bench_cpu", b - a, "s");
    }
}

/// CPU seconds (user, system) of the server, and of the bench, at a moment.
pub(crate) type CpuMark = (Option<(f64, f64)>, Option<f64>);

/// CPU seconds of the server and of the bench now.
pub(crate) fn cpu_now(server: &BenchServer) -> CpuMark {
    (
        server.cpu_split(),
        crate::procfs::cpu_secs(std::process::id()),
    )
}

/// One run of `mail`.
pub(crate) async fn run(opts: &ServerOpts, args: &MailArgs) -> anyhow::Result<Run> {
    let c = args.connections.max(1);
    let u = args.user_count();
    let mut server = BenchServer::start(opts, "a.test", u, 0, |_| {}).await?;
    server.login_all().await?;
    // Connection i sends as account i mod U to account (i+1) mod U;
    // message j goes on connection j mod C.
    let pairs: Vec<(usize, usize)> = (0..args.messages)
        .map(|j| {
            let from = (j % c) % u;
            (from, (from + 1) % u)
        })
        .collect();
    let sealed = seal_all(&pairs, &server.users, &server.users, args.size)?;
    let wire = sealed.first().map_or(0, |m| m.bytes.len() - 5);
    let mut plan: Vec<Vec<Prebuilt>> = (0..c).map(|_| Vec::new()).collect();
    for (j, m) in sealed.into_iter().enumerate() {
        plan[j % c].push(m);
    }
    let conns = logged_in(server.addr, &server.users, c).await?;
    let cpu = cpu_now(&server);
    let (mut results, elapsed) = send_all(conns, plan, args.verify).await;
    let mut run = Run::default();
    run.add("message_wire_size", wire as f64, "bytes");
    let (accepted, _) = add_results(&mut run, "", &mut results, elapsed);
    add_cpu(&mut run, &server, cpu, accepted);
    if let Some(kib) = server.rss_kib() {
        run.add("server_rss", kib as f64 / 1024.0, "MiB");
    }
    // Delivered: what the mailboxes hold now (the server is ours and was
    // empty; on a --target server the count includes older mail).
    drop(results);
    let mut delivered = 0;
    for mut conn in logged_in(server.addr, &server.users, u).await? {
        delivered += mailbox_count(&mut conn).await?;
    }
    run.add("delivered", delivered as f64, "msgs");
    if server.is_own() && delivered as u64 != accepted {
        run.notes.push(format!(
            "{accepted} messages accepted but {delivered} in the mailboxes"
        ));
    }
    Ok(run)
}
