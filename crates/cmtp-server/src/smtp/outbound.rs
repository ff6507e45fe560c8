//! Mail to domains without CMTP service, by SMTP (PROTOCOL.md §19.3).
//!
//! A local user who has consented (`cmtp send --allow-smtp`) submits a
//! crypto system 0 message with `MAIL`; it is queued like any relayed
//! message. When the relay queue runner takes it, [`try_deliver`] decides
//! by the discovery order of §14.3: a static route or `_cmtp._tcp` SRV
//! targets mean CMTP (the runner carries on as usual); otherwise the MX
//! hosts (or the domain's own address) are asked on the CMTP port, and if
//! none answers as a CMTP server, the message is built as RFC 5322/MIME
//! (`mail-builder`), DKIM-signed ([`super::dkim`]) and sent to the same
//! hosts by SMTP (`mail-send`), with STARTTLS when they offer it. Failures
//! go through the queue's retries and delivery failure notices like CMTP
//! relay. Sealed (crypto system 1) mail never leaves by SMTP.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cmtp_proto::content::open;
use cmtp_proto::message::{Message, VERSION_PLAINTEXT};
use cmtp_proto::payload::FailureReason;
use cmtp_store::{BlobReader, OutboundEntry};
use hickory_resolver::TokioResolver;
use hickory_resolver::proto::rr::{RData, RecordType};
use mail_builder::MessageBuilder;
use mail_send::SmtpClient;
use mail_send::smtp::AssertReply as _;
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::relay::Outcome;
use crate::remote::is_public_address;
use crate::state::Shared;

/// How long a probe of the CMTP port of an MX host may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What the discovery order says about a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// The domain has CMTP service (a static route, SRV targets, or a CMTP
    /// server answering on an MX host).
    Cmtp,
    /// No CMTP service: SMTP to these hosts, in order.
    SmtpOnly(Vec<MxHost>),
}

/// An SMTP server of a domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MxHost {
    /// Its name (for TLS and logs).
    pub name: String,
    /// Its addresses.
    pub addrs: Vec<IpAddr>,
}

/// Why the question could not be answered.
#[derive(Debug, Clone)]
pub enum ServiceError {
    /// Try later (DNS failed, or only non-public addresses).
    Temporary(String),
    /// The domain takes no mail at all (NXDOMAIN, null MX, no records).
    Permanent(String),
}

async fn lookup(
    resolver: &TokioResolver,
    name: &str,
    rtype: RecordType,
) -> Result<Option<Vec<RData>>, ServiceError> {
    match resolver.lookup(format!("{name}."), rtype).await {
        Ok(l) => Ok(Some(l.answers().iter().map(|r| r.data.clone()).collect())),
        Err(e) if e.is_nx_domain() => Ok(None),
        Err(e) if e.is_no_records_found() => Ok(Some(Vec::new())),
        Err(e) => Err(ServiceError::Temporary(format!(
            "DNS lookup of {name} {rtype} failed: {e}"
        ))),
    }
}

async fn addresses(resolver: &TokioResolver, host: &str) -> Result<Vec<IpAddr>, ServiceError> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![ip]);
    }
    let mut out = Vec::new();
    for rtype in [RecordType::AAAA, RecordType::A] {
        if let Some(records) = lookup(resolver, host, rtype).await? {
            for r in records {
                match r {
                    RData::A(a) => out.push(IpAddr::V4(a.0)),
                    RData::AAAA(a) => out.push(IpAddr::V6(a.0)),
                    _ => {}
                }
            }
        }
    }
    Ok(out)
}

/// Whether something on `addr` greets as a CMTP server.
async fn speaks_cmtp(addr: SocketAddr) -> bool {
    let probe = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while line.len() < cmtp_proto::limits::MAX_BANNER && !line.ends_with(b"\n") {
            if s.read(&mut byte).await.ok()? == 0 {
                break;
            }
            line.push(byte[0]);
        }
        Some(matches!(
            cmtp_proto::banner::decode_banner(&line),
            Ok(Some((
                cmtp_proto::banner::Banner::Ready { .. } | cmtp_proto::banner::Banner::Busy { .. },
                _
            )))
        ))
    };
    tokio::time::timeout(PROBE_TIMEOUT, probe)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// The discovery order of PROTOCOL.md §14.3 for `domain`.
