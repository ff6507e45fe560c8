//! `cmtp-conform`: checks any CMTP server against docs/PROTOCOL.md from
//! the outside, in the manner of h2spec.
//!
//! It sits beside the implementation, not inside it: it depends only on
//! cmtp-proto (to encode well-formed frames and to decode and verify what
//! comes back) and talks to the target over the network like any peer.
//! Each rule of the specification that can be provoked from outside is a
//! small function with its section number ([`RULES`]); [`run`] connects to
//! the target as a CMTP/2 client (the banner in clear, then TLS 1.3 with the
//! server's key as a raw public key), learns its domain and key from the
//! banner and OHAI, and runs every rule on fresh connections, checking the
//! signature of every reply (§5.3) as it goes. A rule passes, fails (with what was expected and what
//! came), or is not testable (it needs credentials, a second domain, or
//! minutes of waiting for a timeout; see [`Need`]).
//!
//! | module | what |
//! |---|---|
//! | `transport` | the byte transport: TCP, the banner in clear, then TLS 1.3 |
//! | `tls` | the TLS clients the checker plays (CMTP/2, plain X.509, a TLS 1.2 hello) |
//! | `probe` | a connection: banner, handshake, commands, signed replies, closes |
//! | `rules` | the rules, one module per part of the spec |
//! | `served` | the checker's own domain (`--as-domain`, `--serve`) |
//! | `report` | results, text and JSON |
//!
//! ```no_run
//! let cfg = cmtp_conform::Config::new("127.0.0.1:9001");
//! let report = cmtp_conform::run(&cfg, |r| println!("{}", cmtp_conform::text_line(r))).unwrap();
//! std::process::exit(if report.failed() { 1 } else { 0 });
//! ```
#![forbid(unsafe_code)]

mod config;
mod probe;
mod report;
mod rules;
mod served;
mod tls;
mod transport;

use std::time::Instant;

use anyhow::{Context, bail};

pub use config::{Config, ServerLimits, ServerTimeouts};
pub use report::{Outcome, Report, RuleReport, Summary, list_line, text_line, text_summary};
pub use rules::{Need, RULES, Rule, TargetInfo};

use probe::{Probe, Stop};
use rules::Ctx;
use served::Served;

/// Connects to the target, learns its domain and key, and runs every rule
/// `cfg` selects, calling `on_result` after each. Fails only when the
/// target cannot be checked at all (unreachable, not CMTP, no usable OHAI)
/// or the served domain cannot listen.
pub fn run(cfg: &Config, mut on_result: impl FnMut(&RuleReport)) -> anyhow::Result<Report> {
    let addr =
        transport::resolve(&cfg.target).with_context(|| format!("resolving {}", cfg.target))?;
    let info = preflight(cfg, addr)?;
    let served = match (&cfg.as_domain, cfg.serve) {
        (Some(d), Some(at)) => Some(
            Served::start(d.clone(), at, cfg.as_key.clone(), rules::now())
                .with_context(|| format!("serving {d} on {at}"))?,
        ),
        _ => None,
    };
    let mut report = Report {
        checker: concat!("cmtp-conform ", env!("CARGO_PKG_VERSION")).into(),
        target: cfg.target.clone(),
        domain: info.greeting.domain.to_string(),
        software: info.greeting.software.clone(),
        fingerprint: info.greeting.key.fingerprint_hex(),
        served_domain: served
            .as_ref()
            .map(|s| {
                let fresh = if cfg.as_key.is_none() {
                    "; a fresh key: a target that pinned an earlier key of this domain refuses it, keep one with --as-key"
                } else {
                    ""
                };
                format!("{} on {} (key {}{fresh})", s.domain(), s.addr(), s.fingerprint())
            }),
        rules: Vec::new(),
        summary: Summary::default(),
    };
    for rule in RULES.iter().filter(|r| r.selected(&cfg.only)) {
        let started = Instant::now();
        let missing: Vec<&str> = rule
            .needs
            .iter()
            .filter(|n| !n.met(cfg))
            .map(|n| n.missing())
            .collect();
        let outcome = match missing.is_empty() {
            false => Outcome::NotTestable {
                reason: missing.join("; "),
            },
            true => {
                let mut cx = Ctx {
                    cfg,
                    addr,
                    info: &info,
                    served: served.as_ref(),
                    notes: Vec::new(),
                };
                match (rule.check)(&mut cx) {
                    Ok(()) => Outcome::Pass { notes: cx.notes },
                    Err(Stop::Fail { expected, got }) => Outcome::Fail {
                        expected,
                        got,
                        notes: cx.notes,
                    },
                    Err(Stop::NotTestable(reason)) => Outcome::NotTestable { reason },
                }
            }
        };
        let r = RuleReport {
            section: rule.section,
            id: rule.id,
            description: rule.description,
            outcome,
            seconds: started.elapsed().as_secs_f64(),
        };
        on_result(&r);
        report.rules.push(r);
    }
    report.tally();
    Ok(report)
}

/// The first connection: the banner and OHAI must work for anything else to.
fn preflight(cfg: &Config, addr: std::net::SocketAddr) -> anyhow::Result<TargetInfo> {
    let explain = |s: Stop| match s {
        Stop::Fail { expected, got } => format!("expected {expected}; got {got}"),
        Stop::NotTestable(r) => r,
    };
    let mut p = match Probe::open(addr, cfg.key, cfg.reply_timeout) {
        Ok(p) => p,
        Err(e) => bail!("{} cannot be checked: {}", cfg.target, explain(e)),
    };
    // Only the greeting matters here; the rules check signatures.
    p.check_signatures = false;
    let greeting = match p.ohai() {
        Ok(g) => g,
        Err(e) => bail!("{} cannot be checked: OHAI: {}", cfg.target, explain(e)),
    };
    Ok(TargetInfo {
        banner: p.banner.clone(),
        banner_domain: p.banner_domain.clone(),
        greeting,
    })
}
