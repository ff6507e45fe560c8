//! The SQL of every operation, as plain functions on a connection. Write
//! operations run on the writer thread inside the batch transaction (each in
//! its own savepoint); read operations on a pooled read-only connection.

use bytes::Bytes;
use rusqlite::{Connection, OptionalExtension, Row, params};

use super::DbResult;
use super::writer::Db;
use crate::error::StoreError;
use crate::types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, INBOX, KeyStatement, MAX_CHUNK,
    MailboxChange, MailboxChanges, MailboxEntry, MailboxPage, MailboxState, MailboxUsage,
    MessageBody, NewDelivery, NewOutbound, NewUser, OutboundEntry, Pin, PurgeReport, QueueStats,
    Retention, StagedBlob, Unlock, User, UserSummary,
};

/// A time or size for SQLite's signed 64-bit integers (saturating: no real
/// value comes near `i64::MAX`).
fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn get_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<u64> {
    let v: i64 = row.get(idx)?;
    u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v))
}

fn get_opt_u64(row: &Row<'_>, idx: usize) -> rusqlite::Result<Option<u64>> {
    let v: Option<i64> = row.get(idx)?;
    v.map(|v| u64::try_from(v).map_err(|_| rusqlite::Error::IntegralValueOutOfRange(idx, v)))
        .transpose()
}

fn id_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

// ----- users -----

pub(crate) fn create_user(
    c: &Connection,
    user: &NewUser,
    invite: Option<[u8; 32]>,
    now: u64,
) -> Result<(), StoreError> {
    let exists: bool = c
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE account = ?1)
                 OR EXISTS(SELECT 1 FROM aliases WHERE alias = ?1)",
            [&user.account],
            |r| r.get(0),
        )
        .db()?;
    if exists {
        return Err(StoreError::AlreadyExists);
    }
    if let Some(hash) = invite {
        let used = c
            .execute(
                "DELETE FROM invites WHERE token_hash = ?1 AND account = ?2 AND expires_at > ?3",
                params![hash, user.account, sql(now)],
            )
            .db()?;
        if used == 0 {
            return Err(StoreError::InviteInvalid);
        }
    }
    c.execute(
        "INSERT INTO users (account, identity_pk, opaque_record, ksf, xzibit, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)",
        params![
            user.account,
            user.identity_pk,
            user.credentials.opaque_record,
            user.credentials.ksf,
            user.credentials.xzibit,
            sql(now)
        ],
    )
    .db()?;
    c.execute(
        "INSERT INTO mailbox_state (account, last_uid, modseq) VALUES (?1, 0, 0)",
        [&user.account],
    )
    .db()?;
    Ok(())
}

pub(crate) fn user(c: &Connection, account: &str) -> Result<Option<User>, StoreError> {
    // Cached: read at every login and for every SMTP recipient (its key and
    // quota).
    c.prepare_cached(
        "SELECT account, identity_pk, opaque_record, ksf, xzibit, created_at, updated_at, quota
         FROM users WHERE account = ?1",
    )
    .db()?
    .query_row([account], |r| {
        Ok(User {
            account: r.get(0)?,
            identity_pk: r.get(1)?,
            credentials: Credentials {
                opaque_record: r.get(2)?,
                ksf: r.get(3)?,
                xzibit: r.get(4)?,
            },
            created_at: get_u64(r, 5)?,
            updated_at: get_u64(r, 6)?,
            quota: get_opt_u64(r, 7)?,
        })
    })
    .optional()
    .db()
}

pub(crate) fn list_users(c: &Connection) -> Result<Vec<UserSummary>, StoreError> {
    let mut stmt = c
        .prepare(
            "SELECT u.account, u.created_at, COUNT(m.id), COALESCE(SUM(m.size), 0), u.quota
             FROM users u LEFT JOIN mailbox m ON m.account = u.account
             GROUP BY u.account ORDER BY u.account",
        )
        .db()?;
    let rows = stmt
        .query_map([], |r| {
            Ok(UserSummary {
                account: r.get(0)?,
                created_at: get_u64(r, 1)?,
                messages: get_u64(r, 2)?,
                bytes: get_u64(r, 3)?,
                quota: get_opt_u64(r, 4)?,
            })
        })
        .db()?;
    rows.collect::<rusqlite::Result<Vec<_>>>().db()
}

pub(crate) fn ksf_histogram(c: &Connection) -> Result<Vec<([u8; 12], u64)>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT ksf, COUNT(*) FROM users GROUP BY ksf ORDER BY ksf")
        .db()?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, get_u64(r, 1)?)))
        .db()?;
    rows.collect::<rusqlite::Result<Vec<_>>>().db()
}

