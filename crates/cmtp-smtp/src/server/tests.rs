//! The SMTP server machine in memory: every rule without a socket.

use super::*;

fn t0() -> Instant {
    Instant::now()
}

fn server() -> (SmtpServer, Instant) {
    let now = t0();
    let mut cfg = ServerConfig::new("mx.b.test");
    cfg.max_message_size = 1000;
    cfg.max_recipients = 3;
    cfg.starttls = true;
    let mut s = SmtpServer::new(cfg, now);
    let greeting = out(&mut s);
    assert_eq!(greeting, "220 mx.b.test ESMTP cmtpd\r\n");
    (s, now)
}

fn out(s: &mut SmtpServer) -> String {
    String::from_utf8(s.take_output()).unwrap()
}

/// Feeds `input`, accepting every MAIL and RCPT, and returns the events
/// seen and the output.
fn run(s: &mut SmtpServer, input: &[u8], now: Instant) -> (Vec<Event>, String) {
    s.receive(input, now);
    let mut events = Vec::new();
    while let Some(e) = s.poll_event() {
        match &e {
            Event::MailFrom { .. } | Event::RcptTo { .. } => s.accept(),
            _ => {}
        }
        events.push(e);
    }
    (events, out(s))
}

fn codes(output: &str) -> Vec<&str> {
    output
        .lines()
        .filter(|l| l.as_bytes().get(3) == Some(&b' '))
        .map(|l| &l[..3])
        .collect()
}

fn message(events: &[Event]) -> Option<&Transaction> {
    events.iter().find_map(|e| match e {
        Event::Message(t) => Some(t),
        _ => None,
    })
}

#[test]
fn ehlo_lists_the_extensions() {
    let (mut s, now) = server();
    let (ev, o) = run(&mut s, b"EHLO client.a.test\r\n", now);
    assert_eq!(
        o,
        "250-mx.b.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n"
    );
    assert_eq!(
        ev,
        [Event::Hello {
            name: "client.a.test".into(),
            extended: true
        }]
    );
}

#[test]
fn a_pipelined_transaction_is_answered_in_order_and_delivered() {
    let (mut s, now) = server();
    let input = b"EHLO c.a.test\r\nMAIL FROM:<alice@a.test> BODY=8BITMIME\r\nRCPT TO:<bob@b.test>\r\nRCPT TO:<carol@b.test>\r\nDATA\r\n";
    let (ev, o) = run(&mut s, input, now);
    assert_eq!(codes(&o), ["250", "250", "250", "250", "354"]);
    assert!(message(&ev).is_none());
    let (ev, o) = run(&mut s, b"Subject: hi\r\n\r\n..dot\r\nline\r\n.\r\n", now);
    assert_eq!(o, "");
    let t = message(&ev).expect("the message");
    assert_eq!(t.data, b"Subject: hi\r\n\r\n.dot\r\nline\r\n");
    assert_eq!(t.reverse_path.as_ref().unwrap().to_string(), "alice@a.test");
    assert_eq!(t.recipients.len(), 2);
    assert_eq!(t.body, BodyType::EightBitMime);
    // Nothing more is read until the application answers.
    s.receive(b"QUIT\r\n", now);
    assert_eq!(s.poll_event(), None);
    s.accept_message("abc");
    assert_eq!(s.poll_event(), Some(Event::Closed));
    assert_eq!(
        out(&mut s),
        "250 2.0.0 Ok: queued as abc\r\n221 2.0.0 mx.b.test closing connection\r\n"
    );
}

#[test]
fn commands_wait_for_each_decision() {
    let (mut s, now) = server();
    s.receive(
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<x@b.test>\r\nRCPT TO:<bob@b.test>\r\n",
        now,
    );
    assert!(matches!(s.poll_event(), Some(Event::Hello { .. })));
    assert!(matches!(s.poll_event(), Some(Event::MailFrom { .. })));
    assert_eq!(s.poll_event(), None);
    s.accept();
    let Some(Event::RcptTo { forward_path }) = s.poll_event() else {
        panic!()
    };
    assert_eq!(forward_path.local, "x");
    s.refuse(Reply::new(550, "5.1.1", "no such user"));
    assert!(matches!(s.poll_event(), Some(Event::RcptTo { .. })));
    s.accept();
    let o = out(&mut s);
    assert!(
        o.ends_with("250 2.1.0 Ok\r\n550 5.1.1 no such user\r\n250 2.1.5 Ok\r\n"),
        "{o}"
    );
}

