//! The SQL of every operation, as async functions on a pooled connection
//! (or on a transaction, for the parts shared by several operations).
//!
//! Each function is one statement (atomic and durable on its own in
//! autocommit) or one transaction that is committed before it returns `Ok`;
//! on any error the transaction is dropped, which rolls it back. Parameters
//! that appear only in a `SELECT` list carry an explicit cast so that their
//! types do not depend on inference.

use bytes::Bytes;
use deadpool_postgres::{Client, GenericClient};
use tokio_postgres::Row;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use super::DbResult;
use crate::error::StoreError;
use crate::types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, INBOX, KeyStatement, MAX_CHUNK,
    MailboxChange, MailboxChanges, MailboxEntry, MailboxPage, MailboxState, MailboxUsage,
    MessageBody, NewDelivery, NewOutbound, NewUser, OutboundEntry, Pin, PurgeReport, QueueStats,
    Retention, StagedBlob, Unlock, User, UserSummary,
};

/// Serialises the creation of a name (account or alias): both take this
/// transaction-level advisory lock on the name's hash first, so an account
/// and an alias of one name cannot be created at the same moment.
const NAME_LOCK: &str = "SELECT pg_advisory_xact_lock(1668117616, hashtext($1))";

// ----- conversions -----

/// A time, size or id for PostgreSQL's BIGINT (saturating: no real value
/// comes near `i64::MAX`).
fn sql(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn unsigned(v: i64, what: &str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative {what}: {v}")))
}

pub(super) fn get_u64(row: &Row, idx: usize) -> Result<u64, StoreError> {
    let v: i64 = row.try_get(idx).db()?;
    unsigned(v, row.columns()[idx].name())
}

fn get_opt_u64(row: &Row, idx: usize) -> Result<Option<u64>, StoreError> {
    let v: Option<i64> = row.try_get(idx).db()?;
    v.map(|v| unsigned(v, row.columns()[idx].name()))
        .transpose()
}

fn get_u32(row: &Row, idx: usize) -> Result<u32, StoreError> {
    let v: i64 = row.try_get(idx).db()?;
    u32::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!("{} out of range: {v}", row.columns()[idx].name()))
    })
}

fn get_key(row: &Row, idx: usize) -> Result<[u8; 32], StoreError> {
    let v: &[u8] = row.try_get(idx).db()?;
    <[u8; 32]>::try_from(v).map_err(|_| {
        StoreError::Corrupt(format!(
            "{} is {} bytes, not 32",
            row.columns()[idx].name(),
            v.len()
        ))
    })
}

fn get<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a Row,
    idx: usize,
) -> Result<T, StoreError> {
    row.try_get(idx).db()
}

fn is_foreign_key_violation(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::FOREIGN_KEY_VIOLATION)
}

// ----- users -----

pub(crate) async fn create_user(
    c: &mut Client,
    user: &NewUser,
    invite: Option<[u8; 32]>,
    now: u64,
) -> Result<(), StoreError> {
    let tx = c.transaction().await.db()?;
    tx.execute(NAME_LOCK, &[&user.account]).await.db()?;
    let alias: bool = get(
        &tx.query_one(
            "SELECT EXISTS (SELECT 1 FROM aliases WHERE alias = $1)",
            &[&user.account],
        )
        .await
        .db()?,
        0,
    )?;
    if alias {
        return Err(StoreError::AlreadyExists);
    }
    // The user first: a concurrent creation of the same account waits for
    // this one and then finds the account taken, so an invite is consumed by
    // at most one of them, and never by a creation that fails.
    let inserted = tx
        .execute(
            "INSERT INTO users (account, identity_pk, opaque_record, ksf, xzibit, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (account) DO NOTHING",
            &[
                &user.account,
                &&user.identity_pk[..],
                &user.credentials.opaque_record,
                &&user.credentials.ksf[..],
                &user.credentials.xzibit,
                &sql(now),
            ],
        )
        .await
        .db()?;
    if inserted == 0 {
        return Err(StoreError::AlreadyExists);
    }
    if let Some(hash) = invite {
        let used = tx
            .execute(
                "DELETE FROM invites WHERE token_hash = $1 AND account = $2 AND expires_at > $3",
                &[&&hash[..], &user.account, &sql(now)],
            )
            .await
            .db()?;
        if used == 0 {
            return Err(StoreError::InviteInvalid);
        }
    }
    tx.execute(
        "INSERT INTO mailbox_state (account, last_uid, modseq) VALUES ($1, 0, 0)",
        &[&user.account],
    )
    .await
    .db()?;
    tx.commit().await.db()
}

fn user_row(r: &Row) -> Result<User, StoreError> {
    Ok(User {
        account: get(r, 0)?,
        identity_pk: get_key(r, 1)?,
        credentials: Credentials {
            opaque_record: get(r, 2)?,
            ksf: {
                let v: &[u8] = get(r, 3)?;
                <[u8; 12]>::try_from(v)
                    .map_err(|_| StoreError::Corrupt(format!("ksf is {} bytes", v.len())))?
            },
            xzibit: get(r, 4)?,
        },
        created_at: get_u64(r, 5)?,
        updated_at: get_u64(r, 6)?,
        quota: get_opt_u64(r, 7)?,
    })
}

pub(crate) async fn user(c: &Client, account: &str) -> Result<Option<User>, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT account, identity_pk, opaque_record, ksf, xzibit, created_at, updated_at, quota
             FROM users WHERE account = $1",
        )
        .await
        .db()?;
    c.query_opt(&stmt, &[&account])
        .await
        .db()?
        .as_ref()
        .map(user_row)
        .transpose()
}

pub(crate) async fn list_users(c: &Client) -> Result<Vec<UserSummary>, StoreError> {
    let rows = c
        .query(
            "SELECT u.account, u.created_at, COUNT(m.id), COALESCE(SUM(m.size), 0)::BIGINT, u.quota
             FROM users u LEFT JOIN mailbox m ON m.account = u.account
             GROUP BY u.account, u.created_at, u.quota ORDER BY u.account COLLATE \"C\"",
            &[],
        )
        .await
        .db()?;
    rows.iter()
        .map(|r| {
            Ok(UserSummary {
                account: get(r, 0)?,
                created_at: get_u64(r, 1)?,
                messages: get_u64(r, 2)?,
                bytes: get_u64(r, 3)?,
                quota: get_opt_u64(r, 4)?,
            })
        })
        .collect()
}

pub(crate) async fn ksf_histogram(c: &Client) -> Result<Vec<([u8; 12], u64)>, StoreError> {
    let rows = c
        .query(
            "SELECT ksf, COUNT(*) FROM users GROUP BY ksf ORDER BY ksf",
            &[],
        )
        .await
        .db()?;
    rows.iter()
        .map(|r| {
            let v: &[u8] = get(r, 0)?;
            let ksf = <[u8; 12]>::try_from(v)
                .map_err(|_| StoreError::Corrupt(format!("ksf is {} bytes, not 12", v.len())))?;
            Ok((ksf, get_u64(r, 1)?))
        })
        .collect()
}

