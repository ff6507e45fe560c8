//! Several cmtpd nodes for one domain on one PostgreSQL database: any node
//! serves any command, a node killed with SIGKILL loses nothing that was
//! acknowledged, a relay interrupted by a node's death is finished by
//! another node and delivered once, and the key directory is published by
//! one node at a time, proven alike by all, and taken over when its
//! publisher dies.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cmtp_client::discovery::{Discovery, DiscoveryConfig};
use cmtp_proto::account::key_login_signature;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::kt::SignedHead;
use cmtp_testkit::dns::TestDns;
use cmtp_testkit::postgres::{PgCluster, pg_or_skip};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

/// The configuration of node `name` of a.test on the shared database and key.
fn node_config(
    dir: &Path,
    shared_key: &Path,
    url: &str,
    port: u16,
    name: &str,
    tweak: impl FnOnce(&mut Config),
) {
    write_config(dir, "a.test", port, |c| {
        c.store.backend = cmtp_server::config::StoreBackend::Postgres;
        c.store.url = Some(url.to_owned());
        c.store.pool_size = 8;
        c.key_file = Some(shared_key.to_owned());
        c.node_name = Some(name.to_owned());
        c.relay.poll_ms = 100;
        c.relay.first_retry_secs = 1;
        c.relay.max_retry_secs = 1;
        tweak(c);
    });
}

struct Cluster {
    _pg: PgCluster,
    _tmp: tempfile::TempDir,
    dirs: Vec<PathBuf>,
    ports: Vec<u16>,
    url: String,
    key: PathBuf,
}

fn cluster(pg: PgCluster, nodes: usize, tweak: impl Fn(&mut Config) + Copy) -> Cluster {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("shared").join("server.key");
    std::fs::create_dir_all(key.parent().unwrap()).unwrap();
    let url = pg.url();
    let mut dirs = Vec::new();
    let mut ports = Vec::new();
    for i in 0..nodes {
        let dir = tmp.path().join(format!("node{}", i + 1));
        let port = free_port();
        node_config(&dir, &key, &url, port, &format!("n{}", i + 1), tweak);
        dirs.push(dir);
        ports.push(port);
    }
    // One node creates the key and the schema; the users live in the database.
    let out = cmtpd(&dirs[0]).arg("init").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    add_user(&dirs[0], "alice", "pw-a");
    add_user(&dirs[1], "bob", "pw-b");
    Cluster {
        _pg: pg,
        _tmp: tmp,
        dirs,
        ports,
        url,
        key,
    }
}

