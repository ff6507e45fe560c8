//! The PostgreSQL backend: several stateless cmtpd nodes share one
//! database through a pool of connections each (tokio-postgres +
//! deadpool-postgres).
//!
//! Every method is one statement or one short transaction at PostgreSQL's
//! default isolation (READ COMMITTED), written so that concurrent nodes stay
//! correct: de-duplication claims the hash with `INSERT ... ON CONFLICT DO
//! NOTHING` before storing anything, the relay queue is leased with
//! `SELECT ... FOR UPDATE SKIP LOCKED`, and every lease-holder operation
//! re-checks `lease_owner` in the statement that changes the entry.
//! Durability is PostgreSQL's: a commit returns once its WAL is flushed
//! (`synchronous_commit` is never turned off; the store turns it back on for
//! its own sessions if the server has it off).

mod kt;
mod ops;
pub(crate) mod schema;

use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, KeyStatement, MailboxChanges,
    MailboxEntry, MailboxPage, MailboxUsage, MessageBody, NewDelivery, NewOutbound, NewUser,
    OutboundEntry, Pin, PurgeReport, QueueStats, Retention, StagedBlob, Unlock, User, UserSummary,
};

/// How to open a [`PostgresStore`]. Build it with [`PostgresConfig::new`]
/// and adjust the fields.
///
/// Its `Debug` output hides the password.
#[derive(Clone)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The connection string: a URL
    /// (`postgres://user:password@host:port/database?options`) or
    /// `key=value` pairs, as libpq accepts them. The schema lives in the
    /// first schema of the `search_path` (normally `public`); give cmtpd a
    /// database or a schema of its own (e.g. `?options=-csearch_path%3Dcmtp`).
    /// TLS is not supported: connect over a Unix socket or a trusted network
    /// (`sslmode=require` fails).
    pub url: String,
    /// The most connections this store opens (default 16). Every node of a
    /// cluster has its own pool: keep the sum under the server's
    /// `max_connections`.
    pub pool_size: usize,
    /// How long opening a connection may take before failing with
    /// [`StoreError::Unavailable`] (default 10 s; a `connect_timeout` in the
    /// URL takes precedence).
    pub connect_timeout: Duration,
    /// How long a request waits for a free pooled connection before failing
    /// with [`StoreError::Unavailable`] (default 10 s).
    pub acquire_timeout: Duration,
}

impl PostgresConfig {
    /// The defaults, for the database at `url`.
    pub fn new(url: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            url: url.into(),
            pool_size: 16,
            connect_timeout: Duration::from_secs(10),
            acquire_timeout: Duration::from_secs(10),
        }
    }

    /// The connection string with its password replaced by `***` (for logs
    /// and error messages).
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted_url())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("acquire_timeout", &self.acquire_timeout)
            .finish()
    }
}

/// Hides the password of a URL (`scheme://user:PASSWORD@host`) and any
/// `password=...` parameter (URL query or `key=value` form).
fn redact(url: &str) -> String {
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest = scheme_end + 3;
        let authority_end = out[rest..].find(['/', '?']).map_or(out.len(), |i| rest + i);
        if let Some(at) = out[rest..authority_end].rfind('@') {
            let userinfo = &out[rest..rest + at];
            if let Some(colon) = userinfo.find(':') {
                out.replace_range(rest + colon + 1..rest + at, "***");
            }
        }
    }
    let mut result = String::with_capacity(out.len());
    let mut rest = out.as_str();
    while let Some(i) = rest.find("password=") {
        let value = i + "password=".len();
        result.push_str(&rest[..value]);
        result.push_str("***");
        let end = rest[value..]
            .find(['&', ' '])
            .map_or(rest.len(), |j| value + j);
        rest = &rest[end..];
    }
    result.push_str(rest);
    result
}

/// The PostgreSQL implementation of [`Store`]. Clones share one connection
/// pool; any number of stores (on any number of machines) may share one
/// database.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
    /// Inline deliveries' group commit.
    batch: std::sync::Arc<batch::Batcher>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("max_size", &status.max_size)
            .field("size", &status.size)
            .finish_non_exhaustive()
    }
}

