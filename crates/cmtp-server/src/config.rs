//! The TOML configuration of cmtpd, with sane defaults for every value.
//!
//! Only `domain` is required; everything else has a default, and
//! `cmtpd init` (or `cmtpd run --domain D` on first start) writes a complete
//! `cmtpd.toml` that documents every key with its default
//! ([`Config::documented_toml`]). Relative paths in a file (`data_dir`,
//! `key_file`, `store.path`) are relative to the file's own directory, never
//! to the directory cmtpd happens to be started from ([`Config::load`]).
//!
//! [`Config::problems`] lists everything wrong with a configuration at once
//! (`cmtpd config check` prints them; start and reload refuse them), and
//! [`Config::merge_reload`] decides what a reload (SIGHUP, `cmtpd reload`)
//! may change in a running server.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::names::Domain;
use serde::{Deserialize, Serialize};

pub use crate::config_template::{KEY_DOCS, KeyDoc, reloadable};

/// Name of the configuration file inside the data directory.
pub const CONFIG_FILE: &str = "cmtpd.toml";

/// The whole configuration.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The domain this server serves.
    pub domain: String,
    /// Where the key, the database and this file live (relative to the
    /// configuration file's directory; default: that directory).
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// Addresses to listen on.
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// The server key file (default `<data_dir>/server.key`); cluster nodes share one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// Name of this node in a cluster (default: host name and process id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
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
    /// The SMTP gateway (PROTOCOL.md §19): inbound SMTP, outbound SMTP, DKIM.
    #[serde(default)]
    pub smtp: SmtpConfig,
    /// Key transparency: epochs and witnesses (PROTOCOL.md §20).
    #[serde(default)]
    pub transparency: TransparencyConfig,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Logs.
    #[serde(default)]
    pub log: LogConfig,
}

fn default_data_dir() -> PathBuf {
    PathBuf::from(".")
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
    /// Minimum transfer rate of a message, bytes per second: over the whole
    /// message and over every `data_grace_secs` window of it.
    pub min_data_rate: u64,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace_secs: u64,
    /// Longest life of a connection that is not logged in, seconds.
    pub stranger_session_secs: u64,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        TimeoutsConfig {
            idle_secs: 300,
            command_secs: 30,
            data_grace_secs: 30,
            min_data_rate: 16 * 1024,
            shutdown_grace_secs: 30,
            stranger_session_secs: 3600,
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
    /// Logins (`LOGIN`, `KEYLOGIN`: a database read, an OPAQUE step) of
    /// sessions not logged in that run at once; the others wait their turn,
    /// a turn per peer, peers whose logins have been failing last
    /// (`crate::fair`). At least 1.
    pub stranger_logins: usize,
    /// Chunks of messages from peers not logged in being written to the
    /// store at once, a turn per peer: logged-in users' commits never queue
    /// behind more than these. At least 1.
    pub stranger_store_writes: usize,
    /// Of `stranger_logins` and of `stranger_store_writes`, how many one
    /// peer may have running at once. At least 1.
    pub stranger_share_per_peer: usize,
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
            stranger_logins: 2,
            stranger_store_writes: 2,
            stranger_share_per_peer: 1,
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
    /// Validity of a reset token (`cmtpd user reset`), hours.
    pub reset_validity_hours: u64,
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
    /// Least time between two "your mailbox is full" notices to one user, hours.
    pub quota_notice_interval_hours: u64,
}

impl Default for AccountsConfig {
    fn default() -> Self {
        let k = KsfParams::RECOMMENDED;
        AccountsConfig {
            open_registration: false,
            invite_validity_hours: 7 * 24,
            reset_validity_hours: 24,
            ksf_min_memory_kib: k.m_cost_kib,
            ksf_min_passes: k.t_cost,
            ksf_min_lanes: k.p_cost,
            login_failures_per_account: 5,
            login_failures_per_address: 20,
            login_window_secs: 15 * 60,
            statement_validity_days: 30,
            quota_notice_interval_hours: 24,
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

/// Which storage backend (`[store] backend`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    /// One SQLite file in the data directory (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL database shared by the nodes of a cluster.
    Postgres,
}

impl std::fmt::Display for StoreBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StoreBackend::Sqlite => "sqlite",
            StoreBackend::Postgres => "postgres",
        })
    }
}

