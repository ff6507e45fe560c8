//! The SQLite schema and its migrations.

use rusqlite::{Connection, OptionalExtension};

use super::DbResult;
use crate::error::StoreError;

/// The schema version this build writes. Bump it with a new entry in
/// [`MIGRATIONS`].
pub(crate) const SCHEMA_VERSION: u32 = 3;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`; entry 0
/// creates the first schema in an empty database.
const MIGRATIONS: &[&str] = &[V1, V2, V3];

/// Version 1.
///
/// Message bytes live in `blob_chunks` (rows of at most 1 MiB), owned by one
/// `blobs` row each; a blob is either staged (`staged_at` set: being
/// uploaded, not yet referenced) or owned by exactly one mailbox or outbound
/// row. Ids of `mailbox`, `outbound` and `blobs` are AUTOINCREMENT so they
/// are never reused. `delivered` is the de-duplication index; it outlives
/// mailbox entries (and their users) until `purge_expired`.
pub(crate) const V1: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE users (
    account       TEXT PRIMARY KEY NOT NULL,
    identity_pk   BLOB NOT NULL,
    opaque_record BLOB NOT NULL,
    ksf           BLOB NOT NULL,
    xzibit        BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
);

CREATE TABLE invites (
    token_hash BLOB PRIMARY KEY NOT NULL,
    account    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX invites_account ON invites(account);
CREATE INDEX invites_expiry ON invites(expires_at);

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY NOT NULL,
    value BLOB NOT NULL
);

CREATE TABLE key_statements (
    account    TEXT PRIMARY KEY NOT NULL REFERENCES users(account) ON DELETE CASCADE,
    statement  BLOB NOT NULL,
    expires_at INTEGER NOT NULL
);

CREATE TABLE blobs (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    size      INTEGER NOT NULL,
    chunks    INTEGER NOT NULL,
    staged_at INTEGER
);
CREATE INDEX blobs_staged ON blobs(staged_at) WHERE staged_at IS NOT NULL;

CREATE TABLE blob_chunks (
    blob_id INTEGER NOT NULL REFERENCES blobs(id) ON DELETE CASCADE,
    seq     INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (blob_id, seq)
);

CREATE TABLE mailbox (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    account          TEXT NOT NULL REFERENCES users(account),
    hash             BLOB NOT NULL,
    source           TEXT NOT NULL,
    received_at      INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    attachment_count INTEGER NOT NULL,
    size             INTEGER NOT NULL,
    blob_id          INTEGER NOT NULL REFERENCES blobs(id)
);
CREATE INDEX mailbox_account ON mailbox(account, id);
CREATE INDEX mailbox_blob ON mailbox(blob_id);

CREATE TABLE delivered (
    hash       BLOB PRIMARY KEY NOT NULL,
    account    TEXT NOT NULL,
    message_id INTEGER NOT NULL,
    at         INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX delivered_at ON delivered(at);

CREATE TABLE outbound (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    hash            BLOB NOT NULL UNIQUE,
    sender          TEXT NOT NULL,
    destination     TEXT NOT NULL,
    dest_domain     TEXT NOT NULL,
    size            INTEGER NOT NULL,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     INTEGER,
    blob_id         INTEGER NOT NULL REFERENCES blobs(id)
);
CREATE INDEX outbound_due ON outbound(next_attempt_at);
CREATE INDEX outbound_blob ON outbound(blob_id);

CREATE TABLE pins (
    domain     TEXT PRIMARY KEY NOT NULL,
    key        BLOB NOT NULL,
    first_seen INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE statement_cache (
    account    TEXT NOT NULL,
    domain     TEXT NOT NULL,
    statement  BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (account, domain)
);
CREATE INDEX statement_cache_expiry ON statement_cache(expires_at);
";

/// Version 2: administration. Mailbox quotas and the time of the last
/// "mailbox full" notice on `users`; queue entries an administrator holds;
/// aliases (another name of an account); reset tokens (a new password and
/// key for an account); unlock records (cleared login rate limits, applied
/// by every node that has not seen them).
const V2: &str = "
ALTER TABLE users ADD COLUMN quota INTEGER;
ALTER TABLE users ADD COLUMN quota_notice_at INTEGER;
ALTER TABLE outbound ADD COLUMN held INTEGER NOT NULL DEFAULT 0;

CREATE TABLE aliases (
    alias      TEXT PRIMARY KEY NOT NULL,
    account    TEXT NOT NULL REFERENCES users(account) ON DELETE CASCADE,
    created_at INTEGER NOT NULL
);
CREATE INDEX aliases_account ON aliases(account);

CREATE TABLE reset_tokens (
    token_hash BLOB PRIMARY KEY NOT NULL,
    account    TEXT NOT NULL REFERENCES users(account) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX reset_tokens_account ON reset_tokens(account);
CREATE INDEX reset_tokens_expiry ON reset_tokens(expires_at);

CREATE TABLE unlocks (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    account TEXT NOT NULL,
    at      INTEGER NOT NULL
);
";

/// Version 3: the relay's per-destination queries (deferring every entry
/// of an unreachable domain, leasing per domain) find a domain's entries in
/// due order without reading the whole queue.
const V3: &str = "
CREATE INDEX outbound_domain_due ON outbound(dest_domain, next_attempt_at);
";

/// Creates the schema in an empty database, or brings an older one up to
/// [`SCHEMA_VERSION`], in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .db()?;
    let has_table: bool = tx
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version')",
            [],
            |r| r.get(0),
        )
        .db()?;
    let current: u32 = if has_table {
        tx.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()
            .db()?
            .ok_or_else(|| StoreError::Corrupt("schema_version is empty".into()))?
    } else {
        let tables: i64 = tx
            .query_row(
                "SELECT COUNT(*) FROM sqlite_schema WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                [],
                |r| r.get(0),
            )
            .db()?;
        if tables != 0 {
            return Err(StoreError::Corrupt(
                "the file holds tables but no schema_version: not a cmtpd database".into(),
            ));
        }
        0
    };
    if current > SCHEMA_VERSION {
        return Err(StoreError::SchemaTooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    for (from, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tracing::info!(from, to = from + 1, "migrating the database schema");
        tx.execute_batch(sql).db()?;
    }
    if current == 0 {
        tx.execute(
            "INSERT INTO schema_version (version) VALUES (?1)",
            [SCHEMA_VERSION],
        )
        .db()?;
    } else if current < SCHEMA_VERSION {
        tx.execute("UPDATE schema_version SET version = ?1", [SCHEMA_VERSION])
            .db()?;
    }
    tx.commit().db()
}
