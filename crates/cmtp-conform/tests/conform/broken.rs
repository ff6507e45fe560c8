//! A deliberately broken CMTP/2 peer: right in most things, wrong in a few.
//! It speaks TLS 1.3 after the banner as it should, but shows another key
//! in TLS than the one its greeting names (and offers only X25519), answers
//! CMTP in clear to a peer that does not start TLS, and breaks a few rules
//! inside TLS. The checker must fail exactly the rules it breaks.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use cmtp_proto::banner::ready_line;
use cmtp_proto::command::{Command, CommandError, decode_command, request_digest};
use cmtp_proto::crypto::{IdentityKey, SignatureTag};
use cmtp_proto::names::Domain;
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{REPLY_VERSION, Reply, ReplyBinding, ReplyHeader, Status, body_hash};
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle};
use cmtp_proto::tls::{KeyExchange, ServerTlsConfig};

use crate::support::{checker, results};

/// Starts the broken peer on a free port; it serves until the test ends.
fn start() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let key = IdentityKey::generate(&mut rand_core::OsRng);
    // Bug: TLS shows another key than the one that signs the replies (and
    // offers X25519 only, which is allowed: a note, not a failure).
    let other = IdentityKey::generate(&mut rand_core::OsRng);
    let tls = ServerTlsConfig::new(
        &other,
        &Domain::parse("broken.test").unwrap(),
        KeyExchange::ClassicalOnly,
    )
    .unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let (key, tls) = (key.clone(), tls.clone());
            std::thread::spawn(move || accept(stream, &key, &tls));
        }
    });
    port
}

/// The banner, then TLS as cmtpd does it (the ClientHello picks a raw
/// public key or the certificate) — or, bug, CMTP in clear for a peer that
/// does not start TLS.
fn accept(mut s: TcpStream, key: &IdentityKey, tls: &ServerTlsConfig) {
    let domain = Domain::parse("broken.test").unwrap();
    if s.write_all(ready_line(&domain, "broken 0").as_bytes())
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
        return serve(s, key, first);
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
    let config = tls.for_client(accepted.client_hello().server_cert_types());
    match accepted.into_connection(config) {
        Ok(conn) => serve(rustls::StreamOwned::new(conn, s), key, Vec::new()),
        Err((_, mut alert)) => {
            let _ = alert.write(&mut s);
        }
    }
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

/// Commands, inside TLS or (bug) in clear; `buf` holds what came already.
fn serve<S: Read + Write>(s: S, key: &IdentityKey, mut buf: Vec<u8>) {
    let domain = Domain::parse("broken.test").unwrap();
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
                    // Bug: OBAI is answered but the connection stays open.
                    Command::Obai => c.reply(Status::Success, b"bye", d, 0),
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
