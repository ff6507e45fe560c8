//! cmtpd over real TCP: every command, every refusal, and a table of bad
//! input, each followed by a check that the server still serves.

mod support;

use cmtp_proto::banner::Banner;
use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::crypto::SignatureTag;
use cmtp_proto::message::{Message, Source, VERSION_SEALED};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::{DeliveryFailure, FailureReason, LoginChallenge, decode_listing};
use cmtp_proto::reply::{ReplyBinding, Status, body_hash};
use cmtp_proto::statements::{KeyStatement, Receipt, ReceiptBody, ServerKeyBundle};
use support::{Raw, TestServer, sealed};

fn put_u32(b: &mut Vec<u8>, v: u32) {
    b.extend_from_slice(&v.to_be_bytes());
}
fn put_u64(b: &mut Vec<u8>, v: u64) {
    b.extend_from_slice(&v.to_be_bytes());
}

/// The server still greets a new connection and answers NOOP.
async fn still_serves(s: &TestServer) {
    let mut r = Raw::connect(s.addr).await;
    assert!(matches!(r.banner, Banner::Ready { .. }));
    r.send(b"NOOP\0").await;
    assert_eq!(r.reply().await.status, Status::Success);
}

#[tokio::test]
async fn ohai_greets_with_the_domain_key_and_a_fresh_nonce_and_signs_it() {
    let s = TestServer::start("a.test").await;
    let mut c1 = s.connect().await; // ohai() verifies the signature under the expected key
    let mut c2 = s.connect().await;
    let (g1, g2) = (
        c1.greeting().unwrap().clone(),
        c2.greeting().unwrap().clone(),
    );
    assert_eq!(g1.domain.as_str(), "a.test");
    assert_eq!(g1.key, s.shared().key.public());
    assert_ne!(g1.nonce, g2.nonce);
    assert!(g1.extensions.contains(&"LOGIN-OPAQUE".to_string()));
    c1.command(&Command::Noop, 100).await.unwrap();
    c2.command(&Command::Noop, 100).await.unwrap();
}

#[tokio::test]
async fn a_reply_is_bound_to_its_request_and_position() {
    let s = TestServer::start("a.test").await;
    let mut r = Raw::connect(s.addr).await;
    r.send(b"OHAI\0NOOP\0HELP\0").await;
    let ohai = r.reply().await;
    let g = cmtp_proto::payload::Greeting::parse(&ohai.body).unwrap();
    let noop = r.reply().await;
    let help = r.reply().await;
    let check = |reply: &cmtp_proto::reply::Reply, seq, frame: &[u8]| {
        let b = ReplyBinding {
            nonce: g.nonce,
            seq,
            request: request_digest(frame),
        };
        g.key.verify(
            SignatureTag::Reply,
            &[&b.signed_data(&reply.header(), &body_hash(&reply.body))],
            &reply.signature,
        )
    };
    check(&noop, 1, b"NOOP\0").unwrap();
    check(&help, 2, b"HELP\0").unwrap();
    // The NOOP reply does not verify as the answer to HELP, nor at another position.
    assert!(check(&noop, 2, b"NOOP\0").is_err());
    assert!(check(&noop, 1, b"HELP\0").is_err());
}

#[tokio::test]
async fn seed_commands_need_no_ohai() {
    let s = TestServer::start("a.test").await;
    let mut r = Raw::connect(s.addr).await;
    r.send(b"NOOP\0KEYREQUEST\0\0\0HELP\0OBAI\0").await;
    assert_eq!(r.reply().await.status, Status::Success);
    let bundle = r.reply().await;
    assert_eq!(bundle.status, Status::Success);
    ServerKeyBundle::decode(&bundle.body)
        .unwrap()
        .verify_self(&Domain::parse("a.test").unwrap(), cmtp_server::state::now())
        .unwrap();
    let help = r.reply().await;
    for word in [
        "OHAI",
        "MAIL",
        "KEYREQUEST",
        "NOOP",
        "LOGIN",
        "HELP",
        "OBAI",
        "LIST",
        "FETCH",
        "DELETE",
    ] {
        assert!(help.text().contains(word), "HELP lacks {word}");
    }
    let bye = r.reply().await;
    assert_eq!(
        (bye.status.clone(), bye.text()),
        (Status::Success, "bye".to_string())
    );
    assert!(r.is_closed().await, "OBAI closes the connection");
}

