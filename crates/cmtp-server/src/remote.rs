//! Other domains: discovery, connections, pinned server keys and remote key
//! statements (PROTOCOL.md §9.5, §14).
//!
//! Anyone can make this server look another domain up (KEYREQUEST, MAIL
//! claiming a foreign sender), so what that costs is bounded (§15): remote
//! KEYREQUESTs of peers that are not logged in are rate-limited per peer
//! (`Shared::check_remote_key_request`); cached statements live at most
//! `[remote] statement_max_secs` whatever expiry the remote signed, and the
//! cache and the pins are trimmed to `[remote] max_statements`/`max_pins`
//! by maintenance; and this server never dials a loopback, private,
//! link-local, multicast or otherwise non-public address that DNS names
//! ([`is_public_address`]) unless the domain has a `[dns.routes]` entry or
//! is listed in `[dns] allow_private`.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cmtp_client::discovery::{Discovery, DiscoveryConfig, DiscoveryError};
use cmtp_client::{ClientError, Connection};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle, StatementError};
use cmtp_store::{AnyStore, Store, StoreError};
use thiserror::Error;

use crate::config::Config;

/// Why another domain could not be reached or trusted.
#[derive(Debug, Clone, Error)]
#[non_exhaustive]
pub enum RemoteError {
    /// DNS said no (permanent) or could not answer (transient).
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// Talking to the remote server failed.
    #[error("{domain}: {error}")]
    Client {
        /// The domain.
        domain: String,
        /// What failed.
        error: ClientError,
    },
    /// The remote server's key is not the pinned one and no rotation chain leads to it.
    #[error(
        "the server key of {domain} changed from {pinned} to {got} without a rotation statement signed by the old key"
    )]
    KeyChanged {
        /// The domain.
        domain: String,
        /// Pinned fingerprint.
        pinned: String,
        /// Presented fingerprint.
        got: String,
    },
    /// The key does not match the domain's `_cmtpkey` TXT record.
    #[error("the server key of {domain} ({got}) does not match its _cmtpkey DNS record")]
    DnsMismatch {
        /// The domain.
        domain: String,
        /// Presented fingerprint.
        got: String,
    },
    /// A statement did not verify.
    #[error("{domain}: invalid key statement: {error}")]
    Statement {
        /// The domain.
        domain: String,
        /// Why.
        error: StatementError,
    },
    /// The remote server has no key for that user.
    #[error("{0}")]
    NotAvailable(String),
    /// DNS names only non-public addresses (loopback, private, link-local,
    /// multicast, ...) for the domain's servers, and the domain is neither
    /// routed nor allowed to be private. Transient: DNS may be corrected.
    #[error("the servers of {domain} are at non-public addresses, which this server does not dial")]
    NonPublicAddress {
        /// The domain.
        domain: String,
    },
    /// Our own store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

impl RemoteError {
    /// What a peer may be told: without the addresses and socket errors of
    /// the attempt (a KEYREQUEST must not become a port scanner's oracle).
    pub fn public_text(&self) -> String {
        match self {
            RemoteError::Client { domain, error } => match error {
                ClientError::Refused { .. }
                | ClientError::KeyMismatch { .. }
                | ClientError::BadSignature(_) => self.to_string(),
                _ => format!("the server of {domain} cannot be reached or does not speak CMTP/1"),
            },
            RemoteError::Store(_) => "temporary failure of this server".into(),
            other => other.to_string(),
        }
    }

    /// Whether the domain's key (or its server's word) could not be
    /// verified: a key contradicting `_cmtpkey`, changed without a rotation
    /// statement, a statement or reply its key did not sign, a server for
    /// another domain. KEYREQUEST answers these `KEYUNVERIFIED`.
    pub fn is_verification(&self) -> bool {
        match self {
            RemoteError::KeyChanged { .. }
            | RemoteError::DnsMismatch { .. }
            | RemoteError::Statement { .. } => true,
            RemoteError::Client { error, .. } => matches!(
                error,
                ClientError::BadSignature(_)
                    | ClientError::KeyMismatch { .. }
                    | ClientError::Protocol(cmtp_client::error::PeerMisbehaved::WrongDomain { .. })
            ),
            _ => false,
        }
    }

