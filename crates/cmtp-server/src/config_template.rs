//! The documented `cmtpd.toml`: every key with a comment, its default and
//! whether a reload applies it; optional keys that are unset appear
//! commented out with an example. A unit test checks that every key of
//! [`Config`] has an entry here, so a new key cannot go undocumented.

use std::fmt::Write as _;

use crate::config::{Config, RESTART_ONLY};

/// One key of the file.
#[derive(Debug, Clone, Copy)]
pub struct KeyDoc {
    /// The section (`""` for the top level).
    pub section: &'static str,
    /// The key.
    pub key: &'static str,
    /// What it means (one or more lines).
    pub doc: &'static str,
    /// For optional keys without a default value: an example value (TOML).
    pub example: Option<&'static str>,
}

const fn k(section: &'static str, key: &'static str, doc: &'static str) -> KeyDoc {
    KeyDoc {
        section,
        key,
        doc,
        example: None,
    }
}

const fn opt(
    section: &'static str,
    key: &'static str,
    doc: &'static str,
    example: &'static str,
) -> KeyDoc {
    KeyDoc {
        section,
        key,
        doc,
        example: Some(example),
    }
}

/// Every key of `cmtpd.toml`, in file order.
pub const KEY_DOCS: &[KeyDoc] = &[
    k("", "domain", "The domain this server serves (required)."),
    k(
        "",
        "data_dir",
        "Where the server key, the SQLite database and the process id file live.\nA relative path is relative to this file's directory.",
    ),
    k(
        "",
        "listen",
        "Addresses to listen on. 127.0.0.1 is reachable from this machine only:\nother domains need a public address, e.g. [\"0.0.0.0:9001\", \"[::]:9001\"].",
    ),
    opt(
        "",
        "key_file",
        "The server key file (default: <data_dir>/server.key). The nodes of a\ncluster share one; keep it mode 0600.",
        "\"/etc/cmtpd/server.key\"",
    ),
    opt(
        "",
        "node_name",
        "Name of this node in a cluster, for relay queue leases (default: host\nname and process id).",
        "\"cmtp1\"",
    ),
    k(
        "limits",
        "max_message_size",
        "Largest message in bytes (everything but the log).",
    ),
    k("limits", "max_attachments", "Most attachments per message."),
    k(
        "limits",
        "max_log",
        "Longest log (the relays' lines) in bytes.",
    ),
    k(
        "limits",
        "max_hops",
        "Most log lines (hops) a message may carry when it arrives (loops).",
    ),
    k(
        "limits",
        "refuse_plaintext",
        "Refuse crypto system 0 (plaintext) messages.",
    ),
    opt(
        "limits",
        "staged_per_peer",
        "Bytes of messages being received at once from one peer (IPv6 /64,\nIPv4 prefix), reserved before they are stored (default: twice\nmax_message_size; at least max_message_size).",
        "134217728",
    ),
    opt(
        "limits",
        "staged_per_domain",
        "Bytes of messages being received at once that claim one source\ndomain (default: four times max_message_size).",
        "268435456",
    ),
    k(
        "timeouts",
        "idle_secs",
        "Idle time allowed between commands.",
    ),
    k(
        "timeouts",
        "command_secs",
        "Time allowed for one command after its first byte.",
    ),
    k(
        "timeouts",
        "data_grace_secs",
        "Fixed allowance for a message after MAIL, on top of min_data_rate.",
    ),
    k(
        "timeouts",
        "min_data_rate",
        "Slowest transfer of a message accepted, bytes per second, over every\nwindow of data_grace_secs.",
    ),
    k(
        "timeouts",
        "shutdown_grace_secs",
        "How long a shutdown waits for connections to finish.",
    ),
    k(
        "timeouts",
        "stranger_session_secs",
        "Longest life of a connection that is not logged in (other servers\nrelaying, strangers); logged-in sessions have none.",
    ),
    k("connections", "max", "Most connections at once."),
    k(
        "connections",
        "max_per_peer",
        "Most connections at once from one peer address.",
    ),
    k(
        "connections",
        "max_bad_commands",
        "Consecutive bad commands before a connection is closed.",
    ),
    k(
        "connections",
        "ipv4_prefix",
        "Prefix length that makes one IPv4 peer for every per-peer limit\n(32: one address; 24: a /24).",
    ),
    k(
        "connections",
        "ipv6_prefix",
        "Prefix length that makes one IPv6 peer (64: a /64, what one host\nusually holds).",
    ),
    k(
        "connections",
        "stranger_logins",
        "Logins of sessions not logged in handled at once; the rest wait, a turn\nper peer, peers whose logins keep failing last.",
    ),
    k(
        "connections",
        "stranger_store_writes",
        "Chunks of mail from peers not logged in written to the store at once,\na turn per peer (logged-in users' mail never queues behind more).",
    ),
    k(
        "connections",
        "stranger_share_per_peer",
        "Of stranger_logins and stranger_store_writes, what one peer may use at once.",
    ),
    opt(
        "connections",
        "reserved_for_users",
        "Connections kept for logged-in sessions: strangers are refused once\nmax minus these are open (default: max / 16).",
        "1024",
    ),
    k(
        "accounts",
        "open_registration",
        "Anyone may register without an invite token.",
    ),
    k(
        "accounts",
        "invite_validity_hours",
        "Validity of an invite token (`cmtpd user invite`), hours.",
    ),
    k(
        "accounts",
        "reset_validity_hours",
        "Validity of a reset token (`cmtpd user reset`), hours.",
    ),
    k(
        "accounts",
        "ksf_min_memory_kib",
        "Weakest Argon2id memory cost (KiB) accepted at registration.",
    ),
    k(
        "accounts",
        "ksf_min_passes",
        "Weakest Argon2id pass count accepted at registration.",
    ),
    k(
        "accounts",
        "ksf_min_lanes",
        "Weakest Argon2id lane count accepted at registration.",
    ),
    k(
        "accounts",
        "login_failures_per_account",
        "Failed logins per account within the window before RATELIMITED\n(`cmtpd user unlock NAME` clears them).",
    ),
    k(
        "accounts",
        "login_failures_per_address",
        "Failed logins per peer address (IPv6: per /64) within the window.",
    ),
    k(
        "accounts",
        "login_window_secs",
        "The login rate-limit window, seconds.",
    ),
    k(
        "accounts",
        "statement_validity_days",
        "Validity of the key statements this server issues, days.",
    ),
    k(
        "accounts",
        "quota_notice_interval_hours",
        "Least time between two \"your mailbox is full\" notices to one user, hours.",
    ),
    k(
        "store",
        "backend",
        "\"sqlite\" (one file in data_dir) or \"postgres\" (a database shared by\nthe nodes of a cluster; needs url).",
    ),
    opt(
        "store",
        "path",
        "The SQLite database file (default: <data_dir>/cmtp.db).",
        "\"/var/lib/cmtpd/cmtp.db\"",
    ),
    opt(
        "store",
        "url",
        "PostgreSQL connection URL. It may hold a password: this file is\ncreated mode 0600; keep it so.",
        "\"postgres://cmtpd:secret@db.internal:5432/cmtp\"",
    ),
    k("store", "pool_size", "PostgreSQL connections per node."),
    opt(
        "store",
        "max_size",
        "Largest the store may grow, bytes; new mail is refused with\nTEMPFAILURE beyond it (default: no limit).",
        "107374182400",
    ),
    k(
        "store",
        "min_free",
        "Free space kept on the store's file system, bytes: new mail is\nrefused with TEMPFAILURE below it plus its size (as Postfix's\nqueue_minfree); reads, deletes and logins go on.",
    ),
    k(
        "store",
        "ballast_size",
        "A file of this many bytes beside the database, released when the\ndisk fills so that deletes and restarts work (0: none).",
    ),
    k(
        "relay",
        "lifetime_secs",
        "How long a message for another domain is retried before it bounces.",
    ),
    k(
        "relay",
        "first_retry_secs",
        "First retry delay, seconds; it doubles with each attempt.",
    ),
    k("relay", "max_retry_secs", "Longest retry delay, seconds."),
    k(
        "relay",
        "poll_ms",
        "How often the queue runner looks for due messages, milliseconds.",
    ),
    k("relay", "parallel", "Deliveries in progress at once."),
    k(
        "relay",
        "per_destination",
        "Connections at once to one destination domain.",
    ),
    k(
        "relay",
        "timeout_secs",
        "Connect and reply timeout of outbound connections, seconds.",
    ),
    k(
        "relay",
        "lease_secs",
        "How long a node holds a queue entry it is delivering (must exceed\ntimeout_secs).",
    ),
    k(
        "dns",
        "nameservers",
        "Nameservers as \"ip:port\"; empty: the system's (/etc/resolv.conf).",
    ),
    k("dns", "timeout_ms", "DNS query timeout, milliseconds."),
    k(
        "dns",
        "allow_private",
        "Domains whose servers may be at loopback, private or link-local\naddresses (split horizon). Others are never dialled there; a domain\nwith a static route is dialled where its route says.",
    ),
    opt(
        "dns",
        "key_refresh_secs",
        "Least time between two fetches of a pinned domain's key prompted by\na signature that does not verify, seconds (default 60).",
        "60",
    ),
    k(
        "dns",
        "routes",
        "Static routes overriding DNS: domain = [\"host:port\", ...] (IPv6 in brackets).",
    ),
    k(
        "remote",
        "keyrequests_per_minute",
        "KEYREQUESTs for other domains a peer that is not logged in may make\nper minute, after the burst (each may make this server dial out).",
    ),
    k(
        "remote",
        "keyrequest_burst",
        "KEYREQUESTs for other domains a peer may make at once.",
    ),
    k(
        "remote",
        "statement_max_secs",
        "Longest a remote key statement is cached, whatever the remote signed.",
    ),
    k(
        "remote",
        "max_statements",
        "Most remote key statements cached.",
    ),
    k(
        "remote",
        "max_pins",
        "Most pinned remote server keys; beyond it the pins first seen most\nrecently go (established pins are never displaced by a flood).",
    ),
    k(
        "smtp",
        "listen",
        "Addresses for inbound SMTP: cmtpd as the domain's MX (port 25 in\nproduction, e.g. [\"0.0.0.0:25\", \"[::]:25\"]). Empty: no SMTP (the default).",
    ),
    opt(
        "smtp",
        "hostname",
        "Host name in the SMTP greeting, EHLO, Received: fields and the\ncertificate (default: the domain). The MX record names it.",
        "\"mx.example.org\"",
    ),
    k(
        "smtp",
        "max_message_size",
        "Largest message accepted by SMTP, bytes (announced with SIZE). Must\nleave 64 KiB below limits.max_message_size: the sealed copy is larger.",
    ),
    k("smtp", "max_recipients", "Recipients per SMTP transaction."),
    k("smtp", "starttls", "Offer STARTTLS."),
    k(
        "smtp",
        "require_tls",
        "Refuse MAIL before STARTTLS (never on a public MX: RFC 3207 §4).",
    ),
    opt(
        "smtp",
        "tls_cert",
        "PEM certificate chain for STARTTLS (unset: a self-issued certificate\nfor the host name, made at each start).",
        "\"/etc/cmtpd/smtp.crt\"",
    ),
    opt(
        "smtp",
        "tls_key",
        "PEM private key of tls_cert.",
        "\"/etc/cmtpd/smtp.key\"",
    ),
    k(
        "smtp",
        "messages_per_minute",
        "Messages one peer (the peers of [connections]) may send per minute by\nSMTP, after the burst; beyond it 421 and close.",
    ),
    k(
        "smtp",
        "message_burst",
        "Messages one peer may send at once.",
    ),
    k(
        "smtp",
        "verify",
        "Check SPF, DKIM, DMARC and ARC of arriving mail (the results travel\nsealed with the message to the recipient).",
    ),
    k(
        "smtp",
        "outbound",
        "Deliver mail that its sender sent without end-to-end encryption, with\nconsent (cmtp send --allow-smtp), by SMTP to domains without CMTP.",
    ),
    k(
        "smtp",
        "outbound_port",
        "Port of other domains' SMTP servers.",
    ),
    k(
        "smtp",
        "dkim_selector",
        "DKIM selector of outbound mail: the key is published at\n<selector>._domainkey.<domain>.",
    ),
    opt(
        "smtp",
        "dkim_key",
        "DKIM private key, PKCS#8 PEM (default: <data_dir>/dkim.key, made by\ncmtpd init).",
        "\"/etc/cmtpd/dkim.key\"",
    ),
    k(
        "smtp",
        "command_timeout_secs",
        "Longest wait for an SMTP command, seconds.",
    ),
    k(
        "smtp",
        "data_timeout_secs",
        "Longest wait for the next bytes of a message, seconds.",
    ),
    k(
        "transparency",
        "epoch_secs",
        "Seconds between two epochs of the key directory: a key change is\npublished (and provable to senders) at most this long after it happens.",
    ),
    k(
        "transparency",
        "witnesses",
        "Domains asked to cosign each new epoch head of this domain's key\ndirectory, e.g. [\"partner.example\"]; they list this domain in their\nwitness_for.",
    ),
    k(
        "transparency",
        "witness_for",
        "Domains whose key directories this server witnesses when asked\n(KTWITNESS); requests for others are refused.",
    ),
    k(
        "transparency",
        "precompute",
        "Make ahead, after each epoch, the lookup proofs of the accounts asked\nfor (KEYPROOF) in the epoch before, so that their first request after\nthe epoch is answered from the cache.",
    ),
    k(
        "transparency",
        "precompute_all",
        "After each epoch the lookup proofs of every account are made ahead\n(in the background) when the directory holds at most this many; in a\nlarger one only those asked for in the epoch before. 0: only those.",
    ),
    opt(
        "metrics",
        "listen",
        "Address of the Prometheus endpoint (/metrics); unset: no metrics.",
        "\"127.0.0.1:9100\"",
    ),
    k(
        "log",
        "format",
        "\"human\" (one readable line per event) or \"json\" (one object per line).",
    ),
    k(
        "log",
        "level",
        "A tracing filter: \"info\", \"debug\", \"cmtp_server=debug,info\", ... (RUST_LOG\noverrides it).",
    ),
];