pub async fn service(sh: &Shared, domain: &str) -> Result<Service, ServiceError> {
    let cfg = sh.cfg();
    if cfg.dns.routes.contains_key(domain) {
        return Ok(Service::Cmtp);
    }
    let private_ok = cfg.dns.allow_private.iter().any(|d| d == domain);
    let resolver = super::verify::authenticator(&cfg)
        .map_err(|e| ServiceError::Temporary(format!("DNS resolver: {e}")))?
        .0;
    drop(cfg);
    // 1. SRV: targets mean CMTP; a lone "." means no CMTP service.
    let srv = lookup(
        &resolver,
        &format!("{}.{domain}", cmtp_client::discovery::SRV_PREFIX),
        RecordType::SRV,
    )
    .await?
    .unwrap_or_default();
    let srv_targets: Vec<String> = srv
        .iter()
        .filter_map(|r| match r {
            RData::SRV(s) => Some(s.target.to_utf8().trim_end_matches('.').to_owned()),
            _ => None,
        })
        .collect();
    if srv_targets.iter().any(|t| !t.is_empty()) {
        return Ok(Service::Cmtp);
    }
    let explicit_no_cmtp = !srv_targets.is_empty();
    // 2. MX hosts (a null MX: no mail at all), else the domain itself.
    let mx = match lookup(&resolver, domain, RecordType::MX).await? {
        None => {
            return Err(ServiceError::Permanent(format!(
                "domain {domain} does not exist (NXDOMAIN)"
            )));
        }
        Some(records) => records,
    };
    let mut hosts: Vec<(u16, String)> = mx
        .iter()
        .filter_map(|r| match r {
            RData::MX(m) => Some((
                m.preference,
                m.exchange
                    .to_utf8()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            )),
            _ => None,
        })
        .collect();
    if !hosts.is_empty() && hosts.iter().all(|(_, h)| h.is_empty()) {
        return Err(ServiceError::Permanent(format!(
            "domain {domain} accepts no mail (null MX, RFC 7505)"
        )));
    }
    hosts.retain(|(_, h)| !h.is_empty());
    hosts.sort_by_key(|(p, _)| *p);
    if hosts.is_empty() {
        hosts.push((0, domain.to_owned()));
    }
    let mut out = Vec::new();
    for (_, name) in hosts {
        let mut addrs = addresses(&resolver, &name).await?;
        if !private_ok {
            addrs.retain(|a| is_public_address(*a));
        }
        if !addrs.is_empty() {
            out.push(MxHost { name, addrs });
        }
    }
    if out.is_empty() {
        return Err(ServiceError::Temporary(format!(
            "no mail server of {domain} has a public address"
        )));
    }
    // 3. CMTP on the MX hosts.
    if !explicit_no_cmtp {
        for h in &out {
            for a in &h.addrs {
                if speaks_cmtp(SocketAddr::new(*a, cmtp_client::discovery::DEFAULT_PORT)).await {
                    return Ok(Service::Cmtp);
                }
            }
        }
    }
    Ok(Service::SmtpOnly(out))
}

/// The start of a `KEYNOTAVAILABLE` text that says a domain has no CMTP
/// service but takes mail by SMTP (PROTOCOL.md §19.3).
pub const NOCMTP: &str = "NOCMTP";

/// For a logged-in user's KEYREQUEST that could not reach `domain`: the
/// `KEYNOTAVAILABLE` text when the domain is reachable by SMTP only (and
/// this server delivers by SMTP), else `None`.
pub(crate) async fn no_cmtp_text(
    sh: &Shared,
    domain: &cmtp_proto::names::Domain,
) -> Option<String> {
    if !sh.cfg().smtp.outbound {
        return None;
    }
    match service(sh, domain.as_str()).await {
        Ok(Service::SmtpOnly(_)) => Some(format!(
            "{NOCMTP} {domain} has no CMTP service; it takes mail by SMTP only, which is not end-to-end encrypted"
        )),
        _ => None,
    }
}