pub(crate) fn delete_user(c: &Connection, account: &str) -> Result<bool, StoreError> {
    let blobs: Vec<i64> = {
        let mut stmt = c
            .prepare("DELETE FROM mailbox WHERE account = ?1 RETURNING blob_id")
            .db()?;
        let rows = stmt.query_map([account], |r| r.get(0)).db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    for blob in blobs {
        delete_blob(c, blob)?;
    }
    c.execute("DELETE FROM key_statements WHERE account = ?1", [account])
        .db()?;
    c.execute("DELETE FROM invites WHERE account = ?1", [account])
        .db()?;
    for table in ["aliases", "reset_tokens", "unlocks"] {
        c.execute(
            &format!("DELETE FROM {table} WHERE account = ?1"),
            [account],
        )
        .db()?;
    }
    c.execute("DELETE FROM mailbox_gone WHERE account = ?1", [account])
        .db()?;
    c.execute("DELETE FROM mailbox_state WHERE account = ?1", [account])
        .db()?;
    let n = c
        .execute("DELETE FROM users WHERE account = ?1", [account])
        .db()?;
    Ok(n > 0)
}

pub(crate) fn update_credentials(
    c: &Connection,
    account: &str,
    cred: &Credentials,
    now: u64,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE users SET opaque_record = ?2, ksf = ?3, xzibit = ?4, updated_at = ?5
             WHERE account = ?1",
            params![account, cred.opaque_record, cred.ksf, cred.xzibit, sql(now)],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn set_quota(
    c: &Connection,
    account: &str,
    quota: Option<u64>,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE users SET quota = ?2 WHERE account = ?1",
            params![account, quota.map(sql)],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn quota(c: &Connection, account: &str) -> Result<Option<Option<u64>>, StoreError> {
    c.prepare_cached("SELECT quota FROM users WHERE account = ?1")
        .db()?
        .query_row([account], |r| get_opt_u64(r, 0))
        .optional()
        .db()
}

pub(crate) fn mailbox_usage(c: &Connection, account: &str) -> Result<MailboxUsage, StoreError> {
    c.prepare_cached("SELECT COUNT(*), COALESCE(SUM(size), 0) FROM mailbox WHERE account = ?1")
        .db()?
        .query_row([account], |r| {
            Ok(MailboxUsage {
                messages: get_u64(r, 0)?,
                bytes: get_u64(r, 1)?,
            })
        })
        .db()
}

pub(crate) fn claim_quota_notice(
    c: &Connection,
    account: &str,
    now: u64,
    interval: u64,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE users SET quota_notice_at = ?2
             WHERE account = ?1 AND (quota_notice_at IS NULL OR quota_notice_at <= ?3)",
            params![account, sql(now), sql(now.saturating_sub(interval))],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn unlock_user(c: &Connection, account: &str, now: u64) -> Result<bool, StoreError> {
    if !account_exists(c, account)? {
        return Ok(false);
    }
    c.execute(
        "INSERT INTO unlocks (account, at) VALUES (?1, ?2)",
        params![account, sql(now)],
    )
    .db()?;
    Ok(true)
}

pub(crate) fn unlocks_after(c: &Connection, after: u64) -> Result<Vec<Unlock>, StoreError> {
    let mut stmt = c
        .prepare_cached("SELECT id, account, at FROM unlocks WHERE id > ?1 ORDER BY id LIMIT 10000")
        .db()?;
    let rows = stmt
        .query_map([sql(after)], |r| {
            Ok(Unlock {
                id: get_u64(r, 0)?,
                account: r.get(1)?,
                at: get_u64(r, 2)?,
            })
        })
        .db()?;
    rows.collect::<rusqlite::Result<_>>().db()
}

// ----- aliases -----

pub(crate) fn add_alias(
    c: &Connection,
    alias: &str,
    account: &str,
    now: u64,
) -> Result<(), StoreError> {
    let taken: bool = c
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM users WHERE account = ?1)
                 OR EXISTS(SELECT 1 FROM aliases WHERE alias = ?1)",
            [alias],
            |r| r.get(0),
        )
        .db()?;
    if taken {
        return Err(StoreError::AlreadyExists);
    }
    if !account_exists(c, account)? {
        return Err(StoreError::UnknownAccount);
    }
    c.execute(
        "INSERT INTO aliases (alias, account, created_at) VALUES (?1, ?2, ?3)",
        params![alias, account, sql(now)],
    )
    .db()?;
    Ok(())
}

pub(crate) fn remove_alias(c: &Connection, alias: &str) -> Result<bool, StoreError> {
    let n = c
        .execute("DELETE FROM aliases WHERE alias = ?1", [alias])
        .db()?;
    Ok(n > 0)
}

pub(crate) fn list_aliases(c: &Connection) -> Result<Vec<Alias>, StoreError> {
    let mut stmt = c
        .prepare("SELECT alias, account, created_at FROM aliases ORDER BY alias")
        .db()?;
    let rows = stmt
        .query_map([], |r| {
            Ok(Alias {
                alias: r.get(0)?,
                account: r.get(1)?,
                created_at: get_u64(r, 2)?,
            })
        })
        .db()?;
    rows.collect::<rusqlite::Result<_>>().db()
}

pub(crate) fn resolve_account(c: &Connection, name: &str) -> Result<Option<String>, StoreError> {
    c.prepare_cached(
        "SELECT account FROM users WHERE account = ?1
         UNION ALL SELECT account FROM aliases WHERE alias = ?1 LIMIT 1",
    )
    .db()?
    .query_row([name], |r| r.get(0))
    .optional()
    .db()
}

// ----- reset tokens -----

pub(crate) fn create_reset(
    c: &Connection,
    account: &str,
    hash: [u8; 32],
    expires_at: u64,
    now: u64,
) -> Result<(), StoreError> {
    if !account_exists(c, account)? {
        return Err(StoreError::UnknownAccount);
    }
    let n = c
        .execute(
            "INSERT INTO reset_tokens (token_hash, account, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (token_hash) DO NOTHING",
            params![hash, account, sql(now), sql(expires_at)],
        )
        .db()?;
    if n == 0 {
        return Err(StoreError::AlreadyExists);
    }
    Ok(())
}

pub(crate) fn reset_valid(
    c: &Connection,
    account: &str,
    hash: [u8; 32],
    now: u64,
) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT EXISTS(SELECT 1 FROM reset_tokens WHERE token_hash = ?1 AND account = ?2 AND expires_at > ?3)",
        params![hash, account, sql(now)],
        |r| r.get(0),
    )
    .db()
}

pub(crate) fn reset_user(
    c: &Connection,
    account: &str,
    hash: [u8; 32],
    identity_pk: [u8; 32],
    cred: &Credentials,
    now: u64,
) -> Result<(), StoreError> {
    let used = c
        .execute(
            "DELETE FROM reset_tokens WHERE token_hash = ?1 AND account = ?2 AND expires_at > ?3",
            params![hash, account, sql(now)],
        )
        .db()?;
    if used == 0 {
        return Err(StoreError::ResetTokenInvalid);
    }
    c.execute("DELETE FROM reset_tokens WHERE account = ?1", [account])
        .db()?;
    c.execute("DELETE FROM key_statements WHERE account = ?1", [account])
        .db()?;
    let n = c
        .execute(
            "UPDATE users SET identity_pk = ?2, opaque_record = ?3, ksf = ?4, xzibit = ?5, updated_at = ?6
             WHERE account = ?1",
            params![
                account,
                identity_pk,
                cred.opaque_record,
                cred.ksf,
                cred.xzibit,
                sql(now)
            ],
        )
        .db()?;
    if n == 0 {
        return Err(StoreError::ResetTokenInvalid);
    }
    Ok(())
}

fn account_exists(c: &Connection, account: &str) -> Result<bool, StoreError> {
    c.prepare_cached("SELECT EXISTS(SELECT 1 FROM users WHERE account = ?1)")
        .db()?
        .query_row([account], |r| r.get(0))
        .db()
}

// ----- invites -----

