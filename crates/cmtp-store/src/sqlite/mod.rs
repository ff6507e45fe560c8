//! The embedded SQLite backend: a database file and its bodies database
//! (the chunks of large messages), WAL, `synchronous=FULL`, one writer
//! thread doing group commit, a pool of read-only connections.

pub mod backup;
mod checkpoint;
mod kt;
mod ops;
mod pool;
pub(crate) mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rusqlite::{Connection, OpenFlags};

use crate::error::StoreError;
use crate::store::Store;
use crate::types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, KeyStatement, MailboxChanges,
    MailboxEntry, MailboxPage, MailboxUsage, MessageBody, NewDelivery, NewOutbound, NewUser,
    OutboundEntry, Pin, PurgeReport, QueueStats, Retention, StagedBlob, Unlock, User, UserSummary,
};

/// How to open a [`SqliteStore`]. Build it with [`SqliteConfig::new`] and
/// adjust the fields.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file (created with mode 0600, and its directory, if
    /// missing). The `-wal` and `-shm` files live beside it, and the bodies
    /// database `PATH-bodies` (the chunks of large messages) with its own.
    pub path: PathBuf,
    /// How many read-only connections serve reads concurrently (default 4).
    pub read_connections: usize,
    /// How long a connection waits for a lock held by another process before
    /// failing with [`StoreError::Busy`] (default 5 s).
    pub busy_timeout: Duration,
    /// The most write requests committed together (default 256).
    pub max_batch: usize,
    /// The payload bytes after which a batch stops taking requests (default
    /// 16 MiB). Four times this much (at least 2 MiB) may wait for the
    /// writer; further writers wait before queueing, so memory stays bounded
    /// however many connections write at once.
    pub max_batch_bytes: usize,
    /// An upper bound on the size of the database file, and on that of the
    /// bodies database (SQLite's `max_page_count`); writes beyond it fail with the transient
    /// [`StoreError::Full`]. `None` (the default): only the disk limits it.
    pub max_size: Option<u64>,
    /// Remove staged blobs left by a previous run when opening (default
    /// `true`). Turn it off for a process that opens the database beside a
    /// running server (an administration command): the uploads in progress
    /// are that server's.
    pub clear_abandoned_uploads: bool,
    /// The bytes of write-ahead log after which a thread beside the writer
    /// copies them into the database file (a checkpoint), for each of the
    /// two databases (default 4 MiB). From four times this much the writer
    /// copies what that thread has left after a commit, so that the log can
    /// start over.
    pub checkpoint_bytes: u64,
}

impl SqliteConfig {
    /// The defaults, for the database file `path`.
    pub fn new(path: impl Into<PathBuf>) -> SqliteConfig {
        SqliteConfig {
            path: path.into(),
            read_connections: 4,
            busy_timeout: Duration::from_secs(5),
            max_batch: 256,
            max_batch_bytes: 16 << 20,
            max_size: None,
            clear_abandoned_uploads: true,
            checkpoint_bytes: 4 << 20,
        }
    }
}

/// The SQLite implementation of [`Store`]. Clones share one database.
///
/// Dropping the last clone lets the writer finish the requests already
/// queued, closes the database and waits for that (a short block).
#[derive(Debug, Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    writer: writer::Writer,
    readers: Arc<pool::ReadPool>,
    path: PathBuf,
}

/// Turns a rusqlite error into a [`StoreError`].
pub(crate) fn map_err(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match &e {
        rusqlite::Error::SqliteFailure(f, _) => {
            let msg = e.to_string();
            match f.code {
                C::DiskFull => StoreError::Full(msg),
                C::DatabaseBusy | C::DatabaseLocked => StoreError::Busy(msg),
                C::SystemIoFailure | C::CannotOpen | C::FileLockingProtocolFailed => {
                    StoreError::Io(msg)
                }
                C::OutOfMemory => StoreError::Unavailable(msg),
                C::ConstraintViolation => StoreError::Constraint(msg),
                C::DatabaseCorrupt | C::NotADatabase => StoreError::Corrupt(msg),
                C::TooBig => StoreError::InvalidInput(msg),
                _ => StoreError::Internal(msg),
            }
        }
        _ => StoreError::Internal(e.to_string()),
    }
}