/// `[store]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StoreSection {
    /// `sqlite` (default) or `postgres`.
    pub backend: StoreBackend,
    /// SQLite database file (default `<data_dir>/cmtp.db`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// PostgreSQL connection URL.
    #[serde(skip_serializing_if = "Option::is_none")]
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
            backend: StoreBackend::Sqlite,
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

/// `[transparency]`: the key directory's epochs and witnesses.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct TransparencyConfig {
    /// Seconds between two epochs of the key directory: key changes are
    /// published, and proven to senders, at most this long after they
    /// happen (default 300).
    pub epoch_secs: u64,
    /// Domains asked to witness (cosign) each new epoch head of this
    /// domain's directory (default none).
    pub witnesses: Vec<String>,
    /// Domains whose directories this server witnesses when they ask
    /// (`KTWITNESS`); others are refused (default none).
    pub witness_for: Vec<String>,
    /// Whether the lookup proofs of the accounts asked for in an epoch are
    /// made ahead (in the background) after the next epoch is published,
    /// so that the first `KEYPROOF` of each after the epoch is answered from
    /// the cache (default true).
    pub precompute: bool,
    /// After each epoch, the lookup proofs of every account are made ahead
    /// when the directory holds at most this many; in a larger one, only
    /// those of the accounts asked for (`KEYPROOF`) in the epoch before
    /// (default 10,000; 0: only those asked for).
    pub precompute_all: usize,
}

impl Default for TransparencyConfig {
    fn default() -> Self {
        TransparencyConfig {
            epoch_secs: 300,
            witnesses: Vec::new(),
            witness_for: Vec::new(),
            precompute: true,
            precompute_all: 10_000,
        }
    }
}

/// `[dns]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Nameservers (`ip:port`); empty = the system's.
    pub nameservers: Vec<SocketAddr>,
    /// Query timeout, milliseconds.
    pub timeout_ms: u64,
    /// Static routes: domain → `host:port` list, overriding DNS.
    pub routes: BTreeMap<String, Vec<String>>,
    /// Least time between two fetches of a pinned domain's key bundle
    /// prompted by a signature that does not verify, seconds (default 60).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_refresh_secs: Option<u64>,
    /// Domains whose servers may be found at loopback, private, link-local
    /// or other non-public addresses through DNS. Other domains are never
    /// dialled there (a domain in `routes` is dialled where its route says).
    /// Default: none.
    pub allow_private: Vec<String>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            nameservers: Vec::new(),
            timeout_ms: 5000,
            routes: BTreeMap::new(),
            key_refresh_secs: None,
            allow_private: Vec::new(),
        }
    }
}

/// `[smtp]`: cmtpd as the domain's SMTP server too (PROTOCOL.md §19).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SmtpConfig {
    /// Addresses for inbound SMTP (port 25 in production); empty: off (the default).
    pub listen: Vec<SocketAddr>,
    /// The host name in the SMTP greeting, EHLO and `Received:` fields,
    /// and the certificate's name (default: the domain).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Largest message accepted by SMTP, bytes (announced with SIZE).
    pub max_message_size: u64,
    /// Recipients per SMTP transaction.
    pub max_recipients: usize,
    /// Offer STARTTLS.
    pub starttls: bool,
    /// Refuse MAIL before STARTTLS (not for a public MX: RFC 3207 §4).
    pub require_tls: bool,
    /// PEM certificate chain for STARTTLS (unset: a self-issued certificate
    /// for the host name, made at start).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// Messages one peer may send per minute, after a first `message_burst`.
    pub messages_per_minute: u32,
    /// Messages one peer may send at once.
    pub message_burst: u32,
    /// Check SPF, DKIM, DMARC and ARC of arriving mail.
    pub verify: bool,
    /// Deliver consented plaintext mail to domains without CMTP by SMTP.
    pub outbound: bool,
    /// The port of other domains' SMTP servers (25; tests use another).
    pub outbound_port: u16,
    /// DKIM selector of outbound mail (`<selector>._domainkey.<domain>`).
    pub dkim_selector: String,
    /// The DKIM private key (PKCS#8 PEM; default `<data_dir>/dkim.key`,
    /// made by `cmtpd init`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dkim_key: Option<PathBuf>,
    /// Longest wait for an SMTP command, seconds (RFC 5321: 300).
    pub command_timeout_secs: u64,
    /// Longest wait for the next bytes of a message, seconds (RFC 5321: 180).
    pub data_timeout_secs: u64,
}

