//! Several cmtpd nodes for one domain on one PostgreSQL database: any node
//! serves any command, a node killed with SIGKILL loses nothing that was
//! acknowledged, and a relay interrupted by a node's death is finished by
//! another node and delivered once.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use cmtp_client::discovery::{Discovery, DiscoveryConfig};
use cmtp_proto::account::key_login_signature;
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