/// `.db()` converts a rusqlite result (kept private: rusqlite is no part of
/// the public interface).
pub(crate) trait DbResult<T> {
    fn db(self) -> Result<T, StoreError>;
}

impl<T> DbResult<T> for rusqlite::Result<T> {
    fn db(self) -> Result<T, StoreError> {
        self.map_err(map_err)
    }
}

/// The bodies database of the database `path`: `PATH-bodies`, beside it.
pub(crate) fn bodies_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-bodies");
    p.into()
}

/// Every file of the store at `path`: the database, its log and index,
/// the bodies database and its log and index.
pub(crate) fn store_files(path: &Path) -> Vec<PathBuf> {
    let mut files = Vec::with_capacity(6);
    for base in [path.to_owned(), bodies_path(path)] {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = base.as_os_str().to_owned();
            p.push(suffix);
            files.push(PathBuf::from(p));
        }
    }
    files
}

/// The schema of the bodies database: the chunks of staged blobs (the
/// chunks of messages stored in one piece stay in the database's own
/// `blob_chunks`). A chunk belongs to the database's `blobs` row of the
/// same id; chunks whose blob is gone are swept ([`ops::sweep_bodies`]).
const BODIES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS chunks (
    blob_id INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
";

/// Opens (creating if missing) a database file of the store for writing,
/// with `page_size` for a new file: WAL, `synchronous=FULL`, at most
/// `max_size` bytes.
fn open_rw(path: &Path, config: &SqliteConfig, page_size: u32) -> Result<Connection, StoreError> {
    create_private(path)?;
    let conn = connect(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        config.busy_timeout,
    )?;
    // Ignored for an existing file.
    conn.execute_batch(&format!("PRAGMA page_size = {page_size}"))
        .db()?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .db()?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Internal(format!(
            "cannot switch {} to WAL (journal_mode is {mode})",
            path.display()
        )));
    }
    // The statement journals of the writer's savepoints stay in memory up to
    // 4 MiB: the bundled SQLite is built with SQLITE_STMTJRNL_SPILL
    // (.cargo/config.toml says why; tests/sqlite_writer_io.rs checks it).
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;
         PRAGMA journal_size_limit = 67108864;
         PRAGMA cache_size = -8192;",
    )
    .db()?;
    if let Some(max) = config.max_size {
        let page_size: i64 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).db()?;
        let pages = (max / page_size.max(512) as u64).max(1);
        let _: i64 = conn
            .query_row(&format!("PRAGMA max_page_count = {pages}"), [], |r| {
                r.get(0)
            })
            .db()?;
    }
    Ok(conn)
}

/// The writer's connection to the database.
fn open_writer(config: &SqliteConfig) -> Result<Connection, StoreError> {
    if let Some(dir) = config.path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("creating {}: {e}", dir.display())))?;
    }
    // Small pages for the database: a delivery changes a few dozen bytes
    // in each of several index pages (the de-duplication key, the
    // account's uid and modseq), and a commit writes each such page whole
    // to the log, then again at the checkpoint. 4 KiB pages halved the
    // bytes written per small message against 16 KiB ones. Large messages
    // arrive as staged blobs, whose chunks go to the bodies database, with
    // 64 KiB pages: a 16 MiB message is then 256 pages, not 4,096
    // (docs/BENCHMARKS.md, issue 17).
    open_rw(&config.path, config, 4096)
}

/// The writer's connection to the bodies database (created if missing),
/// once the database is known to be the store's.
pub(crate) fn open_bodies(config: &SqliteConfig) -> Result<Connection, StoreError> {
    let bodies = open_rw(&bodies_path(&config.path), config, 65536)?;
    // Chunks are written once and read once: a small cache (32 pages).
    bodies
        .execute_batch(&format!("PRAGMA cache_size = -2048; {BODIES_SCHEMA}"))
        .db()?;
    Ok(bodies)
}

