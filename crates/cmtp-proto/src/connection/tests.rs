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
    assert!(banner.starts_with(b"554 a.test CMTP/1 "));
    (s, now)
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
    c.handle_input(b"421 a.test CMTP/1 too many connections\r\n", now);
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
    let (mut s, now) = server_alone();
    s.handle_input(b"FROB\0NOOP\0", now);
    assert!(matches!(s.poll_event(now), Some(ServerEvent::BadInput(_))));
    assert!(matches!(
        s.poll_event(now),
        Some(ServerEvent::Answered("NOOP"))
    ));
    assert!(s.poll_event(now).is_none());
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::BadCommand);
    assert!(verifies(&r[0], 0, request_digest(b"FROB\0")));
    assert_eq!(r[1].status, Status::Success);
    assert!(!s.is_closed());
}

#[test]
fn an_invalid_argument_gets_badargument_and_the_connection_stays() {
    let (mut s, now) = server_alone();
    s.handle_input(b"KEYREQUEST\0../etc\0\0NOOP\0", now);
    while s.poll_event(now).is_some() {}
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::BadArgument);
    assert!(verifies(
        &r[0],
        0,
        request_digest(b"KEYREQUEST\0../etc\0\0")
    ));
    assert_eq!(r[1].status, Status::Success);
}

#[test]
fn a_blob_of_the_wrong_size_is_skipped_with_badargument() {
    let (mut s, now) = server_alone();
    let mut cmd = b"LOGINFINISH\0".to_vec();
    cmd.extend_from_slice(&3u32.to_be_bytes());
    cmd.extend_from_slice(b"abc");
    s.handle_input(&cmd, now);
    s.handle_input(b"NOOP\0", now);
    while s.poll_event(now).is_some() {}
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::BadArgument);
    // Bound to the whole command, the skipped blob included (§5.3).
    assert!(verifies(&r[0], 0, request_digest(&cmd)));
    assert_eq!(r[1].status, Status::Success);
}

#[test]
fn over_long_words_arguments_and_blobs_get_toolong_and_close() {
    let mut long_arg = b"KEYREQUEST\0".to_vec();
    long_arg.extend([b'a'; 256]);
    let mut big_blob = b"LOGIN\0alice\0".to_vec();
    big_blob.extend_from_slice(&8193u32.to_be_bytes());
    for input in [b"ABCDEFGHIJKLMNOPQ\0".to_vec(), long_arg, big_blob] {
        let (mut s, now) = server_alone();
        s.handle_input(&input, now);
        s.handle_input(b"NOOP\0", now);
        while s.poll_event(now).is_some() {}
        let r = raw_replies(&s.take_output());
        assert_eq!(r.len(), 1, "nothing after the close");
        assert_eq!(r[0].status, Status::TooLong);
        // Input that could not be framed binds to 32 zero bytes.
        assert!(verifies(&r[0], 0, [0; 32]));
        assert!(s.is_closed());
        assert_eq!(s.close_reason(), Some(&CloseReason::TooLong));
    }
}

#[test]
fn ten_bad_commands_are_answered_then_toomanyerrors_closes() {
    let (mut s, now) = server_alone();
    for _ in 0..10 {
        s.handle_input(b"FROB\0", now);
    }
    s.handle_input(b"NOOP\0", now);
    while s.poll_event(now).is_some() {}
    let r = raw_replies(&s.take_output());
    let statuses: Vec<_> = r.iter().map(|r| r.status.clone()).collect();
    let mut want = vec![Status::BadCommand; 10];
    want.push(Status::TooManyErrors);
    assert_eq!(statuses, want);
    assert!(verifies(&r[10], 10, [0; 32]));
    assert!(s.is_closed());
}

#[test]
fn a_good_command_resets_the_bad_command_count() {
    let (mut s, now) = server_alone();
    for _ in 0..9 {
        s.handle_input(b"FROB\0", now);
    }
    s.handle_input(b"NOOP\0", now);
    for _ in 0..9 {
        s.handle_input(b"KEYREQUEST\0a/b\0\0", now);
    }
    while s.poll_event(now).is_some() {}
    assert!(!s.is_closed());
    let r = raw_replies(&s.take_output());
    assert_eq!(r.len(), 19);
}

#[test]
fn an_smtp_command_gets_an_smtp_refusal_and_a_close() {
    let (mut s, now) = server_alone();
    s.handle_input(b"EHLO client.example\r\n", now);
    assert!(matches!(s.poll_event(now), Some(ServerEvent::BadInput(_))));
    assert_eq!(
        String::from_utf8(s.take_output()).unwrap(),
        "554 5.5.0 a.test this is a CMTP server (CMTP/1), SMTP is not spoken here\r\n"
    );
    assert!(s.is_closed());
    let (mut s, now) = server_alone();
    s.handle_input(b"QUIT\r\n", now);
    while s.poll_event(now).is_some() {}
    assert!(s.take_output().starts_with(b"221 2.0.0 a.test"));
}

// §4.3 Timeouts