#[tokio::test]
async fn keyrequest_answers_statements_and_refusals() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let now = cmtp_server::state::now();
    let server_key = s.shared().key.public();
    let mut c = s.connect().await;
    let a = Account::parse("alice").unwrap();
    let d = Domain::parse("a.test").unwrap();
    for domain in [None, Some(d.clone())] {
        let r = c
            .command(
                &Command::KeyRequest {
                    user: Some(a.clone()),
                    domain,
                },
                1 << 20,
            )
            .await
            .unwrap();
        assert_eq!(r.status, Status::Success);
        let st = KeyStatement::decode(&r.body).unwrap();
        st.verify(&server_key, Some(&a), &d, now).unwrap();
        assert_eq!(st.key, alice.public());
        // §9.2: valid for exactly 30 days from its issue time, which is
        // dated an hour back for clock skew (issue 10, contradiction 5).
        assert_eq!(st.expires_at - st.issued_at, 30 * 24 * 3600);
        assert!(st.issued_at <= now.saturating_sub(3600));
    }
    // The server's own statement too.
    let r = c
        .command(
            &Command::KeyRequest {
                user: None,
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    let bundle = cmtp_proto::statements::ServerKeyBundle::decode(&r.body).unwrap();
    assert_eq!(
        bundle.statement.expires_at - bundle.statement.issued_at,
        30 * 24 * 3600
    );
    let r = c
        .command(
            &Command::KeyRequest {
                user: Some(Account::parse("nobody").unwrap()),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::KeyNotAvailable);
    let mut raw = Raw::connect(s.addr).await;
    for bad in [
        &b"KEYREQUEST\0../etc\0\0"[..],
        b"KEYREQUEST\0a/b\0\0",
        b"KEYREQUEST\0alice\0a..test\0",
        b"KEYREQUEST\0al\xffce\0\0",
    ] {
        raw.send(bad).await;
        assert_eq!(raw.reply().await.status, Status::BadArgument, "{bad:?}");
    }
    raw.send(b"NOOP\0").await;
    assert_eq!(raw.reply().await.status, Status::Success);
}

#[tokio::test]
async fn a_submitted_message_is_signed_stored_and_fetched_whole() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let msg = sealed(
        &s.address("alice"),
        &alice,
        &s.address("bob"),
        &bob,
        "hello bob",
    );
    let mut c = s.login("alice", &alice).await;
    let r = c.mail(&msg.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    // The signed reply is the receipt, verifiable later on its own (§10.1).
    let receipt = Receipt::decode(&c.receipt(&r).unwrap().to_bytes()).unwrap();
    receipt
        .verify(&s.shared().key.public(), &msg.hash())
        .unwrap();
    assert!(receipt.verify(&s.shared().key.public(), &[0; 32]).is_err());

    let mut b = s.login("bob", &bob).await;
    let r = b.command(&Command::List, 1 << 20).await.unwrap();
    let list = decode_listing(&r.body).unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].hash, msg.hash());
    assert_eq!(list[0].source_account.as_ref().unwrap().as_str(), "alice");
    let mut out = Vec::new();
    let got = b
        .fetch_into(list[0].id, 1 << 30, &mut out)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got as usize, out.len());
    let stored = Message::decode(&out, Default::default()).unwrap();
    assert_eq!(stored.hash(), msg.hash());
    assert_eq!(stored.body, msg.body);
    assert_eq!(stored.attachments, msg.attachments);
    // Mail that stays in the domain carries no domain signature (§7.3).
    assert_eq!(stored.trailer, [0; 64]);
    let log = String::from_utf8(stored.log.clone()).unwrap();
    assert!(
        log.ends_with("a.test submitted by alice from 127.0.0.1\n"),
        "{log}"
    );
    let opened = cmtp_proto::content::open(&stored, Some(&bob)).unwrap();
    assert_eq!(opened.content.text, "hello bob");
    opened.verify_sender(&stored, &alice.public()).unwrap();
}

#[tokio::test]
async fn the_same_message_twice_is_stored_once() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let msg = sealed(&s.address("alice"), &alice, &s.address("bob"), &bob, "once");
    let mut c = s.login("alice", &alice).await;
    let r1 = c.mail(&msg.to_bytes()).await.unwrap();
    let r2 = c.mail(&msg.to_bytes()).await.unwrap();
    assert_eq!(
        (r1.status.clone(), r2.status.clone()),
        (Status::Success, Status::Success)
    );
    assert_eq!(ReceiptBody::decode(&r2.body).unwrap().hash, msg.hash());
    let mut b = s.login("bob", &bob).await;
    let list = decode_listing(&b.command(&Command::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 1);
}

fn delivery_failure(r: &cmtp_proto::reply::Reply) -> FailureReason {
    assert_eq!(r.status, Status::DeliveryFailure, "{}", r.text());
    DeliveryFailure::decode(&r.body).unwrap().reason.unwrap()
}

