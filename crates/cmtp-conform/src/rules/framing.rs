//! §4 Connections and commands: the banner, command framing (inside TLS),
//! the limits on words, arguments and blobs, the bad-command limit,
//! timeouts and the per-address connection limit.

use std::time::{Duration, Instant};

use cmtp_proto::banner::Banner;
use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::reply::Status;

use super::{Ctx, unused_account};
use crate::probe::{Check, Probe, describe, expect_status, fail, read_banner};
use crate::transport::Transport;

/// Margin given to the target on top of a timeout it enforces.
fn margin(t: Duration) -> Duration {
    t + Duration::from_secs(5) + t / 10
}

pub(super) fn banner(cx: &mut Ctx<'_>) -> Check {
    let timeout = cx.cfg.reply_timeout;
    let mut t = Transport::connect(cx.addr, timeout)
        .map_err(|e| fail("a TCP connection", e.to_string()))?;
    let mut buf = Vec::new();
    let b = read_banner(&mut t, &mut buf, timeout)?;
    if !b.raw.ends_with(b"\r\n") {
        return Err(fail(
            "a banner line ending in CR LF",
            format!("{:?}", String::from_utf8_lossy(&b.raw)),
        ));
    }
    let domain = match &b.banner {
        Banner::Ready { domain } => domain,
        Banner::OldProtocol { .. } => {
            return Err(fail(
                "`554 <domain> CMTP/2 <software> ready; TLS 1.3 follows; this is not an SMTP server`",
                format!(
                    "a CMTP/1 banner (the first, unencrypted version): {:?}",
                    b.line
                ),
            ));
        }
        _ => {
            return Err(fail(
                "`554 <domain> CMTP/2 <software> ready; TLS 1.3 follows; this is not an SMTP server`",
                format!("{:?}", b.line),
            ));
        }
    };
    if cmtp_proto::names::Domain::parse_canonical(domain).is_err() {
        return Err(fail(
            "a canonical domain name as the banner's second field",
            format!("{domain:?}"),
        ));
    }
    if !buf.is_empty() {
        return Err(fail(
            "nothing after the banner until the client's ClientHello arrives",
            format!("{} more bytes", buf.len()),
        ));
    }
    if !b
        .line
        .ends_with(" ready; TLS 1.3 follows; this is not an SMTP server")
    {
        cx.note(format!(
            "the banner's text differs from the spec's wording: {:?}",
            b.line
        ));
    }
    Ok(())
}

pub(super) fn banner_names_domain(cx: &mut Ctx<'_>) -> Check {
    let want = cx.cfg.domain.as_ref().expect("needs Domain");
    let p = cx.probe()?;
    if p.banner_domain != want.as_str() {
        return Err(fail(
            format!("a banner naming {want}"),
            format!("{:?}", p.banner),
        ));
    }
    Ok(())
}

pub(super) fn pipelining(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let cmds = [
        Command::Noop,
        Command::Help,
        Command::KeyRequest {
            user: None,
            domain: None,
        },
        Command::Noop,
    ];
    let mut all = Vec::new();
    for c in &cmds {
        all.extend_from_slice(&c.to_bytes());
    }
    p.send(&all)?;
    for (i, c) in cmds.iter().enumerate() {
        let r = p.reply(request_digest(&c.to_bytes()), c.word())?;
        expect_status(
            &r,
            &Status::Success,
            &format!("SUCCESS to pipelined command {} ({})", i + 1, c.word()),
        )?;
    }
    Ok(())
}

pub(super) fn split_command(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let c = Command::KeyRequest {
        user: None,
        domain: None,
    };
    let bytes = c.to_bytes();
    for b in &bytes {
        p.send(std::slice::from_ref(b))?;
    }
    let r = p.reply(request_digest(&bytes), "KEYREQUEST sent byte by byte")?;
    expect_status(
        &r,
        &Status::Success,
        "SUCCESS to a KEYREQUEST that arrived one byte at a time",
    )
}

pub(super) fn seed_stateless(cx: &mut Ctx<'_>) -> Check {
    let mut p = cx.probe()?;
    let seq = [
        Command::Noop,
        Command::KeyRequest {
            user: None,
            domain: None,
        },
        Command::Help,
        Command::Noop,
    ];
    for c in &seq {
        p.expect_cmd(
            c,
            Status::Success,
            &format!(
                "SUCCESS to {} before any OHAI (seed commands are stateless)",
                c.word()
            ),
        )?;
    }
    // OHAI last: it gives the nonce, and the replies above are checked now.
    p.ohai()?;
    Ok(())
}

