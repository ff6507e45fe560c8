//! The rules of PROTOCOL.md §4–§7 and §12–§13 on an in-memory client/server
//! pair: no sockets, no sleeps; time is a value the test moves.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::client::{
    ClientConnection, ClientEvent, ConnectionError, MAX_REPLY_BODY, PeerMisbehaved,
};
use super::server::{
    CloseReason, ExchangeKind, ServerConfig, ServerConnection, ServerEvent, mail_digest,
};
use crate::command::{Command, request_digest};
use crate::crypto::IdentityKey;
use crate::limits::MessageLimits;
use crate::message::{Message, Source};
use crate::names::{Account, Address, Domain};
use crate::payload::{DeliveryFailure, FailureReason};
use crate::reply::{Reply, ReplyBinding, Status, body_hash, decode_reply};
use crate::tls::ClientTlsConfig;

fn domain() -> Domain {
    Domain::parse("a.test").unwrap()
}

fn config() -> ServerConfig {
    let mut c = ServerConfig::new(domain(), IdentityKey::from_seed(&[7; 32]));
    c.limits = MessageLimits {
        max_message_size: 64 * 1024,
        max_attachments: 4,
        max_log: 1024,
        max_hops: 3,
    };
    c.help = "help text\n".into();
    c
}

/// What the tests' application did with the events it was given.
#[derive(Debug, Default)]
struct App {
    /// Stored form of the accepted message so far.
    staged: Vec<u8>,
    /// Messages the application completed.
    stored: Vec<[u8; 32]>,
    aborted: usize,
    bad_inputs: usize,
    /// Refuse MAIL at the envelope with this status.
    refuse_mail: Option<(Status, Vec<u8>)>,
    own_line: Vec<u8>,
    /// The message size last announced.
    announced: u64,
    /// Leave requests unanswered (to look at the connection while it waits).
    hold: bool,
    held: Vec<ServerEvent<u32>>,
}

struct Pair {
    now: Instant,
    client: ClientConnection,
    server: ServerConnection<u32>,
    app: App,
    events: Vec<ClientEvent>,
    error: Option<ConnectionError>,
}

impl Pair {
    fn new() -> Pair {
        Pair::with(config())
    }

    fn with(config: ServerConfig) -> Pair {
        let now = Instant::now();
        let expected = config.key.public();
        let server = ServerConnection::new(Arc::new(config), [42; 32], now);
        let client = ClientConnection::new(Some(expected), Duration::from_secs(30), now);
        let mut p = Pair {
            now,
            client,
            server,
            app: App {
                own_line: b"2026-12-01T00:00:00Z a.test accepted\n".to_vec(),
                ..App::default()
            },
            events: Vec::new(),
            error: None,
        };
        p.pump();
        assert!(matches!(p.events.remove(0), ClientEvent::Ready { .. }));
        p
    }

