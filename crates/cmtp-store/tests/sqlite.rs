//! The conformance suite on SQLite (directly and through `AnyStore`), and
//! the SQLite backend's own tests: reopening, schema versions, a crash
//! mid-stream, a full disk (a real one on tmpfs, and a database size limit).

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};

use bytes::Bytes;
use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern, read_all};
use cmtp_store::{
    AnyStore, MessageBody, NewDelivery, SqliteConfig, SqliteStore, Store, StoreConfig, StoreError,
};
use cmtp_testkit::tmpfs::Tmpfs;
use tempfile::TempDir;

async fn sqlite_store() -> (SqliteStore, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(SqliteConfig::new(dir.path().join("data/cmtp.db")))
        .await
        .expect("open");
    (store, dir)
}

async fn any_store() -> (AnyStore, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = StoreConfig::Sqlite(SqliteConfig::new(dir.path().join("cmtp.db")));
    (AnyStore::open(config).await.expect("open"), dir)
}

mod suite {
    cmtp_store::conformance_suite!(super::sqlite_store);
}

mod any_store_suite {
    cmtp_store::conformance_suite!(super::any_store);
}

#[tokio::test]
async fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let body = pattern(200_000, 9);
    let id = {
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        store
            .create_user(new_user("alice"), None, T0)
            .await
            .unwrap();
        let staged = store.stage_begin(T0).await.unwrap();
        for c in body.chunks(50_000) {
            store
                .stage_append(&staged, Bytes::copy_from_slice(c))
                .await
                .unwrap();
        }
        // An upload the "connection" never finished.
        let abandoned = store.stage_begin(T0).await.unwrap();
        store
            .stage_append(&abandoned, Bytes::from_static(b"lost"))
            .await
            .unwrap();
        let d = NewDelivery {
            size: body.len() as u64,
            body: MessageBody::Staged(staged),
            ..delivery("alice", hash(1), b"", T0)
        };
        let secret = store
            .secret_get_or_init("setup", vec![1; 32])
            .await
            .unwrap();
        assert_eq!(secret, vec![1; 32]);
        store.deliver(d).await.unwrap().id
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the database holds secrets");
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let (_, blob) = store.mailbox_message("alice", id).await.unwrap().unwrap();
    assert!(read_all(&store, blob).await == body);
    assert_eq!(
        store
            .secret_get_or_init("setup", vec![2; 32])
            .await
            .unwrap(),
        vec![1; 32]
    );
    assert!(
        store
            .deliver(delivery("alice", hash(1), b"", T0))
            .await
            .unwrap()
            .duplicate
    );
    // The abandoned upload was removed at start-up.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let staged: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM blobs WHERE staged_at IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(staged, 0);
    store.integrity_check().await.unwrap();
}

/// A version 1 database (before quotas, aliases, held entries, reset
/// tokens) is migrated in place and keeps its users and queue.
#[tokio::test]
async fn a_version_1_database_is_migrated_keeping_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(cmtp_store::conformance::SQLITE_SCHEMA_V1)
            .unwrap();
        conn.execute_batch(
            "INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO users VALUES ('alice', zeroblob(32), zeroblob(192), zeroblob(12), x'01', 5, 6);
             INSERT INTO blobs (id, size, chunks, staged_at) VALUES (1, 3, 1, NULL);
             INSERT INTO blob_chunks VALUES (1, 0, x'616263');
             INSERT INTO outbound (hash, sender, destination, dest_domain, size, created_at,
                                   expires_at, next_attempt_at, blob_id)
             VALUES (zeroblob(32), 'alice', 'bob@b.test', 'b.test', 3, 7, 99999, 7, 1);",
        )
        .unwrap();
    }
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!((alice.created_at, alice.quota), (5, None));
    let queue = store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(!queue[0].held);
    assert_eq!(read_all(&store, queue[0].blob).await, b"abc");
    store.add_alias("ally", "alice", T0).await.unwrap();
    assert!(store.set_held(queue[0].id, true).await.unwrap());
    store.integrity_check().await.unwrap();
    drop(store);
    // Version 6 dropped the index that no query used.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'mailbox' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(indexes, ["mailbox_blob", "mailbox_modseq", "mailbox_uid"]);
}

#[tokio::test]
async fn schema_versions_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    drop(SqliteStore::open(SqliteConfig::new(&path)).await.unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    let v: u32 = conn
        .query_row("SELECT version FROM schema_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 7);
    conn.execute("UPDATE schema_version SET version = 99", [])
        .unwrap();
    drop(conn);
    let e = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert_eq!(
        e,
        StoreError::SchemaTooNew {
            found: 99,
            supported: 7
        }
    );
    assert!(!e.is_transient());

    let other = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&other).unwrap();
    conn.execute_batch("CREATE TABLE stuff (x INTEGER)")
        .unwrap();
    drop(conn);
    let e = SqliteStore::open(SqliteConfig::new(&other))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
}

