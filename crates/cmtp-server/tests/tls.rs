//! What TLS (CMTP/2, PROTOCOL.md §4.4) protects, shown with a proxy on the
//! path: a passive observer of a client's session and of a server-to-server
//! relay reads no account name, subject, body or attachment name; an active
//! one can neither inject into a logged-in session, nor replay a recorded
//! one, nor carry a login proved on one connection onto another.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmtp_client::Connection;
use cmtp_proto::account::{Login, Registration, key_login_signature};
use cmtp_proto::command::Command;
use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::{LoginChallenge, RegistrationOffer, decode_listing};
use cmtp_proto::reply::Status;
use cmtp_store::Store;
use support::{T, TestServer, eventually, route};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// The bytes of one proxied TCP connection, each direction.
#[derive(Default)]
struct Recording {
    /// Client to server.
    up: Vec<u8>,
    /// Server to client.
    down: Vec<u8>,
}

/// A TCP proxy on loopback that records every byte it forwards and can
/// inject bytes of its own towards the server: the attacker on the path.
struct Proxy {
    addr: SocketAddr,
    sessions: Arc<Mutex<Vec<Recording>>>,
    injectors: Arc<Mutex<Vec<mpsc::UnboundedSender<Vec<u8>>>>>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        Self::start_on(TcpListener::bind("127.0.0.1:0").await.unwrap(), target)
    }

    fn start_on(listener: TcpListener, target: SocketAddr) -> Proxy {
        let proxy = Proxy {
            addr: listener.local_addr().unwrap(),
            sessions: Arc::default(),
            injectors: Arc::default(),
        };
        let (sessions, injectors) = (proxy.sessions.clone(), proxy.injectors.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(target).await else {
                    continue;
                };
                let index = {
                    let mut s = sessions.lock().unwrap();
                    s.push(Recording::default());
                    s.len() - 1
                };
                let (tx, rx) = mpsc::unbounded_channel();
                injectors.lock().unwrap().push(tx);
                tokio::spawn(pump(client, server, sessions.clone(), index, rx));
            }
        });
        proxy
    }

    /// Everything recorded, both directions of every connection.
    fn all_bytes(&self) -> Vec<u8> {
        let s = self.sessions.lock().unwrap();
        let mut out = Vec::new();
        for r in s.iter() {
            out.extend_from_slice(&r.up);
            out.extend_from_slice(&r.down);
        }
        out
    }

    fn up_bytes(&self, session: usize) -> Vec<u8> {
        self.sessions.lock().unwrap()[session].up.clone()
    }

    fn connections(&self) -> usize {
        self.sessions.lock().unwrap().len()
    }

    /// Writes `bytes` towards the server on connection `session`.
    fn inject(&self, session: usize, bytes: &[u8]) {
        self.injectors.lock().unwrap()[session]
            .send(bytes.to_vec())
            .unwrap();
    }
}