/// The relay's first step for an entry: `None` when it goes by CMTP (the
/// runner carries on), else the outcome of delivering it by SMTP.
pub(crate) async fn try_deliver(sh: &Shared, e: &OutboundEntry) -> Option<Outcome> {
    if !sh.cfg().smtp.outbound {
        return None;
    }
    // Only consented plaintext leaves by SMTP: look at the version first.
    let mut reader = BlobReader::new(sh.store.clone(), e.blob);
    let first = match reader.next_chunk().await {
        Ok(Some(c)) => c,
        Ok(None) => return None,
        Err(err) => return Some(Outcome::Retry(format!("reading the queued message: {err}"))),
    };
    if first.len() < 4
        || u32::from_be_bytes([first[0], first[1], first[2], first[3]]) != VERSION_PLAINTEXT
    {
        return None;
    }
    let hosts = match service(sh, &e.dest_domain).await {
        Ok(Service::Cmtp) => return None,
        Ok(Service::SmtpOnly(hosts)) => hosts,
        Err(ServiceError::Temporary(why)) => return Some(Outcome::Unreachable(why)),
        Err(ServiceError::Permanent(why)) => {
            return Some(Outcome::Bounce(FailureReason::NoDestination, why));
        }
    };
    let mut bytes = first.to_vec();
    loop {
        match reader.next_chunk().await {
            Ok(Some(c)) => bytes.extend_from_slice(&c),
            Ok(None) => break,
            Err(err) => return Some(Outcome::Retry(format!("reading the queued message: {err}"))),
        }
    }
    let msg = match Message::decode(&bytes, sh.limits()) {
        Ok(m) => m,
        Err(err) => {
            return Some(Outcome::Bounce(
                FailureReason::Refused,
                format!("the queued message does not parse: {err}"),
            ));
        }
    };
    let rfc5322 = match build(sh, &msg, &e.hash) {
        Ok(b) => b,
        Err(err) => return Some(Outcome::Bounce(FailureReason::Refused, format!("{err:#}"))),
    };
    let from = format!("{}@{}", e.sender, sh.domain);
    Some(send(sh, &hosts, &from, &e.destination, &rfc5322, &e.hash).await)
}

/// The RFC 5322/MIME form of a crypto system 0 message, DKIM-signed.
pub fn build(sh: &Shared, msg: &Message, hash: &[u8; 32]) -> anyhow::Result<Vec<u8>> {
    let opened = open(msg, None)?;
    let c = opened.content;
    let from = msg.source.to_string();
    let to = format!("{}@{}", msg.destination.account, msg.destination.domain);
    let date = humantime::parse_rfc3339(&c.date)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs())
        .unwrap_or_else(crate::state::now);
    let cc: Vec<String> = c.cc.iter().map(|a| a.to_string()).collect();
    let mut b = MessageBuilder::new()
        .from(from.as_str())
        .to(to.as_str())
        .subject(c.subject.as_str())
        .date(date as i64)
        .message_id(if c.message_id.is_empty() {
            format!("{}@{}", hex::encode(hash), sh.domain)
        } else {
            // Content version 2 (§8.1): the sender's own id, so that
            // replies by SMTP thread with the sender's copy.
            c.message_id.clone()
        })
        .text_body(c.text.as_str());
    if !c.in_reply_to.is_empty() {
        b = b.in_reply_to(c.in_reply_to.as_str());
    }
    if !c.references.is_empty() {
        b = b.references(c.references.iter().map(String::as_str).collect::<Vec<_>>());
    }
    if !cc.is_empty() {
        b = b.cc(cc.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    }
    if let Some(r) = &c.reply_to {
        b = b.reply_to(r.to_string());
    }
    for a in &c.attachments {
        let name = cmtp_proto::content::safe_file_name(&a.name, "attachment");
        let media_type = if a.media_type.is_empty() {
            "application/octet-stream"
        } else {
            a.media_type.as_str()
        };
        b = b.attachment(media_type, name, a.data.as_slice());
    }
    let body = b.write_to_vec()?;
    let cfg = sh.cfg();
    let key_path = cfg.smtp.dkim_key_path(&cfg.data_dir);
    super::dkim::ensure_key(&key_path)?;
    let key = super::dkim::DkimKey::load(&key_path, sh.domain.as_str(), &cfg.smtp.dkim_selector)?;
    let mut out = key.sign(&body)?.into_bytes();
    out.extend_from_slice(&body);
    Ok(out)
}

