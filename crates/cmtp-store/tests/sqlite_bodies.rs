//! The bodies database of the SQLite backend (`PATH-bodies`): where staged
//! blobs keep their chunks, in large pages, beside a database of small
//! pages. What these tests show: the chunks are there and the database's
//! pages are small; they leave with their message, at once for an aborted
//! upload; chunks a crash left behind go when the store opens; a chunk
//! the bodies database refuses leaves the blob as it was; a store whose
//! bodies database is missing is refused; a backup carries the bodies and a
//! restored store reads them, and refuses to copy a message whose chunks
//! are lost.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern, read_all};
use cmtp_store::{
    MessageBody, NewDelivery, Retention, SqliteConfig, SqliteStore, StagedBlob, Store, StoreError,
    sqlite_backup,
};
use rusqlite::{Connection, OpenFlags};

fn bodies(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("-bodies");
    p.into()
}

/// Rows of the bodies database's `chunks` for `blob` (read beside the
/// running store, as any reader may).
fn chunks_in_bodies(path: &Path, blob: u64) -> i64 {
    let c = Connection::open_with_flags(bodies(path), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row(
        "SELECT COUNT(*) FROM chunks WHERE blob_id = ?1",
        [blob as i64],
        |r| r.get(0),
    )
    .unwrap()
}

fn page_size(path: &Path) -> i64 {
    let c = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    c.query_row("PRAGMA page_size", [], |r| r.get(0)).unwrap()
}

async fn upload(store: &SqliteStore, body: &[u8], chunk: usize) -> StagedBlob {
    let staged = store.stage_begin(T0).await.unwrap();
    for c in body.chunks(chunk) {
        store
            .stage_append(&staged, Bytes::copy_from_slice(c))
            .await
            .unwrap();
    }
    staged
}

/// Uploads `body` in chunks of `chunk` bytes and delivers it to alice;
/// returns the blob's id and the message's.
async fn deliver_uploaded(store: &SqliteStore, body: &[u8], chunk: usize) -> (u64, u64) {
    let staged = upload(store, body, chunk).await;
    let blob = staged.id();
    let d = store
        .deliver(staged_delivery(staged, body.len(), 1))
        .await
        .unwrap();
    (blob, d.id)
}

fn staged_delivery(staged: StagedBlob, size: usize, n: u64) -> NewDelivery {
    NewDelivery {
        size: size as u64,
        body: MessageBody::Staged(staged),
        ..delivery("alice", hash(n), b"", T0)
    }
}

async fn open_with_alice(path: &Path) -> SqliteStore {
    let store = SqliteStore::open(SqliteConfig::new(path)).await.unwrap();
    if store.user("alice").await.unwrap().is_none() {
        store
            .create_user(new_user("alice"), None, T0)
            .await
            .unwrap();
    }
    store
}

#[tokio::test]
async fn staged_chunks_live_in_the_bodies_database_and_leave_with_their_message() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let store = open_with_alice(&path).await;
    let body = pattern(700_000, 1);
    let staged = upload(&store, &body, 256 * 1024).await;
    let blob = staged.id();
    assert_eq!(chunks_in_bodies(&path, blob), 3);
    let d = store
        .deliver(staged_delivery(staged, body.len(), 1))
        .await
        .unwrap();
    // A small message stays in the database.
    let small = store
        .deliver(delivery("alice", hash(2), b"short", T0))
        .await
        .unwrap();
    let (_, b) = store.mailbox_message("alice", d.id).await.unwrap().unwrap();
    assert_eq!(read_all(&store, b).await, body);
    let (_, s) = store
        .mailbox_message("alice", small.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&store, s).await, b"short");
    assert_eq!(chunks_in_bodies(&path, s.id), 0);
    assert_eq!(page_size(&path), 4096, "small pages for the database");
    assert_eq!(page_size(&bodies(&path)), 65536, "large ones for bodies");

    assert!(store.delete_message("alice", d.id).await.unwrap());
    assert_eq!(
        chunks_in_bodies(&path, blob),
        0,
        "the chunks go once the deletion is committed"
    );
    assert_eq!(store.read_chunk(b, 0).await.unwrap(), None);

    // An aborted upload's bytes are gone when the abort returns.
    let aborted = upload(&store, &pattern(300_000, 2), 100_000).await;
    let id = aborted.id();
    assert_eq!(chunks_in_bodies(&path, id), 3);
    assert!(store.stage_abort(&aborted).await.unwrap());
    assert_eq!(chunks_in_bodies(&path, id), 0);
}