impl Default for SmtpConfig {
    fn default() -> Self {
        SmtpConfig {
            listen: Vec::new(),
            hostname: None,
            max_message_size: 32 << 20,
            max_recipients: 100,
            starttls: true,
            require_tls: false,
            tls_cert: None,
            tls_key: None,
            messages_per_minute: 60,
            message_burst: 60,
            verify: true,
            outbound: true,
            outbound_port: 25,
            dkim_selector: "cmtp".into(),
            dkim_key: None,
            command_timeout_secs: 300,
            data_timeout_secs: 180,
        }
    }
}

impl SmtpConfig {
    /// The DKIM key file of a configuration.
    pub fn dkim_key_path(&self, data_dir: &Path) -> PathBuf {
        self.dkim_key
            .clone()
            .unwrap_or_else(|| data_dir.join(DKIM_KEY_FILE))
    }
}

/// The DKIM key file's name in the data directory.
pub const DKIM_KEY_FILE: &str = "dkim.key";

/// `[metrics]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the Prometheus endpoint; none = off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
}

/// How log lines are written (`[log] format`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One readable line per event (the default).
    #[default]
    Human,
    /// One JSON object per line, for log collectors.
    Json,
}

impl std::fmt::Display for LogFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LogFormat::Human => "human",
            LogFormat::Json => "json",
        })
    }
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "human" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!("unknown log format {other:?} (human or json)")),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `human` or `json`.
    pub format: LogFormat,
    /// A tracing filter such as `info` or `cmtp_server=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Human,
            level: "info".into(),
        }
    }
}

/// What [`Config::merge_reload`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Keys whose new values take effect now.
    pub applied: Vec<String>,
    /// Keys that changed in the file but need a restart; their running
    /// values are kept.
    pub need_restart: Vec<String>,
}