#[tokio::test]
async fn mail_refusals_come_early_and_keep_the_connection() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let nobody = Address::parse("nobody@a.test").unwrap();
    let foreign = Address::parse("carol@c.test").unwrap();

    // Unknown local user, from a logged-in sender.
    let mut c = s.login("alice", &alice).await;
    let r = c
        .mail(&sealed(&s.address("alice"), &alice, &nobody, &bob, "x").to_bytes())
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::NoSuchUser);
    c.command(&Command::Noop, 100).await.unwrap();

    // Another domain without a login: never an open relay.
    let mut anon = s.connect().await;
    let r = anon
        .mail(&sealed(&s.address("alice"), &alice, &foreign, &bob, "x").to_bytes())
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::NoRelay);
    // Logged in as bob, a message claiming alice as its source is not relayed either.
    let mut b = s.login("bob", &bob).await;
    let r = b
        .mail(&sealed(&s.address("alice"), &alice, &foreign, &bob, "x").to_bytes())
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::NoRelay);

    // Our own domain as the source, from outside: spoofed.
    let r = anon
        .mail(&sealed(&s.address("alice"), &alice, &s.address("bob"), &bob, "x").to_bytes())
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::Spoofed);
    let r = b
        .mail(&sealed(&s.address("alice"), &alice, &s.address("bob"), &bob, "x").to_bytes())
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::Spoofed);
    anon.command(&Command::Noop, 100).await.unwrap();
    still_serves(&s).await;
}

#[tokio::test]
async fn plaintext_is_refused_when_configured() {
    let s = TestServer::start_with("a.test", |c| c.limits.refuse_plaintext = true).await;
    let alice = s.register("alice", "pw").await;
    let _bob = s.register("bob", "pw").await;
    let m = cmtp_proto::content::Content {
        text: "plain".into(),
        ..Default::default()
    }
    .plaintext(&s.address("alice"), &s.address("bob"))
    .unwrap();
    let mut c = s.login("alice", &alice).await;
    assert_eq!(
        delivery_failure(&c.mail(&m.to_bytes()).await.unwrap()),
        FailureReason::Refused
    );
}

#[tokio::test]
async fn a_mail_loop_is_stopped_by_the_hop_limit() {
    let s = TestServer::start_with("a.test", |c| c.limits.max_hops = 3).await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let mut m = sealed(&s.address("alice"), &alice, &s.address("bob"), &bob, "x");
    m.log = b"1\n2\n3\n".to_vec();
    let mut c = s.login("alice", &alice).await;
    assert_eq!(
        delivery_failure(&c.mail(&m.to_bytes()).await.unwrap()),
        FailureReason::Loop
    );
    m.log = b"1\n2\n".to_vec();
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
}

fn head(version: u32, count: u32, log: u64, body: u64, names: &[u8]) -> Vec<u8> {
    let mut b = b"MAIL\0".to_vec();
    put_u32(&mut b, version);
    put_u32(&mut b, count);
    put_u64(&mut b, log);
    put_u64(&mut b, body);
    b.extend_from_slice(names);
    b
}

/// One row of the bad-input table: what is sent, the status expected, and
/// whether the server closes the connection afterwards.
struct Case {
    name: &'static str,
    input: Vec<u8>,
    status: Status,
    closes: bool,
}