async fn key_login(
    addr: SocketAddr,
    address: &Address,
    key: &IdentityKey,
) -> Result<Connection, cmtp_client::ClientError> {
    let mut c = Connection::connect(addr, Duration::from_secs(3)).await?;
    c.ohai().await?;
    let sig = key_login_signature(key, &c.channel_binding(), address);
    let r = c
        .command(
            &Cmd::KeyLogin {
                user: address.account.clone(),
                signature: sig.to_vec(),
            },
            1 << 20,
        )
        .await?;
    assert_eq!(r.status, Status::Success, "{}", r.text());
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_keeps_sending_while_a_node_is_killed_and_nothing_acknowledged_is_lost() {
    let Some(pg) = pg_or_skip() else { return };
    let cl = cluster(pg, 2, |_| {});
    let mut n1 = Some(Daemon::start(&cl.dirs[0], cl.ports[0]));
    let n2 = Daemon::start(&cl.dirs[1], cl.ports[1]);
    // The domain's SRV record names both nodes, as an administrator would publish it.
    let dns = TestDns::start().await.unwrap();
    dns.add_zone("a.test").await.unwrap();
    for (i, port) in cl.ports.iter().enumerate() {
        dns.add_srv(
            "_cmtp._tcp.a.test",
            10,
            50,
            *port,
            &format!("n{}.a.test", i + 1),
        )
        .await
        .unwrap();
        dns.add_a(&format!("n{}.a.test", i + 1), Ipv4Addr::LOCALHOST)
            .await
            .unwrap();
    }
    let discovery = Discovery::new(DiscoveryConfig {
        nameservers: Some(vec![dns.addr()]),
        cache: false,
        ..DiscoveryConfig::default()
    })
    .unwrap();
    let (alice_a, bob_a) = (addr("alice@a.test"), addr("bob@a.test"));
    // LOGIN on one node; the key it releases logs in on the other.
    let (_, alice) = password_login(
        SocketAddr::from(([127, 0, 0, 1], cl.ports[1])),
        &alice_a,
        "pw-a",
    )
    .await;
    let (_, bob) = password_login(
        SocketAddr::from(([127, 0, 0, 1], cl.ports[0])),
        &bob_a,
        "pw-b",
    )
    .await;
    let mut acked: Vec<Message> = Vec::new();
    let mut unknown: Vec<Message> = Vec::new();
    let total = 150;
    // SIGKILL node 1 at a random moment while messages are in flight.
    let kill_after = Duration::from_millis(100 + rand::random::<u64>() % 500);
    let killed = Arc::new(AtomicBool::new(false));
    let killer = {
        let (pid, killed) = (n1.as_ref().unwrap().pid(), killed.clone());
        std::thread::spawn(move || {
            std::thread::sleep(kill_after);
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            killed.store(true, Ordering::SeqCst);
        })
    };
    let mut kill_at = None;
    for i in 0..total {
        if kill_at.is_none() && killed.load(Ordering::SeqCst) {
            kill_at = Some(i);
        }
        let m = Content {
            text: format!("cluster message {i}"),
            ..Content::default()
        }
        .seal(
            &alice_a,
            &alice,
            &bob_a,
            &bob.public(),
            &mut rand_core::OsRng,
        )
        .unwrap();
        let mut sent = false;
        for target in discovery.resolve("a.test").await.unwrap() {
            let Ok(mut c) = key_login(target.addrs[0], &alice_a, &alice).await else {
                continue;
            };
            match c.mail(&m.to_bytes()).await {
                Ok(r) if r.status == Status::Success => {
                    acked.push(m.clone());
                    sent = true;
                    break;
                }
                Ok(r) => panic!("{}: {}", r.status, r.text()),
                // The node died with the message in flight: its fate is unknown.
                Err(_) => unknown.push(m.clone()),
            }
        }
        assert!(sent, "message {i} found no node");
    }
    killer.join().unwrap();
    assert!(
        kill_at.is_some(),
        "node 1 was killed while messages were being sent"
    );
    n1.take();
    let mut b = key_login(n2.addr, &bob_a, &bob).await.unwrap();
    let list = decode_listing(&b.command(&Cmd::List, 1 << 22).await.unwrap().body).unwrap();
    eprintln!(
        "{} acknowledged, {} in doubt, {} stored; node 1 killed before message {kill_at:?}",
        acked.len(),
        unknown.len(),
        list.len()
    );
    assert_eq!(
        acked.len(),
        total,
        "every message was acknowledged by one node or the other"
    );
    let mut hashes: Vec<_> = list.iter().map(|e| e.hash).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(hashes.len(), list.len(), "no message twice");
    for m in &acked {
        let e = list
            .iter()
            .find(|e| e.hash == m.hash())
            .expect("an acknowledged message is missing");
        let mut out = Vec::new();
        b.fetch_into(e.id, 1 << 30, &mut out)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            Message::decode(&out, Default::default()).unwrap().body,
            m.body
        );
    }
    let _ = (&cl.url, &cl.key);
}