/// A file that is not an SQLite database is refused (permanently), not
/// overwritten.
#[tokio::test]
async fn garbage_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    std::fs::write(&path, vec![0x42; 8192]).unwrap();
    let e = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
}

// ----- crash: every acknowledged delivery survives -----

const CRASH_DIR: &str = "CMTP_STORE_CRASH_DIR";

/// The child half of `acknowledged_deliveries_survive_a_crash`: delivers
/// from 16 tasks, prints each acknowledged hash, and aborts the process
/// while deliveries are in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by acknowledged_deliveries_survive_a_crash in a child process"]
async fn crash_child() {
    let Ok(dir) = std::env::var(CRASH_DIR) else {
        return;
    };
    let store = SqliteStore::open(SqliteConfig::new(Path::new(&dir).join("cmtp.db")))
        .await
        .unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for t in 0..16u64 {
        let s = store.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            for i in 0.. {
                let n = t * 1_000_000 + i;
                let body = pattern(2000, n);
                if let Ok(d) = s.deliver(delivery("alice", hash(n), &body, T0)).await {
                    let _ = tx.send((n, d.id));
                }
            }
        });
    }
    let mut out = std::io::stdout().lock();
    let mut acked = 0;
    while let Some((n, id)) = rx.recv().await {
        writeln!(out, "ACK {n} {id}").unwrap();
        out.flush().unwrap();
        acked += 1;
        if acked == 500 {
            std::process::abort();
        }
    }
}

#[test]
fn acknowledged_deliveries_survive_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "crash_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut acked = Vec::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        // The test harness may print its own words before the first line.
        if let Some(rest) = line.find("ACK ").map(|at| &line[at + 4..]) {
            let mut it = rest.split(' ').map(|x| x.parse::<u64>().unwrap());
            acked.push((it.next().unwrap(), it.next().unwrap()));
        }
    }
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have aborted");
    assert_eq!(acked.len(), 500);

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(dir.path().join("cmtp.db")))
            .await
            .unwrap();
        store.integrity_check().await.unwrap();
        for &(n, id) in &acked {
            let (entry, blob) = store
                .mailbox_message("alice", id)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("acknowledged message {n} (id {id}) lost"));
            assert_eq!(entry.hash, hash(n));
            assert_eq!(read_all(&store, blob).await, pattern(2000, n));
        }
        // Every stored message is complete (nothing half-written), whether
        // or not it was acknowledged before the crash.
        for e in store.list_mailbox("alice").await.unwrap() {
            let (_, blob) = store.mailbox_message("alice", e.id).await.unwrap().unwrap();
            assert_eq!(read_all(&store, blob).await.len(), 2000);
        }
    });
}

// ----- a full disk -----

/// Delivers distinct `size`-byte messages to alice until one fails; returns
/// the (hash number, body) delivered and the failure.
async fn fill_until_error(
    store: &SqliteStore,
    first: u64,
    size: usize,
    max: u64,
) -> (Kept, u64, StoreError) {
    let mut ok = Vec::new();
    for n in first..first + max {
        let body = pattern(size, n);
        match store.deliver(delivery("alice", hash(n), &body, T0)).await {
            Ok(d) => {
                assert!(!d.duplicate);
                ok.push((n, d.id, body));
            }
            Err(e) => return (ok, n, e),
        }
    }
    panic!("{max} deliveries of {size} bytes never filled the disk");
}

async fn assert_readable(store: &SqliteStore, messages: &[(u64, u64, Vec<u8>)]) {
    for (n, id, body) in messages {
        let (entry, blob) = store
            .mailbox_message("alice", *id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("message {n} lost"));
        assert_eq!(entry.hash, hash(*n));
        assert!(read_all(store, blob).await == *body, "message {n} damaged");
    }
}

type Kept = Vec<(u64, u64, Vec<u8>)>;

/// Delivers messages `ns` at once, alternating 300-byte and 100 kB bodies;
/// every failure must be transient. Returns what was stored and what was
/// refused.
async fn deliver_concurrently(
    store: &SqliteStore,
    ns: std::ops::Range<u64>,
) -> (Kept, Vec<(u64, Vec<u8>)>) {
    let tasks: Vec<_> = ns
        .map(|n| {
            let s = store.clone();
            tokio::spawn(async move {
                let body = pattern(if n % 2 == 0 { 300 } else { 100_000 }, n);
                let r = s.deliver(delivery("alice", hash(n), &body, T0)).await;
                (n, body, r)
            })
        })
        .collect();
    let (mut stored, mut refused) = (Vec::new(), Vec::new());
    for t in tasks {
        let (n, body, r) = t.await.unwrap();
        match r {
            Ok(d) => stored.push((n, d.id, body)),
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                refused.push((n, body));
            }
        }
    }
    (stored, refused)
}