pub(crate) async fn delete_user(c: &mut Client, account: &str) -> Result<bool, StoreError> {
    let tx = c.transaction().await.db()?;
    tx.execute(
        "WITH m AS (DELETE FROM mailbox WHERE account = $1 RETURNING blob_id)
         DELETE FROM blobs WHERE id IN (SELECT blob_id FROM m)",
        &[&account],
    )
    .await
    .db()?;
    tx.execute("DELETE FROM key_statements WHERE account = $1", &[&account])
        .await
        .db()?;
    tx.execute("DELETE FROM invites WHERE account = $1", &[&account])
        .await
        .db()?;
    for table in ["aliases", "reset_tokens", "unlocks"] {
        tx.execute(
            &format!("DELETE FROM {table} WHERE account = $1"),
            &[&account],
        )
        .await
        .db()?;
    }
    tx.execute("DELETE FROM mailbox_gone WHERE account = $1", &[&account])
        .await
        .db()?;
    tx.execute("DELETE FROM mailbox_state WHERE account = $1", &[&account])
        .await
        .db()?;
    let n = match tx
        .execute("DELETE FROM users WHERE account = $1", &[&account])
        .await
    {
        Ok(n) => n,
        // A delivery committed a new message after the mailbox was emptied:
        // start again (the retry takes that message along).
        Err(e) if is_foreign_key_violation(&e) => {
            return Err(StoreError::Busy(format!(
                "a message arrived while deleting {account}"
            )));
        }
        Err(e) => return Err(super::map_err(e)),
    };
    tx.commit().await.db()?;
    Ok(n > 0)
}

pub(crate) async fn update_credentials(
    c: &Client,
    account: &str,
    cred: &Credentials,
    now: u64,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE users SET opaque_record = $2, ksf = $3, xzibit = $4, updated_at = $5
             WHERE account = $1",
            &[
                &account,
                &cred.opaque_record,
                &&cred.ksf[..],
                &cred.xzibit,
                &sql(now),
            ],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn set_quota(
    c: &Client,
    account: &str,
    quota: Option<u64>,
) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE users SET quota = $2 WHERE account = $1",
            &[&account, &quota.map(sql)],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn quota(c: &Client, account: &str) -> Result<Option<Option<u64>>, StoreError> {
    let stmt = c
        .prepare_cached("SELECT quota FROM users WHERE account = $1")
        .await
        .db()?;
    c.query_opt(&stmt, &[&account])
        .await
        .db()?
        .as_ref()
        .map(|r| get_opt_u64(r, 0))
        .transpose()
}

pub(crate) async fn mailbox_usage(c: &Client, account: &str) -> Result<MailboxUsage, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(size), 0)::BIGINT FROM mailbox WHERE account = $1",
        )
        .await
        .db()?;
    let r = c.query_one(&stmt, &[&account]).await.db()?;
    Ok(MailboxUsage {
        messages: get_u64(&r, 0)?,
        bytes: get_u64(&r, 1)?,
    })
}

pub(crate) async fn claim_quota_notice(
    c: &Client,
    account: &str,
    now: u64,
    interval: u64,
) -> Result<bool, StoreError> {
    // One statement: the row lock orders nodes claiming at once; the second
    // re-checks the condition on the first's committed row and matches nothing.
    let n = c
        .execute(
            "UPDATE users SET quota_notice_at = $2
             WHERE account = $1 AND (quota_notice_at IS NULL OR quota_notice_at <= $3)",
            &[&account, &sql(now), &sql(now.saturating_sub(interval))],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn unlock_user(c: &Client, account: &str, now: u64) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "INSERT INTO unlocks (account, at)
             SELECT $1::TEXT, $2::BIGINT WHERE EXISTS (SELECT 1 FROM users WHERE account = $1::TEXT)",
            &[&account, &sql(now)],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn unlocks_after(c: &Client, after: u64) -> Result<Vec<Unlock>, StoreError> {
    let stmt = c
        .prepare_cached("SELECT id, account, at FROM unlocks WHERE id > $1 ORDER BY id LIMIT 10000")
        .await
        .db()?;
    let rows = c.query(&stmt, &[&sql(after)]).await.db()?;
    rows.iter()
        .map(|r| {
            Ok(Unlock {
                id: get_u64(r, 0)?,
                account: get(r, 1)?,
                at: get_u64(r, 2)?,
            })
        })
        .collect()
}

// ----- aliases -----

pub(crate) async fn add_alias(
    c: &mut Client,
    alias: &str,
    account: &str,
    now: u64,
) -> Result<(), StoreError> {
    let tx = c.transaction().await.db()?;
    tx.execute(NAME_LOCK, &[&alias]).await.db()?;
    let r = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM users WHERE account = $1)
                 OR EXISTS (SELECT 1 FROM aliases WHERE alias = $1),
                    EXISTS (SELECT 1 FROM users WHERE account = $2)",
            &[&alias, &account],
        )
        .await
        .db()?;
    let (taken, target): (bool, bool) = (get(&r, 0)?, get(&r, 1)?);
    if taken {
        return Err(StoreError::AlreadyExists);
    }
    if !target {
        return Err(StoreError::UnknownAccount);
    }
    match tx
        .execute(
            "INSERT INTO aliases (alias, account, created_at) VALUES ($1, $2, $3)",
            &[&alias, &account, &sql(now)],
        )
        .await
    {
        Ok(_) => {}
        // The account was deleted meanwhile.
        Err(e) if is_foreign_key_violation(&e) => return Err(StoreError::UnknownAccount),
        Err(e) => return Err(super::map_err(e)),
    }
    tx.commit().await.db()
}

pub(crate) async fn remove_alias(c: &Client, alias: &str) -> Result<bool, StoreError> {
    let n = c
        .execute("DELETE FROM aliases WHERE alias = $1", &[&alias])
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn list_aliases(c: &Client) -> Result<Vec<Alias>, StoreError> {
    let rows = c
        .query(
            "SELECT alias, account, created_at FROM aliases ORDER BY alias COLLATE \"C\"",
            &[],
        )
        .await
        .db()?;
    rows.iter()
        .map(|r| {
            Ok(Alias {
                alias: get(r, 0)?,
                account: get(r, 1)?,
                created_at: get_u64(r, 2)?,
            })
        })
        .collect()
}

pub(crate) async fn resolve_account(c: &Client, name: &str) -> Result<Option<String>, StoreError> {
    let stmt = c
        .prepare_cached(
            "SELECT account FROM users WHERE account = $1
             UNION ALL SELECT account FROM aliases WHERE alias = $1 LIMIT 1",
        )
        .await
        .db()?;
    c.query_opt(&stmt, &[&name])
        .await
        .db()?
        .map(|r| get(&r, 0))
        .transpose()
}

// ----- reset tokens -----

pub(crate) async fn create_reset(
    c: &Client,
    account: &str,
    hash: [u8; 32],
    expires_at: u64,
    now: u64,
) -> Result<(), StoreError> {
    let result = c
        .execute(
            "INSERT INTO reset_tokens (token_hash, account, created_at, expires_at)
             SELECT $1::BYTEA, $2::TEXT, $3::BIGINT, $4::BIGINT
             WHERE EXISTS (SELECT 1 FROM users WHERE account = $2::TEXT)
             ON CONFLICT (token_hash) DO NOTHING",
            &[&&hash[..], &account, &sql(now), &sql(expires_at)],
        )
        .await;
    match result {
        Ok(1) => Ok(()),
        Ok(_) => {
            let exists = user(c, account).await?.is_some();
            Err(if exists {
                StoreError::AlreadyExists
            } else {
                StoreError::UnknownAccount
            })
        }
        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownAccount),
        Err(e) => Err(super::map_err(e)),
    }
}

pub(crate) async fn reset_valid(
    c: &Client,
    account: &str,
    hash: [u8; 32],
    now: u64,
) -> Result<bool, StoreError> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM reset_tokens
                            WHERE token_hash = $1 AND account = $2 AND expires_at > $3)",
            &[&&hash[..], &account, &sql(now)],
        )
        .await
        .db()?;
    get(&row, 0)
}

