//! The SQLite schema and its migrations.

use rusqlite::{Connection, OptionalExtension};

use super::DbResult;
use crate::error::StoreError;

/// The schema version this build writes. Bump it with a new entry in
/// [`MIGRATIONS`].
pub(crate) const SCHEMA_VERSION: u32 = 7;

/// `MIGRATIONS[n]` takes the schema from version `n` to `n + 1`; entry 0
/// creates the first schema in an empty database.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7];

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

/// Version 4: per-user mailboxes (PROTOCOL.md §13.1).
///
/// Each mailbox entry gets a per-user id `uid` (1 for the account's first
/// message), flag bits, a folder and the modification sequence of its last
/// change. `mailbox_state` holds each account's counters: the last uid
/// given, the modseq, and (its AUTOINCREMENT row id, never reused) the
/// epoch of the id space. A removed entry leaves a tombstone in
/// `mailbox_gone`. Existing entries are numbered per account in the order
/// they arrived, with modseq = uid.
const V4: &str = "
ALTER TABLE mailbox ADD COLUMN uid INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mailbox ADD COLUMN modseq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mailbox ADD COLUMN flags INTEGER NOT NULL DEFAULT 0;
ALTER TABLE mailbox ADD COLUMN folder TEXT NOT NULL DEFAULT 'Inbox';
UPDATE mailbox SET uid = r.n, modseq = r.n
FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY account ORDER BY id) AS n FROM mailbox) AS r
WHERE mailbox.id = r.id;
CREATE UNIQUE INDEX mailbox_uid ON mailbox(account, uid);
CREATE INDEX mailbox_modseq ON mailbox(account, modseq);

CREATE TABLE mailbox_state (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    account  TEXT NOT NULL UNIQUE REFERENCES users(account),
    last_uid INTEGER NOT NULL,
    modseq   INTEGER NOT NULL
);
INSERT INTO mailbox_state (account, last_uid, modseq)
SELECT u.account, COALESCE(MAX(m.uid), 0), COALESCE(MAX(m.uid), 0)
FROM users u LEFT JOIN mailbox m ON m.account = u.account
GROUP BY u.account ORDER BY u.account;

CREATE TABLE mailbox_gone (
    account TEXT NOT NULL,
    uid     INTEGER NOT NULL,
    modseq  INTEGER NOT NULL,
    PRIMARY KEY (account, uid)
) WITHOUT ROWID;
CREATE INDEX mailbox_gone_modseq ON mailbox_gone(account, modseq);
";

/// Version 5: the key directory (PROTOCOL.md §20). `kt_nodes` holds akd's
/// tree nodes and tree record by id, `kt_values` each label's value states,
/// `kt_heads` the signed epoch heads and `kt_cosignatures` what witnesses
/// returned for them; `kt_witnessed` and `kt_evidence` are the witness's
/// side (the head cosigned last per domain, proofs of misbehaviour);
/// `kt_publisher` is the lease of the node that publishes epochs.
const V5: &str = "
CREATE TABLE kt_nodes (
    id   BLOB PRIMARY KEY NOT NULL,
    data BLOB NOT NULL
) WITHOUT ROWID;

CREATE TABLE kt_values (
    label          BLOB NOT NULL,
    epoch          INTEGER NOT NULL,
    version        INTEGER NOT NULL,
    value          BLOB NOT NULL,
    node_label     BLOB NOT NULL,
    node_label_len INTEGER NOT NULL,
    PRIMARY KEY (label, epoch)
) WITHOUT ROWID;

CREATE TABLE kt_heads (
    epoch INTEGER PRIMARY KEY NOT NULL,
    head  BLOB NOT NULL
);

CREATE TABLE kt_cosignatures (
    epoch       INTEGER NOT NULL,
    witness     TEXT NOT NULL,
    cosignature BLOB NOT NULL,
    PRIMARY KEY (epoch, witness)
) WITHOUT ROWID;

CREATE TABLE kt_witnessed (
    domain TEXT PRIMARY KEY NOT NULL,
    epoch  INTEGER NOT NULL,
    head   BLOB NOT NULL
);

