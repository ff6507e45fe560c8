//! Checkpoints beside the writer thread: a thread of its own copies the
//! write-ahead log into the database file, and the log stays bounded even
//! when the writer never pauses (src/sqlite/checkpoint.rs).
//!
//! Counted with the kernel's per-thread I/O accounting (Linux only), by the
//! threads' names: the tests of this binary take turns, so that one store's
//! threads run at a time.

#![cfg(target_os = "linux")]

use std::path::Path;
use std::time::{Duration, Instant};

use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern};
use cmtp_store::{SqliteConfig, SqliteStore, Store};

mod task_io;
use task_io::{thread_named, wal_len, written_by};

static ONE_STORE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The log after which the checkpoint thread is woken: 64 pages of 4 KiB.
/// The writer checkpoints itself from 256 pages.
const CHECKPOINT_BYTES: u64 = 256 << 10;
const PAGE: u64 = 4096;
/// A log frame: its 24-byte header and the page.
const FRAME: u64 = PAGE + 24;

async fn open(db: &Path, accounts: &[String]) -> SqliteStore {
    let mut config = SqliteConfig::new(db);
    config.checkpoint_bytes = CHECKPOINT_BYTES;
    let store = SqliteStore::open(config).await.unwrap();
    for a in accounts {
        store.create_user(new_user(a), None, T0).await.unwrap();
    }
    store
}

fn delivered(db: &Path) -> i64 {
    let conn = rusqlite::Connection::open(db).unwrap();
    conn.query_row("SELECT count(*) FROM mailbox", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thread_beside_the_writer_copies_the_log_into_the_database() {
    let _turn = ONE_STORE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmtp.db");
    let accounts: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let store = open(&db, &accounts).await;
    let checkpoints = thread_named("cmtp-store-ckpt");
    let before = written_by(checkpoints);

    // One at a time, each its own commit: about a thousand pages of log.
    let body = pattern(4096, 1);
    for n in 0..200u64 {
        let account = &accounts[n as usize % accounts.len()];
        store
            .deliver(delivery(account, hash(n), &body, T0))
            .await
            .unwrap();
    }

    // The checkpoint thread is woken by the commits and works on its own.
    let deadline = Instant::now() + Duration::from_secs(10);
    let copied = loop {
        let copied = written_by(checkpoints) - before;
        if copied >= 64 * PAGE || Instant::now() > deadline {
            break copied;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        copied >= 64 * PAGE,
        "the checkpoint thread wrote {copied} bytes while about 1,000 pages went \
         through the log (who checkpointed it?)"
    );
    // Without checkpoints the log would hold all of them (about 2,800
    // pages); the writer copies the rest from 256 pages once the thread
    // left little, and from 1,024 whatever is left (a machine so loaded
    // that the checkpoint thread lags far behind).
    let log = wal_len(&db);
    assert!(
        log <= 1024 * FRAME,
        "the log is {log} bytes: it was not checkpointed and started over"
    );
    drop(store);
    assert_eq!(delivered(&db), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_stays_bounded_when_the_writer_never_pauses() {
    let _turn = ONE_STORE_AT_A_TIME.lock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmtp.db");
    let accounts: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    let store = open(&db, &accounts).await;

    // Twenty senders at once: the writer always has a batch waiting, so
    // its next transaction may always begin before the checkpoint thread
    // has copied the whole log.
    let mut senders = tokio::task::JoinSet::new();
    for (i, account) in accounts.iter().enumerate() {
        let store = store.clone();
        let account = account.clone();
        senders.spawn(async move {
            let body = pattern(4096, i as u64);
            for n in 0..100u64 {
                let id = i as u64 * 1000 + n;
                store
                    .deliver(delivery(&account, hash(id), &body, T0))
                    .await
                    .unwrap();
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }

    // About 8,000 pages went through the log. It never held more than a
    // few batches beyond twice the writer's own limit (256 pages), with
    // room for a loaded machine; without the writer's own checkpoints it
    // held them all. The file keeps its largest size (journal_size_limit
    // is 64 MiB).
    let log = wal_len(&db);
    assert!(
        log <= 2048 * FRAME,
        "the log grew to {log} bytes ({} pages)",
        log / FRAME
    );
    drop(store);
    assert_eq!(delivered(&db), 2000);
}