pub(crate) async fn reset_user(
    c: &mut Client,
    account: &str,
    hash: [u8; 32],
    identity_pk: [u8; 32],
    cred: &Credentials,
    now: u64,
) -> Result<(), StoreError> {
    let tx = c.transaction().await.db()?;
    // Consuming the token first: two resets with one token wait for each
    // other here, and the second finds it gone.
    let used = tx
        .execute(
            "DELETE FROM reset_tokens WHERE token_hash = $1 AND account = $2 AND expires_at > $3",
            &[&&hash[..], &account, &sql(now)],
        )
        .await
        .db()?;
    if used == 0 {
        return Err(StoreError::ResetTokenInvalid);
    }
    tx.execute("DELETE FROM reset_tokens WHERE account = $1", &[&account])
        .await
        .db()?;
    tx.execute("DELETE FROM key_statements WHERE account = $1", &[&account])
        .await
        .db()?;
    let n = tx
        .execute(
            "UPDATE users SET identity_pk = $2, opaque_record = $3, ksf = $4, xzibit = $5,
                              updated_at = $6
             WHERE account = $1",
            &[
                &account,
                &&identity_pk[..],
                &cred.opaque_record,
                &&cred.ksf[..],
                &cred.xzibit,
                &sql(now),
            ],
        )
        .await
        .db()?;
    if n == 0 {
        return Err(StoreError::ResetTokenInvalid);
    }
    tx.commit().await.db()
}

// ----- invites -----

pub(crate) async fn create_invite(
    c: &Client,
    account: &str,
    hash: [u8; 32],
    expires_at: u64,
    now: u64,
) -> Result<(), StoreError> {
    let n = c
        .execute(
            "INSERT INTO invites (token_hash, account, created_at, expires_at)
             VALUES ($1, $2, $3, $4) ON CONFLICT (token_hash) DO NOTHING",
            &[&&hash[..], &account, &sql(now), &sql(expires_at)],
        )
        .await
        .db()?;
    if n == 0 {
        return Err(StoreError::AlreadyExists);
    }
    Ok(())
}

pub(crate) async fn invite_valid(
    c: &Client,
    account: &str,
    hash: [u8; 32],
    now: u64,
) -> Result<bool, StoreError> {
    let row = c
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM invites
                            WHERE token_hash = $1 AND account = $2 AND expires_at > $3)",
            &[&&hash[..], &account, &sql(now)],
        )
        .await
        .db()?;
    get(&row, 0)
}

// ----- maintenance -----

/// How long unlock records are kept (every node has applied them by then).
const UNLOCK_RETENTION: u64 = 24 * 3600;

pub(crate) async fn purge_expired(
    c: &mut Client,
    now: u64,
    retention: Retention,
) -> Result<PurgeReport, StoreError> {
    let tx = c.transaction().await.db()?;
    let invites = tx
        .execute("DELETE FROM invites WHERE expires_at <= $1", &[&sql(now)])
        .await
        .db()?;
    let dedup_entries = tx
        .execute(
            "DELETE FROM delivered d WHERE d.at < $1
             AND NOT EXISTS (SELECT 1 FROM mailbox m WHERE m.id = d.message_id)",
            &[&sql(now.saturating_sub(retention.dedup))],
        )
        .await
        .db()?;
    // Chunks go with their blob (ON DELETE CASCADE). A blob being appended
    // to or referenced right now is locked; the purge waits and then sees
    // whether it is still staged.
    let staged_blobs = tx
        .execute(
            "DELETE FROM blobs WHERE staged_at IS NOT NULL AND staged_at < $1",
            &[&sql(now.saturating_sub(retention.staged_grace))],
        )
        .await
        .db()?;
    let mut cached_statements = tx
        .execute(
            "DELETE FROM statement_cache WHERE expires_at <= $1",
            &[&sql(now)],
        )
        .await
        .db()?;
    // Over its bound, the cache loses the statements that expire soonest.
    cached_statements += tx
        .execute(
            "DELETE FROM statement_cache WHERE (account, domain) IN (
                 SELECT account, domain FROM statement_cache
                 ORDER BY expires_at, account, domain
                 LIMIT GREATEST(0, (SELECT COUNT(*) FROM statement_cache) - $1))",
            &[&sql(retention.max_cached_statements)],
        )
        .await
        .db()?;
    // Over their bound, the pins first seen last go first: a flood of new
    // domains never displaces an established pin.
    let pins = tx
        .execute(
            "DELETE FROM pins WHERE domain IN (
                 SELECT domain FROM pins ORDER BY first_seen DESC, domain DESC
                 LIMIT GREATEST(0, (SELECT COUNT(*) FROM pins) - $1))",
            &[&sql(retention.max_pins)],
        )
        .await
        .db()?;
    let reset_tokens = tx
        .execute(
            "DELETE FROM reset_tokens WHERE expires_at <= $1",
            &[&sql(now)],
        )
        .await
        .db()?;
    let unlocks = tx
        .execute(
            "DELETE FROM unlocks WHERE at < $1",
            &[&sql(now.saturating_sub(UNLOCK_RETENTION))],
        )
        .await
        .db()?;
    tx.commit().await.db()?;
    Ok(PurgeReport {
        invites,
        dedup_entries,
        staged_blobs,
        cached_statements,
        pins,
        reset_tokens,
        unlocks,
    })
}

// ----- secrets -----

async fn secret_get(c: &Client, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let stmt = c
        .prepare_cached("SELECT value FROM secrets WHERE name = $1")
        .await
        .db()?;
    c.query_opt(&stmt, &[&name])
        .await
        .db()?
        .map(|r| get(&r, 0))
        .transpose()
}

pub(crate) async fn secret_get_or_init(
    c: &Client,
    name: &str,
    candidate: &[u8],
) -> Result<Vec<u8>, StoreError> {
    if let Some(value) = secret_get(c, name).await? {
        return Ok(value);
    }
    // A concurrent insert of the same name makes this one wait for it, then
    // do nothing; the SELECT that follows (a new snapshot) sees the winner.
    c.execute(
        "INSERT INTO secrets (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[&name, &candidate],
    )
    .await
    .db()?;
    secret_get(c, name)
        .await?
        .ok_or_else(|| StoreError::Internal("secret vanished".into()))
}

// ----- local key statements -----

pub(crate) async fn put_key_statement(
    c: &Client,
    account: &str,
    statement: &[u8],
    expires_at: u64,
) -> Result<(), StoreError> {
    let result = c
        .execute(
            "INSERT INTO key_statements (account, statement, expires_at)
             SELECT $1::TEXT, $2::BYTEA, $3::BIGINT
             WHERE EXISTS (SELECT 1 FROM users WHERE account = $1::TEXT)
             ON CONFLICT (account) DO UPDATE
                 SET statement = EXCLUDED.statement, expires_at = EXCLUDED.expires_at",
            &[&account, &statement, &sql(expires_at)],
        )
        .await;
    match result {
        Ok(0) => Err(StoreError::UnknownAccount),
        Ok(_) => Ok(()),
        // The user was deleted between the check and the insert.
        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownAccount),
        Err(e) => Err(super::map_err(e)),
    }
}

pub(crate) async fn key_statement(
    c: &Client,
    account: &str,
) -> Result<Option<KeyStatement>, StoreError> {
    c.query_opt(
        "SELECT statement, expires_at FROM key_statements WHERE account = $1",
        &[&account],
    )
    .await
    .db()?
    .map(|r| {
        Ok(KeyStatement {
            statement: get(&r, 0)?,
            expires_at: get_u64(&r, 1)?,
        })
    })
    .transpose()
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

pub(crate) async fn stage_begin(c: &Client, now: u64) -> Result<StagedBlob, StoreError> {
    let row = c
        .query_one(
            "INSERT INTO blobs (size, chunks, staged_at) VALUES (0, 0, $1) RETURNING id",
            &[&sql(now)],
        )
        .await
        .db()?;
    Ok(StagedBlob {
        id: get_u64(&row, 0)?,
    })
}

pub(crate) async fn stage_append(c: &Client, blob: u64, chunk: &Bytes) -> Result<(), StoreError> {
    if chunk.is_empty() {
        return Err(StoreError::InvalidInput("empty chunk".into()));
    }
    check_chunk(chunk.len())?;
    // One statement: the blob's row lock orders concurrent appends, a purge
    // or a reference, and the chunk number comes from the same update.
    let stmt = c
        .prepare_cached(
            "WITH b AS (
                 UPDATE blobs SET size = size + $2, chunks = chunks + 1
                 WHERE id = $1 AND staged_at IS NOT NULL
                 RETURNING id, chunks - 1 AS seq)
             INSERT INTO blob_chunks (blob_id, seq, data) SELECT id, seq, $3::BYTEA FROM b",
        )
        .await
        .db()?;
    let len = i64::try_from(chunk.len()).unwrap_or(i64::MAX);
    let n = c
        .execute(&stmt, &[&sql(blob), &len, &&chunk[..]])
        .await
        .db()?;
    if n == 0 {
        return Err(StoreError::BlobNotFound);
    }
    Ok(())
}

