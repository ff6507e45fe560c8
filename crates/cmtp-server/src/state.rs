//! What every connection and background task of one server shares.
//!
//! The configuration is behind an [`ArcSwap`]: readers call
//! [`Shared::cfg`] (a cheap, lock-free load) each time they need a value,
//! and a reload ([`Shared::reload`], on SIGHUP or `cmtpd reload`) swaps in a
//! new one without stopping anything; connections in progress see the new
//! limits at their next read.

use std::sync::Mutex;
use std::time::Duration;

use arc_swap::ArcSwap;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::{KsfParams, ServerSetup};
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle};
use cmtp_store::{AnyStore, Store, StoreError};
use std::sync::Arc;
use tokio::sync::Notify;

use cmtp_proto::connection::server::{ServerConfig, Timeouts};
use cmtp_proto::tls::{KeyExchange, ServerTlsConfig};

use crate::budget::{BudgetRefusal, Charge, Reservation, StagingBudget, StagingLimits};
use crate::config::Config;
use crate::decoy::KsfDecoys;
use crate::disk::DiskMonitor;
use crate::fair::FairPool;
use crate::limiter::{ConnectionTracker, FailureLimiter, PeerKey, PeerPrefixes, RateLimiter};
use crate::remote::Remote;

/// The software name and version announced in banners and greetings.
pub const SOFTWARE: &str = concat!("cmtpd ", env!("CARGO_PKG_VERSION"));

pub use cmtp_client::clock::{now, rfc3339};

/// Shared state of one server (one node).
pub struct Shared {
    /// The configuration in effect (see [`Shared::cfg`]).
    cfg: ArcSwap<Config>,
    /// The served domain.
    pub domain: Domain,
    /// The server key.
    pub key: IdentityKey,
    /// The store.
    pub store: AnyStore,
    /// The OPAQUE server setup (shared by all nodes through the store).
    pub opaque: ServerSetup,
    /// Open connections.
    pub conns: Arc<ConnectionTracker>,
    /// Failed logins per account and peer, and per peer.
    pub login_failures: FailureLimiter,
    /// How peers are grouped for every per-peer limit.
    pub peers: PeerPrefixes,
    /// Bytes of messages being received, per peer and per source domain,
    /// checked against the disk.
    pub budget: Arc<StagingBudget>,
    /// Free space and the store's size.
    pub disk: Arc<DiskMonitor>,
    /// Remote KEYREQUESTs of peers that are not logged in.
    pub keyrequests: RateLimiter,
    /// Logins of sessions not logged in: bounded, a fair share per peer.
    pub stranger_logins: Arc<FairPool>,
    /// Strangers' message chunks being written to the store: bounded, a
    /// fair share per peer.
    pub stranger_writes: Arc<FairPool>,
    /// Argon2id parameters answered for unknown accounts.
    pub decoys: KsfDecoys,
    /// Other domains: discovery, keys, connections.
    pub remote: Remote,
    /// This node's name (queue leases).
    pub node: String,
    /// Wakes the relay queue runner when mail was queued.
    pub queue_wakeup: Notify,
    /// Wakes the housekeeping task (unlocks) after a reload.
    pub housekeeping_wakeup: Notify,
    /// Open connections to other domains, reused by the relay queue.
    pub relay_pool: crate::relay::ConnectionPool,
    /// Rotation statements leading to the current key, oldest first.
    pub rotations: Vec<cmtp_proto::statements::Rotation>,
    /// TLS: the server key as a raw public key and in a certificate.
    pub tls: Arc<ServerTlsConfig>,
    /// What every new connection's state machine is configured with
    /// (rebuilt at a reload: limits and timeouts).
    pub conn_config: ArcSwap<ServerConfig>,
    /// Messages being received now (accepted at their envelope, not yet
    /// stored or abandoned).
    pub messages_in_flight: std::sync::atomic::AtomicUsize,
    /// The key directory (PROTOCOL.md §20).
    pub kt: crate::kt::Transparency,
    bundle: Mutex<Option<(Vec<u8>, u64)>>,
    /// Recently served key statements of local users: account → (statement,
    /// issued_at, when cached). Saves a database read and a signature check
    /// per KEYREQUEST.
    statements: Mutex<std::collections::HashMap<Account, CachedStatement>>,
    /// Local names (accounts and aliases) recently seen to exist, with the
    /// account they deliver to (saves a read per MAIL).
    known_users: Mutex<std::collections::HashMap<Account, (Account, std::time::Instant)>>,
}

/// How far back statements are dated, so that a verifier whose clock is
/// behind ours (by less than this) does not see them as not yet valid.
pub const CLOCK_SKEW: u64 = 3600;

