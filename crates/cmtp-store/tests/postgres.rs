//! The conformance suite on PostgreSQL (directly and through `AnyStore`),
//! and the backend's own tests: two nodes on one database (concurrent
//! writers, concurrent leasing, a lease taken over after it expired),
//! concurrent start-ups migrating once, schema versions, transient errors
//! (an unreachable server, connections killed by the server, a full disk).
//!
//! One throwaway cluster serves the whole test binary (started on first
//! use); every test gets a fresh database of its own, so tests run in
//! parallel. Without PostgreSQL the tests pass after printing
//! "PostgreSQL suite did not run: ..." unless `CMTP_REQUIRE_POSTGRES=1`.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use cmtp_store::conformance::{T0, delivery, hash, new_user, outbound, pattern, read_all};
use cmtp_store::{
    AnyStore, NewDelivery, PostgresConfig, PostgresStore, Store, StoreConfig, StoreError,
};
use cmtp_testkit::postgres::{PgCluster, pg_or_skip};
use cmtp_testkit::tmpfs::Tmpfs;

// ----- one cluster per test binary, one database per test -----

struct Shared {
    cluster: PgCluster,
    /// Stops the cluster and removes its directory when this process exits
    /// (a static is never dropped, so `PgCluster`'s own clean-up never
    /// runs): a shell that waits for its stdin, which only closes when the
    /// test binary is gone.
    _reaper: Option<Child>,
}

static CLUSTER: OnceLock<Option<Shared>> = OnceLock::new();
static NEXT_DATABASE: AtomicU32 = AtomicU32::new(0);

/// The shared cluster, started on first use; `None` when PostgreSQL is not
/// installed (and `CMTP_REQUIRE_POSTGRES` is not `1`). Blocks.
fn cluster() -> Option<&'static PgCluster> {
    CLUSTER
        .get_or_init(|| {
            pg_or_skip().map(|cluster| {
                let reaper = start_reaper(cluster.dir());
                Shared {
                    cluster,
                    _reaper: reaper,
                }
            })
        })
        .as_ref()
        .map(|s| &s.cluster)
}