pub(crate) async fn stage_abort(c: &Client, blob: u64) -> Result<bool, StoreError> {
    // Chunks go with their blob (ON DELETE CASCADE); a referenced blob is
    // not staged and is not touched.
    let stmt = c
        .prepare_cached("DELETE FROM blobs WHERE id = $1 AND staged_at IS NOT NULL")
        .await
        .db()?;
    let n = c.execute(&stmt, &[&sql(blob)]).await.db()?;
    Ok(n > 0)
}

pub(crate) async fn read_chunk(
    c: &Client,
    blob: u64,
    seq: u32,
) -> Result<Option<Bytes>, StoreError> {
    let stmt = c
        .prepare_cached("SELECT data FROM blob_chunks WHERE blob_id = $1 AND seq = $2")
        .await
        .db()?;
    let row = c
        .query_opt(&stmt, &[&sql(blob), &i64::from(seq)])
        .await
        .db()?;
    row.map(|r| get::<Vec<u8>>(&r, 0).map(Bytes::from))
        .transpose()
}

/// Drops the staged body of a request that stores nothing (a duplicate).
async fn discard_body<C: GenericClient>(c: &C, body: &MessageBody) -> Result<(), StoreError> {
    if let MessageBody::Staged(staged) = body {
        c.execute(
            "DELETE FROM blobs WHERE id = $1 AND staged_at IS NOT NULL",
            &[&sql(staged.id)],
        )
        .await
        .db()?;
    }
    Ok(())
}

/// Checks an inline body against its announced size; returns its chunk
/// count (0 for an empty body).
pub(super) fn check_inline(bytes: &Bytes, size: u64) -> Result<i64, StoreError> {
    check_chunk(bytes.len())?;
    if bytes.len() as u64 != size {
        return Err(StoreError::InvalidInput(format!(
            "size {size} does not match the {}-byte body",
            bytes.len()
        )));
    }
    Ok(i64::from(!bytes.is_empty()))
}

/// Takes a staged blob for the row about to be inserted (it is then no
/// longer staged); returns its id.
async fn take_staged<C: GenericClient>(
    c: &C,
    staged: &StagedBlob,
    size: u64,
) -> Result<i64, StoreError> {
    let stmt = c
        .prepare_cached(
            "UPDATE blobs SET staged_at = NULL WHERE id = $1 AND staged_at IS NOT NULL
             RETURNING size",
        )
        .await
        .db()?;
    let row = c.query_opt(&stmt, &[&sql(staged.id)]).await.db()?;
    let Some(row) = row else {
        return Err(StoreError::BlobNotFound);
    };
    let stored = get_u64(&row, 0)?;
    if stored != size {
        return Err(StoreError::InvalidInput(format!(
            "size {size} does not match the {stored}-byte staged blob"
        )));
    }
    Ok(sql(staged.id))
}

// ----- mailbox -----

pub(crate) async fn deliver(
    c: &mut Client,
    d: &NewDelivery,
    folder: &str,
    flags: u32,
) -> Result<Delivered, StoreError> {
    if let MessageBody::Inline(bytes) = &d.body
        && let Ok(chunks) = check_inline(bytes, d.size)
        && let Some(delivered) = deliver_inline(c, d, bytes, chunks, folder, flags).await?
    {
        return Ok(delivered);
    }
    let tx = c.transaction().await.db()?;
    let delivered = deliver_in(&tx, d, folder, flags).await?;
    tx.commit().await.db()?;
    Ok(delivered)
}

/// The statement of [`deliver_inline`] (also run, several in one
/// transaction, by the batches of `super::batch`); its parameters are
/// [`InlineValues::params`]. One row (the new uid) when the message was
/// stored, none otherwise.
pub(super) const DELIVER_INLINE: &str = "WITH st AS (
         UPDATE mailbox_state SET last_uid = last_uid + 1, modseq = modseq + 1
         WHERE account = $1::TEXT
           AND NOT EXISTS (SELECT 1 FROM delivered WHERE hash = $2::BYTEA)
         RETURNING last_uid, modseq),
     claim AS (
         INSERT INTO delivered (hash, account, message_id, at)
         SELECT $2::BYTEA, $1::TEXT, nextval('mailbox_id_seq'), $4::BIGINT FROM st
         ON CONFLICT (hash) DO NOTHING
         RETURNING message_id),
     b AS (
         INSERT INTO blobs (size, chunks, staged_at)
         SELECT $6::BIGINT, $8::BIGINT, NULL FROM claim
         RETURNING id),
     ch AS (
         INSERT INTO blob_chunks (blob_id, seq, data)
         SELECT id, 0, $9::BYTEA FROM b WHERE $8::BIGINT = 1),
     m AS (
         INSERT INTO mailbox (id, account, hash, source, received_at, version,
                              attachment_count, size, blob_id, uid, modseq, flags, folder)
         SELECT claim.message_id, $1::TEXT, $2::BYTEA, $3::TEXT, $4::BIGINT, $5::BIGINT,
                $7::BIGINT, $6::BIGINT, b.id, st.last_uid, st.modseq, $11::BIGINT,
                $10::TEXT
         FROM claim, b, st
         RETURNING uid)
     SELECT uid FROM m";

/// The values [`DELIVER_INLINE`] binds, converted once so that the
/// parameter list can borrow them.
pub(super) struct InlineValues<'a> {
    d: &'a NewDelivery,
    hash: &'a [u8],
    bytes: &'a [u8],
    folder: &'a str,
    received_at: i64,
    version: i64,
    size: i64,
    attachments: i64,
    chunks: i64,
    flags: i64,
}

impl<'a> InlineValues<'a> {
    pub(super) fn new(
        d: &'a NewDelivery,
        bytes: &'a Bytes,
        chunks: i64,
        folder: &'a str,
        flags: u32,
    ) -> InlineValues<'a> {
        InlineValues {
            d,
            hash: &d.hash,
            bytes,
            folder,
            received_at: sql(d.received_at),
            version: i64::from(d.version),
            size: sql(d.size),
            attachments: i64::from(d.attachment_count),
            chunks,
            flags: i64::from(flags),
        }
    }

    /// The parameters of [`DELIVER_INLINE`], in order.
    pub(super) fn params(&self) -> [&(dyn ToSql + Sync); 11] {
        [
            &self.d.account,
            &self.hash,
            &self.d.source,
            &self.received_at,
            &self.version,
            &self.size,
            &self.attachments,
            &self.chunks,
            &self.bytes,
            &self.folder,
            &self.flags,
        ]
    }
}