/// The checkpoint thread's connection to the database file `path`, which
/// exists: read-write (a checkpoint writes the database file), and syncing
/// it as the writer's connection does.
fn open_checkpointer(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    // The timeout is for opening (a server beside may be recovering its
    // log); a PASSIVE checkpoint never waits on it.
    let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_WRITE, busy_timeout)?;
    conn.execute_batch("PRAGMA synchronous = FULL").db()?;
    // A connection that has not read the database yet does not know it is
    // in WAL mode, and its checkpoints would quietly do nothing.
    let _: i64 = conn
        .query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))
        .db()?;
    Ok(conn)
}

/// How often the log of the database `conn` writes to is checkpointed.
fn checkpoint_limits(
    conn: &Connection,
    config: &SqliteConfig,
) -> Result<checkpoint::Limits, StoreError> {
    let page_size: u32 = conn.query_row("PRAGMA page_size", [], |r| r.get(0)).db()?;
    Ok(checkpoint::Limits::for_bytes(
        config.checkpoint_bytes,
        page_size,
    ))
}

/// Creates the database file readable by its owner only (it holds the
/// server's OPAQUE secret); SQLite gives the `-wal` and `-shm` files the
/// same mode.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Io(format!("creating {}: {e}", path.display()))),
    }
}

pub(crate) fn open_reader(path: &Path, busy_timeout: Duration) -> Result<Connection, StoreError> {
    let conn = connect(path, OpenFlags::SQLITE_OPEN_READ_ONLY, busy_timeout)?;
    // Read-only like the connection (an attached file takes its flags).
    attach_bodies(&conn, &bodies_path(path))?;
    Ok(conn)
}

/// Attaches the bodies database `bodies` to `conn` as `bodies`.
pub(crate) fn attach_bodies(conn: &Connection, bodies: &Path) -> Result<(), StoreError> {
    let name = bodies
        .to_str()
        .ok_or_else(|| StoreError::InvalidInput(format!("{} is not UTF-8", bodies.display())))?;
    conn.execute("ATTACH DATABASE ?1 AS bodies", [name]).db()?;
    Ok(())
}

/// A connection to the store's database file `path` with `flags` (used by
/// one thread at a time), waiting up to `busy_timeout` for another
/// process's locks, with the settings of every connection ([`configure`]).
pub(crate) fn connect(
    path: &Path,
    flags: OpenFlags,
    busy_timeout: Duration,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX).db()?;
    conn.busy_timeout(busy_timeout).db()?;
    configure(&conn)?;
    Ok(conn)
}

/// Settings of every connection, the writer's and the readers':
/// - the write-ahead log stays when a connection closes. The last
///   connection to close would checkpoint the log and delete it and its
///   shared-memory index; opening the database again then has to create
///   both (32 KiB at least), which fails on a full disk. Kept, they let the
///   store open and serve reads on a full disk, and the log's existing
///   space takes small writes such as deletions. The log is still
///   checkpointed while the store runs (by the checkpoint thread, see
///   `checkpoint.rs`), by the writer as the store closes, and kept to
///   `journal_size_limit`;
/// - the query planner's stability guarantee: a statement's plan never
///   depends on the values bound to it, so a cached statement is not
///   prepared again when they change. Without it SQLite re-prepared the
///   duplicate check of every delivery (`delivered.hash = ?1`) on each
///   bind, about 50,000 instructions per message.
fn configure(conn: &Connection) -> Result<(), StoreError> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
        true,
    )
    .db()?;
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )
    .db()?;
    Ok(())
}