/// Turns a tokio-postgres error into a [`StoreError`]: what a retry may cure
/// (lost connections, serialization failures and deadlocks, a full disk,
/// too many connections, a server shutting down) is transient, constraint
/// violations and malformed data are permanent.
pub(crate) fn map_err(e: tokio_postgres::Error) -> StoreError {
    if let Some(db) = e.as_db_error() {
        let code = db.code().code();
        let msg = format!("{} ({code}): {}", db.severity(), db.message());
        return match code {
            // serialization_failure, deadlock_detected, lock_not_available:
            // the transaction was rolled back and may simply be run again.
            "40001" | "40P01" | "55P03" => StoreError::Busy(msg),
            "53100" => StoreError::Full(msg),
            // insufficient resources: out of memory, too many connections...
            c if c.starts_with("53") => StoreError::Unavailable(msg),
            // connection exceptions; operator intervention (query canceled,
            // admin/crash shutdown, cannot connect now); the server is a
            // read-only standby (a fail-over in progress); idle session
            // timeouts; a database or role that cannot be used right now.
            c if c.starts_with("08") || c.starts_with("57") || c.starts_with("28") => {
                StoreError::Unavailable(msg)
            }
            "25006" | "25P03" | "3D000" | "40003" => StoreError::Unavailable(msg),
            // system errors (I/O)
            c if c.starts_with("58") => StoreError::Io(msg),
            "XX001" | "XX002" => StoreError::Corrupt(msg),
            c if c.starts_with("23") => StoreError::Constraint(msg),
            // data exceptions: a text with a NUL byte, a number out of range
            c if c.starts_with("22") => StoreError::InvalidInput(msg),
            _ => StoreError::Internal(msg),
        };
    }
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(&e);
    let mut io = false;
    while let Some(s) = source {
        io |= s.is::<std::io::Error>();
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    // Connecting, talking to the server, a connection that closed or timed
    // out: the database is (momentarily) out of reach.
    let transport = [
        "error connecting",
        "error communicating",
        "connection closed",
        "timeout",
    ];
    if io || e.is_closed() || transport.iter().any(|t| msg.starts_with(t)) {
        StoreError::Unavailable(msg)
    } else {
        StoreError::Internal(msg)
    }
}

fn map_pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => map_err(e),
        PoolError::Timeout(t) => StoreError::Unavailable(format!(
            "no PostgreSQL connection available ({t:?} timeout)"
        )),
        PoolError::Closed => StoreError::Unavailable("the connection pool is closed".into()),
        PoolError::PostCreateHook(e) => StoreError::Unavailable(format!("new connection: {e}")),
        PoolError::NoRuntimeSpecified => StoreError::Internal("pool without a runtime".into()),
    }
}

/// `.db()` converts a tokio-postgres result (kept private: tokio-postgres
/// is no part of the public interface).
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for Result<T, tokio_postgres::Error> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(map_err)
    }
}

/// How many times an operation runs again after [`StoreError::Busy`]
/// (serialization failure, deadlock, lock not available, or a concurrent
/// insert of the same key). Busy always means the transaction was rolled
/// back, so a new attempt is safe for every operation.
const BUSY_RETRIES: u32 = 4;

/// Runs `$body` (an expression using the pooled connection `$c`) and runs
/// it again, on a fresh connection, after a `Busy` error; a `Read` also
/// once after `Unavailable` (a pooled connection the server had closed).
macro_rules! attempt {
    ($self:ident, $kind:ident, |$c:ident| $body:expr) => {{
        let mut attempt = 0u32;
        loop {
            let result = async {
                #[allow(unused_mut)]
                let mut $c = $self.client().await?;
                $body
            }
            .await;
            match result {
                Err(e) if attempt < BUSY_RETRIES && retryable(&e, Kind::$kind, attempt) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "retrying a PostgreSQL operation");
                    tokio::time::sleep(Duration::from_millis(2 << attempt)).await;
                }
                other => break other,
            }
        }
    }};
}

// After `attempt!`, which it uses.
mod batch;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

fn retryable(e: &StoreError, kind: Kind, attempt: u32) -> bool {
    match e {
        StoreError::Busy(_) => true,
        // Once: a read on a connection that died in the pool gets a fresh
        // one; a database that is really down is not waited for twice.
        StoreError::Unavailable(_) => kind == Kind::Read && attempt == 0,
        _ => false,
    }
}