/// Sends `bytes` (one command) and expects BADCOMMAND, then a usable connection.
fn bad_command(cx: &mut Ctx<'_>, bytes: &[u8], why: &str) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.raw_cmd(bytes, &format!("{:?}", String::from_utf8_lossy(bytes)))?;
    expect_status(&r, &Status::BadCommand, why)?;
    p.expect_usable("BADCOMMAND")
}

pub(super) fn unknown_word(cx: &mut Ctx<'_>) -> Check {
    bad_command(cx, b"XYZZY\0", "BADCOMMAND to the unknown word XYZZY")
}

pub(super) fn word_16_bytes(cx: &mut Ctx<'_>) -> Check {
    bad_command(
        cx,
        b"ABCDEFGHIJKLMNOP\0",
        "BADCOMMAND to an unknown 16-byte word (16 bytes are within the limit)",
    )
}

pub(super) fn lower_case_word(cx: &mut Ctx<'_>) -> Check {
    bad_command(cx, b"noop\0", "BADCOMMAND to `noop` (words are upper case)")
}

/// Sends `bytes` and expects TOOLONG bound to 32 zero bytes, then a close.
fn too_long(cx: &mut Ctx<'_>, bytes: &[u8], what: &str) -> Check {
    let (mut p, _) = cx.greeted()?;
    p.send(bytes)?;
    let r = p.reply([0; 32], what)?;
    expect_status(&r, &Status::TooLong, &format!("TOOLONG to {what}"))?;
    p.expect_closed(cx.cfg.close_within, "TOOLONG")
}

pub(super) fn word_too_long(cx: &mut Ctx<'_>) -> Check {
    too_long(cx, b"ABCDEFGHIJKLMNOPQ", "17 bytes without a NUL")
}

pub(super) fn argument_255_bytes(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut b = b"KEYREQUEST\0".to_vec();
    b.extend(std::iter::repeat_n(b'a', 255));
    b.extend_from_slice(b"\0\0");
    let r = p.raw_cmd(&b, "KEYREQUEST with a 255-byte account")?;
    expect_status(
        &r,
        &Status::BadArgument,
        "BADARGUMENT to a 255-byte argument (framed, but not a valid account)",
    )?;
    p.expect_usable("BADARGUMENT")
}

pub(super) fn argument_too_long(cx: &mut Ctx<'_>) -> Check {
    let mut b = b"KEYREQUEST\0".to_vec();
    b.extend(std::iter::repeat_n(b'a', 256));
    too_long(cx, &b, "an argument of 256 bytes without a NUL")
}

pub(super) fn argument_not_utf8(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.raw_cmd(
        b"KEYREQUEST\0\xff\xfe\0\0",
        "KEYREQUEST with a non-UTF-8 account",
    )?;
    expect_status(
        &r,
        &Status::BadArgument,
        "BADARGUMENT to an argument that is not UTF-8",
    )?;
    p.expect_usable("BADARGUMENT")
}

pub(super) fn blob_over_limit(cx: &mut Ctx<'_>) -> Check {
    let mut b = format!("LOGIN\0{}\0", unused_account()).into_bytes();
    b.extend_from_slice(&8193u32.to_be_bytes());
    too_long(cx, &b, "a blob length of 8193 (no blob bytes sent)")
}

fn wrong_blob(cx: &mut Ctx<'_>, prefix: &[u8], len: usize, what: &str) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut b = prefix.to_vec();
    b.extend_from_slice(&(len as u32).to_be_bytes());
    b.extend(std::iter::repeat_n(0x5a, len));
    // The reply answers the whole command, the skipped blob included.
    let r = p.raw_cmd(&b, what)?;
    expect_status(&r, &Status::BadArgument, &format!("BADARGUMENT to {what}"))?;
    p.expect_usable("a skipped blob")
}

pub(super) fn blob_8192_wrong_size(cx: &mut Ctx<'_>) -> Check {
    let prefix = format!("LOGIN\0{}\0", unused_account()).into_bytes();
    wrong_blob(
        cx,
        &prefix,
        8192,
        "LOGIN with an 8192-byte KE1 (it takes 96)",
    )
}

pub(super) fn blob_wrong_size(cx: &mut Ctx<'_>) -> Check {
    wrong_blob(
        cx,
        b"LOGINFINISH\0",
        63,
        "LOGINFINISH with a 63-byte KE3 (it takes 64)",
    )
}