/// The common case in one statement (one round trip, committed on its own):
/// a valid inline body for an existing recipient and a new hash. The
/// recipient's mailbox counters are raised (which fails to find a row for
/// an unknown recipient, and holds the row's lock so that deliveries to one
/// mailbox take their ids in commit order), the hash is claimed, then blob,
/// chunk and mailbox row are inserted; a concurrent delivery of the same
/// hash waits on the claimed row as in [`deliver_in`]. `None` when nothing
/// was stored (a duplicate or an unknown recipient; a duplicate racing this
/// one leaves a gap in the ids, which are only promised to increase): the
/// caller then takes the general path, which tells the two apart in the
/// order SQLite does.
async fn deliver_inline(
    c: &Client,
    d: &NewDelivery,
    bytes: &Bytes,
    chunks: i64,
    folder: &str,
    flags: u32,
) -> Result<Option<Delivered>, StoreError> {
    let stmt = c.prepare_cached(DELIVER_INLINE).await.db()?;
    let values = InlineValues::new(d, bytes, chunks, folder, flags);
    let result = c.query_opt(&stmt, &values.params()).await;
    match result {
        Ok(Some(row)) => Ok(Some(Delivered {
            id: get_u64(&row, 0)?,
            duplicate: false,
        })),
        Ok(None) => Ok(None),
        // The recipient was deleted while this ran: the general path says so.
        Err(e) if is_foreign_key_violation(&e) => Ok(None),
        Err(e) => Err(super::map_err(e)),
    }
}

/// The delivery itself, inside the caller's transaction (which the caller
/// rolls back on error).
async fn deliver_in<C: GenericClient>(
    c: &C,
    d: &NewDelivery,
    folder: &str,
    flags: u32,
) -> Result<Delivered, StoreError> {
    // Claim the hash first, with the mailbox id the message will get. A
    // concurrent delivery of the same hash waits on this row until this
    // transaction ends, then finds it (a duplicate) or, if this one rolled
    // back, claims it itself.
    let claim = c
        .prepare_cached(
            "WITH claim AS (
                 INSERT INTO delivered (hash, account, message_id, at)
                 VALUES ($1, $2, nextval('mailbox_id_seq'), $3)
                 ON CONFLICT (hash) DO NOTHING
                 RETURNING message_id)
             SELECT (SELECT message_id FROM claim),
                    EXISTS (SELECT 1 FROM users WHERE account = $2)",
        )
        .await
        .db()?;
    let row = c
        .query_one(&claim, &[&&d.hash[..], &d.account, &sql(d.received_at)])
        .await
        .db()?;
    let claimed: Option<i64> = get(&row, 0)?;
    let account_exists: bool = get(&row, 1)?;
    let Some(id) = claimed else {
        let previous = c
            .prepare_cached(
                "SELECT COALESCE(m.uid, 0) FROM delivered d LEFT JOIN mailbox m ON m.id = d.message_id
                 WHERE d.hash = $1",
            )
            .await
            .db()?;
        let id = match c.query_opt(&previous, &[&&d.hash[..]]).await.db()? {
            Some(r) => get_u64(&r, 0)?,
            // Purged in the meantime: still a duplicate of a message that
            // is gone.
            None => 0,
        };
        discard_body(c, &d.body).await?;
        return Ok(Delivered {
            id,
            duplicate: true,
        });
    };
    if !account_exists {
        return Err(StoreError::UnknownAccount);
    }
    let counters = c
        .prepare_cached(
            "UPDATE mailbox_state SET last_uid = last_uid + 1, modseq = modseq + 1
             WHERE account = $1 RETURNING last_uid, modseq",
        )
        .await
        .db()?;
    let Some(row) = c.query_opt(&counters, &[&d.account]).await.db()? else {
        return Err(StoreError::UnknownAccount);
    };
    let (uid, modseq): (i64, i64) = (get(&row, 0)?, get(&row, 1)?);
    let flags = i64::from(flags);
    let version = i64::from(d.version);
    let attachments = i64::from(d.attachment_count);
    let inserted = match &d.body {
        MessageBody::Inline(bytes) => {
            let chunks = check_inline(bytes, d.size)?;
            // Blob, chunk and mailbox row in one statement.
            let stmt = c
                .prepare_cached(
                    "WITH b AS (
                         INSERT INTO blobs (size, chunks, staged_at) VALUES ($7, $9, NULL)
                         RETURNING id),
                     ch AS (
                         INSERT INTO blob_chunks (blob_id, seq, data)
                         SELECT id, 0, $10::BYTEA FROM b WHERE $9::BIGINT = 1)
                     INSERT INTO mailbox (id, account, hash, source, received_at, version,
                                          attachment_count, size, blob_id, uid, modseq, flags,
                                          folder)
                     SELECT $1::BIGINT, $2::TEXT, $3::BYTEA, $4::TEXT, $5::BIGINT, $6::BIGINT,
                            $8::BIGINT, $7::BIGINT, b.id, $11::BIGINT, $12::BIGINT, $13::BIGINT,
                            $14::TEXT
                     FROM b",
                )
                .await
                .db()?;
            c.execute(
                &stmt,
                &[
                    &id,
                    &d.account,
                    &&d.hash[..],
                    &d.source,
                    &sql(d.received_at),
                    &version,
                    &sql(d.size),
                    &attachments,
                    &chunks,
                    &&bytes[..],
                    &uid,
                    &modseq,
                    &flags,
                    &folder,
                ],
            )
            .await
        }
        MessageBody::Staged(staged) => {
            let blob = take_staged(c, staged, d.size).await?;
            let stmt = c
                .prepare_cached(
                    "INSERT INTO mailbox (id, account, hash, source, received_at, version,
                                          attachment_count, size, blob_id, uid, modseq, flags,
                                          folder)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .await
                .db()?;
            c.execute(
                &stmt,
                &[
                    &id,
                    &d.account,
                    &&d.hash[..],
                    &d.source,
                    &sql(d.received_at),
                    &version,
                    &attachments,
                    &sql(d.size),
                    &blob,
                    &uid,
                    &modseq,
                    &flags,
                    &folder,
                ],
            )
            .await
        }
    };
    match inserted {
        Ok(_) => Ok(Delivered {
            id: unsigned(uid, "mailbox uid")?,
            duplicate: false,
        }),
        // The recipient was deleted after the claim.
        Err(e) if is_foreign_key_violation(&e) => Err(StoreError::UnknownAccount),
        Err(e) => Err(super::map_err(e)),
    }
}

const MAILBOX_COLUMNS: &str = "m.uid, m.hash, m.size, m.received_at, m.source, m.version, m.attachment_count, b.id, b.size, b.chunks, m.modseq, m.flags, m.folder";

fn mailbox_row(r: &Row) -> Result<(MailboxEntry, BlobRef), StoreError> {
    Ok((
        MailboxEntry {
            id: get_u64(r, 0)?,
            hash: get_key(r, 1)?,
            size: get_u64(r, 2)?,
            received_at: get_u64(r, 3)?,
            source: get(r, 4)?,
            version: get_u32(r, 5)?,
            attachment_count: get_u32(r, 6)?,
            modseq: get_u64(r, 10)?,
            flags: get_u32(r, 11)?,
            folder: get(r, 12)?,
        },
        BlobRef {
            id: get_u64(r, 7)?,
            size: get_u64(r, 8)?,
            chunks: get_u32(r, 9)?,
        },
    ))
}

pub(crate) async fn list_mailbox(
    c: &Client,
    account: &str,
) -> Result<Vec<MailboxEntry>, StoreError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox m JOIN blobs b ON b.id = m.blob_id
             WHERE m.account = $1 ORDER BY m.uid"
        ))
        .await
        .db()?;
    let rows = c.query(&stmt, &[&account]).await.db()?;
    rows.iter()
        .map(|r| mailbox_row(r).map(|(e, _)| e))
        .collect()
}