impl PostgresStore {
    /// Connects, creates the schema or migrates an older one (under an
    /// advisory lock, so that nodes starting together do not race), and
    /// opens the pool. Unlike SQLite, staged blobs are not cleared at start:
    /// other nodes may be uploading; `purge_expired` removes abandoned ones.
    pub async fn open(config: PostgresConfig) -> Result<PostgresStore, StoreError> {
        let mut pg: tokio_postgres::Config = config.url.parse().map_err(|e| {
            StoreError::InvalidInput(format!(
                "PostgreSQL connection string {}: {e}",
                config.redacted_url()
            ))
        })?;
        if pg.get_connect_timeout().is_none() {
            pg.connect_timeout(config.connect_timeout);
        }
        if pg.get_application_name().is_none() {
            pg.application_name("cmtpd");
        }

        let (mut client, connection) = pg.connect(NoTls).await.db()?;
        let conn_task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "PostgreSQL set-up connection ended");
            }
        });
        let prepared = async {
            schema::migrate(&mut client).await?;
            let sync: String = client
                .query_one("SHOW synchronous_commit", &[])
                .await
                .db()?
                .try_get(0)
                .db()?;
            Ok::<_, StoreError>(sync)
        }
        .await;
        drop(client);
        conn_task.abort();
        if prepared?.eq_ignore_ascii_case("off") {
            tracing::warn!(
                "the PostgreSQL server has synchronous_commit = off; cmtpd turns it on \
                 for its own sessions (an acknowledged message must survive a crash)"
            );
            let options = match pg.get_options() {
                Some(o) if !o.is_empty() => format!("{o} -c synchronous_commit=on"),
                _ => "-c synchronous_commit=on".to_owned(),
            };
            pg.options(options);
        }

        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(1))
            .wait_timeout(Some(config.acquire_timeout))
            .create_timeout(Some(config.connect_timeout))
            .recycle_timeout(Some(config.connect_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Internal(format!("building the connection pool: {e}")))?;
        let batch = std::sync::Arc::new(batch::Batcher::new(pool.clone()));
        Ok(PostgresStore { pool, batch })
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(map_pool_err)
    }

    /// A delivery: the common case (a valid inline body) in the next batch
    /// (`batch`), any other alone (`batch::Batcher::alone`).
    async fn deliver_to(
        &self,
        delivery: NewDelivery,
        folder: &str,
        flags: u32,
    ) -> Result<Delivered, StoreError> {
        if let MessageBody::Inline(bytes) = &delivery.body
            && let Ok(chunks) = ops::check_inline(bytes, delivery.size)
        {
            let bytes = bytes.clone();
            return self
                .batch
                .deliver(delivery, bytes, chunks, folder, flags)
                .await;
        }
        self.batch.alone(&delivery, folder, flags).await
    }
}

