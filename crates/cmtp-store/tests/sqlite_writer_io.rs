//! What the SQLite writer thread writes to disk: the write-ahead log and
//! nothing else between checkpoints. Each request runs in its own SAVEPOINT
//! inside the group commit, and SQLite copies the pages a savepoint changes
//! into a statement journal. SQLite's default keeps 64 KiB of it in memory
//! and spills the rest to a temporary file, which doubled the writer's bytes
//! written per message; the workspace builds the bundled SQLite with a 4 MiB
//! threshold (.cargo/config.toml; docs/BENCHMARKS.md, issue 17 continued
//! (3)).
//!
//! Counted with the kernel's per-thread I/O accounting (Linux only), so this
//! test has its own binary: no other store's writer thread runs beside it.

#![cfg(target_os = "linux")]

use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern};
use cmtp_store::{SqliteConfig, SqliteStore, Store};

mod task_io;
use task_io::{thread_named, wal_len, written_by};

#[test]
fn the_bundled_sqlite_keeps_4_mib_of_statement_journal_in_memory() {
    let conn = rusqlite::Connection::open_in_memory().unwrap();
    let mut stmt = conn.prepare("PRAGMA compile_options").unwrap();
    let options: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        options.iter().any(|o| o == "STMTJRNL_SPILL=4194304"),
        "SQLite was built without LIBSQLITE3_FLAGS from .cargo/config.toml \
         (was cargo run from outside the workspace?): {options:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_writer_writes_the_log_and_no_statement_journal() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmtp.db");
    let store = SqliteStore::open(SqliteConfig::new(&db)).await.unwrap();
    let accounts: Vec<String> = (0..20).map(|i| format!("user{i}")).collect();
    for a in &accounts {
        store.create_user(new_user(a), None, T0).await.unwrap();
    }
    let tid = thread_named("cmtp-store-writ");
    let (wal_before, written_before) = (wal_len(&db), written_by(tid));

    // One at a time: every delivery is its own commit, well under the
    // automatic checkpoint (1000 pages), so the log only grows.
    let body = pattern(4096, 3);
    for n in 0..40u64 {
        let account = &accounts[n as usize % accounts.len()];
        store
            .deliver(delivery(account, hash(n), &body, T0))
            .await
            .unwrap();
    }

    let log = wal_len(&db) - wal_before;
    let written = written_by(tid) - written_before;
    assert!(
        log >= 40 * 4096,
        "the log grew by {log} bytes for 40 deliveries (was it checkpointed?)"
    );
    assert!(
        written * 10 <= log * 11,
        "the writer wrote {written} bytes for {log} bytes of log: \
         more than the log itself (a statement journal on disk?)"
    );
}