fn classify(err: &mail_send::Error) -> Option<u16> {
    match err {
        mail_send::Error::UnexpectedReply(r) => Some(r.code),
        _ => None,
    }
}

/// Sends `message` to the first of `hosts` that takes it.
async fn send(
    sh: &Shared,
    hosts: &[MxHost],
    from: &str,
    to: &str,
    message: &[u8],
    hash: &[u8; 32],
) -> Outcome {
    let cfg = sh.cfg();
    let port = cfg.smtp.outbound_port;
    let timeout = Duration::from_secs(cfg.relay.timeout_secs);
    let helo = cfg
        .smtp
        .hostname
        .clone()
        .unwrap_or_else(|| sh.domain.to_string());
    drop(cfg);
    let mut last = String::from("no server tried");
    for h in hosts {
        for ip in &h.addrs {
            let addr = SocketAddr::new(*ip, port);
            match send_one(addr, &h.name, &helo, from, to, message, timeout).await {
                Ok(tls) => {
                    tracing::info!(hash = %hex::encode(hash), to, host = %h.name, %addr, tls = %tls.as_deref().unwrap_or("none"), "sent by SMTP");
                    metrics::counter!("cmtp_smtp_outbound_total", "result" => "sent").increment(1);
                    return Outcome::Delivered;
                }
                Err(err) => {
                    let text = format!("{} ({addr}): {err}", h.name);
                    match classify(&err) {
                        // A permanent refusal is the domain's answer.
                        Some(code) if (500..600).contains(&code) => {
                            metrics::counter!("cmtp_smtp_outbound_total", "result" => "refused")
                                .increment(1);
                            let reason = if code == 550 || code == 551 || code == 553 {
                                FailureReason::NoSuchUser
                            } else {
                                FailureReason::Refused
                            };
                            return Outcome::Bounce(reason, format!("SMTP: {text}"));
                        }
                        _ => {
                            tracing::debug!(to, error = %text, "SMTP attempt failed");
                            last = text;
                        }
                    }
                }
            }
        }
    }
    metrics::counter!("cmtp_smtp_outbound_total", "result" => "deferred").increment(1);
    Outcome::Retry(format!("SMTP: {last}"))
}

/// One SMTP transaction, with STARTTLS when the server offers it (the
/// certificate is not checked: without DANE or MTA-STS an MX cannot be
/// authenticated, RFC 7672 §1.3; the session is encrypted all the same).
/// The TLS version used, if any.
async fn send_one(
    addr: SocketAddr,
    host: &str,
    helo: &str,
    from: &str,
    to: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<Option<String>, mail_send::Error> {
    let msg = mail_send::smtp::message::Message::new(from, [to], message);
    let mut client = SmtpClient::connect(addr, timeout).await?;
    client.read().await?.assert_positive_completion()?;
    let ehlo = client.ehlo(helo).await?;
    if ehlo.has_capability(smtp_proto::EXT_START_TLS) {
        let connector = mail_send::smtp::tls::build_tls_connector(true)
            .map_err(|_| mail_send::Error::InvalidTLSName)?;
        let tls_name = if host.parse::<IpAddr>().is_ok() {
            "localhost"
        } else {
            host
        };
        let mut client = client.start_tls(&connector, tls_name).await?;
        let version = client
            .tls_connection()
            .protocol_version()
            .map(|v| format!("{v:?}").replace("TLSv1_", "TLSv1."));
        client.ehlo(helo).await?;
        client.send(msg).await?;
        let _ = client.quit().await;
        Ok(version)
    } else {
        client.send(msg).await?;
        let _ = client.quit().await;
        Ok(None)
    }
}
