//! `relay`: end to end from a.test's submission to b.test's mailboxes. Two
//! own servers, routed to each other by static routes (`dns.routes`); their
//! nameserver is the bench's NXDOMAIN responder, so nothing leaves the
//! machine. Reports the submission rate (durable SUCCESS at a.test, i.e.
//! queued) and the end-to-end rate (all messages in b.test's mailboxes).

use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use serde_json::json;

use crate::mail::{add_cpu, add_results, cpu_now, send_all};
use crate::report::Run;
use crate::server::{BenchServer, ServerOpts, free_port};
use crate::setup::{Prebuilt, logged_in, mailbox_count, seal_all};

/// Parameters of `relay`.
#[derive(Args, Debug, Clone)]
pub(crate) struct RelayArgs {
    /// Concurrent submission connections to a.test.
    #[arg(short = 'c', long, default_value_t = 20)]
    pub(crate) connections: usize,
    /// Messages in all.
    #[arg(short = 'm', long, default_value_t = 2_000)]
    pub(crate) messages: usize,
    /// Size of each message's text in bytes.
    #[arg(short = 's', long, default_value_t = 4096)]
    pub(crate) size: usize,
    /// Accounts on each side (default: one per connection).
    #[arg(short = 'u', long)]
    pub(crate) users: Option<usize>,
    /// a.test's `relay.per_destination` (connections at once to b.test);
    /// default: the server's default.
    #[arg(long)]
    pub(crate) per_destination: Option<usize>,
    /// a.test's `relay.poll_ms` (how often its queue runner looks for due
    /// messages); default: the server's default.
    #[arg(long)]
    pub(crate) poll_ms: Option<u64>,
    /// Give up when b.test's mailboxes have not grown for this many seconds.
    #[arg(long, default_value_t = 60.0)]
    pub(crate) stall: f64,
}

impl RelayArgs {
    pub(crate) fn params(&self) -> serde_json::Value {
        json!({
            "connections": self.connections,
            "messages": self.messages,
            "size": self.size,
            "users": self.user_count(),
            "per_destination": self.per_destination,
            "poll_ms": self.poll_ms,
        })
    }

    fn user_count(&self) -> usize {
        self.users.unwrap_or(self.connections).max(1)
    }
}

/// One run of `relay`.
pub(crate) async fn run(opts: &ServerOpts, args: &RelayArgs) -> anyhow::Result<Run> {
    if opts.target.is_some() {
        bail!("relay starts its own two servers; --target is not supported");
    }
    let c = args.connections.max(1);
    let u = args.user_count();
    let dns = crate::dns::start_nxdomain()?;
    let (pa, pb) = (free_port()?, free_port()?);
    let route = |domain: &str, port: u16| {
        let domain = domain.to_owned();
        move |cfg: &mut cmtp_server::config::Config| {
            cfg.dns.nameservers = vec![dns];
            cfg.dns.timeout_ms = 1000;
            cfg.dns
                .routes
                .insert(domain, vec![format!("127.0.0.1:{port}")]);
        }
    };
    let per_destination = args.per_destination;
    let poll_ms = args.poll_ms;
    let route_b = route("b.test", pb);
    let mut a = BenchServer::start(opts, "a.test", u, pa, |cfg| {
        route_b(cfg);
        if let Some(n) = per_destination {
            cfg.relay.per_destination = n.max(1);
            cfg.relay.parallel = cfg.relay.parallel.max(n);
        }
        if let Some(ms) = poll_ms {
            cfg.relay.poll_ms = ms.max(1);
        }
    })
    .await?;
    let mut b = BenchServer::start(opts, "b.test", u, pb, route("a.test", pa)).await?;
    a.login_all().await?;
    b.login_all().await?;
    let mut watchers = logged_in(b.addr, &b.users, u).await?;
    let delivered = async |watchers: &mut Vec<crate::conn::BenchConn>| {
        let mut n = 0;
        for w in watchers.iter_mut() {
            n += mailbox_count(w).await?;
        }
        anyhow::Ok(n)
    };
    // Warm-up, not timed: the first message makes each server fetch and pin
    // the other's key.
    let warm = seal_all(&[(0, 0)], &a.users, &b.users, args.size)?;
    let conns = logged_in(a.addr, &a.users, 1).await?;
    let (r, _) = send_all(conns, vec![warm], false).await;
    if r[0].1.accepted != 1 {
        bail!(
            "warm-up message refused: {}",
            r[0].1.first_error.clone().unwrap_or_default()
        );
    }
    let until = Instant::now() + Duration::from_secs(30);
    while delivered(&mut watchers).await? < 1 {
        if Instant::now() > until {
            bail!("the warm-up message did not reach b.test in 30 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let pairs: Vec<(usize, usize)> = (0..args.messages)
        .map(|j| {
            let i = (j % c) % u;
            (i, i)
        })
        .collect();
    let sealed = seal_all(&pairs, &a.users, &b.users, args.size)?;
    let mut plan: Vec<Vec<Prebuilt>> = (0..c).map(|_| Vec::new()).collect();
    for (j, m) in sealed.into_iter().enumerate() {
        plan[j % c].push(m);
    }
    let conns = logged_in(a.addr, &a.users, c).await?;
    let cpu_a = cpu_now(&a);
    let cpu_b = cpu_now(&b);
    let start = Instant::now();
    let (mut results, submit_elapsed) = send_all(conns, plan, false).await;
    let mut run = Run::default();
    let (accepted, _) = add_results(&mut run, "submit_", &mut results, submit_elapsed);
    let target = accepted as usize + 1;
    let mut last = 0;
    let mut last_change = Instant::now();
    loop {
        let n = delivered(&mut watchers).await?;
        if n >= target {
            break;
        }
        if n != last {
            last = n;
            last_change = Instant::now();
        } else if last_change.elapsed().as_secs_f64() > args.stall {
            run.notes.push(format!(
                "b.test stalled at {} of {accepted} messages",
                n.saturating_sub(1)
            ));
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let total = start.elapsed().as_secs_f64();
    let arrived = delivered(&mut watchers).await?.saturating_sub(1);
    run.add("delivered", arrived as f64, "msgs");
    run.add("end_to_end_elapsed", total, "s");
    run.add("end_to_end_msgs_per_s", arrived as f64 / total, "msg/s");
    run.add(
        "drain_after_submit",
        total - submit_elapsed.as_secs_f64(),
        "s",
    );
    let mut a_run = Run::default();
    add_cpu(&mut a_run, &a, cpu_a, accepted);
    let mut b_run = Run::default();
    add_cpu(&mut b_run, &b, cpu_b, accepted);
    for m in a_run.metrics {
        if m.name.starts_with("server") {
            run.add(&m.name.replace("server", "a"), m.value, m.unit);
        } else {
            run.add(&m.name, m.value, m.unit);
        }
    }
    for m in b_run
        .metrics
        .into_iter()
        .filter(|m| m.name.starts_with("server"))
    {
        run.add(&m.name.replace("server", "b"), m.value, m.unit);
    }
    Ok(run)
}