pub(crate) fn create_invite(
    c: &Connection,
    account: &str,
    hash: [u8; 32],
    expires_at: u64,
    now: u64,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "INSERT INTO invites (token_hash, account, created_at, expires_at)
             VALUES (?1, ?2, ?3, ?4) ON CONFLICT (token_hash) DO NOTHING",
            params![hash, account, sql(now), sql(expires_at)],
        )
        .db()?;
    if n == 0 {
        return Err(StoreError::AlreadyExists);
    }
    Ok(())
}

pub(crate) fn invite_valid(
    c: &Connection,
    account: &str,
    hash: [u8; 32],
    now: u64,
) -> Result<bool, StoreError> {
    c.query_row(
        "SELECT EXISTS(SELECT 1 FROM invites WHERE token_hash = ?1 AND account = ?2 AND expires_at > ?3)",
        params![hash, account, sql(now)],
        |r| r.get(0),
    )
    .db()
}

// ----- maintenance -----

/// How long unlock records are kept (every node has applied them by then).
pub(crate) const UNLOCK_RETENTION: u64 = 24 * 3600;

pub(crate) fn purge_expired(
    c: &Connection,
    now: u64,
    retention: Retention,
) -> Result<PurgeReport, StoreError> {
    let invites = c
        .execute("DELETE FROM invites WHERE expires_at <= ?1", [sql(now)])
        .db()?;
    let dedup_entries = c
        .execute(
            "DELETE FROM delivered WHERE at < ?1
             AND NOT EXISTS (SELECT 1 FROM mailbox m WHERE m.id = delivered.message_id)",
            [sql(now.saturating_sub(retention.dedup))],
        )
        .db()?;
    let staged_blobs = purge_staged(c, Some(now.saturating_sub(retention.staged_grace)))?;
    let mut cached_statements = c
        .execute(
            "DELETE FROM statement_cache WHERE expires_at <= ?1",
            [sql(now)],
        )
        .db()?;
    // Over its bound, the cache loses the statements that expire soonest.
    cached_statements += c
        .execute(
            "DELETE FROM statement_cache WHERE rowid IN (
                 SELECT rowid FROM statement_cache ORDER BY expires_at, rowid
                 LIMIT max(0, (SELECT COUNT(*) FROM statement_cache) - ?1))",
            [sql(retention.max_cached_statements)],
        )
        .db()?;
    // Over their bound, the pins first seen last go first: a flood of new
    // domains never displaces an established pin.
    let pins = c
        .execute(
            "DELETE FROM pins WHERE domain IN (
                 SELECT domain FROM pins ORDER BY first_seen DESC, domain DESC
                 LIMIT max(0, (SELECT COUNT(*) FROM pins) - ?1))",
            [sql(retention.max_pins)],
        )
        .db()?;
    let reset_tokens = c
        .execute(
            "DELETE FROM reset_tokens WHERE expires_at <= ?1",
            [sql(now)],
        )
        .db()?;
    let unlocks = c
        .execute(
            "DELETE FROM unlocks WHERE at < ?1",
            [sql(now.saturating_sub(UNLOCK_RETENTION))],
        )
        .db()?;
    Ok(PurgeReport {
        invites: invites as u64,
        dedup_entries: dedup_entries as u64,
        staged_blobs,
        cached_statements: cached_statements as u64,
        pins: pins as u64,
        reset_tokens: reset_tokens as u64,
        unlocks: unlocks as u64,
    })
}

/// Removes staged blobs begun before `before` (all of them with `None`).
pub(crate) fn purge_staged(c: &Connection, before: Option<u64>) -> Result<u64, StoreError> {
    let ids: Vec<i64> = {
        let mut stmt = c
            .prepare("SELECT id FROM blobs WHERE staged_at IS NOT NULL AND staged_at < ?1")
            .db()?;
        let rows = stmt
            .query_map([before.map_or(i64::MAX, sql)], |r| r.get(0))
            .db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    for &id in &ids {
        delete_blob(c, id)?;
    }
    Ok(ids.len() as u64)
}

// ----- secrets -----

pub(crate) fn secret_get(c: &Connection, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    c.query_row("SELECT value FROM secrets WHERE name = ?1", [name], |r| {
        r.get(0)
    })
    .optional()
    .db()
}

pub(crate) fn secret_get_or_init(
    c: &Connection,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    c.execute(
        "INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO NOTHING",
        params![name, candidate],
    )
    .db()?;
    secret_get(c, name)?.ok_or_else(|| StoreError::Internal("secret vanished".into()))
}

// ----- local key statements -----

pub(crate) fn put_key_statement(
    c: &Connection,
    account: &str,
    statement: &[u8],
    expires_at: u64,
) -> Result<(), StoreError> {
    if !account_exists(c, account)? {
        return Err(StoreError::UnknownAccount);
    }
    c.execute(
        "INSERT INTO key_statements (account, statement, expires_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (account) DO UPDATE SET statement = excluded.statement, expires_at = excluded.expires_at",
        params![account, statement, sql(expires_at)],
    )
    .db()?;
    Ok(())
}

pub(crate) fn key_statement(
    c: &Connection,
    account: &str,
) -> Result<Option<KeyStatement>, StoreError> {
    c.query_row(
        "SELECT statement, expires_at FROM key_statements WHERE account = ?1",
        [account],
        |r| {
            Ok(KeyStatement {
                statement: r.get(0)?,
                expires_at: get_u64(r, 1)?,
            })
        },
    )
    .optional()
    .db()
}

// ----- blobs -----

fn check_chunk(len: usize) -> Result<(), StoreError> {
    if len > MAX_CHUNK {
        return Err(StoreError::InvalidInput(format!(
            "chunk of {len} bytes exceeds the {MAX_CHUNK}-byte limit"
        )));
    }
    Ok(())
}

pub(crate) fn stage_begin(c: &Connection, now: u64) -> Result<StagedBlob, StoreError> {
    let id: i64 = c
        .query_row(
            "INSERT INTO blobs (size, chunks, staged_at) VALUES (0, 0, ?1) RETURNING id",
            [sql(now)],
            |r| r.get(0),
        )
        .db()?;
    Ok(StagedBlob { id: id_u64(id) })
}

/// Appends a chunk to a staged blob: the count and size on its row, the
/// bytes in the bodies database (written last, see [`Db`]). A chunk left
/// there by a batch whose database COMMIT failed has the same sequence
/// number as the next one, which replaces it.
pub(crate) fn stage_append(c: &Db, blob: u64, chunk: &Bytes) -> Result<(), StoreError> {
    if chunk.is_empty() {
        return Err(StoreError::InvalidInput("empty chunk".into()));
    }
    check_chunk(chunk.len())?;
    let seq: Option<i64> = c
        .prepare_cached(
            "UPDATE blobs SET size = size + ?2, chunks = chunks + 1
             WHERE id = ?1 AND staged_at IS NOT NULL RETURNING chunks - 1",
        )
        .db()?
        .query_row(params![sql(blob), chunk.len() as i64], |r| r.get(0))
        .optional()
        .db()?;
    let Some(seq) = seq else {
        return Err(StoreError::BlobNotFound);
    };
    c.bodies()?
        .prepare_cached("INSERT OR REPLACE INTO chunks (blob_id, seq, data) VALUES (?1, ?2, ?3)")
        .db()?
        .execute(params![sql(blob), seq, &chunk[..]])
        .db()?;
    Ok(())
}

/// Removes a staged blob and its chunks; `false` if it is no longer staged
/// (referenced by a delivery or a queue entry, purged, or never created).
pub(crate) fn stage_abort(c: &Connection, blob: u64) -> Result<bool, StoreError> {
    let staged: bool = c
        .prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM blobs WHERE id = ?1 AND staged_at IS NOT NULL)",
        )
        .db()?
        .query_row([sql(blob)], |r| r.get(0))
        .db()?;
    if staged {
        delete_blob(c, sql(blob))?;
    }
    Ok(staged)
}

