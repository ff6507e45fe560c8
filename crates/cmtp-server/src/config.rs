//! The TOML configuration of cmtpd, with sane defaults for every value.
//!
//! Only `domain` is required; everything else has a default, and
//! `cmtpd run --domain D --data-dir DIR` writes a complete `cmtpd.toml` into
//! the data directory on first start.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::names::Domain;
use serde::{Deserialize, Serialize};

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "cmtpd.toml";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The domain this server serves.
    pub domain: String,
    /// Where the key, the database and this file live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// The server key file (default `<data_dir>/server.key`); cluster nodes share one.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// Name of this node in a cluster (default: host name and process id).
    #[serde(default)]
    pub node_name: Option<String>,
    /// Message limits.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
    /// Connection limits.
    #[serde(default)]
    pub connections: ConnectionsConfig,
    /// Accounts and login.
    #[serde(default)]
    pub accounts: AccountsConfig,
    /// Storage backend.
    #[serde(default)]
    pub store: StoreSection,
    /// Relay queue.
    #[serde(default)]
    pub relay: RelayConfig,
    /// Other domains: remote key requests and what is kept of them.
    #[serde(default)]
    pub remote: RemoteConfig,
    /// DNS.
    #[serde(default)]
    pub dns: DnsConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("cmtpd-data")
}

fn default_listen() -> Vec<SocketAddr> {
    vec!["127.0.0.1:9001".parse().expect("literal address")]
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Largest message in bytes.
    pub max_message_size: u64,
    /// Most attachments per message.
    pub max_attachments: u32,
    /// Longest log in bytes.
    pub max_log: u64,
    /// Most log lines (hops).
    pub max_hops: u32,
    /// Refuse crypto system 0 (plaintext) messages.
    pub refuse_plaintext: bool,
    /// Bytes of messages being received at once from one peer (see
    /// `connections.ipv4_prefix`) that is not logged in: a message that
    /// would go beyond is refused with TEMPFAILURE before its bytes are
    /// stored. At least `max_message_size` (default: twice it, 128 MiB).
    pub staged_per_peer: Option<u64>,
    /// Bytes of messages being received at once that claim one source
    /// domain. At least `max_message_size` (default: four times it, 256
    /// MiB).
    pub staged_per_domain: Option<u64>,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        let d = MessageLimits::default();
        LimitsConfig {
            max_message_size: d.max_message_size,
            max_attachments: d.max_attachments,
            max_log: d.max_log,
            max_hops: d.max_hops,
            refuse_plaintext: false,
            staged_per_peer: None,
            staged_per_domain: None,
        }
    }
}

impl LimitsConfig {
    /// As the protocol crate's limits.
    pub fn message_limits(&self) -> MessageLimits {
        MessageLimits {
            max_message_size: self.max_message_size,
            max_attachments: self.max_attachments,
            max_log: self.max_log,
            max_hops: self.max_hops,
        }
    }

    /// The staging budgets: per peer, per source domain.
    pub fn staging(&self) -> (u64, u64) {
        (
            self.staged_per_peer
                .unwrap_or(self.max_message_size.saturating_mul(2)),
            self.staged_per_domain
                .unwrap_or(self.max_message_size.saturating_mul(4)),
        )
    }
}

/// `[timeouts]` (seconds unless stated)
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsConfig {
    /// Idle time allowed between commands.
    pub idle_secs: u64,
    /// Time allowed for one command after its first byte.
    pub command_secs: u64,
    /// Fixed allowance for a message after MAIL.
    pub data_grace_secs: u64,
    /// Minimum average transfer rate of a message, bytes per second.
    pub min_data_rate: u64,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            idle_secs: 300,
            command_secs: 30,
            data_grace_secs: 30,
            min_data_rate: 16 * 1024,
            shutdown_grace_secs: 30,
        }
    }
}

/// `[connections]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectionsConfig {
    /// Most connections at once.
    pub max: usize,
    /// Most connections at once from one peer (an IPv4 address or prefix,
    /// an IPv6 prefix: see `ipv4_prefix`, `ipv6_prefix`).
    pub max_per_peer: usize,
    /// Consecutive bad commands before the connection is closed.
    pub max_bad_commands: u32,
    /// Of `max`, how many connections only logged-in sessions may hold:
    /// connections that are not logged in are refused once `max -
    /// reserved_for_users` of them are open. Less than `max` (default: a
    /// sixteenth of it, 1024).
    pub reserved_for_users: Option<usize>,
    /// Leading bits of an IPv4 address that make one peer, for every
    /// per-peer limit: connections, failed logins, bytes being received,
    /// remote key requests (default 32: each address; 24 counts a /24 as
    /// one peer).
    pub ipv4_prefix: u8,
    /// Leading bits of an IPv6 address that make one peer (default 64: one
    /// host usually holds a whole /64).
    pub ipv6_prefix: u8,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 16384,
            max_per_peer: 128,
            max_bad_commands: 10,
            reserved_for_users: None,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
        }
    }
}