    /// Moves bytes both ways and runs the application until nothing moves.
    fn pump(&mut self) {
        loop {
            let mut moved = false;
            let up = self.client.take_output(self.now);
            if !up.is_empty() {
                moved = true;
                self.server.handle_input(&up, self.now);
            }
            while let Some(ev) = self.server.poll_event(self.now) {
                moved = true;
                self.handle(ev);
            }
            let down = self.server.take_output();
            if !down.is_empty() {
                moved = true;
                self.client.handle_input(&down, self.now);
            }
            if self.server.is_closed() && down.is_empty() {
                self.client.handle_eof();
            }
            loop {
                match self.client.poll_event(self.now) {
                    Ok(Some(ev)) => {
                        moved = true;
                        self.events.push(ev);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        self.error.get_or_insert(e);
                        break;
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn handle(&mut self, ev: ServerEvent<u32>) {
        let app = &mut self.app;
        if app.hold
            && !matches!(
                ev,
                ServerEvent::BadInput(_) | ServerEvent::Answered(_) | ServerEvent::MailData(_)
            )
        {
            app.held.push(ev);
            return;
        }
        let s = &mut self.server;
        match ev {
            ServerEvent::Request(Command::KeyRequest { user: Some(u), .. }) => {
                s.reply(Status::KeyNotAvailable, format!("no user {u}").as_bytes())
            }
            ServerEvent::Request(Command::Login { .. }) => {
                s.begin_exchange(ExchangeKind::Login, 1234);
                s.reply(Status::Success, b"challenge")
            }
            ServerEvent::LoginFinish { ke3, exchange } => {
                assert_eq!(exchange, 1234);
                if ke3 == [1; 64] {
                    s.logged_in_as(Account::parse("alice").unwrap());
                    s.reply(Status::Success, b"xzibit")
                } else {
                    s.reply(Status::AuthFailed, b"wrong password or unknown user")
                }
            }
            ServerEvent::Request(Command::List) => s.reply(Status::Success, b"listing"),
            ServerEvent::Request(Command::Fetch { id }) => {
                let body = vec![id as u8; 100_000];
                s.begin_streamed_reply(body.len() as u64);
                for chunk in body.chunks(7_000) {
                    s.stream_body(chunk);
                }
            }
            ServerEvent::Request(other) => s.reply(Status::Success, other.word().as_bytes()),
            ServerEvent::RegFinish { .. } => s.reply(Status::Success, b""),
            ServerEvent::MailAnnounced(total) => app.announced = total,
            ServerEvent::MailEnvelope { envelope: env, .. } => match app.refuse_mail.clone() {
                Some((status, body)) => s.refuse_mail(status, &body),
                None => {
                    env.encode_head(env.log_len + app.own_line.len() as u64, &mut app.staged);
                    s.accept_mail(app.own_line.len() as u64);
                }
            },
            ServerEvent::MailData(b) => app.staged.extend_from_slice(&b),
            ServerEvent::MailLogEnd => app.staged.extend_from_slice(&app.own_line),
            ServerEvent::MailEnd { trailer, hash } => {
                app.staged.extend_from_slice(&trailer);
                app.stored.push(hash);
                s.reply(Status::Success, &hash);
            }
            ServerEvent::MailAborted => {
                app.aborted += 1;
                app.staged.clear();
            }
            ServerEvent::BadInput(_) => app.bad_inputs += 1,
            ServerEvent::Answered(_) => {}
        }
    }

    fn send(&mut self, cmd: &Command) -> u64 {
        let seq = self.client.send(cmd, MAX_REPLY_BODY, self.now);
        self.pump();
        seq
    }

    /// Sends raw bytes as a client that does not follow the rules would.
    fn send_raw(&mut self, bytes: &[u8]) {
        self.client.send_raw(bytes);
        self.pump();
    }

    fn replies(&mut self) -> Vec<Reply> {
        self.events
            .drain(..)
            .filter_map(|e| match e {
                ClientEvent::Reply { reply, .. } => Some(reply),
                _ => None,
            })
            .collect()
    }

    fn statuses(&mut self) -> Vec<Status> {
        self.replies().into_iter().map(|r| r.status).collect()
    }

    fn ohai(&mut self) {
        self.send(&Command::Ohai);
        assert_eq!(self.statuses(), [Status::Success]);
        assert!(self.client.greeting().is_some());
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
        self.client.handle_timeout(self.now);
        self.pump();
    }
}

/// Replies as the raw bytes a server sent (for checks a verifying client
/// would refuse to show).
fn raw_replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while let Some((r, n)) = decode_reply(bytes, u64::MAX).unwrap() {
        out.push(r);
        bytes = &bytes[n..];
    }
    assert!(bytes.is_empty(), "trailing bytes");
    out
}

fn verifies(r: &Reply, seq: u64, request: [u8; 32]) -> bool {
    let key = IdentityKey::from_seed(&[7; 32]).public();
    let binding = ReplyBinding {
        nonce: [42; 32],
        seq,
        request,
    };
    super::client::verify(
        &binding,
        &r.header(),
        &body_hash(&r.body),
        &r.signature,
        &key,
    )
    .is_ok()
}

fn server_alone() -> (ServerConnection<u32>, Instant) {
    let now = Instant::now();
    let mut s = ServerConnection::new(Arc::new(config()), [42; 32], now);
    let banner = s.take_output();
    assert!(banner.starts_with(b"554 a.test CMTP/2 "));
    (s, now)
}

/// A client that speaks TLS to a server but writes and reads raw
/// plaintext inside it: to send what a well-behaved client never would.
struct Raw {
    now: Instant,
    server: ServerConnection<u32>,
    tls: rustls::ClientConnection,
    banner: bool,
    plain: Vec<u8>,
}

impl Raw {
    fn new() -> Raw {
        Raw::with(config())
    }

    fn with(config: ServerConfig) -> Raw {
        let now = Instant::now();
        let server = ServerConnection::new(Arc::new(config), [42; 32], now);
        let mut tls = ClientTlsConfig::default_shared().connect().unwrap();
        tls.set_buffer_limit(None);
        let mut r = Raw {
            now,
            server,
            tls,
            banner: false,
            plain: Vec::new(),
        };
        r.shuttle();
        assert!(r.server.is_established());
        r
    }

    /// Moves TLS records both ways until nothing moves (the server's events
    /// are left to the test).
    fn shuttle(&mut self) {
        loop {
            let mut up = Vec::new();
            while self.tls.wants_write() {
                self.tls.write_tls(&mut up).unwrap();
            }
            if !up.is_empty() {
                self.server.handle_input(&up, self.now);
            }
            let mut down = self.server.take_output();
            if !self.banner && !down.is_empty() {
                let end = down.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
                down.drain(..end);
                self.banner = true;
            }
            if !down.is_empty() {
                let (plain, _) = crate::tls::decrypt(&mut self.tls, &down, &mut Vec::new());
                self.plain.extend_from_slice(&plain);
            }
            if up.is_empty() && down.is_empty() {
                return;
            }
        }
    }

    /// Sends `bytes` as they are, inside TLS.
    fn input(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.tls.writer().write_all(bytes).unwrap();
        self.shuttle();
    }

    /// Runs the server's events (left unanswered); how many there were.
    fn events(&mut self) -> usize {
        let mut n = 0;
        while self.server.poll_event(self.now).is_some() {
            n += 1;
        }
        self.shuttle();
        n
    }

    /// The replies that arrived since the last call.
    fn replies(&mut self) -> Vec<Reply> {
        self.shuttle();
        let out = raw_replies(&self.plain);
        self.plain.clear();
        out
    }
}

/// A server played by the test, inside real TLS: it can say what cmtpd
/// never would (replies with wrong signatures, bindings, sizes).
struct Fake {
    now: Instant,
    client: ClientConnection,
    tls: rustls::ServerConnection,
    key: IdentityKey,
}

impl Fake {
    fn new() -> Fake {
        let now = Instant::now();
        let key = IdentityKey::from_seed(&[7; 32]);
        let tls_config =
            crate::tls::ServerTlsConfig::new(&key, &domain(), Default::default()).unwrap();
        let raw = [rustls::server::CertificateType::RawPublicKey];
        let mut tls = rustls::ServerConnection::new(tls_config.for_client(Some(&raw))).unwrap();
        tls.set_buffer_limit(None);
        let mut client = ClientConnection::new(None, Duration::from_secs(30), now);
        client.handle_input(crate::banner::ready_line(&domain(), "fake").as_bytes(), now);
        let mut f = Fake {
            now,
            client,
            tls,
            key,
        };
        f.shuttle();
        assert!(matches!(
            f.client.poll_event(now),
            Ok(Some(ClientEvent::Ready { .. }))
        ));
        f
    }

    fn shuttle(&mut self) {
        loop {
            let up = self.client.take_output(self.now);
            if !up.is_empty() {
                let (_plain, r) = crate::tls::decrypt(&mut self.tls, &up, &mut Vec::new());
                r.unwrap();
            }
            let mut down = Vec::new();
            while self.tls.wants_write() {
                self.tls.write_tls(&mut down).unwrap();
            }
            if !down.is_empty() {
                self.client.handle_input(&down, self.now);
            }
            if up.is_empty() && down.is_empty() {
                return;
            }
        }
    }

    /// Sends plaintext bytes to the client inside TLS.
    fn send(&mut self, bytes: &[u8]) {
        use std::io::Write;
        self.tls.writer().write_all(bytes).unwrap();
        self.shuttle();
    }

    /// A reply signed by the server key for `seq` and `request`.
    fn reply(&self, seq: u64, request: [u8; 32], status: Status, body: &[u8]) -> Vec<u8> {
        let header = crate::reply::ReplyHeader {
            version: crate::reply::REPLY_VERSION,
            status,
            body_len: body.len() as u64,
        };
        let binding = ReplyBinding {
            nonce: [42; 32],
            seq,
            request,
        };
        let data = binding.signed_data(&header, &body_hash(body));
        let signature = self.key.sign(crate::crypto::SignatureTag::Reply, &[&data]);
        let mut out = Vec::new();
        header.encode(&mut out);
        out.extend_from_slice(body);
        out.extend_from_slice(&signature);
        out
    }

    /// OHAI and its greeting (seq 0).
    fn greet(&mut self) {
        self.client.send(&Command::Ohai, MAX_REPLY_BODY, self.now);
        self.shuttle();
        let g = crate::payload::Greeting {
            domain: domain(),
            software: "fake".into(),
            extensions: Vec::new(),
            key: self.key.public(),
            nonce: [42; 32],
            max_message_size: 1 << 20,
            max_attachments: 4,
        };
        let r = self.reply(
            0,
            request_digest(b"OHAI\0"),
            Status::Success,
            g.to_text().as_bytes(),
        );
        self.send(&r);
        assert!(matches!(
            self.client.poll_event(self.now),
            Ok(Some(ClientEvent::Reply { .. }))
        ));
    }
}

fn message(to: &str, from: &str, log: &[u8]) -> Message {
    let from = Address::parse(from).unwrap();
    Message {
        version: 1,
        destination: Address::parse(to).unwrap(),
        source: Source::user(from),
        log: log.to_vec(),
        body: vec![5; 3000],
        attachments: vec![vec![6; 10], vec![]],
        trailer: [9; 64],
    }
}

// §4.1 The banner

#[test]
fn the_banner_comes_first_and_names_the_domain_and_protocol() {
    let (_, _) = server_alone();
    let p = Pair::new();
    assert_eq!(p.client.banner_domain(), Some("a.test"));
}

#[test]
fn a_client_recognises_an_smtp_server_at_once() {
    let now = Instant::now();
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    c.handle_input(b"220 mx.example ESMTP Postfix\r\n", now);
    assert!(matches!(
        c.poll_event(now),
        Err(ConnectionError::SmtpServer { .. })
    ));
}

#[test]
fn a_busy_banner_is_a_busy_error() {
    let now = Instant::now();
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    c.handle_input(b"421 a.test CMTP/2 too many connections\r\n", now);
    assert!(matches!(
        c.poll_event(now),
        Err(ConnectionError::Busy { .. })
    ));
}

#[test]
fn a_banner_without_a_line_end_is_refused_at_its_limit() {
    let now = Instant::now();
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    c.handle_input(&[b'x'; 600], now);
    assert_eq!(
        c.poll_event(now).unwrap_err(),
        ConnectionError::Misbehaved(PeerMisbehaved::BannerTooLong)
    );
}

// §4.2 Command framing

#[test]
fn pipelined_commands_are_answered_in_order() {
    let mut p = Pair::new();
    p.client.send(&Command::Ohai, MAX_REPLY_BODY, p.now);
    p.client.send(&Command::Noop, MAX_REPLY_BODY, p.now);
    p.client.send(&Command::Help, MAX_REPLY_BODY, p.now);
    p.pump();
    let r = p.replies();
    assert_eq!(r.len(), 3);
    assert_eq!(r[1].body, b"");
    assert_eq!(r[2].body, b"help text\n");
}

#[test]
fn an_unknown_word_gets_badcommand_and_the_connection_stays() {
    let mut p = Pair::new();
    p.ohai();
    p.send_raw(b"FROB\0");
    p.send(&Command::Noop);
    // The client counts a raw command as no request: it sees one reply more
    // than it asked for. The server's bytes say what happened.
    assert!(matches!(
        p.error,
        Some(ConnectionError::Misbehaved(PeerMisbehaved::UnexpectedReply))
    ));
    let mut r = Raw::new();
    let now = r.now;
    r.input(b"FROB\0NOOP\0");
    assert!(matches!(
        r.server.poll_event(now),
        Some(ServerEvent::BadInput(_))
    ));
    assert!(matches!(
        r.server.poll_event(now),
        Some(ServerEvent::Answered("NOOP"))
    ));
    assert!(r.server.poll_event(now).is_none());
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::BadCommand);
    assert!(verifies(&rs[0], 0, request_digest(b"FROB\0")));
    assert_eq!(rs[1].status, Status::Success);
    assert!(!r.server.is_closed());
}

#[test]
fn an_invalid_argument_gets_badargument_and_the_connection_stays() {
    let mut r = Raw::new();
    r.input(b"KEYREQUEST\0../etc\0\0NOOP\0");
    r.events();
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::BadArgument);
    assert!(verifies(
        &rs[0],
        0,
        request_digest(b"KEYREQUEST\0../etc\0\0")
    ));
    assert_eq!(rs[1].status, Status::Success);
}

#[test]
fn a_blob_of_the_wrong_size_is_skipped_with_badargument() {
    let mut r = Raw::new();
    let mut cmd = b"LOGINFINISH\0".to_vec();
    cmd.extend_from_slice(&3u32.to_be_bytes());
    cmd.extend_from_slice(b"abc");
    r.input(&cmd);
    r.input(b"NOOP\0");
    r.events();
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::BadArgument);
    // Bound to the whole command, the skipped blob included (§5.3).
    assert!(verifies(&rs[0], 0, request_digest(&cmd)));
    assert_eq!(rs[1].status, Status::Success);
}

#[test]
fn over_long_words_arguments_and_blobs_get_toolong_and_close() {
    let mut long_arg = b"KEYREQUEST\0".to_vec();
    long_arg.extend([b'a'; 256]);
    let mut big_blob = b"LOGIN\0alice\0".to_vec();
    big_blob.extend_from_slice(&8193u32.to_be_bytes());
    for input in [b"ABCDEFGHIJKLMNOPQ\0".to_vec(), long_arg, big_blob] {
        let mut r = Raw::new();
        r.input(&input);
        r.input(b"NOOP\0");
        r.events();
        let rs = r.replies();
        assert_eq!(rs.len(), 1, "nothing after the close");
        assert_eq!(rs[0].status, Status::TooLong);
        // Input that could not be framed binds to 32 zero bytes.
        assert!(verifies(&rs[0], 0, [0; 32]));
        assert!(r.server.is_closed());
        assert_eq!(r.server.close_reason(), Some(&CloseReason::TooLong));
    }
}

#[test]
fn ten_bad_commands_are_answered_then_toomanyerrors_closes() {
    let mut r = Raw::new();
    for _ in 0..10 {
        r.input(b"FROB\0");
    }
    r.input(b"NOOP\0");
    r.events();
    let rs = r.replies();
    let statuses: Vec<_> = rs.iter().map(|r| r.status.clone()).collect();
    let mut want = vec![Status::BadCommand; 10];
    want.push(Status::TooManyErrors);
    assert_eq!(statuses, want);
    assert!(verifies(&rs[10], 10, [0; 32]));
    assert!(r.server.is_closed());
}

#[test]
fn a_good_command_resets_the_bad_command_count() {
    let mut r = Raw::new();
    for _ in 0..9 {
        r.input(b"FROB\0");
    }
    r.input(b"NOOP\0");
    for _ in 0..9 {
        r.input(b"KEYREQUEST\0a/b\0\0");
    }
    r.events();
    assert!(!r.server.is_closed());
    let rs = r.replies();
    assert_eq!(rs.len(), 19);
}

#[test]
fn an_smtp_command_in_clear_gets_an_smtp_refusal_and_a_close() {
    let (mut s, now) = server_alone();
    s.handle_input(b"EHLO client.example\r\n", now);
    assert!(s.poll_event(now).is_none());
    assert_eq!(
        String::from_utf8(s.take_output()).unwrap(),
        "554 5.5.0 a.test this is a CMTP server (CMTP/2), SMTP is not spoken here\r\n"
    );
    assert!(s.is_closed());
    assert_eq!(s.close_reason(), Some(&CloseReason::Smtp("EHLO")));
    // A line that arrives in pieces is refused once it is whole.
    let (mut s, now) = server_alone();
    s.handle_input(b"QU", now);
    assert!(!s.is_closed());
    s.handle_input(b"IT\r\n", now);
    assert!(s.take_output().starts_with(b"221 2.0.0 a.test"));
}

#[test]
fn a_cmtp1_client_gets_a_refusal_in_clear() {
    let (mut s, now) = server_alone();
    s.handle_input(b"OHAI\0", now);
    let line = String::from_utf8(s.take_output()).unwrap();
    assert!(
        line.starts_with("554 5.7.0 a.test CMTP/2: TLS 1.3 is required"),
        "{line}"
    );
    assert_eq!(s.close_reason(), Some(&CloseReason::Clear));
}

#[test]
fn a_client_that_says_nothing_is_closed_at_the_command_timeout() {
    let (mut s, now) = server_alone();
    let t = config().timeouts.command;
    assert_eq!(s.poll_timeout(), Some(now + t));
    s.handle_timeout(now + t);
    assert!(s.is_closed());
    assert!(s.take_output().is_empty(), "nothing to say outside TLS");
}

#[test]
fn a_client_learns_a_cmtp1_server_at_once() {
    let now = Instant::now();
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    c.handle_input(
        b"554 a.test CMTP/1 cmtpd ready; this is not an SMTP server\r\n",
        now,
    );
    assert!(matches!(
        c.poll_event(now),
        Err(ConnectionError::OldProtocol { .. })
    ));
}

// §4.4 The protected connection

#[test]
fn the_handshake_authenticates_the_servers_key_over_the_hybrid_group() {
    let p = Pair::new();
    assert_eq!(
        p.client.tls_key(),
        Some(IdentityKey::from_seed(&[7; 32]).public())
    );
    assert_eq!(
        p.client.key_exchange_group(),
        Some(rustls::NamedGroup::X25519MLKEM768)
    );
    assert_eq!(p.server.key_exchange_group(), p.client.key_exchange_group());
    assert_eq!(p.server.raw_public_key(), Some(true));
}

#[test]
fn both_ends_derive_the_same_channel_binding_and_no_other_connection_does() {
    let p = Pair::new();
    let q = Pair::new();
    let b = p.client.channel_binding().unwrap();
    assert_eq!(Some(b), p.server.channel_binding());
    assert_ne!(Some(b), q.client.channel_binding());
}

#[test]
fn a_classical_only_client_negotiates_x25519() {
    let now = Instant::now();
    let mut s: ServerConnection<u32> = ServerConnection::new(Arc::new(config()), [42; 32], now);
    let tls = ClientTlsConfig::new(crate::tls::KeyExchange::ClassicalOnly);
    let mut c = ClientConnection::with_tls(&tls, None, Duration::from_secs(30), now);
    for _ in 0..10 {
        let up = c.take_output(now);
        s.handle_input(&up, now);
        c.handle_input(&s.take_output(), now);
        let _ = c.poll_event(now);
    }
    assert_eq!(c.key_exchange_group(), Some(rustls::NamedGroup::X25519));
    assert!(s.is_established());
}

/// Everything a client sent on one connection (handshake, then `NOOP`),
/// delivered at once to a new connection — an attacker replaying a
/// recording — fails the handshake and closes at once: the server neither
/// answers the command nor waits for more.
#[test]
fn a_recorded_client_flight_replayed_at_once_fails_and_closes_at_once() {
    let now = Instant::now();
    // Record a client's bytes while it talks to p's server.
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    let mut s: ServerConnection<u32> = ServerConnection::new(Arc::new(config()), [1; 32], now);
    let mut recorded = Vec::new();
    c.send(&Command::Noop, MAX_REPLY_BODY, now);
    for _ in 0..10 {
        let up = c.take_output(now);
        recorded.extend_from_slice(&up);
        s.handle_input(&up, now);
        while let Some(ev) = s.poll_event(now) {
            drop(ev);
        }
        c.handle_input(&s.take_output(), now);
        while let Ok(Some(_)) = c.poll_event(now) {}
    }
    assert!(s.is_established());
    // The replay, in one piece, on a new server connection.
    let mut replay: ServerConnection<u32> = ServerConnection::new(Arc::new(config()), [2; 32], now);
    replay.handle_input(&recorded, now);
    assert!(replay.poll_event(now).is_none());
    assert!(
        replay.is_closed(),
        "the replayed handshake is still waiting"
    );
    // The client's Finished was made for another handshake's keys.
    assert!(
        matches!(replay.close_reason(), Some(CloseReason::Tls(why)) if why.contains("decrypt")),
        "{:?}",
        replay.close_reason()
    );
}

// §4.3 Timeouts

#[test]
fn an_idle_connection_times_out_with_timeout_bound_to_zeros() {
    let mut r = Raw::new();
    let now = r.now;
    let idle = config().timeouts.idle;
    assert_eq!(r.server.poll_timeout(), Some(now + idle));
    r.server.handle_timeout(now + idle - Duration::from_secs(1));
    assert!(!r.server.is_closed());
    r.server.handle_timeout(now + idle);
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::Timeout);
    assert!(verifies(&rs[0], 0, [0; 32]));
    assert_eq!(r.server.close_reason(), Some(&CloseReason::Timeout));
}

