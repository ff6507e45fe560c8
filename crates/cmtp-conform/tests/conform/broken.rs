//! A deliberately broken CMTP/2 peer: right in most things, wrong in a few.
//! It speaks TLS 1.3 after the banner as it should, but shows another key
//! in TLS than the one its greeting names (and offers only X25519), answers
//! CMTP in clear to a peer that does not start TLS, and breaks a few rules
//! inside TLS. It has one account, `alice`, whose OPAQUE login is bound to
//! the channel as it should be, but it checks KEYLOGIN signatures over the
//! connection nonce (as CMTP/1 did) and registration proofs not at all.
//! The checker must fail exactly the rules it breaks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use cmtp_proto::account::verify_key_login;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::crypto::opaque::{
    KsfParams, ServerLogin, ServerSetup, server_registration_response,
};
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::{
    LoginChallenge, RegistrationBundle, RegistrationOffer, XzibitRelease, encode_listing,
};

use cmtp_proto::banner::ready_line;
use cmtp_proto::command::{Command, CommandError, decode_command, request_digest};
use cmtp_proto::crypto::{IdentityKey, SignatureTag};
use cmtp_proto::names::Domain;
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{REPLY_VERSION, Reply, ReplyBinding, ReplyHeader, Status, body_hash};
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle};
use cmtp_proto::tls::{KeyExchange, ServerTlsConfig};

use crate::support::{checker, results};

/// The password of the peer's one account, `alice`.
const PASSWORD: &str = "alice's password";

/// What the peer keeps of `alice` (PROTOCOL.md §12).
struct Alice {
    record: Vec<u8>,
    ksf: KsfParams,
    xzibit: Vec<u8>,
    identity: PublicKey,
}

/// The broken peer's state, shared by its connections.
struct Peer {
    domain: Domain,
    key: IdentityKey,
    tls: ServerTlsConfig,
    setup: ServerSetup,
    alice: Mutex<Alice>,
}

impl Peer {
    fn address(&self) -> Address {
        Address::new(Account::parse("alice").unwrap(), self.domain.clone())
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// alice's key statement.
    fn statement(&self) -> Vec<u8> {
        let now = Peer::now();
        let identity = self.alice.lock().unwrap().identity;
        KeyStatement::issue(
            &self.key,
            Some(Account::parse("alice").unwrap()),
            self.domain.clone(),
            identity,
            now - 60,
            now + 86400,
        )
        .to_bytes()
    }
}

/// Registers `alice` as her client would (locally, as `cmtpd user add` does).
fn register_alice(setup: &ServerSetup, domain: &Domain) -> Alice {
    use cmtp_proto::account::Registration;
    let mut rng = rand_core::OsRng;
    let address = Address::new(Account::parse("alice").unwrap(), domain.clone());
    let identity = IdentityKey::generate(&mut rng);
    let (reg, request) = Registration::start(PASSWORD.as_bytes(), &mut rng).unwrap();
    let response = server_registration_response(setup, &request, &address.to_string()).unwrap();
    let offer = RegistrationOffer {
        response: response.to_vec(),
        floor: KsfParams::INSECURE_TEST,
    };
    let bundle = reg
        .finish(
            PASSWORD.as_bytes(),
            &offer,
            &address,
            &identity,
            KsfParams::INSECURE_TEST,
            Peer::now(),
            &[0; 32],
            &mut rng,
        )
        .unwrap();
    Alice {
        record: bundle.record,
        ksf: bundle.ksf,
        xzibit: bundle.xzibit,
        identity: identity.public(),
    }
}

/// Starts the broken peer on a free port; it serves until the test ends.
fn start() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let domain = Domain::parse("broken.test").unwrap();
    let key = IdentityKey::generate(&mut rand_core::OsRng);
    // Bug: TLS shows another key than the one that signs the replies (and
    // offers X25519 only, which is allowed: a note, not a failure).
    let other = IdentityKey::generate(&mut rand_core::OsRng);
    let tls = ServerTlsConfig::new(&other, &domain, KeyExchange::ClassicalOnly).unwrap();
    let setup = ServerSetup::generate(&mut rand_core::OsRng);
    let alice = Mutex::new(register_alice(&setup, &domain));
    let peer = Arc::new(Peer {
        domain,
        key,
        tls,
        setup,
        alice,
    });
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let peer = peer.clone();
            std::thread::spawn(move || accept(stream, &peer));
        }
    });
    port
}