/// `[accounts]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct AccountsConfig {
    /// Anyone may register without an invite.
    pub open_registration: bool,
    /// Validity of an invite token, hours.
    pub invite_validity_hours: u64,
    /// Weakest Argon2id memory (KiB) accepted at registration.
    pub ksf_min_memory_kib: u32,
    /// Weakest Argon2id pass count accepted.
    pub ksf_min_passes: u32,
    /// Weakest Argon2id lane count accepted.
    pub ksf_min_lanes: u32,
    /// Failed logins per account from one peer within the window before
    /// RATELIMITED (counted per account and peer together, so that nobody
    /// can lock another person out: PROTOCOL.md §12.3). At least 1.
    pub login_failures_per_account: u32,
    /// Failed logins per peer (all accounts) within the window before
    /// RATELIMITED. At least 1.
    pub login_failures_per_address: u32,
    /// The rate-limit window, seconds.
    pub login_window_secs: u64,
    /// Validity of the key statements the server issues, days.
    pub statement_validity_days: u64,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        let k = KsfParams::RECOMMENDED;
        AccountsConfig {
            open_registration: false,
            invite_validity_hours: 7 * 24,
            ksf_min_memory_kib: k.m_cost_kib,
            ksf_min_passes: k.t_cost,
            ksf_min_lanes: k.p_cost,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window_secs: 15 * 60,
            statement_validity_days: 30,
        }
    }
}

impl AccountsConfig {
    /// The weakest KSF parameters accepted.
    pub fn ksf_floor(&self) -> KsfParams {
        KsfParams {
            m_cost_kib: self.ksf_min_memory_kib,
            t_cost: self.ksf_min_passes,
            p_cost: self.ksf_min_lanes,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (default) or `postgres`.
    pub backend: String,
    /// SQLite database file (default `<data_dir>/cmtp.db`).
    pub path: Option<PathBuf>,
    /// PostgreSQL connection URL.
    pub url: Option<String>,
    /// PostgreSQL pool size.
    pub pool_size: usize,
    /// Largest size of the store in bytes (SQLite: database and log files;
    /// PostgreSQL: the database). New mail is refused with TEMPFAILURE when
    /// it would go beyond. None (the default): no limit but the disk's.
    pub max_size: Option<u64>,
    /// Free space, in bytes, to keep on the data directory's file system
    /// (as Postfix's `queue_minfree`): a message is refused up front with
    /// TEMPFAILURE when the free space is below this plus its size.
    /// Deleting mail, logins and everything else keep working (default 256
    /// MiB).
    pub min_free: u64,
    /// Size of the ballast file `cmtpd.ballast` kept beside the database (in
    /// the data directory unless `path` says otherwise):
    /// when the file system fills up all the same (another program, logs),
    /// cmtpd deletes it so that deleting mail, logins and restarts keep
    /// working, and writes it again once space returns. 0: no ballast
    /// (default 32 MiB).
    pub ballast_size: u64,
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: "sqlite".into(),
            path: None,
            url: None,
            pool_size: 16,
            max_size: None,
            min_free: 256 << 20,
            ballast_size: 32 << 20,
        }
    }
}

/// `[relay]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// How long a message is retried before it bounces, seconds (5 days).
    pub lifetime_secs: u64,
    /// First retry delay, seconds; doubles each attempt.
    pub first_retry_secs: u64,
    /// Longest retry delay, seconds.
    pub max_retry_secs: u64,
    /// How often the queue runner looks for due messages, milliseconds.
    pub poll_ms: u64,
    /// Deliveries in progress at once.
    pub parallel: usize,
    /// Connections at once to one destination domain.
    pub per_destination: usize,
    /// Connect and reply timeout for outbound connections, seconds.
    pub timeout_secs: u64,
    /// How long a node holds a leased queue entry, seconds.
    pub lease_secs: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            lifetime_secs: 5 * 24 * 3600,
            first_retry_secs: 60,
            max_retry_secs: 3600,
            poll_ms: 1000,
            parallel: 32,
            per_destination: 4,
            timeout_secs: 30,
            lease_secs: 300,
        }
    }
}