#[tokio::test]
async fn the_bad_input_table() {
    let s = TestServer::start_with("a.test", |c| c.limits.max_message_size = 1 << 20).await;
    s.register("bob", "pw").await;
    let names = b"bob\0a.test\0x\0b.test\0";
    let mut long_arg = b"KEYREQUEST\0".to_vec();
    long_arg.extend(std::iter::repeat_n(b'a', 300));
    let mut over_arg = b"FETCH\0".to_vec();
    over_arg.extend(std::iter::repeat_n(b'1', 256));
    let mut blob_huge = b"LOGIN\0bob\0".to_vec();
    put_u32(&mut blob_huge, u32::MAX);
    let cases = vec![
        Case {
            name: "word of 17 bytes",
            input: b"ABCDEFGHIJKLMNOPQ".to_vec(),
            status: Status::TooLong,
            closes: true,
        },
        Case {
            name: "unterminated word",
            input: vec![b'X'; 40],
            status: Status::TooLong,
            closes: true,
        },
        Case {
            name: "argument of 300 bytes",
            input: long_arg,
            status: Status::TooLong,
            closes: true,
        },
        Case {
            name: "argument of 256 bytes without NUL",
            input: over_arg,
            status: Status::TooLong,
            closes: true,
        },
        Case {
            name: "blob length 2^32-1",
            input: blob_huge,
            status: Status::TooLong,
            closes: true,
        },
        Case {
            name: "unknown command",
            input: b"FROB\0".to_vec(),
            status: Status::BadCommand,
            closes: false,
        },
        Case {
            name: "lower-case command",
            input: b"noop\0".to_vec(),
            status: Status::BadCommand,
            closes: false,
        },
        Case {
            name: "invalid UTF-8 argument",
            input: b"KEYREQUEST\0\xc3\x28\0\0".to_vec(),
            status: Status::BadArgument,
            closes: false,
        },
        Case {
            name: "../ in a name",
            input: b"KEYREQUEST\0..\0\0".to_vec(),
            status: Status::BadArgument,
            closes: false,
        },
        Case {
            name: "/ in a name",
            input: b"KEYREQUEST\0a/b\0\0".to_vec(),
            status: Status::BadArgument,
            closes: false,
        },
        Case {
            name: "message id with a sign",
            input: b"FETCH\0-1\0".to_vec(),
            status: Status::BadArgument,
            closes: false,
        },
        Case {
            name: "wrong KE1 size",
            input: {
                let mut b = b"LOGIN\0bob\0".to_vec();
                put_u32(&mut b, 3);
                b.extend_from_slice(b"abc");
                b
            },
            status: Status::BadArgument,
            closes: false,
        },
        Case {
            name: "body length 2^64-1",
            input: head(1, 0, 0, u64::MAX, names),
            status: Status::TooBig,
            closes: true,
        },
        Case {
            name: "attachment count 2^32-1",
            input: head(1, u32::MAX, 0, 0, names),
            status: Status::TooBig,
            closes: true,
        },
        Case {
            name: "log over the limit",
            input: head(1, 0, 1 << 30, 0, names),
            status: Status::TooBig,
            closes: true,
        },
        Case {
            name: "message version 7",
            input: head(7, 0, 0, 0, names),
            status: Status::BadMessage,
            closes: true,
        },
        Case {
            name: "name field without NUL",
            input: {
                let mut b = head(1, 0, 0, 0, b"");
                b.extend(std::iter::repeat_n(b'a', 300));
                b
            },
            status: Status::BadMessage,
            closes: true,
        },
        Case {
            name: "../ as destination account",
            input: {
                let mut b = head(1, 0, 0, 0, b"..\0a.test\0x\0b.test\0");
                b.extend_from_slice(&[0; 64]);
                b
            },
            status: Status::BadMessage,
            closes: false,
        },
        Case {
            name: "/ in destination domain",
            input: {
                let mut b = head(1, 0, 0, 0, b"bob\0a/test\0x\0b.test\0");
                b.extend_from_slice(&[0; 64]);
                b
            },
            status: Status::BadMessage,
            closes: false,
        },
    ];
    for case in cases {
        let mut r = Raw::connect(s.addr).await;
        r.send_lossy(&case.input).await;
        let reply = r.reply().await;
        assert_eq!(reply.status, case.status, "{}: {}", case.name, reply.text());
        if case.closes {
            assert!(
                r.is_closed().await,
                "{}: connection should close",
                case.name
            );
        } else {
            r.send(b"NOOP\0").await;
            assert_eq!(
                r.reply().await.status,
                Status::Success,
                "{}: connection should stay usable",
                case.name
            );
        }
        still_serves(&s).await;
    }
}

#[tokio::test]
async fn a_truncated_message_loses_nothing_and_the_server_carries_on() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let m = sealed(&s.address("alice"), &alice, &s.address("bob"), &bob, "cut");
    {
        let mut c = s.login("alice", &alice).await;
        // Send MAIL and half the message, then drop the connection.
        let _mail = c.begin_mail().await.unwrap();
        let bytes = m.to_bytes();
        c.send_bytes(&bytes[..bytes.len() / 2]).await.unwrap();
        drop(c);
    }
    still_serves(&s).await;
    let mut b = s.login("bob", &bob).await;
    let list = decode_listing(&b.command(&Command::List, 1 << 20).await.unwrap().body).unwrap();
    assert!(list.is_empty(), "a truncated message must not be delivered");
}

#[tokio::test]
async fn a_command_glued_to_the_end_of_a_message_is_answered_too() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let m = sealed(
        &s.address("alice"),
        &alice,
        &s.address("bob"),
        &bob,
        "glued",
    );
    let mut c = s.login("alice", &alice).await;
    drop(c.command(&Command::Noop, 100).await.unwrap());
    // Raw: log in by key on a raw socket is long-winded; use an unknown-user
    // refusal, which also reads the whole message before the next command.
    let mut r = Raw::connect(s.addr).await;
    let mut wire = b"MAIL\0".to_vec();
    let mut to_nobody = m.clone();
    to_nobody.destination = Address::parse("nobody@a.test").unwrap();
    wire.extend_from_slice(&to_nobody.to_bytes());
    wire.extend_from_slice(b"NOOP\0");
    r.send(&wire).await;
    assert_eq!(
        delivery_failure(&r.reply().await),
        FailureReason::NoSuchUser
    );
    assert_eq!(r.reply().await.status, Status::Success, "the glued NOOP");
    // And a successful MAIL followed by a glued command in one write.
    let c2 = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(c2.status, Status::Success);
}