/// The banner, then TLS as cmtpd does it (the ClientHello picks a raw
/// public key or the certificate) — or, bug, CMTP in clear for a peer that
/// does not start TLS.
fn accept(mut s: TcpStream, peer: &Peer) {
    if s.write_all(ready_line(&peer.domain, "broken 0").as_bytes())
        .is_err()
    {
        return;
    }
    let mut first = vec![0u8; 4096];
    let n = match s.read(&mut first) {
        Ok(0) | Err(_) => return,
        Ok(n) => n,
    };
    first.truncate(n);
    if first[0] != 0x16 {
        return serve(s, peer, first, None);
    }
    let mut acceptor = rustls::server::Acceptor::default();
    let mut pending = first;
    let accepted = loop {
        acceptor.read_tls(&mut pending.as_slice()).unwrap();
        match acceptor.accept() {
            Ok(Some(a)) => break a,
            Ok(None) => {}
            Err((_, mut alert)) => {
                let _ = alert.write(&mut s);
                return;
            }
        }
        let mut chunk = vec![0u8; 4096];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => pending = chunk[..n].to_vec(),
        }
    };
    let config = peer
        .tls
        .for_client(accepted.client_hello().server_cert_types());
    let mut conn = match accepted.into_connection(config) {
        Ok(conn) => conn,
        Err((_, mut alert)) => {
            let _ = alert.write(&mut s);
            return;
        }
    };
    while conn.is_handshaking() {
        if conn.complete_io(&mut s).is_err() {
            return;
        }
    }
    let mut cb = [0u8; 32];
    conn.export_keying_material(&mut cb, cmtp_proto::tls::EXPORTER_LABEL, None)
        .unwrap();
    serve(
        rustls::StreamOwned::new(conn, s),
        peer,
        Vec::new(),
        Some(cb),
    );
}

struct Conn<'a, S> {
    s: S,
    key: &'a IdentityKey,
    nonce: [u8; 32],
    seq: u64,
}

impl<S: Write> Conn<'_, S> {
    /// A reply signed for position `seq + skew` (skew 0 is right).
    fn reply(&mut self, status: Status, body: &[u8], request: [u8; 32], skew: u64) {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status: status.clone(),
            body_len: body.len() as u64,
        };
        let data = ReplyBinding {
            nonce: self.nonce,
            seq: self.seq + skew,
            request,
        }
        .signed_data(&header, &body_hash(body));
        let signature = self.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        let mut out = Vec::new();
        Reply {
            version: REPLY_VERSION,
            status,
            body: body.to_vec(),
            signature,
        }
        .encode(&mut out);
        let _ = self.s.write_all(&out);
        let _ = self.s.flush();
    }
}

