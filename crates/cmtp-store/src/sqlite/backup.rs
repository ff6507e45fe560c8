//! Online backups of the SQLite database (`cmtpd backup`, `cmtpd restore`).
//!
//! A backup is taken with SQLite's online backup API from a read-only
//! connection, all pages in one step: that step reads inside one read
//! transaction, so the copy is the database as of one commit, while the
//! server goes on writing (in WAL mode a reader never blocks the writer,
//! nor the writer it). Everything a commit acknowledged before the backup
//! began is in the copy; nothing half-written is.
//!
//! The copy is itself a SQLite database, with one more table,
//! `cmtpd_backup_files (name, data)`, holding files that belong with it
//! (the server key, its rotations, the configuration), written to
//! `FILE.partial` and renamed to `FILE` once complete and checked, mode
//! 0600. [`restore`] copies it into a new database file, takes the extra
//! table out and returns its files.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use super::DbResult;
use crate::error::StoreError;

/// The table of extra files inside a backup.
const FILES_TABLE: &str = "cmtpd_backup_files";

/// The files stored in a backup beside the database: (name, bytes).
pub type BackupFiles = Vec<(String, Vec<u8>)>;

/// What a backup holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupSummary {
    /// Accounts.
    pub users: u64,
    /// Messages in mailboxes.
    pub messages: u64,
    /// Messages in the relay queue.
    pub queued: u64,
    /// The size of the backup file, in bytes.
    pub bytes: u64,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Io(format!("{what} {}: {e}", path.display()))
}

fn partial_path(dest: &Path) -> PathBuf {
    let mut p = dest.as_os_str().to_owned();
    p.push(".partial");
    p.into()
}

