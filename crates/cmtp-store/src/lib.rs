//! `cmtp-store`: everything cmtpd keeps, behind one interface.
//!
//! The server (`cmtp-server`, `cmtpd`) never talks to a database directly:
//! it calls the [`Store`] trait — users and invites, server secrets, key
//! statements, mailboxes with de-duplication, the outbound relay queue with
//! leases, pinned remote server keys, the remote key statement cache.
//! Backends implement the trait; [`AnyStore`] picks one from a
//! [`StoreConfig`] and implements [`Store`] by delegation:
//!
//! - [`SqliteStore`] (feature `sqlite`, the default): the embedded backend,
//!   one database file in the data directory, nothing to install.
//! - PostgreSQL (feature `postgres`): several stateless cmtpd nodes sharing
//!   one database. Not written yet; the interface has nothing SQLite-specific
//!   so that it can be added as one more [`AnyStore`] variant.
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
//! The SQLite database runs in WAL mode with `synchronous=FULL`. One writer
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
#![forbid(unsafe_code)]

#[cfg(not(feature = "sqlite"))]
compile_error!("cmtp-store needs the `sqlite` feature (the PostgreSQL backend is not written yet)");

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
mod error;
#[cfg(feature = "sqlite")]
mod sqlite;
mod store;
mod types;

pub use error::StoreError;
#[cfg(feature = "sqlite")]
pub use sqlite::{SqliteConfig, SqliteStore};
pub use store::{AnyStore, BlobReader, Store, StoreConfig};
pub use types::{
    BlobRef, Credentials, Delivered, Enqueued, KeyStatement, MAX_CHUNK, MailboxEntry, MessageBody,
    NewDelivery, NewOutbound, NewUser, OutboundEntry, Pin, PurgeReport, QueueStats, Retention,
    StagedBlob, User, UserSummary,
};