/// A statement in memory: its bytes, its issue time, when it was cached.
type CachedStatement = (Vec<u8>, u64, std::time::Instant);

/// How long a served key statement is kept in memory. An account deleted by
/// `cmtpd user delete` (another process) may still be answered for this long.
pub const STATEMENT_CACHE_TTL: Duration = Duration::from_secs(60);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("domain", &self.domain)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

/// Name under which the OPAQUE server setup is kept in the store.
pub const OPAQUE_SETUP_SECRET: &str = "opaque-server-setup-v1";

/// The configuration of the connection state machine, from cmtpd's.
pub fn connection_config(
    cfg: &Config,
    key: &IdentityKey,
    tls: &Arc<ServerTlsConfig>,
) -> ServerConfig {
    let t = &cfg.timeouts;
    ServerConfig {
        domain: cfg.domain(),
        key: key.clone(),
        software: SOFTWARE.into(),
        extensions: cmtp_proto::connection::server::EXTENSIONS
            .iter()
            .map(|s| s.to_string())
            .collect(),
        limits: cfg.limits.message_limits(),
        timeouts: Timeouts {
            idle: Duration::from_secs(t.idle_secs),
            command: Duration::from_secs(t.command_secs),
            data_grace: Duration::from_secs(t.data_grace_secs),
            min_data_rate: t.min_data_rate,
            stranger_session: Duration::from_secs(t.stranger_session_secs),
        },
        max_bad_commands: cfg.connections.max_bad_commands,
        help: crate::help::TEXT.into(),
        tls: Arc::clone(tls),
    }
}

impl Shared {
    /// Assembles the shared state; loads or creates the OPAQUE setup.
    pub async fn new(cfg: Config, key: IdentityKey, store: AnyStore) -> anyhow::Result<Shared> {
        let candidate = ServerSetup::generate(&mut rand_core::OsRng);
        let bytes = store
            .secret_get_or_init(OPAQUE_SETUP_SECRET, candidate.to_bytes().to_vec())
            .await?;
        let opaque = ServerSetup::from_bytes(&bytes)
            .map_err(|e| anyhow::anyhow!("stored OPAQUE setup: {e}"))?;
        let remote = Remote::new(&cfg, store.clone())?;
        let disk = Arc::new(DiskMonitor::new(&cfg));
        if let Err(e) = disk.sample(&store).await {
            tracing::warn!(error = %e, "cannot measure free space");
        }
        let (per_peer, per_domain) = cfg.limits.staging();
        let budget = Arc::new(StagingBudget::new(
            StagingLimits {
                per_peer,
                per_domain,
            },
            Arc::clone(&disk),
        ));
        let decoys = KsfDecoys::new(
            KsfDecoys::derive_key(&opaque.to_bytes()),
            cfg.accounts.ksf_floor(),
            Vec::new(),
        );
        if let Err(e) = decoys.refresh(&store).await {
            tracing::warn!(error = %e, "cannot read the parameters accounts use");
        }
        let rotations = crate::keyfile::load_rotations(&cfg.key_path())?;
        let node = cfg.node_name.clone().unwrap_or_else(|| {
            format!(
                "{}-{}",
                std::fs::read_to_string("/etc/hostname")
                    .map(|s| s.trim().to_owned())
                    .unwrap_or_else(|_| "node".into()),
                std::process::id()
            )
        });
        let tls = Arc::new(ServerTlsConfig::new(
            &key,
            &cfg.domain(),
            KeyExchange::default(),
        )?);
        let conn_config = ArcSwap::from_pointee(connection_config(&cfg, &key, &tls));
        let kt = crate::kt::Transparency::open(&store).await?;
        Ok(Shared {
            kt,
            tls,
            conn_config,
            messages_in_flight: std::sync::atomic::AtomicUsize::new(0),
            domain: cfg.domain(),
            login_failures: FailureLimiter::new(Duration::from_secs(
                cfg.accounts.login_window_secs,
            )),
            conns: Arc::new(ConnectionTracker::default()),
            peers: cfg.peer_prefixes(),
            budget,
            disk,
            stranger_logins: FairPool::new(cfg.stranger_pools().0),
            stranger_writes: FairPool::new(cfg.stranger_pools().1),
            keyrequests: RateLimiter::new(
                cfg.remote.keyrequests_per_minute,
                cfg.remote.keyrequest_burst,
            ),
            decoys,
            cfg: ArcSwap::from_pointee(cfg),
            key,
            store,
            opaque,
            remote,
            node,
            queue_wakeup: Notify::new(),
            housekeeping_wakeup: Notify::new(),
            rotations,
            relay_pool: crate::relay::ConnectionPool::default(),
            bundle: Mutex::new(None),
            statements: Mutex::new(std::collections::HashMap::new()),
            known_users: Mutex::new(std::collections::HashMap::new()),
        })
    }