pub(crate) async fn mailbox_message(
    c: &Client,
    account: &str,
    id: u64,
) -> Result<Option<(MailboxEntry, BlobRef)>, StoreError> {
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox m JOIN blobs b ON b.id = m.blob_id
             WHERE m.account = $1 AND m.uid = $2"
        ))
        .await
        .db()?;
    c.query_opt(&stmt, &[&account, &sql(id)])
        .await
        .db()?
        .as_ref()
        .map(mailbox_row)
        .transpose()
}

pub(crate) async fn delete_message(
    c: &mut Client,
    account: &str,
    id: u64,
) -> Result<bool, StoreError> {
    let tx = c.transaction().await.db()?;
    let n = tx
        .execute(
            "WITH m AS (DELETE FROM mailbox WHERE account = $1 AND uid = $2 RETURNING blob_id)
             DELETE FROM blobs WHERE id IN (SELECT blob_id FROM m)",
            &[&account, &sql(id)],
        )
        .await
        .db()?;
    if n == 0 {
        return Ok(false);
    }
    tx.execute(
        "WITH st AS (UPDATE mailbox_state SET modseq = modseq + 1 WHERE account = $1
                     RETURNING modseq)
         INSERT INTO mailbox_gone (account, uid, modseq) SELECT $1, $2, st.modseq FROM st",
        &[&account, &sql(id)],
    )
    .await
    .db()?;
    tx.commit().await.db()?;
    Ok(true)
}

async fn mailbox_state<C: GenericClient>(c: &C, account: &str) -> Result<MailboxState, StoreError> {
    let stmt = c
        .prepare_cached("SELECT id, modseq FROM mailbox_state WHERE account = $1")
        .await
        .db()?;
    let row = c
        .query_opt(&stmt, &[&account])
        .await
        .db()?
        .ok_or(StoreError::UnknownAccount)?;
    Ok(MailboxState {
        epoch: get_u64(&row, 0)?,
        modseq: get_u64(&row, 1)?,
    })
}

fn limit_sql(limit: usize) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

pub(crate) async fn mailbox_page(
    c: &Client,
    account: &str,
    before: u64,
    limit: usize,
) -> Result<MailboxPage, StoreError> {
    let state = mailbox_state(c, account).await?;
    let before = if before == 0 { i64::MAX } else { sql(before) };
    let stmt = c
        .prepare_cached(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox m JOIN blobs b ON b.id = m.blob_id
             WHERE m.account = $1 AND m.uid < $2 ORDER BY m.uid DESC LIMIT $3"
        ))
        .await
        .db()?;
    let rows = c
        .query(&stmt, &[&account, &before, &limit_sql(limit)])
        .await
        .db()?;
    let entries = rows
        .iter()
        .map(|r| mailbox_row(r).map(|(e, _)| e))
        .collect::<Result<_, _>>()?;
    Ok(MailboxPage { state, entries })
}

pub(crate) async fn mailbox_changes(
    c: &Client,
    account: &str,
    since: u64,
    limit: usize,
) -> Result<MailboxChanges, StoreError> {
    let state = mailbox_state(c, account).await?;
    let entries = c
        .prepare_cached(&format!(
            "SELECT {MAILBOX_COLUMNS} FROM mailbox m JOIN blobs b ON b.id = m.blob_id
             WHERE m.account = $1 AND m.modseq > $2 ORDER BY m.modseq LIMIT $3"
        ))
        .await
        .db()?;
    let gone = c
        .prepare_cached(
            "SELECT uid, modseq FROM mailbox_gone WHERE account = $1 AND modseq > $2
             ORDER BY modseq LIMIT $3",
        )
        .await
        .db()?;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
        [&account, &sql(since), &(limit_sql(limit) + 1)];
    let mut changes = Vec::new();
    for r in c.query(&entries, &params).await.db()? {
        changes.push(MailboxChange::Entry(mailbox_row(&r)?.0));
    }
    for r in c.query(&gone, &params).await.db()? {
        changes.push(MailboxChange::Removed {
            id: get_u64(&r, 0)?,
            modseq: get_u64(&r, 1)?,
        });
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

pub(crate) async fn set_flags(
    c: &mut Client,
    account: &str,
    ids: &[u64],
    set: u32,
    clear: u32,
) -> Result<FlagsChanged, StoreError> {
    let tx = c.transaction().await.db()?;
    // Lock the counters first: changes to one mailbox take modseqs in
    // commit order.
    let row = tx
        .query_opt(
            "SELECT modseq FROM mailbox_state WHERE account = $1 FOR UPDATE",
            &[&account],
        )
        .await
        .db()?
        .ok_or(StoreError::UnknownAccount)?;
    let mut modseq: i64 = get(&row, 0)?;
    let update = tx
        .prepare_cached(
            "UPDATE mailbox SET flags = (flags | $3::BIGINT) & ~$4::BIGINT, modseq = $5
             WHERE account = $1 AND uid = $2 AND flags <> ((flags | $3::BIGINT) & ~$4::BIGINT)",
        )
        .await
        .db()?;
    let (set, clear) = (i64::from(set), i64::from(clear));
    let mut changed = 0u32;
    for &id in ids {
        let n = tx
            .execute(&update, &[&account, &sql(id), &set, &clear, &(modseq + 1)])
            .await
            .db()?;
        if n > 0 {
            modseq += 1;
            changed += 1;
        }
    }
    if changed > 0 {
        tx.execute(
            "UPDATE mailbox_state SET modseq = $2 WHERE account = $1",
            &[&account, &modseq],
        )
        .await
        .db()?;
    }
    tx.commit().await.db()?;
    Ok(FlagsChanged {
        modseq: unsigned(modseq, "modseq")?,
        changed,
    })
}

/// Files the entries `ids` of `account` into `folder` (PROTOCOL.md §13.7).
pub(crate) async fn move_messages(
    c: &mut Client,
    account: &str,
    ids: &[u64],
    folder: &str,
) -> Result<FlagsChanged, StoreError> {
    let tx = c.transaction().await.db()?;
    // The counters' lock first, as for flags: modseqs in commit order.
    let row = tx
        .query_opt(
            "SELECT modseq FROM mailbox_state WHERE account = $1 FOR UPDATE",
            &[&account],
        )
        .await
        .db()?
        .ok_or(StoreError::UnknownAccount)?;
    let mut modseq: i64 = get(&row, 0)?;
    let update = tx
        .prepare_cached(
            "UPDATE mailbox SET folder = $3, modseq = $4
             WHERE account = $1 AND uid = $2 AND folder <> $3",
        )
        .await
        .db()?;
    let mut changed = 0u32;
    for &id in ids {
        let n = tx
            .execute(&update, &[&account, &sql(id), &folder, &(modseq + 1)])
            .await
            .db()?;
        if n > 0 {
            modseq += 1;
            changed += 1;
        }
    }
    if changed > 0 {
        tx.execute(
            "UPDATE mailbox_state SET modseq = $2 WHERE account = $1",
            &[&account, &modseq],
        )
        .await
        .db()?;
    }
    tx.commit().await.db()?;
    Ok(FlagsChanged {
        modseq: unsigned(modseq, "modseq")?,
        changed,
    })
}

// ----- outbound queue -----

pub(crate) async fn enqueue(c: &mut Client, o: &NewOutbound) -> Result<Enqueued, StoreError> {
    let tx = c.transaction().await.db()?;
    let existing = tx
        .query_opt("SELECT id FROM outbound WHERE hash = $1", &[&&o.hash[..]])
        .await
        .db()?;
    if let Some(row) = existing {
        discard_body(&tx, &o.body).await?;
        tx.commit().await.db()?;
        return Ok(Enqueued {
            id: get_u64(&row, 0)?,
            duplicate: true,
        });
    }
    let blob = match &o.body {
        MessageBody::Inline(bytes) => {
            let chunks = check_inline(bytes, o.size)?;
            let row = tx
                .query_one(
                    "WITH b AS (
                         INSERT INTO blobs (size, chunks, staged_at) VALUES ($1, $2, NULL)
                         RETURNING id),
                     ch AS (
                         INSERT INTO blob_chunks (blob_id, seq, data)
                         SELECT id, 0, $3::BYTEA FROM b WHERE $2::BIGINT = 1)
                     SELECT id FROM b",
                    &[&sql(o.size), &chunks, &&bytes[..]],
                )
                .await
                .db()?;
            get::<i64>(&row, 0)?
        }
        MessageBody::Staged(staged) => take_staged(&tx, staged, o.size).await?,
    };
    let row = tx
        .query_opt(
            "INSERT INTO outbound (hash, sender, destination, dest_domain, size, created_at,
                                   expires_at, next_attempt_at, attempts, blob_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $6, 0, $8)
             ON CONFLICT (hash) DO NOTHING RETURNING id",
            &[
                &&o.hash[..],
                &o.sender,
                &o.destination,
                &o.dest_domain,
                &sql(o.size),
                &sql(o.created_at),
                &sql(o.expires_at),
                &blob,
            ],
        )
        .await
        .db()?;
    let Some(row) = row else {
        // Another node queued the same hash meanwhile: roll back and run
        // again, which finds its entry.
        return Err(StoreError::Busy(
            "the same message was queued concurrently".into(),
        ));
    };
    let id = get_u64(&row, 0)?;
    tx.commit().await.db()?;
    Ok(Enqueued {
        id,
        duplicate: false,
    })
}