fn section_doc(section: &str) -> &'static str {
    match section {
        "limits" => "Message limits (clients learn them from OHAI).",
        "timeouts" => "Timeouts of a connection, seconds unless stated.",
        "connections" => "Connection limits.",
        "accounts" => "Accounts, registration and login.",
        "store" => "Storage.",
        "relay" => "The relay queue (mail for other domains).",
        "dns" => "Finding other domains' servers.",
        "remote" => "What strangers may make this server ask of other domains.",
        "smtp" => "The SMTP gateway: cmtpd as the domain's whole mail server.",
        "transparency" => "Key transparency: the key directory's epochs and witnesses.",
        "metrics" => "Prometheus metrics.",
        "log" => "Logs (to stderr).",
        _ => "",
    }
}

fn full_key(d: &KeyDoc) -> String {
    if d.section.is_empty() {
        d.key.to_owned()
    } else {
        format!("{}.{}", d.section, d.key)
    }
}

/// Whether a reload applies the key (else it needs a restart).
pub fn reloadable(full: &str) -> bool {
    !RESTART_ONLY
        .iter()
        .any(|r| full == *r || full.starts_with(&format!("{r}.")))
}

fn lookup<'a>(t: &'a toml::Table, d: &KeyDoc) -> Option<&'a toml::Value> {
    if d.section.is_empty() {
        t.get(d.key)
    } else {
        t.get(d.section)?.as_table()?.get(d.key)
    }
}