#[test]
fn an_idle_connection_times_out_with_timeout_bound_to_zeros() {
    let (mut s, now) = server_alone();
    let idle = config().timeouts.idle;
    assert_eq!(s.poll_timeout(), Some(now + idle));
    s.handle_timeout(now + idle - Duration::from_secs(1));
    assert!(!s.is_closed());
    s.handle_timeout(now + idle);
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::Timeout);
    assert!(verifies(&r[0], 0, [0; 32]));
    assert_eq!(s.close_reason(), Some(&CloseReason::Timeout));
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
    let (mut s, now) = server_alone();
    s.handle_input(b"NOOP\0KEYREQ", now);
    while s.poll_event(now).is_some() {}
    let command = config().timeouts.command;
    assert_eq!(s.poll_timeout(), Some(now + command));
    // A byte at a time does not extend it.
    s.handle_input(b"U", now + Duration::from_secs(20));
    s.poll_event(now + Duration::from_secs(20));
    assert_eq!(s.poll_timeout(), Some(now + command));
    s.handle_timeout(now + command);
    let r = raw_replies(&s.take_output());
    assert_eq!(r.last().unwrap().status, Status::Timeout);
    assert!(s.is_closed());
}

#[test]
fn a_slow_message_gets_timeout_bound_to_mail_and_is_aborted() {
    let (mut s, now) = server_alone();
    let m = message("bob@a.test", "carol@c.test", b"");
    let bytes = m.to_bytes();
    s.handle_input(b"MAIL\0", now);
    s.handle_input(&bytes[..400], now);
    assert!(matches!(
        s.poll_event(now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    s.accept_mail(10);
    while s.poll_event(now).is_some() {}
    let deadline = s.poll_timeout().unwrap();
    let t = config().timeouts;
    assert!(deadline >= now + t.data_grace);
    s.handle_timeout(deadline);
    assert!(matches!(
        s.poll_event(deadline),
        Some(ServerEvent::MailAborted)
    ));
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::Timeout);
    assert!(verifies(&r[0], 0, mail_digest()));
    assert!(s.is_closed());
}

// §5 Replies

#[test]
fn every_reply_is_bound_to_nonce_position_and_request() {
    let mut p = Pair::new();
    p.ohai();
    p.send(&Command::Noop);
    let (mut s, now) = server_alone();
    s.handle_input(b"OHAI\0NOOP\0HELP\0", now);
    while s.poll_event(now).is_some() {}
    let r = raw_replies(&s.take_output());
    for (seq, (reply, frame)) in r
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
fn a_reply_under_another_key_is_refused() {
    let now = Instant::now();
    let mut s: ServerConnection<u32> = ServerConnection::new(Arc::new(config()), [42; 32], now);
    let other = IdentityKey::from_seed(&[8; 32]).public();
    let mut c = ClientConnection::new(Some(other), Duration::from_secs(30), now);
    c.handle_input(&s.take_output(), now);
    c.poll_event(now).unwrap();
    c.send(&Command::Ohai, MAX_REPLY_BODY, now);
    s.handle_input(&c.take_output(now), now);
    s.poll_event(now);
    c.handle_input(&s.take_output(), now);
    assert!(matches!(
        c.poll_event(now),
        Err(ConnectionError::KeyMismatch { .. })
    ));
}

#[test]
fn a_tampered_reply_is_refused() {
    let mut p = Pair::new();
    p.ohai();
    p.client.send(&Command::Noop, MAX_REPLY_BODY, p.now);
    let up = p.client.take_output(p.now);
    p.server.handle_input(&up, p.now);
    p.server.poll_event(p.now);
    let mut down = p.server.take_output();
    // Flip a byte of the signature.
    let last = down.len() - 1;
    down[last] ^= 1;
    p.client.handle_input(&down, p.now);
    assert!(matches!(
        p.client.poll_event(p.now),
        Err(ConnectionError::BadSignature(Status::Success))
    ));
}

#[test]
fn a_reply_that_answers_nothing_is_refused() {
    let (mut s, now) = server_alone();
    s.handle_input(b"NOOP\0", now);
    s.poll_event(now);
    let mut c = ClientConnection::new(None, Duration::from_secs(30), now);
    c.handle_input(
        b"554 a.test CMTP/1 cmtpd ready; this is not an SMTP server\r\n",
        now,
    );
    c.poll_event(now).unwrap();
    c.handle_input(&s.take_output(), now);
    assert_eq!(
        c.poll_event(now).unwrap_err(),
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
    let (mut s, now) = server_alone();
    let mut m = message("bob@a.test", "carol@c.test", b"").to_bytes();
    // Upper case in a hashed structure is not canonical (§3).
    let at = m.windows(3).position(|w| w == b"bob").unwrap();
    m[at] = b'B';
    s.handle_input(b"MAIL\0", now);
    s.handle_input(&m, now);
    s.handle_input(b"NOOP\0", now);
    while s.poll_event(now).is_some() {}
    let r = raw_replies(&s.take_output());
    assert_eq!(r[0].status, Status::BadMessage);
    assert!(verifies(&r[0], 0, mail_digest()));
    assert_eq!(r[1].status, Status::Success);
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
    let (mut s, now) = server_alone();
    let bytes = message("bob@a.test", "carol@c.test", b"").to_bytes();
    s.handle_input(b"MAIL\0", now);
    s.handle_input(&bytes[..1000], now);
    assert!(matches!(
        s.poll_event(now),
        Some(ServerEvent::MailEnvelope { .. })
    ));
    s.accept_mail(0);
    while let Some(ev) = s.poll_event(now) {
        assert!(matches!(
            ev,
            ServerEvent::MailData(_) | ServerEvent::MailLogEnd
        ));
    }
    s.handle_eof();
    assert!(matches!(s.poll_event(now), Some(ServerEvent::MailAborted)));
    assert!(s.is_closed());
}

// Shutdown

#[test]
fn shutdown_closes_an_idle_connection_at_once() {
    let (mut s, _) = server_alone();
    s.shutdown();
    assert_eq!(s.close_reason(), Some(&CloseReason::Shutdown));
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