/// A chunk of a blob: from `blob_chunks` (a message stored in one piece,
/// or any message of a store older than the bodies database), else from
/// the bodies database (a staged blob's). Needs a reader connection, which
/// has the bodies database attached.
pub(crate) fn read_chunk(c: &Connection, blob: u64, seq: u32) -> Result<Option<Bytes>, StoreError> {
    for sql_text in [
        "SELECT data FROM main.blob_chunks WHERE blob_id = ?1 AND seq = ?2",
        "SELECT data FROM bodies.chunks WHERE blob_id = ?1 AND seq = ?2
         AND EXISTS (SELECT 1 FROM main.blobs WHERE id = ?1)",
    ] {
        let data: Option<Vec<u8>> = c
            .prepare_cached(sql_text)
            .db()?
            .query_row(params![sql(blob), seq], |r| r.get(0))
            .optional()
            .db()?;
        if let Some(data) = data {
            return Ok(Some(Bytes::from(data)));
        }
    }
    Ok(None)
}

/// The most blobs one sweep removes from the bodies database.
const SWEEP_BATCH: i64 = 1000;

/// Blobs that have chunks in the bodies database but no row in the
/// database (deleted, purged, aborted), as a reader sees them: candidates
/// only, as the two snapshots are not taken at one instant (a blob begun
/// between them looks orphaned). The writer checks each against the
/// committed database before removing anything ([`Db::note_gone`]). Needs
/// a reader connection (the bodies database attached).
pub(crate) fn bodies_orphans(c: &Connection) -> Result<Vec<i64>, StoreError> {
    let mut stmt = c
        .prepare_cached(
            "SELECT DISTINCT c.blob_id FROM bodies.chunks c
             WHERE NOT EXISTS (SELECT 1 FROM main.blobs b WHERE b.id = c.blob_id) LIMIT ?1",
        )
        .db()?;
    let rows = stmt.query_map([SWEEP_BATCH], |r| r.get(0)).db()?;
    rows.collect::<rusqlite::Result<_>>().db()
}

/// Removes the chunks of `blobs` from the bodies database; returns how
/// many blobs had chunks. Only for blobs the committed database lacks
/// ([`Db::sweep_gone`]).
pub(crate) fn sweep_bodies(c: &Db, blobs: &[i64]) -> Result<u64, StoreError> {
    let mut swept = 0;
    for id in blobs {
        let n = c
            .bodies()?
            .prepare_cached("DELETE FROM chunks WHERE blob_id = ?1")
            .db()?
            .execute([id])
            .db()?;
        swept += u64::from(n > 0);
    }
    Ok(swept)
}

/// Removes a blob's row and the chunks it has in the database; its chunks
/// in the bodies database go once this is committed ([`Db::sweep_gone`]).
fn delete_blob(c: &Connection, id: i64) -> Result<(), StoreError> {
    c.prepare_cached("DELETE FROM blob_chunks WHERE blob_id = ?1")
        .db()?
        .execute([id])
        .db()?;
    c.prepare_cached("DELETE FROM blobs WHERE id = ?1")
        .db()?
        .execute([id])
        .db()?;
    Ok(())
}

/// Stores a body as a blob owned by the row about to be inserted; returns
/// the blob's id.
fn store_body(c: &Connection, body: &MessageBody, size: u64) -> Result<i64, StoreError> {
    match body {
        MessageBody::Inline(bytes) => {
            check_chunk(bytes.len())?;
            if bytes.len() as u64 != size {
                return Err(StoreError::InvalidInput(format!(
                    "size {size} does not match the {}-byte body",
                    bytes.len()
                )));
            }
            let chunks = i64::from(!bytes.is_empty());
            // `last_insert_rowid` rather than RETURNING, which buffers its
            // row in an ephemeral table (this is on every delivery's path).
            c.prepare_cached("INSERT INTO blobs (size, chunks, staged_at) VALUES (?1, ?2, NULL)")
                .db()?
                .execute(params![sql(size), chunks])
                .db()?;
            let id = c.last_insert_rowid();
            if chunks == 1 {
                c.prepare_cached("INSERT INTO blob_chunks (blob_id, seq, data) VALUES (?1, 0, ?2)")
                    .db()?
                    .execute(params![id, &bytes[..]])
                    .db()?;
            }
            Ok(id)
        }
        MessageBody::Staged(staged) => {
            let stored: Option<i64> = c
                .prepare_cached(
                    "UPDATE blobs SET staged_at = NULL WHERE id = ?1 AND staged_at IS NOT NULL
                     RETURNING size",
                )
                .db()?
                .query_row([sql(staged.id)], |r| r.get(0))
                .optional()
                .db()?;
            match stored {
                None => Err(StoreError::BlobNotFound),
                Some(s) if id_u64(s) != size => Err(StoreError::InvalidInput(format!(
                    "size {size} does not match the {s}-byte staged blob"
                ))),
                Some(_) => Ok(sql(staged.id)),
            }
        }
    }
}

