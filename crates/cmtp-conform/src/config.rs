//! What the checker is told about the target and itself.

use std::net::SocketAddr;
use std::time::Duration;

use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::names::{Account, Domain};
use zeroize::Zeroizing;

/// The target's timeouts, as the rules of §4.3 wait for them (the spec's
/// defaults unless the target is configured otherwise).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTimeouts {
    /// Idle time allowed between commands [300 s].
    pub idle: Duration,
    /// Time allowed for one command after its first byte [30 s].
    pub command: Duration,
    /// Fixed allowance for a message after MAIL [30 s].
    pub data_grace: Duration,
}

impl Default for ServerTimeouts {
    fn default() -> Self {
        ServerTimeouts {
            idle: Duration::from_secs(300),
            command: Duration::from_secs(30),
            data_grace: Duration::from_secs(30),
        }
    }
}

/// The target's configurable limits that rules provoke (spec defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerLimits {
    /// Consecutive bad commands before TOOMANYERRORS [10] (§4.2).
    pub max_bad_commands: u32,
    /// Connections per peer address [128] (§4.3).
    pub max_per_peer: u32,
    /// Hops (log lines) [30] (§15).
    pub max_hops: u32,
    /// Failed logins per account before RATELIMITED [5] (§12.3).
    pub login_failures_per_account: u32,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_bad_commands: 10,
            max_per_peer: 128,
            max_hops: 30,
            login_failures_per_account: 5,
        }
    }
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// `host:port` of the server under test.
    pub target: String,
    /// The domain the target must serve (`--domain`).
    pub domain: Option<Domain>,
    /// The server key the target must use (`--key`).
    pub key: Option<PublicKey>,
    /// An account on the target to log in as (`--user`).
    pub user: Option<Account>,
    /// Its password (`--password-file`).
    pub password: Option<Zeroizing<String>>,
    /// An existing account on the target that mail may be addressed to
    /// (`--recipient`; default: `--user`).
    pub recipient: Option<Account>,
    /// A domain the checker serves itself (`--as-domain`), which the
    /// target routes to `serve`.
    pub as_domain: Option<Domain>,
    /// Where the checker serves `as_domain` (`--serve`).
    pub serve: Option<SocketAddr>,
    /// The served domain's server key (`--as-key`); a fresh one if none.
    pub as_key: Option<IdentityKey>,
    /// A domain the target routes to an address where nothing answers
    /// (`--unreachable-domain`).
    pub unreachable_domain: Option<Domain>,
    /// Run the rules that wait for the target's timeouts (`--slow`).
    pub slow: bool,
    /// Run the rule that provokes RATELIMITED (`--rate-limit`).
    pub rate_limit: bool,
    /// The target's timeouts.
    pub timeouts: ServerTimeouts,
    /// The target's limits.
    pub limits: ServerLimits,
    /// How long a reply may take.
    pub reply_timeout: Duration,
    /// How long the target may take to close a connection it must close.
    pub close_within: Duration,
    /// How long a relayed message may take to reach the served domain.
    pub relay_wait: Duration,
    /// Run only rules whose section or id starts with one of these.
    pub only: Vec<String>,
}

impl Config {
    /// A configuration for `target` with every default.
    pub fn new(target: impl Into<String>) -> Config {
        Config {
            target: target.into(),
            domain: None,
            key: None,
            user: None,
            password: None,
            recipient: None,
            as_domain: None,
            serve: None,
            as_key: None,
            unreachable_domain: None,
            slow: false,
            rate_limit: false,
            timeouts: ServerTimeouts::default(),
            limits: ServerLimits::default(),
            reply_timeout: Duration::from_secs(10),
            close_within: Duration::from_secs(3),
            relay_wait: Duration::from_secs(30),
            only: Vec::new(),
        }
    }
}
