//! kill -9 while the checkpoint thread copies the write-ahead log into the
//! databases (src/sqlite/checkpoint.rs): after every kill, each delivery
//! the store had acknowledged is there, whole, once, and both databases
//! pass SQLite's integrity check.
//!
//! The test runs this binary again as a child process
//! ([`child_delivers_until_killed`], selected by name and given the
//! database in `CMTP_CRASH_DB`). The child delivers from 20 tasks at once
//! and prints the number of each delivery the store acknowledged; the
//! parent kills it (SIGKILL) at a random moment, reopens the store and
//! checks. With checkpoints every 64 KiB of log and inline bodies of
//! 4 KiB and 64 KiB, the checkpoint thread (and the writer's own checkpoints) run
//! most of the time, so most kills land in the middle of one; the test
//! checks that checkpoints did copy pages before each kill (in WAL mode
//! only a checkpoint writes to a database file, and opening one does not
//! checkpoint).

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern, read_all};
use cmtp_store::{SqliteConfig, SqliteStore, Store};

const ACCOUNTS: usize = 20;
const CHECKPOINT_BYTES: u64 = 64 << 10;
const CHILD: &str = "child_delivers_until_killed";

fn account(i: usize) -> String {
    format!("user{i}")
}

/// Delivery `n`'s body: 64 KiB for every fourth (several pages of
/// overflow), 4 KiB for the others.
fn body(n: u64) -> Vec<u8> {
    let len = if n.is_multiple_of(4) {
        64 << 10
    } else {
        4 << 10
    };
    pattern(len, n)
}

async fn open(db: &Path) -> SqliteStore {
    let mut config = SqliteConfig::new(db);
    config.checkpoint_bytes = CHECKPOINT_BYTES;
    SqliteStore::open(config).await.unwrap()
}

fn integrity(file: &Path) -> String {
    let conn = rusqlite::Connection::open(file).unwrap();
    conn.query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap()
}

fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

/// The child: delivers numbers `CMTP_CRASH_FROM..` from 20 tasks until it
/// is killed, printing `ok N` once the store acknowledged delivery N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of kill_9_during_checkpoints_loses_no_acknowledged_delivery"]
async fn child_delivers_until_killed() {
    let Ok(db) = std::env::var("CMTP_CRASH_DB") else {
        return;
    };
    let from: u64 = std::env::var("CMTP_CRASH_FROM").unwrap().parse().unwrap();
    let store = open(Path::new(&db)).await;
    println!("ready");
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..ACCOUNTS {
        let store = store.clone();
        senders.spawn(async move {
            for k in 0.. {
                let n = from + (k * ACCOUNTS + i) as u64;
                store
                    .deliver(delivery(&account(i), hash(n), &body(n), T0))
                    .await
                    .unwrap();
                let mut out = std::io::stdout().lock();
                writeln!(out, "ok {n}").unwrap();
                out.flush().unwrap();
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_checkpoints_loses_no_acknowledged_delivery() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("cmtp.db");
    {
        let store = open(&db).await;
        for i in 0..ACCOUNTS {
            store
                .create_user(new_user(&account(i)), None, T0)
                .await
                .unwrap();
        }
    }
    let mut acked: Vec<u64> = Vec::new();
    // Time to open the store (recovering the previous kill's log) and
    // deliver a few hundred messages; varied, so that the kills fall at
    // different points of the checkpoints.
    let kill_after_ms = [450, 1100, 600, 850, 1300, 500, 950, 700];
    for (cycle, ms) in kill_after_ms.into_iter().enumerate() {
        let cycle = cycle as u64;
        let copied_before = file_len(&db);
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([CHILD, "--exact", "--ignored", "--nocapture"])
            .env("CMTP_CRASH_DB", &db)
            .env("CMTP_CRASH_FROM", (cycle * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let reader = std::thread::spawn(move || {
            let mut ready = false;
            let mut acked = Vec::new();
            for line in lines {
                let line = line.unwrap();
                if line == "ready" {
                    ready = true;
                } else if let Some(n) = line.strip_prefix("ok ") {
                    acked.push(n.parse::<u64>().unwrap());
                }
            }
            (ready, acked)
        });
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        child.wait().unwrap();
        let (ready, mut got) = reader.join().unwrap();
        assert!(ready, "cycle {cycle}: the child never opened the store");
        assert!(
            !got.is_empty(),
            "cycle {cycle}: no delivery was acknowledged"
        );
        eprintln!(
            "cycle {cycle}: {} acknowledged, killed after {ms} ms",
            got.len()
        );
        acked.append(&mut got);

        // Checkpoints copied pages into the database before the kill
        // (without them they would all still be in the log).
        assert!(
            file_len(&db) > copied_before,
            "cycle {cycle}: nothing was checkpointed into the database"
        );
    }
    // The database as the last kill left it (opening it recovers the log,
    // as the store does).
    assert_eq!(integrity(&db), "ok", "the database");

    let store = open(&db).await;
    let mut stored: HashMap<[u8; 32], Vec<_>> = HashMap::new();
    for i in 0..ACCOUNTS {
        for (entry, blob) in mailbox(&store, &account(i)).await {
            stored.entry(entry).or_default().push(blob);
        }
    }
    eprintln!(
        "{} deliveries acknowledged over {} kills; {} messages stored",
        acked.len(),
        kill_after_ms.len(),
        stored.values().map(Vec::len).sum::<usize>()
    );
    for n in &acked {
        let blobs = stored
            .get(&hash(*n))
            .unwrap_or_else(|| panic!("acknowledged delivery {n} is missing"));
        assert_eq!(blobs.len(), 1, "delivery {n} is stored twice");
        assert!(
            read_all(&store, blobs[0]).await == body(*n),
            "delivery {n} is not stored whole"
        );
    }
}

/// Each message of `account`: its hash and where its bytes are.
async fn mailbox(store: &SqliteStore, account: &str) -> Vec<([u8; 32], cmtp_store::BlobRef)> {
    let mut out = Vec::new();
    for entry in store.list_mailbox(account).await.unwrap() {
        let (entry, blob) = store
            .mailbox_message(account, entry.id)
            .await
            .unwrap()
            .expect("a listed message");
        out.push((entry.hash, blob));
    }
    out
}