/// A TCP proxy that passes everything through, except that once `hold` is
/// set, replies on a connection that has sent `MAIL\0` are withheld: the
/// destination has the message, the sender never hears so.
async fn holding_proxy(upstream: SocketAddr, hold: Arc<AtomicBool>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                continue;
            };
            let hold = hold.clone();
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let saw_mail = Arc::new(AtomicBool::new(false));
                let seen = saw_mail.clone();
                let up = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut tail = Vec::new();
                    while let Ok(n) = cr.read(&mut buf).await {
                        if n == 0 || sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        tail.extend_from_slice(&buf[..n.min(64)]);
                        if tail.windows(5).any(|w| w == b"MAIL\0") {
                            seen.store(true, Ordering::SeqCst);
                        }
                        tail.drain(..tail.len().saturating_sub(4));
                    }
                });
                let mut buf = vec![0u8; 65536];
                while let Ok(n) = sr.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    if hold.load(Ordering::SeqCst) && saw_mail.load(Ordering::SeqCst) {
                        continue;
                    }
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
                up.abort();
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_cut_short_by_a_dead_node_is_finished_by_another_and_delivered_once() {
    let Some(pg) = pg_or_skip() else { return };
    // b.test, a separate single-node domain, behind a proxy that can withhold replies.
    let tmp = tempfile::tempdir().unwrap();
    let b_dir = tmp.path().join("b");
    let b_port = free_port();
    let hold = Arc::new(AtomicBool::new(true));
    let b_upstream = SocketAddr::from(([127, 0, 0, 1], b_port));
    let proxy = holding_proxy(b_upstream, hold.clone()).await;
    let (p1, p2) = (free_port(), free_port());
    write_config(&b_dir, "b.test", b_port, |c| {
        c.dns.routes.insert(
            "a.test".into(),
            vec![format!("127.0.0.1:{p1}"), format!("127.0.0.1:{p2}")],
        );
    });
    add_user(&b_dir, "bob", "pw-b");
    let b = Daemon::start(&b_dir, b_port);
    let cl = {
        let tmp = tempfile::tempdir().unwrap();
        let key = tmp.path().join("server.key");
        let url = pg.url();
        let mut dirs = Vec::new();
        for (i, port) in [p1, p2].into_iter().enumerate() {
            let dir = tmp.path().join(format!("node{}", i + 1));
            node_config(&dir, &key, &url, port, &format!("n{}", i + 1), |c| {
                c.relay.lease_secs = 2;
                c.relay.timeout_secs = 60;
                c.dns
                    .routes
                    .insert("b.test".into(), vec![proxy.to_string()]);
            });
            dirs.push(dir);
        }
        assert!(
            cmtpd(&dirs[0])
                .arg("init")
                .output()
                .unwrap()
                .status
                .success()
        );
        add_user(&dirs[0], "alice", "pw-a");
        (tmp, dirs, pg)
    };
    let n1 = Daemon::start(&cl.1[0], p1);
    let (mut c, alice) = password_login(n1.addr, &addr("alice@a.test"), "pw-a").await;
    let (mut bc, bob) = password_login(b.addr, &addr("bob@b.test"), "pw-b").await;
    let m = Content {
        text: "relayed once".into(),
        ..Content::default()
    }
    .seal(
        &addr("alice@a.test"),
        &alice,
        &addr("bob@b.test"),
        &bob.public(),
        &mut rand_core::OsRng,
    )
    .unwrap();
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    // Node 1 delivers through the proxy; b.test stores it; node 1 never hears back.
    let until = Instant::now() + T;
    loop {
        let list = decode_listing(&bc.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
        if list.len() == 1 {
            break;
        }
        assert!(Instant::now() < until, "node 1 did not deliver");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(n1); // SIGKILL, mid-delivery: the entry stays leased by n1 until its lease expires
    hold.store(false, Ordering::SeqCst);
    let n2 = Daemon::start(&cl.1[1], p2);
    // Node 2 takes over after the lease expires and redelivers; b.test de-duplicates.
    let store = cmtp_store::AnyStore::open(cmtp_store::StoreConfig::Postgres(
        cmtp_store::PostgresConfig::new(cl.2.url()),
    ))
    .await
    .unwrap();
    use cmtp_store::Store;
    let until = Instant::now() + T;
    while !store.list_queue().await.unwrap().is_empty() {
        assert!(
            Instant::now() < until,
            "node 2 did not finish the relay: {:?}",
            store.list_queue().await.unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let list = decode_listing(&bc.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 1, "delivered exactly once");
    assert_eq!(list[0].hash, m.hash());
    assert!(
        store.list_mailbox("alice").await.unwrap().is_empty(),
        "no bounce"
    );
    drop(n2);
}

/// `[transparency] epoch_secs` of the key transparency cluster test.
const EPOCH_SECS: u64 = 2;
/// The publisher's lease at that period (kt.rs: three periods, at least 30 s).
const PUBLISHER_LEASE_SECS: u64 = 30;

/// Starts node `dir` with its log (JSON lines) written to `log`.
fn start_logged(dir: &Path, port: u16, log: &Path) -> Daemon {
    let child = cmtpd(dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    d.wait_ready();
    d
}

/// The epochs a node's log says it published.
fn published_in(log: &Path) -> Vec<u64> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["fields"]["message"] == "key directory epoch published")
        .map(|v| v["fields"]["epoch"].as_u64().expect("an epoch number"))
        .collect()
}

/// Registers `user` over the wire at the node `at` (an invite from the
/// shared database); returns its identity key.
async fn register_at(at: SocketAddr, store: &cmtp_store::AnyStore, user: &str) -> IdentityKey {
    use cmtp_proto::account::Registration;
    use cmtp_proto::payload::RegistrationOffer;
    let account = Account::parse(user).unwrap();
    let (invite, _) = cmtp_server::admin::invite(store, &account, 3600)
        .await
        .unwrap();
    let identity = IdentityKey::generate(&mut rand_core::OsRng);
    let mut c = Connection::connect(at, T).await.unwrap();
    c.ohai().await.unwrap();
    let rng = &mut rand_core::OsRng;
    let (reg, request) = Registration::start(b"password", rng).unwrap();
    let r = c
        .command(
            &Cmd::Register {
                user: account.clone(),
                invite,
                request: request.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let bundle = reg
        .finish(
            b"password",
            &RegistrationOffer::decode(&r.body).unwrap(),
            &addr(&format!("{user}@a.test")),
            &identity,
            KsfParams::INSECURE_TEST,
            1,
            &c.channel_binding(),
            rng,
        )
        .unwrap();
    let r = c
        .command(
            &Cmd::RegFinish {
                bundle: bundle.to_bytes(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    c.close().await;
    identity
}

/// Every head in the database, checked as a witness would: one per
/// epoch from 0, each signed by a.test's key and chained to the one before.
async fn chained_heads(store: &cmtp_store::AnyStore, key: &PublicKey) -> Vec<SignedHead> {
    use cmtp_store::KtStore;
    let heads: Vec<SignedHead> = store
        .kt_heads(0, u64::MAX >> 1)
        .await
        .unwrap()
        .iter()
        .map(|(_, b)| SignedHead::decode(b).unwrap())
        .collect();
    let domain = cmtp_proto::names::Domain::parse("a.test").unwrap();
    for (i, h) in heads.iter().enumerate() {
        assert_eq!(h.head.epoch, i as u64, "the epochs have no gap");
        h.verify_for(key, &domain).unwrap();
    }
    cmtp_proto::kt::check_chain(&heads[0], &heads[1..]).expect("the heads form one chain");
    heads
}

/// Waits until the database holds a head newer than `epoch`; returns it.
async fn next_head(store: &cmtp_store::AnyStore, epoch: u64, within: Duration) -> SignedHead {
    use cmtp_store::KtStore;
    let until = Instant::now() + within;
    loop {
        if let Some((e, b)) = store.kt_latest_head().await.unwrap()
            && e > epoch
        {
            return SignedHead::decode(&b).unwrap();
        }
        assert!(
            Instant::now() < until,
            "no epoch after {epoch} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `user@a.test`'s KEYPROOF from the node at `at`, verified as a client
/// does (PROTOCOL.md §20.5): the statement and head under a.test's key,
/// akd's lookup proof against the head, the proven value that of the
/// stated key. Returns the head and the key.
async fn proven_key(at: SocketAddr, key: &PublicKey, user: &str) -> (SignedHead, PublicKey) {
    key_proof(at, key, user)
        .await
        .unwrap_or_else(|| panic!("{at} gave {user}'s key without a proof"))
}

/// [`proven_key`], or `None` when the node gives the key without a proof.
async fn key_proof(at: SocketAddr, key: &PublicKey, user: &str) -> Option<(SignedHead, PublicKey)> {
    use cmtp_proto::kt::{ProvenKey, key_value};
    use cmtp_proto::statements::KeyStatement;
    let mut c = Connection::connect(at, T).await.unwrap();
    c.expect_key(*key);
    c.ohai().await.unwrap();
    let r = c
        .command(
            &Cmd::KeyProof {
                user: Account::parse(user).unwrap(),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    c.close().await;
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let answer = ProvenKey::decode(&r.body).unwrap();
    let address = addr(&format!("{user}@a.test"));
    let statement = KeyStatement::decode(&answer.statement).unwrap();
    statement
        .verify(key, Some(&address.account), &address.domain, now_secs())
        .unwrap();
    let (head, proof) = answer.proof?;
    head.head.verify_for(key, &address.domain).unwrap();
    let proven = cmtp_kt::verify_lookup(&head.head.head, &address, &proof).unwrap();
    assert_eq!(
        proven.value[..],
        key_value(&address, &statement.key)[..],
        "the stated key is the one the directory holds"
    );
    Some((head.head, statement.key))
}

/// Until `stop`, asks each node in turn for alice's key, as a client going
/// from node to node would, and notes every answer whose epoch is older
/// than the newest head the database held when it was asked (a client
/// that saw that head from the other node would take it for a rollback),
/// or that has no proof (alice's key is published).
async fn watch_epochs(
    store: cmtp_store::AnyStore,
    at: Vec<SocketAddr>,
    key: PublicKey,
    stop: Arc<AtomicBool>,
) -> (usize, Vec<String>) {
    use cmtp_store::KtStore;
    let (mut asked, mut older) = (0, Vec::new());
    while !stop.load(Ordering::SeqCst) {
        for (i, node) in at.iter().enumerate() {
            let newest = store.kt_latest_head().await.unwrap().unwrap().0;
            let answer = key_proof(*node, &key, "alice").await;
            asked += 1;
            match answer {
                Some((head, _)) if head.head.epoch >= newest => {}
                Some((head, _)) => older.push(format!(
                    "node {} answered with epoch {} after epoch {newest} was published",
                    i + 1,
                    head.head.epoch
                )),
                None => older.push(format!(
                    "node {} gave no proof after epoch {newest} was published",
                    i + 1
                )),
            }
        }
    }
    (asked, older)
}

/// Waits until `head` holds `witness`'s cosignature, made with `key`.
async fn cosigned_by(
    store: &cmtp_store::AnyStore,
    head: &SignedHead,
    witness: &str,
    key: &PublicKey,
    within: Duration,
) {
    use cmtp_store::KtStore;
    let until = Instant::now() + within;
    loop {
        let found = store.kt_cosignatures(head.head.epoch).await.unwrap();
        if let Some(c) = found
            .iter()
            .map(|b| cmtp_proto::kt::Cosignature::decode(b).unwrap())
            .find(|c| c.witness.as_str() == witness)
        {
            assert_eq!(c.key, *key);
            c.verify(&head.head).unwrap();
            return;
        }
        assert!(
            Instant::now() < until,
            "{witness} did not cosign epoch {} within {within:?}",
            head.head.epoch
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Two nodes of a.test on one PostgreSQL publish its key directory every
/// 2 s: one node (the publisher's lease holder) publishes each epoch, the
/// heads form one chain, both nodes prove keys for the newest head from the
/// moment it is written, b.test (asking node 2 first) cosigns the heads and
/// finds no contradiction, and when the publisher is killed the other node
/// takes over within the lease and continues the chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_publishes_each_epoch_both_prove_its_head_and_the_other_takes_over_when_it_dies() {
    let Some(pg) = pg_or_skip() else { return };
    // b.test, a single node, witnesses a.test.
    let b_port = free_port();
    let cl = cluster(pg, 2, move |c| {
        c.transparency.epoch_secs = EPOCH_SECS;
        c.transparency.witnesses = vec!["b.test".into()];
        c.dns
            .routes
            .insert("b.test".into(), vec![format!("127.0.0.1:{b_port}")]);
        c.log.format = cmtp_server::config::LogFormat::Json;
    });
    let b_dir = cl.dirs[0].parent().unwrap().join("b");
    write_config(&b_dir, "b.test", b_port, |c| {
        c.transparency.witness_for = vec!["a.test".into()];
        // It asks node 2 first (node 1, which starts first, is likely the
        // publisher), node 1 when node 2 does not answer.
        c.dns.routes.insert(
            "a.test".into(),
            vec![
                format!("127.0.0.1:{}", cl.ports[1]),
                format!("127.0.0.1:{}", cl.ports[0]),
            ],
        );
    });
    let b = Daemon::start(&b_dir, b_port);
    let b_key = {
        let mut c = Connection::connect(b.addr, T).await.unwrap();
        let g = c.ohai().await.unwrap();
        c.close().await;
        g.key
    };
    let logs: Vec<PathBuf> = cl.dirs.iter().map(|d| d.join("cmtpd.log")).collect();
    let mut nodes: Vec<Option<Daemon>> = (0..2)
        .map(|i| Some(start_logged(&cl.dirs[i], cl.ports[i], &logs[i])))
        .collect();
    let at: Vec<SocketAddr> = nodes.iter().map(|n| n.as_ref().unwrap().addr).collect();
    let store = cmtp_store::AnyStore::open(cmtp_store::StoreConfig::Postgres(
        cmtp_store::PostgresConfig::new(cl.url.clone()),
    ))
    .await
    .unwrap();
    let key = {
        let mut c = Connection::connect(at[0], T).await.unwrap();
        let g = c.ohai().await.unwrap();
        c.close().await;
        g.key
    };
    let holder = || -> usize {
        match cl
            ._pg
            .psql("SELECT node FROM kt_publisher")
            .unwrap()
            .as_str()
        {
            "n1" => 0,
            "n2" => 1,
            other => panic!("the publisher's lease is held by {other:?}"),
        }
    };
    let within = Duration::from_secs(EPOCH_SECS * 3 + 10);

    // alice and bob (added before the start) are published in the first epoch.
    let first = next_head(&store, 0, within).await;
    let mut epoch = first.head.epoch;

    // Key changes through node 2, then node 1: each published in one
    // epoch, and proven for that epoch's head by both nodes as soon as the
    // head is in the database (a client may ask either node next).
    for (user, through) in [("carol", 1), ("dave", 0)] {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = tokio::spawn(watch_epochs(store.clone(), at.clone(), key, stop.clone()));
        let identity = register_at(at[through], &store, user).await;
        let head = next_head(&store, epoch, within).await;
        epoch = head.head.epoch;
        tokio::time::sleep(Duration::from_millis(EPOCH_SECS * 1000 / 2)).await;
        stop.store(true, Ordering::SeqCst);
        let (asked, older) = watcher.await.unwrap();
        assert!(asked > 10, "the watcher asked {asked} times");
        assert!(older.is_empty(), "{older:#?}");
        for (i, node) in at.iter().enumerate() {
            let (proven_head, k) = proven_key(*node, &key, user).await;
            assert_eq!(
                proven_head,
                head,
                "node {} proves {user}'s key for the newest head",
                i + 1
            );
            assert_eq!(k, identity.public());
            let (h, _) = proven_key(*node, &key, "alice").await;
            assert_eq!(h, head, "node {} proves alice's key for that head", i + 1);
        }
        cosigned_by(&store, &head, "b.test", &b_key, within).await;
    }
    // (a) One head per epoch, one chain; each epoch published by one node,
    // the lease holder.
    let heads = chained_heads(&store, &key).await;
    assert_eq!(heads.last().unwrap().head.epoch, epoch);
    let by: Vec<Vec<u64>> = logs.iter().map(|l| published_in(l)).collect();
    let publisher = holder();
    let mut all: Vec<u64> = by.concat();
    all.sort();
    assert_eq!(
        all,
        (1..=epoch).collect::<Vec<_>>(),
        "every epoch published once, by one node: {by:?}"
    );
    assert!(
        by[1 - publisher].is_empty(),
        "only the lease holder published: {by:?}"
    );

    // (c) The lease holder dies (SIGKILL): the other node takes over within
    // the lease, and the chain goes on from the same head.
    let survivor = 1 - publisher;
    let killed_at = Instant::now();
    nodes[publisher].take();
    let identity = register_at(at[survivor], &store, "erin").await;
    let head = next_head(
        &store,
        epoch,
        Duration::from_secs(PUBLISHER_LEASE_SECS + EPOCH_SECS * 3 + 10),
    )
    .await;
    let took = killed_at.elapsed();
    assert!(
        took <= Duration::from_secs(PUBLISHER_LEASE_SECS + EPOCH_SECS * 2 + 5),
        "the survivor took {took:?} to publish"
    );
    assert_eq!(head.head.epoch, epoch + 1);
    assert_eq!(holder(), survivor, "the survivor holds the lease");
    assert_eq!(published_in(&logs[survivor]), [epoch + 1]);
    let (proven_head, k) = proven_key(at[survivor], &key, "erin").await;
    assert_eq!(proven_head, head);
    assert_eq!(k, identity.public());
    let heads = chained_heads(&store, &key).await;
    assert_eq!(heads.len() as u64, epoch + 2);
    // b.test cosigned the survivor's head too, and found no contradiction.
    cosigned_by(&store, &head, "b.test", &b_key, within).await;
    let mut c = Connection::connect(b.addr, T).await.unwrap();
    c.ohai().await.unwrap();
    let r = c
        .command(
            &Cmd::KtEvidence {
                domain: cmtp_proto::names::Domain::parse("a.test").unwrap(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    c.close().await;
    assert_eq!(
        r.status,
        Status::Failure,
        "evidence against a.test: {}",
        r.text()
    );
    eprintln!(
        "epochs 1..={epoch} published by n{}; n{} took over {took:?} after the SIGKILL",
        publisher + 1,
        survivor + 1
    );
}
