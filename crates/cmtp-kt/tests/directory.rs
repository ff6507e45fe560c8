//! The directory on a real SQLite store and on a real PostgreSQL database
//! (a throwaway cluster, when PostgreSQL is installed): publication,
//! lookups, histories and audits verify; a proof does not verify for
//! another label, value or head. The ignored `benchmark` measures what
//! docs/BENCHMARKS.md reports.

use std::sync::Arc;
use std::time::Instant;

use cmtp_kt::directory::{KtDirectory, VrfKey, verify_audit};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::kt::{EpochHead, key_value, label};
use cmtp_proto::names::{Address, Domain};
use cmtp_store::{KtStore, PostgresConfig, PostgresStore, SqliteConfig, SqliteStore};

async fn store(dir: &std::path::Path) -> SqliteStore {
    SqliteStore::open(SqliteConfig::new(dir.join("kt.db")))
        .await
        .unwrap()
}

fn address(i: usize) -> Address {
    Address::parse(&format!("user{i}@a.example")).unwrap()
}

fn key(i: usize, generation: u8) -> IdentityKey {
    let mut seed = [generation; 32];
    seed[..8].copy_from_slice(&(i as u64).to_be_bytes());
    IdentityKey::from_seed(&seed)
}

fn update(i: usize, generation: u8) -> (Vec<u8>, Vec<u8>) {
    let a = address(i);
    (
        label(&a),
        key_value(&a, &key(i, generation).public()).to_vec(),
    )
}