    /// The configuration in effect now. Cheap (no lock, no reference
    /// count); hold the guard briefly and load again later rather than
    /// keeping it, so that a reload is seen.
    pub fn cfg(&self) -> arc_swap::Guard<Arc<Config>> {
        self.cfg.load()
    }

    /// Replaces the configuration in effect (see [`Shared::reload`]); new
    /// connections take the new limits and timeouts.
    pub(crate) fn store_cfg(&self, cfg: Config) {
        self.conn_config
            .store(Arc::new(connection_config(&cfg, &self.key, &self.tls)));
        self.cfg.store(Arc::new(cfg));
    }

    /// Message limits in effect now.
    pub fn limits(&self) -> MessageLimits {
        self.cfg().limits.message_limits()
    }

    /// The weakest KSF parameters accepted.
    pub fn ksf_floor(&self) -> KsfParams {
        self.cfg().accounts.ksf_floor()
    }

    /// The peer (source prefix) `ip` belongs to.
    pub fn peer_key(&self, ip: std::net::IpAddr) -> PeerKey {
        self.peers.key(ip)
    }

    /// Admits a message about to be received, before any of its bytes is
    /// stored: reserves `announced` bytes (its size as announced so far)
    /// against the disk reserve and the store's size limit and, unless it
    /// is a `submission` by the logged-in source, against the staging
    /// budgets of the sending peer and of the claimed `source` domain.
    ///
    /// The MAIL path calls this once the envelope is checked, hands the
    /// reservation to the staging sink (`crate::staging::BlobSink`), and
    /// answers a refusal with TEMPFAILURE and the refusal's text. A refusal
    /// is counted in `cmtp_messages_refused_total{reason}`.
    pub fn admit_mail(
        &self,
        peer: std::net::IpAddr,
        source: &Domain,
        submission: bool,
        announced: u64,
    ) -> Result<Reservation, BudgetRefusal> {
        let charge = if submission {
            Charge::Submission
        } else {
            Charge::Stranger {
                peer: self.peer_key(peer),
                domain: source.clone(),
            }
        };
        self.budget.reserve(charge, announced).inspect_err(|r| {
            metrics::counter!("cmtp_messages_refused_total", "reason" => r.reason()).increment(1);
        })
    }

    /// Whether a KEYREQUEST for another domain (which may make this server
    /// dial out) is allowed now: peers that are not logged in get
    /// `[remote] keyrequests_per_minute` after a first `keyrequest_burst`.
    /// `Err` carries the text of the RATELIMITED reply. The session calls
    /// this before asking another domain.
    pub fn check_remote_key_request(
        &self,
        peer: std::net::IpAddr,
        logged_in: bool,
    ) -> Result<(), String> {
        if logged_in {
            return Ok(());
        }
        self.keyrequests
            .check(self.peer_key(peer), std::time::Instant::now())
            .map_err(|wait| {
                metrics::counter!("cmtp_keyrequests_refused_total").increment(1);
                format!(
                    "too many key requests for other domains; try again in {} seconds",
                    wait.as_secs().max(1)
                )
            })
    }

    fn validity(&self) -> u64 {
        self.cfg().accounts.statement_validity_days * 24 * 3600
    }

    /// The validity of a statement issued `now` (PROTOCOL.md §9.2): dated
    /// [`CLOCK_SKEW`] back, valid for exactly the configured period from then.
    pub fn validity_from(&self, now: u64) -> (u64, u64) {
        let issued = now.saturating_sub(CLOCK_SKEW);
        (issued, issued + self.validity())
    }

    /// The server key bundle (self-signed statement), re-issued when half its
    /// validity has passed.
    pub fn server_bundle(&self, now: u64) -> Vec<u8> {
        let mut g = self.bundle.lock().expect("bundle lock");
        let validity = self.validity();
        if let Some((bytes, issued)) = &*g
            && now >= *issued
            && now < issued + validity / 2
        {
            return bytes.clone();
        }
        let (issued, expires) = self.validity_from(now);
        let statement = KeyStatement::issue(
            &self.key,
            None,
            self.domain.clone(),
            self.key.public(),
            issued,
            expires,
        );
        let bytes = ServerKeyBundle {
            statement,
            rotations: self.rotations.clone(),
        }
        .to_bytes();
        *g = Some((bytes.clone(), now));
        bytes
    }