const OUTBOUND_COLUMNS: &str = "o.id, o.hash, o.sender, o.destination, o.dest_domain, o.size, o.created_at, o.expires_at, o.next_attempt_at, o.attempts, o.last_error, o.lease_owner, o.lease_until, b.id, b.size, b.chunks, o.held";

fn outbound_row(r: &Row) -> Result<OutboundEntry, StoreError> {
    Ok(OutboundEntry {
        id: get_u64(r, 0)?,
        hash: get_key(r, 1)?,
        sender: get(r, 2)?,
        destination: get(r, 3)?,
        dest_domain: get(r, 4)?,
        size: get_u64(r, 5)?,
        created_at: get_u64(r, 6)?,
        expires_at: get_u64(r, 7)?,
        next_attempt_at: get_u64(r, 8)?,
        attempts: get_u32(r, 9)?,
        last_error: get(r, 10)?,
        lease_owner: get(r, 11)?,
        lease_until: get_opt_u64(r, 12)?,
        held: get(r, 16)?,
        blob: BlobRef {
            id: get_u64(r, 13)?,
            size: get_u64(r, 14)?,
            chunks: get_u32(r, 15)?,
        },
    })
}

pub(crate) async fn lease_due(
    c: &Client,
    now: u64,
    node: &str,
    lease_until: u64,
    limit: usize,
) -> Result<Vec<OutboundEntry>, StoreError> {
    // The due entries nobody holds are locked with SKIP LOCKED, so nodes
    // leasing at the same moment take disjoint sets instead of waiting for
    // each other. An entry another node leased and committed after this
    // statement's snapshot is re-checked on its newest version (READ
    // COMMITTED) and dropped, its lease being valid.
    let stmt = c
        .prepare_cached(&format!(
            "WITH due AS (
                 SELECT id FROM outbound
                 WHERE next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
                   AND NOT held
                 ORDER BY next_attempt_at, id
                 LIMIT $2
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbound o SET lease_owner = $3, lease_until = $4
             FROM due, blobs b
             WHERE o.id = due.id AND b.id = o.blob_id
             RETURNING {OUTBOUND_COLUMNS}"
        ))
        .await
        .db()?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = c
        .query(&stmt, &[&sql(now), &limit, &node, &sql(lease_until)])
        .await
        .db()?;
    let mut entries = rows
        .iter()
        .map(outbound_row)
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| (e.next_attempt_at, e.id));
    Ok(entries)
}

pub(crate) async fn lease_due_per_domain(
    c: &Client,
    now: u64,
    node: &str,
    lease_until: u64,
    limit: usize,
    per_domain: usize,
    in_flight: &[(String, usize)],
) -> Result<Vec<OutboundEntry>, StoreError> {
    if limit == 0 || per_domain == 0 {
        return Ok(Vec::new());
    }
    // The due entries are numbered per domain in due order (after the ones
    // already in flight); those within the domain's limit are picked, then
    // locked with SKIP LOCKED (FOR UPDATE cannot go with a window function)
    // and re-checked, as in `lease_due`.
    let stmt = c
        .prepare_cached(&format!(
            "WITH busy AS (
                 SELECT * FROM unnest($5::TEXT[], $6::BIGINT[]) AS b (domain, n)),
             ranked AS (
                 SELECT o.id, o.next_attempt_at,
                        row_number() OVER (PARTITION BY o.dest_domain
                                           ORDER BY o.next_attempt_at, o.id)
                        + COALESCE(busy.n, 0) AS slot
                 FROM outbound o LEFT JOIN busy ON busy.domain = o.dest_domain
                 WHERE o.next_attempt_at <= $1
                   AND (o.lease_until IS NULL OR o.lease_until <= $1)),
             picked AS (
                 SELECT id FROM ranked WHERE slot <= $7
                 ORDER BY next_attempt_at, id LIMIT $2),
             due AS (
                 SELECT id FROM outbound
                 WHERE id IN (SELECT id FROM picked)
                   AND next_attempt_at <= $1 AND (lease_until IS NULL OR lease_until <= $1)
                 FOR UPDATE SKIP LOCKED)
             UPDATE outbound o SET lease_owner = $3, lease_until = $4
             FROM due, blobs b
             WHERE o.id = due.id AND b.id = o.blob_id
             RETURNING {OUTBOUND_COLUMNS}"
        ))
        .await
        .db()?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let per_domain = i64::try_from(per_domain).unwrap_or(i64::MAX);
    let domains: Vec<&str> = in_flight.iter().map(|(d, _)| d.as_str()).collect();
    let counts: Vec<i64> = in_flight
        .iter()
        .map(|(_, n)| i64::try_from(*n).unwrap_or(i64::MAX))
        .collect();
    let rows = c
        .query(
            &stmt,
            &[
                &sql(now),
                &limit,
                &node,
                &sql(lease_until),
                &domains,
                &counts,
                &per_domain,
            ],
        )
        .await
        .db()?;
    let mut entries = rows
        .iter()
        .map(outbound_row)
        .collect::<Result<Vec<_>, _>>()?;
    entries.sort_by_key(|e| (e.next_attempt_at, e.id));
    Ok(entries)
}

pub(crate) async fn defer_domain(
    c: &Client,
    domain: &str,
    now: u64,
    until: u64,
) -> Result<u64, StoreError> {
    let stmt = c
        .prepare_cached(
            "UPDATE outbound SET next_attempt_at = LEAST($3, expires_at)
             WHERE dest_domain = $1 AND next_attempt_at < LEAST($3, expires_at)
               AND (lease_until IS NULL OR lease_until <= $2)",
        )
        .await
        .db()?;
    c.execute(&stmt, &[&domain, &sql(now), &sql(until)])
        .await
        .db()
}

pub(crate) async fn complete(c: &Client, id: u64, node: &str) -> Result<bool, StoreError> {
    // The owner check and the removal are one statement: if another node
    // took the entry over (or is taking it, holding its row lock), this
    // matches nothing once that commits.
    let stmt = c
        .prepare_cached(
            "WITH o AS (DELETE FROM outbound WHERE id = $1 AND lease_owner = $2 RETURNING blob_id)
             DELETE FROM blobs WHERE id IN (SELECT blob_id FROM o)",
        )
        .await
        .db()?;
    let n = c.execute(&stmt, &[&sql(id), &node]).await.db()?;
    Ok(n > 0)
}