#[test]
fn a_bare_lf_in_data_refuses_the_message_and_closes() {
    let (mut s, now) = server();
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    // The smuggling pattern: "\n.\r\n" must not end the message here, and
    // what follows must never be read as commands.
    let (ev, o) = run(
        &mut s,
        b"Subject: x\r\n\r\nhello\n.\r\nMAIL FROM:<evil@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\nsmuggled\r\n.\r\n",
        now,
    );
    assert!(message(&ev).is_none(), "{ev:?}");
    assert!(o.starts_with("550 5.5.2 "), "{o}");
    assert!(s.is_closed());
    assert_eq!(ev.last(), Some(&Event::Closed));
}

#[test]
fn a_bare_cr_in_data_refuses_the_message() {
    let (mut s, now) = server();
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    let (ev, o) = run(&mut s, b"a\rb\r\n.\r\n", now);
    assert!(message(&ev).is_none());
    assert!(o.starts_with("550 5.5.2 "));
}

#[test]
fn a_bare_cr_at_a_chunk_boundary_of_a_long_line_is_seen() {
    let (mut s, now) = server();
    s.cfg.max_message_size = 100_000;
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    let mut long = vec![b'x'; DATA_FLUSH - 1];
    long.push(b'\r');
    let (ev, _) = run(&mut s, &long, now);
    assert!(ev.is_empty());
    let (ev, o) = run(&mut s, b"y\r\n.\r\n", now);
    assert!(message(&ev).is_none());
    assert!(o.starts_with("550 5.5.2 "), "{o}");
}

#[test]
fn long_lines_are_kept_whole() {
    let (mut s, now) = server();
    s.cfg.max_message_size = 100_000;
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    let mut body = b".".to_vec();
    body.extend(vec![b'z'; 20_000]);
    body.extend_from_slice(b"\r\n.\r\n");
    let (ev, _) = run(&mut s, &body, now);
    let t = message(&ev).unwrap();
    assert_eq!(t.data.len(), 20_002);
    assert_eq!(t.data[0], b'z', "the leading dot was unstuffed");
}

#[test]
fn a_size_over_the_limit_is_refused_at_mail_from() {
    let (mut s, now) = server();
    let (ev, o) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test> SIZE=1001\r\nMAIL FROM:<a@a.test> SIZE=1000\r\n",
        now,
    );
    assert_eq!(codes(&o), ["250", "552", "250"]);
    assert!(o.contains("552 5.3.4 "));
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::MailFrom { .. }))
            .count(),
        1
    );
}

#[test]
fn a_message_larger_than_announced_is_read_and_refused() {
    let (mut s, now) = server();
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    let mut body = Vec::new();
    for _ in 0..50 {
        body.extend_from_slice(b"0123456789012345678901234567890123456789\r\n");
    }
    body.extend_from_slice(b".\r\nNOOP\r\n");
    let (ev, o) = run(&mut s, &body, now);
    assert!(message(&ev).is_none());
    assert_eq!(codes(&o), ["552", "250"], "{o}");
    assert!(!s.is_closed());
}

#[test]
fn a_message_refused_while_it_arrives_is_read_to_its_end_and_answered() {
    let (mut s, now) = server();
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    run(&mut s, b"first line\r\n", now);
    assert_eq!(s.data_len(), 12);
    s.refuse_data(Reply::new(452, "4.3.1", "over budget"));
    assert_eq!(s.data_len(), 0);
    let (ev, o) = run(&mut s, b"more\r\n.\r\nNOOP\r\n", now);
    assert!(message(&ev).is_none());
    assert_eq!(o, "452 4.3.1 over budget\r\n250 2.0.0 Ok\r\n");
}

#[test]
fn out_of_sequence_commands_are_refused() {
    let (mut s, now) = server();
    let (_, o) = run(&mut s, b"MAIL FROM:<a@a.test>\r\n", now);
    assert_eq!(o, "503 5.5.1 Error: send EHLO first\r\n");
    let (_, o) = run(&mut s, b"EHLO c\r\nRCPT TO:<b@b.test>\r\nDATA\r\n", now);
    assert_eq!(codes(&o), ["250", "503", "503"]);
    let (_, o) = run(&mut s, b"MAIL FROM:<a@a.test>\r\nDATA\r\n", now);
    assert_eq!(codes(&o), ["250", "554"]);
    let (_, o) = run(&mut s, b"MAIL FROM:<a@a.test>\r\n", now);
    assert_eq!(codes(&o), ["503"], "nested MAIL");
    let (_, o) = run(&mut s, b"RSET\r\nMAIL FROM:<>\r\n", now);
    assert_eq!(codes(&o), ["250", "250"]);
}