#[tokio::test]
async fn too_many_bad_commands_close_the_connection() {
    let s = TestServer::start_with("a.test", |c| c.connections.max_bad_commands = 3).await;
    let mut r = Raw::connect(s.addr).await;
    r.send(b"FOO\0BAR\0BAZ\0").await;
    // PROTOCOL.md §4.2: the third is answered too, then TOOMANYERRORS.
    assert_eq!(r.reply().await.status, Status::BadCommand);
    assert_eq!(r.reply().await.status, Status::BadCommand);
    assert_eq!(r.reply().await.status, Status::BadCommand);
    assert_eq!(r.reply().await.status, Status::TooManyErrors);
    assert!(r.is_closed().await);
    // A good command in between resets the count.
    let mut r = Raw::connect(s.addr).await;
    r.send(b"FOO\0BAR\0NOOP\0BAZ\0NOOP\0").await;
    for want in [
        Status::BadCommand,
        Status::BadCommand,
        Status::Success,
        Status::BadCommand,
        Status::Success,
    ] {
        assert_eq!(r.reply().await.status, want);
    }
}

/// The timeouts are the connection state machine's, tested rule by rule in
/// cmtp-proto; this shows the server drives them over TCP.
#[tokio::test]
async fn a_slow_drip_is_cut_off() {
    let s = TestServer::start_with("a.test", |c| {
        c.timeouts.command_secs = 1;
        c.timeouts.data_grace_secs = 1;
        c.timeouts.min_data_rate = 1 << 20;
    })
    .await;
    // A command that does not complete.
    let mut r = Raw::connect(s.addr).await;
    let started = std::time::Instant::now();
    r.send_lossy(b"KEYREQ").await;
    let reply = r.reply().await;
    assert_eq!(reply.status, Status::Timeout);
    assert!(r.is_closed().await);
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    // A message that does not complete after MAIL.
    let mut r = Raw::connect(s.addr).await;
    r.send(&head(1, 0, 0, 1000, b"bob\0a.test\0x\0b.test\0"))
        .await;
    r.send_lossy(b"x").await;
    let reply = r.reply().await;
    assert!(
        matches!(reply.status, Status::Timeout | Status::DeliveryFailure),
        "{:?}",
        reply.status
    );
    still_serves(&s).await;
}