#[tokio::test]
async fn chunks_left_without_their_blob_are_swept_when_the_store_opens() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let body = pattern(600_000, 3);
    let kept = {
        let store = open_with_alice(&path).await;
        deliver_uploaded(&store, &body, 200_000).await.1
    };
    // As a crash between a deletion's COMMIT and the sweep leaves them:
    // chunks of a blob the database does not have.
    {
        let c = Connection::open(bodies(&path)).unwrap();
        c.execute(
            "INSERT INTO chunks (blob_id, seq, data) VALUES (999, 0, x'00'), (999, 1, x'01')",
            [],
        )
        .unwrap();
    }
    assert_eq!(chunks_in_bodies(&path, 999), 2);
    let store = open_with_alice(&path).await;
    assert_eq!(chunks_in_bodies(&path, 999), 0, "swept at opening");
    let (_, b) = store.mailbox_message("alice", kept).await.unwrap().unwrap();
    assert_eq!(
        read_all(&store, b).await,
        body,
        "a live blob keeps its chunks"
    );
    // Maintenance sweeps too (a sweep that failed at the time).
    drop(store);
    {
        let c = Connection::open(bodies(&path)).unwrap();
        c.execute(
            "INSERT INTO chunks (blob_id, seq, data) VALUES (998, 0, x'00')",
            [],
        )
        .unwrap();
    }
    let mut config = SqliteConfig::new(&path);
    config.clear_abandoned_uploads = false;
    let store = SqliteStore::open(config).await.unwrap();
    assert_eq!(
        chunks_in_bodies(&path, 998),
        1,
        "an administrator's open sweeps nothing"
    );
    store.purge_expired(T0, Retention::default()).await.unwrap();
    assert_eq!(chunks_in_bodies(&path, 998), 0);
    assert_eq!(read_all(&store, b).await, body);
}

#[tokio::test]
async fn a_chunk_the_bodies_database_refuses_leaves_the_blob_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let mut config = SqliteConfig::new(&path);
    config.max_size = Some(3 << 20);
    let store = SqliteStore::open(config).await.unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    let staged = store.stage_begin(T0).await.unwrap();
    let mut body = Vec::new();
    let mut refused = false;
    for n in 0..8 {
        let chunk = pattern(1 << 20, 10 + n);
        match store
            .stage_append(&staged, Bytes::from(chunk.clone()))
            .await
        {
            Ok(()) => body.extend_from_slice(&chunk),
            Err(StoreError::Full(_)) => {
                refused = true;
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(refused, "the bodies database is bounded by max_size");
    assert!(!body.is_empty());
    // The refused chunk counted nothing: the blob is what was accepted.
    let d = store
        .deliver(staged_delivery(staged, body.len(), 1))
        .await
        .unwrap();
    let (_, b) = store.mailbox_message("alice", d.id).await.unwrap().unwrap();
    assert_eq!(b.size, body.len() as u64);
    assert_eq!(read_all(&store, b).await, body);
}

#[tokio::test]
async fn a_backup_carries_the_bodies_and_a_restored_store_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let big = pattern(900_000, 4);
    let store = open_with_alice(&path).await;
    let (_, big_id) = deliver_uploaded(&store, &big, 256 * 1024).await;
    let small_id = store
        .deliver(delivery("alice", hash(2), b"small", T0))
        .await
        .unwrap()
        .id;
    // An upload in progress is no part of a backup.
    let _in_progress = upload(&store, &pattern(10_000, 5), 5_000).await;
    let copy = dir.path().join("backup.cmtpd");
    let summary = sqlite_backup::backup(&path, &copy, &[]).unwrap();
    assert_eq!(summary.messages, 2);
    drop(store);

    let restored = dir.path().join("restored/cmtp.db");
    std::fs::create_dir_all(restored.parent().unwrap()).unwrap();
    std::fs::write(bodies(&restored), b"").unwrap();
    assert!(
        matches!(
            sqlite_backup::restore(&copy, &restored),
            Err(StoreError::InvalidInput(_))
        ),
        "a bodies database in the way is refused"
    );
    std::fs::remove_file(bodies(&restored)).unwrap();
    sqlite_backup::restore(&copy, &restored).unwrap();
    let store = SqliteStore::open(SqliteConfig::new(&restored))
        .await
        .unwrap();
    let (_, b) = store
        .mailbox_message("alice", big_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&store, b).await, big);
    let (_, s) = store
        .mailbox_message("alice", small_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(read_all(&store, s).await, b"small");
    store.integrity_check().await.unwrap();
}

#[tokio::test]
async fn a_store_without_its_bodies_database_is_refused_not_emptied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    drop(open_with_alice(&path).await);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = bodies(&path).into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(p);
    }
    let e = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert!(
        matches!(e, StoreError::Corrupt(ref m) if m.contains("-bodies")),
        "{e:?}"
    );
    assert!(!bodies(&path).exists(), "no empty one made in its place");
}

#[tokio::test]
async fn a_backup_refuses_a_message_whose_chunks_are_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let store = open_with_alice(&path).await;
    let body = pattern(600_000, 6);
    let (blob, _) = deliver_uploaded(&store, &body, 256 * 1024).await;
    {
        let c = Connection::open(bodies(&path)).unwrap();
        c.execute("DELETE FROM chunks WHERE blob_id = ?1", [blob as i64])
            .unwrap();
    }
    let copy = dir.path().join("backup.cmtpd");
    let e = sqlite_backup::backup(&path, &copy, &[]).unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
    assert!(!copy.exists());
}
