//! Two and three domains on loopback, found through a real (in-process)
//! authoritative DNS server: relay, retries, bounces, domain signatures,
//! remote key requests, key pinning.

mod support;

use std::net::{Ipv4Addr, SocketAddr};

use cmtp_client::Connection;
use cmtp_proto::command::Command;
use cmtp_proto::content::open;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::{DeliveryFailure, FailureReason, decode_listing};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle, sign_trailer};
use cmtp_server::config::Config;
use cmtp_store::Store;
use cmtp_testkit::dns::{Blackhole, TestDns};
use support::{TestServer, eventually, free_port, sealed};

/// DNS for the test domains: `_cmtp._tcp.<d>` SRV → `mx.<d>` → 127.0.0.1.
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

fn federated(dns: SocketAddr, port: u16) -> impl FnOnce(&mut Config) {
    move |c: &mut Config| {
        c.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
        c.dns.nameservers = vec![dns];
        c.dns.timeout_ms = 500;
        c.relay.first_retry_secs = 1;
        c.relay.max_retry_secs = 1;
        c.relay.poll_ms = 100;
        c.relay.timeout_secs = 3;
        // The test domains live on loopback, which DNS may only name for
        // domains allowed explicitly.
        c.dns.allow_private = ["a.test", "b.test", "c.test"].map(String::from).to_vec();
    }
}

