//! The PostgreSQL schema and its migrations.
//!
//! Several nodes may start at the same moment on one empty (or older)
//! database. Each runs the migration in one transaction that first takes a
//! transaction-level advisory lock ([`MIGRATION_LOCK`]): the first node
//! creates or upgrades the schema and commits, which releases the lock; the
//! others wait for it, then find the schema current and do nothing. Because
//! DDL is transactional in PostgreSQL, a node that dies mid-migration leaves
//! the previous schema intact.

use tokio_postgres::Client;

use super::DbResult;
use crate::error::StoreError;

/// The schema version this build writes. Bump it with a new entry in
/// [`MIGRATIONS`].
pub(crate) const SCHEMA_VERSION: u32 = 6;

/// The key of the advisory lock held while migrating ("cmtpschm"). Advisory
/// locks are per database, so stores on other databases of the same cluster
/// do not wait for each other.
pub(crate) const MIGRATION_LOCK: i64 = 0x636d_7470_7363_686d;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`; entry 0
/// creates the first schema in an empty database (in the first schema of the
/// connection's `search_path`).
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6];

/// Version 1: the SQLite schema, in PostgreSQL types.
///
/// Message bytes live in `blob_chunks` (rows of at most 1 MiB, stored
/// uncompressed out of line: they are encrypted, compression would only cost
/// CPU), owned by one `blobs` row each; a blob is either staged (`staged_at`
/// set) or owned by exactly one mailbox or outbound row. Ids come from
/// sequences (never reused). `delivered` is the de-duplication index; it
/// outlives mailbox entries (and their users) until `purge_expired`. The
/// outbound lease is `(lease_owner, lease_until)`. Times, sizes and counts
/// are BIGINT (unix seconds, bytes).
pub(crate) const V1: &str = "
CREATE TABLE schema_version (
    version INTEGER NOT NULL
);

CREATE TABLE users (
    account       TEXT PRIMARY KEY,
    identity_pk   BYTEA NOT NULL,
    opaque_record BYTEA NOT NULL,
    ksf           BYTEA NOT NULL,
    xzibit        BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);

CREATE TABLE invites (
    token_hash BYTEA PRIMARY KEY,
    account    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX invites_account ON invites (account);
CREATE INDEX invites_expiry ON invites (expires_at);

CREATE TABLE secrets (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

CREATE TABLE key_statements (
    account    TEXT PRIMARY KEY REFERENCES users (account) ON DELETE CASCADE,
    statement  BYTEA NOT NULL,
    expires_at BIGINT NOT NULL
);

CREATE TABLE blobs (
    id        BIGSERIAL PRIMARY KEY,
    size      BIGINT NOT NULL,
    chunks    BIGINT NOT NULL,
    staged_at BIGINT
);
CREATE INDEX blobs_staged ON blobs (staged_at) WHERE staged_at IS NOT NULL;

CREATE TABLE blob_chunks (
    blob_id BIGINT NOT NULL REFERENCES blobs (id) ON DELETE CASCADE,
    seq     BIGINT NOT NULL,
    data    BYTEA NOT NULL,
    PRIMARY KEY (blob_id, seq)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

CREATE TABLE mailbox (
    id               BIGSERIAL PRIMARY KEY,
    account          TEXT NOT NULL REFERENCES users (account),
    hash             BYTEA NOT NULL,
    source           TEXT NOT NULL,
    received_at      BIGINT NOT NULL,
    version          BIGINT NOT NULL,
    attachment_count BIGINT NOT NULL,
    size             BIGINT NOT NULL,
    blob_id          BIGINT NOT NULL REFERENCES blobs (id)
);
CREATE INDEX mailbox_account ON mailbox (account, id);
CREATE INDEX mailbox_blob ON mailbox (blob_id);

CREATE TABLE delivered (
    hash       BYTEA PRIMARY KEY,
    account    TEXT NOT NULL,
    message_id BIGINT NOT NULL,
    at         BIGINT NOT NULL
);
CREATE INDEX delivered_at ON delivered (at);

CREATE TABLE outbound (
    id              BIGSERIAL PRIMARY KEY,
    hash            BYTEA NOT NULL UNIQUE,
    sender          TEXT NOT NULL,
    destination     TEXT NOT NULL,
    dest_domain     TEXT NOT NULL,
    size            BIGINT NOT NULL,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    lease_owner     TEXT,
    lease_until     BIGINT,
    blob_id         BIGINT NOT NULL REFERENCES blobs (id)
);
CREATE INDEX outbound_due ON outbound (next_attempt_at, id);
CREATE INDEX outbound_blob ON outbound (blob_id);

CREATE TABLE pins (
    domain     TEXT PRIMARY KEY,
    key        BYTEA NOT NULL,
    first_seen BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE statement_cache (
    account    TEXT NOT NULL,
    domain     TEXT NOT NULL,
    statement  BYTEA NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (account, domain)
);
CREATE INDEX statement_cache_expiry ON statement_cache (expires_at);
";

/// Version 2: administration, as in the SQLite schema: quotas and the last
/// "mailbox full" notice on `users`, held queue entries, aliases, reset
/// tokens and unlock records.
const V2: &str = "
ALTER TABLE users ADD COLUMN quota BIGINT;
ALTER TABLE users ADD COLUMN quota_notice_at BIGINT;
ALTER TABLE outbound ADD COLUMN held BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE aliases (
    alias      TEXT PRIMARY KEY,
    account    TEXT NOT NULL REFERENCES users (account) ON DELETE CASCADE,
    created_at BIGINT NOT NULL
);
CREATE INDEX aliases_account ON aliases (account);

CREATE TABLE reset_tokens (
    token_hash BYTEA PRIMARY KEY,
    account    TEXT NOT NULL REFERENCES users (account) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX reset_tokens_account ON reset_tokens (account);
CREATE INDEX reset_tokens_expiry ON reset_tokens (expires_at);

CREATE TABLE unlocks (
    id      BIGSERIAL PRIMARY KEY,
    account TEXT NOT NULL,
    at      BIGINT NOT NULL
);
";

/// Version 3: the relay's per-destination queries (deferring every entry
/// of an unreachable domain, leasing per domain) find a domain's entries in
/// due order without reading the whole queue.
const V3: &str = "
CREATE INDEX outbound_domain_due ON outbound (dest_domain, next_attempt_at);
";

/// Version 4: per-user mailboxes (PROTOCOL.md §13.1), as in SQLite's
/// version 4: each entry gets a per-user id `uid`, flag bits, a folder and
/// the modseq of its last change; `mailbox_state` holds each account's last
/// uid and modseq, and (its sequence id, never reused) the epoch;
/// `mailbox_gone` the tombstones of removed entries. Existing entries are
/// numbered per account in the order they arrived, with modseq = uid.
const V4: &str = "
ALTER TABLE mailbox
    ADD COLUMN uid BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN modseq BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN flags BIGINT NOT NULL DEFAULT 0,
    ADD COLUMN folder TEXT NOT NULL DEFAULT 'Inbox';
UPDATE mailbox SET uid = r.n, modseq = r.n
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY account ORDER BY id) AS n FROM mailbox) AS r
WHERE mailbox.id = r.id;
CREATE UNIQUE INDEX mailbox_uid ON mailbox (account, uid);
CREATE INDEX mailbox_modseq ON mailbox (account, modseq);

CREATE TABLE mailbox_state (
    id       BIGSERIAL PRIMARY KEY,
    account  TEXT NOT NULL UNIQUE REFERENCES users (account),
    last_uid BIGINT NOT NULL,
    modseq   BIGINT NOT NULL
);
INSERT INTO mailbox_state (account, last_uid, modseq)
SELECT u.account, COALESCE(MAX(m.uid), 0), COALESCE(MAX(m.uid), 0)
FROM users u LEFT JOIN mailbox m ON m.account = u.account
GROUP BY u.account ORDER BY u.account;

CREATE TABLE mailbox_gone (
    account TEXT NOT NULL,
    uid     BIGINT NOT NULL,
    modseq  BIGINT NOT NULL,
    PRIMARY KEY (account, uid)
);
CREATE INDEX mailbox_gone_modseq ON mailbox_gone (account, modseq);
";

/// Version 5: the key directory (PROTOCOL.md §20), as in SQLite's version 5.
const V5: &str = "
CREATE TABLE kt_nodes (
    id   BYTEA PRIMARY KEY,
    data BYTEA NOT NULL
);

CREATE TABLE kt_values (
    label          BYTEA NOT NULL,
    epoch          BIGINT NOT NULL,
    version        BIGINT NOT NULL,
    value          BYTEA NOT NULL,
    node_label     BYTEA NOT NULL,
    node_label_len BIGINT NOT NULL,
    PRIMARY KEY (label, epoch)
);

CREATE TABLE kt_heads (
    epoch BIGINT PRIMARY KEY,
    head  BYTEA NOT NULL
);

CREATE TABLE kt_cosignatures (
    epoch       BIGINT NOT NULL,
    witness     TEXT NOT NULL,
    cosignature BYTEA NOT NULL,
    PRIMARY KEY (epoch, witness)
);

CREATE TABLE kt_witnessed (
    domain TEXT PRIMARY KEY,
    epoch  BIGINT NOT NULL,
    head   BYTEA NOT NULL
);

CREATE TABLE kt_evidence (
    domain   TEXT PRIMARY KEY,
    evidence BYTEA NOT NULL,
    found_at BIGINT NOT NULL
);

CREATE TABLE kt_publisher (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    node  TEXT NOT NULL,
    until BIGINT NOT NULL
);
";

/// Version 6: the index `mailbox_account` (account, id) goes. Since version
/// 4 every query of one account's mailbox uses `mailbox_uid` (account, uid)
/// or `mailbox_modseq` (account, modseq), and each delivery paid for an
/// index nothing read (docs/BENCHMARKS.md, issue 17).
const V6: &str = "
DROP INDEX IF EXISTS mailbox_account;
";

/// Creates the schema in an empty database, or brings an older one up to
/// [`SCHEMA_VERSION`], in one transaction under the advisory lock.
pub(crate) async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.db()?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .db()?;
    let has_table: bool = tx
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .db()?
        .try_get(0)
        .db()?;
    let current: u32 = if has_table {
        let rows = tx
            .query("SELECT version FROM schema_version", &[])
            .await
            .db()?;
        let [row] = rows.as_slice() else {
            return Err(StoreError::Corrupt(format!(
                "schema_version holds {} rows instead of one",
                rows.len()
            )));
        };
        let v: i32 = row.try_get(0).db()?;
        u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("schema_version is {v}")))?
    } else {
        let tables: i64 = tx
            .query_one(
                "SELECT COUNT(*) FROM pg_catalog.pg_tables WHERE schemaname = current_schema()",
                &[],
            )
            .await
            .db()?
            .try_get(0)
            .db()?;
        if tables != 0 {
            return Err(StoreError::Corrupt(
                "the schema holds tables but no schema_version: not a cmtpd database \
                 (give cmtpd a database or a schema of its own)"
                    .into(),
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
        tracing::info!(from, to = from + 1, "migrating the PostgreSQL schema");
        tx.batch_execute(sql).await.db()?;
    }
    let version = i32::try_from(SCHEMA_VERSION).unwrap_or(i32::MAX);
    if current == 0 {
        tx.execute(
            "INSERT INTO schema_version (version) VALUES ($1)",
            &[&version],
        )
        .await
        .db()?;
    } else if current < SCHEMA_VERSION {
        tx.execute("UPDATE schema_version SET version = $1", &[&version])
            .await
            .db()?;
    }
    tx.commit().await.db()
}