fn inline(v: &toml::Value) -> String {
    match v {
        // Tables render inline (only dns.routes is a table value).
        toml::Value::Table(t) if t.is_empty() => "{}".into(),
        other => other.to_string(),
    }
}

/// The documented TOML text of `cfg`.
pub(crate) fn render(cfg: &Config) -> String {
    let current = toml::Table::try_from(cfg).expect("configuration serialises");
    let mut defaults_cfg = Config::new(&cfg.domain, std::path::Path::new("."));
    defaults_cfg.data_dir = ".".into();
    let defaults = toml::Table::try_from(&defaults_cfg).expect("configuration serialises");
    let mut out = String::from(
        "# cmtpd configuration.\n\
         #\n\
         # Every key but `domain` is optional: a key left out (or commented out) takes\n\
         # the default shown. Relative paths are relative to this file's directory.\n\
         # `cmtpd config check` validates this file; `cmtpd config show` prints the\n\
         # values in effect; `cmtpd reload` (or SIGHUP) applies changes to a running\n\
         # server, except for keys marked \"restart\". This file may hold a database\n\
         # password: keep it readable by the cmtpd user only (mode 0600).\n",
    );
    let mut section = "";
    for d in KEY_DOCS {
        if d.section != section {
            section = d.section;
            if d.section != "dns" || d.key != "routes" {
                let _ = write!(out, "\n# {}\n[{}]\n", section_doc(section), section);
            }
        }
        let full = full_key(d);
        out.push('\n');
        for line in d.doc.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let default = if d.section.is_empty() && d.key == "domain" {
            None
        } else if d.section.is_empty() && d.key == "data_dir" {
            Some("\".\" (this file's directory)".to_owned())
        } else {
            lookup(&defaults, d).map(inline)
        };
        let restart = if reloadable(&full) { "" } else { " (restart)" };
        match default {
            Some(v) => {
                let _ = writeln!(out, "# default: {v}{restart}");
            }
            None if !restart.is_empty() => {
                let _ = writeln!(out, "# (restart)");
            }
            None => {}
        }
        if full == "dns.routes" {
            let routes = &cfg.dns.routes;
            out.push_str("[dns.routes]\n");
            if routes.is_empty() {
                out.push_str("# \"partner.example\" = [\"10.1.2.3:9001\"]\n");
            }
            for (domain, targets) in routes {
                let v = toml::Value::try_from(targets).expect("routes serialise");
                let _ = writeln!(out, "{} = {}", toml::Value::from(domain.as_str()), v);
            }
            continue;
        }
        match (lookup(&current, d), d.example) {
            (Some(v), _) => {
                let _ = writeln!(out, "{} = {}", d.key, inline(v));
            }
            (None, Some(example)) => {
                let _ = writeln!(out, "# {} = {}", d.key, example);
            }
            (None, None) => unreachable!("{full} has neither a value nor an example"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::Path;

    /// A configuration with every optional key set, so that every key
    /// serialises.
    fn everything() -> Config {
        let mut c = Config::new("a.test", Path::new("/d"));
        c.key_file = Some("/k".into());
        c.node_name = Some("n".into());
        c.store.path = Some("/p".into());
        c.store.url = Some("postgres://x".into());
        c.metrics.listen = Some("127.0.0.1:1".parse().unwrap());
        c.limits.staged_per_peer = Some(1 << 30);
        c.limits.staged_per_domain = Some(1 << 31);
        c.connections.reserved_for_users = Some(1);
        c.store.max_size = Some(1 << 40);
        c.dns.key_refresh_secs = Some(60);
        c.smtp.hostname = Some("mx.a.test".into());
        c.smtp.tls_cert = Some("/c".into());
        c.smtp.tls_key = Some("/k".into());
        c.smtp.dkim_key = Some("/dk".into());
        c
    }

    #[test]
    fn every_key_is_documented_and_every_documented_key_exists() {
        let keys: BTreeSet<String> = crate::config::flatten(&everything()).into_keys().collect();
        let documented: BTreeSet<String> = KEY_DOCS.iter().map(full_key).collect();
        assert_eq!(keys, documented);
        for d in KEY_DOCS {
            assert!(!d.doc.trim().is_empty(), "{} has no text", full_key(d));
        }
    }

    #[test]
    fn the_file_shows_each_key_with_its_default() {
        let cfg = Config::new("a.test", Path::new("/var/lib/cmtpd"));
        let text = cfg.to_toml();
        for d in KEY_DOCS {
            let present = text.contains(&format!("\n{} = ", d.key))
                || text.contains(&format!("\n# {} = ", d.key))
                || d.key == "routes";
            assert!(present, "{} missing:\n{text}", full_key(d));
        }
        assert!(text.contains("# default: 67108864\nmax_message_size = 67108864"));
        assert!(
            text.contains("# default: 5000\ntimeout_ms = 5000"),
            "{text}"
        );
        assert!(text.contains("# default: [\"127.0.0.1:9001\"] (restart)"));
        assert!(text.contains("# url = \"postgres://"));
        // Parses back to the same configuration.
        let mut back: Config = toml::from_str(&text).unwrap();
        back.resolve_paths(Path::new("/x"));
        assert_eq!(back, cfg);
    }
}
