//! kill -9 while the checkpoint thread copies the write-ahead log into the
//! database (src/sqlite/checkpoint.rs): after eight kills, each delivery
//! the store had acknowledged is there, whole and once, every message
//! stored is whole, and the databases pass SQLite's integrity check.
//!
//! The test runs this binary again as a child process
//! ([`child_delivers_until_killed`], selected by name and given the
//! database in `CMTP_CRASH_DB`). The child delivers from 20 tasks at once
//! and prints the number of each delivery the store acknowledged; once it
//! has acknowledged a few hundred, the parent kills it (SIGKILL) after a
//! varied delay, and starts the next child on the same database. Each new
//! child first sends again the numbers around the end of the previous one
//! (acknowledged, stored without an answer, or never sent): they must be
//! stored once. With checkpoints every 64 KiB of log and inline bodies of
//! 4 KiB and 64 KiB, the checkpoint thread (and the writer's own
//! checkpoints) run most of the time, so most kills land in the middle of
//! one; the test checks that checkpoints did copy pages before each kill
//! (in WAL mode only a checkpoint writes to the database file, and opening
//! one does not checkpoint). A kill leaves the page cache: this is not a
//! power-loss test.

#![cfg(target_os = "linux")]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use cmtp_store::conformance::{T0, delivery, hash, new_user, pattern, read_all};
use cmtp_store::{SqliteConfig, SqliteStore, Store};

const ACCOUNTS: u64 = 20;
const CHECKPOINT_BYTES: u64 = 64 << 10;
const CHILD: &str = "child_delivers_until_killed";
/// Marks the child's own lines (the test harness may print on the same line).
const MARK: &str = "CMTP_CRASH ";
/// Acknowledged deliveries (over a megabyte of log) before the kill's delay
/// starts.
const BEFORE_KILL: usize = 200;

/// Delivery `n` goes to `user{n mod 20}`.
fn account(n: u64) -> String {
    format!("user{}", n % ACCOUNTS)
}

/// The number a delivery's hash was made from ([`hash`]).
fn number(hash: &[u8; 32]) -> u64 {
    u64::from_be_bytes(hash[..8].try_into().unwrap())
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

fn file_len(file: &Path) -> u64 {
    std::fs::metadata(file).map(|m| m.len()).unwrap_or(0)
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{MARK}{line}").unwrap();
    out.flush().unwrap();
}

async fn deliver(store: &SqliteStore, n: u64) {
    store
        .deliver(delivery(&account(n), hash(n), &body(n), T0))
        .await
        .unwrap();
    say(format_args!("ok {n}"));
}

/// The child: sends `CMTP_CRASH_AGAIN` (`a..b`) again, then numbers
/// `CMTP_CRASH_FROM..` from 20 tasks until it is killed, printing `ok N`
/// once the store acknowledged delivery N.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of kill_9_during_checkpoints_loses_no_acknowledged_delivery"]
async fn child_delivers_until_killed() {
    let Ok(db) = std::env::var("CMTP_CRASH_DB") else {
        return;
    };
    let from: u64 = std::env::var("CMTP_CRASH_FROM").unwrap().parse().unwrap();
    let store = open(Path::new(&db)).await;
    say(format_args!("ready"));
    if let Ok(again) = std::env::var("CMTP_CRASH_AGAIN") {
        let (a, b) = again.split_once("..").unwrap();
        for n in a.parse::<u64>().unwrap()..b.parse().unwrap() {
            deliver(&store, n).await;
        }
    }
    let mut senders = tokio::task::JoinSet::new();
    for i in 0..ACCOUNTS {
        let store = store.clone();
        senders.spawn(async move {
            for k in 0.. {
                deliver(&store, from + k * ACCOUNTS + i).await;
            }
        });
    }
    while let Some(sent) = senders.join_next().await {
        sent.unwrap();
    }
}

enum Event {
    Ready,
    Acked(u64),
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
    // After the first acknowledgements; varied, so that the kills fall at
    // different points of the checkpoints.
    let kill_after_ms = [50, 700, 200, 450, 900, 100, 600, 300];
    let mut again: Option<(u64, u64)> = None;
    for (cycle, ms) in kill_after_ms.into_iter().enumerate() {
        let from = (cycle as u64 + 1) * 1_000_000;
        let copied_before = file_len(&db);
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args([CHILD, "--exact", "--ignored", "--nocapture"])
            .env("CMTP_CRASH_DB", &db)
            .env("CMTP_CRASH_FROM", from.to_string())
            .stdout(Stdio::piped());
        if let Some((a, b)) = again {
            command.env("CMTP_CRASH_AGAIN", format!("{a}..{b}"));
        }
        let mut child = command.spawn().unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (events, received) = mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in lines {
                let line = line.unwrap();
                let Some(at) = line.find(MARK) else { continue };
                let event = match &line[at + MARK.len()..] {
                    "ready" => Event::Ready,
                    said => Event::Acked(said.strip_prefix("ok ").unwrap().parse().unwrap()),
                };
                if events.send(event).is_err() {
                    break;
                }
            }
        });
        let mut ready = false;
        let mut got = Vec::new();
        while !ready || got.len() < BEFORE_KILL {
            match received.recv_timeout(Duration::from_secs(60)) {
                Ok(Event::Ready) => ready = true,
                Ok(Event::Acked(n)) => got.push(n),
                Err(e) => {
                    let _ = child.kill();
                    panic!(
                        "cycle {cycle}: the child stopped or stalled ({e}) after {} acknowledgements",
                        got.len()
                    );
                }
            }
        }
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert_eq!(
            status.signal(),
            Some(9),
            "cycle {cycle}: the child ended before the kill ({status})"
        );
        reader.join().unwrap();
        got.extend(received.try_iter().filter_map(|e| match e {
            Event::Acked(n) => Some(n),
            Event::Ready => None,
        }));
        eprintln!(
            "cycle {cycle}: {} acknowledged, killed {ms} ms after the first {BEFORE_KILL}",
            got.len()
        );
        // Around the end of this child: acknowledged, stored without an
        // answer, or never sent; the next child sends them again.
        let last = got.iter().copied().filter(|&n| n >= from).max().unwrap();
        again = Some((last - 100, last + 40));
        acked.append(&mut got);

        // Checkpoints copied pages into the database before the kill
        // (without them they would all still be in the log).
        assert!(
            file_len(&db) > copied_before,
            "cycle {cycle}: nothing was checkpointed into the database"
        );
    }
    // The databases as the last kill left them, their logs recovered.
    let store = open(&db).await;
    store.integrity_check().await.unwrap();
    let mut stored: HashMap<u64, usize> = HashMap::new();
    for i in 0..ACCOUNTS {
        let account = account(i);
        for entry in store.list_mailbox(&account).await.unwrap() {
            let (entry, blob) = store
                .mailbox_message(&account, entry.id)
                .await
                .unwrap()
                .expect("a listed message");
            let n = number(&entry.hash);
            assert!(
                read_all(&store, blob).await == body(n),
                "delivery {n} is not stored whole"
            );
            *stored.entry(n).or_default() += 1;
        }
    }
    eprintln!(
        "{} acknowledgements over {} kills; {} messages stored",
        acked.len(),
        kill_after_ms.len(),
        stored.len()
    );
    for (n, times) in &stored {
        assert_eq!(*times, 1, "delivery {n} is stored {times} times");
    }
    for n in &acked {
        assert!(
            stored.contains_key(n),
            "acknowledged delivery {n} is missing"
        );
    }
}