/// Drops the staged body of a request that stores nothing (a duplicate).
fn discard_body(c: &Connection, body: &MessageBody) -> Result<(), StoreError> {
    if let MessageBody::Staged(staged) = body {
        let still_staged: bool = c
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM blobs WHERE id = ?1 AND staged_at IS NOT NULL)",
                [sql(staged.id)],
                |r| r.get(0),
            )
            .db()?;
        if still_staged {
            delete_blob(c, sql(staged.id))?;
        }
    }
    Ok(())
}

// ----- mailbox -----

pub(crate) fn deliver(c: &Connection, d: &NewDelivery) -> Result<Delivered, StoreError> {
    deliver_into(c, d, INBOX, 0)
}

/// Takes the next per-user id and modseq of `account`'s mailbox; `None` if
/// there is no such account.
///
/// An UPDATE and then a SELECT rather than UPDATE ... RETURNING, which
/// buffers its row in an ephemeral table: this is on every delivery's path.
fn next_uid(c: &Connection, account: &str) -> Result<Option<(i64, i64)>, StoreError> {
    let changed = c
        .prepare_cached(
            "UPDATE mailbox_state SET last_uid = last_uid + 1, modseq = modseq + 1
             WHERE account = ?1",
        )
        .db()?
        .execute([account])
        .db()?;
    if changed == 0 {
        return Ok(None);
    }
    c.prepare_cached("SELECT last_uid, modseq FROM mailbox_state WHERE account = ?1")
        .db()?
        .query_row([account], |r| Ok((r.get(0)?, r.get(1)?)))
        .map(Some)
        .db()
}

/// Raises `account`'s modseq by one and returns it; `None` if there is no
/// such account.
fn next_modseq(c: &Connection, account: &str) -> Result<Option<i64>, StoreError> {
    c.prepare_cached(
        "UPDATE mailbox_state SET modseq = modseq + 1 WHERE account = ?1 RETURNING modseq",
    )
    .db()?
    .query_row([account], |r| r.get(0))
    .optional()
    .db()
}

pub(crate) fn deliver_into(
    c: &Connection,
    d: &NewDelivery,
    folder: &str,
    flags: u32,
) -> Result<Delivered, StoreError> {
    let previous: Option<i64> = c
        .prepare_cached(
            "SELECT COALESCE(m.uid, 0) FROM delivered d LEFT JOIN mailbox m ON m.id = d.message_id
             WHERE d.hash = ?1",
        )
        .db()?
        .query_row([d.hash], |r| r.get(0))
        .optional()
        .db()?;
    if let Some(id) = previous {
        discard_body(c, &d.body)?;
        return Ok(Delivered {
            id: id_u64(id),
            duplicate: true,
        });
    }
    let Some((uid, modseq)) = next_uid(c, &d.account)? else {
        return Err(StoreError::UnknownAccount);
    };
    let blob = store_body(c, &d.body, d.size)?;
    c.prepare_cached(
        "INSERT INTO mailbox (account, hash, source, received_at, version, attachment_count, size,
                              blob_id, uid, modseq, flags, folder)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
    )
    .db()?
    .execute(params![
        d.account,
        d.hash,
        d.source,
        sql(d.received_at),
        d.version,
        d.attachment_count,
        sql(d.size),
        blob,
        uid,
        modseq,
        flags,
        folder
    ])
    .db()?;
    let id = c.last_insert_rowid();
    c.prepare_cached(
        "INSERT INTO delivered (hash, account, message_id, at) VALUES (?1, ?2, ?3, ?4)",
    )
    .db()?
    .execute(params![d.hash, d.account, id, sql(d.received_at)])
    .db()?;
    Ok(Delivered {
        id: id_u64(uid),
        duplicate: false,
    })
}

/// The columns of a [`MailboxEntry`] ([`entry_row`]), from `mailbox m`.
macro_rules! entry_columns {
    () => {
        "m.uid, m.hash, m.size, m.received_at, m.source, m.version, m.attachment_count, m.modseq, m.flags, m.folder"
    };
}
const ENTRY_COLUMNS: &str = entry_columns!();
/// An entry's columns and its blob's, from `mailbox m JOIN blobs b`
/// ([`mailbox_row`]). Listings need no blob: they read `mailbox` alone.
const MAILBOX_COLUMNS: &str = concat!(entry_columns!(), ", b.id, b.size, b.chunks");

fn entry_row(r: &Row<'_>) -> rusqlite::Result<MailboxEntry> {
    Ok(MailboxEntry {
        id: get_u64(r, 0)?,
        hash: r.get(1)?,
        size: get_u64(r, 2)?,
        received_at: get_u64(r, 3)?,
        source: r.get(4)?,
        version: r.get(5)?,
        attachment_count: r.get(6)?,
        modseq: get_u64(r, 7)?,
        flags: r.get(8)?,
        folder: r.get(9)?,
    })
}

fn mailbox_row(r: &Row<'_>) -> rusqlite::Result<(MailboxEntry, BlobRef)> {
    Ok((
        entry_row(r)?,
        BlobRef {
            id: get_u64(r, 10)?,
            size: get_u64(r, 11)?,
            chunks: r.get(12)?,
        },
    ))
}

fn mailbox_state(c: &Connection, account: &str) -> Result<MailboxState, StoreError> {
    c.prepare_cached("SELECT id, modseq FROM mailbox_state WHERE account = ?1")
        .db()?
        .query_row([account], |r| {
            Ok(MailboxState {
                epoch: get_u64(r, 0)?,
                modseq: get_u64(r, 1)?,
            })
        })
        .optional()
        .db()?
        .ok_or(StoreError::UnknownAccount)
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) fn mailbox_page(
    c: &Connection,
    account: &str,
    before: u64,
    limit: usize,
) -> Result<MailboxPage, StoreError> {
    let state = mailbox_state(c, account)?;
    let before = if before == 0 { i64::MAX } else { sql(before) };
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM mailbox m
             WHERE m.account = ?1 AND m.uid < ?2 ORDER BY m.uid DESC LIMIT ?3"
        ))
        .db()?;
    let rows = stmt
        .query_map(params![account, before, limit_sql(limit)], entry_row)
        .db()?;
    let entries = rows.collect::<rusqlite::Result<_>>().db()?;
    Ok(MailboxPage { state, entries })
}