fn start_reaper(dir: &Path) -> Option<Child> {
    const SCRIPT: &str = r#"
read -r _ignored
for pidfile in "$1"/*/postmaster.pid; do
    [ -f "$pidfile" ] || continue
    pid=$(head -n 1 "$pidfile")
    kill -QUIT "$pid" 2>/dev/null
    i=0
    while kill -0 "$pid" 2>/dev/null && [ "$i" -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
done
rm -rf "$1"
"#;
    let child = Command::new("sh")
        .arg("-c")
        .arg(SCRIPT)
        .arg("cmtp-pg-reaper")
        .arg(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(child) => Some(child),
        Err(e) => {
            eprintln!(
                "cannot start the cluster reaper ({e}); {} stays",
                dir.display()
            );
            None
        }
    }
}

/// A fresh, empty database of the shared cluster; `None` without
/// PostgreSQL.
async fn fresh_database() -> Option<String> {
    tokio::task::spawn_blocking(|| {
        let cluster = cluster()?;
        let n = NEXT_DATABASE.fetch_add(1, Ordering::Relaxed);
        Some(cluster.create_database(&format!("t{n}")).expect("createdb"))
    })
    .await
    .expect("creating a database")
}

fn config(url: &str) -> PostgresConfig {
    let mut config = PostgresConfig::new(url);
    config.pool_size = 8;
    config
}

async fn pg_store() -> Option<(PostgresStore, ())> {
    let url = fresh_database().await?;
    Some((PostgresStore::open(config(&url)).await.expect("open"), ()))
}

async fn any_store() -> Option<(AnyStore, ())> {
    let url = fresh_database().await?;
    let store = AnyStore::open(StoreConfig::Postgres(config(&url)))
        .await
        .expect("open");
    Some((store, ()))
}

/// Two nodes (two stores, two pools) on one fresh database.
async fn two_nodes() -> Option<(AnyStore, AnyStore, String)> {
    let url = fresh_database().await?;
    let a = AnyStore::open(StoreConfig::Postgres(config(&url)))
        .await
        .expect("open node a");
    let b = AnyStore::open(StoreConfig::Postgres(config(&url)))
        .await
        .expect("open node b");
    Some((a, b, url))
}

/// A plain connection for inspecting or changing a database behind the
/// store's back.
async fn raw(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

mod suite {
    cmtp_store::conformance_suite!(optional super::pg_store);
}

mod any_store_suite {
    cmtp_store::conformance_suite!(optional super::any_store);
}

// ----- two nodes on one database -----

/// (a) Both nodes deliver the same 800 messages at once from 8 tasks each:
/// every message is stored exactly once, both nodes' answers name the same
/// entry, and every message reads back intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_concurrent_writers() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    for user in ["alice", "bob"] {
        a.create_user(new_user(user), None, T0).await.unwrap();
    }
    const MESSAGES: u64 = 800;
    const TASKS: u64 = 8;
    let mut tasks = Vec::new();
    for (node, store) in [(0u64, &a), (1, &b)] {
        for t in 0..TASKS {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut answers = Vec::new();
                // The two nodes walk the messages in opposite orders, so
                // they meet (and race) on every hash.
                let mut ns: Vec<u64> = (0..MESSAGES).filter(|n| n % TASKS == t).collect();
                if node == 1 {
                    ns.reverse();
                }
                for n in ns {
                    let account = if n % 2 == 0 { "alice" } else { "bob" };
                    let body = pattern(300 + (n as usize % 700), n);
                    let d = s
                        .deliver(delivery(account, hash(n), &body, T0))
                        .await
                        .unwrap();
                    answers.push((n, d));
                }
                answers
            }));
        }
    }
    let mut by_hash: HashMap<u64, Vec<cmtp_store::Delivered>> = HashMap::new();
    for t in tasks {
        for (n, d) in t.await.unwrap() {
            by_hash.entry(n).or_default().push(d);
        }
    }
    assert_eq!(by_hash.len() as u64, MESSAGES);
    for (n, answers) in &by_hash {
        assert_eq!(answers.len(), 2);
        let originals = answers.iter().filter(|d| !d.duplicate).count();
        assert_eq!(originals, 1, "message {n} stored {originals} times");
        assert_eq!(answers[0].id, answers[1].id, "message {n}: two ids");
    }
    let alice = a.list_mailbox("alice").await.unwrap();
    let bob = b.list_mailbox("bob").await.unwrap();
    assert_eq!(
        alice.len() + bob.len(),
        MESSAGES as usize,
        "lost or doubled"
    );
    let ids: HashSet<(&str, u64)> = alice
        .iter()
        .map(|e| ("alice", e.id))
        .chain(bob.iter().map(|e| ("bob", e.id)))
        .collect();
    assert_eq!(ids.len(), MESSAGES as usize);
    for (n, answers) in &by_hash {
        let account = if n % 2 == 0 { "alice" } else { "bob" };
        let reader = if n % 3 == 0 { &a } else { &b };
        let (entry, blob) = reader
            .mailbox_message(account, answers[0].id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("message {n} lost"));
        assert_eq!(entry.hash, hash(*n));
        assert_eq!(
            read_all(reader, blob).await,
            pattern(300 + (*n as usize % 700), *n)
        );
    }
}

/// (b) Both nodes lease from 200 queued entries at once, 4 tasks each:
/// every entry is leased exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_lease_every_entry_once() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    for i in 0..200u64 {
        let node = if i % 2 == 0 { &a } else { &b };
        node.enqueue(outbound("alice", hash(i), b"relay", T0))
            .await
            .unwrap();
    }
    let mut tasks = Vec::new();
    for (name, store) in [("node-a", &a), ("node-b", &b)] {
        for _ in 0..4 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                loop {
                    let batch = s.lease_due(T0 + 1, name, T0 + 600, 7).await.unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for e in batch {
                        assert_eq!(e.lease_owner.as_deref(), Some(name));
                        assert_eq!(e.lease_until, Some(T0 + 600));
                        got.push((name, e.id));
                    }
                }
                got
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<u64> = all.iter().map(|(_, id)| *id).collect();
    assert_eq!(all.len(), 200, "an entry was leased twice or never");
    assert_eq!(distinct.len(), 200);
    let by_a = all.iter().filter(|(n, _)| *n == "node-a").count();
    eprintln!("node a leased {by_a}, node b {}", 200 - by_a);
    // The queue agrees with what each node was told.
    let owners: HashMap<u64, String> = a
        .list_queue()
        .await
        .unwrap()
        .into_iter()
        .map(|e| (e.id, e.lease_owner.unwrap()))
        .collect();
    for (name, id) in &all {
        assert_eq!(owners[id], *name);
    }
    assert_eq!(a.queue_stats(T0 + 1).await.unwrap().leased, 200);
}

/// (c) Node A's lease expires, node B takes the entry over: A can no longer
/// complete, retry or fail it; B completes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_expired_lease_is_taken_over() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    a.create_user(new_user("alice"), None, T0).await.unwrap();
    let q = a
        .enqueue(outbound("alice", hash(1), b"relay me", T0))
        .await
        .unwrap();
    let leased = a.lease_due(T0, "node-a", T0 + 10, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    assert!(
        b.lease_due(T0 + 9, "node-b", T0 + 100, 10)
            .await
            .unwrap()
            .is_empty(),
        "A's lease is still valid"
    );
    let taken = b.lease_due(T0 + 10, "node-b", T0 + 100, 10).await.unwrap();
    assert_eq!(taken.len(), 1, "A's lease expired");
    assert_eq!(taken[0].id, q.id);
    assert_eq!(taken[0].lease_owner.as_deref(), Some("node-b"));

    assert!(!a.complete(q.id, "node-a").await.unwrap());
    assert!(
        !a.retry_later(q.id, "node-a", T0 + 50, "late")
            .await
            .unwrap()
    );
    let notice = NewDelivery {
        source: "@local.example".to_owned(),
        ..delivery("alice", hash(1000), b"DELIVERYFAILURE", T0 + 11)
    };
    assert!(
        !a.fail_with_notice(q.id, "node-a", "late", notice)
            .await
            .unwrap()
    );
    assert!(
        a.list_mailbox("alice").await.unwrap().is_empty(),
        "no notice"
    );
    let e = b.list_queue().await.unwrap().remove(0);
    assert_eq!((e.attempts, e.lease_owner.as_deref()), (0, Some("node-b")));

    assert!(b.complete(q.id, "node-b").await.unwrap());
    assert!(a.list_queue().await.unwrap().is_empty());
    assert_eq!(a.read_chunk(taken[0].blob, 0).await.unwrap(), None);
}

/// A node that gives up (`fail_with_notice`) while the other node takes the
/// entry over: exactly one of them wins, and the notice is delivered at
/// most once (exactly once if the failing node won).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_fail_and_take_over_race() {
    let Some((a, b, _)) = two_nodes().await else {
        return;
    };
    a.create_user(new_user("alice"), None, T0).await.unwrap();
    for round in 0..20u64 {
        let q = a
            .enqueue(outbound("alice", hash(round), b"m", T0))
            .await
            .unwrap();
        let t = T0 + round * 100;
        assert_eq!(a.lease_due(t, "node-a", t + 10, 1).await.unwrap().len(), 1);
        let notice = NewDelivery {
            source: "@local.example".to_owned(),
            ..delivery("alice", hash(10_000 + round), b"failed", t)
        };
        let (failed, taken) = tokio::join!(
            a.fail_with_notice(q.id, "node-a", "gave up", notice),
            b.lease_due(t + 10, "node-b", t + 20, 1)
        );
        let failed = failed.unwrap();
        let taken = taken.unwrap();
        assert!(
            failed != (taken.len() == 1),
            "round {round}: both or neither won"
        );
        if taken.len() == 1 {
            assert!(b.complete(q.id, "node-b").await.unwrap());
        }
    }
    let notices = a.list_mailbox("alice").await.unwrap().len();
    eprintln!("the failing node won {notices} of 20 races");
    assert!(a.list_queue().await.unwrap().is_empty());
}

// ----- start-up and schema -----

/// Eight nodes starting at once on an empty database: the schema is
/// created once and every node works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_starts_migrate_once() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let opens: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { PostgresStore::open(config(&url)).await })
        })
        .collect();
    let mut stores = Vec::new();
    for o in opens {
        stores.push(o.await.unwrap().expect("a concurrent start failed"));
    }
    let client = raw(&url).await;
    let rows = client
        .query("SELECT version FROM schema_version", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), 6);
    for (i, s) in stores.iter().enumerate() {
        s.create_user(new_user(&format!("user{i}")), None, T0)
            .await
            .unwrap();
    }
    assert_eq!(stores[0].list_users().await.unwrap().len(), 8);
}

/// A version 1 database is migrated in place and keeps its users and queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_database_is_migrated_keeping_everything() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let client = raw(&url).await;
    client
        .batch_execute(cmtp_store::conformance::POSTGRES_SCHEMA_V1)
        .await
        .unwrap();
    client
        .batch_execute(
            "INSERT INTO schema_version (version) VALUES (1);
             INSERT INTO users VALUES ('alice', decode(repeat('00', 32), 'hex'),
                 decode(repeat('00', 192), 'hex'), decode(repeat('00', 12), 'hex'), '\\x01', 5, 6);
             INSERT INTO blobs (id, size, chunks, staged_at) VALUES (1, 3, 1, NULL);
             INSERT INTO blob_chunks VALUES (1, 0, '\\x616263');
             INSERT INTO outbound (hash, sender, destination, dest_domain, size, created_at,
                                   expires_at, next_attempt_at, blob_id)
             VALUES (decode(repeat('00', 32), 'hex'), 'alice', 'bob@b.test', 'b.test', 3, 7,
                     99999, 7, 1);",
        )
        .await
        .unwrap();
    let store = PostgresStore::open(config(&url)).await.unwrap();
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!((alice.created_at, alice.quota), (5, None));
    let queue = store.list_queue().await.unwrap();
    assert_eq!(queue.len(), 1);
    assert!(!queue[0].held);
    assert_eq!(read_all(&store, queue[0].blob).await, b"abc");
    store.add_alias("ally", "alice", T0).await.unwrap();
    assert!(store.set_held(queue[0].id, true).await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_versions_are_checked() {
    let Some(url) = fresh_database().await else {
        return;
    };
    let store = PostgresStore::open(config(&url)).await.unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    drop(store);
    // Opening again keeps everything.
    let store = PostgresStore::open(config(&url)).await.unwrap();
    assert!(store.user("alice").await.unwrap().is_some());
    drop(store);

    let client = raw(&url).await;
    client
        .execute("UPDATE schema_version SET version = 99", &[])
        .await
        .unwrap();
    let e = PostgresStore::open(config(&url)).await.unwrap_err();
    assert_eq!(
        e,
        StoreError::SchemaTooNew {
            found: 99,
            supported: 6
        }
    );
    assert!(!e.is_transient());

    // A database that holds someone else's tables is not taken over.
    let Some(other) = fresh_database().await else {
        return;
    };
    raw(&other)
        .await
        .batch_execute("CREATE TABLE stuff (x INTEGER)")
        .await
        .unwrap();
    let e = PostgresStore::open(config(&other)).await.unwrap_err();
    assert!(matches!(e, StoreError::Corrupt(_)), "{e:?}");
}

/// The password never shows in `Debug`.
#[test]
fn config_debug_hides_the_password() {
    let c = PostgresConfig::new("postgres://cmtp:hunter2@db.example/cmtp");
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(
        shown.contains("postgres://cmtp:***@db.example/cmtp"),
        "{shown}"
    );
}

// ----- transient and permanent errors -----

/// Nothing listening: opening fails with a transient error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_server_is_transient() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = PostgresConfig::new(format!("postgres://postgres@127.0.0.1:{port}/cmtp"));
    c.connect_timeout = Duration::from_secs(2);
    let e = PostgresStore::open(c).await.unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.is_transient());
    let e = PostgresStore::open(PostgresConfig::new("postgres://[bad"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput(_)), "{e:?}");
}

/// The server kills the store's connections (57P01, as on a restart or a
/// fail-over): a request in flight fails with a transient error and changes
/// nothing; idle pooled connections are replaced without the callers
/// noticing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_transient() {
    let Some((store, url)) = store_with_accounts(["alice"]).await else {
        return;
    };
    let admin = raw(&url).await;
    // Only this test's database: the cluster is shared with the tests
    // running beside it.
    let kill = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                WHERE application_name = 'cmtpd' AND pid <> pg_backend_pid()
                AND datname = current_database()";

    // A delivery in flight: another session holds the hash's claim, so the
    // delivery waits on it; then its connection is killed.
    let locker = raw(&url).await;
    locker.batch_execute("BEGIN").await.unwrap();
    locker
        .execute(
            "INSERT INTO delivered (hash, account, message_id, at) VALUES ($1, 'alice', 0, 0)",
            &[&&hash(999)[..]],
        )
        .await
        .unwrap();
    let pending = {
        let s = store.clone();
        tokio::spawn(async move {
            s.deliver(delivery("alice", hash(999), b"in flight", T0))
                .await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting: i64 = admin
            .query_one(
                "SELECT COUNT(*) FROM pg_stat_activity
                 WHERE application_name = 'cmtpd' AND wait_event_type = 'Lock'
                   AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the delivery never blocked");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.execute(kill, &[]).await.unwrap();
    let e = pending.await.unwrap().unwrap_err();
    eprintln!("in-flight delivery on a killed connection: {e}");
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.is_transient());
    locker.batch_execute("ROLLBACK").await.unwrap();
    // Other pooled connections were killed too; one that has not noticed yet
    // fails once more, transiently, like the request above.
    let mut failures = 0;
    let d = deliver_until_ok(&store, "alice", 999, b"in flight", &mut failures).await;
    assert!(!d.duplicate, "the failed delivery left nothing behind");

    // Idle connections killed between requests.
    let mut stored = vec![(999, d.id, b"in flight".to_vec())];
    for n in 0..30u64 {
        if n % 10 == 5 {
            admin.execute(kill, &[]).await.unwrap();
        }
        let body = pattern(500, n);
        let d = deliver_until_ok(&store, "alice", n, &body, &mut failures).await;
        assert!(!d.duplicate);
        stored.push((n, d.id, body));
    }
    eprintln!("{failures} later requests met a killed connection");
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), 31);
    for (n, id, body) in stored {
        let (entry, blob) = store.mailbox_message("alice", id).await.unwrap().unwrap();
        assert_eq!(entry.hash, hash(n));
        assert_eq!(read_all(&store, blob).await, body);
    }
}

/// Delivers until it works; every failure must be transient (at most 20).
async fn deliver_until_ok(
    store: &PostgresStore,
    account: &str,
    n: u64,
    body: &[u8],
    failures: &mut u32,
) -> cmtp_store::Delivered {
    for _ in 0..20 {
        match store.deliver(delivery(account, hash(n), body, T0)).await {
            Ok(d) => return d,
            Err(e) => {
                assert!(e.is_transient(), "{e:?}");
                *failures += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    panic!("delivery {n} kept failing");
}

/// Text PostgreSQL cannot hold (a NUL byte) is refused permanently and
/// changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_text_is_permanent() {
    let Some((store, ())) = pg_store().await else {
        return;
    };
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    let bad = NewDelivery {
        source: "nul\0@example".to_owned(),
        ..delivery("alice", hash(1), b"x", T0)
    };
    let e = store.deliver(bad).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput(_)), "{e:?}");
    assert!(!e.is_transient());
    assert!(
        !store
            .deliver(delivery("alice", hash(1), b"x", T0))
            .await
            .unwrap()
            .duplicate
    );
}

/// The uid and gid the server runs as: the owner of its data directory.
fn server_owner(cluster: &PgCluster) -> Option<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let data = std::fs::read_dir(cluster.dir())
        .ok()?
        .filter_map(Result::ok)
        .find(|e| e.path().join("PG_VERSION").is_file())?;
    let m = data.metadata().ok()?;
    Some((m.uid(), m.gid()))
}

/// A real full disk under the database (53100): a tablespace on a small
/// tmpfs, filled to the brim. Deliveries fail with the transient
/// `StoreError::Full`, what was stored stays readable, and once space
/// returns the very message that failed is accepted (it was not recorded).
///
/// This test runs its own cluster: should it fail half-way, a tablespace
/// whose file system vanished must not break the shared one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_disk_is_transient_and_recoverable() {
    // Without PostgreSQL, the shared cluster says so (or fails the test).
    if tokio::task::spawn_blocking(cluster)
        .await
        .unwrap()
        .is_none()
    {
        return;
    }
    let own = tokio::task::spawn_blocking(PgCluster::start)
        .await
        .unwrap()
        .expect("a second throwaway cluster");
    let Some(owner) = server_owner(&own) else {
        eprintln!("SKIPPED full_disk_is_transient_and_recoverable: no data directory found");
        return;
    };
    let fs = match Tmpfs::mount("48m", Some(owner)) {
        Ok(fs) => fs,
        Err(why) => {
            eprintln!("SKIPPED full_disk_is_transient_and_recoverable: {why}");
            return;
        }
    };
    // Declared after the tmpfs, so dropped (stopped) before it is unmounted.
    let cluster = own;
    let admin = raw(&cluster.url()).await;
    admin
        .batch_execute(&format!(
            "CREATE TABLESPACE small LOCATION '{}'",
            fs.path().display()
        ))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE DATABASE full_disk TABLESPACE small")
        .await
        .unwrap();
    let url = cluster.url_for("full_disk");
    let store = PostgresStore::open(config(&url)).await.unwrap();
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    let mut kept = Vec::new();
    for n in 0..8u64 {
        let body = pattern(20_000, n);
        let d = store
            .deliver(delivery("alice", hash(n), &body, T0))
            .await
            .unwrap();
        kept.push((n, d.id, body));
    }

    // Fill the file system (as root: the tmpfs belongs to the server's user,
    // but root may write there).
    let filler = fs.path().join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0xEE; 64 << 10];
        while f.write_all(&block).is_ok() && f.sync_all().is_ok() {}
        for _ in 0..128 {
            if f.write_all(&block[..512]).is_err() {
                break;
            }
        }
    }
    let mut failed = None;
    for n in 100..400u64 {
        let body = pattern(256 << 10, n);
        match store.deliver(delivery("alice", hash(n), &body, T0)).await {
            Ok(d) => kept.push((n, d.id, body)),
            Err(e) => {
                eprintln!("full after {} deliveries: {e}", kept.len());
                assert!(matches!(e, StoreError::Full(_)), "{e:?}");
                assert!(e.is_transient());
                failed = Some((n, body));
                break;
            }
        }
    }
    let (failed_n, failed_body) = failed.expect("the disk never filled");
    // Reads keep working on the full disk.
    for (n, id, body) in &kept {
        let (_, blob) = store.mailbox_message("alice", *id).await.unwrap().unwrap();
        assert!(read_all(&store, blob).await == *body, "message {n} damaged");
    }

    std::fs::remove_file(&filler).unwrap();
    let d = store
        .deliver(delivery("alice", hash(failed_n), &failed_body, T0))
        .await
        .unwrap();
    assert!(
        !d.duplicate,
        "the failed delivery must not have been recorded"
    );
    assert_eq!(
        store.list_mailbox("alice").await.unwrap().len(),
        kept.len() + 1
    );
    drop(store);
    drop(admin);
    drop(cluster);
    drop(fs);
}

// ----- group commit: concurrent deliveries share transactions -----

/// Starts every delivery at once (a task each, so that they queue behind
/// one another and share batches) and returns their answers in order.
async fn deliver_at_once(
    store: &PostgresStore,
    deliveries: Vec<NewDelivery>,
) -> Vec<Result<cmtp_store::Delivered, StoreError>> {
    let tasks: Vec<_> = deliveries
        .into_iter()
        .map(|d| {
            let s = store.clone();
            tokio::spawn(async move { s.deliver(d).await })
        })
        .collect();
    let mut answers = Vec::new();
    for t in tasks {
        answers.push(t.await.unwrap());
    }
    answers
}

/// A store on a fresh database with the accounts `accounts`, and the
/// database's URL; `None` without PostgreSQL.
async fn store_with_accounts(
    accounts: impl IntoIterator<Item = impl AsRef<str>>,
) -> Option<(PostgresStore, String)> {
    let url = fresh_database().await?;
    let store = PostgresStore::open(config(&url)).await.unwrap();
    for account in accounts {
        store
            .create_user(new_user(account.as_ref()), None, T0)
            .await
            .unwrap();
    }
    Some((store, url))
}

/// Every account's entries, `(uid, id, modseq)` in uid order, read behind
/// the store's back.
async fn entries_by_account(url: &str) -> HashMap<String, Vec<(i64, i64, i64)>> {
    let client = raw(url).await;
    let mut by_account: HashMap<String, Vec<(i64, i64, i64)>> = HashMap::new();
    for row in client
        .query(
            "SELECT account, uid, id, modseq FROM mailbox ORDER BY account, uid",
            &[],
        )
        .await
        .unwrap()
    {
        by_account
            .entry(row.get(0))
            .or_default()
            .push((row.get(1), row.get(2), row.get(3)));
    }
    by_account
}

/// Within each account, ids and modseqs grow with the uid: the uids were
/// taken in commit order (a later transaction to one account got both a
/// later uid and a later id).
fn assert_uids_in_commit_order(by_account: &HashMap<String, Vec<(i64, i64, i64)>>) {
    for (account, entries) in by_account {
        for pair in entries.windows(2) {
            let ((u0, i0, m0), (u1, i1, m1)) = (pair[0], pair[1]);
            assert!(
                u0 < u1 && i0 < i1 && m0 < m1,
                "{account}: uid {u0} (id {i0}, modseq {m0}) before uid {u1} (id {i1}, modseq {m1})"
            );
        }
    }
}

/// 400 deliveries to 5 accounts at once: every one is stored, each
/// account's uids are exactly 1..=80 and follow commit order, every answer
/// names the stored entry, and the rows were written by far fewer
/// transactions than deliveries (rows of one transaction share `xmin`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deliveries_share_commits_with_distinct_increasing_uids() {
    const ACCOUNTS: u64 = 5;
    const MESSAGES: u64 = 400;
    let Some((store, url)) = store_with_accounts((0..ACCOUNTS).map(|a| format!("u{a}"))).await
    else {
        return;
    };
    let deliveries = (0..MESSAGES)
        .map(|n| {
            delivery(
                &format!("u{}", n % ACCOUNTS),
                hash(n),
                &pattern(4096, n),
                T0,
            )
        })
        .collect();
    let answers = deliver_at_once(&store, deliveries).await;

    let client = raw(&url).await;
    let mut uid_of: HashMap<Vec<u8>, i64> = HashMap::new();
    for row in client
        .query("SELECT hash, uid FROM mailbox", &[])
        .await
        .unwrap()
    {
        uid_of.insert(row.get(0), row.get(1));
    }
    assert_eq!(uid_of.len() as u64, MESSAGES, "lost or doubled");
    for (n, answer) in answers.into_iter().enumerate() {
        let d = answer.unwrap_or_else(|e| panic!("delivery {n}: {e:?}"));
        assert!(!d.duplicate, "delivery {n} called a duplicate");
        assert_eq!(
            d.id as i64,
            uid_of[&hash(n as u64).to_vec()],
            "delivery {n}: the answer names another entry"
        );
    }
    let by_account = entries_by_account(&url).await;
    for (account, entries) in &by_account {
        let uids: Vec<i64> = entries.iter().map(|e| e.0).collect();
        let expected: Vec<i64> = (1..=(MESSAGES / ACCOUNTS) as i64).collect();
        assert_eq!(uids, expected, "{account}'s uids");
    }
    assert_uids_in_commit_order(&by_account);
    let transactions: i64 = client
        .query_one("SELECT count(DISTINCT xmin::TEXT) FROM mailbox", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        transactions < (MESSAGES / 2) as i64,
        "{MESSAGES} deliveries took {transactions} transactions"
    );
}

/// Each of 60 messages delivered three times at once (copies of one
/// message mostly in one batch), then all again: exactly one answer per
/// message stores it, every other answer is a duplicate naming the same
/// entry, and the mailbox holds each message once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicates_in_one_batch_and_across_batches_are_reported_as_duplicates() {
    let Some((store, url)) = store_with_accounts(["alice", "bob"]).await else {
        return;
    };
    const MESSAGES: u64 = 60;
    let account = |n: u64| if n.is_multiple_of(2) { "alice" } else { "bob" };
    let deliveries = (0..MESSAGES)
        .flat_map(|n| (0..3).map(move |_| n))
        .map(|n| delivery(account(n), hash(n), &pattern(1000, n), T0))
        .collect();
    let answers = deliver_at_once(&store, deliveries).await;
    let mut id_of = HashMap::new();
    for (n, copies) in (0..MESSAGES).zip(answers.chunks(3)) {
        let copies: Vec<_> = copies.iter().map(|a| a.clone().unwrap()).collect();
        let originals = copies.iter().filter(|d| !d.duplicate).count();
        assert_eq!(originals, 1, "message {n} stored {originals} times");
        assert!(
            copies.iter().all(|d| d.id == copies[0].id && d.id > 0),
            "message {n}: {copies:?}"
        );
        id_of.insert(n, copies[0].id);
    }
    let again = (0..MESSAGES)
        .map(|n| delivery(account(n), hash(n), &pattern(1000, n), T0 + 1))
        .collect();
    for (n, answer) in (0..MESSAGES).zip(deliver_at_once(&store, again).await) {
        let d = answer.unwrap();
        assert!(d.duplicate, "message {n} stored again");
        assert_eq!(d.id, id_of[&n], "message {n}: another id");
    }
    let by_account = entries_by_account(&url).await;
    assert_eq!(
        by_account.values().map(Vec::len).sum::<usize>() as u64,
        MESSAGES
    );
    assert_uids_in_commit_order(&by_account);
}

/// A quarter of 240 concurrent deliveries go to an unknown recipient (the
/// statement stores nothing; the batch commits the others): each of them
/// fails alone with the error it gets on its own, every other is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_recipient_in_a_batch_fails_alone() {
    failing_deliveries_fail_alone(false).await;
}

/// As above, and every sixteenth delivery's source has a NUL byte, which
/// PostgreSQL refuses with an error that aborts the batch's transaction:
/// those fail alone with that error, every other is still stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_refused_by_postgres_in_a_batch_fails_alone() {
    failing_deliveries_fail_alone(true).await;
}

async fn failing_deliveries_fail_alone(bad_sources: bool) {
    let Some((store, url)) = store_with_accounts(["alice", "bob"]).await else {
        return;
    };
    const MESSAGES: u64 = 240;
    let bad = |n: u64| bad_sources && n % 16 == 6;
    let deliveries = (0..MESSAGES)
        .map(|n| {
            let account = match n % 4 {
                1 => "nobody",
                0 => "alice",
                _ => "bob",
            };
            let mut d = delivery(account, hash(n), &pattern(500, n), T0);
            if bad(n) {
                d.source = "bad\0source@remote.example".to_owned();
            }
            d
        })
        .collect();
    let answers = deliver_at_once(&store, deliveries).await;
    let mut stored = 0;
    for (n, answer) in (0..MESSAGES).zip(answers) {
        match (n % 4, bad(n), answer) {
            (1, _, Err(StoreError::UnknownAccount)) => {}
            (_, true, Err(StoreError::InvalidInput(_))) => {}
            (k, false, Ok(d)) if k != 1 && !d.duplicate => stored += 1,
            (_, _, answer) => panic!("delivery {n}: {answer:?}"),
        }
    }
    assert_eq!(stored, if bad_sources { 165 } else { 180 });
    let by_account = entries_by_account(&url).await;
    assert_eq!(by_account.values().map(Vec::len).sum::<usize>(), stored);
    assert_eq!(by_account["alice"].len(), 60);
    assert_uids_in_commit_order(&by_account);
}

/// Two nodes deliver at once to the same six accounts, one walking them
/// upwards and the other downwards (so that batches taking the accounts'
/// locks in arrival order would deadlock), plus 60 messages both deliver:
/// every delivery succeeds, every message is stored once, uids follow
/// commit order, and PostgreSQL detected no deadlock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_batches_crosswise_neither_deadlock_nor_lose() {
    const ACCOUNTS: u64 = 6;
    let Some((a, url)) = store_with_accounts((0..ACCOUNTS).map(|n| format!("u{n}"))).await else {
        return;
    };
    let b = PostgresStore::open(config(&url)).await.unwrap();
    const OWN: u64 = 300;
    const SHARED: u64 = 60;
    let make = |node: u64| -> Vec<NewDelivery> {
        let mut ds = Vec::new();
        for n in 0..OWN {
            let k = if node == 0 {
                n % ACCOUNTS
            } else {
                ACCOUNTS - 1 - n % ACCOUNTS
            };
            ds.push(delivery(
                &format!("u{k}"),
                hash(node * 1000 + n),
                &pattern(700, node * 1000 + n),
                T0,
            ));
            if n.is_multiple_of(5) {
                let s = 5000 + n / 5;
                ds.push(delivery(
                    &format!("u{}", s % ACCOUNTS),
                    hash(s),
                    &pattern(700, s),
                    T0,
                ));
            }
        }
        ds
    };
    let deadlocks = || async {
        raw(&url)
            .await
            .query_one(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let deadlocks_before = deadlocks().await;
    let (da, db) = (make(0), make(1));
    let (ra, rb) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(deliver_at_once(&a, da), deliver_at_once(&b, db))
    })
    .await
    .expect("the nodes' deliveries hung");
    let mut shared_originals = 0;
    for (node, answers) in [(0, ra), (1, rb)] {
        assert_eq!(answers.len() as u64, OWN + SHARED);
        for (i, answer) in answers.into_iter().enumerate() {
            let d = answer.unwrap_or_else(|e| panic!("node {node}, delivery {i}: {e:?}"));
            // Every sixth delivery is a shared message.
            if i % 6 == 1 {
                shared_originals += usize::from(!d.duplicate);
            } else {
                assert!(!d.duplicate, "node {node}, delivery {i}");
            }
        }
    }
    assert_eq!(shared_originals as u64, SHARED);
    let by_account = entries_by_account(&url).await;
    assert_eq!(
        by_account.values().map(Vec::len).sum::<usize>() as u64,
        2 * OWN + SHARED,
        "lost or doubled"
    );
    assert_uids_in_commit_order(&by_account);
    // Statistics reach pg_stat_database within a second of a backend going
    // idle.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(deadlocks().await, deadlocks_before, "deadlocks detected");
}

// ----- what concurrency buys -----

/// Prints durable inline deliveries (1 KiB) per second with 1, 8 and 64
/// concurrent callers (no assertion on timing). Run with
/// `cargo test -p cmtp-store --release --test postgres -- --ignored --nocapture throughput`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, not a test"]
async fn delivery_throughput() {
    for (concurrency, pool_size) in [(1u64, 16usize), (8, 16), (64, 16), (64, 64)] {
        let Some(url) = fresh_database().await else {
            return;
        };
        let mut c = PostgresConfig::new(&url);
        c.pool_size = pool_size;
        let store = PostgresStore::open(c).await.unwrap();
        let (n, rate) = cmtp_store::conformance::delivery_throughput(&store, concurrency).await;
        println!("concurrency {concurrency:>3}, pool {pool_size:>2}: {n} deliveries = {rate:.0}/s");
    }
}
