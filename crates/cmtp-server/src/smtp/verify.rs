//! SPF (RFC 7208), DKIM (RFC 6376), DMARC (RFC 7489) and ARC (RFC 8617)
//! of arriving SMTP mail, with the `mail-auth` crate. The verdicts go into
//! the arrival record sealed with the message (what the recipient's client
//! shows) and into an `Authentication-Results:` field (RFC 8601) on top of
//! the message. A message is not refused for its verdicts: the recipient
//! sees them.

use std::net::IpAddr;
use std::time::Duration;

use cmtp_smtp::address::Mailbox;
use cmtp_smtp::arrival::{MAX_DKIM, Verdict};
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use mail_auth::common::headers::HeaderWriter;
use mail_auth::{
    AuthenticatedMessage, AuthenticationResults, DkimResult, DmarcResult, MessageAuthenticator,
    SpfResult, dmarc::verify::DmarcParameters, spf::verify::SpfParameters,
};

use crate::config::Config;

/// The verdicts about one message.
#[derive(Debug, Clone)]
pub(crate) struct Verdicts {
    pub(crate) spf: Verdict,
    pub(crate) dkim: Vec<Verdict>,
    pub(crate) dmarc: Verdict,
    pub(crate) arc: Verdict,
    /// The `Authentication-Results:` field, CR LF ended.
    pub(crate) header: String,
}

impl Verdicts {
    /// Checks switched off: every verdict `none`.
    pub(crate) fn unchecked(hostname: &str) -> Verdicts {
        Verdicts {
            spf: Verdict::none(),
            dkim: Vec::new(),
            dmarc: Verdict::none(),
            arc: Verdict::none(),
            header: format!("Authentication-Results: {hostname}; none\r\n"),
        }
    }
}

/// A DNS client for the checks: `[dns] nameservers` (or the system's),
/// with the configured timeout.
pub(crate) fn authenticator(cfg: &Config) -> anyhow::Result<MessageAuthenticator> {
    let servers = if cfg.dns.nameservers.is_empty() {
        let text = std::fs::read_to_string(cmtp_client::discovery::RESOLV_CONF).unwrap_or_default();
        let list = cmtp_client::discovery::parse_resolv_conf(&text);
        if list.is_empty() {
            vec![std::net::SocketAddr::from(([127, 0, 0, 1], 53))]
        } else {
            list
        }
    } else {
        cfg.dns.nameservers.clone()
    };
    let name_servers = servers
        .iter()
        .map(|server| {
            let mut udp = ConnectionConfig::udp();
            udp.port = server.port();
            let mut tcp = ConnectionConfig::tcp();
            tcp.port = server.port();
            NameServerConfig::new(server.ip(), true, vec![udp, tcp])
        })
        .collect();
    let mut opts = ResolverOpts::default();
    opts.timeout = Duration::from_millis(cfg.dns.timeout_ms);
    opts.attempts = 1;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.ndots = 0;
    Ok(MessageAuthenticator::new(
        ResolverConfig::from_parts(None, vec![], name_servers),
        opts,
    )?)
}

fn dkim_word(r: &DkimResult) -> &'static str {
    match r {
        DkimResult::Pass => "pass",
        DkimResult::Neutral(_) => "neutral",
        DkimResult::Fail(_) => "fail",
        DkimResult::PermError(_) => "permerror",
        DkimResult::TempError(_) => "temperror",
        DkimResult::None => "none",
    }
}

fn spf_word(r: SpfResult) -> &'static str {
    match r {
        SpfResult::Pass => "pass",
        SpfResult::Fail => "fail",
        SpfResult::SoftFail => "softfail",
        SpfResult::Neutral => "neutral",
        SpfResult::TempError => "temperror",
        SpfResult::PermError => "permerror",
        SpfResult::None => "none",
    }
}

fn dmarc_word(r: &DmarcResult) -> &'static str {
    match r {
        DmarcResult::Pass => "pass",
        DmarcResult::Fail(_) => "fail",
        DmarcResult::TempError(_) => "temperror",
        DmarcResult::PermError(_) => "permerror",
        DmarcResult::None => "none",
    }
}

/// Checks a message that arrived from `ip` (which said `helo`) with the
/// envelope sender `mail_from`.
pub(crate) async fn check(
    auth: &MessageAuthenticator,
    data: &[u8],
    ip: IpAddr,
    helo: &str,
    mail_from: Option<&Mailbox>,
    hostname: &str,
) -> Verdicts {
    // The null sender is checked as postmaster@<helo> (RFC 7208 §2.4).
    let sender = match mail_from {
        Some(m) if !m.domain.is_empty() => m.to_string(),
        _ => format!("postmaster@{helo}"),
    };
    let sender_domain = sender
        .rsplit_once('@')
        .map(|(_, d)| d)
        .unwrap_or(helo)
        .to_owned();
    let spf = auth
        .verify_spf(SpfParameters::verify_mail_from(ip, helo, hostname, &sender))
        .await;
    let spf_verdict = Verdict::new(spf_word(spf.result()), Some(&sender_domain));
    let Some(msg) = AuthenticatedMessage::parse(data) else {
        // Not even headers: nothing to check but SPF.
        let header = AuthenticationResults::new(hostname)
            .with_spf_mailfrom_result(&spf, ip, &sender, helo)
            .to_header();
        return Verdicts {
            spf: spf_verdict,
            dkim: vec![Verdict::new("permerror", None)],
            dmarc: Verdict::none(),
            arc: Verdict::none(),
            header,
        };
    };
    let dkim = auth.verify_dkim(&msg).await;
    let arc = auth.verify_arc(&msg).await;
    let dmarc = auth
        .verify_dmarc(DmarcParameters::new(&msg, &dkim, &sender_domain, &spf))
        .await;
    let from_domain = msg
        .from()
        .rsplit_once('@')
        .map(|(_, d)| d.to_ascii_lowercase())
        .unwrap_or_default();
    let header = AuthenticationResults::new(hostname)
        .with_dkim_results(&dkim, msg.from())
        .with_spf_mailfrom_result(&spf, ip, &sender, helo)
        .with_arc_result(&arc, ip)
        .with_dmarc_result(&dmarc)
        .to_header();
    let dmarc_result =
        if dmarc.dkim_result() == &DmarcResult::Pass || dmarc.spf_result() == &DmarcResult::Pass {
            "pass"
        } else if dmarc.domain().is_empty() {
            "none"
        } else {
            let d = dmarc_word(dmarc.dkim_result());
            if d == "none" {
                dmarc_word(dmarc.spf_result())
            } else {
                d
            }
        };
    Verdicts {
        spf: spf_verdict,
        dkim: dkim
            .iter()
            .take(MAX_DKIM)
            .map(|d| Verdict::new(dkim_word(d.result()), d.signature().map(|s| s.d.as_str())))
            .collect(),
        dmarc: Verdict::new(
            dmarc_result,
            Some(if from_domain.is_empty() {
                dmarc.domain()
            } else {
                &from_domain
            }),
        ),
        arc: Verdict::new(dkim_word(arc.result()), None),
        header,
    }
}