pub(crate) fn mailbox_changes(
    c: &Connection,
    account: &str,
    since: u64,
    limit: usize,
) -> Result<MailboxChanges, StoreError> {
    let state = mailbox_state(c, account)?;
    // Each list by its own index, at most limit + 1 of each; merged here.
    let mut changes: Vec<MailboxChange> = {
        let mut stmt = c
            .prepare_cached(&format!(
                "SELECT {ENTRY_COLUMNS} FROM mailbox m
                 WHERE m.account = ?1 AND m.modseq > ?2 ORDER BY m.modseq LIMIT ?3"
            ))
            .db()?;
        let rows = stmt
            .query_map(params![account, sql(since), limit_sql(limit) + 1], |r| {
                entry_row(r).map(MailboxChange::Entry)
            })
            .db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    {
        let mut stmt = c
            .prepare_cached(
                "SELECT uid, modseq FROM mailbox_gone WHERE account = ?1 AND modseq > ?2
                 ORDER BY modseq LIMIT ?3",
            )
            .db()?;
        let rows = stmt
            .query_map(params![account, sql(since), limit_sql(limit) + 1], |r| {
                Ok(MailboxChange::Removed {
                    id: get_u64(r, 0)?,
                    modseq: get_u64(r, 1)?,
                })
            })
            .db()?;
        for row in rows {
            changes.push(row.db()?);
        }
    }
    changes.sort_by_key(MailboxChange::modseq);
    let more = changes.len() > limit;
    changes.truncate(limit);
    Ok(MailboxChanges {
        state,
        more,
        changes,
    })
}

pub(crate) fn set_flags(
    c: &Connection,
    account: &str,
    ids: &[u64],
    set: u32,
    clear: u32,
) -> Result<FlagsChanged, StoreError> {
    let mut state = mailbox_state(c, account)?;
    let mut changed = 0u32;
    let mut update = c
        .prepare_cached(
            "UPDATE mailbox SET flags = (flags | ?3) & ~?4, modseq = ?5
             WHERE account = ?1 AND uid = ?2 AND flags != ((flags | ?3) & ~?4)",
        )
        .db()?;
    for &id in ids {
        let n = update
            .execute(params![account, sql(id), set, clear, sql(state.modseq + 1)])
            .db()?;
        if n > 0 {
            state.modseq += 1;
            changed += 1;
        }
    }
    if changed > 0 {
        c.prepare_cached("UPDATE mailbox_state SET modseq = ?2 WHERE account = ?1")
            .db()?
            .execute(params![account, sql(state.modseq)])
            .db()?;
    }
    Ok(FlagsChanged {
        modseq: state.modseq,
        changed,
    })
}

/// Files the entries `ids` of `account` into `folder` (PROTOCOL.md §13.7);
/// each entry whose folder changes gets the next modseq.
pub(crate) fn move_messages(
    c: &Connection,
    account: &str,
    ids: &[u64],
    folder: &str,
) -> Result<FlagsChanged, StoreError> {
    let mut state = mailbox_state(c, account)?;
    let mut changed = 0u32;
    let mut update = c
        .prepare_cached(
            "UPDATE mailbox SET folder = ?3, modseq = ?4
             WHERE account = ?1 AND uid = ?2 AND folder != ?3",
        )
        .db()?;
    for &id in ids {
        let n = update
            .execute(params![account, sql(id), folder, sql(state.modseq + 1)])
            .db()?;
        if n > 0 {
            state.modseq += 1;
            changed += 1;
        }
    }
    if changed > 0 {
        c.prepare_cached("UPDATE mailbox_state SET modseq = ?2 WHERE account = ?1")
            .db()?
            .execute(params![account, sql(state.modseq)])
            .db()?;
    }
    Ok(FlagsChanged {
        modseq: state.modseq,
        changed,
    })
}

pub(crate) fn list_mailbox(c: &Connection, account: &str) -> Result<Vec<MailboxEntry>, StoreError> {
    let mut stmt = c
        .prepare_cached(&format!(
            "SELECT {ENTRY_COLUMNS} FROM mailbox m
             WHERE m.account = ?1 ORDER BY m.uid"
        ))
        .db()?;
    let rows = stmt.query_map([account], entry_row).db()?;
    rows.collect::<rusqlite::Result<_>>().db()
}

pub(crate) fn mailbox_message(
    c: &Connection,
    account: &str,
    id: u64,
) -> Result<Option<(MailboxEntry, BlobRef)>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {MAILBOX_COLUMNS} FROM mailbox m JOIN blobs b ON b.id = m.blob_id
         WHERE m.account = ?1 AND m.uid = ?2"
    ))
    .db()?
    .query_row(params![account, sql(id)], mailbox_row)
    .optional()
    .db()
}

pub(crate) fn delete_message(c: &Connection, account: &str, id: u64) -> Result<bool, StoreError> {
    let blob: Option<i64> = c
        .query_row(
            "DELETE FROM mailbox WHERE account = ?1 AND uid = ?2 RETURNING blob_id",
            params![account, sql(id)],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    match blob {
        Some(blob) => {
            delete_blob(c, blob)?;
            let modseq = next_modseq(c, account)?.ok_or(StoreError::UnknownAccount)?;
            c.execute(
                "INSERT INTO mailbox_gone (account, uid, modseq) VALUES (?1, ?2, ?3)",
                params![account, sql(id), modseq],
            )
            .db()?;
            Ok(true)
        }
        None => Ok(false),
    }
}

// ----- outbound queue -----

pub(crate) fn enqueue(c: &Connection, o: &NewOutbound) -> Result<Enqueued, StoreError> {
    let existing: Option<i64> = c
        .prepare_cached("SELECT id FROM outbound WHERE hash = ?1")
        .db()?
        .query_row([o.hash], |r| r.get(0))
        .optional()
        .db()?;
    if let Some(id) = existing {
        discard_body(c, &o.body)?;
        return Ok(Enqueued {
            id: id_u64(id),
            duplicate: true,
        });
    }
    let blob = store_body(c, &o.body, o.size)?;
    let id: i64 = c
        .prepare_cached(
            "INSERT INTO outbound (hash, sender, destination, dest_domain, size, created_at, expires_at,
                                   next_attempt_at, attempts, blob_id)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?6, 0, ?8) RETURNING id",
        )
        .db()?
        .query_row(
            params![
                o.hash,
                o.sender,
                o.destination,
                o.dest_domain,
                sql(o.size),
                sql(o.created_at),
                sql(o.expires_at),
                blob
            ],
            |r| r.get(0),
        )
        .db()?;
    Ok(Enqueued {
        id: id_u64(id),
        duplicate: false,
    })
}