/// Copies every page from `src` to `dst` in one step (one read transaction
/// on `src`), waiting while the source is locked.
fn copy_all(src: &Connection, dst: &mut Connection) -> Result<(), StoreError> {
    let backup = Backup::new(src, dst).db()?;
    let mut waited = Duration::ZERO;
    loop {
        match backup.step(-1).db()? {
            StepResult::Done => return Ok(()),
            StepResult::More => {}
            StepResult::Busy | StepResult::Locked => {
                if waited > Duration::from_secs(60) {
                    return Err(StoreError::Busy(
                        "the database stayed locked for a minute".into(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
                waited += Duration::from_millis(50);
            }
            _ => {}
        }
    }
}

fn count(c: &Connection, table: &str) -> Result<u64, StoreError> {
    let n: i64 = c
        .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
        .db()?;
    Ok(u64::try_from(n).unwrap_or(0))
}

fn integrity(c: &Connection) -> Result<(), StoreError> {
    let report: Vec<String> = {
        let mut stmt = c.prepare("PRAGMA integrity_check").db()?;
        let rows = stmt.query_map([], |r| r.get(0)).db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    if report.len() == 1 && report[0] == "ok" {
        Ok(())
    } else {
        Err(StoreError::Corrupt(report.join("; ")))
    }
}

fn sync_dir(path: &Path) {
    if let Some(dir) = path.parent() {
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        if let Ok(d) = std::fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
}

/// Writes a consistent copy of the database `db` (which a server may be
/// using) to `dest`, with `files` inside. Refuses to replace an existing
/// `dest`. Blocking: run it on a blocking thread.
pub fn backup(
    db: &Path,
    dest: &Path,
    files: &[(&str, &[u8])],
) -> Result<BackupSummary, StoreError> {
    if dest.exists() {
        return Err(StoreError::InvalidInput(format!(
            "{} exists; give a new file name",
            dest.display()
        )));
    }
    if !db.exists() {
        return Err(StoreError::Io(format!("{} does not exist", db.display())));
    }
    let partial = partial_path(dest);
    let _ = std::fs::remove_file(&partial);
    // Created 0600 before SQLite opens it: it will hold the server's secrets.
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&partial)
        .map_err(|e| io("creating", &partial, e))?;
    let result = (|| {
        let src = open_live(db)?;
        let mut dst = Connection::open(&partial).db()?;
        copy_all(&src, &mut dst)?;
        drop(src);
        let bodies = super::bodies_path(db);
        if bodies.exists() {
            take_bodies(&dst, db, &bodies)?;
        }
        // A standalone file: no WAL beside it.
        let _: String = dst
            .query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))
            .db()?;
        dst.execute_batch(&format!(
            "CREATE TABLE {FILES_TABLE} (name TEXT PRIMARY KEY NOT NULL, data BLOB NOT NULL)"
        ))
        .db()?;
        for (name, data) in files {
            dst.execute(
                &format!("INSERT INTO {FILES_TABLE} (name, data) VALUES (?1, ?2)"),
                rusqlite::params![name, data],
            )
            .db()?;
        }
        integrity(&dst)?;
        let summary = BackupSummary {
            users: count(&dst, "users")?,
            messages: count(&dst, "mailbox")?,
            queued: count(&dst, "outbound")?,
            bytes: 0,
        };
        drop(dst);
        std::fs::File::open(&partial)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", &partial, e))?;
        Ok(summary)
    })();
    let mut summary = match result {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    std::fs::rename(&partial, dest).map_err(|e| io("renaming to", dest, e))?;
    sync_dir(dest);
    summary.bytes = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    Ok(summary)
}

/// A connection to the live database `db`, only read from: read-write
/// without create, as a WAL database whose -shm file is gone (no server
/// running) cannot be opened read-only; with the store's own settings
/// (`super::configure`), so that closing it does not checkpoint and delete
/// the log a start on a full disk needs; waiting up to 10 s for locks.
fn open_live(db: &Path) -> Result<Connection, StoreError> {
    super::connect(
        db,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
        Duration::from_secs(10),
    )
}

/// Copies into the backup `dst` (a copy of the database `db`) the chunks
/// its blobs keep in the bodies database `bodies`, into its own
/// `blob_chunks`: the backup is one file, and a store restored from it
/// reads them there.
///
/// The bodies are read after the database was copied: a chunk the copy
/// counts was committed before it (the bodies commit first), but the
/// message may have been deleted since and its chunks removed. Such a
/// message is left out of the backup, as if the copy had been taken just
/// after its deletion; one whose blob the database still has fails the
/// backup (its chunks are lost: the store needs repair, not a copy).
/// Staged blobs (uploads in progress) are left out.
fn take_bodies(dst: &Connection, db: &Path, bodies: &Path) -> Result<(), StoreError> {
    // Closing must leave the server's bodies log in place (as its own
    // connections do): a start on a full disk needs it.
    super::configure(dst)?;
    dst.busy_timeout(Duration::from_secs(10)).db()?;
    super::attach_bodies(dst, bodies)?;
    let copied = dst
        .execute_batch(
            "DELETE FROM blob_chunks WHERE blob_id IN (SELECT id FROM blobs WHERE staged_at IS NOT NULL);
             DELETE FROM blobs WHERE staged_at IS NOT NULL;
             INSERT INTO main.blob_chunks (blob_id, seq, data)
             SELECT c.blob_id, c.seq, c.data FROM bodies.chunks c JOIN main.blobs b ON b.id = c.blob_id
             WHERE c.seq < b.chunks
               AND NOT EXISTS (SELECT 1 FROM main.blob_chunks x
                               WHERE x.blob_id = c.blob_id AND x.seq = c.seq);",
        )
        .db();
    let detached = dst.execute_batch("DETACH DATABASE bodies").db();
    copied?;
    detached?;
    let gone: Vec<i64> = {
        let mut stmt = dst
            .prepare(
                "SELECT id FROM blobs b
                 WHERE chunks > (SELECT COUNT(*) FROM blob_chunks c WHERE c.blob_id = b.id)",
            )
            .db()?;
        let rows = stmt.query_map([], |r| r.get(0)).db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    if gone.is_empty() {
        return Ok(());
    }
    let live = open_live(db)?;
    for id in &gone {
        let exists: bool = live
            .query_row(
                "SELECT EXISTS(SELECT 1 FROM blobs WHERE id = ?1)",
                [id],
                |r| r.get(0),
            )
            .db()?;
        if exists {
            return Err(StoreError::Corrupt(format!(
                "blob {id} has chunks missing from {}",
                bodies.display()
            )));
        }
    }
    tracing::info!(
        messages = gone.len(),
        "left out of the backup: deleted while it was taken"
    );
    for id in gone {
        for table in ["mailbox", "outbound", "blob_chunks"] {
            dst.execute(&format!("DELETE FROM {table} WHERE blob_id = ?1"), [id])
                .db()?;
        }
        dst.execute("DELETE FROM blobs WHERE id = ?1", [id]).db()?;
    }
    Ok(())
}

/// One file stored in the backup `backup` (read-only; `None` if there is no
/// file of that name). Blocking.
pub fn read_file(backup: &Path, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    use rusqlite::OptionalExtension;
    let c = Connection::open_with_flags(
        backup,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .db()?;
    c.query_row(
        &format!("SELECT data FROM {FILES_TABLE} WHERE name = ?1"),
        [name],
        |r| r.get(0),
    )
    .optional()
    .map_err(|e| StoreError::Corrupt(format!("{} is not a cmtpd backup: {e}", backup.display())))
}

/// Restores the backup `backup` into the new database file `db` (which must
/// not exist, nor its log or its bodies database), mode 0600; returns the
/// files stored in the backup and what it holds. Blocking.
pub fn restore(backup: &Path, db: &Path) -> Result<(BackupFiles, BackupSummary), StoreError> {
    for file in super::store_files(db) {
        if file.exists() {
            return Err(StoreError::InvalidInput(format!(
                "{} exists: restore into an empty data directory",
                file.display()
            )));
        }
    }
    let src = Connection::open_with_flags(
        backup,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .db()?;
    let is_backup: bool = src
        .query_row(
            "SELECT EXISTS(SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = ?1)",
            [FILES_TABLE],
            |r| r.get(0),
        )
        .map_err(|e| {
            StoreError::Corrupt(format!("{} is not a cmtpd backup: {e}", backup.display()))
        })?;
    if !is_backup {
        return Err(StoreError::Corrupt(format!(
            "{} is not a cmtpd backup (no {FILES_TABLE} table)",
            backup.display()
        )));
    }
    integrity(&src)?;
    let files: BackupFiles = {
        let mut stmt = src
            .prepare(&format!(
                "SELECT name, data FROM {FILES_TABLE} ORDER BY name"
            ))
            .db()?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).db()?;
        rows.collect::<rusqlite::Result<_>>().db()?
    };
    if let Some(dir) = db.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|e| io("creating", dir, e))?;
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
        .map_err(|e| io("creating", db, e))?;
    let result = (|| {
        let mut dst = Connection::open(db).db()?;
        copy_all(&src, &mut dst)?;
        dst.execute_batch(&format!("DROP TABLE {FILES_TABLE}"))
            .db()?;
        integrity(&dst)?;
        let summary = BackupSummary {
            users: count(&dst, "users")?,
            messages: count(&dst, "mailbox")?,
            queued: count(&dst, "outbound")?,
            bytes: std::fs::metadata(backup).map(|m| m.len()).unwrap_or(0),
        };
        drop(dst);
        std::fs::File::open(db)
            .and_then(|f| f.sync_all())
            .map_err(|e| io("syncing", db, e))?;
        // Every chunk is in the database now; the store's bodies database
        // starts empty (a store of version 7 without one is refused).
        drop(super::open_bodies(&super::SqliteConfig::new(db))?);
        sync_dir(db);
        Ok(summary)
    })();
    match result {
        Ok(summary) => Ok((files, summary)),
        Err(e) => {
            remove_restored(db);
            Err(e)
        }
    }
}

/// Removes what [`restore`] made of the store at `db` (the database, its
/// bodies database and their logs), for a restore given up after it.
pub fn remove_restored(db: &Path) {
    for file in super::store_files(db) {
        let _ = std::fs::remove_file(file);
    }
}