impl Store for PostgresStore {
    async fn create_user(
        &self,
        user: NewUser,
        invite: Option<[u8; 32]>,
        now: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::create_user(
            &mut c, &user, invite, now
        )
        .await)
    }

    async fn user(&self, account: &str) -> Result<Option<User>, StoreError> {
        attempt!(self, Read, |c| ops::user(&c, account).await)
    }

    async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        attempt!(self, Read, |c| ops::list_users(&c).await)
    }

    async fn ksf_histogram(&self) -> Result<Vec<([u8; 12], u64)>, StoreError> {
        attempt!(self, Read, |c| ops::ksf_histogram(&c).await)
    }

    async fn delete_user(&self, account: &str) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::delete_user(&mut c, account).await)
    }

    async fn update_credentials(
        &self,
        account: &str,
        credentials: Credentials,
        now: u64,
    ) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::update_credentials(
            &c,
            account,
            &credentials,
            now
        )
        .await)
    }

    async fn set_quota(&self, account: &str, quota: Option<u64>) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::set_quota(&c, account, quota).await)
    }

    async fn quota(&self, account: &str) -> Result<Option<Option<u64>>, StoreError> {
        attempt!(self, Read, |c| ops::quota(&c, account).await)
    }

    async fn mailbox_usage(&self, account: &str) -> Result<MailboxUsage, StoreError> {
        attempt!(self, Read, |c| ops::mailbox_usage(&c, account).await)
    }

    async fn claim_quota_notice(
        &self,
        account: &str,
        now: u64,
        interval: u64,
    ) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::claim_quota_notice(
            &c, account, now, interval
        )
        .await)
    }

    async fn unlock_user(&self, account: &str, now: u64) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::unlock_user(&c, account, now).await)
    }

    async fn unlocks_after(&self, after: u64) -> Result<Vec<Unlock>, StoreError> {
        attempt!(self, Read, |c| ops::unlocks_after(&c, after).await)
    }

    async fn add_alias(&self, alias: &str, account: &str, now: u64) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::add_alias(&mut c, alias, account, now)
            .await)
    }

    async fn remove_alias(&self, alias: &str) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::remove_alias(&c, alias).await)
    }

    async fn list_aliases(&self) -> Result<Vec<Alias>, StoreError> {
        attempt!(self, Read, |c| ops::list_aliases(&c).await)
    }

    async fn resolve_account(&self, name: &str) -> Result<Option<String>, StoreError> {
        attempt!(self, Read, |c| ops::resolve_account(&c, name).await)
    }

    async fn create_reset(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::create_reset(
            &c, account, token_hash, expires_at, now
        )
        .await)
    }

    async fn reset_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        attempt!(self, Read, |c| ops::reset_valid(
            &c, account, token_hash, now
        )
        .await)
    }

    async fn reset_user(
        &self,
        account: &str,
        token_hash: [u8; 32],
        identity_pk: [u8; 32],
        credentials: Credentials,
        now: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::reset_user(
            &mut c,
            account,
            token_hash,
            identity_pk,
            &credentials,
            now
        )
        .await)
    }

    async fn create_invite(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::create_invite(
            &c, account, token_hash, expires_at, now
        )
        .await)
    }

    async fn invite_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        attempt!(self, Read, |c| ops::invite_valid(
            &c, account, token_hash, now
        )
        .await)
    }

    async fn purge_expired(
        &self,
        now: u64,
        retention: Retention,
    ) -> Result<PurgeReport, StoreError> {
        attempt!(self, Write, |c| ops::purge_expired(&mut c, now, retention)
            .await)
    }

    async fn secret_get_or_init(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        attempt!(self, Write, |c| ops::secret_get_or_init(
            &c, name, &candidate
        )
        .await)
    }

    async fn put_key_statement(
        &self,
        account: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::put_key_statement(
            &c, account, &statement, expires_at
        )
        .await)
    }

    async fn key_statement(&self, account: &str) -> Result<Option<KeyStatement>, StoreError> {
        attempt!(self, Read, |c| ops::key_statement(&c, account).await)
    }

    async fn stage_begin(&self, now: u64) -> Result<StagedBlob, StoreError> {
        attempt!(self, Write, |c| ops::stage_begin(&c, now).await)
    }

    async fn stage_append(&self, blob: &StagedBlob, chunk: Bytes) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::stage_append(&c, blob.id, &chunk)
            .await)
    }

    async fn stage_abort(&self, blob: &StagedBlob) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::stage_abort(&c, blob.id).await)
    }

    async fn read_chunk(&self, blob: BlobRef, seq: u32) -> Result<Option<Bytes>, StoreError> {
        attempt!(self, Read, |c| ops::read_chunk(&c, blob.id, seq).await)
    }

    async fn deliver(&self, delivery: NewDelivery) -> Result<Delivered, StoreError> {
        self.deliver_to(delivery, crate::types::INBOX, 0).await
    }

    async fn deliver_into(
        &self,
        delivery: NewDelivery,
        folder: &str,
        flags: u32,
    ) -> Result<Delivered, StoreError> {
        self.deliver_to(delivery, folder, flags).await
    }

    async fn mailbox_page(
        &self,
        account: &str,
        before: u64,
        limit: usize,
    ) -> Result<MailboxPage, StoreError> {
        attempt!(self, Read, |c| ops::mailbox_page(
            &c, account, before, limit
        )
        .await)
    }

    async fn mailbox_changes(
        &self,
        account: &str,
        since: u64,
        limit: usize,
    ) -> Result<MailboxChanges, StoreError> {
        attempt!(self, Read, |c| ops::mailbox_changes(
            &c, account, since, limit
        )
        .await)
    }

    async fn set_flags(
        &self,
        account: &str,
        ids: Vec<u64>,
        set: u32,
        clear: u32,
    ) -> Result<FlagsChanged, StoreError> {
        attempt!(self, Write, |c| ops::set_flags(
            &mut c, account, &ids, set, clear
        )
        .await)
    }

    async fn move_messages(
        &self,
        account: &str,
        ids: Vec<u64>,
        folder: &str,
    ) -> Result<FlagsChanged, StoreError> {
        attempt!(self, Write, |c| ops::move_messages(
            &mut c, account, &ids, folder
        )
        .await)
    }

    async fn list_mailbox(&self, account: &str) -> Result<Vec<MailboxEntry>, StoreError> {
        attempt!(self, Read, |c| ops::list_mailbox(&c, account).await)
    }

    async fn mailbox_message(
        &self,
        account: &str,
        id: u64,
    ) -> Result<Option<(MailboxEntry, BlobRef)>, StoreError> {
        attempt!(self, Read, |c| ops::mailbox_message(&c, account, id).await)
    }

    async fn delete_message(&self, account: &str, id: u64) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::delete_message(&mut c, account, id)
            .await)
    }

    async fn enqueue(&self, item: NewOutbound) -> Result<Enqueued, StoreError> {
        attempt!(self, Write, |c| ops::enqueue(&mut c, &item).await)
    }

    async fn lease_due(
        &self,
        now: u64,
        node: &str,
        lease_until: u64,
        limit: usize,
    ) -> Result<Vec<OutboundEntry>, StoreError> {
        attempt!(self, Write, |c| ops::lease_due(
            &c,
            now,
            node,
            lease_until,
            limit
        )
        .await)
    }

    async fn lease_due_per_domain(
        &self,
        now: u64,
        node: &str,
        lease_until: u64,
        limit: usize,
        per_domain: usize,
        in_flight: &[(String, usize)],
    ) -> Result<Vec<OutboundEntry>, StoreError> {
        attempt!(self, Write, |c| ops::lease_due_per_domain(
            &c,
            now,
            node,
            lease_until,
            limit,
            per_domain,
            in_flight
        )
        .await)
    }

    async fn defer_domain(&self, domain: &str, now: u64, until: u64) -> Result<u64, StoreError> {
        attempt!(self, Write, |c| ops::defer_domain(&c, domain, now, until)
            .await)
    }

    async fn complete(&self, id: u64, node: &str) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::complete(&c, id, node).await)
    }

    async fn retry_later(
        &self,
        id: u64,
        node: &str,
        next_attempt_at: u64,
        error: &str,
    ) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::retry_later(
            &c,
            id,
            node,
            next_attempt_at,
            error
        )
        .await)
    }

    async fn fail_with_notice(
        &self,
        id: u64,
        node: &str,
        error: &str,
        notice: NewDelivery,
    ) -> Result<bool, StoreError> {
        let done = attempt!(self, Write, |c| ops::fail_with_notice(
            &mut c, id, node, &notice
        )
        .await)?;
        if done {
            tracing::info!(id, error, "relay gave up; failure notice delivered");
        }
        Ok(done)
    }

    async fn list_queue(&self) -> Result<Vec<OutboundEntry>, StoreError> {
        attempt!(self, Read, |c| ops::list_queue(&c).await)
    }

    async fn queue_entry(&self, id: u64) -> Result<Option<OutboundEntry>, StoreError> {
        attempt!(self, Read, |c| ops::queue_entry(&c, id).await)
    }

    async fn delete_queued(&self, id: u64) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::delete_queued(&c, id).await)
    }

    async fn set_held(&self, id: u64, held: bool) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::set_held(&c, id, held).await)
    }

    async fn retry_now(&self, id: u64, now: u64) -> Result<bool, StoreError> {
        attempt!(self, Write, |c| ops::retry_now(&c, id, now).await)
    }

    async fn retry_all_now(&self, now: u64) -> Result<u64, StoreError> {
        attempt!(self, Write, |c| ops::retry_all_now(&c, now).await)
    }

    async fn size(&self) -> Result<u64, StoreError> {
        attempt!(self, Read, |c| ops::size(&c).await)
    }

    async fn queue_stats(&self, now: u64) -> Result<QueueStats, StoreError> {
        attempt!(self, Read, |c| ops::queue_stats(&c, now).await)
    }

    async fn pin(&self, domain: &str) -> Result<Option<Pin>, StoreError> {
        attempt!(self, Read, |c| ops::pin(&c, domain).await)
    }

    async fn set_pin(&self, domain: &str, key: [u8; 32], now: u64) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::set_pin(&c, domain, key, now).await)
    }

    async fn cache_statement(
        &self,
        account: &str,
        domain: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        attempt!(self, Write, |c| ops::cache_statement(
            &c, account, domain, &statement, expires_at
        )
        .await)
    }

    async fn cached_statement(
        &self,
        account: &str,
        domain: &str,
        now: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        attempt!(self, Read, |c| ops::cached_statement(
            &c, account, domain, now
        )
        .await)
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://cmtp:s3cr3t@db.example:5432/cmtp"),
            "postgres://cmtp:***@db.example:5432/cmtp"
        );
        assert_eq!(
            redact("postgres://cmtp@db.example/cmtp?password=s3cr3t&sslmode=disable"),
            "postgres://cmtp@db.example/cmtp?password=***&sslmode=disable"
        );
        assert_eq!(
            redact("host=/run/postgresql user=cmtp password=s3cr3t dbname=cmtp"),
            "host=/run/postgresql user=cmtp password=*** dbname=cmtp"
        );
        assert_eq!(redact("postgres://a@b/c?x=y@z"), "postgres://a@b/c?x=y@z");
    }
}