/// Keys a running server cannot change without a restart (everything else
/// reloads). Named as in the file.
pub const RESTART_ONLY: &[&str] = &[
    "domain",
    "data_dir",
    "listen",
    "key_file",
    "node_name",
    "store",
    "metrics",
    "relay.parallel",
    "relay.per_destination",
    "relay.timeout_secs",
    "accounts.login_window_secs",
    "smtp.listen",
    "smtp.hostname",
    "smtp.starttls",
    "smtp.tls_cert",
    "smtp.tls_key",
    "smtp.dkim_key",
    "smtp.dkim_selector",
];

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
            smtp: SmtpConfig::default(),
            transparency: TransparencyConfig::default(),
            metrics: MetricsConfig::default(),
            log: LogConfig::default(),
        }
    }

    /// Reads a configuration file, makes its relative paths relative to the
    /// file's directory, and checks it ([`Config::problems`]).
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let cfg = Self::load_unchecked(path)?;
        cfg.validate()
            .with_context(|| format!("invalid configuration {}", path.display()))?;
        Ok(cfg)
    }

    /// [`Config::load`] without the semantic checks (for `cmtpd config
    /// check`, which lists the problems itself). Syntax errors, unknown keys
    /// and values of the wrong type still fail.
    pub fn load_unchecked(path: &Path) -> anyhow::Result<Config> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut cfg: Config =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        let base = absolute(path.parent().unwrap_or(Path::new(".")));
        cfg.resolve_paths(&base);
        Ok(cfg)
    }

    /// Makes `data_dir`, `key_file` and `store.path` absolute, relative
    /// paths being taken relative to `base`.
    pub fn resolve_paths(&mut self, base: &Path) {
        let fix = |p: &Path| {
            clean(&if p.is_absolute() {
                p.to_owned()
            } else {
                base.join(p)
            })
        };
        self.data_dir = fix(&self.data_dir);
        if let Some(k) = &self.key_file {
            self.key_file = Some(fix(k));
        }
        if let Some(p) = &self.store.path {
            self.store.path = Some(fix(p));
        }
        for p in [
            &mut self.smtp.tls_cert,
            &mut self.smtp.tls_key,
            &mut self.smtp.dkim_key,
        ]
        .into_iter()
        .flatten()
        {
            *p = fix(p);
        }
    }

    /// The TOML text of this configuration with every key documented, its
    /// default named, and unset optional keys commented out (what `cmtpd
    /// init` writes).
    pub fn to_toml(&self) -> String {
        self.documented_toml()
    }

    /// See [`Config::to_toml`].
    pub fn documented_toml(&self) -> String {
        crate::config_template::render(self)
    }

    /// Checks values that the types cannot; all problems at once.
    pub fn validate(&self) -> anyhow::Result<()> {
        let problems = self.problems();
        if problems.is_empty() {
            Ok(())
        } else {
            anyhow::bail!("{}", problems.join("\n"))
        }
    }

    /// Every problem of this configuration, each a sentence naming the key;
    /// empty when it is usable.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        fn need(p: &mut Vec<String>, ok: bool, msg: &str) {
            if !ok {
                p.push(msg.to_owned());
            }
        }
        if let Err(e) = Domain::parse(&self.domain) {
            need(
                &mut p,
                false,
                &format!("domain {:?} is not a domain name: {e}", self.domain),
            );
        }
        need(&mut p, !self.listen.is_empty(), "listen names no address");
        let sm = &self.smtp;
        need(
            &mut p,
            // Only with inbound SMTP on: off, its size limit is unused.
            sm.listen.is_empty()
                || (sm.max_message_size >= 1024
                    && sm
                        .max_message_size
                        .saturating_add(crate::smtp::SEAL_OVERHEAD)
                        <= self.limits.max_message_size),
            "with smtp.listen set, smtp.max_message_size must be at least 1024 bytes and leave 64 KiB below limits.max_message_size (the sealed copy is larger than the message)",
        );
        need(
            &mut p,
            sm.max_recipients >= 1,
            "smtp.max_recipients must be at least 1",
        );
        need(
            &mut p,
            sm.command_timeout_secs > 0 && sm.data_timeout_secs > 0,
            "smtp.command_timeout_secs and smtp.data_timeout_secs must be greater than 0",
        );
        need(
            &mut p,
            sm.tls_cert.is_some() == sm.tls_key.is_some(),
            "smtp.tls_cert and smtp.tls_key go together: set both or neither",
        );
        need(
            &mut p,
            !sm.dkim_selector.is_empty()
                && sm
                    .dkim_selector
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.'),
            "smtp.dkim_selector must be a DNS label (letters, digits, -)",
        );
        if let Some(h) = &sm.hostname
            && cmtp_smtp::address::parse_domain(h).is_err()
        {
            p.push(format!("smtp.hostname {h:?} is not a host name"));
        }
        let l = &self.limits;
        need(
            &mut p,
            l.max_message_size >= 1024,
            "limits.max_message_size must be at least 1024 bytes",
        );
        need(
            &mut p,
            l.max_log >= 256,
            "limits.max_log must be at least 256 bytes (room for a few log lines)",
        );
        need(
            &mut p,
            l.max_hops >= 1,
            "limits.max_hops must be at least 1 (0 would refuse all mail)",
        );
        let t = &self.timeouts;
        for (key, v) in [
            ("timeouts.idle_secs", t.idle_secs),
            ("timeouts.command_secs", t.command_secs),
            ("timeouts.data_grace_secs", t.data_grace_secs),
            ("timeouts.min_data_rate", t.min_data_rate),
            ("timeouts.stranger_session_secs", t.stranger_session_secs),
            ("relay.lifetime_secs", self.relay.lifetime_secs),
            ("relay.first_retry_secs", self.relay.first_retry_secs),
            ("relay.poll_ms", self.relay.poll_ms),
            ("relay.timeout_secs", self.relay.timeout_secs),
            ("relay.lease_secs", self.relay.lease_secs),
            (
                "accounts.login_window_secs",
                self.accounts.login_window_secs,
            ),
            (
                "accounts.invite_validity_hours",
                self.accounts.invite_validity_hours,
            ),
            (
                "accounts.reset_validity_hours",
                self.accounts.reset_validity_hours,
            ),
            (
                "accounts.statement_validity_days",
                self.accounts.statement_validity_days,
            ),
            ("transparency.epoch_secs", self.transparency.epoch_secs),
        ] {
            need(&mut p, v > 0, &format!("{key} must be greater than 0"));
        }
        for d in self
            .transparency
            .witnesses
            .iter()
            .chain(&self.transparency.witness_for)
        {
            if let Err(e) = Domain::parse(d) {
                need(
                    &mut p,
                    false,
                    &format!("transparency: {d:?} is not a domain name: {e}"),
                );
            }
        }
        let c = &self.connections;
        need(&mut p, c.max >= 1, "connections.max must be at least 1");
        need(
            &mut p,
            c.max_per_peer >= 1,
            "connections.max_per_peer must be at least 1",
        );
        need(
            &mut p,
            c.max_bad_commands >= 1,
            "connections.max_bad_commands must be at least 1",
        );
        need(
            &mut p,
            c.stranger_logins >= 1,
            "connections.stranger_logins must be at least 1 (0 would refuse every login)",
        );
        need(
            &mut p,
            c.stranger_store_writes >= 1,
            "connections.stranger_store_writes must be at least 1 (0 would refuse all mail from other servers)",
        );
        need(
            &mut p,
            c.stranger_share_per_peer >= 1,
            "connections.stranger_share_per_peer must be at least 1",
        );
        let a = &self.accounts;
        need(
            &mut p,
            a.login_failures_per_account >= 1,
            "accounts.login_failures_per_account must be at least 1 (0 would refuse every login)",
        );
        need(
            &mut p,
            a.login_failures_per_address >= 1,
            "accounts.login_failures_per_address must be at least 1 (0 would refuse every login)",
        );
        if let Err(e) = a.ksf_floor().validate(&KsfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        }) {
            p.push(format!("accounts.ksf_min_*: {e}"));
        }
        match self.store.backend {
            StoreBackend::Sqlite => {
                if self.store.url.is_some() {
                    p.push(
                        "store.url is set but store.backend is \"sqlite\": set backend = \"postgres\" or remove the url".into(),
                    );
                }
            }
            StoreBackend::Postgres => {
                if self.store.url.is_none() {
                    p.push("store.backend = \"postgres\" needs store.url".into());
                }
                if self.store.path.is_some() {
                    p.push(
                        "store.path (a SQLite file) is set but store.backend is \"postgres\""
                            .into(),
                    );
                }
                need(
                    &mut p,
                    self.store.pool_size >= 1,
                    "store.pool_size must be at least 1",
                );
            }
        }
        for (domain, routes) in &self.dns.routes {
            if let Err(e) = Domain::parse(domain) {
                p.push(format!(
                    "dns.routes key {domain:?} is not a domain name: {e}"
                ));
            }
            if routes.is_empty() {
                p.push(format!("dns.routes.{domain:?} is empty"));
            }
            for r in routes {
                if let Err(e) = parse_route(r) {
                    p.push(format!("dns.routes.{domain:?}: {r:?}: {e}"));
                }
            }
        }
        if self.dns.timeout_ms == 0 {
            p.push("dns.timeout_ms must be greater than 0".into());
        }
        let r = &self.relay;
        need(
            &mut p,
            r.parallel >= 1 && r.per_destination >= 1,
            "relay.parallel and relay.per_destination must be at least 1",
        );
        if r.first_retry_secs > r.max_retry_secs {
            p.push(format!(
                "relay.first_retry_secs ({}) exceeds relay.max_retry_secs ({})",
                r.first_retry_secs, r.max_retry_secs
            ));
        }
        if let Some(m) = self.metrics.listen
            && self.listen.contains(&m)
        {
            p.push(format!(
                "metrics.listen {m} is also in listen: the two need different addresses"
            ));
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            p.push(format!("log.level {:?}: {e}", self.log.level));
        }
        if let Some(n) = &self.node_name
            && (n.is_empty() || n.len() > 64)
        {
            p.push("node_name must be 1 to 64 characters".into());
        }
        // The limits against strangers (PROTOCOL.md §15).
        let c = &self.connections;
        need(
            &mut p,
            c.ipv4_prefix <= 32,
            "connections.ipv4_prefix must be at most 32",
        );
        need(
            &mut p,
            c.ipv6_prefix <= 128,
            "connections.ipv6_prefix must be at most 128",
        );
        need(
            &mut p,
            c.reserved_for_users.is_none_or(|r| r < c.max),
            "connections.reserved_for_users must be less than connections.max",
        );
        let l = &self.limits;
        for (key, value) in [
            ("staged_per_peer", l.staged_per_peer),
            ("staged_per_domain", l.staged_per_domain),
        ] {
            need(
                &mut p,
                value.is_none_or(|v| v >= l.max_message_size),
                &format!(
                    "limits.{key} must be at least limits.max_message_size, \
                     or no message that large could arrive"
                ),
            );
        }
        for domain in &self.dns.allow_private {
            if let Err(e) = Domain::parse(domain) {
                p.push(format!("dns.allow_private entry {domain:?}: {e}"));
            }
        }
        if self.dns.key_refresh_secs == Some(0) {
            p.push("dns.key_refresh_secs must be greater than 0".into());
        }
        p
    }

    /// What is allowed but probably not meant, each a sentence naming the
    /// key (`cmtpd config check` prints them; start logs them).
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        let c = &self.connections;
        if c.max_per_peer > c.max {
            w.push(format!(
                "connections.max_per_peer ({}) exceeds connections.max ({}): it has no effect",
                c.max_per_peer, c.max
            ));
        }
        let r = &self.relay;
        if r.lease_secs <= r.timeout_secs {
            w.push(format!(
                "relay.lease_secs ({}) does not exceed relay.timeout_secs ({}): in a cluster, a lease \
                 that ends before a slow attempt does lets another node start the same delivery \
                 (the destination de-duplicates it)",
                r.lease_secs, r.timeout_secs
            ));
        }
        if self.loopback_only() {
            w.push(
                "listen names loopback addresses only: other domains cannot reach this server"
                    .into(),
            );
        }
        w
    }

    /// Whether every listen address is a loopback address (reachable from
    /// this machine only).
    pub fn loopback_only(&self) -> bool {
        self.listen.iter().all(|a| a.ip().is_loopback())
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

    /// The file in the data directory holding the running server's process
    /// id (for `cmtpd reload`).
    pub fn pid_path(&self) -> PathBuf {
        self.data_dir.join("cmtpd.pid")
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

    /// The pools of strangers' work (`crate::fair`): logins, store writes.
    pub fn stranger_pools(&self) -> (crate::fair::FairLimits, crate::fair::FairLimits) {
        let c = &self.connections;
        let pool = |capacity| crate::fair::FairLimits {
            capacity,
            per_peer: c.stranger_share_per_peer,
        };
        (pool(c.stranger_logins), pool(c.stranger_store_writes))
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
        match self.store.backend {
            StoreBackend::Sqlite => {
                let path = self.sqlite_path();
                match path.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
                    _ => PathBuf::from("."),
                }
            }
            StoreBackend::Postgres => self.data_dir.clone(),
        }
    }

    /// The configuration a running server (now on `self`) should use after
    /// a reload to `new`: `new`, except that the keys of [`RESTART_ONLY`]
    /// keep their running values. Says which changed keys apply now and
    /// which wait for a restart.
    pub fn merge_reload(&self, new: Config) -> (Config, ReloadPlan) {
        let mut merged = new;
        let mut plan = ReloadPlan::default();
        macro_rules! keep {
            ($($name:literal => $($field:ident).+;)*) => {
                $(
                    if merged.$($field).+ != self.$($field).+ {
                        plan.need_restart.push($name.to_owned());
                        merged.$($field).+ = self.$($field).+.clone();
                    }
                )*
            };
        }
        keep! {
            "domain" => domain;
            "data_dir" => data_dir;
            "listen" => listen;
            "key_file" => key_file;
            "node_name" => node_name;
            "store" => store;
            "metrics" => metrics;
            "relay.parallel" => relay.parallel;
            "relay.per_destination" => relay.per_destination;
            "relay.timeout_secs" => relay.timeout_secs;
            "accounts.login_window_secs" => accounts.login_window_secs;
            "smtp.listen" => smtp.listen;
            "smtp.hostname" => smtp.hostname;
            "smtp.starttls" => smtp.starttls;
            "smtp.tls_cert" => smtp.tls_cert;
            "smtp.tls_key" => smtp.tls_key;
            "smtp.dkim_key" => smtp.dkim_key;
            "smtp.dkim_selector" => smtp.dkim_selector;
        }
        let (old, now) = (flatten(self), flatten(&merged));
        for (key, value) in &now {
            if old.get(key) != Some(value) {
                plan.applied.push(key.clone());
            }
        }
        for key in old.keys() {
            if !now.contains_key(key) {
                plan.applied.push(key.clone());
            }
        }
        (merged, plan)
    }
}