/// A bad command of each kind, alternating: unknown word, invalid argument.
fn nth_bad(i: u32) -> &'static [u8] {
    if i.is_multiple_of(2) {
        b"XYZZY\0"
    } else {
        b"KEYREQUEST\0-\0\0"
    }
}

pub(super) fn too_many_errors(cx: &mut Ctx<'_>) -> Check {
    let n = cx.cfg.limits.max_bad_commands;
    let (mut p, _) = cx.greeted()?;
    let mut all = Vec::new();
    for i in 0..n {
        all.extend_from_slice(nth_bad(i));
    }
    p.send(&all)?;
    for i in 0..n {
        let bytes = nth_bad(i);
        let want = if i.is_multiple_of(2) {
            Status::BadCommand
        } else {
            Status::BadArgument
        };
        let r = p.reply(
            request_digest(bytes),
            &format!("bad command {} of {n}", i + 1),
        )?;
        expect_status(
            &r,
            &want,
            &format!(
                "{want} to bad command {} of {n} (§4.2: the connection closes after {n} commands answered BADCOMMAND/BADARGUMENT)",
                i + 1
            ),
        )?;
    }
    // Then TOOMANYERRORS, which answers no command, and the close.
    let r = p.reply([0; 32], "the bad-command limit")?;
    expect_status(
        &r,
        &Status::TooManyErrors,
        &format!("TOOMANYERRORS after {n} consecutive bad commands"),
    )?;
    p.expect_closed(cx.cfg.close_within, "TOOMANYERRORS")
}

pub(super) fn error_streak_resets(cx: &mut Ctx<'_>) -> Check {
    let n = cx.cfg.limits.max_bad_commands.max(2) - 1;
    let (mut p, _) = cx.greeted()?;
    for round in 0..2 {
        for i in 0..n {
            let r = p.raw_cmd(nth_bad(i), "a bad command")?;
            if matches!(r.status, Status::TooManyErrors) {
                return Err(fail(
                    format!(
                        "BADCOMMAND/BADARGUMENT: only {n} bad commands in a row (round {})",
                        round + 1
                    ),
                    describe(&r),
                ));
            }
        }
        p.expect_usable(&format!("{n} bad commands"))?;
    }
    Ok(())
}

pub(super) fn command_timeout(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let wait = cx.cfg.timeouts.command;
    p.send(b"NOO")?;
    p.timeout = margin(wait);
    let started = Instant::now();
    let r = p.reply([0; 32], "a command left incomplete")?;
    expect_status(
        &r,
        &Status::Timeout,
        "TIMEOUT to a command not complete within the command timeout",
    )?;
    cx.note(format!(
        "TIMEOUT after {:.1}s (command timeout given: {}s)",
        started.elapsed().as_secs_f32(),
        wait.as_secs()
    ));
    p.expect_closed(cx.cfg.close_within, "TIMEOUT")
}

pub(super) fn idle_timeout(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let wait = cx.cfg.timeouts.idle;
    p.timeout = margin(wait);
    let started = Instant::now();
    let r = p.reply([0; 32], "an idle connection")?;
    expect_status(
        &r,
        &Status::Timeout,
        "TIMEOUT to a connection idle for the idle timeout",
    )?;
    cx.note(format!(
        "TIMEOUT after {:.1}s (idle timeout given: {}s)",
        started.elapsed().as_secs_f32(),
        wait.as_secs()
    ));
    p.expect_closed(cx.cfg.close_within, "TIMEOUT")
}

pub(super) fn message_timeout(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let wait = cx.cfg.timeouts.data_grace;
    // MAIL and the first 10 bytes of a header: the rest never comes.
    p.send(b"MAIL\0")?;
    p.send(&[0, 0, 0, 1, 0, 0, 0, 0, 0, 0])?;
    p.timeout = margin(wait);
    let started = Instant::now();
    // The reply answers MAIL: each MAIL gets exactly one reply, bound to
    // H("MAIL\0") whatever its status (§5.3; see the report on this reading).
    let r = p.reply(request_digest(b"MAIL\0"), "a message that stops arriving")?;
    expect_status(
        &r,
        &Status::Timeout,
        "TIMEOUT to a message that does not arrive in time",
    )?;
    cx.note(format!(
        "TIMEOUT after {:.1}s (allowance given: {}s)",
        started.elapsed().as_secs_f32(),
        wait.as_secs()
    ));
    p.expect_closed(cx.cfg.close_within, "TIMEOUT")
}