/// Asks `own` (alice's server) for `who`'s key statement and verifies it the
/// way a client does: against that domain's bundle, fetched through `own`.
async fn remote_statement(own: &mut Connection, who: &Address) -> KeyStatement {
    let r = own
        .command(
            &Command::KeyRequest {
                user: None,
                domain: Some(who.domain.clone()),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let now = cmtp_server::state::now();
    let key = ServerKeyBundle::decode(&r.body)
        .unwrap()
        .verify_self(&who.domain, now)
        .unwrap();
    let r = own
        .command(
            &Command::KeyRequest {
                user: Some(who.account.clone()),
                domain: Some(who.domain.clone()),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let st = KeyStatement::decode(&r.body).unwrap();
    st.verify(&key, Some(&who.account), &who.domain, now)
        .unwrap();
    st
}

/// Waits until the first queued message has been tried `n` times.
async fn attempts_at_least(s: &TestServer, n: u32) {
    eventually(&format!("{n} delivery attempts"), || async {
        s.shared()
            .store
            .list_queue()
            .await
            .unwrap()
            .first()
            .is_some_and(|e| e.attempts >= n)
    })
    .await;
}

async fn mailbox(s: &TestServer, user: &str) -> Vec<cmtp_store::MailboxEntry> {
    s.shared().store.list_mailbox(user).await.unwrap()
}

/// The single DELIVERYFAILURE notice in `user`'s mailbox, opened.
async fn the_notice(s: &TestServer, user: &str, key: &IdentityKey) -> String {
    let entries = mailbox(s, user).await;
    assert_eq!(entries.len(), 1, "exactly one notice");
    assert_eq!(entries[0].source, format!("@{}", s.domain));
    let mut c = s.login(user, key).await;
    let mut out = Vec::new();
    c.fetch_into(entries[0].id, 1 << 30, &mut out)
        .await
        .unwrap()
        .unwrap();
    let m = Message::decode(&out, Default::default()).unwrap();
    let o = open(&m, Some(key)).unwrap();
    o.verify_sender(&m, &s.shared().key.public()).unwrap();
    format!("{}\n{}", o.content.subject, o.content.text)
}

struct Net {
    dns: TestDns,
    a: TestServer,
    b: TestServer,
    alice: IdentityKey,
    bob: IdentityKey,
}

async fn two_domains() -> Net {
    let dns = TestDns::start().await.unwrap();
    let (pa, pb) = (free_port(), free_port());
    zone(&dns, "a.test", pa).await;
    zone(&dns, "b.test", pb).await;
    let a = TestServer::start_with("a.test", federated(dns.addr(), pa)).await;
    let b = TestServer::start_with("b.test", federated(dns.addr(), pb)).await;
    let alice = a.register("alice", "pw").await;
    let bob = b.register("bob", "pw").await;
    Net {
        dns,
        a,
        b,
        alice,
        bob,
    }
}

fn bob() -> Address {
    Address::parse("bob@b.test").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alice_at_a_sends_to_bob_at_b_through_her_own_server() {
    let n = two_domains().await;
    let mut c = n.a.login("alice", &n.alice).await;
    // Alice's client talks only to a.test: bob's key comes through it.
    let st = remote_statement(&mut c, &bob()).await;
    assert_eq!(st.key, n.bob.public());
    let m = sealed(
        &n.a.address("alice"),
        &n.alice,
        &bob(),
        &n.bob,
        "hello from a",
    );
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    eventually("bob's mailbox", || async {
        mailbox(&n.b, "bob").await.len() == 1
    })
    .await;
    let mut bc = n.b.login("bob", &n.bob).await;
    let list = decode_listing(&bc.command(&Command::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list[0].source_domain.as_str(), "a.test");
    let mut out = Vec::new();
    bc.fetch_into(list[0].id, 1 << 30, &mut out)
        .await
        .unwrap()
        .unwrap();
    let stored = Message::decode(&out, Default::default()).unwrap();
    assert_eq!(stored.hash(), m.hash());
    let log = String::from_utf8(stored.log.clone()).unwrap();
    assert_eq!(log.lines().count(), 2, "one line per hop: {log}");
    assert!(
        log.lines()
            .nth(1)
            .unwrap()
            .contains("b.test accepted from 127.0.0.1 for bob@b.test")
    );
    let o = open(&stored, Some(&n.bob)).unwrap();
    assert_eq!(o.content.text, "hello from a");
    // Verified against alice's statement fetched through bob's own server.
    let alice_st = remote_statement(&mut bc, &n.a.address("alice")).await;
    o.verify_sender(&stored, &alice_st.key).unwrap();
    // The queue at a.test is empty again; b.test pinned a.test's key.
    eventually("a.test's queue to drain", || async {
        n.a.shared().store.list_queue().await.unwrap().is_empty()
    })
    .await;
    let pin = n.b.shared().store.pin("a.test").await.unwrap().unwrap();
    assert_eq!(pin.key, n.a.shared().key.public().to_bytes());
    // Remote statements are cached at a.test until they expire.
    assert!(
        n.a.shared()
            .store
            .cached_statement("bob", "b.test", cmtp_server::state::now())
            .await
            .unwrap()
            .is_some()
    );
    let _ = &n.dns;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_waits_in_the_queue_until_the_destination_comes_up() {
    let dns = TestDns::start().await.unwrap();
    let (pa, pb) = (free_port(), free_port());
    zone(&dns, "a.test", pa).await;
    zone(&dns, "b.test", pb).await;
    let a = TestServer::start_with("a.test", federated(dns.addr(), pa)).await;
    let alice = a.register("alice", "pw").await;
    // bob's key is known out of band for this test (b.test is down).
    let bob_key = IdentityKey::generate(&mut rand_core::OsRng);
    let m = sealed(
        &a.address("alice"),
        &alice,
        &bob(),
        &bob_key,
        "while you were down",
    );
    let mut c = a.login("alice", &alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    attempts_at_least(&a, 1).await;
    let queued = cmtp_server::admin::queue(&a.shared().store).await.unwrap();
    assert_eq!(queued.len(), 1);
    assert!(
        queued[0]
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("b.test"),
        "{:?}",
        queued[0].last_error
    );
    // b.test comes up, bob registers with the same key the message was sealed to.
    let b = TestServer::start_with("b.test", federated(dns.addr(), pb)).await;
    b.register_with_key("bob", "pw", &bob_key).await;
    cmtp_server::admin::queue_retry(&a.shared().store)
        .await
        .unwrap();
    eventually("delivery after b.test came up", || async {
        mailbox(&b, "bob").await.len() == 1
    })
    .await;
    assert!(
        mailbox(&a, "alice").await.is_empty(),
        "no notice for a delivered message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_destination_that_never_comes_up_bounces_once_after_the_lifetime() {
    let dns = TestDns::start().await.unwrap();
    let (pa, pb) = (free_port(), free_port());
    zone(&dns, "a.test", pa).await;
    zone(&dns, "b.test", pb).await;
    let a = TestServer::start_with("a.test", |c| {
        federated(dns.addr(), pa)(c);
        c.relay.lifetime_secs = 3;
    })
    .await;
    let alice = a.register("alice", "pw").await;
    let m = sealed(
        &a.address("alice"),
        &alice,
        &bob(),
        &IdentityKey::generate(&mut rand_core::OsRng),
        "lost",
    );
    let mut c = a.login("alice", &alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("the notice", || async {
        !mailbox(&a, "alice").await.is_empty()
    })
    .await;
    // Notices come only from queue entries: once the queue is empty, the
    // one notice is all there will be.
    eventually("the queue to drain", || async {
        a.shared().store.list_queue().await.unwrap().is_empty()
    })
    .await;
    let text = the_notice(&a, "alice", &alice).await;
    assert!(text.starts_with("Undeliverable: bob@b.test"), "{text}");
    assert!(text.contains("Reason: EXPIRED"), "{text}");
    assert!(
        text.contains(&format!("Original-Hash: {}", hex_of(&m.hash()))),
        "{text}"
    );
}

fn hex_of(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_user_at_the_destination_bounces_at_once() {
    let n = two_domains().await;
    let nobody = Address::parse("nobody@b.test").unwrap();
    let m = sealed(
        &n.a.address("alice"),
        &n.alice,
        &nobody,
        &n.bob,
        "to nobody",
    );
    let mut c = n.a.login("alice", &n.alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("the notice", || async {
        !mailbox(&n.a, "alice").await.is_empty()
    })
    .await;
    let text = the_notice(&n.a, "alice", &n.alice).await;
    assert!(text.contains("Reason: NOSUCHUSER"), "{text}");
    assert!(text.contains("Attempts: 1"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_message_claiming_alice_sent_straight_to_b_is_refused() {
    let n = two_domains().await;
    let mut m = sealed(&n.a.address("alice"), &n.alice, &bob(), &n.bob, "forged");
    let mut direct = n.b.connect().await;
    // No trailer at all.
    let r = direct.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::DeliveryFailure);
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::BadSignature)
    );
    // A trailer signed by some other key, within a minute of the check of
    // a.test's key that the first forgery prompted: b.test cannot tell it
    // from a key a.test rotated since, so it is refused for now, not bounced.
    m.trailer = sign_trailer(&IdentityKey::generate(&mut rand_core::OsRng), &m.hash());
    let r = direct.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    // A notice that claims to come from a.test's server, unsigned.
    m.source = Source::server(Domain::parse("a.test").unwrap());
    let r = direct.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    assert!(mailbox(&n.b, "bob").await.is_empty());
    // While a correctly signed copy is accepted.
    m.source = Source::user(n.a.address("alice"));
    m.trailer = sign_trailer(&n.a.shared().key, &m.hash());
    assert_eq!(
        direct.mail(&m.to_bytes()).await.unwrap().status,
        Status::Success
    );
}

/// Issue 10, contradiction 1: a domain that rotates its key as §9.4/§9.5
/// say must not get its mail bounced because a forgery made the receiver
/// check its key a moment before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mail_signed_by_a_just_rotated_key_is_retried_not_bounced() {
    let dns = TestDns::start().await.unwrap();
    let (pa, pb) = (free_port(), free_port());
    zone(&dns, "a.test", pa).await;
    zone(&dns, "b.test", pb).await;
    let refresh = |c: &mut Config| c.dns.key_refresh_secs = Some(4);
    let mut a = TestServer::start_with("a.test", |c| {
        federated(dns.addr(), pa)(c);
        refresh(c);
    })
    .await;
    let b = TestServer::start_with("b.test", |c| {
        federated(dns.addr(), pb)(c);
        refresh(c);
    })
    .await;
    let alice = a.register("alice", "pw").await;
    let bob_key = b.register("bob", "pw").await;
    // b.test pins a.test's first key with a first message.
    let mut direct = b.connect().await;
    let mut m = sealed(&a.address("alice"), &alice, &bob(), &bob_key, "first");
    m.trailer = sign_trailer(&a.shared().key, &m.hash());
    assert_eq!(
        direct.mail(&m.to_bytes()).await.unwrap().status,
        Status::Success
    );
    // A stranger's forgery makes b.test check a.test's key now.
    let mut forged = sealed(&a.address("alice"), &alice, &bob(), &bob_key, "forged");
    forged.trailer = sign_trailer(
        &IdentityKey::generate(&mut rand_core::OsRng),
        &forged.hash(),
    );
    let r = direct.mail(&forged.to_bytes()).await.unwrap();
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::BadSignature)
    );
    // a.test rotates its key, publishing the rotation statement.
    cmtp_server::keyfile::rotate(
        &a.cfg.key_path(),
        &Domain::parse("a.test").unwrap(),
        cmtp_server::state::now(),
    )
    .unwrap();
    a.restart().await;
    // Mail under the new key within the minute: not a permanent refusal.
    let mut fresh = sealed(&a.address("alice"), &alice, &bob(), &bob_key, "rotated");
    fresh.trailer = sign_trailer(&a.shared().key, &fresh.hash());
    let r = direct.mail(&fresh.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    // Through a.test's relay queue it is retried and delivered, never bounced.
    let relayed = sealed(&a.address("alice"), &alice, &bob(), &bob_key, "relayed");
    let mut c = a.login("alice", &alice).await;
    assert_eq!(
        c.mail(&relayed.to_bytes()).await.unwrap().status,
        Status::Success
    );
    eventually("delivery under the rotated key", || async {
        mailbox(&b, "bob").await.len() == 2
    })
    .await;
    assert!(mailbox(&a, "alice").await.is_empty(), "no bounce");
}

/// Issue 10, contradiction 4: a source key that cannot be checked (it
/// contradicts its _cmtpkey record) is a temporary failure (§7.4 step 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_key_that_contradicts_its_dns_record_is_a_temporary_failure() {
    let n = two_domains().await;
    n.dns
        .add_txt(
            "_cmtpkey.a.test",
            &format!("v=cmtp1; k=ed25519; fp={}", "00".repeat(32)),
        )
        .await
        .unwrap();
    let mut m = sealed(&n.a.address("alice"), &n.alice, &bob(), &n.bob, "check me");
    m.trailer = sign_trailer(&n.a.shared().key, &m.hash());
    let mut direct = n.b.connect().await;
    let r = direct.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    assert!(r.text().contains("_cmtpkey"), "{}", r.text());
    assert!(mailbox(&n.b, "bob").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_destination_key_without_rotation_is_refused_and_explained() {
    let mut n = two_domains().await;
    let mut c = n.a.login("alice", &n.alice).await;
    // First contact pins b.test's key.
    remote_statement(&mut c, &bob()).await;
    // b.test is replaced by a server with another key on the same address.
    let port = n.b.addr.port();
    n.b.stop().await;
    let b2 = TestServer::start_with("b.test", federated(n.dns.addr(), port)).await;
    b2.register_with_key("bob", "pw", &n.bob).await;
    let m = sealed(
        &n.a.address("alice"),
        &n.alice,
        &bob(),
        &n.bob,
        "to an impostor?",
    );
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("the notice", || async {
        !mailbox(&n.a, "alice").await.is_empty()
    })
    .await;
    let text = the_notice(&n.a, "alice", &n.alice).await;
    assert!(text.contains("Reason: KEYCHANGED"), "{text}");
    assert!(text.contains("without a rotation statement"), "{text}");
    assert!(mailbox(&b2, "bob").await.is_empty());
    // A KEYREQUEST through a.test is refused as well.
    let r = c
        .command(
            &Command::KeyRequest {
                user: None,
                domain: Some(Domain::parse("b.test").unwrap()),
            },
            1 << 20,
        )
        .await
        .unwrap();
    // §6.3: a key that does not verify is not "no such key".
    assert_eq!(r.status, Status::KeyUnverified);
    assert!(r.text().contains("changed"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_destination_key_is_accepted_through_its_rotation_statement() {
    let mut n = two_domains().await;
    let mut c = n.a.login("alice", &n.alice).await;
    remote_statement(&mut c, &bob()).await; // pins b.test's first key
    let old = n.b.shared().key.public();
    let (was, new) = cmtp_server::keyfile::rotate(
        &n.b.cfg.key_path(),
        &Domain::parse("b.test").unwrap(),
        cmtp_server::state::now(),
    )
    .unwrap();
    assert_eq!(was, old);
    n.b.restart().await;
    assert_eq!(n.b.shared().key.public(), new);
    // bob's statement is re-issued under the new key and verifies through a.test.
    let st = remote_statement(&mut c, &bob()).await;
    assert_eq!(st.key, n.bob.public());
    let m = sealed(
        &n.a.address("alice"),
        &n.alice,
        &bob(),
        &n.bob,
        "after rotation",
    );
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("delivery under the rotated key", || async {
        mailbox(&n.b, "bob").await.len() == 1
    })
    .await;
    assert!(mailbox(&n.a, "alice").await.is_empty(), "no bounce");
    assert_eq!(
        n.a.shared().store.pin("b.test").await.unwrap().unwrap().key,
        new.to_bytes()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_published_key_fingerprint_is_checked_on_first_contact() {
    let n = two_domains().await;
    // b.test publishes a fingerprint that is not its key: a.test refuses it.
    n.dns
        .add_txt(
            "_cmtpkey.b.test",
            &format!("v=cmtp1; k=ed25519; fp={}", "00".repeat(32)),
        )
        .await
        .unwrap();
    let mut c = n.a.login("alice", &n.alice).await;
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
    assert_eq!(r.status, Status::KeyUnverified, "{}", r.text());
    assert!(r.text().contains("_cmtpkey"), "{}", r.text());
    assert!(
        n.a.shared().store.pin("b.test").await.unwrap().is_none(),
        "nothing pinned"
    );
    // With the right fingerprint published too (a rotation in progress), it is accepted.
    n.dns
        .add_txt(
            "_cmtpkey.b.test",
            &format!(
                "v=cmtp1; k=ed25519; fp={}",
                n.b.shared().key.public().fingerprint_hex()
            ),
        )
        .await
        .unwrap();
    let st = remote_statement(&mut c, &bob()).await;
    assert_eq!(st.key, n.bob.public());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nxdomain_bounces_and_a_dns_timeout_retries() {
    let dns = TestDns::start().await.unwrap();
    let pa = free_port();
    zone(&dns, "a.test", pa).await;
    let a = TestServer::start_with("a.test", federated(dns.addr(), pa)).await;
    let alice = a.register("alice", "pw").await;
    // A name inside a served zone that does not exist: NXDOMAIN.
    let ghost = Address::parse("someone@ghost.a.test").unwrap();
    let m = sealed(&a.address("alice"), &alice, &ghost, &alice, "into the void");
    let mut c = a.login("alice", &alice).await;
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    eventually("the notice", || async {
        !mailbox(&a, "alice").await.is_empty()
    })
    .await;
    let text = the_notice(&a, "alice", &alice).await;
    assert!(text.contains("Reason: NODESTINATION"), "{text}");
    assert!(text.contains("NXDOMAIN"), "{text}");

    // A nameserver that never answers: the message stays queued and is retried.
    let hole = Blackhole::start().await.unwrap();
    let pc = free_port();
    let cfg = federated(hole.addr(), pc);
    let c2 = TestServer::start_with("c.test", |c| {
        cfg(c);
        c.dns.timeout_ms = 200;
    })
    .await;
    let carol = c2.register("carol", "pw").await;
    let m = sealed(&c2.address("carol"), &carol, &bob(), &carol, "slow dns");
    let mut cc = c2.login("carol", &carol).await;
    assert_eq!(
        cc.mail(&m.to_bytes()).await.unwrap().status,
        Status::Success
    );
    attempts_at_least(&c2, 2).await;
    assert!(
        mailbox(&c2, "carol").await.is_empty(),
        "a DNS timeout must not bounce"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_needs_a_login_as_the_source() {
    let n = two_domains().await;
    let m = sealed(
        &n.a.address("alice"),
        &n.alice,
        &bob(),
        &n.bob,
        "open relay?",
    );
    let mut anon = n.a.connect().await;
    let r = anon.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::NoRelay)
    );
    // Even with a valid trailer signed by a.test itself, from outside.
    let mut signed = m.clone();
    signed.trailer = sign_trailer(&n.a.shared().key, &m.hash());
    let r = anon.mail(&signed.to_bytes()).await.unwrap();
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::NoRelay)
    );
    // b.test does not relay a.test's mail to a third domain either.
    let mut at_b = n.b.connect().await;
    let mut third = m.clone();
    third.destination = Address::parse("carol@c.test").unwrap();
    third.trailer = sign_trailer(&n.a.shared().key, &third.hash());
    let r = at_b.mail(&third.to_bytes()).await.unwrap();
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::NoRelay)
    );
    assert!(n.a.shared().store.list_queue().await.unwrap().is_empty());
    assert!(n.b.shared().store.list_queue().await.unwrap().is_empty());
}