fn open_blocking(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
    let mut main = open_writer(&config)?;
    // The bodies database exists before the schema says it is in use
    // (version 7): a store that cannot create it (a full disk) stays at its
    // version, which the previous build still opens. A store at version 7
    // without it has lost its large messages: refused, not made anew.
    let version = schema::current_version(&main)?;
    let bodies = bodies_path(&config.path);
    if version >= schema::BODIES_SINCE && !bodies.exists() {
        return Err(StoreError::Corrupt(format!(
            "{} is missing: the chunks of large messages are in it (restore both files)",
            bodies.display()
        )));
    }
    let mut bodies = open_bodies(&config)?;
    schema::migrate(&mut main)?;
    let logs = vec![
        checkpoint::Log {
            limits: checkpoint_limits(&main, &config)?,
            own: open_checkpointer(&config.path, config.busy_timeout)?,
            writer: &mut main,
        },
        checkpoint::Log {
            limits: checkpoint_limits(&bodies, &config)?,
            own: open_checkpointer(&bodies_path(&config.path), config.busy_timeout)?,
            writer: &mut bodies,
        },
    ];
    let checkpointer = checkpoint::Checkpointer::start(logs)?;
    let conn = writer::Db::new(main, bodies)?;
    // Nobody can be uploading into a store that a server is just opening
    // (an administrator's command opening it beside a running server must
    // not touch them). On a full disk the removal itself may not fit: the
    // store opens anyway (reads and small writes work), and maintenance
    // removes them later.
    if config.clear_abandoned_uploads {
        match ops::purge_staged(&conn, None).and_then(|n| conn.sweep_gone().map(|_| n)) {
            Ok(0) => {}
            Ok(abandoned) => tracing::info!(
                abandoned,
                "removed staged blobs abandoned by the previous run"
            ),
            Err(e) if e.is_transient() => tracing::warn!(
                error = %e,
                "cannot remove the staged blobs of the previous run now; maintenance will"
            ),
            Err(e) => return Err(e),
        }
    }
    let readers = (0..config.read_connections.max(1))
        .map(|_| open_reader(&config.path, config.busy_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    // Chunks whose blob went in the last moments of the previous run (a
    // blob's row goes first, its chunks after the commit). Like the staged
    // blobs, only when a server opens the store.
    if config.clear_abandoned_uploads {
        let swept = ops::bodies_orphans(&readers[0])
            .and_then(|ids| conn.note_gone(&ids))
            .and_then(|()| conn.sweep_gone());
        match swept {
            Ok(0) => {}
            Ok(blobs) => tracing::info!(blobs, "removed the chunks of deleted blobs"),
            Err(e) if e.is_transient() => tracing::warn!(
                error = %e,
                "cannot remove the chunks of deleted blobs now; maintenance will"
            ),
            Err(e) => return Err(e),
        }
    }
    let writer = writer::Writer::start(
        conn,
        checkpointer,
        writer::BatchLimits {
            max_requests: config.max_batch.max(1),
            max_bytes: config.max_batch_bytes.max(1),
        },
    )?;
    Ok(SqliteStore {
        inner: Arc::new(Inner {
            writer,
            readers: Arc::new(pool::ReadPool::new(
                readers,
                config.path.clone(),
                config.busy_timeout,
            )),
            path: config.path.clone(),
        }),
    })
}

impl SqliteStore {
    /// Opens the database (creating it, or migrating an older schema) and
    /// starts the writer thread. Staged blobs left by a previous run are
    /// removed.
    pub async fn open(config: SqliteConfig) -> Result<SqliteStore, StoreError> {
        match tokio::task::spawn_blocking(move || open_blocking(config)).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Internal(format!("opening the database: {e}"))),
        }
    }

    async fn write<T, F>(&self, weight: usize, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&writer::Db) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(weight, op).await
    }

    async fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.readers.read(op).await
    }

    /// Runs SQLite's `PRAGMA integrity_check` on a read connection; `Ok(())`
    /// if the database is sound, else [`StoreError::Corrupt`] with SQLite's
    /// findings.
    pub async fn integrity_check(&self) -> Result<(), StoreError> {
        let report: Vec<String> = self
            .read(|c| {
                let mut stmt = c.prepare("PRAGMA integrity_check").db()?;
                let rows = stmt.query_map([], |r| r.get(0)).db()?;
                rows.collect::<rusqlite::Result<_>>().db()
            })
            .await?;
        if report.len() == 1 && report[0] == "ok" {
            Ok(())
        } else {
            Err(StoreError::Corrupt(report.join("; ")))
        }
    }
}

fn body_weight(body: &MessageBody) -> usize {
    match body {
        MessageBody::Inline(b) => b.len(),
        MessageBody::Staged(_) => 0,
    }
}

impl Store for SqliteStore {
    async fn create_user(
        &self,
        user: NewUser,
        invite: Option<[u8; 32]>,
        now: u64,
    ) -> Result<(), StoreError> {
        self.write(0, move |c| ops::create_user(c, &user, invite, now))
            .await
    }