pub(super) fn message_timeout_after_refusal(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let wait = cx.cfg.timeouts.data_grace;
    // A message the server refuses from its envelope (NOSUCHUSER), of which
    // only half the body ever comes.
    let to = cmtp_proto::names::Address::new(unused_account(), cx.domain().clone());
    let from = cmtp_proto::names::Address::new(
        unused_account(),
        cmtp_proto::names::Domain::parse("conform.invalid").expect("valid"),
    );
    let m = super::mail::opaque_message(to, cmtp_proto::message::Source::user(from));
    let bytes = m.to_bytes();
    p.send(b"MAIL\0")?;
    p.send(&bytes[..bytes.len() - 64 - m.body.len() / 2])?;
    p.timeout = margin(wait);
    let started = Instant::now();
    let r = p.reply(request_digest(b"MAIL\0"), "MAIL for an unknown account")?;
    if r.status == Status::Timeout {
        // The server answers MAIL only once the message is complete: its
        // one reply is the TIMEOUT.
        cx.note("the server does not refuse early; its reply to MAIL is the TIMEOUT");
    } else {
        crate::probe::expect_delivery_failure(
            &r,
            "NOSUCHUSER",
            "DELIVERYFAILURE NOSUCHUSER (or, without an early refusal, TIMEOUT)",
        )?;
        // The rest never comes: the timeout still runs, and on expiry the
        // server sends TIMEOUT (it answers no command) and closes.
        let why = "TIMEOUT (bound to 32 zero bytes) when the rest of a refused message does not arrive in time (§4.3: on expiry the server sends TIMEOUT and closes)";
        let r = p
            .reply([0; 32], "the rest of a refused message that never comes")
            .map_err(|e| match e {
                crate::probe::Stop::Fail { got, .. } => fail(why, got),
                other => other,
            })?;
        expect_status(&r, &Status::Timeout, why)?;
    }
    cx.note(format!(
        "TIMEOUT after {:.1}s (allowance given: {}s)",
        started.elapsed().as_secs_f32(),
        wait.as_secs()
    ));
    p.expect_closed(cx.cfg.close_within, "TIMEOUT")
}

pub(super) fn connections_per_peer(cx: &mut Ctx<'_>) -> Check {
    let limit = cx.cfg.limits.max_per_peer as usize;
    let timeout = cx.cfg.reply_timeout;
    let mut open = Vec::with_capacity(limit + 1);
    let mut refused = None;
    for i in 0..=limit {
        let mut t = Transport::connect(cx.addr, timeout).map_err(|e| {
            fail(
                format!("connection {} accepted (the banner tells a refusal)", i + 1),
                e.to_string(),
            )
        })?;
        let mut buf = Vec::new();
        let b = read_banner(&mut t, &mut buf, timeout)?;
        match b.banner {
            Banner::Ready { .. } => open.push(t),
            Banner::Busy { domain, .. } => {
                refused = Some((i + 1, domain, t, buf));
                break;
            }
            _ => {
                return Err(fail(
                    format!("a 554 or 421 banner on connection {}", i + 1),
                    format!("{:?}", b.line),
                ));
            }
        }
    }
    let result = match refused {
        None => Err(fail(
            format!(
                "the `421 <domain> CMTP/2 <reason>` banner on connection {} from one address",
                limit + 1
            ),
            format!("{} connections open, each with the 554 banner", limit + 1),
        )),
        Some((n, domain, mut t, mut buf)) => {
            if n <= limit {
                cx.note(format!(
                    "421 came at connection {n}, before the limit of {limit} (connections of earlier rules may not have been closed yet)"
                ));
            }
            if domain != cx.domain().as_str() {
                Err(fail(
                    format!("a 421 banner naming {}", cx.domain()),
                    format!("it names {domain:?}"),
                ))
            } else {
                let deadline = Instant::now() + cx.cfg.close_within;
                loop {
                    match t.read_until(&mut buf, deadline) {
                        crate::transport::ReadOutcome::Data => {}
                        crate::transport::ReadOutcome::Closed => break Ok(()),
                        crate::transport::ReadOutcome::Timeout => {
                            break Err(fail(
                                "the connection closed after the 421 banner",
                                format!("still open {}s later", cx.cfg.close_within.as_secs_f32()),
                            ));
                        }
                    }
                }
            }
        }
    };
    drop(open);
    wait_for_room(cx);
    result
}

/// After the connection limit was reached: waits until the target takes
/// connections again, so the next rule is not refused.
fn wait_for_room(cx: &Ctx<'_>) {
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until {
        if Probe::open(cx.addr, None, cx.cfg.reply_timeout).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