CREATE TABLE kt_evidence (
    domain   TEXT PRIMARY KEY NOT NULL,
    evidence BLOB NOT NULL,
    found_at INTEGER NOT NULL
);

CREATE TABLE kt_publisher (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    node  TEXT NOT NULL,
    until INTEGER NOT NULL
);
";

/// Version 6: the index `mailbox_account` (account, id) goes. Since version
/// 4 every query of one account's mailbox uses `mailbox_uid` (account, uid)
/// or `mailbox_modseq` (account, modseq), and each delivery paid for an
/// index nothing read (docs/BENCHMARKS.md, issue 17).
const V6: &str = "
DROP INDEX IF EXISTS mailbox_account;
";

/// Version 7: staged blobs keep their chunks in the bodies database beside
/// the database (`PATH-bodies`, `super::bodies_path`); the database's own
/// `blob_chunks` keeps messages stored in one piece and every chunk written
/// before. Nothing changes in this file: the version tells an older build,
/// which would not find those chunks, that it cannot open the store.
const V7: &str = "";

/// The first version whose store has a bodies database beside it.
pub(crate) const BODIES_SINCE: u32 = 7;

/// The schema version of the database (0 for an empty file); an error for
/// a file that holds tables but is no cmtpd database.
pub(crate) fn current_version(conn: &Connection) -> Result<u32, StoreError> {
    let has_table: bool = conn
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'schema_version')",
            [],
            |r| r.get(0),
        )
        .db()?;
    let current: u32 = if has_table {
        conn.query_row("SELECT version FROM schema_version", [], |r| r.get(0))
            .optional()
            .db()?
            .ok_or_else(|| StoreError::Corrupt("schema_version is empty".into()))?
    } else {
        let tables: i64 = conn
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
    Ok(current)
}

/// Creates the schema in an empty database, or brings an older one up to
/// [`SCHEMA_VERSION`], in one transaction.
pub(crate) fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn
        .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
        .db()?;
    let current = current_version(&tx)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A version 1 database with mail is numbered per account on migration.
    #[test]
    fn version_1_mailboxes_get_per_user_ids() {
        let mut c = Connection::open_in_memory().unwrap();
        c.execute_batch(V1).unwrap();
        c.execute("INSERT INTO schema_version (version) VALUES (1)", [])
            .unwrap();
        for a in ["alice", "bob", "carol"] {
            c.execute(
                "INSERT INTO users VALUES (?1, x'00', x'00', x'00', x'00', 0, 0)",
                [a],
            )
            .unwrap();
        }
        c.execute("INSERT INTO blobs (size, chunks) VALUES (0, 0)", [])
            .unwrap();
        for a in ["alice", "bob", "alice", "alice", "bob"] {
            c.execute(
                "INSERT INTO mailbox (account, hash, source, received_at, version,
                                      attachment_count, size, blob_id)
                 VALUES (?1, x'00', 'x@y.z', 0, 1, 0, 0, 1)",
                [a],
            )
            .unwrap();
        }
        migrate(&mut c).unwrap();
        let rows: Vec<(String, i64, i64, String)> = c
            .prepare("SELECT account, uid, modseq, folder FROM mailbox ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let uids: Vec<(&str, i64, i64)> = rows
            .iter()
            .map(|(a, u, m, f)| {
                assert_eq!(f, "Inbox");
                (a.as_str(), *u, *m)
            })
            .collect();
        assert_eq!(
            uids,
            [
                ("alice", 1, 1),
                ("bob", 1, 1),
                ("alice", 2, 2),
                ("alice", 3, 3),
                ("bob", 2, 2)
            ]
        );
        let state: Vec<(String, i64, i64)> = c
            .prepare("SELECT account, last_uid, modseq FROM mailbox_state ORDER BY account")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            state,
            [
                ("alice".into(), 3, 3),
                ("bob".into(), 2, 2),
                ("carol".into(), 0, 0)
            ]
        );
    }
}