/// Re-delivers what was refused: it must not have been recorded.
async fn redeliver(store: &SqliteStore, refused: Vec<(u64, Vec<u8>)>, kept: &mut Kept) {
    for (n, body) in refused {
        let d = store
            .deliver(delivery("alice", hash(n), &body, T0))
            .await
            .unwrap();
        assert!(!d.duplicate, "refused delivery {n} was recorded");
        kept.push((n, d.id, body));
    }
}

/// Writes a file until the filesystem is full.
fn fill_filesystem(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0xEE; 64 << 10];
    loop {
        if f.write_all(&block).is_err() || f.sync_all().is_err() {
            break;
        }
    }
    // Whatever is left is smaller than a block; take that too.
    for _ in 0..(64 << 10) / 512 {
        if f.write_all(&block[..512]).is_err() {
            break;
        }
    }
}

/// A real full disk: a small tmpfs filled to the brim. Deliveries fail with
/// a transient error, earlier messages stay readable, a staged upload can be
/// resumed, and once space returns everything works again — including the
/// very message that failed (it was not recorded as delivered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_transient_and_recoverable() {
    let fs = match Tmpfs::mount("16m", None) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full_disk_is_transient_and_recoverable: {why}");
            return;
        }
    };
    let path = fs.path().join("cmtp.db");
    let filler = fs.path().join("filler");
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();

    let mut kept = Vec::new();
    for n in 0..8 {
        let body = pattern(20_000, n);
        let d = store
            .deliver(delivery("alice", hash(n), &body, T0))
            .await
            .unwrap();
        kept.push((n, d.id, body));
    }
    let staged = store.stage_begin(T0).await.unwrap();
    let upload = pattern(3 * 200_000, 777);
    store
        .stage_append(&staged, Bytes::copy_from_slice(&upload[..200_000]))
        .await
        .unwrap();

    fill_filesystem(&filler);
    let (more, failed, err) = fill_until_error(&store, 100, 256 << 10, 64).await;
    eprintln!("tmpfs full after {} more deliveries: {err}", more.len());
    assert!(err.is_transient(), "a full disk must be transient: {err:?}");
    assert!(
        matches!(err, StoreError::Full(_) | StoreError::Io(_)),
        "{err:?}"
    );
    kept.extend(more);
    let append_err = store
        .stage_append(&staged, Bytes::copy_from_slice(&upload[200_000..400_000]))
        .await
        .unwrap_err();
    eprintln!("staged append on the full disk: {append_err}");
    assert!(append_err.is_transient(), "{append_err:?}");

    // Concurrent writers on the full disk (batched together): each request
    // either succeeds, and is stored, or fails transiently and leaves
    // nothing behind.
    let (stored, refused) = deliver_concurrently(&store, 300..332).await;
    eprintln!(
        "on the full disk, {} of 32 concurrent deliveries refused",
        refused.len()
    );
    assert!(!refused.is_empty());
    kept.extend(stored);

    // Reads keep working on the full disk.
    assert_readable(&store, &kept).await;
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), kept.len());

    // Space returns.
    std::fs::remove_file(&filler).unwrap();
    let body = pattern(256 << 10, failed);
    let d = store
        .deliver(delivery("alice", hash(failed), &body, T0))
        .await
        .unwrap();
    assert!(
        !d.duplicate,
        "the failed delivery must not have been recorded"
    );
    kept.push((failed, d.id, body));
    redeliver(&store, refused, &mut kept).await;
    for n in 200..205 {
        let body = pattern(30_000, n);
        let d = store
            .deliver(delivery("alice", hash(n), &body, T0))
            .await
            .unwrap();
        kept.push((n, d.id, body));
    }
    // The interrupted upload resumes where it stopped.
    store
        .stage_append(&staged, Bytes::copy_from_slice(&upload[200_000..400_000]))
        .await
        .unwrap();
    store
        .stage_append(&staged, Bytes::copy_from_slice(&upload[400_000..]))
        .await
        .unwrap();
    let d = store
        .deliver(NewDelivery {
            size: upload.len() as u64,
            body: MessageBody::Staged(staged),
            ..delivery("alice", hash(999), b"", T0)
        })
        .await
        .unwrap();
    kept.push((999, d.id, upload));
    assert_readable(&store, &kept).await;
    store.integrity_check().await.unwrap();

    // And the file is sound for the next start.
    drop(store);
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    store.integrity_check().await.unwrap();
    assert_readable(&store, &kept).await;
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), kept.len());
    drop(store);
    drop(fs);
}