/// `[remote]`: key requests for other domains, and what is kept of them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct RemoteConfig {
    /// KEYREQUESTs for other domains a peer that is not logged in may make
    /// per minute, after a first `keyrequest_burst` (each may make this
    /// server dial out). 0: none (default 30).
    pub keyrequests_per_minute: u32,
    /// KEYREQUESTs for other domains a peer may make at once (default 30).
    pub keyrequest_burst: u32,
    /// Longest time a remote key statement is cached, whatever expiry the
    /// remote server signed, seconds (default 86400: a day).
    pub statement_max_secs: u64,
    /// Most remote key statements cached (default 100,000).
    pub max_statements: u64,
    /// Most pinned remote server keys; beyond it, the pins first seen most
    /// recently are dropped (default 100,000).
    pub max_pins: u64,
}

impl Default for RemoteConfig {
    fn default() -> Self {
        RemoteConfig {
            keyrequests_per_minute: 30,
            keyrequest_burst: 30,
            statement_max_secs: 24 * 3600,
            max_statements: 100_000,
            max_pins: 100_000,
        }
    }
}

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers (`ip:port`); empty = the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Static routes: domain → `host:port` list, overriding DNS.
    pub routes: BTreeMap<String, Vec<String>>,
    /// Query timeout, milliseconds (default 5000).
    pub timeout_ms: Option<u64>,
    /// Least time between two fetches of a pinned domain's key bundle
    /// prompted by a signature that does not verify, seconds (default 60).
    pub key_refresh_secs: Option<u64>,
    /// Domains whose servers may be found at loopback, private, link-local
    /// or other non-public addresses through DNS. Other domains are never
    /// dialled there (a domain in `routes` is dialled where its route says).
    /// Default: none.
    pub allow_private: Vec<String>,
}

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; none = off.
    pub listen: Option<SocketAddr>,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: String,
    /// A tracing filter such as `info` or `cmtp_server=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: "human".into(),
            level: "info".into(),
        }
    }
}

impl Config {
    /// A default configuration for `domain` with `data_dir`.
    pub fn new(domain: &str, data_dir: &Path) -> Config {
        Config {
            domain: domain.to_owned(),
            data_dir: data_dir.to_owned(),
            listen: default_listen(),
            key_file: None,
            node_name: None,
            limits: LimitsConfig::default(),
            timeouts: TimeoutsConfig::default(),
            connections: ConnectionsConfig::default(),
            accounts: AccountsConfig::default(),
            store: StoreSection::default(),
            relay: RelayConfig::default(),
            remote: RemoteConfig::default(),
            dns: DnsConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }

    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The TOML text of this configuration.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("configuration serialises");
        format!(
            "# cmtpd configuration. Every key is optional except `domain`; see README.md.\n{body}"
        )
    }

    /// Checks values that the types cannot.
    pub fn validate(&self) -> anyhow::Result<()> {
        Domain::parse(&self.domain).with_context(|| format!("domain {:?}", self.domain))?;
        if self.listen.is_empty() {
            bail!("`listen` names no address");
        }
        if self.limits.max_message_size < 1024 {
            bail!("limits.max_message_size must be at least 1024");
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            bail!("log.format must be \"human\" or \"json\"");
        }
        match self.store.backend.as_str() {
            "sqlite" => {}
            "postgres" if self.store.url.is_some() => {}
            "postgres" => bail!("store.backend = \"postgres\" needs store.url"),
            other => bail!("unknown store.backend {other:?} (sqlite or postgres)"),
        }
        self.accounts
            .ksf_floor()
            .validate(&KsfParams {
                m_cost_kib: 8,
                t_cost: 1,
                p_cost: 1,
            })
            .map_err(|e| anyhow::anyhow!("accounts.ksf_min_*: {e}"))?;
        for (domain, routes) in &self.dns.routes {
            Domain::parse(domain).with_context(|| format!("dns.routes key {domain:?}"))?;
            if routes.is_empty() {
                bail!("dns.routes.{domain} is empty");
            }
        }
        if self.relay.parallel == 0 || self.relay.per_destination == 0 {
            bail!("relay.parallel and relay.per_destination must be at least 1");
        }
        self.validate_abuse_limits()
    }

