//! Strangers cannot exhaust the server (issue 12; PROTOCOL.md §12.3, §15):
//! staged bytes and their budgets, the disk reserve and the store's size
//! limit, connection slots per network, login lock-out and enumeration,
//! remote key requests, hostile remote servers, and a black-holed relay
//! destination. Real TCP, real SQLite, a real DNS server.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cmtp_client::Connection;
use cmtp_proto::account::{Login, Registration, open_release};
use cmtp_proto::banner::Banner;
use cmtp_proto::command::Command;
use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::message::Message;
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::{LoginChallenge, RegistrationOffer, XzibitRelease};
use cmtp_proto::reply::{Reply, Status};
use cmtp_proto::statements::sign_trailer;
use cmtp_server::config::Config;
use cmtp_store::{NewOutbound, Store};
use cmtp_testkit::dns::TestDns;
use support::{Raw, T, TestServer, eventually, free_port, route, sealed};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Staged blobs in `s`'s database: how many, and their bytes.
fn staged(s: &TestServer) -> (i64, i64) {
    let c = rusqlite::Connection::open_with_flags(
        s.cfg.sqlite_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(size), 0) FROM blobs WHERE staged_at IS NOT NULL",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .unwrap()
}

/// A message from `from` to `to` with an attachment of `size` bytes.
fn big(from: &Address, to: &Address, size: usize) -> Message {
    let key = IdentityKey::generate(&mut rand_core::OsRng);
    Content {
        text: "large".into(),
        attachments: vec![Attachment {
            name: "big.bin".into(),
            data: vec![0x42; size],
            ..Attachment::default()
        }],
        ..Content::default()
    }
    .seal(from, &key, to, &key.public(), &mut rand_core::OsRng)
    .unwrap()
}

/// Sends MAIL and `bytes` on a raw connection.
async fn raw_mail(r: &mut Raw, bytes: &[u8]) {
    r.send(&Command::Mail.to_bytes()).await;
    r.send_lossy(bytes).await;
}

/// `b.test` (the honest source domain strangers claim) and `a.test` routed
/// to it, with `tweak` for a.test.
async fn two(tweak: impl FnOnce(&mut Config)) -> (TestServer, TestServer) {
    let b = TestServer::start("b.test").await;
    let port = b.addr.port();
    let a = TestServer::start_with("a.test", |c| {
        route(c, "b.test", port);
        tweak(c);
    })
    .await;
    (a, b)
}

/// A message claiming bob@b.test for alice@a.test, signed by b.test's
/// server unless `forged`.
fn from_b(a: &TestServer, b: &TestServer, size: usize, forged: bool) -> Message {
    let mut m = big(&b.address("bob"), &a.address("alice"), size);
    m.trailer = if forged {
        [7; 64]
    } else {
        sign_trailer(&b.shared().key, &m.hash())
    };
    m
}