/// `key.path = value` pairs of a configuration (for comparisons and
/// `cmtpd config show`).
pub fn flatten(cfg: &Config) -> BTreeMap<String, toml::Value> {
    fn walk(prefix: &str, v: &toml::Value, out: &mut BTreeMap<String, toml::Value>) {
        match v {
            toml::Value::Table(t) if prefix != "dns.routes" => {
                for (k, v) in t {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            other => {
                out.insert(prefix.to_owned(), other.clone());
            }
        }
    }
    let mut out = BTreeMap::new();
    let v = toml::Value::try_from(cfg).expect("configuration serialises");
    walk("", &v, &mut out);
    out
}

/// A `dns.routes` target: `host:port`, `host`, `[v6]:port` or `[v6]`
/// (without a port: the default port).
pub fn parse_route(t: &str) -> anyhow::Result<(String, u16)> {
    let (host, port) = if let Some(rest) = t.strip_prefix('[') {
        let (h, after) = rest.split_once(']').context("no closing ]")?;
        match after.strip_prefix(':') {
            Some(p) => (h, Some(p)),
            None if after.is_empty() => (h, None),
            None => anyhow::bail!("unexpected {after:?} after ]"),
        }
    } else {
        match t.split_once(':') {
            // One colon: host and port. More: a bare IPv6 address.
            Some((h, p)) if !p.contains(':') => (h, Some(p)),
            _ => (t, None),
        }
    };
    let port = match port {
        Some(p) => {
            let port: u16 = p
                .parse()
                .with_context(|| format!("port {p:?} is not a number"))?;
            anyhow::ensure!(port != 0, "port 0");
            port
        }
        None => cmtp_proto::limits::DEFAULT_PORT,
    };
    anyhow::ensure!(!host.is_empty(), "no host");
    Ok((host.to_owned(), port))
}

/// `path` made absolute against the current directory (without touching
/// the file system).
pub fn absolute(path: &Path) -> PathBuf {
    let p = if path.as_os_str().is_empty() {
        Path::new(".")
    } else {
        path
    };
    clean(&std::path::absolute(p).unwrap_or_else(|_| p.to_owned()))
}

/// Removes `.` components (and `..` after a normal component) lexically.
fn clean(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    if out.as_os_str().is_empty() {
        out.push(".");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Config {
        let mut cfg: Config = toml::from_str(text).unwrap();
        cfg.resolve_paths(Path::new("/etc/cmtpd"));
        cfg
    }

    #[test]
    fn a_minimal_file_gets_every_default() {
        let cfg = parse("domain = \"a.test\"");
        cfg.validate().unwrap();
        assert_eq!(cfg.limits, LimitsConfig::default());
        assert_eq!(cfg.listen, default_listen());
        assert_eq!(cfg.accounts.ksf_floor(), KsfParams::RECOMMENDED);
        assert_eq!(cfg.data_dir, Path::new("/etc/cmtpd"));
    }

    #[test]
    fn relative_paths_are_relative_to_the_file() {
        let cfg = parse(
            "domain = \"a.test\"\ndata_dir = \"../../var/lib/cmtpd\"\nkey_file = \"keys/server.key\"\n[store]\npath = \"/srv/cmtp.db\"",
        );
        assert_eq!(cfg.data_dir, Path::new("/var/lib/cmtpd"));
        assert_eq!(cfg.key_path(), Path::new("/etc/cmtpd/keys/server.key"));
        assert_eq!(cfg.sqlite_path(), Path::new("/srv/cmtp.db"));
    }

    #[test]
    fn the_written_file_reads_back_equal() {
        let mut cfg = Config::new("a.test", Path::new("/tmp/x"));
        cfg.dns
            .routes
            .insert("b.test".into(), vec!["10.0.0.1:9001".into()]);
        cfg.metrics.listen = Some("127.0.0.1:9100".parse().unwrap());
        let mut back: Config = toml::from_str(&cfg.to_toml()).unwrap();
        back.resolve_paths(Path::new("/elsewhere"));
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
    fn the_smtp_size_limit_is_checked_only_with_inbound_smtp_on() {
        let mut cfg = Config::new("a.test", Path::new("/tmp/x"));
        cfg.limits.max_message_size = 200_000;
        cfg.validate().unwrap();
        cfg.smtp.listen = vec!["127.0.0.1:2525".parse().unwrap()];
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains("smtp.max_message_size"), "{e}");
        cfg.smtp.max_message_size = 100_000;
        cfg.validate().unwrap();
    }

    #[test]
    fn choices_are_enums_and_unknown_keys_are_refused() {
        assert!(toml::from_str::<Config>("domain = \"a.test\"\nlisten_addr = 1").is_err());
        let e = toml::from_str::<Config>("domain = \"a.test\"\n[log]\nformat = \"xml\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("human") && e.contains("json"), "{e}");
        let e = toml::from_str::<Config>("domain = \"a.test\"\n[store]\nbackend = \"mysql\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sqlite") && e.contains("postgres"), "{e}");
        let cfg = parse("domain = \"a.test\"\n[store]\nbackend = \"postgres\"\nurl = \"x\"");
        assert_eq!(cfg.store.backend, StoreBackend::Postgres);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let mut cfg = Config::new("a..test", Path::new("/tmp"));
        cfg.accounts.login_failures_per_account = 0;
        cfg.timeouts.idle_secs = 0;
        cfg.store.backend = StoreBackend::Postgres;
        cfg.relay.lease_secs = 10;
        cfg.relay.timeout_secs = 0;
        cfg.dns
            .routes
            .insert("b.test".into(), vec!["host:notaport".into()]);
        let p = cfg.problems().join("\n");
        for needle in [
            "domain \"a..test\"",
            "accounts.login_failures_per_account",
            "timeouts.idle_secs must be greater than 0",
            "needs store.url",
            "relay.timeout_secs must be greater than 0",
            "notaport",
        ] {
            assert!(p.contains(needle), "{needle} missing in:\n{p}");
        }
        assert!(
            Config::new("a.test", Path::new("/tmp"))
                .problems()
                .is_empty()
        );
    }

    #[test]
    fn a_reload_keeps_what_needs_a_restart() {
        let old = Config::new("a.test", Path::new("/tmp/x"));
        let mut new = old.clone();
        new.limits.max_message_size = 4096;
        new.listen = vec!["0.0.0.0:9001".parse().unwrap()];
        new.dns.routes.insert("b.test".into(), vec!["h:1".into()]);
        new.log.level = "debug".into();
        let (merged, plan) = old.merge_reload(new);
        assert_eq!(merged.listen, old.listen);
        assert_eq!(merged.limits.max_message_size, 4096);
        assert_eq!(plan.need_restart, vec!["listen".to_owned()]);
        assert_eq!(
            plan.applied,
            vec![
                "dns.routes".to_owned(),
                "limits.max_message_size".to_owned(),
                "log.level".to_owned()
            ]
        );
    }

    #[test]
    fn routes_parse() {
        assert_eq!(parse_route("h:25").unwrap(), ("h".into(), 25));
        assert_eq!(parse_route("h").unwrap(), ("h".into(), 9001));
        assert_eq!(parse_route("[::1]:7").unwrap(), ("::1".into(), 7));
        assert!(parse_route("h:0").is_err());
        assert!(parse_route(":5").is_err());
        assert_eq!(parse_route("::1").unwrap(), ("::1".into(), 9001));
        assert!(parse_route("[::1").is_err());
    }
}