    /// Whether trying again later may help.
    ///
    /// A remote server that breaks the protocol (an absurd length, an
    /// endless banner, replies that are not signed, a greeting for another
    /// domain) may be restarting, misconfigured or attacked right now: that
    /// is transient at first contact as it is once the domain is pinned.
    /// Only a key that changed without a rotation statement, and a
    /// permanent refusal by the remote server, are not.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Discovery(e) => e.is_transient(),
            RemoteError::Client { error, .. } => match error {
                ClientError::KeyMismatch { .. } => false,
                ClientError::Refused { status, .. } => status.is_transient(),
                _ => true,
            },
            RemoteError::NonPublicAddress { .. } => true,
            RemoteError::Store(e) => e.is_transient(),
            _ => false,
        }
    }
}

/// Access to other domains' servers.
#[derive(Debug)]
pub struct Remote {
    /// Replaced as a whole when a reload changes `[dns]`.
    discovery: arc_swap::ArcSwap<Discovery>,
    timeout: Duration,
    store: AnyStore,
    /// When each domain's key was last fetched because a signature did not
    /// verify: at most one such refresh per domain per `refresh_interval`.
    refreshed: std::sync::Mutex<HashMap<Domain, std::time::Instant>>,
    refresh_interval: Duration,
    /// Domains that may be dialled at non-public addresses: those with a
    /// static route, and `[dns] allow_private`.
    private_ok: arc_swap::ArcSwap<HashSet<String>>,
    /// Longest time a remote statement is cached, seconds.
    statement_max_secs: u64,
}

/// The default least time between two refreshes of one domain's key
/// (`[dns] key_refresh_secs`).
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

impl Remote {
    /// From the `[dns]` and `[relay]` configuration.
    pub fn new(cfg: &Config, store: AnyStore) -> anyhow::Result<Remote> {
        let (discovery, private_ok) = Self::discovery(cfg)?;
        Ok(Remote {
            refreshed: std::sync::Mutex::new(HashMap::new()),
            refresh_interval: cfg
                .dns
                .key_refresh_secs
                .map_or(REFRESH_INTERVAL, Duration::from_secs),
            private_ok: arc_swap::ArcSwap::from_pointee(private_ok),
            statement_max_secs: cfg.remote.statement_max_secs,
            discovery: arc_swap::ArcSwap::from_pointee(discovery),
            timeout: Duration::from_secs(cfg.relay.timeout_secs),
            store,
        })
    }

    /// Applies a new `[dns]` section (routes, nameservers, timeout, the
    /// domains allowed at non-public addresses) to the lookups that start
    /// from now on.
    pub fn reconfigure(&self, cfg: &Config) -> anyhow::Result<()> {
        let (discovery, private_ok) = Self::discovery(cfg)?;
        self.discovery.store(std::sync::Arc::new(discovery));
        self.private_ok.store(std::sync::Arc::new(private_ok));
        Ok(())
    }

