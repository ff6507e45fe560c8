//! `cmtp-store`: everything cmtpd keeps, behind one interface.
//!
//! The server (`cmtp-server`, `cmtpd`) never talks to a database directly:
//! it calls the [`Store`] trait — users and invites, quotas, aliases, reset
//! tokens and unlock records, server secrets, key statements, mailboxes with
//! de-duplication, the outbound relay queue with leases (and entries an
//! administrator holds), pinned remote server keys, the remote key
//! statement cache — and, behind [`KtStore`], the key directory (akd's
//! records, signed epoch heads, cosignatures, what this server witnessed).
//! [`sqlite_backup`] takes online backups of the SQLite database.
//! Backends implement the trait; [`AnyStore`] picks one from a
//! [`StoreConfig`] and implements [`Store`] by delegation:
//!
//! - [`SqliteStore`] (feature `sqlite`): the embedded backend, one
//!   database file in the data directory, nothing to install.
//! - [`PostgresStore`] (feature `postgres`): several stateless cmtpd nodes
//!   sharing one PostgreSQL database (and one server key) for one domain.
//!
//! Both features are on by default, so one `cmtpd` binary serves either;
//! the configuration chooses ([`StoreConfig::Sqlite`] or
//! [`StoreConfig::Postgres`]).
//!
//! # Which backend
//!
//! - **SQLite** for a single node — the usual case up to a large domain. It
//!   is faster per machine (no network round trips; group commit, see
//!   below), needs no administration, and its backup is one file. One node
//!   means no redundancy: while it is down, senders' relays queue and retry.
//! - **PostgreSQL** when the domain must survive the loss of a node, or
//!   needs more than one machine: every node runs the same configuration
//!   against one database; any node accepts mail, serves mailboxes and
//!   relays. The database is then the one thing to make highly available
//!   (replication, fail-over), with PostgreSQL's own tools. One machine
//!   delivers about as fast as with SQLite to a single caller, but about
//!   half as fast under heavy concurrency (every delivery is a round trip
//!   and a commit of its own; see the figures below); nodes add up until
//!   the database's disk or CPU is the limit.
//!
//! Every backend must pass the same conformance suite
//! (`cmtp_store::conformance`, feature `conformance`).
//!
//! # Guarantees
//!
//! - A method that changes something is all or nothing, and durable once its
//!   future resolves `Ok`: `deliver` and `enqueue` returning `Ok` is what
//!   allows the server to answer SUCCESS.
//! - Errors say whether a retry can help ([`StoreError::is_transient`]): a
//!   full disk is transient, leaves the database intact, and the store works
//!   again once space returns.
//! - The store never reads the clock; time is always a `now` argument (unix
//!   seconds).
//! - Message bytes live in the database, in chunks of at most [`MAX_CHUNK`]
//!   bytes, written and read one chunk at a time ([`BlobReader`]), so memory
//!   stays bounded whatever the message size. No name from the wire ever
//!   becomes a file path.
//!
//! # SQLite and group commit
//!
//! The SQLite database runs in WAL mode with `synchronous=FULL`. The
//! write-ahead log and its shared-memory index are kept when the store
//! closes, so that the store opens again, and serves reads, on a disk that
//! has filled up in the meantime; the log's content is checkpointed into the
//! database file by a thread beside the writer while the store runs, and as
//! the store closes, so the file alone is a complete copy of a stopped
//! store. One writer
//! thread owns the only write connection: it takes every write request
//! waiting (up to [`SqliteConfig::max_batch`] requests or
//! [`SqliteConfig::max_batch_bytes`]), runs them in one transaction — each
//! inside its own savepoint, so a request that fails alone is rolled back
//! alone — commits once, and only then answers each request. Reads run on a
//! pool of read-only connections on tokio's blocking threads.
//!
//! What a batch buys, measured with the ignored test
//! `group_commit_throughput` in `tests/sqlite.rs` (durable inline deliveries
//! of 1 KiB, release build, 2 cores shared with other builds, ext4 on a
//! virtual disk; indicative only, run it again on the target machine):
//!
//! | concurrent callers | quiet disk (fsync ≈ 0.35 ms) | busy disk (fsync ≈ 3 ms) |
//! |---:|---:|---:|
//! |  1 | 2,800–2,900 /s | 270–370 /s |
//! |  8 | 8,500 /s | 1,700–2,700 /s |
//! | 64 | 14,000–15,500 /s | 5,000–7,000 /s |
//!
//! One caller pays one fsync per delivery; with many callers one fsync
//! covers the whole batch, so throughput grows 5× on a quiet disk and 20×
//! on a busy one, and is then bound by CPU rather than by the disk.
//!
//! # PostgreSQL
//!
//! Each [`PostgresStore`] has its own pool of connections
//! ([`PostgresConfig::pool_size`], default 16; keep the sum over all nodes
//! under the server's `max_connections`). Every method is one statement or
//! one short transaction at PostgreSQL's default isolation (READ
//! COMMITTED); a commit returns once PostgreSQL has flushed its WAL
//! (`synchronous_commit` stays on — the store turns it back on for its own
//! sessions if the server has it off — and PostgreSQL flushes concurrent
//! commits together by itself). Concurrency between nodes is the database's:
//!
//! - de-duplication claims the hash (`INSERT ... ON CONFLICT DO NOTHING` on
//!   its primary key) in the transaction that stores the message: a second
//!   delivery of the same hash, on any node, waits for the first to commit
//!   and is then answered `duplicate` (or stores the message if the first
//!   failed). A valid inline delivery is one statement, one round trip;
//! - an invite is consumed in the transaction that creates the user;
//!   `secret_get_or_init` inserts with `ON CONFLICT DO NOTHING`, then reads;
//! - staged blobs are appended one chunk per statement; nothing ever holds a
//!   whole blob in memory; [`Store::stage_abort`] removes a refused upload
//!   with its chunks in one statement;
//! - the schema is created or migrated at start inside one transaction
//!   holding a transaction-level advisory lock (`pg_advisory_xact_lock`), so
//!   nodes starting together migrate once; a `schema_version` table records
//!   the version, and a newer one is refused
//!   ([`StoreError::SchemaTooNew`]). Unlike SQLite, abandoned staged blobs
//!   are not cleared at start (another node may be uploading): only
//!   [`Store::purge_expired`] removes them, after their grace period;
//! - errors PostgreSQL reports as retryable (serialization failure,
//!   deadlock, lock not available) are retried a few times inside the
//!   store (the transaction was rolled back, so that is safe); lost
//!   connections, pool timeouts, too many connections, a server shutting
//!   down map to [`StoreError::Unavailable`], a full disk (53100) to
//!   [`StoreError::Full`], I/O errors to [`StoreError::Io`], all transient;
//!   constraint violations and malformed data are permanent.
//!
//! TLS to the database is not supported yet: use a Unix socket or a trusted
//! network.
//!
//! # The relay queue and its leases
//!
//! The outbound queue is shared by all nodes. [`Store::lease_due`] hands due
//! entries that no administrator holds ([`Store::set_held`]) to a node until `lease_until`: an entry is handed to at most one
//! node while its lease is valid (`lease_until > now`), and to another node
//! once it has expired — that is how a node that died mid-delivery is taken
//! over. On PostgreSQL the due entries are picked with
//! `SELECT ... FOR UPDATE SKIP LOCKED` and leased in the same statement, so
//! nodes leasing at the same moment get disjoint entries without waiting for
//! each other. [`Store::complete`], [`Store::retry_later`] and
//! [`Store::fail_with_notice`] change an entry only while the caller is
//! still its `lease_owner`: once another node has taken it over they do
//! nothing and return `false` (a late `complete` from the old holder cannot
//! remove the entry the new holder is delivering). `fail_with_notice`
//! removes the entry and delivers the failure notice in one transaction.
//! [`Store::lease_due_per_domain`] leases at most so many entries per
//! destination domain (counting those the caller has in flight), so that one
//! slow or unreachable destination cannot hold every delivery slot while
//! mail for other domains waits, and [`Store::defer_domain`] postpones every
//! waiting entry of a destination found unreachable; both walk indexes
//! (`next_attempt_at`; `dest_domain, next_attempt_at`), not the whole table.
//! The store compares times but never reads the clock, so nodes must keep
//! their clocks in sync (NTP), and a lease must outlast the longest delivery
//! attempt; a delivery that outlives its lease may be attempted twice, and
//! the receiving server's de-duplication absorbs the second copy.
//!
//! PostgreSQL throughput, measured with the ignored test
//! `delivery_throughput` in `tests/postgres.rs` (durable inline deliveries
//! of 1 KiB; the throwaway PostgreSQL 15 cluster on the same machine as the
//! test, `fsync=on`, default settings; release build, 2 cores shared with
//! other builds and with PostgreSQL itself; indicative only):
//!
//! | concurrent callers | quiet disk | busy disk |
//! |---:|---:|---:|
//! |  1 | 2,400–2,900 /s | 300–550 /s |
//! |  8 | 5,900–7,500 /s | 1,900–2,900 /s |
//! | 64, pool of 16 | 6,800–8,000 /s | 2,400–3,600 /s |
//! | 64, pool of 64 | 4,700–5,800 /s | 3,200–3,850 /s |
//!
//! (SQLite in the same runs: 2,650–3,150, 7,700–8,650 and 11,600–16,400 /s
//! on the quiet disk; 375, 2,350 and 6,250 /s on the busy one.) One caller
//! costs one WAL flush per delivery, as on SQLite; concurrent callers share
//! flushes, until the two cores — shared by the test, the PostgreSQL
//! backends and its WAL writer — are the limit: then a pool larger than the
//! machine's cores only adds contention, unless the disk is slow. On a real
//! deployment the database has its own machine and each node adds its own
//! CPU.
#![forbid(unsafe_code)]

#[cfg(not(any(feature = "sqlite", feature = "postgres")))]
compile_error!(
    "cmtp-store needs a backend: enable the `sqlite` or the `postgres` feature (or both)"
);

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
pub mod kt;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod types;

pub use error::StoreError;
pub use kt::{KtPairs, KtRecord, KtStore, KtValueState};
#[cfg(feature = "postgres")]
pub use postgres::{PostgresConfig, PostgresStore};
#[cfg(feature = "sqlite")]
pub use sqlite::backup as sqlite_backup;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{AnyStore, BlobReader, Store, StoreConfig};
pub use types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, INBOX, KeyStatement, MAX_CHUNK,
    MailboxChange, MailboxChanges, MailboxEntry, MailboxPage, MailboxState, MailboxUsage,
    MessageBody, NewDelivery, NewOutbound, NewUser, OutboundEntry, Pin, PurgeReport, QueueStats,
    Retention, StagedBlob, Unlock, User, UserSummary,
};