#[tokio::test]
async fn connection_limits_answer_with_a_busy_banner() {
    let s = TestServer::start_with("a.test", |c| c.connections.max_per_peer = 2).await;
    let _a = Raw::connect(s.addr).await;
    let _b = Raw::connect(s.addr).await;
    let c = Raw::connect(s.addr).await;
    assert!(matches!(c.banner, Banner::Busy { .. }), "{:?}", c.banner);
    drop(_a);
    // The slot frees when the server has seen the close.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let d = Raw::connect(s.addr).await;
        if matches!(d.banner, Banner::Ready { .. }) {
            break;
        }
        assert!(std::time::Instant::now() < until, "the slot never freed");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn smtp_commands_get_an_smtp_refusal_and_a_close() {
    let s = TestServer::start("a.test").await;
    for (line, code) in [
        ("EHLO client.example\r\n", "554 "),
        ("HELO x\r\n", "554 "),
        ("QUIT\r\n", "221 "),
        ("MAIL FROM:<a@b>\r\n", "554 "),
        // A CMTP/1 client that speaks in clear.
        ("OHAI\0", "554 5.7.0 "),
    ] {
        let mut r = Raw::connect_clear(s.addr).await;
        r.send(line.as_bytes()).await;
        let reply = r.line().await;
        assert!(reply.starts_with(code), "{line:?} → {reply:?}");
        assert!(reply.ends_with("\r\n"));
        assert!(r.is_closed().await);
    }
}

#[tokio::test]
async fn mailbox_sync_pages_changes_flags_and_append_over_the_wire() {
    use cmtp_proto::payload::mailbox::{self, Change, ChangeSet, FlagsResult, Folder, ListingPage};
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let carol = s.register("carol", "pw").await;
    let mut a = s.login("alice", &alice).await;
    // Another user's mail first: carol's first message is still 1.
    let to_alice = sealed(
        &s.address("carol"),
        &carol,
        &s.address("alice"),
        &alice,
        "x",
    );
    let mut c = s.login("carol", &carol).await;
    assert_eq!(
        c.mail(&to_alice.to_bytes()).await.unwrap().status,
        Status::Success
    );
    for n in 0..5 {
        let m = sealed(
            &s.address("alice"),
            &alice,
            &s.address("carol"),
            &carol,
            &format!("message {n}"),
        );
        assert_eq!(a.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    }
    let page = |before, limit| Command::ListPage { before, limit };
    let r = c.command(&page(0, 3), 1 << 20).await.unwrap();
    let p = ListingPage::decode(&r.body).unwrap();
    assert_eq!(
        p.entries.iter().map(|e| e.uid).collect::<Vec<_>>(),
        [5, 4, 3]
    );
    assert_eq!(p.modseq, 5);
    assert!(
        p.entries
            .iter()
            .all(|e| e.folder == Folder::inbox() && e.flags == 0)
    );
    assert_eq!(
        p.entries[0].source_account.as_ref().unwrap().as_str(),
        "alice"
    );
    let r = c.command(&page(3, 3), 1 << 20).await.unwrap();
    let p2 = ListingPage::decode(&r.body).unwrap();
    assert_eq!(p2.entries.iter().map(|e| e.uid).collect::<Vec<_>>(), [2, 1]);
    assert_eq!(p2.epoch, p.epoch);

    // A second device marks 2 seen and deletes 4; the first learns exactly that.
    let mut c2 = s.login("carol", &carol).await;
    let r = c2
        .command(
            &Command::Flags {
                set: mailbox::SEEN,
                clear: 0,
                ids: vec![2, 99],
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(
        FlagsResult::decode(&r.body).unwrap(),
        FlagsResult {
            modseq: 6,
            changed: 1
        }
    );
    assert_eq!(
        c2.command(&Command::Delete { id: 4 }, 100)
            .await
            .unwrap()
            .status,
        Status::Success
    );
    let r = c
        .command(
            &Command::Changes {
                since: 5,
                limit: 100,
            },
            1 << 20,
        )
        .await
        .unwrap();
    let set = ChangeSet::decode(&r.body).unwrap();
    assert_eq!(set.modseq, 7);
    assert!(!set.more);
    match set.changes.as_slice() {
        [Change::Message(m), Change::Removed { uid: 4, modseq: 7 }] => {
            assert_eq!((m.uid, m.flags, m.modseq), (2, mailbox::SEEN, 6));
        }
        other => panic!("{other:?}"),
    }

    // APPEND files carol's own copy into Sent, once.
    let copy = sealed(
        &s.address("carol"),
        &carol,
        &s.address("alice"),
        &carol,
        "sent copy",
    );
    let append = Command::Append {
        folder: Folder::sent(),
        flags: mailbox::SEEN,
    };
    for _ in 0..2 {
        let r = c
            .command_with_message(&append, &copy.to_bytes(), |_| {})
            .await
            .unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
        // An APPEND receipt answers the APPEND command (§13.6).
        let receipt = c.receipt(&r).unwrap();
        receipt
            .verify_answering(
                &s.shared().key.public(),
                &copy.hash(),
                request_digest(&append.to_bytes()),
            )
            .unwrap();
        assert!(
            receipt
                .verify(&s.shared().key.public(), &copy.hash())
                .is_err()
        );
    }
    let r = c.command(&page(0, 1), 1 << 20).await.unwrap();
    let top = &ListingPage::decode(&r.body).unwrap().entries[0];
    assert_eq!(
        (top.uid, top.folder.as_str(), top.flags),
        (6, "Sent", mailbox::SEEN)
    );
    assert_eq!(top.hash, copy.hash());
    // alice received nothing from the APPEND.
    let r = a.command(&page(0, 10), 1 << 20).await.unwrap();
    assert_eq!(ListingPage::decode(&r.body).unwrap().entries.len(), 1);
    // Only one's own messages can be filed, and only logged in.
    let from_alice = sealed(
        &s.address("alice"),
        &alice,
        &s.address("carol"),
        &carol,
        "y",
    );
    let r = c
        .command_with_message(&append, &from_alice.to_bytes(), |_| {})
        .await
        .unwrap();
    assert_eq!(delivery_failure(&r), FailureReason::Refused);
    let mut anon = s.connect().await;
    let r = anon
        .command_with_message(&append, &copy.to_bytes(), |_| {})
        .await
        .unwrap();
    assert_eq!(r.status, Status::AuthRequired);
    let to_archive = Command::Move {
        folder: Folder::parse("Archive").unwrap(),
        ids: vec![2, 99],
    };
    for cmd in [
        page(0, 1),
        Command::Changes { since: 0, limit: 1 },
        to_archive.clone(),
    ] {
        let r = anon.command(&cmd, 1 << 20).await.unwrap();
        assert_eq!(r.status, Status::AuthRequired);
    }
    // MOVE (§13.7): the second device files 2 into Archive; the first
    // learns it from CHANGES, flags kept.
    let before = ListingPage::decode(&c.command(&page(0, 1), 1 << 20).await.unwrap().body)
        .unwrap()
        .modseq;
    let r = c2.command(&to_archive, 1 << 20).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let moved = FlagsResult::decode(&r.body).unwrap();
    assert_eq!((moved.changed, moved.modseq), (1, before + 1));
    let r = c
        .command(
            &Command::Changes {
                since: before,
                limit: 100,
            },
            1 << 20,
        )
        .await
        .unwrap();
    match ChangeSet::decode(&r.body).unwrap().changes.as_slice() {
        [Change::Message(m)] => {
            assert_eq!(
                (m.uid, m.folder.as_str(), m.flags),
                (2, "Archive", mailbox::SEEN)
            );
        }
        other => panic!("{other:?}"),
    }
    // The connection is still in step after the refusals.
    assert_eq!(
        c.command(&Command::Noop, 100).await.unwrap().status,
        Status::Success
    );
    still_serves(&s).await;
}

#[tokio::test]
async fn mailbox_commands_need_a_login_and_mailboxes_are_private() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let mut anon = s.connect().await;
    for cmd in [
        Command::List,
        Command::Fetch { id: 1 },
        Command::Delete { id: 1 },
        Command::Password {
            request: vec![0; 32],
        },
    ] {
        let r = anon.command(&cmd, 1 << 20).await.unwrap();
        assert_eq!(r.status, Status::AuthRequired, "{}", cmd.word());
    }
    let mut a = s.login("alice", &alice).await;
    a.mail(
        &sealed(
            &s.address("alice"),
            &alice,
            &s.address("bob"),
            &bob,
            "for bob",
        )
        .to_bytes(),
    )
    .await
    .unwrap();
    let mut b = s.login("bob", &bob).await;
    let id = decode_listing(&b.command(&Command::List, 1 << 20).await.unwrap().body).unwrap()[0].id;
    // alice cannot fetch or delete bob's message.
    let mut sink = Vec::new();
    assert!(a.fetch_into(id, 1 << 30, &mut sink).await.unwrap().is_err());
    assert_eq!(
        a.command(&Command::Delete { id }, 100)
            .await
            .unwrap()
            .status,
        Status::Failure
    );
    assert_eq!(
        b.command(&Command::Delete { id }, 100)
            .await
            .unwrap()
            .status,
        Status::Success
    );
    assert_eq!(
        b.command(&Command::Delete { id }, 100)
            .await
            .unwrap()
            .status,
        Status::Failure
    );
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_look_the_same_and_are_rate_limited() {
    let s = TestServer::start_with("a.test", |c| c.accounts.login_failures_per_account = 3).await;
    s.register("alice", "right").await;
    let alice = s.address("alice");
    let floor = cmtp_proto::crypto::opaque::KsfParams::INSECURE_TEST;
    let attempt = |user: &'static str, pw: &'static str| {
        let s = &s;
        async move {
            let mut c = s.connect().await;
            let (login, ke1) =
                cmtp_proto::account::Login::start(pw.as_bytes(), &mut rand_core::OsRng).unwrap();
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
            if r.status != Status::Success {
                return (r.status, 0usize);
            }
            let len = r.body.len();
            let ch = LoginChallenge::decode(&r.body).unwrap();
            let addr = Address::parse(&format!("{user}@a.test")).unwrap();
            let binding = c.channel_binding();
            match login.finish(
                pw.as_bytes(),
                &ch,
                &addr,
                &floor,
                &binding,
                &mut rand_core::OsRng,
            ) {
                Ok(proof) => {
                    let r = c
                        .command(
                            &Command::LoginFinish {
                                ke3: proof.ke3.to_vec(),
                            },
                            1 << 20,
                        )
                        .await
                        .unwrap();
                    (r.status, len)
                }
                // The client detects the wrong password itself; the server
                // learns of it when KE3 does not come or does not verify.
                Err(_) => {
                    let r = c
                        .command(&Command::LoginFinish { ke3: vec![0; 64] }, 1 << 20)
                        .await
                        .unwrap();
                    (r.status, len)
                }
            }
        }
    };
    let (ok, len_known) = attempt("alice", "right").await;
    assert_eq!(ok, Status::Success);
    let (wrong, len_wrong) = attempt("alice", "wrong").await;
    let (unknown, len_unknown) = attempt("zed", "wrong").await;
    assert_eq!(
        (wrong.clone(), unknown.clone()),
        (Status::AuthFailed, Status::AuthFailed)
    );
    assert_eq!(
        (len_known, len_wrong),
        (len_unknown, len_unknown),
        "challenges have one shape"
    );
    let _ = alice;
    attempt("alice", "wrong").await;
    attempt("alice", "wrong").await;
    // Three failures: even the right password is refused now.
    let (limited, _) = attempt("alice", "right").await;
    assert_eq!(limited, Status::RateLimited);
}

#[tokio::test]
async fn logins_that_never_finish_count_as_failures() {
    // OPAQUE lets a client learn from KE2 whether its guess was right; an
    // attacker who never sends LOGINFINISH must still be rate-limited.
    let s = TestServer::start_with("a.test", |c| c.accounts.login_failures_per_account = 3).await;
    s.register("alice", "right").await;
    let mut c = s.connect().await;
    async fn login(c: &mut cmtp_client::Connection) -> cmtp_proto::reply::Reply {
        let (_, ke1) = cmtp_proto::account::Login::start(b"guess", &mut rand_core::OsRng).unwrap();
        let cmd = Command::Login {
            user: Account::parse("alice").unwrap(),
            ke1: ke1.to_vec(),
        };
        c.command(&cmd, 1 << 20).await.unwrap()
    }
    for _ in 0..3 {
        assert_eq!(
            login(&mut c).await.status,
            Status::Success,
            "a challenge, never finished"
        );
    }
    let r = login(&mut c).await;
    assert_eq!(r.status, Status::RateLimited);
    assert!(r.text().contains("try again in"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_cannot_all_slip_past_the_limit() {
    let s = TestServer::start_with("a.test", |c| c.accounts.login_failures_per_account = 3).await;
    s.register("alice", "right").await;
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(s.connect().await);
    }
    let attempts = conns.into_iter().map(|mut c| {
        tokio::spawn(async move {
            let (_, ke1) =
                cmtp_proto::account::Login::start(b"guess", &mut rand_core::OsRng).unwrap();
            let cmd = Command::Login {
                user: Account::parse("alice").unwrap(),
                ke1: ke1.to_vec(),
            };
            c.command(&cmd, 1 << 20).await.unwrap().status
        })
    });
    let mut challenged = 0;
    for a in attempts {
        match a.await.unwrap() {
            Status::Success => challenged += 1,
            Status::RateLimited => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(challenged, 3, "exactly the limit's worth of guesses");
}

#[tokio::test]
async fn failed_password_logins_do_not_lock_out_a_device_key() {
    let s = TestServer::start_with("a.test", |c| c.accounts.login_failures_per_account = 2).await;
    let alice = s.register("alice", "right").await;
    let mut c = s.connect().await;
    for _ in 0..3 {
        let (_, ke1) = cmtp_proto::account::Login::start(b"guess", &mut rand_core::OsRng).unwrap();
        c.command(
            &Command::Login {
                user: Account::parse("alice").unwrap(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    }
    // The account is rate-limited for password logins, yet her device logs in.
    let _session = s.login("alice", &alice).await;
    // A wrong device signature counts against the address, not the account.
    let mut bad = s.connect().await;
    let r = bad
        .command(
            &Command::KeyLogin {
                user: Account::parse("alice").unwrap(),
                signature: vec![0; 64],
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::AuthFailed);
}

#[tokio::test]
async fn registration_needs_a_valid_invite_unless_open() {
    let s = TestServer::start("a.test").await;
    let mut c = s.connect().await;
    let r = c
        .command(
            &Command::Register {
                user: Account::parse("eve").unwrap(),
                invite: String::new(),
                request: vec![1; 32],
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Failure);
    let r = c
        .command(
            &Command::Register {
                user: Account::parse("eve").unwrap(),
                invite: "inv-bogus".into(),
                request: vec![1; 32],
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Failure);
    let r = c
        .command(
            &Command::RegFinish {
                bundle: vec![1; 10],
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Failure, "no registration in progress");
}

#[tokio::test]
async fn graceful_shutdown_finishes_the_message_in_flight() {
    let mut s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let bob = s.register("bob", "pw").await;
    let m = sealed(
        &s.address("alice"),
        &alice,
        &s.address("bob"),
        &bob,
        "in flight",
    );
    let mut c = s.login("alice", &alice).await;
    let mail = c.begin_mail().await.unwrap();
    let bytes = m.to_bytes();
    c.send_bytes(&bytes[..100]).await.unwrap();
    // The server has accepted the envelope before it is told to stop.
    let shared = s.shared().clone();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while shared
        .messages_in_flight
        .load(std::sync::atomic::Ordering::Relaxed)
        == 0
    {
        assert!(std::time::Instant::now() < until, "the message never began");
        tokio::task::yield_now().await;
    }
    let store = s.shared().store.clone();
    let addr = s.addr;
    let stopping = tokio::spawn({
        let server = s.server.take().unwrap();
        async move { server.shutdown().await }
    });
    // Once the listener is closed, the server is shutting down.
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            std::time::Instant::now() < until,
            "the server never stopped listening"
        );
        tokio::task::yield_now().await;
    }
    c.send_bytes(&bytes[100..]).await.unwrap();
    let r = c.finish_mail(mail).await.unwrap();
    assert_eq!(r.status, Status::Success);
    drop(c);
    stopping.await.unwrap();
    use cmtp_store::Store;
    assert_eq!(store.list_mailbox("bob").await.unwrap().len(), 1);
    let _ = (
        VERSION_SEALED,
        Source::server(Domain::parse("a.test").unwrap()),
    );
}