fn head<S: KtStore>(dir: &KtDirectory<S>, epoch: u64, root: [u8; 32]) -> EpochHead {
    EpochHead {
        domain: Domain::parse("a.example").unwrap(),
        epoch,
        root,
        vrf_key: dir.vrf_public_key(),
        previous: [0; 32],
        time: 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_from_a_sqlite_directory_verify_and_bind_label_value_and_head() {
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path()).await;
    let empty = store(&tmp.path().join("empty")).await;
    proofs_verify_and_bind_label_value_and_head(s, empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proofs_from_a_postgresql_directory_verify_and_bind_label_value_and_head() {
    let Some(cluster) = tokio::task::spawn_blocking(cmtp_testkit::postgres::pg_or_skip)
        .await
        .unwrap()
    else {
        return;
    };
    let open = |name: &'static str| {
        let url = cluster.create_database(name).unwrap();
        async move { PostgresStore::open(PostgresConfig::new(url)).await.unwrap() }
    };
    let s = open("kt").await;
    let empty = open("empty").await;
    proofs_verify_and_bind_label_value_and_head(s, empty).await;
    drop(cluster);
}

/// `s` and `empty`: two empty stores of one backend.
async fn proofs_verify_and_bind_label_value_and_head<S: KtStore>(s: S, empty: S) {
    let vrf = VrfKey::from_seed([7; 32]);
    let dir = KtDirectory::open(s.clone(), vrf.clone(), Some(1 << 20))
        .await
        .unwrap();
    assert_eq!(dir.current().await.unwrap().0, 0);
    assert_eq!(dir.lookup(&label(&address(1))).await.unwrap(), None);

    let (e1, r1) = dir
        .publish((0..50).map(|i| update(i, 1)).collect())
        .await
        .unwrap();
    assert_eq!(e1, 1);
    // A second directory on the same store sees the same epoch: state is in SQLite.
    let again = KtDirectory::open(s.clone(), vrf.clone(), None)
        .await
        .unwrap();
    assert_eq!(again.current().await.unwrap(), (1, r1));

    let l = dir.lookup(&label(&address(7))).await.unwrap().unwrap();
    assert_eq!((l.epoch, l.root), (1, r1));
    assert_eq!(l.value, update(7, 1).1);
    let h1 = head(&dir, 1, r1);
    let p = cmtp_kt::verify_lookup(&h1, &address(7), &l.proof).unwrap();
    assert_eq!(
        (p.since_epoch, p.version, p.value.clone()),
        (1, 1, l.value.clone())
    );
    // Bound to the label, the root and the VRF key.
    assert!(cmtp_kt::verify_lookup(&h1, &address(8), &l.proof).is_err());
    let mut other_root = h1.clone();
    other_root.root[0] ^= 1;
    assert!(cmtp_kt::verify_lookup(&other_root, &address(7), &l.proof).is_err());
    let mut other_vrf = h1.clone();
    other_vrf.vrf_key = IdentityKey::from_seed(&[9; 32]).public().to_bytes();
    assert!(cmtp_kt::verify_lookup(&other_vrf, &address(7), &l.proof).is_err());
    let mut cut = l.proof.clone();
    cut.truncate(cut.len() / 2);
    assert!(cmtp_kt::verify_lookup(&h1, &address(7), &cut).is_err());

    // A key change: version 2, the history holds both, the audit verifies.
    let (e2, r2) = dir
        .publish(vec![update(7, 2), update(60, 1)])
        .await
        .unwrap();
    assert_eq!(e2, 2);
    let dir = KtDirectory::open(s.clone(), vrf.clone(), None)
        .await
        .unwrap();
    let l = dir.lookup(&label(&address(7))).await.unwrap().unwrap();
    let h2 = head(&dir, 2, r2);
    let p = cmtp_kt::verify_lookup(&h2, &address(7), &l.proof).unwrap();
    assert_eq!((p.since_epoch, p.version), (2, 2));
    // A batch lookup (what the server precomputes after an epoch) gives
    // the same proofs, in the order asked, on a directory with a node cache.
    let cached = KtDirectory::open(s.clone(), vrf.clone(), Some(1 << 20))
        .await
        .unwrap();
    let asked = [60, 7, 8];
    let batch = cached
        .batch_lookup(&asked.map(|i| label(&address(i))))
        .await
        .unwrap();
    assert_eq!(batch.len(), 3);
    for (i, b) in asked.iter().zip(&batch) {
        assert_eq!((b.epoch, b.root), (2, r2));
        let one = dir.lookup(&label(&address(*i))).await.unwrap().unwrap();
        assert_eq!(b, &one, "user{i}");
        let p = cmtp_kt::verify_lookup(&h2, &address(*i), &b.proof).unwrap();
        assert_eq!(p.value, b.value);
    }
    assert!(
        cmtp_kt::verify_lookup(&h2, &address(7), &batch[0].proof).is_err(),
        "user60's proof is not user7's"
    );
    assert!(cached.batch_lookup(&[]).await.unwrap().is_empty());
    // A label never published fails the batch.
    assert!(
        cached
            .batch_lookup(&[label(&address(7)), label(&address(999))])
            .await
            .is_err()
    );
    let (he, hr, hist) = dir.history(&label(&address(7))).await.unwrap().unwrap();
    assert_eq!((he, hr), (2, r2));
    let h = cmtp_kt::verify_history(&h2, &address(7), &hist).unwrap();
    assert_eq!(
        h.iter()
            .map(|p| (p.since_epoch, p.version, p.value.clone()))
            .collect::<Vec<_>>(),
        [(2, 2, update(7, 2).1), (1, 1, update(7, 1).1)]
    );
    let audit = dir.audit(1, 2).await.unwrap();
    verify_audit(vec![r1, r2], &audit).await.unwrap();
    assert!(verify_audit(vec![r2, r1], &audit).await.is_err());
    let audit = dir.audit(0, 2).await.unwrap();
    let r0 = {
        // epoch 0's root: the empty tree's (the first head's root)
        let d = KtDirectory::open(empty, vrf, None).await.unwrap();
        d.current().await.unwrap().1
    };
    verify_audit(vec![r0, r1, r2], &audit).await.unwrap();
    // Publishing what is already there makes no epoch.
    assert_eq!(dir.publish(vec![update(7, 2)]).await.unwrap().0, 2);
}

/// `cargo test --release -p cmtp-kt --test directory -- --ignored --nocapture benchmark`
/// (KT_USERS, KT_CHANGES, KT_LOOKUPS, KT_BATCH to change the sizes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark: minutes, and a 100,000-user directory on disk"]
async fn benchmark() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let users = env("KT_USERS", 100_000);
    let changes = env("KT_CHANGES", 1_000);
    let lookups = env("KT_LOOKUPS", 20_000);
    let tmp = tempfile::tempdir().unwrap();
    let s = store(tmp.path()).await;
    let vrf = VrfKey::from_seed([7; 32]);
    let writer = KtDirectory::open(s.clone(), vrf.clone(), None)
        .await
        .unwrap();
    let t = Instant::now();
    for chunk in (0..users).collect::<Vec<_>>().chunks(10_000) {
        writer
            .publish(chunk.iter().map(|&i| update(i, 1)).collect())
            .await
            .unwrap();
    }
    println!(
        "directory of {users} users built in {:.1} s ({} epochs)",
        t.elapsed().as_secs_f64(),
        users.div_ceil(10_000)
    );
    // The epoch publication cmtpd does: a fresh directory without cache.
    let writer = KtDirectory::open(s.clone(), vrf.clone(), None)
        .await
        .unwrap();
    let t = Instant::now();
    let (epoch, root) = writer
        .publish(
            (0..changes)
                .map(|i| update(i * (users / changes), 2))
                .collect(),
        )
        .await
        .unwrap();
    println!(
        "epoch {epoch}: {changes} changes at {users} users published in {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let audit = writer.audit(epoch - 1, epoch).await.unwrap();
    println!(
        "append-only proof of that epoch: {} bytes, made in {:.2} s",
        audit.len(),
        t.elapsed().as_secs_f64()
    );
    // Lookups: what KEYPROOF costs when its answer is not cached yet.
    let dir = Arc::new(
        KtDirectory::open(s.clone(), vrf.clone(), Some(512 << 20))
            .await
            .unwrap(),
    );
    let h = head(&dir, epoch, root);
    let t = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..2 {
        let dir = dir.clone();
        tasks.push(tokio::spawn(async move {
            let mut sizes = 0usize;
            for n in 0..lookups / 2 {
                let i = (n * 2 + w) * 7919 % users;
                sizes += dir
                    .lookup(&label(&address(i)))
                    .await
                    .unwrap()
                    .unwrap()
                    .proof
                    .len();
            }
            sizes
        }));
    }
    let mut bytes = 0;
    for t in tasks {
        bytes += t.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{lookups} lookup proofs (2 tasks, distinct users, node cache warming): {:.0}/s, mean proof {} bytes",
        lookups as f64 / secs,
        bytes / lookups
    );
    // What cmtpd precomputes after an epoch: batch lookups on one task
    // (it runs on one thread of the blocking pool), on a fresh directory
    // as the server serves from after a publication.
    let batch = env("KT_BATCH", 256);
    let fresh = KtDirectory::open(s.clone(), vrf.clone(), Some(512 << 20))
        .await
        .unwrap();
    let labels: Vec<Vec<u8>> = (0..lookups)
        .map(|n| label(&address((n * 7919 + 1) % users)))
        .collect();
    let t = Instant::now();
    let mut made = 0;
    for chunk in labels.chunks(batch.max(1)) {
        made += fresh.batch_lookup(chunk).await.unwrap().len();
    }
    println!(
        "{made} lookup proofs by batch lookup (1 task, batches of {batch}, fresh node cache, distinct users): {:.0}/s",
        made as f64 / t.elapsed().as_secs_f64()
    );
    let fresh = KtDirectory::open(s.clone(), vrf.clone(), Some(512 << 20))
        .await
        .unwrap();
    let t = Instant::now();
    for l in &labels[..lookups / 4] {
        fresh.lookup(l).await.unwrap().unwrap();
    }
    println!(
        "{} lookup proofs one by one (1 task, fresh node cache, distinct users): {:.0}/s",
        lookups / 4,
        (lookups / 4) as f64 / t.elapsed().as_secs_f64()
    );
    let l = dir.lookup(&label(&address(3))).await.unwrap().unwrap();
    let t = Instant::now();
    let n = 2_000;
    for _ in 0..n {
        cmtp_kt::verify_lookup(&h, &address(3), &l.proof).unwrap();
    }
    println!(
        "client verification of one lookup proof: {:.3} ms (proof {} bytes)",
        t.elapsed().as_secs_f64() * 1000.0 / n as f64,
        l.proof.len()
    );
}