    async fn user(&self, account: &str) -> Result<Option<User>, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::user(c, &account)).await
    }

    async fn list_users(&self) -> Result<Vec<UserSummary>, StoreError> {
        self.read(ops::list_users).await
    }

    async fn ksf_histogram(&self) -> Result<Vec<([u8; 12], u64)>, StoreError> {
        self.read(ops::ksf_histogram).await
    }

    async fn delete_user(&self, account: &str) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| ops::delete_user(c, &account)).await
    }

    async fn update_credentials(
        &self,
        account: &str,
        credentials: Credentials,
        now: u64,
    ) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| {
            ops::update_credentials(c, &account, &credentials, now)
        })
        .await
    }

    async fn set_quota(&self, account: &str, quota: Option<u64>) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| ops::set_quota(c, &account, quota))
            .await
    }

    async fn quota(&self, account: &str) -> Result<Option<Option<u64>>, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::quota(c, &account)).await
    }

    async fn mailbox_usage(&self, account: &str) -> Result<MailboxUsage, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::mailbox_usage(c, &account)).await
    }

    async fn claim_quota_notice(
        &self,
        account: &str,
        now: u64,
        interval: u64,
    ) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| {
            ops::claim_quota_notice(c, &account, now, interval)
        })
        .await
    }

    async fn unlock_user(&self, account: &str, now: u64) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| ops::unlock_user(c, &account, now))
            .await
    }

    async fn unlocks_after(&self, after: u64) -> Result<Vec<Unlock>, StoreError> {
        self.read(move |c| ops::unlocks_after(c, after)).await
    }

    async fn add_alias(&self, alias: &str, account: &str, now: u64) -> Result<(), StoreError> {
        let (alias, account) = (alias.to_owned(), account.to_owned());
        self.write(0, move |c| ops::add_alias(c, &alias, &account, now))
            .await
    }

    async fn remove_alias(&self, alias: &str) -> Result<bool, StoreError> {
        let alias = alias.to_owned();
        self.write(0, move |c| ops::remove_alias(c, &alias)).await
    }

    async fn list_aliases(&self) -> Result<Vec<Alias>, StoreError> {
        self.read(ops::list_aliases).await
    }

    async fn resolve_account(&self, name: &str) -> Result<Option<String>, StoreError> {
        let name = name.to_owned();
        self.read(move |c| ops::resolve_account(c, &name)).await
    }

    async fn create_reset(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| {
            ops::create_reset(c, &account, token_hash, expires_at, now)
        })
        .await
    }

    async fn reset_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::reset_valid(c, &account, token_hash, now))
            .await
    }

    async fn reset_user(
        &self,
        account: &str,
        token_hash: [u8; 32],
        identity_pk: [u8; 32],
        credentials: Credentials,
        now: u64,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| {
            ops::reset_user(c, &account, token_hash, identity_pk, &credentials, now)
        })
        .await
    }

    async fn create_invite(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| {
            ops::create_invite(c, &account, token_hash, expires_at, now)
        })
        .await
    }

    async fn invite_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::invite_valid(c, &account, token_hash, now))
            .await
    }

    async fn purge_expired(
        &self,
        now: u64,
        retention: Retention,
    ) -> Result<PurgeReport, StoreError> {
        let report = self
            .write(0, move |c| ops::purge_expired(c, now, retention))
            .await?;
        // Then chunks a crash or a failed removal left in the bodies
        // database: the writer removes those whose blob the committed
        // database lacks once the batch noting them commits. Best effort:
        // the purge above is done whatever becomes of this.
        let noted = match self.read(ops::bodies_orphans).await {
            Ok(orphans) if orphans.is_empty() => Ok(()),
            Ok(orphans) => self.write(0, move |c| c.note_gone(&orphans)).await,
            Err(e) => Err(e),
        };
        if let Err(e) = noted {
            tracing::warn!(error = %e, "cannot look for the chunks of deleted blobs now");
        }
        Ok(report)
    }

    async fn secret_get_or_init(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> Result<Vec<u8>, StoreError> {
        let name = name.to_owned();
        let lookup = name.clone();
        if let Some(value) = self.read(move |c| ops::secret_get(c, &lookup)).await? {
            return Ok(value);
        }
        self.write(candidate.len(), move |c| {
            ops::secret_get_or_init(c, &name, &candidate)
        })
        .await
    }

    async fn put_key_statement(
        &self,
        account: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        self.write(statement.len(), move |c| {
            ops::put_key_statement(c, &account, &statement, expires_at)
        })
        .await
    }

    async fn key_statement(&self, account: &str) -> Result<Option<KeyStatement>, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::key_statement(c, &account)).await
    }

    async fn stage_begin(&self, now: u64) -> Result<StagedBlob, StoreError> {
        self.write(0, move |c| ops::stage_begin(c, now)).await
    }

    async fn stage_append(&self, blob: &StagedBlob, chunk: Bytes) -> Result<(), StoreError> {
        let id = blob.id;
        self.write(chunk.len(), move |c| ops::stage_append(c, id, &chunk))
            .await
    }

    async fn stage_abort(&self, blob: &StagedBlob) -> Result<bool, StoreError> {
        let id = blob.id;
        self.write(0, move |c| ops::stage_abort(c, id)).await
    }

    async fn read_chunk(&self, blob: BlobRef, seq: u32) -> Result<Option<Bytes>, StoreError> {
        self.read(move |c| ops::read_chunk(c, blob.id, seq)).await
    }

    async fn deliver(&self, delivery: NewDelivery) -> Result<Delivered, StoreError> {
        self.write(body_weight(&delivery.body), move |c| {
            ops::deliver(c, &delivery)
        })
        .await
    }

    async fn deliver_into(
        &self,
        delivery: NewDelivery,
        folder: &str,
        flags: u32,
    ) -> Result<Delivered, StoreError> {
        let folder = folder.to_owned();
        self.write(body_weight(&delivery.body), move |c| {
            ops::deliver_into(c, &delivery, &folder, flags)
        })
        .await
    }

    async fn mailbox_page(
        &self,
        account: &str,
        before: u64,
        limit: usize,
    ) -> Result<MailboxPage, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::mailbox_page(c, &account, before, limit))
            .await
    }

    async fn mailbox_changes(
        &self,
        account: &str,
        since: u64,
        limit: usize,
    ) -> Result<MailboxChanges, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::mailbox_changes(c, &account, since, limit))
            .await
    }

    async fn set_flags(
        &self,
        account: &str,
        ids: Vec<u64>,
        set: u32,
        clear: u32,
    ) -> Result<FlagsChanged, StoreError> {
        let account = account.to_owned();
        self.write(ids.len() * 8, move |c| {
            ops::set_flags(c, &account, &ids, set, clear)
        })
        .await
    }

    async fn move_messages(
        &self,
        account: &str,
        ids: Vec<u64>,
        folder: &str,
    ) -> Result<FlagsChanged, StoreError> {
        let (account, folder) = (account.to_owned(), folder.to_owned());
        self.write(ids.len() * 8 + folder.len(), move |c| {
            ops::move_messages(c, &account, &ids, &folder)
        })
        .await
    }

    async fn list_mailbox(&self, account: &str) -> Result<Vec<MailboxEntry>, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::list_mailbox(c, &account)).await
    }

    async fn mailbox_message(
        &self,
        account: &str,
        id: u64,
    ) -> Result<Option<(MailboxEntry, BlobRef)>, StoreError> {
        let account = account.to_owned();
        self.read(move |c| ops::mailbox_message(c, &account, id))
            .await
    }

    async fn delete_message(&self, account: &str, id: u64) -> Result<bool, StoreError> {
        let account = account.to_owned();
        self.write(0, move |c| ops::delete_message(c, &account, id))
            .await
    }

    async fn enqueue(&self, item: NewOutbound) -> Result<Enqueued, StoreError> {
        self.write(body_weight(&item.body), move |c| ops::enqueue(c, &item))
            .await
    }

    async fn lease_due(
        &self,
        now: u64,
        node: &str,
        lease_until: u64,
        limit: usize,
    ) -> Result<Vec<OutboundEntry>, StoreError> {
        let node = node.to_owned();
        self.write(0, move |c| {
            ops::lease_due(c, now, &node, lease_until, limit)
        })
        .await
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
        let node = node.to_owned();
        let in_flight = in_flight.to_vec();
        self.write(0, move |c| {
            ops::lease_due_per_domain(c, now, &node, lease_until, limit, per_domain, &in_flight)
        })
        .await
    }

    async fn defer_domain(&self, domain: &str, now: u64, until: u64) -> Result<u64, StoreError> {
        let domain = domain.to_owned();
        self.write(0, move |c| ops::defer_domain(c, &domain, now, until))
            .await
    }

    async fn complete(&self, id: u64, node: &str) -> Result<bool, StoreError> {
        let node = node.to_owned();
        self.write(0, move |c| ops::complete(c, id, &node)).await
    }

    async fn retry_later(
        &self,
        id: u64,
        node: &str,
        next_attempt_at: u64,
        error: &str,
    ) -> Result<bool, StoreError> {
        let node = node.to_owned();
        let error = error.to_owned();
        self.write(0, move |c| {
            ops::retry_later(c, id, &node, next_attempt_at, &error)
        })
        .await
    }

    async fn fail_with_notice(
        &self,
        id: u64,
        node: &str,
        error: &str,
        notice: NewDelivery,
    ) -> Result<bool, StoreError> {
        let node = node.to_owned();
        let done = self
            .write(body_weight(&notice.body), move |c| {
                ops::fail_with_notice(c, id, &node, &notice)
            })
            .await?;
        if done {
            tracing::info!(id, error, "relay gave up; failure notice delivered");
        }
        Ok(done)
    }

    async fn list_queue(&self) -> Result<Vec<OutboundEntry>, StoreError> {
        self.read(ops::list_queue).await
    }

    async fn queue_entry(&self, id: u64) -> Result<Option<OutboundEntry>, StoreError> {
        self.read(move |c| ops::queue_entry(c, id)).await
    }

    async fn delete_queued(&self, id: u64) -> Result<bool, StoreError> {
        self.write(0, move |c| ops::delete_queued(c, id)).await
    }

    async fn set_held(&self, id: u64, held: bool) -> Result<bool, StoreError> {
        self.write(0, move |c| ops::set_held(c, id, held)).await
    }

    async fn retry_now(&self, id: u64, now: u64) -> Result<bool, StoreError> {
        self.write(0, move |c| ops::retry_now(c, id, now)).await
    }

    async fn retry_all_now(&self, now: u64) -> Result<u64, StoreError> {
        self.write(0, move |c| ops::retry_all_now(c, now)).await
    }

    async fn size(&self) -> Result<u64, StoreError> {
        let path = self.inner.path.clone();
        let measure = move || {
            let mut total = 0;
            for (i, p) in store_files(&path).iter().enumerate() {
                match std::fs::metadata(p) {
                    Ok(m) => total += m.len(),
                    // The database itself must be there.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && i != 0 => {}
                    Err(e) => return Err(StoreError::Io(format!("{}: {e}", p.display()))),
                }
            }
            Ok(total)
        };
        match tokio::task::spawn_blocking(measure).await {
            Ok(r) => r,
            Err(e) => Err(StoreError::Internal(format!("measuring the database: {e}"))),
        }
    }

    async fn queue_stats(&self, now: u64) -> Result<QueueStats, StoreError> {
        self.read(move |c| ops::queue_stats(c, now)).await
    }

    async fn pin(&self, domain: &str) -> Result<Option<Pin>, StoreError> {
        let domain = domain.to_owned();
        self.read(move |c| ops::pin(c, &domain)).await
    }

    async fn set_pin(&self, domain: &str, key: [u8; 32], now: u64) -> Result<(), StoreError> {
        let domain = domain.to_owned();
        self.write(0, move |c| ops::set_pin(c, &domain, key, now))
            .await
    }

    async fn cache_statement(
        &self,
        account: &str,
        domain: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> Result<(), StoreError> {
        let account = account.to_owned();
        let domain = domain.to_owned();
        self.write(statement.len(), move |c| {
            ops::cache_statement(c, &account, &domain, &statement, expires_at)
        })
        .await
    }

    async fn cached_statement(
        &self,
        account: &str,
        domain: &str,
        now: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let account = account.to_owned();
        let domain = domain.to_owned();
        self.read(move |c| ops::cached_statement(c, &account, &domain, now))
            .await
    }
}