    /// The limits against strangers (PROTOCOL.md §15).
    fn validate_abuse_limits(&self) -> anyhow::Result<()> {
        let a = &self.accounts;
        if a.login_failures_per_account == 0 || a.login_failures_per_address == 0 {
            bail!(
                "accounts.login_failures_per_account and accounts.login_failures_per_address \
                 must be at least 1 (0 would refuse every password login)"
            );
        }
        let c = &self.connections;
        if c.ipv4_prefix > 32 {
            bail!("connections.ipv4_prefix must be at most 32");
        }
        if c.ipv6_prefix > 128 {
            bail!("connections.ipv6_prefix must be at most 128");
        }
        if c.reserved_for_users.is_some_and(|r| r >= c.max) {
            bail!("connections.reserved_for_users must be less than connections.max");
        }
        let l = &self.limits;
        for (key, value) in [
            ("staged_per_peer", l.staged_per_peer),
            ("staged_per_domain", l.staged_per_domain),
        ] {
            if value.is_some_and(|v| v < l.max_message_size) {
                bail!(
                    "limits.{key} must be at least limits.max_message_size, \
                     or no message that large could arrive"
                );
            }
        }
        for domain in &self.dns.allow_private {
            Domain::parse(domain).with_context(|| format!("dns.allow_private entry {domain:?}"))?;
        }
        Ok(())
    }

    /// The domain, parsed.
    pub fn domain(&self) -> Domain {
        Domain::parse(&self.domain).expect("validated")
    }

    /// The server key file.
    pub fn key_path(&self) -> PathBuf {
        self.key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("server.key"))
    }

    /// The SQLite database file.
    pub fn sqlite_path(&self) -> PathBuf {
        self.store
            .path
            .clone()
            .unwrap_or_else(|| self.data_dir.join("cmtp.db"))
    }

    /// Idle timeout.
    pub fn idle(&self) -> Duration {
        Duration::from_secs(self.timeouts.idle_secs)
    }

    /// How peers are grouped for every per-peer limit.
    pub fn peer_prefixes(&self) -> crate::limiter::PeerPrefixes {
        crate::limiter::PeerPrefixes::new(
            self.connections.ipv4_prefix,
            self.connections.ipv6_prefix,
        )
    }

    /// The connection limits.
    pub fn connection_limits(&self) -> crate::limiter::ConnectionLimits {
        let c = &self.connections;
        crate::limiter::ConnectionLimits {
            max: c.max,
            reserved_for_users: c.reserved_for_users.unwrap_or(c.max / 16),
            max_per_peer: c.max_per_peer,
        }
    }

    /// The directory whose file system holds the store's data (SQLite: the
    /// database's; PostgreSQL: the data directory), for free-space checks.
    pub fn store_dir(&self) -> PathBuf {
        match self.store.backend.as_str() {
            "sqlite" => {
                let path = self.sqlite_path();
                match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                }
            }
            _ => self.data_dir.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_file_gets_every_default() {
        let cfg: Config = toml::from_str("domain = \"a.test\"").unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(cfg.accounts.ksf_floor(), KsfParams::RECOMMENDED);
    }

    #[test]
    fn the_written_file_reads_back_equal() {
        let cfg = Config::new("a.test", Path::new("/tmp/x"));
        let back: Config = toml::from_str(&cfg.to_toml()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn a_login_limit_of_zero_is_refused_with_a_clear_message() {
        let mut cfg = Config::new("a.test", Path::new("/tmp/x"));
        cfg.accounts.login_failures_per_account = 0;
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
        cfg.accounts.login_failures_per_account = 5;
        cfg.connections.ipv4_prefix = 33;
        assert!(cfg.validate().is_err());
        cfg.connections.ipv4_prefix = 24;
        cfg.connections.reserved_for_users = Some(cfg.connections.max);
        assert!(cfg.validate().is_err());
        cfg.connections.reserved_for_users = Some(0);
        cfg.limits.staged_per_peer = Some(cfg.limits.max_message_size - 1);
        assert!(cfg.validate().is_err());
        cfg.limits.staged_per_peer = None;
        assert_eq!(cfg.limits.staging(), (128 << 20, 256 << 20));
        assert_eq!(cfg.connection_limits().reserved_for_users, 0);
        cfg.connections.reserved_for_users = None;
        assert_eq!(cfg.connection_limits().reserved_for_users, 1024);
        cfg.dns.allow_private = vec!["not a domain".into()];
        assert!(cfg.validate().is_err());
        cfg.dns.allow_private = vec!["lab.test".into()];
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("domain = \"a.test\"\nlisten_addr = 1").is_err());
        let mut cfg = Config::new("a..test", Path::new("/tmp"));
        assert!(cfg.validate().is_err());
        cfg.domain = "a.test".into();
        cfg.store.backend = "postgres".into();
        assert!(cfg.validate().is_err());
    }
}