/// The same with SQLite's own limit (`max_size`, i.e. `max_page_count`),
/// which runs anywhere: full is transient, and deleting mail makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_size_limit_is_transient_and_recoverable() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = SqliteConfig::new(dir.path().join("cmtp.db"));
    config.max_size = Some(3 << 20);
    let store = SqliteStore::open(config).await.unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();

    let (kept, failed, err) = fill_until_error(&store, 0, 200_000, 64).await;
    eprintln!("size limit reached after {} deliveries: {err}", kept.len());
    assert!(matches!(err, StoreError::Full(_)), "{err:?}");
    assert!(err.is_transient());
    assert!(kept.len() >= 5, "only {} messages fit", kept.len());
    let mut kept = kept;
    let (stored, refused) = deliver_concurrently(&store, 300..332).await;
    eprintln!(
        "at the size limit, {} of 32 concurrent deliveries stored, {} refused",
        stored.len(),
        refused.len()
    );
    assert!(!refused.is_empty());
    kept.extend(stored);
    assert_readable(&store, &kept).await;

    // Space returns: delete some mail.
    for (_, id, _) in &kept[..12] {
        assert!(store.delete_message("alice", *id).await.unwrap());
    }
    let mut rest = kept[12..].to_vec();
    let body = pattern(200_000, failed);
    let d = store
        .deliver(delivery("alice", hash(failed), &body, T0))
        .await
        .unwrap();
    assert!(!d.duplicate);
    rest.push((failed, d.id, body));
    redeliver(&store, refused, &mut rest).await;
    assert_readable(&store, &rest).await;
    store.integrity_check().await.unwrap();
}

// ----- what a batch buys -----

/// Prints durable inline deliveries per second with 1 and with 64 concurrent
/// callers (no assertion on timing). Run with
/// `cargo test -p cmtp-store --release --test sqlite -- --ignored --nocapture group_commit`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn group_commit_throughput() {
    for concurrency in [1u64, 8, 64] {
        let (store, _dir) = sqlite_store().await;
        let (n, rate) = cmtp_store::conformance::delivery_throughput(&store, concurrency).await;
        println!("concurrency {concurrency:>3}: {n} deliveries = {rate:.0}/s");
    }
}

/// A store closed cleanly opens again on a disk filled to the last byte,
/// even with abandoned uploads it cannot remove then, and serves reads: the
/// write-ahead log and its index are kept across the close, so opening needs
/// no new space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_opens_and_serves_reads_on_a_full_disk() {
    let fs = Tmpfs::mount("16m", None)
        .unwrap_or_else(|why| panic!("{why}; CI runs as root, this test must run"));
    let path = fs.path().join("cmtp.db");
    let body = pattern(300_000, 4);
    let id = {
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        store
            .create_user(new_user("alice"), None, T0)
            .await
            .unwrap();
        let d = store
            .deliver(delivery("alice", hash(1), &body, T0))
            .await
            .unwrap();
        let abandoned = store.stage_begin(T0).await.unwrap();
        store
            .stage_append(&abandoned, Bytes::from(pattern(200_000, 5)))
            .await
            .unwrap();
        d.id
    };
    fill_filesystem(&fs.path().join("filler"));
    let store = SqliteStore::open(SqliteConfig::new(&path))
        .await
        .expect("the store opens on a full disk");
    assert!(store.user("alice").await.unwrap().is_some());
    let (_, blob) = store.mailbox_message("alice", id).await.unwrap().unwrap();
    assert_eq!(read_all(&store, blob).await, body);
    drop(store);
    // Space returns: the abandoned upload goes at the next opening.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
    let report = store
        .purge_expired(T0 + 1, cmtp_store::Retention::default())
        .await
        .unwrap();
    assert_eq!(report.staged_blobs, 0, "removed when the store opened");
}

/// The write-ahead log outlives the store, but a stopped store is whole in
/// its database file (and, for messages over one chunk, its bodies
/// database): nothing it acknowledged is only in the log.
#[tokio::test]
async fn a_stopped_store_is_whole_in_its_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmtp.db");
    let body = pattern(50_000, 6);
    {
        let store = SqliteStore::open(SqliteConfig::new(&path)).await.unwrap();
        store
            .create_user(new_user("alice"), None, T0)
            .await
            .unwrap();
        store
            .deliver(delivery("alice", hash(1), &body, T0))
            .await
            .unwrap();
    }
    assert!(
        dir.path().join("cmtp.db-wal").exists(),
        "the log is kept for a start on a full disk"
    );
    let copy = tempfile::tempdir().unwrap();
    std::fs::copy(&path, copy.path().join("cmtp.db")).unwrap();
    let conn = rusqlite::Connection::open(copy.path().join("cmtp.db")).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM mailbox WHERE account = 'alice'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 1);
}