#[test]
fn bad_syntax_gets_5xx_and_the_connection_stays() {
    let (mut s, now) = server();
    let (ev, o) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:a@a.test\r\nMAIL FROM:<a@a.test> FOO=1\r\nMAIL FROM:<a@@a.test>\r\nMAIL TO:<a@a.test>\r\nNOOP\r\n",
        now,
    );
    assert_eq!(codes(&o), ["250", "501", "555", "501", "501", "250"]);
    assert!(!ev.iter().any(|e| matches!(e, Event::MailFrom { .. })));
}

#[test]
fn command_lines_must_end_in_crlf() {
    let (mut s, now) = server();
    let (ev, o) = run(&mut s, b"EHLO c\nNOOP\r\n", now);
    assert_eq!(codes(&o), ["500", "250"]);
    assert!(ev.is_empty(), "EHLO with a bare LF was not taken: {ev:?}");
}

#[test]
fn too_many_bad_commands_close_the_connection() {
    let (mut s, now) = server();
    let (ev, o) = run(&mut s, &b"XYZZY\r\n".repeat(12), now);
    assert_eq!(codes(&o).len(), 11);
    assert!(o.ends_with("421 4.7.0 mx.b.test Error: too many errors\r\n"));
    assert_eq!(ev, [Event::Closed]);
}

#[test]
fn an_over_long_command_line_is_refused_and_skipped() {
    let (mut s, now) = server();
    let mut line = b"NOOP ".to_vec();
    line.extend(vec![b'a'; 5000]);
    line.extend_from_slice(b"\r\nNOOP\r\n");
    let (_, o) = run(&mut s, &line, now);
    assert_eq!(codes(&o), ["500", "250"], "{o}");
}

#[test]
fn too_many_recipients_get_452() {
    let (mut s, now) = server();
    let (ev, o) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<b1@b.test>\r\nRCPT TO:<b2@b.test>\r\nRCPT TO:<b3@b.test>\r\nRCPT TO:<b4@b.test>\r\n",
        now,
    );
    assert_eq!(codes(&o), ["250", "250", "250", "250", "250", "452"]);
    assert_eq!(
        ev.iter()
            .filter(|e| matches!(e, Event::RcptTo { .. }))
            .count(),
        3
    );
}

#[test]
fn starttls_discards_pipelined_plaintext_and_starts_over() {
    let (mut s, now) = server();
    let (ev, o) = run(
        &mut s,
        b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@a.test>\r\n",
        now,
    );
    assert_eq!(codes(&o), ["250", "220"]);
    assert_eq!(ev.last(), Some(&Event::StartTls));
    assert!(!s.wants_input());
    s.tls_established(now);
    assert!(s.is_tls());
    // The injected MAIL is gone; EHLO is needed again and no longer offers STARTTLS.
    let (ev, o) = run(&mut s, b"MAIL FROM:<a@a.test>\r\nEHLO c\r\n", now);
    assert!(o.starts_with("503 5.5.1 Error: send EHLO first\r\n"));
    assert!(!o.contains("STARTTLS"));
    assert!(matches!(ev[0], Event::Hello { .. }));
    let (_, o) = run(&mut s, b"STARTTLS\r\n", now);
    assert_eq!(codes(&o), ["503"]);
}

#[test]
fn starttls_without_a_certificate_is_454_and_required_tls_refuses_mail() {
    let now = t0();
    let mut cfg = ServerConfig::new("mx");
    cfg.require_tls = false;
    let mut s = SmtpServer::new(cfg, now);
    out(&mut s);
    let (_, o) = run(&mut s, b"EHLO c\r\nSTARTTLS\r\n", now);
    assert!(!o.contains("STARTTLS\r\n"));
    assert!(o.ends_with("454 4.7.0 TLS not available\r\n"));

    let mut cfg = ServerConfig::new("mx");
    cfg.starttls = true;
    cfg.require_tls = true;
    let mut s = SmtpServer::new(cfg, now);
    out(&mut s);
    let (_, o) = run(&mut s, b"EHLO c\r\nMAIL FROM:<a@a.test>\r\n", now);
    assert!(o.ends_with("530 5.7.0 Must issue a STARTTLS command first\r\n"));
}

