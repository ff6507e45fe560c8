//! Key transparency end to end (PROTOCOL.md §20): real cmtpd servers for
//! a.test (the directory) and b.test (its witness), found through a real
//! in-process DNS server, and the real client (`cmtp_app`). Epochs are
//! published by calling the server's publisher directly, so that every
//! step is deterministic.
//!
//! Every test runs twice: with both servers on SQLite (`…::sqlite`) and
//! with both on PostgreSQL (`…::postgres`, one throwaway cluster per test,
//! a database per domain; skipped with a message where PostgreSQL is not
//! installed, a failure with `CMTP_REQUIRE_POSTGRES=1`).
//!
//! The attacker holds a.test's server: the tests edit its database and use
//! its key, as such an attacker could.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use cmtp_app::Error;
use cmtp_app::home::Home;
use cmtp_app::kt::{self, Transparency};
use cmtp_app::session::{Client, Options};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::kt::{Misbehaviour, MisbehaviourKind, ProvenKey, SignedHead};
use cmtp_proto::names::{Account, Address};
use cmtp_proto::statements::KeyStatement;
use cmtp_server::Server;
use cmtp_server::config::{Config, StoreBackend};
use cmtp_store::KtStore;
use cmtp_testkit::dns::TestDns;
use cmtp_testkit::postgres::{PgCluster, pg_or_skip};

/// Where the servers keep their data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Postgres,
}

/// Runs each named test body (an `async fn(Backend)`) on both backends, as
/// `name::sqlite` and `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(super::Backend::Sqlite).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await
            }
        }
    )*};
}

on_both_backends!(
    a_normal_key_change_shows_in_the_owners_history_and_verifies_after_the_next_epoch,
    after_an_epoch_the_proofs_asked_for_before_are_ready_and_verify,
    a_false_key_from_the_server_is_refused_and_its_publication_reported_to_the_owner,
    a_rollback_is_refused_and_a_forked_directory_is_proven_by_the_witness,
    a_head_with_a_broken_chain_is_refused_by_the_witness,
);

/// A domain's database, as the attacker holding its server edits it.
enum Db {
    /// The SQLite file in the data directory.
    Sqlite(PathBuf),
    /// A database of the test's PostgreSQL cluster.
    Postgres { pg: Arc<PgCluster>, name: String },
}

