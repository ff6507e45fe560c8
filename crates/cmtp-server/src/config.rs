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
    /// Most connections at once from one peer address.
    pub max_per_peer: usize,
    /// Consecutive bad commands before the connection is closed.
    pub max_bad_commands: u32,
}

impl Default for ConnectionsConfig {
    fn default() -> Self {
        ConnectionsConfig {
            max: 16384,
            max_per_peer: 128,
            max_bad_commands: 10,
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
    /// Failed logins per account within the window before RATELIMITED.
    pub login_failures_per_account: u32,
    /// Failed logins per peer address within the window before RATELIMITED.
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
}

impl Default for StoreSection {
    fn default() -> Self {
        StoreSection {
            backend: "sqlite".into(),
            path: None,
            url: None,
            pool_size: 16,
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
    fn unknown_keys_and_bad_values_are_refused() {
        assert!(toml::from_str::<Config>("domain = \"a.test\"\nlisten_addr = 1").is_err());
        let mut cfg = Config::new("a..test", Path::new("/tmp"));
        assert!(cfg.validate().is_err());
        cfg.domain = "a.test".into();
        cfg.store.backend = "postgres".into();
        assert!(cfg.validate().is_err());
    }
}