pub(crate) async fn retry_later(
    c: &Client,
    id: u64,
    node: &str,
    next_attempt_at: u64,
    error: &str,
) -> Result<bool, StoreError> {
    let stmt = c
        .prepare_cached(
            "UPDATE outbound SET attempts = attempts + 1, last_error = $3, next_attempt_at = $4,
                                 lease_owner = NULL, lease_until = NULL
             WHERE id = $1 AND lease_owner = $2",
        )
        .await
        .db()?;
    let n = c
        .execute(&stmt, &[&sql(id), &node, &error, &sql(next_attempt_at)])
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn fail_with_notice(
    c: &mut Client,
    id: u64,
    node: &str,
    notice: &NewDelivery,
) -> Result<bool, StoreError> {
    let mut tx = c.transaction().await.db()?;
    let row = tx
        .query_opt(
            "WITH o AS (DELETE FROM outbound WHERE id = $1 AND lease_owner = $2
                        RETURNING sender, blob_id),
                  b AS (DELETE FROM blobs WHERE id IN (SELECT blob_id FROM o))
             SELECT sender FROM o",
            &[&sql(id), &node],
        )
        .await
        .db()?;
    let Some(row) = row else {
        return Ok(false);
    };
    let sender: String = get(&row, 0)?;
    if notice.account != sender {
        return Err(StoreError::InvalidInput(format!(
            "the failure notice is for {:?}, the message's sender is {sender:?}",
            notice.account
        )));
    }
    // In a savepoint: a sender deleted meanwhile only drops the notice.
    let sp = tx.savepoint("notice").await.db()?;
    match deliver_in(&sp, notice, INBOX, 0).await {
        Ok(_) => sp.commit().await.db()?,
        Err(StoreError::UnknownAccount) => {
            sp.rollback().await.db()?;
            tracing::info!(account = %sender, id, "sender no longer exists; failure notice dropped");
            discard_body(&tx, &notice.body).await?;
        }
        Err(e) => return Err(e),
    }
    tx.commit().await.db()?;
    Ok(true)
}

pub(crate) async fn list_queue(c: &Client) -> Result<Vec<OutboundEntry>, StoreError> {
    let rows = c
        .query(
            &format!(
                "SELECT {OUTBOUND_COLUMNS} FROM outbound o JOIN blobs b ON b.id = o.blob_id
                 ORDER BY o.id"
            ),
            &[],
        )
        .await
        .db()?;
    rows.iter().map(outbound_row).collect()
}

pub(crate) async fn retry_all_now(c: &Client, now: u64) -> Result<u64, StoreError> {
    c.execute(
        "UPDATE outbound SET next_attempt_at = $1
         WHERE next_attempt_at > $1 AND (lease_until IS NULL OR lease_until <= $1)
           AND NOT held",
        &[&sql(now)],
    )
    .await
    .db()
}

pub(crate) async fn size(c: &Client) -> Result<u64, StoreError> {
    let r = c
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await
        .db()?;
    get_u64(&r, 0)
}

pub(crate) async fn queue_entry(c: &Client, id: u64) -> Result<Option<OutboundEntry>, StoreError> {
    c.query_opt(
        &format!(
            "SELECT {OUTBOUND_COLUMNS} FROM outbound o JOIN blobs b ON b.id = o.blob_id
             WHERE o.id = $1"
        ),
        &[&sql(id)],
    )
    .await
    .db()?
    .as_ref()
    .map(outbound_row)
    .transpose()
}

pub(crate) async fn delete_queued(c: &Client, id: u64) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "WITH o AS (DELETE FROM outbound WHERE id = $1 RETURNING blob_id)
             DELETE FROM blobs WHERE id IN (SELECT blob_id FROM o)",
            &[&sql(id)],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn set_held(c: &Client, id: u64, held: bool) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET held = $2 WHERE id = $1",
            &[&sql(id), &held],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn retry_now(c: &Client, id: u64, now: u64) -> Result<bool, StoreError> {
    let n = c
        .execute(
            "UPDATE outbound SET next_attempt_at = LEAST(next_attempt_at, $2)
             WHERE id = $1 AND NOT held AND (lease_until IS NULL OR lease_until <= $2)",
            &[&sql(id), &sql(now)],
        )
        .await
        .db()?;
    Ok(n > 0)
}

pub(crate) async fn queue_stats(c: &Client, now: u64) -> Result<QueueStats, StoreError> {
    let r = c
        .query_one(
            "SELECT COUNT(*),
                    COUNT(*) FILTER (WHERE NOT held AND (lease_until IS NULL OR lease_until <= $1)
                                     AND next_attempt_at <= $1),
                    COUNT(*) FILTER (WHERE NOT held AND (lease_until IS NULL OR lease_until <= $1)
                                     AND next_attempt_at > $1),
                    COUNT(*) FILTER (WHERE lease_until > $1),
                    COALESCE(SUM(size), 0)::BIGINT,
                    MIN(created_at),
                    COUNT(*) FILTER (WHERE held),
                    MIN(next_attempt_at) FILTER (WHERE NOT held
                                                 AND (lease_until IS NULL OR lease_until <= $1)
                                                 AND next_attempt_at <= $1)
             FROM outbound",
            &[&sql(now)],
        )
        .await
        .db()?;
    Ok(QueueStats {
        total: get_u64(&r, 0)?,
        due: get_u64(&r, 1)?,
        deferred: get_u64(&r, 2)?,
        held: get_u64(&r, 6)?,
        leased: get_u64(&r, 3)?,
        bytes: get_u64(&r, 4)?,
        oldest_age: get_opt_u64(&r, 5)?.map(|t| now.saturating_sub(t)),
        oldest_due_age: get_opt_u64(&r, 7)?.map(|t| now.saturating_sub(t)),
    })
}

// ----- pins -----

pub(crate) async fn pin(c: &Client, domain: &str) -> Result<Option<Pin>, StoreError> {
    c.query_opt(
        "SELECT key, first_seen, updated_at FROM pins WHERE domain = $1",
        &[&domain],
    )
    .await
    .db()?
    .map(|r| {
        Ok(Pin {
            key: get_key(&r, 0)?,
            first_seen: get_u64(&r, 1)?,
            updated_at: get_u64(&r, 2)?,
        })
    })
    .transpose()
}

pub(crate) async fn set_pin(
    c: &Client,
    domain: &str,
    key: [u8; 32],
    now: u64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO pins (domain, key, first_seen, updated_at) VALUES ($1, $2, $3, $3)
         ON CONFLICT (domain) DO UPDATE SET
             first_seen = CASE WHEN pins.key = EXCLUDED.key THEN pins.first_seen
                               ELSE EXCLUDED.first_seen END,
             key = EXCLUDED.key,
             updated_at = EXCLUDED.updated_at",
        &[&domain, &&key[..], &sql(now)],
    )
    .await
    .db()?;
    Ok(())
}

// ----- remote key statement cache -----

pub(crate) async fn cache_statement(
    c: &Client,
    account: &str,
    domain: &str,
    statement: &[u8],
    expires_at: u64,
) -> Result<(), StoreError> {
    c.execute(
        "INSERT INTO statement_cache (account, domain, statement, expires_at)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (account, domain) DO UPDATE
             SET statement = EXCLUDED.statement, expires_at = EXCLUDED.expires_at",
        &[&account, &domain, &statement, &sql(expires_at)],
    )
    .await
    .db()?;
    Ok(())
}

pub(crate) async fn cached_statement(
    c: &Client,
    account: &str,
    domain: &str,
    now: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    c.query_opt(
        "SELECT statement FROM statement_cache
         WHERE account = $1 AND domain = $2 AND expires_at > $3",
        &[&account, &domain, &sql(now)],
    )
    .await
    .db()?
    .map(|r| get(&r, 0))
    .transpose()
}
