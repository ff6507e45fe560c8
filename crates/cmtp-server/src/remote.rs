//! Other domains: discovery, connections, pinned server keys and remote key
//! statements (PROTOCOL.md §9.5, §14).

use std::collections::HashMap;
use std::net::SocketAddr;
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
                ClientError::Refused { .. } | ClientError::KeyMismatch { .. } => self.to_string(),
                _ => format!("the server of {domain} cannot be reached or does not speak CMTP/1"),
            },
            RemoteError::Store(_) => "temporary failure of this server".into(),
            other => other.to_string(),
        }
    }

    /// Whether trying again later may help.
    pub fn is_transient(&self) -> bool {
        match self {
            RemoteError::Discovery(e) => e.is_transient(),
            RemoteError::Client { error, .. } => error.is_transient(),
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
    /// verify: at most one such refresh per domain per [`REFRESH_INTERVAL`].
    refreshed: std::sync::Mutex<HashMap<Domain, std::time::Instant>>,
}

/// The least time between two refreshes of one domain's key.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

impl Remote {
    /// From the `[dns]` and `[relay]` configuration.
    pub fn new(cfg: &Config, store: AnyStore) -> anyhow::Result<Remote> {
        Ok(Remote {
            refreshed: std::sync::Mutex::new(HashMap::new()),
            discovery: arc_swap::ArcSwap::from_pointee(Self::discovery(cfg)?),
            timeout: Duration::from_secs(cfg.relay.timeout_secs),
            store,
        })
    }

    /// Applies a new `[dns]` section (routes, nameservers, timeout) to the
    /// lookups that start from now on.
    pub fn reconfigure(&self, cfg: &Config) -> anyhow::Result<()> {
        self.discovery
            .store(std::sync::Arc::new(Self::discovery(cfg)?));
        Ok(())
    }

    fn discovery(cfg: &Config) -> anyhow::Result<Discovery> {
        let mut routes = HashMap::new();
        for (domain, list) in &cfg.dns.routes {
            let targets = list
                .iter()
                .map(|t| crate::config::parse_route(t))
                .collect::<anyhow::Result<Vec<_>>>()?;
            routes.insert(domain.clone(), targets);
        }
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
        Ok(Discovery::new(config)?)
    }

    /// Opens a connection to one of `domain`'s servers (in discovery order)
    /// and greets it. With `key`, replies must be signed by that key.
    pub async fn connect(
        &self,
        domain: &Domain,
        key: Option<PublicKey>,
    ) -> Result<Connection, RemoteError> {
        let targets = self.discovery.load_full().resolve(domain.as_str()).await?;
        let addrs: Vec<SocketAddr> = targets
            .iter()
            .flat_map(|t| t.addrs.iter().copied())
            .collect();
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
            return Err(ClientError::Protocol(format!(
                "{addr} serves {}, not {domain}",
                g.domain
            )));
        }
        Ok(c)
    }

    /// Like [`refresh_server_key`](Self::refresh_server_key), but at most
    /// once per [`REFRESH_INTERVAL`] per domain (a sender of forged
    /// signatures must not make this server dial out for every message).
    /// `None` when a refresh was made too recently.
    pub async fn refresh_server_key_limited(
        &self,
        domain: &Domain,
        now: u64,
    ) -> Option<Result<PublicKey, RemoteError>> {
        {
            let mut g = self.refreshed.lock().expect("refresh lock");
            if g.get(domain)
                .is_some_and(|t| t.elapsed() < REFRESH_INTERVAL)
            {
                return None;
            }
            if g.len() > 10_000 {
                g.retain(|_, t| t.elapsed() < REFRESH_INTERVAL);
            }
            g.insert(domain.clone(), std::time::Instant::now());
        }
        Some(self.refresh_server_key(domain, now).await)
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
        self.store
            .cache_statement(
                account.as_str(),
                domain.as_str(),
                body.clone(),
                statement.expires_at,
            )
            .await?;
        Ok(body)
    }
}