/// A connection to `url` whose driver runs in the background.
async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A parameter of [`Db::execute`].
enum Param<'a> {
    Bytes(&'a [u8]),
    Text(&'a str),
    Int(i64),
}

impl Db {
    /// The snapshot's name beside the database.
    fn snapshot_name(name: &str) -> String {
        format!("{name}_snapshot")
    }

    /// Runs `sqlite` (parameters `?1`, `?2`, ...) or `pg` (`$1`, `$2`, ...)
    /// on the database; the rows changed.
    async fn execute(&self, sqlite: &str, pg: &str, params: &[Param<'_>]) -> u64 {
        match self {
            Db::Sqlite(path) => {
                let c = rusqlite::Connection::open(path).unwrap();
                c.busy_timeout(std::time::Duration::from_secs(5)).unwrap();
                let params: Vec<&dyn rusqlite::ToSql> = params
                    .iter()
                    .map(|p| match p {
                        Param::Bytes(b) => b as &dyn rusqlite::ToSql,
                        Param::Text(t) => t as &dyn rusqlite::ToSql,
                        Param::Int(i) => i as &dyn rusqlite::ToSql,
                    })
                    .collect();
                c.execute(sqlite, params.as_slice()).unwrap() as u64
            }
            Db::Postgres { pg: cluster, name } => {
                let c = pg_connect(&cluster.url_for(name)).await;
                let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = params
                    .iter()
                    .map(|p| match p {
                        Param::Bytes(b) => b as &(dyn tokio_postgres::types::ToSql + Sync),
                        Param::Text(t) => t as &(dyn tokio_postgres::types::ToSql + Sync),
                        Param::Int(i) => i as &(dyn tokio_postgres::types::ToSql + Sync),
                    })
                    .collect();
                c.execute(pg, &params).await.unwrap()
            }
        }
    }

    /// Runs statements on the cluster's `postgres` database, after ending
    /// every other session on `name` (a stopped server's pool may linger).
    async fn pg_admin(cluster: &PgCluster, name: &str, statements: &[String]) {
        let c = pg_connect(&cluster.url_for("postgres")).await;
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = $1 AND pid <> pg_backend_pid()",
            &[&name],
        )
        .await
        .unwrap();
        for s in statements {
            c.batch_execute(s).await.unwrap();
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn now() -> u64 {
    cmtp_server::state::now()
}

struct Domain {
    name: &'static str,
    port: u16,
    db: Db,
    cfg: Config,
    server: Option<Server>,
    _dir: tempfile::TempDir,
}

impl Domain {
    async fn start(
        name: &'static str,
        dns: SocketAddr,
        pg: Option<&Arc<PgCluster>>,
        witnesses: &[&str],
        witness_for: &[&str],
    ) -> Domain {
        Self::start_with(name, dns, pg, witnesses, witness_for, |_| {}).await
    }

    /// `name`'s server, on SQLite or (given `pg`) on a database of its own
    /// in that cluster.
    async fn start_with(
        name: &'static str,
        dns: SocketAddr,
        pg: Option<&Arc<PgCluster>>,
        witnesses: &[&str],
        witness_for: &[&str],
        tweak: impl FnOnce(&mut Config),
    ) -> Domain {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut cfg = Config::new(name, dir.path());
        cfg.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        let k = KsfParams::INSECURE_TEST;
        cfg.accounts.ksf_min_memory_kib = k.m_cost_kib;
        cfg.accounts.ksf_min_passes = k.t_cost;
        cfg.accounts.ksf_min_lanes = k.p_cost;
        cfg.dns.nameservers = vec![dns];
        cfg.dns.timeout_ms = 500;
        cfg.dns.allow_private = ["a.test", "b.test"].map(String::from).to_vec();
        // Epochs come when the test publishes them: the publisher waits
        // epoch_secs after the newest head (epoch 0's is made at start).
        cfg.transparency.epoch_secs = 24 * 3600;
        cfg.transparency.witnesses = witnesses.iter().map(|s| s.to_string()).collect();
        cfg.transparency.witness_for = witness_for.iter().map(|s| s.to_string()).collect();
        let db = match pg {
            None => Db::Sqlite(dir.path().join("cmtp.db")),
            Some(pg) => {
                let db = name.replace('.', "_");
                cfg.store.backend = StoreBackend::Postgres;
                cfg.store.url = Some(pg.create_database(&db).unwrap());
                cfg.store.pool_size = 8;
                Db::Postgres {
                    pg: pg.clone(),
                    name: db,
                }
            }
        };
        tweak(&mut cfg);
        let server = Server::start(cfg.clone()).await.unwrap();
        if matches!(db, Db::Postgres { .. }) {
            assert!(
                !dir.path().join("cmtp.db").exists(),
                "a PostgreSQL server made a SQLite database"
            );
        }
        Domain {
            name,
            port,
            db,
            cfg,
            server: Some(server),
            _dir: dir,
        }
    }

    fn shared(&self) -> &std::sync::Arc<cmtp_server::state::Shared> {
        self.server.as_ref().unwrap().shared()
    }

    async fn restart(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
        self.server = Some(Server::start(self.cfg.clone()).await.unwrap());
    }

    async fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().await;
        }
    }

    /// Publishes the pending key changes as an epoch (and asks the witnesses).
    async fn publish(&self) -> Option<u64> {
        cmtp_server::kt::publish_epoch(self.shared(), now())
            .await
            .unwrap()
    }

    /// The attacker's edit: `account`'s key in the users table (and the
    /// statement issued for the old key).
    async fn write_key(&self, account: &str, key: &IdentityKey) {
        let n = self
            .db
            .execute(
                "UPDATE users SET identity_pk = ?1 WHERE account = ?2",
                "UPDATE users SET identity_pk = $1 WHERE account = $2",
                &[Param::Bytes(&key.public().to_bytes()), Param::Text(account)],
            )
            .await;
        assert_eq!(n, 1);
        // and the statement it had issued, so that a new one states the key
        self.db
            .execute(
                "DELETE FROM key_statements WHERE account = ?1",
                "DELETE FROM key_statements WHERE account = $1",
                &[Param::Text(account)],
            )
            .await;
    }

    /// The attacker's edit: the signed head kept for `epoch` replaced.
    async fn replace_head(&self, epoch: u64, head: &[u8]) {
        let n = self
            .db
            .execute(
                "UPDATE kt_heads SET head = ?1 WHERE epoch = ?2",
                "UPDATE kt_heads SET head = $1 WHERE epoch = $2",
                &[Param::Bytes(head), Param::Int(epoch as i64)],
            )
            .await;
        assert_eq!(n, 1);
    }

    /// The attacker keeps a consistent copy of the database as it is now
    /// (SQLite: `VACUUM INTO` while the server runs; PostgreSQL: a copy
    /// of the database, made while the server is stopped for a moment).
    async fn snapshot(&mut self) {
        match &self.db {
            Db::Sqlite(path) => {
                let copy = path.with_extension("snapshot");
                rusqlite::Connection::open(path)
                    .unwrap()
                    .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
                    .unwrap();
            }
            Db::Postgres { pg, name } => {
                let pg = pg.clone();
                let name = name.clone();
                self.stop().await;
                let copy = Db::snapshot_name(&name);
                Db::pg_admin(
                    &pg,
                    &name,
                    &[format!("CREATE DATABASE {copy} TEMPLATE {name}")],
                )
                .await;
                self.restart().await;
            }
        }
    }

    /// The attacker restores the copy [`Domain::snapshot`] kept and
    /// restarts the server on it.
    async fn restore_snapshot(&mut self) {
        self.stop().await;
        match &self.db {
            Db::Sqlite(path) => {
                let _ = std::fs::remove_file(path.with_extension("db-wal"));
                let _ = std::fs::remove_file(path.with_extension("db-shm"));
                let restored = path.with_extension("restored");
                std::fs::copy(path.with_extension("snapshot"), &restored).unwrap();
                std::fs::rename(&restored, path).unwrap();
            }
            Db::Postgres { pg, name } => {
                let copy = Db::snapshot_name(name);
                Db::pg_admin(
                    pg,
                    name,
                    &[
                        format!("DROP DATABASE {name} WITH (FORCE)"),
                        format!("CREATE DATABASE {name} TEMPLATE {copy}"),
                    ],
                )
                .await;
            }
        }
        self.restart().await;
    }
}

async fn zone(dns: &TestDns, domain: &str, port: u16) {
    dns.add_zone(domain).await.unwrap();
    dns.add_srv(
        &format!("_cmtp._tcp.{domain}"),
        10,
        10,
        port,
        &format!("mx.{domain}"),
    )
    .await
    .unwrap();
    dns.add_a(&format!("mx.{domain}"), Ipv4Addr::LOCALHOST)
        .await
        .unwrap();
}

struct Net {
    _dns: TestDns,
    a: Domain,
    b: Domain,
    homes: tempfile::TempDir,
    dns_addr: SocketAddr,
    /// The PostgreSQL cluster of both domains (dropped last).
    _pg: Option<Arc<PgCluster>>,
}

/// a.test keeps a directory witnessed by b.test; `None` when the backend is
/// PostgreSQL and it is not installed (the test is skipped, and says so).
async fn net(backend: Backend) -> Option<Net> {
    net_with(backend, |_| {}).await
}

/// [`net`] with a.test's configuration changed by `tweak`.
async fn net_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<Net> {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(Arc::new(pg_or_skip()?)),
    };
    let dns = TestDns::start().await.unwrap();
    let a = Domain::start_with("a.test", dns.addr(), pg.as_ref(), &["b.test"], &[], tweak).await;
    let b = Domain::start("b.test", dns.addr(), pg.as_ref(), &[], &["a.test"]).await;
    zone(&dns, "a.test", a.port).await;
    zone(&dns, "b.test", b.port).await;
    Some(Net {
        dns_addr: dns.addr(),
        _dns: dns,
        a,
        b,
        homes: tempfile::tempdir().unwrap(),
        _pg: pg,
    })
}

impl Net {
    /// A client home for `who@domain` registered on its server.
    async fn user(&self, who: &str, d: &Domain) -> Client {
        let home = self.homes.path().join(format!("{who}@{}", d.name));
        self.client_at(&home, d).await.register_as(who, d).await
    }

    async fn client_at(&self, home: &Path, d: &Domain) -> ClientBuilder {
        std::fs::create_dir_all(home).unwrap();
        std::fs::write(
            home.join("config.toml"),
            format!(
                "server = \"127.0.0.1:{}\"\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 500\n",
                d.port, self.dns_addr
            ),
        )
        .unwrap();
        let options = Options {
            min_ksf: Some(KsfParams::INSECURE_TEST),
            ..Options::default()
        };
        ClientBuilder(Client::open(Home::at(home.to_path_buf()), options).unwrap())
    }
}

struct ClientBuilder(Client);

impl ClientBuilder {
    async fn register_as(mut self, who: &str, d: &Domain) -> Client {
        let account = Account::parse(who).unwrap();
        let (token, _) = cmtp_server::admin::invite(&d.shared().store, &account, 3600)
            .await
            .unwrap();
        let address = Address::parse(&format!("{who}@{}", d.name)).unwrap();
        self.0
            .register(&address, &token, b"password")
            .await
            .unwrap();
        self.0
    }
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

/// `who`'s key as `client` gets it, and what the directory said.
async fn key_of(
    client: &Client,
    who: &Address,
) -> Result<(cmtp_proto::crypto::PublicKey, Transparency), Error> {
    let own = client.address()?;
    let mut s = client.connect(&own.domain).await?;
    let k = s.user_key(who, true).await;
    s.close().await;
    let k = k?;
    let record = kt::describe(client.home(), who).expect("a verdict is kept");
    assert_eq!(record.fingerprint, k.key.fingerprint_hex());
    Ok((k.key, record.transparency))
}

fn witnessed_by(t: &Transparency) -> Vec<String> {
    match t {
        Transparency::Proven { witnesses, .. } => witnesses.clone(),
        other => panic!("not proven: {other}"),
    }
}

async fn a_normal_key_change_shows_in_the_owners_history_and_verifies_after_the_next_epoch(
    backend: Backend,
) {
    let Some(n) = net(backend).await else {
        return;
    };
    let alice = n.user("alice", &n.a).await;
    let mut bob = n.user("bob", &n.a).await;
    let bob_addr = addr("bob@a.test");

    // Before the first epoch: a first-contact key without a proof is taken, and said so.
    let (k0, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert_eq!(t, Transparency::NoProof);

    let e1 = n.a.publish().await.expect("an epoch with the new accounts");
    let (k, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert_eq!(k, k0);
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e1),
        "{t}"
    );
    assert_eq!(witnessed_by(&t), ["b.test"], "b.test cosigned the head");

    // bob forgets his password: the administrator's reset, a new key.
    let token =
        cmtp_server::admin::reset_token(&n.a.shared().store, &Account::parse("bob").unwrap(), 3600)
            .await
            .unwrap()
            .0;
    bob.reset(&bob_addr, &token, b"new password").await.unwrap();
    // Until the next epoch the new key has no proof: alice, who saw the old
    // one proven, refuses it rather than take it on the server's word.
    match key_of(&alice, &bob_addr).await {
        Err(Error::Verification(text)) => {
            assert!(text.contains("not in a.test's key directory yet"), "{text}")
        }
        other => panic!("an unproven key change was accepted: {other:?}"),
    }
    let e2 = n.a.publish().await.expect("an epoch with bob's new key");
    assert!(e2 > e1);
    let (k2, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert_ne!(k2, k0);
    assert!(
        matches!(t, Transparency::Proven { epoch, since_epoch, .. } if epoch == e2 && since_epoch == e2),
        "{t}"
    );

    // bob's history: both keys, both his own (the old one is kept in his home).
    let mut s = bob.session().await.unwrap();
    let report = kt::self_check(&mut s, bob.home(), now())
        .await
        .unwrap()
        .unwrap();
    s.close().await;
    assert_eq!(report.epoch, Some(e2));
    assert_eq!(report.history.len(), 2, "{report:?}");
    assert_eq!(
        report.history[0].known_as.as_deref(),
        Some("this device's key")
    );
    assert!(
        report.history[1]
            .known_as
            .as_deref()
            .unwrap()
            .starts_with("an earlier key of yours")
    );
    assert!(report.alarms().is_empty(), "{:?}", report.alarms());
    assert_eq!(report.witnesses, ["b.test"]);
}

/// Waits up to 20 s for `f` to hold.
async fn eventually(what: &str, f: impl Fn() -> bool) {
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !f() {
        assert!(
            std::time::Instant::now() < until,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

async fn after_an_epoch_the_proofs_asked_for_before_are_ready_and_verify(backend: Backend) {
    // Only the proofs asked for are made ahead (not every account's).
    let Some(n) = net_with(backend, |c| c.transparency.precompute_all = 0).await else {
        return;
    };
    let alice = n.user("alice", &n.a).await;
    let _bob = n.user("bob", &n.a).await;
    let _carol = n.user("carol", &n.a).await;
    let bob_addr = addr("bob@a.test");
    let kt = &n.a.shared().kt;
    let computed = || kt.stats().computed.load(Ordering::Relaxed);
    let cached = || kt.stats().cached.load(Ordering::Relaxed);
    let done = || kt.stats().precomputations.load(Ordering::Relaxed);

    let bob = Account::parse("bob").unwrap();
    let e1 = n.a.publish().await.expect("an epoch with the new accounts");
    eventually("the precomputation after e1 (nothing asked before)", || {
        done() >= 1
    })
    .await;
    // In e1, alice asks for bob's key: its proof is made for the request.
    let before = computed();
    let (k1, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e1),
        "{t}"
    );
    assert_eq!(
        computed(),
        before + 1,
        "bob's proof was made for the request"
    );

    // The next epoch (dave is new): bob's proof is made ahead, carol's
    // (asked by nobody) is not.
    let runs = done();
    let _dave = n.user("dave", &n.a).await;
    let e2 = n.a.publish().await.expect("an epoch with dave");
    assert!(e2 > e1);
    eventually("the proofs made ahead after e2", || {
        done() > runs && kt.is_cached(&bob)
    })
    .await;
    assert_eq!(kt.cached().0, e2);
    assert!(!kt.is_cached(&Account::parse("carol").unwrap()));
    assert!(kt.stats().precomputed.load(Ordering::Relaxed) >= 1);

    // alice's first request in e2 is answered from the cache, with the new
    // head and b.test's cosignature of it; her client verifies all of it.
    let (before, hits) = (computed(), cached());
    let (k2, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert_eq!(k2, k1);
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e2),
        "{t}"
    );
    assert_eq!(
        witnessed_by(&t),
        ["b.test"],
        "the cached head has b.test's cosignature"
    );
    assert_eq!(computed(), before, "no proof was made for the request");
    assert!(cached() > hits);

    // Asked in e2 (from the cache), so made ahead again after e3; the
    // head cached before b.test cosigned it is read again once it has.
    let runs = done();
    let _erin = n.user("erin", &n.a).await;
    let e3 = cmtp_server::kt::publish_epoch_without_witnesses(n.a.shared(), now())
        .await
        .unwrap()
        .expect("an epoch with erin");
    eventually("the proofs made ahead after e3", || {
        done() > runs && kt.is_cached(&bob)
    })
    .await;
    assert_eq!(kt.cached().0, e3);
    let before = computed();
    let (_, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e3),
        "{t}"
    );
    assert!(witnessed_by(&t).is_empty(), "not cosigned yet");
    cmtp_server::kt::ask_witnesses(n.a.shared(), now()).await;
    let (_, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e3),
        "{t}"
    );
    assert_eq!(witnessed_by(&t), ["b.test"]);
    assert_eq!(computed(), before, "no proof was made for the requests");
}

async fn a_false_key_from_the_server_is_refused_and_its_publication_reported_to_the_owner(
    backend: Backend,
) {
    let Some(mut n) = net(backend).await else {
        return;
    };
    let alice = n.user("alice", &n.a).await;
    let bob = n.user("bob", &n.a).await;
    let bob_addr = addr("bob@a.test");
    n.a.publish().await.unwrap();
    let (real, t) = key_of(&alice, &bob_addr).await.unwrap();
    witnessed_by(&t);

    // 1. A server that pairs a statement of a false key with the directory's
    //    proof (the attacker signs with a.test's key): refused.
    let evil = IdentityKey::from_seed(&[0xee; 32]);
    let mut c =
        cmtp_client::Connection::connect(n.a.cfg.listen[0], std::time::Duration::from_secs(5))
            .await
            .unwrap();
    c.ohai().await.unwrap();
    let r = c
        .command(
            &cmtp_proto::command::Command::KeyProof {
                user: Account::parse("bob").unwrap(),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    c.close().await;
    let mut forged = ProvenKey::decode(&r.body).unwrap();
    assert!(forged.proof.is_some());
    let honest = KeyStatement::decode(&forged.statement).unwrap();
    assert_eq!(honest.key, real);
    forged.statement = KeyStatement::issue(
        &n.a.shared().key,
        Some(Account::parse("bob").unwrap()),
        honest.domain.clone(),
        evil.public(),
        honest.issued_at,
        honest.expires_at,
    )
    .to_bytes();
    let mut state = kt::State::load(alice.home().root()).unwrap();
    let refused = kt::check_answer(
        &mut state,
        &forged.to_bytes(),
        &bob_addr,
        &n.a.shared().key.public(),
        now(),
        |_, _| true,
    );
    match refused {
        Err(Error::Verification(text)) => assert!(
            text.contains("NOT the one its key directory holds"),
            "{text}"
        ),
        other => panic!("a statement contradicting the directory was accepted: {other:?}"),
    }

    // 2. The attacker writes a false key into the database: until an epoch
    //    publishes it, alice refuses the unproven change.
    n.a.write_key("bob", &evil).await;
    n.a.restart().await; // the attacker's server forgets what it had cached
    match key_of(&alice, &bob_addr).await {
        Err(Error::Verification(text)) => assert!(text.contains("changed"), "{text}"),
        other => panic!("a false key without a proof was accepted: {other:?}"),
    }

    // 3. The server publishes it: the directory is append-only, so the
    //    witness cosigns, and alice's client can only take the key — but
    //    bob's client reports it at his next login, which the server
    //    refuses (it holds the false key): the client then looks its own
    //    address up in the directory.
    assert!(kt::alarms(bob.home()).is_empty());
    n.a.publish().await.expect("the false key is published");
    let (k, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert_eq!(k, evil.public());
    witnessed_by(&t);
    match bob.session().await {
        Err(Error::DeviceKeyRefused { .. }) => {}
        other => panic!(
            "bob's device key was accepted for a false key: {:?}",
            other.map(|_| ())
        ),
    }
    let alarms = kt::alarms(bob.home());
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(
        alarms[0].contains("a key this device does not hold was published for bob@a.test"),
        "{}",
        alarms[0]
    );

    // 4. The attacker covers its tracks: bob's real key back in the
    //    database, published at the next epoch. bob's login works again,
    //    and the history it checks still holds the false key in between.
    n.a.write_key("bob", &bob.identity().unwrap()).await;
    n.a.shared().reload(n.a.cfg.clone()).unwrap(); // forgets cached statements
    let e =
        n.a.publish()
            .await
            .expect("the real key is published again");
    let mut s = bob.session().await.expect("bob's own key logs in again");
    let report = kt::self_check(&mut s, bob.home(), now())
        .await
        .unwrap()
        .unwrap();
    s.close().await;
    assert_eq!(report.epoch, Some(e));
    let versions: Vec<_> = report
        .history
        .iter()
        .map(|h| (h.version, h.known_as.is_some()))
        .collect();
    assert_eq!(versions, [(3, true), (2, false), (1, true)], "{report:?}");
    let alarms = kt::alarms(bob.home());
    assert_eq!(alarms.len(), 1, "{alarms:?}");
    assert!(
        alarms[0].contains("published for bob@a.test at epoch"),
        "{}",
        alarms[0]
    );
    n.b.stop().await;
    n.a.stop().await;
}

async fn a_rollback_is_refused_and_a_forked_directory_is_proven_by_the_witness(backend: Backend) {
    let Some(mut n) = net(backend).await else {
        return;
    };
    let alice = n.user("alice", &n.a).await;
    let _bob = n.user("bob", &n.a).await;
    let carol = n.user("carol", &n.b).await;
    let bob_addr = addr("bob@a.test");
    let e1 = n.a.publish().await.unwrap();

    // An answer of epoch e1, kept to be replayed later.
    let mut c =
        cmtp_client::Connection::connect(n.a.cfg.listen[0], std::time::Duration::from_secs(5))
            .await
            .unwrap();
    c.ohai().await.unwrap();
    let old_answer = c
        .command(
            &cmtp_proto::command::Command::KeyProof {
                user: Account::parse("bob").unwrap(),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap()
        .body;
    c.close().await;

    // The attacker keeps a copy of the database as of epoch e1 (a
    // consistent one: what the write-ahead log holds too).
    n.a.snapshot().await;

    let _dave = n.user("dave", &n.a).await;
    let e2 = n.a.publish().await.unwrap();
    assert_eq!(e2, e1 + 1);
    let (_, t) = key_of(&alice, &bob_addr).await.unwrap();
    assert!(
        matches!(t, Transparency::Proven { epoch, .. } if epoch == e2),
        "{t}"
    );

    // A rollback: the answer of epoch e1 replayed to alice, who saw e2.
    let mut state = kt::State::load(alice.home().root()).unwrap();
    match kt::check_answer(
        &mut state,
        &old_answer,
        &bob_addr,
        &n.a.shared().key.public(),
        now(),
        |_, _| true,
    ) {
        Err(Error::Verification(text)) => assert!(text.contains("rollback"), "{text}"),
        other => panic!("an older epoch was accepted: {other:?}"),
    }

    // A fork: the attacker restores the copy and publishes another epoch e2
    // (erin instead of dave) — a second head for one epoch.
    n.a.restore_snapshot().await;
    let _erin = n.user("erin", &n.a).await;
    assert_eq!(n.a.publish().await, Some(e2));
    let forked =
        SignedHead::decode(&n.a.shared().store.kt_head(e2).await.unwrap().unwrap()).unwrap();

    // The witness refused to cosign it and kept the proof.
    assert!(
        n.a.shared()
            .store
            .kt_cosignatures(e2)
            .await
            .unwrap()
            .is_empty()
    );
    let evidence =
        n.b.shared()
            .store
            .kt_evidence("a.test")
            .await
            .unwrap()
            .expect("the witness kept a proof");
    let m = Misbehaviour::decode(&evidence).unwrap();
    assert_eq!(m.kind, MisbehaviourKind::Fork);
    assert_eq!(m.b, forked);

    // carol (at b.test) gets the proof from her server and her client accepts it:
    // it checks under a.test's key, and a.test's keys are refused from then on.
    let mut s = carol.session().await.unwrap();
    let found = kt::fetch_evidence(
        &mut s,
        carol.home(),
        &cmtp_proto::names::Domain::parse("a.test").unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(
        found.map(|(d, e)| (d.to_string(), e)),
        Some(("a.test".into(), e2))
    );
    let refused = s.user_key(&bob_addr, true).await;
    s.close().await;
    match refused {
        Err(Error::Verification(text)) => assert!(text.contains("contradictory"), "{text}"),
        other => panic!("keys of a domain proven to lie were accepted: {other:?}"),
    }
    // alice, who saw the first e2, notices the fork herself.
    match key_of(&alice, &bob_addr).await {
        Err(Error::Verification(text)) => assert!(text.contains("different directories"), "{text}"),
        other => panic!("a forked head was accepted: {other:?}"),
    }
}

async fn a_head_with_a_broken_chain_is_refused_by_the_witness(backend: Backend) {
    let Some(n) = net(backend).await else {
        return;
    };
    let _alice = n.user("alice", &n.a).await;
    let e1 = n.a.publish().await.unwrap();
    let _bob = n.user("bob", &n.a).await;
    // The attacker's server signs the next head over a history that is not
    // the one the witness cosigned: its `previous` is not H(head e1).
    let store = &n.a.shared().store;
    let e2 = n.a.publish().await.unwrap();
    assert!(
        n.a.shared().store.kt_cosignatures(e2).await.unwrap().len() == 1,
        "the honest head is cosigned"
    );
    let _carol = n.user("carol", &n.a).await;
    // Publish e3 honestly into the directory, then replace its head by one
    // whose chain link is broken before the witness sees it.
    cmtp_server::kt::publish_epoch_without_witnesses(n.a.shared(), now())
        .await
        .unwrap();
    let e3 = e2 + 1;
    let honest = SignedHead::decode(&store.kt_head(e3).await.unwrap().unwrap()).unwrap();
    let mut broken = honest.head.clone();
    broken.previous = [0x55; 32];
    let broken = SignedHead::sign(&n.a.shared().key, broken);
    n.a.replace_head(e3, &broken.to_bytes()).await;
    cmtp_server::kt::ask_witnesses(n.a.shared(), now()).await;
    assert!(
        store.kt_cosignatures(e3).await.unwrap().is_empty(),
        "a broken chain was cosigned"
    );
    let m = Misbehaviour::decode(
        &n.b.shared()
            .store
            .kt_evidence("a.test")
            .await
            .unwrap()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(m.kind, MisbehaviourKind::BrokenChain);
    assert_eq!((m.a.head.epoch, m.b.head.epoch), (e2, e3));
    m.verify(&n.a.shared().key.public()).unwrap();
    let _ = e1;
}