    /// The key statement of a local user, issued (and stored) anew when half
    /// its validity has passed. `None` if there is no such user. Served from
    /// memory for up to [`STATEMENT_CACHE_TTL`].
    pub async fn local_statement(
        &self,
        account: &Account,
        now: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let validity = self.validity();
        if let Some((bytes, issued, cached)) = self
            .statements
            .lock()
            .expect("statement cache")
            .get(account)
            && cached.elapsed() < STATEMENT_CACHE_TTL
            && *issued <= now
            && now < issued + validity / 2
        {
            return Ok(Some(bytes.clone()));
        }
        let found = self.load_statement(account, now).await?;
        let mut cache = self.statements.lock().expect("statement cache");
        match &found {
            Some((bytes, issued)) => {
                if cache.len() >= 100_000 {
                    cache.retain(|_, (_, _, at)| at.elapsed() < STATEMENT_CACHE_TTL);
                }
                cache.insert(
                    account.clone(),
                    (bytes.clone(), *issued, std::time::Instant::now()),
                );
            }
            None => {
                cache.remove(account);
            }
        }
        Ok(found.map(|(bytes, _)| bytes))
    }

    /// Whether a local account or alias of that name exists.
    pub async fn local_user_exists(&self, account: &Account) -> Result<bool, StoreError> {
        Ok(self.resolve_local(account).await?.is_some())
    }

    /// The account whose mailbox mail for the local name `name` goes to:
    /// `name` itself for an account, its account for an alias, `None` if
    /// neither exists. A yes is remembered for [`STATEMENT_CACHE_TTL`]; a no
    /// is always asked of the store (so a new account or alias works at once).
    pub async fn resolve_local(&self, name: &Account) -> Result<Option<Account>, StoreError> {
        if let Some((target, at)) = self.known_users.lock().expect("user cache").get(name)
            && at.elapsed() < STATEMENT_CACHE_TTL
        {
            return Ok(Some(target.clone()));
        }
        let target = match self.store.resolve_account(name.as_str()).await? {
            Some(t) => Some(
                Account::parse(&t)
                    .map_err(|e| StoreError::Corrupt(format!("account name {t:?}: {e}")))?,
            ),
            None => None,
        };
        let mut cache = self.known_users.lock().expect("user cache");
        match &target {
            Some(t) => {
                if cache.len() >= 100_000 {
                    cache.retain(|_, (_, at)| at.elapsed() < STATEMENT_CACHE_TTL);
                }
                cache.insert(name.clone(), (t.clone(), std::time::Instant::now()));
            }
            None => {
                cache.remove(name);
            }
        }
        Ok(target)
    }

    /// Forgets every key statement and name this node has in memory (after
    /// an account's key changed: `cmtpd user reset`). Other nodes of a
    /// cluster forget theirs within [`STATEMENT_CACHE_TTL`].
    pub(crate) fn forget_cached_accounts(&self) {
        self.statements.lock().expect("statement cache").clear();
        self.known_users.lock().expect("user cache").clear();
    }

    /// The stored statement if it is still good, else a new one; with its
    /// issue time.
    async fn load_statement(
        &self,
        account: &Account,
        now: u64,
    ) -> Result<Option<(Vec<u8>, u64)>, StoreError> {
        let validity = self.validity();
        if let Some(s) = self.store.key_statement(account.as_str()).await?
            && now + validity / 2 < s.expires_at
            && let Ok(parsed) = KeyStatement::decode(&s.statement)
            && parsed.issued_at <= now
            // Issued under the current server key (not one rotated away).
            && parsed.verify(&self.key.public(), Some(account), &self.domain, now).is_ok()
        {
            return Ok(Some((s.statement, parsed.issued_at)));
        }
        // An alias is answered with a statement naming the alias and its
        // account's key (PROTOCOL.md §6.3), issued afresh (it is not stored:
        // the table of statements is per account).
        let (user, alias) = match self.store.user(account.as_str()).await? {
            Some(u) => (u, false),
            None => match self.store.resolve_account(account.as_str()).await? {
                Some(target) => match self.store.user(&target).await? {
                    Some(u) => (u, true),
                    None => return Ok(None),
                },
                None => return Ok(None),
            },
        };
        let key = cmtp_proto::crypto::PublicKey::from_bytes(&user.identity_pk)
            .map_err(|e| StoreError::Corrupt(format!("identity key of {account}: {e}")))?;
        let (issued, expires) = self.validity_from(now);
        let statement = KeyStatement::issue(
            &self.key,
            Some(account.clone()),
            self.domain.clone(),
            key,
            issued,
            expires,
        );
        let bytes = statement.to_bytes();
        if !alias {
            self.store
                .put_key_statement(account.as_str(), bytes.clone(), expires)
                .await?;
        }
        Ok(Some((bytes, issued)))
    }
}