const OUTBOUND_COLUMNS: &str = "o.id, o.hash, o.sender, o.destination, o.dest_domain, o.size, o.created_at, o.expires_at, o.next_attempt_at, o.attempts, o.last_error, o.lease_owner, o.lease_until, b.id, b.size, b.chunks, o.held";

fn outbound_row(r: &Row<'_>) -> rusqlite::Result<OutboundEntry> {
    let lease_until: Option<i64> = r.get(12)?;
    Ok(OutboundEntry {
        id: get_u64(r, 0)?,
        hash: r.get(1)?,
        sender: r.get(2)?,
        destination: r.get(3)?,
        dest_domain: r.get(4)?,
        size: get_u64(r, 5)?,
        created_at: get_u64(r, 6)?,
        expires_at: get_u64(r, 7)?,
        next_attempt_at: get_u64(r, 8)?,
        attempts: r.get(9)?,
        last_error: r.get(10)?,
        lease_owner: r.get(11)?,
        lease_until: lease_until.map(id_u64),
        held: r.get::<_, i64>(16)? != 0,
        blob: BlobRef {
            id: get_u64(r, 13)?,
            size: get_u64(r, 14)?,
            chunks: r.get(15)?,
        },
    })
}

pub(crate) fn lease_due(
    c: &Connection,
    now: u64,
    node: &str,
    lease_until: u64,
    limit: usize,
) -> Result<Vec<OutboundEntry>, StoreError> {
    let ids: Vec<i64> = {
        let mut stmt = c
            .prepare_cached(
                "SELECT id FROM outbound
                 WHERE next_attempt_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
                   AND held = 0
                 ORDER BY next_attempt_at, id LIMIT ?2",
            )
            .db()?;
        let rows = stmt
            .query_map(
                params![sql(now), i64::try_from(limit).unwrap_or(i64::MAX)],
                |r| r.get(0),
            )
            .db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    lease_ids(c, ids, node, lease_until)
}

/// Like [`lease_due`], with at most `per_domain` entries per destination
/// domain counting the `in_flight` ones. Walks the due entries in due order
/// (the `outbound_due` index) and stops as soon as `limit` are found.
pub(crate) fn lease_due_per_domain(
    c: &Connection,
    now: u64,
    node: &str,
    lease_until: u64,
    limit: usize,
    per_domain: usize,
    in_flight: &[(String, usize)],
) -> Result<Vec<OutboundEntry>, StoreError> {
    let mut counts: std::collections::HashMap<String, usize> = in_flight.iter().cloned().collect();
    let mut ids = Vec::new();
    if limit > 0 && per_domain > 0 {
        let mut stmt = c
            .prepare_cached(
                "SELECT id, dest_domain FROM outbound
                 WHERE next_attempt_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
                 ORDER BY next_attempt_at, id",
            )
            .db()?;
        let mut rows = stmt.query([sql(now)]).db()?;
        while let Some(r) = rows.next().db()? {
            let domain = r
                .get_ref(1)
                .db()?
                .as_str()
                .map_err(|e| StoreError::Corrupt(e.to_string()))?;
            let n = match counts.get_mut(domain) {
                Some(n) => n,
                None => counts.entry(domain.to_owned()).or_insert(0),
            };
            if *n >= per_domain {
                continue;
            }
            *n += 1;
            ids.push(r.get::<_, i64>(0).db()?);
            if ids.len() >= limit {
                break;
            }
        }
    }
    lease_ids(c, ids, node, lease_until)
}

fn lease_ids(
    c: &Connection,
    ids: Vec<i64>,
    node: &str,
    lease_until: u64,
) -> Result<Vec<OutboundEntry>, StoreError> {
    let mut update = c
        .prepare_cached("UPDATE outbound SET lease_owner = ?2, lease_until = ?3 WHERE id = ?1")
        .db()?;
    let mut select = c
        .prepare_cached(&format!(
            "SELECT {OUTBOUND_COLUMNS} FROM outbound o JOIN blobs b ON b.id = o.blob_id WHERE o.id = ?1"
        ))
        .db()?;
    let mut entries = Vec::with_capacity(ids.len());
    for id in ids {
        update.execute(params![id, node, sql(lease_until)]).db()?;
        entries.push(select.query_row([id], outbound_row).db()?);
    }
    Ok(entries)
}

pub(crate) fn defer_domain(
    c: &Connection,
    domain: &str,
    now: u64,
    until: u64,
) -> Result<u64, StoreError> {
    let n = c
        .prepare_cached(
            "UPDATE outbound SET next_attempt_at = MIN(?3, expires_at)
             WHERE dest_domain = ?1 AND next_attempt_at < MIN(?3, expires_at)
               AND (lease_until IS NULL OR lease_until <= ?2)",
        )
        .db()?
        .execute(params![domain, sql(now), sql(until)])
        .db()?;
    Ok(n as u64)
}

/// Removes entry `id` if `node` holds its lease; returns the sender.
fn take_leased(c: &Connection, id: u64, node: &str) -> Result<Option<String>, StoreError> {
    let row: Option<(String, i64)> = c
        .query_row(
            "DELETE FROM outbound WHERE id = ?1 AND lease_owner = ?2 RETURNING sender, blob_id",
            params![sql(id), node],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .db()?;
    match row {
        Some((sender, blob)) => {
            delete_blob(c, blob)?;
            Ok(Some(sender))
        }
        None => Ok(None),
    }
}

pub(crate) fn complete(c: &Connection, id: u64, node: &str) -> Result<bool, StoreError> {
    Ok(take_leased(c, id, node)?.is_some())
}

pub(crate) fn retry_later(
    c: &Connection,
    id: u64,
    node: &str,
    next_attempt_at: u64,
    error: &str,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET attempts = attempts + 1, last_error = ?3, next_attempt_at = ?4,
                                 lease_owner = NULL, lease_until = NULL
             WHERE id = ?1 AND lease_owner = ?2",
            params![sql(id), node, error, sql(next_attempt_at)],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn fail_with_notice(
    c: &Connection,
    id: u64,
    node: &str,
    notice: &NewDelivery,
) -> Result<bool, StoreError> {
    let Some(sender) = take_leased(c, id, node)? else {
        return Ok(false);
    };
    if notice.account != sender {
        return Err(StoreError::InvalidInput(format!(
            "the failure notice is for {:?}, the message's sender is {sender:?}",
            notice.account
        )));
    }
    if account_exists(c, &sender)? {
        deliver(c, notice)?;
    } else {
        tracing::info!(account = %sender, id, "sender no longer exists; failure notice dropped");
        discard_body(c, &notice.body)?;
    }
    Ok(true)
}

pub(crate) fn list_queue(c: &Connection) -> Result<Vec<OutboundEntry>, StoreError> {
    let mut stmt = c
        .prepare(&format!(
            "SELECT {OUTBOUND_COLUMNS} FROM outbound o JOIN blobs b ON b.id = o.blob_id ORDER BY o.id"
        ))
        .db()?;
    let rows = stmt.query_map([], outbound_row).db()?;
    rows.collect::<rusqlite::Result<_>>().db()
}

pub(crate) fn retry_all_now(c: &Connection, now: u64) -> Result<u64, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET next_attempt_at = ?1
             WHERE next_attempt_at > ?1 AND (lease_until IS NULL OR lease_until <= ?1)
               AND held = 0",
            [sql(now)],
        )
        .db()?;
    Ok(n as u64)
}

pub(crate) fn queue_entry(c: &Connection, id: u64) -> Result<Option<OutboundEntry>, StoreError> {
    c.prepare_cached(&format!(
        "SELECT {OUTBOUND_COLUMNS} FROM outbound o JOIN blobs b ON b.id = o.blob_id WHERE o.id = ?1"
    ))
    .db()?
    .query_row([sql(id)], outbound_row)
    .optional()
    .db()
}

pub(crate) fn delete_queued(c: &Connection, id: u64) -> Result<bool, StoreError> {
    let blob: Option<i64> = c
        .query_row(
            "DELETE FROM outbound WHERE id = ?1 RETURNING blob_id",
            [sql(id)],
            |r| r.get(0),
        )
        .optional()
        .db()?;
    match blob {
        Some(blob) => {
            delete_blob(c, blob)?;
            Ok(true)
        }
        None => Ok(false),
    }
}

pub(crate) fn set_held(c: &Connection, id: u64, held: bool) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET held = ?2 WHERE id = ?1",
            params![sql(id), i64::from(held)],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn retry_now(c: &Connection, id: u64, now: u64) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET next_attempt_at = MIN(next_attempt_at, ?2)
             WHERE id = ?1 AND held = 0 AND (lease_until IS NULL OR lease_until <= ?2)",
            params![sql(id), sql(now)],
        )
        .db()?;
    Ok(n > 0)
}