async fn pump(
    client: TcpStream,
    server: TcpStream,
    sessions: Arc<Mutex<Vec<Recording>>>,
    index: usize,
    mut inject: mpsc::UnboundedReceiver<Vec<u8>>,
) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let up_sessions = sessions.clone();
    let up = async move {
        let mut buf = vec![0u8; 65536];
        loop {
            tokio::select! {
                n = cr.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        up_sessions.lock().unwrap()[index].up.extend_from_slice(&buf[..n]);
                        if sw.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                },
                Some(bytes) = inject.recv() => {
                    if sw.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = sw.shutdown().await;
    };
    let down = async move {
        let mut buf = vec![0u8; 65536];
        loop {
            match sr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    sessions.lock().unwrap()[index]
                        .down
                        .extend_from_slice(&buf[..n]);
                    if cw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Names and words that appear nowhere else, so that finding one in the
/// recording could only mean it leaked.
const SENDER: &str = "quetzalcoatl";
const RECIPIENT: &str = "ozymandias";
const SUBJECT: &str = "Zyzzyva expedition report";
const TEXT: &str = "the marmalade is hidden under the xylophone";
const ATTACHMENT: &str = "walrus-ledger-quarterly.pdf";

fn distinctive_mail(
    from: &Address,
    sender: &IdentityKey,
    to: &Address,
    recipient: &IdentityKey,
) -> Vec<u8> {
    Content {
        subject: SUBJECT.into(),
        date: "2026-12-01T00:00:00Z".into(),
        text: TEXT.into(),
        attachments: vec![Attachment {
            name: ATTACHMENT.into(),
            data: b"ledger".repeat(100),
        }],
        ..Content::default()
    }
    .seal(from, sender, to, &recipient.public(), &mut rand_core::OsRng)
    .unwrap()
    .to_bytes()
}

/// A passive observer on the path of alice's session with her server, and
/// on the path from her server to bob's, records every byte: it finds the
/// domains in the clear banners (so it does see the traffic) but no account
/// name, subject, body or attachment name, in either direction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passive_observer_sees_no_account_subject_body_or_attachment_name() {
    // The observers between the servers listen before the servers start,
    // so that each server's route to the other can name them: a.test relays
    // to b.test, and b.test asks a.test for its key to check the domain
    // signature.
    let to_b = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let to_a = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (to_b_port, to_a_port) = (
        to_b.local_addr().unwrap().port(),
        to_a.local_addr().unwrap().port(),
    );
    let mut a = TestServer::start_with("a.test", |c| route(c, "b.test", to_b_port)).await;
    let mut b = TestServer::start_with("b.test", |c| route(c, "a.test", to_a_port)).await;
    let relay_tap = Proxy::start_on(to_b, b.addr);
    let back_tap = Proxy::start_on(to_a, a.addr);
    let client_tap = Proxy::start(a.addr).await;
    let bob_tap = Proxy::start(b.addr).await;
    // Every client connection below goes through an observer.
    a.addr = client_tap.addr;
    b.addr = bob_tap.addr;

    let alice = a.register(SENDER, "pw").await;
    let bob = b.register(RECIPIENT, "pw").await;
    let (from, to) = (a.address(SENDER), b.address(RECIPIENT));
    let mut c = a.login(SENDER, &alice).await;
    // Her client learns his key through her server, which asks b.test.
    let r = c
        .command(
            &Command::KeyRequest {
                user: Some(to.account.clone()),
                domain: Some(to.domain.clone()),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let r = c
        .mail(&distinctive_mail(&from, &alice, &to, &bob))
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    eventually("the relay to b.test", || async {
        b.shared()
            .store
            .list_mailbox(RECIPIENT)
            .await
            .unwrap()
            .len()
            == 1
    })
    .await;
    // Bob reads it, through his own observer.
    let mut bc = b.login(RECIPIENT, &bob).await;
    let r = bc.command(&Command::List, 1 << 20).await.unwrap();
    let listing = decode_listing(&r.body).unwrap();
    let mut fetched = Vec::new();
    bc.fetch_into(listing[0].id, 1 << 30, &mut fetched)
        .await
        .unwrap()
        .unwrap();
    drop((c, bc));

    assert!(
        relay_tap.connections() >= 1,
        "the relay went through the observer"
    );
    assert!(
        back_tap.connections() >= 1,
        "b.test asked a.test through the observer"
    );
    for (tap, domain) in [
        (&client_tap, "a.test"),
        (&relay_tap, "b.test"),
        (&back_tap, "a.test"),
        (&bob_tap, "b.test"),
    ] {
        let seen = tap.all_bytes();
        assert!(
            contains(&seen, &format!("554 {domain} CMTP/2 ")),
            "the observer sees the clear banner"
        );
        for secret in [
            SENDER, RECIPIENT, SUBJECT, TEXT, ATTACHMENT, "LOGIN", "MAIL\0",
        ] {
            assert!(
                !contains(&seen, secret),
                "{secret:?} crossed the wire readable ({domain})"
            );
        }
    }
    a.stop().await;
    b.stop().await;
}

/// A logged-in session (KEYLOGIN, as a device does) through an attacker's
/// proxy, and a message in the mailbox.
async fn logged_in_through(proxy: &Proxy, s: &TestServer, key: &IdentityKey) -> Connection {
    let mut c = Connection::connect(proxy.addr, T).await.unwrap();
    c.expect_key(s.shared().key.public());
    c.ohai().await.unwrap();
    let sig = key_login_signature(key, &c.channel_binding(), &s.address("alice"));
    let r = c
        .command(
            &Command::KeyLogin {
                user: Account::parse("alice").unwrap(),
                signature: sig.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    c
}

async fn alice_with_one_message() -> (TestServer, IdentityKey) {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let mut c = s.login("alice", &alice).await;
    let m = support::sealed(
        &s.address("alice"),
        &alice,
        &s.address("alice"),
        &alice,
        "keep me",
    );
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    (s, alice)
}

async fn mailbox_len(s: &TestServer, user: &str) -> usize {
    s.shared().store.list_mailbox(user).await.unwrap().len()
}

/// Bytes an attacker writes into a logged-in session — a forged encrypted
/// record, or a command in clear — end the session with a TLS error; the
/// mailbox is unchanged and the server serves the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_injected_into_a_logged_in_session_end_it_and_change_nothing() {
    let (s, alice) = alice_with_one_message().await;
    let id = s.shared().store.list_mailbox("alice").await.unwrap()[0].id;
    let proxy = Proxy::start(s.addr).await;
    let mut delete = Vec::new();
    Command::Delete { id }.encode(&mut delete);
    let forged_record = {
        // An application-data record of TLS 1.3 with a plausible length and
        // bytes the attacker made up (it has no key).
        let mut r = vec![0x17, 0x03, 0x03, 0x00, 0x40];
        r.extend_from_slice(&[0x5a; 0x40]);
        r
    };
    for (session, injected) in [forged_record, delete].into_iter().enumerate() {
        let mut c = logged_in_through(&proxy, &s, &alice).await;
        proxy.inject(session, &injected);
        // The server drops the connection: the client's next command fails.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let r = c.command(&Command::List, 1 << 20).await;
        assert!(r.is_err(), "the session survived an injection: {r:?}");
        assert_eq!(mailbox_len(&s, "alice").await, 1, "nothing was deleted");
    }
    // The server is unharmed.
    let mut c = s.login("alice", &alice).await;
    let r = c.command(&Command::List, 1 << 20).await.unwrap();
    assert_eq!(decode_listing(&r.body).unwrap().len(), 1);
}

/// Every byte a client sent in a session that delivered a message, replayed
/// to the server on a new connection, delivers nothing: the replayed
/// handshake does not complete against the server's fresh key share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recorded_session_replayed_delivers_nothing() {
    let (s, alice) = alice_with_one_message().await;
    let proxy = Proxy::start(s.addr).await;
    {
        let mut c = logged_in_through(&proxy, &s, &alice).await;
        let m = support::sealed(
            &s.address("alice"),
            &alice,
            &s.address("alice"),
            &alice,
            "once",
        );
        let r = c.mail(&m.to_bytes()).await.unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
        c.command(&Command::Obai, 1 << 20).await.unwrap();
    }
    assert_eq!(mailbox_len(&s, "alice").await, 2);
    let recorded = proxy.up_bytes(0);
    assert!(recorded.len() > 1000, "the session was recorded");

    let mut replay = TcpStream::connect(s.addr).await.unwrap();
    let _ = replay.write_all(&recorded).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(T, replay.read_to_end(&mut answer))
        .await
        .expect("the server closes a replayed session");
    // The banner, then the server's own handshake (a fresh ServerHello),
    // then the close.
    assert!(answer.starts_with(b"554 a.test CMTP/2 "));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mailbox_len(&s, "alice").await,
        2,
        "the replay delivered nothing"
    );
}

/// A login proved on one connection cannot be carried onto another: the
/// KEYLOGIN signature, the OPAQUE exchange (an attacker relaying between a
/// victim and the server) and the registration proof are each bound to the
/// connection's TLS channel binding.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_proved_on_one_connection_fails_on_another() {
    let s = TestServer::start("a.test").await;
    let alice = s.register("alice", "pw").await;
    let me = s.address("alice");
    let rng = &mut rand_core::OsRng;
    let mut victim = s.connect().await;
    let mut attacker = s.connect().await;
    assert_ne!(victim.channel_binding(), attacker.channel_binding());

    // KEYLOGIN: the victim's signature, spliced onto the attacker's connection.
    let stolen = key_login_signature(&alice, &victim.channel_binding(), &me);
    let key_login = |signature: &[u8]| Command::KeyLogin {
        user: me.account.clone(),
        signature: signature.to_vec(),
    };
    let r = attacker
        .command(&key_login(&stolen), 1 << 20)
        .await
        .unwrap();
    assert_eq!(r.status, Status::AuthFailed, "{}", r.text());
    let r = attacker.command(&Command::List, 1 << 20).await.unwrap();
    assert_eq!(r.status, Status::AuthRequired, "{}", r.text());
    // The same signature on the connection it was made for works.
    let r = victim.command(&key_login(&stolen), 1 << 20).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());

    // OPAQUE relayed: the attacker opens the exchange on its connection and
    // shows the server's challenge to the victim, whose client proves the
    // password for its own channel and finds the server's proof does not
    // match: it refuses, and the attacker has nothing to send.
    let mut victim = s.connect().await;
    let (login, ke1) = Login::start(b"pw", rng).unwrap();
    let r = attacker
        .command(
            &Command::Login {
                user: me.account.clone(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let challenge = LoginChallenge::decode(&r.body).unwrap();
    let relayed = login.finish(
        b"pw",
        &challenge,
        &me,
        &KsfParams::INSECURE_TEST,
        &victim.channel_binding(),
        rng,
    );
    assert!(
        relayed.is_err(),
        "the victim's client finished a relayed login"
    );
    // The exchange finished for the attacker's own channel (what an
    // attacker who knew the password could do) succeeds: the failure above
    // is the binding's doing.
    let (login, ke1) = Login::start(b"pw", rng).unwrap();
    let r = victim
        .command(
            &Command::Login {
                user: me.account.clone(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    let challenge = LoginChallenge::decode(&r.body).unwrap();
    let proof = login
        .finish(
            b"pw",
            &challenge,
            &me,
            &KsfParams::INSECURE_TEST,
            &victim.channel_binding(),
            rng,
        )
        .unwrap();
    let r = victim
        .command(
            &Command::LoginFinish {
                ke3: proof.ke3.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());

    // Registration: a bundle proved for another connection is refused.
    let newcomer = Account::parse("newcomer").unwrap();
    let (token, _) = cmtp_server::admin::invite(&s.shared().store, &newcomer, 3600)
        .await
        .unwrap();
    let mut victim = s.connect().await;
    let mut attacker = s.connect().await;
    let (reg, request) = Registration::start(b"pw2", rng).unwrap();
    let r = attacker
        .command(
            &Command::Register {
                user: newcomer.clone(),
                invite: token,
                request: request.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let offer = RegistrationOffer::decode(&r.body).unwrap();
    let identity = IdentityKey::generate(rng);
    let bundle = reg
        .finish(
            b"pw2",
            &offer,
            &s.address("newcomer"),
            &identity,
            KsfParams::INSECURE_TEST,
            1,
            &victim.channel_binding(),
            rng,
        )
        .unwrap();
    let r = attacker
        .command(
            &Command::RegFinish {
                bundle: bundle.to_bytes(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::BadArgument, "{}", r.text());
    assert!(r.text().contains("proof of possession"), "{}", r.text());
    assert!(s.shared().store.user("newcomer").await.unwrap().is_none());
    let _ = victim.command(&Command::Obai, 1 << 20).await;
}