// ----- finding 1: staged bytes -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_abandoned_upload_leaves_no_staged_bytes() {
    let (a, b) = two(|_| {}).await;
    a.register("alice", "pw").await;
    // Refused at the end: the domain signature is forged.
    let m = from_b(&a, &b, 3 * MIB, true);
    let mut c = Connection::connect(a.addr, T).await.unwrap();
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::DeliveryFailure, "{}", r.text());
    eventually("the refused upload removed", || async { staged(&a).0 == 0 }).await;
    // Abandoned half-way: the sender hangs up.
    let bytes = m.to_bytes();
    let mut r = Raw::connect(a.addr).await;
    raw_mail(&mut r, &bytes[..2 * MIB]).await;
    eventually("the upload staged", || async { staged(&a).1 >= MIB as i64 }).await;
    drop(r);
    eventually("the abandoned upload removed", || async {
        staged(&a).0 == 0
    })
    .await;
    // A good message still goes through.
    let m = from_b(&a, &b, 2 * MIB, false);
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    assert_eq!(staged(&a).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_have_more_bytes_in_flight_than_its_staging_budget() {
    let (a, b) = two(|c| c.limits.staged_per_peer = Some(4 * MIB as u64)).await;
    a.register("alice", "pw").await;
    // An upload of 3 MiB in progress, half sent.
    let first = from_b(&a, &b, 3 * MIB, false).to_bytes();
    let mut slow = Raw::connect(a.addr).await;
    raw_mail(&mut slow, &first[..MIB + MIB / 2]).await;
    eventually("the upload staged", || async { staged(&a).1 >= MIB as i64 }).await;
    // 3 MiB more from the same peer would exceed 4 MiB: refused up front.
    let second = from_b(&a, &b, 3 * MIB, false).to_bytes();
    let mut c = Connection::connect(a.addr, T).await.unwrap();
    let r = c.mail(&second).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    assert!(r.text().contains("your network"), "{}", r.text());
    assert!(staged(&a).1 <= 4 * MIB as i64);
    // Another network is not affected.
    let mut other = Raw::connect_from(a.addr, ip("127.0.0.2")).await;
    raw_mail(&mut other, &second).await;
    assert_eq!(other.reply().await.status, Status::Success);
    // Once the first upload is dropped, the peer's budget is back.
    drop(slow);
    let third = from_b(&a, &b, 3 * MIB, false).to_bytes();
    eventually("the budget released", || async {
        let mut c = Connection::connect(a.addr, T).await.unwrap();
        c.mail(&third).await.unwrap().status == Status::Success
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_claiming_one_domain_share_its_staging_budget() {
    let (a, b) = two(|c| c.limits.staged_per_domain = Some(4 * MIB as u64)).await;
    a.register("alice", "pw").await;
    let first = from_b(&a, &b, 3 * MIB, false).to_bytes();
    let mut slow = Raw::connect_from(a.addr, ip("127.0.0.3")).await;
    raw_mail(&mut slow, &first[..MIB + MIB / 2]).await;
    eventually("the upload staged", || async { staged(&a).1 >= MIB as i64 }).await;
    // From elsewhere, but claiming b.test too.
    let second = from_b(&a, &b, 3 * MIB, false).to_bytes();
    let mut r = Raw::connect_from(a.addr, ip("127.0.0.4")).await;
    raw_mail(&mut r, &second).await;
    let reply = r.reply().await;
    assert_eq!(reply.status, Status::TempFailure, "{}", reply.text());
    assert!(reply.text().contains("b.test"), "{}", reply.text());
    drop(slow);
}

// ----- finding 2: the disk -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_refused_up_front_when_it_would_cross_the_free_space_reserve() {
    let fs = cmtp_testkit::tmpfs::Tmpfs::mount("64m", None)
        .unwrap_or_else(|why| panic!("{why}; CI runs as root, this test must run"));
    let data = fs.path().join("data");
    let mut s = TestServer::start_with("a.test", |c| {
        c.data_dir = data.clone();
        c.store.min_free = 40 * MIB as u64;
        c.store.ballast_size = 0;
    })
    .await;
    let alice = s.register("alice", "pw").await;
    let mut c = s.login("alice", &alice).await;
    // About 63 MiB are free: 30 MiB more would leave less than 40.
    let m = big(&s.address("alice"), &s.address("alice"), 30 * MIB);
    let bytes = m.to_bytes();
    // The refusal comes up front: only the first megabyte is sent, and the
    // reply is there.
    let mail = c.begin_mail().await.unwrap();
    c.send_bytes(&bytes[..MIB]).await.unwrap();
    let reply = c.finish_mail(mail).await.unwrap();
    assert_eq!(reply.status, Status::TempFailure, "{}", reply.text());
    assert!(reply.text().contains("disk space"), "{}", reply.text());
    assert_eq!(staged(&s).0, 0);
    // (the server would read and drop the rest of that message)
    drop(c);
    // A message that leaves the reserve intact is stored.
    let small = big(&s.address("alice"), &s.address("alice"), MIB);
    let mut c = s.login("alice", &alice).await;
    assert_eq!(
        c.mail(&small.to_bytes()).await.unwrap().status,
        Status::Success
    );
    drop(c);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_is_refused_when_the_store_would_exceed_its_maximum_size() {
    let s = TestServer::start_with("a.test", |c| c.store.max_size = Some(8 * MIB as u64)).await;
    let alice = s.register("alice", "pw").await;
    let mut c = s.login("alice", &alice).await;
    let m = big(&s.address("alice"), &s.address("alice"), 10 * MIB);
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    assert!(r.text().contains("store is full"), "{}", r.text());
    let small = big(&s.address("alice"), &s.address("alice"), 100_000);
    let mut c = s.login("alice", &alice).await;
    assert_eq!(
        c.mail(&small.to_bytes()).await.unwrap().status,
        Status::Success
    );
}

// ----- finding 3: connection slots -----

#[tokio::test]
async fn connections_are_counted_per_network_prefix() {
    let s = TestServer::start_with("a.test", |c| {
        c.connections.max_per_peer = 2;
        c.connections.ipv4_prefix = 24;
    })
    .await;
    let _a = Raw::connect_from(s.addr, ip("127.0.0.1")).await;
    let _b = Raw::connect_from(s.addr, ip("127.0.0.2")).await;
    let c = Raw::connect_from(s.addr, ip("127.0.0.3")).await;
    assert!(matches!(c.banner, Banner::Busy { .. }), "{:?}", c.banner);
    let d = Raw::connect_from(s.addr, ip("127.0.1.1")).await;
    assert!(matches!(d.banner, Banner::Ready { .. }), "{:?}", d.banner);
}

#[tokio::test]
async fn strangers_cannot_take_the_slots_reserved_for_logged_in_sessions() {
    let s = TestServer::start_with("a.test", |c| {
        c.connections.max = 4;
        c.connections.reserved_for_users = Some(2);
    })
    .await;
    let _a = Raw::connect_from(s.addr, ip("127.0.0.1")).await;
    let _b = Raw::connect_from(s.addr, ip("127.0.0.2")).await;
    let c = Raw::connect_from(s.addr, ip("127.0.0.3")).await;
    assert!(matches!(c.banner, Banner::Busy { .. }), "{:?}", c.banner);
    assert_eq!(s.shared().conns.open(), 2);
}

/// Many addresses each holding many idle connections cannot keep a new
/// address out: when every stranger's slot is taken, the newcomer gets the
/// oldest connection of the peer holding the most, which is closed.
#[tokio::test]
async fn a_new_address_gets_a_slot_from_the_peer_holding_the_most() {
    let s = TestServer::start_with("a.test", |c| {
        c.connections.max = 6;
        c.connections.reserved_for_users = Some(1);
    })
    .await;
    let mut heavy = Vec::new();
    for _ in 0..3 {
        heavy.push(Raw::connect_from(s.addr, ip("127.0.0.1")).await);
    }
    let mut light = Vec::new();
    for _ in 0..2 {
        light.push(Raw::connect_from(s.addr, ip("127.0.0.2")).await);
    }
    assert_eq!(s.shared().conns.strangers(), 5);
    let mut fresh = Raw::connect_from(s.addr, ip("127.0.0.3")).await;
    assert!(
        !matches!(fresh.banner, Banner::Busy { .. }),
        "{:?}",
        fresh.banner
    );
    // The heavy peer's oldest connection was closed; the others serve.
    assert!(heavy[0].is_closed().await);
    fresh.send(b"NOOP\0").await;
    assert_eq!(fresh.reply().await.status, Status::Success);
    light[0].send(b"NOOP\0").await;
    assert_eq!(light[0].reply().await.status, Status::Success);
    heavy[1].send(b"NOOP\0").await;
    assert_eq!(heavy[1].reply().await.status, Status::Success);
    assert_eq!(s.shared().conns.strangers(), 5);
    // No peer now holds two more than 127.0.0.3 does: it is refused.
    let again = Raw::connect_from(s.addr, ip("127.0.0.3")).await;
    assert!(
        matches!(again.banner, Banner::Busy { .. }),
        "{:?}",
        again.banner
    );
}

// ----- findings 5 and 6: login -----

/// Registers `user` with the Argon2id parameters `ksf`.
async fn register_with(s: &TestServer, user: &str, password: &str, ksf: KsfParams) {
    let account = Account::parse(user).unwrap();
    let (token, _) = cmtp_server::admin::invite(&s.shared().store, &account, 3600)
        .await
        .unwrap();
    let mut c = s.connect().await;
    let rng = &mut rand_core::OsRng;
    let (reg, request) = Registration::start(password.as_bytes(), rng).unwrap();
    let r = c
        .command(
            &Command::Register {
                user: account,
                invite: token,
                request: request.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    let offer = RegistrationOffer::decode(&r.body).unwrap();
    let identity = IdentityKey::generate(rng);
    let bundle = reg
        .finish(
            password.as_bytes(),
            &offer,
            &s.address(user),
            &identity,
            ksf,
            1,
            &c.channel_binding(),
            rng,
        )
        .unwrap();
    let r = c
        .command(
            &Command::RegFinish {
                bundle: bundle.to_bytes(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
}

/// A LOGIN for `user` on `r` that is never finished; the reply.
async fn open_login(r: &mut Raw, user: &str) -> Reply {
    let (_, ke1) = Login::start(b"a guess", &mut rand_core::OsRng).unwrap();
    let cmd = Command::Login {
        user: Account::parse(user).unwrap(),
        ke1: ke1.to_vec(),
    };
    r.send(&cmd.to_bytes()).await;
    r.reply().await
}

/// A password login; the LOGINFINISH reply.
async fn password_login(s: &TestServer, user: &str, password: &str) -> Reply {
    let mut c = s.connect().await;
    let rng = &mut rand_core::OsRng;
    let (login, ke1) = Login::start(password.as_bytes(), rng).unwrap();
    let r = c
        .command(
            &Command::Login {
                user: Account::parse(user).unwrap(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let challenge = LoginChallenge::decode(&r.body).unwrap();
    let proof = login
        .finish(
            password.as_bytes(),
            &challenge,
            &s.address(user),
            &KsfParams::INSECURE_TEST,
            &c.channel_binding(),
            rng,
        )
        .unwrap();
    let r = c
        .command(
            &Command::LoginFinish {
                ke3: proof.ke3.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    if r.status == Status::Success {
        let release = XzibitRelease::decode(&r.body).unwrap();
        open_release(
            &release,
            &s.shared().key.public(),
            &s.address(user),
            &proof.export_key,
            None,
        )
        .unwrap();
    }
    r
}

#[tokio::test]
async fn a_stranger_cannot_lock_a_user_out_of_password_login() {
    let s = TestServer::start("a.test").await;
    s.register("alice", "the right one").await;
    let mut stranger = Raw::connect_from(s.addr, ip("127.0.0.9")).await;
    let mut limited = 0;
    for _ in 0..12 {
        match open_login(&mut stranger, "alice").await.status {
            Status::Success => {}
            Status::RateLimited => limited += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(limited, 7, "the stranger's own network is limited after 5");
    let r = password_login(&s, "alice", "the right one").await;
    assert_eq!(
        r.status,
        Status::Success,
        "alice is not locked out: {}",
        r.text()
    );
}

/// A peer's key in `s`'s limits.
fn peer_of(s: &TestServer, addr: &str) -> cmtp_server::limiter::PeerKey {
    s.shared().peer_key(ip(addr))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_holding_its_share_of_stranger_logins_cannot_delay_another_peers_login() {
    use cmtp_server::fair::Turn;
    let s = TestServer::start_with("a.test", |c| {
        c.connections.stranger_logins = 2;
        c.connections.stranger_share_per_peer = 1;
    })
    .await;
    s.register("alice", "the right one").await;
    let pool = s.shared().stranger_logins.clone();
    // The spammer's network already has a login running (held here, as
    // if its OPAQUE step were slow).
    let held = pool.acquire(peer_of(&s, "127.0.0.9"), Turn::Normal).await;
    let mut spammer = Raw::connect_from(s.addr, ip("127.0.0.9")).await;
    let waiting = tokio::spawn(async move {
        let r = open_login(&mut spammer, "alice").await;
        (spammer, r)
    });
    eventually("the spammer's second LOGIN waits for its share", || async {
        pool.waiting() == 1
    })
    .await;
    // Alice, from another address, logs in all the same.
    let r = password_login(&s, "alice", "the right one").await;
    assert_eq!(r.status, Status::Success, "{}", r.text());
    assert_eq!(pool.waiting(), 1, "the spammer still waits");
    assert!(!waiting.is_finished());
    // Its turn comes once its running login ends.
    drop(held);
    let (_, r) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("served")
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_store_writes_waiting_do_not_hold_up_a_logged_in_users_mail() {
    use cmtp_server::fair::Turn;
    let (a, b) = two(|c| c.connections.stranger_store_writes = 1).await;
    let alice = a.register("alice", "pw").await;
    a.register("carol", "pw").await;
    let pool = a.shared().stranger_writes.clone();
    // Every place for strangers' writes is taken (as by a slow disk
    // under a flood of uploads).
    let held = pool.acquire(peer_of(&a, "127.0.0.9"), Turn::Normal).await;
    let upload = from_b(&a, &b, 2 * MIB, false).to_bytes();
    let mut stranger = Raw::connect(a.addr).await;
    // Sent from a task of its own: the server stops reading while the
    // chunk waits.
    let stranger = tokio::spawn(async move {
        raw_mail(&mut stranger, &upload).await;
        stranger.reply().await
    });
    eventually("the stranger's first chunk waits", || async {
        pool.waiting() == 1
    })
    .await;
    assert_eq!(staged(&a).0, 0, "nothing of the stranger's is written yet");
    // Alice's own 2 MiB message (staged in chunks too) is stored at once.
    let mut c = a.login("alice", &alice).await;
    let m = big(&a.address("alice"), &a.address("carol"), 2 * MIB);
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    assert_eq!(pool.waiting(), 1, "the stranger still waits");
    // Then the stranger's message goes through as well.
    drop(held);
    let r = tokio::time::timeout(Duration::from_secs(60), stranger)
        .await
        .expect("the stranger's MAIL answered")
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
}

#[tokio::test]
async fn the_login_challenge_of_an_unknown_account_looks_like_a_real_one() {
    let s = TestServer::start_with("a.test", |c| {
        c.accounts.login_failures_per_account = 1000;
        c.accounts.login_failures_per_address = 1000;
    })
    .await;
    // One account registered above the floor (256 KiB, 1 pass, 1 lane).
    let above = KsfParams {
        m_cost_kib: 512,
        t_cost: 2,
        p_cost: 1,
    };
    register_with(&s, "alice", "pw", above).await;
    let ksf_of = |user: &'static str| {
        let addr = s.addr;
        async move {
            let mut r = Raw::connect(addr).await;
            let reply = open_login(&mut r, user).await;
            assert_eq!(reply.status, Status::Success);
            LoginChallenge::decode(&reply.body).unwrap().ksf
        }
    };
    assert_eq!(ksf_of("alice").await, above);
    // Unknown names get what the accounts use, not the floor that would
    // tell them apart.
    for ghost in ["ghost", "nobody", "root", "postmaster"] {
        assert_eq!(ksf_of(ghost).await, above, "{ghost}");
    }
    // With two parameter sets in use, unknown names get either, always the
    // same for the same name.
    register_with(&s, "bob", "pw", KsfParams::INSECURE_TEST).await;
    let mut seen = std::collections::HashSet::new();
    for i in 0..24 {
        let name: &'static str = Box::leak(format!("ghost{i}").into_boxed_str());
        let k = ksf_of(name).await;
        assert_eq!(k, ksf_of(name).await);
        assert!(k == above || k == KsfParams::INSECURE_TEST, "{k:?}");
        seen.insert(k);
    }
    assert_eq!(seen.len(), 2);
}

// ----- finding 7: remote keys -----

async fn ask_bob(c: &mut Connection) -> Reply {
    let cmd = Command::KeyRequest {
        user: Some(Account::parse("bob").unwrap()),
        domain: Some(Domain::parse("b.test").unwrap()),
    };
    c.command(&cmd, 1 << 20).await.unwrap()
}

#[tokio::test]
async fn remote_key_requests_of_strangers_are_rate_limited_per_network() {
    let (a, b) = two(|c| {
        c.remote.keyrequests_per_minute = 1;
        c.remote.keyrequest_burst = 3;
    })
    .await;
    b.register("bob", "pw").await;
    let alice = a.register("alice", "pw").await;
    let mut stranger = a.connect().await;
    for _ in 0..3 {
        let r = ask_bob(&mut stranger).await;
        assert_eq!(r.status, Status::Success, "{}", r.text());
    }
    let r = ask_bob(&mut stranger).await;
    assert_eq!(r.status, Status::RateLimited, "{}", r.text());
    assert!(r.text().contains("try again in"), "{}", r.text());
    // The server's own users are not limited, nor keys of its own domain.
    let mut user = a.login("alice", &alice).await;
    for _ in 0..5 {
        assert_eq!(ask_bob(&mut user).await.status, Status::Success);
    }
    let own = Command::KeyRequest {
        user: Some(Account::parse("alice").unwrap()),
        domain: None,
    };
    assert_eq!(
        stranger.command(&own, 1 << 20).await.unwrap().status,
        Status::Success
    );
}

#[tokio::test]
async fn a_remote_statement_is_cached_no_longer_than_the_configured_cap() {
    let (a, b) = two(|c| c.remote.statement_max_secs = 120).await;
    b.register("bob", "pw").await;
    let mut c = a.connect().await;
    let r = c
        .command(
            &Command::KeyRequest {
                user: Some(Account::parse("bob").unwrap()),
                domain: Some(Domain::parse("b.test").unwrap()),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let now = cmtp_server::state::now();
    let store = &a.shared().store;
    assert!(
        store
            .cached_statement("bob", "b.test", now + 60)
            .await
            .unwrap()
            .is_some()
    );
    // b.test signed it for 30 days; a.test keeps it two minutes.
    assert!(
        store
            .cached_statement("bob", "b.test", now + 121)
            .await
            .unwrap()
            .is_none()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_record_pointing_at_loopback_is_not_dialled_unless_allowed() {
    let dns = TestDns::start().await.unwrap();
    let b = TestServer::start("b.test").await;
    dns.add_zone("b.test").await.unwrap();
    dns.add_srv("_cmtp._tcp.b.test", 10, 10, b.addr.port(), "mx.b.test")
        .await
        .unwrap();
    dns.add_a("mx.b.test", Ipv4Addr::LOCALHOST).await.unwrap();
    let ask = |s: SocketAddr| async move {
        let mut c = Connection::connect(s, T).await.unwrap();
        c.command(
            &Command::KeyRequest {
                user: None,
                domain: Some(Domain::parse("b.test").unwrap()),
            },
            1 << 20,
        )
        .await
        .unwrap()
    };
    let resolver = dns.addr();
    let a = TestServer::start_with("a.test", |c| {
        c.dns.nameservers = vec![resolver];
        c.dns.timeout_ms = 500;
    })
    .await;
    let r = ask(a.addr).await;
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    assert!(r.text().contains("non-public addresses"), "{}", r.text());
    assert!(
        a.shared().store.pin("b.test").await.unwrap().is_none(),
        "nothing was learnt from b.test"
    );
    let allowed = TestServer::start_with("a.test", |c| {
        c.dns.nameservers = vec![resolver];
        c.dns.timeout_ms = 500;
        c.dns.allow_private = vec!["b.test".into()];
    })
    .await;
    let r = ask(allowed.addr).await;
    assert_eq!(r.status, Status::Success, "{}", r.text());
}

// ----- finding 8: hostile remote servers -----

/// A TCP server that greets every connection with an endless line.
async fn endless_banner() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let junk = vec![b'X'; 4096];
                while s.write_all(&junk).await.is_ok() {}
            });
        }
    });
    (addr, task)
}

fn quick_relay(c: &mut Config) {
    c.relay.first_retry_secs = 1;
    c.relay.max_retry_secs = 1;
    c.relay.poll_ms = 100;
    c.relay.timeout_secs = 2;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_at_first_contact_is_retried_not_bounced() {
    let (garbage, _task) = endless_banner().await;
    let a = TestServer::start_with("a.test", |c| {
        quick_relay(c);
        route(c, "garbage.test", garbage.port());
    })
    .await;
    let alice = a.register("alice", "pw").await;
    let to = Address::parse("x@garbage.test").unwrap();
    let m = sealed(&a.address("alice"), &alice, &to, &alice, "hello?");
    let mut c = a.login("alice", &alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    let store = &a.shared().store;
    eventually("two attempts", || async {
        store
            .list_queue()
            .await
            .unwrap()
            .first()
            .is_some_and(|e| e.attempts >= 2)
    })
    .await;
    assert!(
        store.list_mailbox("alice").await.unwrap().is_empty(),
        "no bounce notice: the error may be temporary"
    );
    assert!(store.pin("garbage.test").await.unwrap().is_none());
}

// ----- finding 9: the relay -----

/// A TCP server that accepts and never says a word.
async fn black_hole() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_black_holed_domain_with_1000_queued_messages_does_not_delay_a_healthy_one() {
    let (hole, _task) = black_hole().await;
    let a_port = free_port();
    // b.test checks a.test's signature: it must find a.test too.
    let b = TestServer::start_with("b.test", |c| route(c, "a.test", a_port)).await;
    let b_port = b.addr.port();
    let a = TestServer::start_with("a.test", |c| {
        c.listen = vec![SocketAddr::from(([127, 0, 0, 1], a_port))];
        quick_relay(c);
        c.relay.timeout_secs = 30;
        route(c, "b.test", b_port);
        route(c, "hole.test", hole.port());
    })
    .await;
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    let store = &a.shared().store;
    let now = cmtp_server::state::now();
    // Queued at once (committed together), due before the healthy one.
    let mut queued = tokio::task::JoinSet::new();
    for i in 0..1000u32 {
        let mut hash = [0u8; 32];
        hash[..4].copy_from_slice(&i.to_be_bytes());
        let store = store.clone();
        queued.spawn(async move {
            store
                .enqueue(NewOutbound {
                    hash,
                    sender: "alice".into(),
                    destination: "x@hole.test".into(),
                    dest_domain: "hole.test".into(),
                    size: 4,
                    created_at: now - 10,
                    expires_at: now + 3600,
                    body: cmtp_store::MessageBody::Inline(bytes::Bytes::from_static(b"void")),
                })
                .await
                .unwrap()
        });
    }
    while let Some(r) = queued.join_next().await {
        r.unwrap();
    }
    assert_eq!(store.queue_stats(now).await.unwrap().total, 1000);
    let m = sealed(
        &a.address("alice"),
        &alice,
        &b.address("bob"),
        &bob,
        "through",
    );
    let sent = Instant::now();
    let mut c = a.login("alice", &alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("delivery to b.test", || async {
        !b.shared()
            .store
            .list_mailbox("bob")
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    let took = sent.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the healthy domain waited {took:?}"
    );
    // The black hole holds its own slots only.
    let leased = store
        .list_queue()
        .await
        .unwrap()
        .iter()
        .filter(|e| e.lease_owner.is_some() && e.lease_until.is_some_and(|t| t > now))
        .count();
    assert!(
        leased <= a.cfg.relay.per_destination,
        "{leased} leased for hole.test"
    );
}