pub(crate) fn queue_stats(c: &Connection, now: u64) -> Result<QueueStats, StoreError> {
    c.query_row(
        "SELECT COUNT(*),
                COALESCE(SUM(CASE WHEN held = 0 AND (lease_until IS NULL OR lease_until <= ?1) AND next_attempt_at <= ?1 THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN held = 0 AND (lease_until IS NULL OR lease_until <= ?1) AND next_attempt_at > ?1 THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(CASE WHEN lease_until > ?1 THEN 1 ELSE 0 END), 0),
                COALESCE(SUM(size), 0),
                MIN(created_at),
                COALESCE(SUM(held), 0),
                MIN(CASE WHEN held = 0 AND (lease_until IS NULL OR lease_until <= ?1) AND next_attempt_at <= ?1 THEN next_attempt_at END)
         FROM outbound",
        [sql(now)],
        |r| {
            let oldest: Option<i64> = r.get(5)?;
            let oldest_due: Option<i64> = r.get(7)?;
            Ok(QueueStats {
                total: get_u64(r, 0)?,
                due: get_u64(r, 1)?,
                deferred: get_u64(r, 2)?,
                held: get_u64(r, 6)?,
                leased: get_u64(r, 3)?,
                bytes: get_u64(r, 4)?,
                oldest_age: oldest.map(|t| now.saturating_sub(id_u64(t))),
                oldest_due_age: oldest_due.map(|t| now.saturating_sub(id_u64(t))),
            })
        },
    )
    .db()
}

// ----- pins -----

pub(crate) fn pin(c: &Connection, domain: &str) -> Result<Option<Pin>, StoreError> {
    c.query_row(
        "SELECT key, first_seen, updated_at FROM pins WHERE domain = ?1",
        [domain],
        |r| {
            Ok(Pin {
                key: r.get(0)?,
                first_seen: get_u64(r, 1)?,
                updated_at: get_u64(r, 2)?,
            })
        },
    )
    .optional()
    .db()
}

pub(crate) fn set_pin(
    c: &Connection,
    domain: &str,
    key: [u8; 32],
    now: u64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO pins (domain, key, first_seen, updated_at) VALUES (?1, ?2, ?3, ?3)
         ON CONFLICT (domain) DO UPDATE SET
             first_seen = CASE WHEN pins.key = excluded.key THEN pins.first_seen ELSE excluded.first_seen END,
             key = excluded.key,
             updated_at = excluded.updated_at",
        params![domain, key, sql(now)],
    )
    .db()?;
    Ok(())
}

// ----- remote key statement cache -----

pub(crate) fn cache_statement(
    c: &Connection,
    account: &str,
    domain: &str,
    statement: &[u8],
    expires_at: u64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO statement_cache (account, domain, statement, expires_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (account, domain) DO UPDATE SET statement = excluded.statement, expires_at = excluded.expires_at",
        params![account, domain, statement, sql(expires_at)],
    )
    .db()?;
    Ok(())
}

pub(crate) fn cached_statement(
    c: &Connection,
    account: &str,
    domain: &str,
    now: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    c.query_row(
        "SELECT statement FROM statement_cache WHERE account = ?1 AND domain = ?2 AND expires_at > ?3",
        params![account, domain, sql(now)],
        |r| r.get(0),
    )
    .optional()
    .db()
}