#[test]
fn a_client_learns_why_an_idle_connection_was_closed() {
    let mut p = Pair::new();
    p.ohai();
    p.advance(config().timeouts.idle);
    assert!(matches!(
        p.error,
        Some(ConnectionError::ClosedByServer {
            status: Status::Timeout,
            ..
        })
    ));
}

#[test]
fn a_command_must_be_complete_within_the_command_timeout() {
    let mut r = Raw::new();
    let now = r.now;
    r.input(b"NOOP\0KEYREQ");
    r.events();
    let command = config().timeouts.command;
    assert_eq!(r.server.poll_timeout(), Some(now + command));
    // A byte at a time does not extend it.
    r.now = now + Duration::from_secs(20);
    r.input(b"U");
    r.events();
    assert_eq!(r.server.poll_timeout(), Some(now + command));
    r.server.handle_timeout(now + command);
    let replies = r.replies();
    assert_eq!(replies.last().unwrap().status, Status::Timeout);
    assert!(r.server.is_closed());
}
#[test]
fn a_slow_message_gets_timeout_bound_to_mail_and_is_aborted() {
    let mut r = Raw::new();
    let now = r.now;
    let m = message("bob@a.test", "carol@c.test", b"");
    let bytes = m.to_bytes();
    r.input(b"MAIL\0");
    r.input(&bytes[..400]);
    assert!(matches!(
        r.server.poll_event(now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    r.server.accept_mail(10);
    r.events();
    let deadline = r.server.poll_timeout().unwrap();
    let t = config().timeouts;
    assert!(deadline >= now + t.data_grace);
    r.server.handle_timeout(deadline);
    assert!(matches!(
        r.server.poll_event(deadline),
        Some(ServerEvent::MailAborted)
    ));
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::Timeout);
    assert!(verifies(&rs[0], 0, mail_digest()));
    assert!(r.server.is_closed());
}

// §5 Replies

#[test]
fn every_reply_is_bound_to_nonce_position_and_request() {
    let mut p = Pair::new();
    p.ohai();
    p.send(&Command::Noop);
    let mut r = Raw::new();
    r.input(b"OHAI\0NOOP\0HELP\0");
    r.events();
    let rs = r.replies();
    for (seq, (reply, frame)) in rs
        .iter()
        .zip([&b"OHAI\0"[..], b"NOOP\0", b"HELP\0"])
        .enumerate()
    {
        assert!(verifies(reply, seq as u64, request_digest(frame)));
        assert!(!verifies(reply, seq as u64 + 1, request_digest(frame)));
        assert!(!verifies(reply, seq as u64, request_digest(b"LIST\0")));
    }
}

#[test]
fn a_server_showing_another_key_is_refused_before_any_command_is_sent() {
    let now = Instant::now();
    let mut s: ServerConnection<u32> = ServerConnection::new(Arc::new(config()), [42; 32], now);
    let other = IdentityKey::from_seed(&[8; 32]).public();
    let mut c = ClientConnection::new(Some(other), Duration::from_secs(30), now);
    c.send(&Command::Ohai, MAX_REPLY_BODY, now);
    let mut error = None;
    for _ in 0..10 {
        let up = c.take_output(now);
        s.handle_input(&up, now);
        while s.poll_event(now).is_some() {}
        c.handle_input(&s.take_output(), now);
        if let Err(e) = c.poll_event(now) {
            error = Some(e);
            break;
        }
    }
    assert!(
        matches!(error, Some(ConnectionError::KeyMismatch { .. })),
        "{error:?}"
    );
    // The OHAI never left the client: the server answered nothing.
    assert_eq!(s.replies_sent(), 0);
}
#[test]
fn a_reply_not_signed_by_the_servers_key_is_refused() {
    let mut f = Fake::new();
    f.greet();
    f.client.send(&Command::Noop, MAX_REPLY_BODY, f.now);
    let mut reply = f.reply(1, request_digest(b"NOOP\0"), Status::Success, b"");
    // Flip a byte of the signature (inside TLS, where only the server can).
    let last = reply.len() - 1;
    reply[last] ^= 1;
    f.send(&reply);
    assert!(matches!(
        f.client.poll_event(f.now),
        Err(ConnectionError::BadSignature(Status::Success))
    ));
}

#[test]
fn a_reply_for_another_request_is_refused() {
    let mut f = Fake::new();
    f.greet();
    f.client.send(&Command::Noop, MAX_REPLY_BODY, f.now);
    f.send(&f.reply(1, request_digest(b"HELP\0"), Status::Success, b""));
    assert!(matches!(
        f.client.poll_event(f.now),
        Err(ConnectionError::BadSignature(Status::Success))
    ));
}
#[test]
fn a_reply_that_answers_nothing_is_refused() {
    let mut f = Fake::new();
    f.greet();
    f.send(&f.reply(1, request_digest(b"NOOP\0"), Status::Success, b""));
    assert_eq!(
        f.client.poll_event(f.now).unwrap_err(),
        ConnectionError::Misbehaved(PeerMisbehaved::UnexpectedReply)
    );
}
#[test]
fn a_reply_dripped_a_byte_at_a_time_is_cut_off_at_the_whole_reply_deadline() {
    let mut p = Pair::new();
    p.ohai();
    p.client.send(&Command::Noop, MAX_REPLY_BODY, p.now);
    let up = p.client.take_output(p.now);
    p.server.handle_input(&up, p.now);
    p.server.poll_event(p.now);
    let down = p.server.take_output();
    let start = p.now;
    for (i, b) in down.iter().enumerate().take(down.len() - 1) {
        let t = start + Duration::from_secs(i as u64);
        p.client.handle_input(&[*b], t);
        p.client.handle_timeout(t);
        if p.client.poll_event(t).is_err() {
            assert!(t >= start + Duration::from_secs(30));
            assert!(t < start + Duration::from_secs(32));
            return;
        }
    }
    panic!("a dripping reply was never cut off");
}

#[test]
fn a_body_over_the_requests_limit_is_refused_before_it_arrives() {
    let mut p = Pair::new();
    p.ohai();
    p.client.send(&Command::Help, 4, p.now);
    p.pump();
    assert!(matches!(
        p.error,
        Some(ConnectionError::Misbehaved(PeerMisbehaved::MalformedReply(
            _
        )))
    ));
}

// §6 The commands

#[test]
fn ohai_describes_the_server_and_its_nonce() {
    let mut p = Pair::new();
    p.ohai();
    let g = p.client.greeting().unwrap();
    assert_eq!(g.domain, domain());
    assert_eq!(g.nonce, [42; 32]);
    assert_eq!(g.max_message_size, 64 * 1024);
    assert_eq!(g.key, IdentityKey::from_seed(&[7; 32]).public());
}

#[test]
fn the_seed_commands_are_stateless() {
    // No OHAI first: each is answered whatever came before.
    let mut p = Pair::new();
    p.send(&Command::Noop);
    p.send(&Command::KeyRequest {
        user: Some(Account::parse("zed").unwrap()),
        domain: None,
    });
    p.send(&Command::Help);
    assert_eq!(
        p.statuses(),
        [Status::Success, Status::KeyNotAvailable, Status::Success]
    );
}

#[test]
fn obai_says_bye_and_closes() {
    let mut p = Pair::new();
    p.send(&Command::Obai);
    assert_eq!(p.replies()[0].body, b"bye");
    assert_eq!(p.server.close_reason(), Some(&CloseReason::Obai));
    assert!(p.client.is_closed_by_peer());
}

#[test]
fn mailbox_commands_need_a_login() {
    let mut p = Pair::new();
    p.ohai();
    for cmd in [
        Command::List,
        Command::Fetch { id: 1 },
        Command::Delete { id: 1 },
        Command::Password {
            request: vec![0; 32],
        },
    ] {
        p.send(&cmd);
        let r = p.replies();
        assert_eq!(r[0].status, Status::AuthRequired, "{cmd:?}");
    }
    assert_eq!(p.app.held.len(), 0);
}

#[test]
fn a_finish_without_its_start_fails_and_keeps_the_connection() {
    let mut p = Pair::new();
    p.ohai();
    p.send(&Command::LoginFinish { ke3: vec![1; 64] });
    p.send(&Command::RegFinish { bundle: vec![1] });
    assert_eq!(p.statuses(), [Status::Failure, Status::Failure]);
    assert!(p.server.logged_in().is_none());
}

#[test]
fn a_login_opens_the_mailbox_until_another_login_starts() {
    let mut p = Pair::new();
    p.ohai();
    let login = Command::Login {
        user: Account::parse("alice").unwrap(),
        ke1: vec![0; 96],
    };
    p.send(&login);
    p.send(&Command::LoginFinish { ke3: vec![1; 64] });
    p.send(&Command::List);
    assert_eq!(p.statuses(), vec![Status::Success; 3]);
    // The exchange was used up: a second LOGINFINISH has nothing to finish.
    p.send(&Command::LoginFinish { ke3: vec![1; 64] });
    assert_eq!(p.statuses(), [Status::Failure]);
    // A new LOGIN ends the login, whatever its outcome.
    p.send(&login);
    p.send(&Command::LoginFinish { ke3: vec![2; 64] });
    p.send(&Command::List);
    assert_eq!(
        p.statuses(),
        [Status::Success, Status::AuthFailed, Status::AuthRequired]
    );
}

#[test]
fn a_streamed_reply_is_checked_at_its_end() {
    let mut p = Pair::new();
    p.ohai();
    p.send(&Command::Login {
        user: Account::parse("alice").unwrap(),
        ke1: vec![0; 96],
    });
    p.send(&Command::LoginFinish { ke3: vec![1; 64] });
    p.replies();
    p.client
        .send_streamed(&Command::Fetch { id: 3 }, 1 << 20, p.now);
    p.pump();
    let mut body = Vec::new();
    let mut ended = false;
    for ev in p.events.drain(..) {
        match ev {
            ClientEvent::StreamHeader { header, .. } => assert_eq!(header.body_len, 100_000),
            ClientEvent::StreamData { data, .. } => body.extend_from_slice(&data),
            ClientEvent::StreamEnd { .. } => ended = true,
            other => panic!("{other:?}"),
        }
    }
    assert!(ended && p.error.is_none());
    assert_eq!(body, vec![3; 100_000]);
}

#[test]
fn the_application_answers_one_request_at_a_time() {
    let mut p = Pair::new();
    p.app.hold = true;
    p.client.send(&Command::List, MAX_REPLY_BODY, p.now);
    p.client.send(&Command::Noop, MAX_REPLY_BODY, p.now);
    p.pump();
    // LIST needs a login: answered by the connection; NOOP too.
    assert_eq!(p.statuses(), [Status::AuthRequired, Status::Success]);
    p.client.send(
        &Command::KeyRequest {
            user: None,
            domain: None,
        },
        MAX_REPLY_BODY,
        p.now,
    );
    p.client.send(&Command::Noop, MAX_REPLY_BODY, p.now);
    p.pump();
    // The NOOP waits behind the KEYREQUEST the application holds.
    assert_eq!(p.app.held.len(), 1);
    assert!(p.server.is_awaiting_application());
    assert_eq!(p.server.poll_timeout(), None);
    assert!(p.replies().is_empty());
    p.server.reply(Status::Success, b"bundle");
    p.pump();
    assert_eq!(p.statuses(), [Status::Success, Status::Success]);
}

// §7 Messages after MAIL

fn mail(p: &mut Pair, m: &Message) {
    p.client.send(&Command::Mail, MAX_REPLY_BODY, p.now);
    p.client.send_raw(&m.to_bytes());
    p.pump();
}

#[test]
fn an_accepted_message_reaches_the_application_in_its_stored_form() {
    let mut p = Pair::new();
    p.ohai();
    let m = message(
        "bob@a.test",
        "carol@c.test",
        b"2026-11-30T00:00:00Z c.test submitted\n",
    );
    mail(&mut p, &m);
    let r = p.replies();
    assert_eq!(r[0].status, Status::Success);
    assert_eq!(r[0].body, m.hash());
    assert_eq!(p.app.stored, [m.hash()]);
    let mut stored = m.clone();
    stored.log.extend_from_slice(&p.app.own_line);
    assert_eq!(p.app.staged, stored.to_bytes());
    // The announced size grew with each attachment to the message size.
    assert_eq!(p.app.announced, (m.encoded_len() - m.log.len()) as u64);
    // The connection goes on.
    p.send(&Command::Noop);
    assert_eq!(p.statuses(), [Status::Success]);
}

#[test]
fn an_early_refusal_discards_the_rest_and_keeps_the_connection() {
    let mut p = Pair::new();
    p.ohai();
    let no_user = DeliveryFailure::new(FailureReason::NoSuchUser, "no user zed here").to_bytes();
    p.app.refuse_mail = Some((Status::DeliveryFailure, no_user));
    mail(&mut p, &message("zed@a.test", "carol@c.test", b""));
    p.send(&Command::Noop);
    assert_eq!(p.statuses(), [Status::DeliveryFailure, Status::Success]);
    assert_eq!(p.app.aborted, 0, "nothing was staged");
    assert!(p.app.stored.is_empty());
}

#[test]
fn invalid_names_get_badmessage_and_the_connection_stays() {
    let mut r = Raw::new();
    let mut m = message("bob@a.test", "carol@c.test", b"").to_bytes();
    // Upper case in a hashed structure is not canonical (§3).
    let at = m.windows(3).position(|w| w == b"bob").unwrap();
    m[at] = b'B';
    r.input(b"MAIL\0");
    r.input(&m);
    r.input(b"NOOP\0");
    r.events();
    let rs = r.replies();
    assert_eq!(rs[0].status, Status::BadMessage);
    assert!(verifies(&rs[0], 0, mail_digest()));
    assert_eq!(rs[1].status, Status::Success);
}

#[test]
fn a_message_over_the_size_limit_gets_toobig_bound_to_mail_and_closes() {
    let mut p = Pair::new();
    p.ohai();
    let mut m = message("bob@a.test", "carol@c.test", b"");
    m.body = vec![0; 65 * 1024];
    mail(&mut p, &m);
    let r = p.replies();
    assert_eq!(r[0].status, Status::TooBig);
    assert_eq!(p.server.close_reason(), Some(&CloseReason::TooBig));
    assert!(p.app.stored.is_empty());
}

#[test]
fn a_message_over_the_hop_limit_is_refused_as_a_loop() {
    let mut p = Pair::new();
    p.ohai();
    let log = b"1 x.test a\n2 y.test b\n3 z.test c\n";
    mail(&mut p, &message("bob@a.test", "carol@c.test", log));
    let r = p.replies();
    assert_eq!(r[0].status, Status::DeliveryFailure);
    let f = DeliveryFailure::decode(&r[0].body).unwrap();
    assert_eq!(f.reason, Some(FailureReason::Loop));
    assert_eq!(p.app.aborted, 1, "the staged head is dropped");
    p.send(&Command::Noop);
    assert_eq!(p.statuses(), [Status::Success]);
}

#[test]
fn the_own_log_line_counts_against_the_log_limit() {
    let mut p = Pair::new();
    p.ohai();
    let line = vec![b'x'; 1024 - p.app.own_line.len() + 1];
    let mut log = line;
    log.push(b'\n');
    mail(&mut p, &message("bob@a.test", "carol@c.test", &log[1..]));
    let r = p.replies();
    let f = DeliveryFailure::decode(&r[0].body).unwrap();
    assert_eq!(f.reason, Some(FailureReason::Loop));
}

#[test]
fn a_peer_that_hangs_up_mid_message_aborts_it() {
    let mut r = Raw::new();
    let now = r.now;
    let bytes = message("bob@a.test", "carol@c.test", b"").to_bytes();
    r.input(b"MAIL\0");
    r.input(&bytes[..1000]);
    assert!(matches!(
        r.server.poll_event(now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    r.server.accept_mail(0);
    while let Some(ev) = r.server.poll_event(now) {
        assert!(matches!(
            ev,
            ServerEvent::MailData(_) | ServerEvent::MailLogEnd
        ));
    }
    r.server.handle_eof();
    assert!(matches!(
        r.server.poll_event(now),
        Some(ServerEvent::MailAborted)
    ));
    assert!(r.server.is_closed());
}

// Shutdown

#[test]
fn shutdown_closes_an_idle_connection_at_once() {
    let mut r = Raw::new();
    r.server.shutdown();
    assert_eq!(r.server.close_reason(), Some(&CloseReason::Shutdown));
    // TLS is closed properly: close_notify follows.
    r.shuttle();
    assert!(r.server.is_closed());
}

#[test]
fn shutdown_lets_a_message_in_progress_finish() {
    let mut p = Pair::new();
    p.ohai();
    let m = message("bob@a.test", "carol@c.test", b"");
    let bytes = m.to_bytes();
    p.client.send(&Command::Mail, MAX_REPLY_BODY, p.now);
    p.client.send_raw(&bytes[..500]);
    p.pump();
    p.server.shutdown();
    assert!(!p.server.is_closed());
    p.client.send_raw(&bytes[500..]);
    p.pump();
    assert_eq!(p.statuses(), [Status::Success]);
    assert_eq!(p.app.stored, [m.hash()]);
    assert_eq!(p.server.close_reason(), Some(&CloseReason::Shutdown));
}

#[test]
fn messages_refused_early_one_after_another_are_each_answered() {
    let mut p = Pair::new();
    p.ohai();
    let no_relay = DeliveryFailure::new(FailureReason::NoRelay, "no relay").to_bytes();
    p.app.refuse_mail = Some((Status::DeliveryFailure, no_relay));
    let m = message("bob@b.test", "alice@a.test", b"");
    mail(&mut p, &m);
    mail(&mut p, &m);
    let bytes = m.to_bytes();
    // Also when the message arrives in pieces after the refusal.
    p.client.send(&Command::Mail, MAX_REPLY_BODY, p.now);
    p.client.send_raw(&bytes[..200]);
    p.pump();
    p.client.send_raw(&bytes[200..]);
    p.pump();
    assert_eq!(p.statuses(), vec![Status::DeliveryFailure; 3]);
}

#[test]
fn a_refused_message_whose_rest_never_comes_gets_timeout_bound_to_zeros() {
    let mut p = Pair::new();
    p.ohai();
    let no_user = DeliveryFailure::new(FailureReason::NoSuchUser, "no user zed here").to_bytes();
    p.app.refuse_mail = Some((Status::DeliveryFailure, no_user));
    let bytes = message("zed@a.test", "carol@c.test", b"").to_bytes();
    p.client.send(&Command::Mail, MAX_REPLY_BODY, p.now);
    p.client.send_raw(&bytes[..400]);
    p.pump();
    assert_eq!(p.statuses(), [Status::DeliveryFailure]);
    let deadline = p.server.poll_timeout().unwrap();
    p.advance(deadline - p.now);
    // The client sees why the server closed: a TIMEOUT that answers no request.
    assert!(matches!(
        p.error,
        Some(ConnectionError::ClosedByServer {
            status: Status::Timeout,
            ..
        })
    ));
    assert_eq!(p.server.close_reason(), Some(&CloseReason::Timeout));
}

#[test]
fn append_without_a_login_is_refused_and_its_message_read_and_dropped() {
    let mut p = Pair::new();
    p.ohai();
    let append = Command::Append {
        folder: crate::payload::mailbox::Folder::parse("Sent").unwrap(),
        flags: 1,
    };
    p.client.send(&append, MAX_REPLY_BODY, p.now);
    p.client
        .send_raw(&message("bob@a.test", "alice@a.test", b"").to_bytes());
    p.pump();
    p.send(&Command::Noop);
    assert_eq!(p.error, None);
    assert_eq!(p.statuses(), [Status::AuthRequired, Status::Success]);
    assert!(p.app.stored.is_empty());
}

#[test]
fn a_message_that_stalls_is_cut_off_within_one_window_whatever_its_size() {
    let mut config = config();
    config.limits.max_message_size = 16 << 20;
    let t = config.timeouts.clone();
    let mut r = Raw::with(config);
    let mut m = message("bob@a.test", "carol@c.test", b"");
    // 8 MiB: at the minimum rate it may take 8+ minutes as a whole, but not
    // a window without progress.
    m.body = vec![7; 8 << 20];
    let bytes = m.to_bytes();
    r.input(b"MAIL\0");
    r.input(&bytes[..500]);
    assert!(matches!(
        r.server.poll_event(r.now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    r.server.accept_mail(0);
    r.events();
    // A byte every 10 seconds: the window of `data_grace` passes without
    // the minimum rate's worth of bytes.
    let start = r.now;
    for i in 1..10u64 {
        r.now = start + Duration::from_secs(10 * i);
        r.server.handle_timeout(r.now);
        if r.server.is_closed() {
            break;
        }
        r.input(&bytes[500 + i as usize..501 + i as usize]);
        r.events();
    }
    assert_eq!(r.server.close_reason(), Some(&CloseReason::Timeout));
    assert!(r.now <= start + t.data_grace + Duration::from_secs(10));
}

#[test]
fn a_window_that_sees_the_minimum_rate_starts_a_new_one() {
    let mut config = config();
    config.timeouts.min_data_rate = 100;
    config.timeouts.data_grace = Duration::from_secs(10);
    let mut r = Raw::with(config);
    let mut m = message("bob@a.test", "carol@c.test", b"");
    m.body = vec![7; 40 * 1024];
    let bytes = m.to_bytes();
    r.input(b"MAIL\0");
    r.input(&bytes[..1000]);
    assert!(matches!(
        r.server.poll_event(r.now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    r.server.accept_mail(0);
    r.events();
    // 1,000 bytes (the rate's worth for a window) every 8 seconds: never cut.
    let start = r.now;
    for (i, chunk) in bytes[1000..].chunks(1000).enumerate() {
        r.now = start + Duration::from_secs(8 * (i as u64 + 1));
        r.server.handle_timeout(r.now);
        assert!(!r.server.is_closed(), "cut after {} s", 8 * (i + 1));
        r.input(chunk);
        while let Some(ev) = r.server.poll_event(r.now) {
            if let ServerEvent::MailEnd { .. } = ev {
                r.server.reply(Status::Success, b"stored");
            }
        }
        if r.server.in_message() {
            continue;
        }
        break;
    }
    assert!(!r.server.in_message(), "the message completed");
}

#[test]
fn a_connection_not_logged_in_is_let_go_at_the_session_deadline() {
    let mut r = Raw::new();
    let t = config().timeouts;
    let start = r.now;
    // A NOOP every 25 seconds keeps it from idling out ...
    let mut i = 1;
    while start + Duration::from_secs(25 * i) < start + t.stranger_session {
        r.now = start + Duration::from_secs(25 * i);
        r.server.handle_timeout(r.now);
        assert!(!r.server.is_closed());
        r.input(b"NOOP\0");
        r.events();
        i += 1;
    }
    // ... but not past the session deadline.
    r.now = start + t.stranger_session;
    r.server.handle_timeout(r.now);
    let replies = r.replies();
    let last = replies.last().unwrap();
    assert_eq!(last.status, Status::Timeout);
    assert!(last.text().contains("not logged in"), "{}", last.text());
    assert!(r.server.is_closed());
}

#[test]
fn a_logged_in_connection_has_no_session_deadline() {
    let mut p = Pair::new();
    p.ohai();
    p.send(&Command::Login {
        user: Account::parse("alice").unwrap(),
        ke1: vec![0; 96],
    });
    p.send(&Command::LoginFinish { ke3: vec![1; 64] });
    assert!(p.server.logged_in().is_some());
    let t = config().timeouts;
    let start = p.now;
    while p.now < start + t.stranger_session + Duration::from_secs(100) {
        p.advance(Duration::from_secs(60));
        p.send(&Command::Noop);
    }
    assert!(!p.server.is_closed());
}