/// Commands, inside TLS (with its channel binding `cb`) or (bug) in
/// clear; `buf` holds what came already.
fn serve<S: Read + Write>(s: S, peer: &Peer, mut buf: Vec<u8>, cb: Option<[u8; 32]>) {
    let (domain, key) = (&peer.domain, &peer.key);
    let cb = cb.unwrap_or_default();
    let mut login: Option<ServerLogin> = None;
    let mut logged_in = false;
    let mut nonce = [0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let mut c = Conn {
        s,
        key,
        nonce,
        seq: 0,
    };
    let mut chunk = [0u8; 4096];
    loop {
        match decode_command(&buf) {
            Ok(Some((cmd, n))) => {
                let frame: Vec<u8> = buf.drain(..n).collect();
                let d = request_digest(&frame);
                match cmd {
                    Command::Ohai => {
                        let g = Greeting {
                            domain: domain.clone(),
                            software: "broken 0".into(),
                            extensions: Vec::new(),
                            key: key.public(),
                            nonce: c.nonce,
                            max_message_size: 1 << 20,
                            max_attachments: 4,
                        };
                        c.reply(Status::Success, g.to_text().as_bytes(), d, 0);
                    }
                    // Bug: NOOP's reply is signed for the next position.
                    Command::Noop => c.reply(Status::Success, b"", d, 1),
                    Command::Help => c.reply(
                        Status::Success,
                        b"OHAI MAIL KEYREQUEST NOOP LOGIN HELP OBAI LOGINFINISH KEYLOGIN \
                          REGISTER REGFINISH PASSWORD LIST FETCH DELETE",
                        d,
                        0,
                    ),
                    Command::KeyRequest { user: None, .. } => {
                        let now = std::time::SystemTime::now()
                            .duration_since(std::time::UNIX_EPOCH)
                            .unwrap()
                            .as_secs();
                        let bundle = ServerKeyBundle {
                            statement: KeyStatement::issue(
                                key,
                                None,
                                domain.clone(),
                                key.public(),
                                now - 60,
                                now + 86400,
                            ),
                            rotations: Vec::new(),
                        };
                        c.reply(Status::Success, &bundle.to_bytes(), d, 0);
                    }
                    Command::KeyRequest { user: Some(u), .. } if u.as_str() == "alice" => {
                        c.reply(Status::Success, &peer.statement(), d, 0);
                    }
                    // Bug: OBAI is answered but the connection stays open.
                    Command::Obai => c.reply(Status::Success, b"bye", d, 0),
                    // The OPAQUE login is bound to the channel, as it should be.
                    Command::Login { user, ke1 } => {
                        logged_in = false;
                        let alice = peer.alice.lock().unwrap();
                        let record = (user.as_str() == "alice").then_some(alice.record.as_slice());
                        let address = Address::new(user, domain.clone()).to_string();
                        let (state, ke2) = ServerLogin::start(
                            &peer.setup,
                            record,
                            &ke1,
                            &address,
                            domain.as_str(),
                            &cb,
                            &mut rand_core::OsRng,
                        )
                        .unwrap();
                        login = Some(state);
                        let challenge = LoginChallenge {
                            ksf: alice.ksf,
                            ke2: ke2.to_vec(),
                        };
                        drop(alice);
                        c.reply(Status::Success, &challenge.to_bytes(), d, 0);
                    }
                    Command::LoginFinish { ke3 } => match login.take().map(|l| l.finish(&ke3)) {
                        Some(Ok(_)) => {
                            logged_in = true;
                            let xzibit = peer.alice.lock().unwrap().xzibit.clone();
                            let release = XzibitRelease::issue(key, &peer.address(), xzibit);
                            c.reply(Status::Success, &release.to_bytes(), d, 0);
                        }
                        _ => c.reply(Status::AuthFailed, b"no", d, 0),
                    },
                    // Bug: the KEYLOGIN signature is checked over the
                    // connection nonce (CMTP/1), not the channel binding.
                    Command::KeyLogin { user, signature } => {
                        let identity = peer.alice.lock().unwrap().identity;
                        logged_in = user.as_str() == "alice"
                            && verify_key_login(&identity, &c.nonce, &peer.address(), &signature)
                                .is_ok();
                        if logged_in {
                            c.reply(Status::Success, b"", d, 0);
                        } else {
                            c.reply(Status::AuthFailed, b"no", d, 0);
                        }
                    }
                    Command::List if logged_in => {
                        c.reply(Status::Success, &encode_listing(&[]), d, 0)
                    }
                    Command::Password { request } if logged_in => {
                        let response = server_registration_response(
                            &peer.setup,
                            &request,
                            &peer.address().to_string(),
                        )
                        .unwrap();
                        let offer = RegistrationOffer {
                            response: response.to_vec(),
                            floor: KsfParams::INSECURE_TEST,
                        };
                        c.reply(Status::Success, &offer.to_bytes(), d, 0);
                    }
                    // Bug: the bundle's proof of possession is not checked.
                    Command::RegFinish { bundle } if logged_in => {
                        let b = RegistrationBundle::decode(&bundle).unwrap();
                        {
                            let mut alice = peer.alice.lock().unwrap();
                            alice.record = b.record;
                            alice.ksf = b.ksf;
                            alice.xzibit = b.xzibit;
                        }
                        c.reply(Status::Success, &peer.statement(), d, 0);
                    }
                    Command::List | Command::Password { .. } | Command::RegFinish { .. } => {
                        c.reply(Status::AuthRequired, b"log in first", d, 0);
                    }
                    _ => c.reply(Status::KeyNotAvailable, b"nothing here", d, 0),
                }
                continue;
            }
            Ok(None) => {}
            Err(e) => match (e.kind, e.resume_at) {
                // Bug: an SMTP line gets an SMTP welcome, and no close.
                (CommandError::SmtpVerb(_), _) => {
                    let _ = c.s.write_all(b"250 broken.test hello\r\n");
                    let _ = c.s.flush();
                    buf.clear();
                }
                (kind, Some(n)) => {
                    let frame: Vec<u8> = buf.drain(..n).collect();
                    c.reply(
                        Status::BadCommand,
                        kind.to_string().as_bytes(),
                        request_digest(&frame),
                        0,
                    );
                }
                // Bug: TOOLONG is sent, but the connection stays open.
                (kind, None) => {
                    c.reply(Status::TooLong, kind.to_string().as_bytes(), [0; 32], 0);
                    buf.clear();
                }
            },
        }
        match c.s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

#[test]
fn a_peer_that_binds_logins_to_the_nonce_or_not_at_all_fails_the_binding_rules() {
    let port = start();
    let target = format!("127.0.0.1:{port}");
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("alice.pw");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let mut args = vec![
        "--target",
        &target,
        "--user",
        "alice",
        "--password-file",
        password.to_str().unwrap(),
        "-o",
        "json",
    ];
    for id in [
        "login",
        "keylogin",
        "keylogin-relayed",
        "password-change-bound",
    ] {
        args.extend(["--only", id]);
    }
    let out = checker(&args);
    assert_eq!(out.status.code(), Some(1), "failures exit 1");
    let results = results(&out);
    let result = |id: &str| {
        results
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no result for {id}"))
    };
    // The OPAQUE login is bound to the channel: it passes.
    assert_eq!(result("login").result, "pass", "{}", result("login").text);
    for (id, why) in [
        // A KEYLOGIN bound to this channel is refused (it checks the nonce) ...
        (
            "keylogin",
            "SUCCESS to KEYLOGIN signed over this connection's channel binding",
        ),
        // ... and one over the nonce is let in.
        ("keylogin-relayed", "over the connection nonce"),
        // A registration proof made for another connection is taken.
        (
            "password-change-bound",
            "another connection's channel binding",
        ),
    ] {
        let r = result(id);
        assert_eq!(r.result, "fail", "{}", r.text);
        assert!(r.text.contains(why), "{id}: {}", r.text);
    }
}

#[test]
fn a_peer_that_breaks_rules_fails_exactly_those() {
    let port = start();
    let target = format!("127.0.0.1:{port}");
    let mut args = vec!["--target", &target, "-o", "json"];
    for id in [
        "banner",
        "tls13-handshake",
        "hello-before-banner",
        "tls13-only",
        "tls-key-exchange",
        "tls-raw-public-key",
        "tls-certificate-fallback",
        "clear-cmtp1-refused",
        "ohai-fields",
        "help",
        "keyrequest-server-key",
        "signature-binding",
        "noop",
        "word-too-long",
        "obai",
        "smtp-ehlo",
    ] {
        args.extend(["--only", id]);
    }
    let out = checker(&args);
    assert_eq!(out.status.code(), Some(1), "failures exit 1");
    let results = results(&out);
    let result = |id: &str| {
        results
            .iter()
            .find(|r| r.id == id)
            .unwrap_or_else(|| panic!("no result for {id}"))
    };
    for id in [
        "banner",
        "tls13-handshake",
        "hello-before-banner",
        "tls13-only",
        "ohai-fields",
        "help",
        "keyrequest-server-key",
    ] {
        assert_eq!(result(id).result, "pass", "{}", result(id).text);
    }
    // A classical group is worth a note, not a failure.
    let kx = result("tls-key-exchange");
    assert_eq!(kx.result, "pass", "{}", kx.text);
    assert!(
        kx.text.contains("negotiated X25519, not X25519MLKEM768"),
        "{}",
        kx.text
    );
    for (id, why) in [
        // TLS shows a key other than the greeting's, to both kinds of client.
        (
            "tls-raw-public-key",
            "the raw public key: the key of the greeting",
        ),
        (
            "tls-certificate-fallback",
            "the certificate's key: the key of the greeting",
        ),
        // In clear, it answers CMTP instead of refusing.
        ("clear-cmtp1-refused", "still open after 1 s"),
        // The NOOP reply verifies only for seq + 1, and the checker says so.
        ("signature-binding", "it verifies with seq = 2 instead"),
        ("noop", "does not verify"),
        ("word-too-long", "still open"),
        ("obai", "still open"),
        ("smtp-ehlo", "250 broken.test hello"),
    ] {
        let r = result(id);
        assert_eq!(r.result, "fail", "{}", r.text);
        assert!(r.text.contains(why), "{id}: {}", r.text);
    }
}