#[test]
fn timeouts_close_with_421_but_not_while_the_application_decides() {
    let (mut s, now) = server();
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(300)));
    s.receive(b"EHLO c\r\nMAIL FROM:<a@a.test>\r\n", now);
    while let Some(e) = s.poll_event() {
        if matches!(e, Event::MailFrom { .. }) {
            break;
        }
    }
    assert_eq!(s.poll_timeout(), None);
    s.accept();
    let later = now + Duration::from_secs(301);
    s.receive(b"", now);
    s.handle_timeout(later);
    assert!(s.is_closed());
    assert!(out(&mut s).ends_with("421 4.4.2 mx.b.test Error: timeout exceeded\r\n"));
}

#[test]
fn data_uses_the_data_timeout() {
    let (mut s, now) = server();
    s.cfg.data_timeout = Duration::from_secs(10);
    run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n",
        now,
    );
    s.receive(b"partial", now);
    assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(10)));
}

#[test]
fn refusing_a_message_resets_the_transaction_and_421_closes() {
    let (mut s, now) = server();
    let (_, _) = run(
        &mut s,
        b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\nhi\r\n.\r\n",
        now,
    );
    s.refuse(Reply::new(451, "4.3.0", "try later"));
    let (_, o) = run(&mut s, b"RCPT TO:<bob@b.test>\r\n", now);
    assert!(o.starts_with("451 4.3.0 try later\r\n503 "), "{o}");
    let (_, _) = run(&mut s, b"MAIL FROM:<a@a.test>\r\n", now);
    // 421 from the application (e.g. rate limit) closes.
    let (mut s2, now2) = server();
    s2.receive(b"EHLO c\r\nMAIL FROM:<a@a.test>\r\n", now2);
    while let Some(e) = s2.poll_event() {
        if matches!(e, Event::MailFrom { .. }) {
            s2.refuse(Reply::new(421, "4.7.0", "too fast"));
        }
    }
    assert!(s2.is_closed());
}

#[test]
fn the_input_held_while_deciding_is_bounded() {
    let (mut s, now) = server();
    s.receive(b"EHLO c\r\nMAIL FROM:<a@a.test>\r\n", now);
    while let Some(e) = s.poll_event() {
        if matches!(e, Event::MailFrom { .. }) {
            break;
        }
    }
    s.receive(&vec![b'N'; MAX_PENDING_INPUT], now);
    assert!(!s.wants_input());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever arrives, in whatever pieces: no panic, output is
        /// CRLF-framed replies, and memory stays within the limits.
        #[test]
        fn arbitrary_input_never_panics(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..20)) {
            let (mut s, now) = server();
            for c in chunks {
                s.receive(&c, now);
                while let Some(e) = s.poll_event() {
                    match e {
                        Event::MailFrom { .. } | Event::RcptTo { .. } => s.accept(),
                        Event::Message(t) => {
                            prop_assert!(t.data.len() as u64 <= s.config().max_message_size);
                            s.accept_message("x");
                        }
                        Event::StartTls => s.tls_established(now),
                        _ => {}
                    }
                }
                prop_assert!(s.input.len() <= MAX_PENDING_INPUT + 300);
                let o = s.take_output();
                prop_assert!(o.is_empty() || o.ends_with(b"\r\n"));
            }
        }

        /// A message made of well-formed lines comes out as it went in,
        /// after dot-stuffing and unstuffing.
        #[test]
        fn dot_stuffing_round_trips(lines in proptest::collection::vec("[ -~]{0,80}", 0..20)) {
            let (mut s, now) = server();
            s.cfg.max_message_size = 1 << 20;
            run(&mut s, b"EHLO c\r\nMAIL FROM:<a@a.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\n", now);
            let mut wire = Vec::new();
            let mut want = Vec::new();
            for l in &lines {
                if l.starts_with('.') { wire.push(b'.'); }
                wire.extend_from_slice(l.as_bytes());
                wire.extend_from_slice(b"\r\n");
                want.extend_from_slice(l.as_bytes());
                want.extend_from_slice(b"\r\n");
            }
            wire.extend_from_slice(b".\r\n");
            let (ev, _) = run(&mut s, &wire, now);
            prop_assert_eq!(&message(&ev).unwrap().data, &want);
        }
    }
}