    /// The discovery for `cfg`, and the domains it may dial at non-public
    /// addresses (those with a static route, and `[dns] allow_private`).
    fn discovery(cfg: &Config) -> anyhow::Result<(Discovery, HashSet<String>)> {
        let mut routes = HashMap::new();
        for (domain, list) in &cfg.dns.routes {
            let targets = list
                .iter()
                .map(|t| crate::config::parse_route(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            routes.insert(domain.clone(), targets);
        }
        let private_ok = cfg
            .dns
            .routes
            .keys()
            .chain(&cfg.dns.allow_private)
            .filter_map(|d| Domain::parse(d).ok())
            .map(|d| d.as_str().to_owned())
            .collect();
        let config = DiscoveryConfig {
            nameservers: if cfg.dns.nameservers.is_empty() {
                None
            } else {
                Some(cfg.dns.nameservers.clone())
            },
            static_routes: routes,
            timeout: Duration::from_millis(cfg.dns.timeout_ms),
            ..DiscoveryConfig::default()
        };
        Ok((Discovery::new(config)?, private_ok))
    }

    /// Opens a connection to one of `domain`'s servers (in discovery order)
    /// and greets it. With `key`, replies must be signed by that key.
    pub async fn connect(
        &self,
        domain: &Domain,
        key: Option<PublicKey>,
    ) -> Result<Connection, RemoteError> {
        let targets = self.discovery.load_full().resolve(domain.as_str()).await?;
        let mut addrs: Vec<SocketAddr> = targets
            .iter()
            .flat_map(|t| t.addrs.iter().copied())
            .collect();
        if !self.private_ok.load().contains(domain.as_str()) {
            let (public, refused): (Vec<_>, Vec<_>) =
                addrs.into_iter().partition(|a| is_public_address(a.ip()));
            if !refused.is_empty() {
                tracing::warn!(%domain, ?refused, "DNS names non-public addresses for this domain; not dialling them");
                metrics::counter!("cmtp_remote_nonpublic_refused_total").increment(1);
            }
            if public.is_empty() {
                return Err(RemoteError::NonPublicAddress {
                    domain: domain.to_string(),
                });
            }
            addrs = public;
        }
        let mut last = None;
        for addr in addrs {
            match self.try_connect(addr, domain, key).await {
                Ok(c) => return Ok(c),
                // A key mismatch is a verdict about the domain, not this address.
                Err(e @ ClientError::KeyMismatch { .. }) => {
                    return Err(RemoteError::Client {
                        domain: domain.to_string(),
                        error: e,
                    });
                }
                Err(e) => {
                    tracing::debug!(%domain, %addr, error = %e, "connection attempt failed");
                    last = Some(e);
                }
            }
        }
        Err(RemoteError::Client {
            domain: domain.to_string(),
            error: last.unwrap_or_else(|| ClientError::Unreachable {
                addr: domain.to_string(),
                error: "no address".into(),
            }),
        })
    }

    async fn try_connect(
        &self,
        addr: SocketAddr,
        domain: &Domain,
        key: Option<PublicKey>,
    ) -> Result<Connection, ClientError> {
        let mut c = Connection::connect(addr, self.timeout).await?;
        if let Some(k) = key {
            c.expect_key(k);
        }
        let g = c.ohai().await?;
        // A server for another domain (a misdirected or malicious DNS record,
        // or this very server) is not the one asked for.
        if g.domain != *domain {
            return Err(ClientError::Protocol(
                cmtp_client::error::PeerMisbehaved::WrongDomain {
                    served: g.domain.to_string(),
                    asked: domain.to_string(),
                },
            ));
        }
        Ok(c)
    }

    /// Like [`refresh_server_key`](Self::refresh_server_key), but at most
    /// once per refresh interval per domain (a sender of forged
    /// signatures must not make this server dial out for every message).
    /// `None` when a refresh was made too recently.
    pub async fn refresh_server_key_limited(
        &self,
        domain: &Domain,
        now: u64,
    ) -> Option<Result<PublicKey, RemoteError>> {
        {
            let mut g = self.refreshed.lock().expect("refresh lock");
            let interval = self.refresh_interval;
            if g.get(domain).is_some_and(|t| t.elapsed() < interval) {
                return None;
            }
            if g.len() > 10_000 {
                g.retain(|_, t| t.elapsed() < interval);
            }
            g.insert(domain.clone(), std::time::Instant::now());
        }
        Some(self.refresh_server_key(domain, now).await)
    }

    /// Whether `domain`'s key is pinned (a store failure counts as no).
    pub async fn is_pinned(&self, domain: &Domain) -> bool {
        matches!(self.store.pin(domain.as_str()).await, Ok(Some(_)))
    }

    /// The pinned key of `domain`, fetching and pinning it on first contact.
    pub async fn server_key(&self, domain: &Domain, now: u64) -> Result<PublicKey, RemoteError> {
        if let Some(pin) = self.store.pin(domain.as_str()).await?
            && let Ok(k) = PublicKey::from_bytes(&pin.key)
        {
            return Ok(k);
        }
        self.refresh_server_key(domain, now).await
    }

    /// Fetches `domain`'s key bundle; pins it if nothing is pinned, accepts a
    /// change only along a rotation chain from the pinned key, and checks the
    /// `_cmtpkey` TXT record when the domain publishes one.
    pub async fn refresh_server_key(
        &self,
        domain: &Domain,
        now: u64,
    ) -> Result<PublicKey, RemoteError> {
        Ok(self.checked_bundle(domain, now).await?.0)
    }

    /// `domain`'s key bundle as its server sends it, after the checks of
    /// [`refresh_server_key`](Self::refresh_server_key) (which it pins).
    pub async fn fetch_bundle(&self, domain: &Domain, now: u64) -> Result<Vec<u8>, RemoteError> {
        Ok(self.checked_bundle(domain, now).await?.1)
    }

    /// Asks `domain`'s server for a key statement (`user` `None`: its key
    /// bundle) on a fresh connection, checked under `key` when given.
    /// KEYNOTAVAILABLE becomes [`RemoteError::NotAvailable`].
    async fn key_request(
        &self,
        domain: &Domain,
        key: Option<PublicKey>,
        user: Option<&Account>,
    ) -> Result<Vec<u8>, RemoteError> {
        let client_err = |error| RemoteError::Client {
            domain: domain.to_string(),
            error,
        };
        let mut conn = self.connect(domain, key).await?;
        let cmd = Command::KeyRequest {
            user: user.cloned(),
            domain: Some(domain.clone()),
        };
        let reply = conn
            .command(&cmd, cmtp_client::conn::MAX_REPLY_BODY)
            .await
            .map_err(client_err)?;
        conn.close().await;
        match reply.status {
            Status::Success => Ok(reply.body),
            Status::KeyNotAvailable => Err(RemoteError::NotAvailable(reply.text())),
            _ => Err(client_err(ClientError::from_reply(&reply))),
        }
    }

    async fn checked_bundle(
        &self,
        domain: &Domain,
        now: u64,
    ) -> Result<(PublicKey, Vec<u8>), RemoteError> {
        let body = self.key_request(domain, None, None).await?;
        let statement_err = |error| RemoteError::Statement {
            domain: domain.to_string(),
            error,
        };
        let bundle = ServerKeyBundle::decode(&body).map_err(statement_err)?;
        let key = bundle.verify_self(domain, now).map_err(statement_err)?;
        let published = self
            .discovery
            .load_full()
            .key_fingerprints(domain.as_str())
            .await?;
        if !published.is_empty() && !published.contains(&key.fingerprint()) {
            tracing::warn!(%domain, fingerprint = %key.fingerprint_hex(), "server key does not match _cmtpkey TXT record");
            return Err(RemoteError::DnsMismatch {
                domain: domain.to_string(),
                got: key.fingerprint_hex(),
            });
        }
        if let Some(pin) = self.store.pin(domain.as_str()).await?
            && let Ok(pinned) = PublicKey::from_bytes(&pin.key)
            && pinned != key
        {
            if bundle.check_against_pin(&pinned, domain).is_err() {
                tracing::warn!(%domain, pinned = %pinned.fingerprint_hex(), presented = %key.fingerprint_hex(),
                    "server key changed without a rotation statement; refusing it");
                return Err(RemoteError::KeyChanged {
                    domain: domain.to_string(),
                    pinned: pinned.fingerprint_hex(),
                    got: key.fingerprint_hex(),
                });
            }
            tracing::info!(%domain, old = %pinned.fingerprint_hex(), new = %key.fingerprint_hex(), "server key rotated");
        }
        self.store
            .set_pin(domain.as_str(), key.to_bytes(), now)
            .await?;
        Ok((key, body))
    }

    /// The key statement of `account@domain`, from the cache or from that
    /// domain's server, verified against its pinned key; returned as received.
    pub async fn user_statement(
        &self,
        account: &Account,
        domain: &Domain,
        now: u64,
    ) -> Result<Vec<u8>, RemoteError> {
        let key = self.server_key(domain, now).await?;
        // A cached statement is served while it verifies under the pinned key
        // (after a rotation of that domain's key, it is fetched anew).
        if let Some(bytes) = self
            .store
            .cached_statement(account.as_str(), domain.as_str(), now)
            .await?
            && KeyStatement::decode(&bytes)
                .is_ok_and(|s| s.verify(&key, Some(account), domain, now).is_ok())
        {
            return Ok(bytes);
        }
        let body = self.key_request(domain, Some(key), Some(account)).await?;
        let statement_err = |error| RemoteError::Statement {
            domain: domain.to_string(),
            error,
        };
        let statement = KeyStatement::decode(&body).map_err(statement_err)?;
        statement
            .verify(&key, Some(account), domain, now)
            .map_err(statement_err)?;
        // Kept no longer than this server allows, whatever the remote signed.
        let expires_at = statement
            .expires_at
            .min(now.saturating_add(self.statement_max_secs));
        self.store
            .cache_statement(account.as_str(), domain.as_str(), body.clone(), expires_at)
            .await?;
        Ok(body)
    }
}

/// Whether `ip` is an address on the public internet: not unspecified,
/// loopback, private (RFC 1918, unique local), shared (CGNAT), link-local,
/// multicast, broadcast, reserved or documentation space; IPv4 embedded in
/// IPv6 (mapped, compatible, NAT64, 6to4) is judged as IPv4.
pub fn is_public_address(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_unspecified()
                || v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (o[1] & 0xc0) == 64) // 100.64.0.0/10, shared (CGNAT)
                || (o[0] == 192 && o[1] == 0 && o[2] == 0) // 192.0.0.0/24, protocol assignments
                || (o[0] == 198 && (o[1] & 0xfe) == 18) // 198.18.0.0/15, benchmarking
                || o[0] >= 240) // 240.0.0.0/4, reserved
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_address(IpAddr::V4(v4));
            }
            if s[..6] == [0; 6] {
                // ::, ::1 and the deprecated IPv4-compatible ::a.b.c.d.
                return false;
            }
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                // NAT64 (64:ff9b::/96): the IPv4 address it stands for.
                let v4 = std::net::Ipv4Addr::new(
                    (s[6] >> 8) as u8,
                    s[6] as u8,
                    (s[7] >> 8) as u8,
                    s[7] as u8,
                );
                return is_public_address(IpAddr::V4(v4));
            }
            if s[0] == 0x2002 {
                // 6to4 (2002::/16): the IPv4 address it stands for.
                let v4 = std::net::Ipv4Addr::new(
                    (s[1] >> 8) as u8,
                    s[1] as u8,
                    (s[2] >> 8) as u8,
                    s[2] as u8,
                );
                return is_public_address(IpAddr::V4(v4));
            }
            !((s[0] & 0xfe00) == 0xfc00 // fc00::/7, unique local
                || (s[0] & 0xffc0) == 0xfe80 // fe80::/10, link-local
                || (s[0] & 0xffc0) == 0xfec0 // fec0::/10, site-local (deprecated)
                || (s[0] & 0xff00) == 0xff00 // ff00::/8, multicast
                || (s[0] == 0x2001 && s[1] == 0x0db8) // 2001:db8::/32, documentation
                || (s[0] == 0x0100 && s[1..4] == [0, 0, 0])) // 100::/64, discard
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "0.0.0.0",
            "0.1.2.3",
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.255",
            "192.0.0.8",
            "192.0.2.1",
            "198.18.0.1",
            "198.51.100.1",
            "203.0.113.1",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::127.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:c0a8:101::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "fec0::1",
            "ff02::1",
            "ff0e::1",
            "2001:db8::1",
            "100::1",
        ] {
            let ip: IpAddr = private.parse().unwrap();
            assert!(!is_public_address(ip), "{private} is not public");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "193.0.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001::200e",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert!(is_public_address(ip), "{public} is public");
        }
    }

    #[test]
    fn first_contact_protocol_errors_are_transient_like_later_ones() {
        let client = |error| RemoteError::Client {
            domain: "b.test".into(),
            error,
        };
        for e in [
            ClientError::Protocol(cmtp_client::error::PeerMisbehaved::MalformedReply(
                cmtp_proto::reply::ReplyError::BodyTooLarge {
                    len: u64::from(u32::MAX),
                    max: 1 << 20,
                },
            )),
            ClientError::NotCmtp {
                line: "HTTP/1.1 400".into(),
            },
            ClientError::SmtpServer {
                line: "220 mx".into(),
            },
            ClientError::BadSignature("greeting".into()),
            ClientError::Timeout("reading the banner".into()),
        ] {
            assert!(client(e.clone()).is_transient(), "{e}");
        }
        assert!(
            !client(ClientError::KeyMismatch {
                domain: "b.test".into(),
                expected: "a".into(),
                got: "b".into(),
            })
            .is_transient()
        );
        assert!(
            !client(ClientError::Refused {
                status: Status::BadCommand,
                text: "no".into(),
            })
            .is_transient()
        );
        assert!(
            RemoteError::NonPublicAddress {
                domain: "b.test".into()
            }
            .is_transient()
        );
    }
}
