//! §7 Messages: what a server checks when a message arrives after MAIL
//! (§7.1 limits before reading further, §7.4 the refusals in order), and
//! the receipt of an accepted message (§10.1).
//!
//! Well-formed messages are built with cmtp-proto; malformed headers by
//! hand. Every reply to MAIL is bound to H("MAIL\0") (§5.3).

use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::content::Content;
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::message::{Message, Source, VERSION_SEALED};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::reply::{Reply, Status};
use cmtp_proto::statements::{KeyStatement, ReceiptBody, sign_trailer};
use cmtp_proto::wire::{put_str, put_u32, put_u64};

use super::{Ctx, now, random_bytes, unused_account};
use crate::probe::{Check, Probe, describe, expect_delivery_failure, expect_status, fail};

/// The 24-byte message header (§7.1).
pub(super) fn header(version: u32, attachments: u32, log_len: u64, body_len: u64) -> Vec<u8> {
    let mut h = Vec::with_capacity(24);
    put_u32(&mut h, version);
    put_u32(&mut h, attachments);
    put_u64(&mut h, log_len);
    put_u64(&mut h, body_len);
    h
}

/// Sends MAIL and `message`, and reads the one reply to MAIL.
pub(super) fn mail(p: &mut Probe, message: &[u8], what: &str) -> Check<Reply> {
    p.send(b"MAIL\0")?;
    // The server may refuse early and stop reading; the reply tells.
    p.send_lossy(message);
    p.reply(request_digest(b"MAIL\0"), what)
}

/// A message of random "sealed" bytes (servers only move sealed bytes).
pub(super) fn opaque_message(to: Address, from: Source) -> Message {
    Message {
        version: VERSION_SEALED,
        destination: to,
        source: from,
        log: Vec::new(),
        body: random_bytes(96),
        attachments: Vec::new(),
        trailer: [0; 64],
    }
}

fn addr(account: &Account, domain: &Domain) -> Address {
    Address::new(account.clone(), domain.clone())
}

/// A domain no one serves (RFC 2606).
fn nowhere() -> Domain {
    Domain::parse("conform.invalid").expect("valid")
}

/// Sends only a header (and MAIL) and expects TOOBIG and a close.
fn too_big_header(cx: &mut Ctx<'_>, head: Vec<u8>, what: &str) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = mail(&mut p, &head, what)?;
    expect_status(
        &r,
        &Status::TooBig,
        &format!("TOOBIG to {what}, decided from the header alone"),
    )?;
    p.expect_closed(cx.cfg.close_within, "TOOBIG")
}

pub(super) fn bad_version(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut m = opaque_message(
        addr(&unused_account(), cx.domain()),
        Source::user(addr(&unused_account(), &nowhere())),
    );
    m.version = 2;
    let r = mail(&mut p, &m.to_bytes(), "a message of version 2")?;
    expect_status(
        &r,
        &Status::BadMessage,
        "BADMESSAGE to a message of version 2",
    )
}

pub(super) fn too_many_attachments(cx: &mut Ctx<'_>) -> Check {
    let n = cx.info.greeting.max_attachments.saturating_add(1);
    too_big_header(
        cx,
        header(1, n, 0, 0),
        &format!("a message announcing {n} attachments (max-attachments + 1)"),
    )
}

pub(super) fn log_too_long(cx: &mut Ctx<'_>) -> Check {
    too_big_header(
        cx,
        header(1, 0, u64::MAX, 0),
        "a message announcing a log of 2^64-1 bytes",
    )
}

pub(super) fn too_big(cx: &mut Ctx<'_>) -> Check {
    let max = cx.info.greeting.max_message_size;
    too_big_header(
        cx,
        header(1, 0, 0, max),
        &format!("a message announcing a body of max-message-size ({max}) bytes"),
    )
}

pub(super) fn size_overflow(cx: &mut Ctx<'_>) -> Check {
    too_big_header(
        cx,
        header(1, 1, 0, u64::MAX - 8),
        "a message whose announced lengths overflow 64 bits",
    )
}

pub(super) fn name_too_long(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut b = header(1, 0, 0, 0);
    b.extend(std::iter::repeat_n(b'a', 300));
    let r = mail(
        &mut p,
        &b,
        "a message whose first name has no NUL within 256 bytes",
    )?;
    expect_status(
        &r,
        &Status::BadMessage,
        "BADMESSAGE to a name field with no NUL within 256 bytes",
    )
}

pub(super) fn invalid_names(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let upper = cx.domain().as_str().to_ascii_uppercase();
    for (account, domain) in [("Bob", cx.domain().as_str()), ("bob", upper.as_str())] {
        let body = random_bytes(64);
        let mut b = header(1, 0, 0, body.len() as u64);
        put_str(&mut b, account);
        put_str(&mut b, domain);
        put_str(&mut b, "conform");
        put_str(&mut b, nowhere().as_str());
        b.extend_from_slice(&body);
        b.extend_from_slice(&[0; 64]);
        let what = format!("a message to `{account}@{domain}`");
        let r = mail(&mut p, &b, &what)?;
        expect_status(
            &r,
            &Status::BadMessage,
            &format!("BADMESSAGE to {what} (names in messages must be canonical)"),
        )?;
        p.expect_usable("BADMESSAGE for invalid names (the rest is discarded)")?;
    }
    Ok(())
}

/// Sends `m` and expects DELIVERYFAILURE `reason`, then a usable connection.
fn refused(cx: &mut Ctx<'_>, m: &Message, reason: &str, why: &str) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = mail(
        &mut p,
        &m.to_bytes(),
        &format!("MAIL {} → {}", m.source, m.destination),
    )?;
    expect_delivery_failure(&r, reason, why)?;
    p.expect_usable(&format!("DELIVERYFAILURE {reason}"))
}

pub(super) fn nosuchuser(cx: &mut Ctx<'_>) -> Check {
    let to = addr(&unused_account(), cx.domain());
    let m = opaque_message(
        to.clone(),
        Source::user(addr(&unused_account(), &nowhere())),
    );
    refused(
        cx,
        &m,
        "NOSUCHUSER",
        &format!("DELIVERYFAILURE NOSUCHUSER for {to}"),
    )
}

pub(super) fn norelay(cx: &mut Ctx<'_>) -> Check {
    let elsewhere = Domain::parse("elsewhere.invalid").expect("valid");
    let m = opaque_message(
        addr(&unused_account(), &elsewhere),
        Source::user(addr(&unused_account(), &nowhere())),
    );
    refused(
        cx,
        &m,
        "NORELAY",
        "DELIVERYFAILURE NORELAY for mail to another domain from a connection not logged in",
    )
}

pub(super) fn spoofed(cx: &mut Ctx<'_>) -> Check {
    let to = addr(&cx.local_account()?, cx.domain());
    let from = addr(&unused_account(), cx.domain());
    let m = opaque_message(to, Source::user(from.clone()));
    refused(
        cx,
        &m,
        "SPOOFED",
        &format!("DELIVERYFAILURE SPOOFED for mail from {from} arriving from outside"),
    )
}

pub(super) fn source_unreachable(cx: &mut Ctx<'_>) -> Check {
    let down = cx
        .cfg
        .unreachable_domain
        .clone()
        .expect("needs UnreachableDomain");
    let to = addr(&cx.local_account()?, cx.domain());
    let m = opaque_message(to, Source::user(addr(&unused_account(), &down)));
    let (mut p, _) = cx.greeted()?;
    let r = mail(&mut p, &m.to_bytes(), &format!("MAIL from {down}"))?;
    expect_status(
        &r,
        &Status::TempFailure,
        &format!("TEMPFAILURE: the key of {down} cannot be obtained now (§7.4 step 6)"),
    )?;
    p.expect_usable("TEMPFAILURE")
}

/// The key of `account` on the target, from its statement.
pub(super) fn user_key(
    p: &mut Probe,
    account: &Account,
    domain: &Domain,
    server: &PublicKey,
) -> Check<PublicKey> {
    let r = p.expect_cmd(
        &Command::KeyRequest {
            user: Some(account.clone()),
            domain: None,
        },
        Status::Success,
        &format!("SUCCESS to KEYREQUEST {account} (the recipient's key)"),
    )?;
    let s = KeyStatement::decode(&r.body).map_err(|e| fail("a key statement", e.to_string()))?;
    s.verify(server, Some(account), domain, now())
        .map_err(|e| fail("a statement signed by the server key", e.to_string()))?;
    Ok(s.key)
}

/// A real sealed message from `from` (whose identity key is `sender`) to
/// `to` (whose key is `key`).
pub(super) fn sealed_message(
    from: &Address,
    sender: &IdentityKey,
    to: &Address,
    key: &PublicKey,
    subject: &str,
) -> Check<Message> {
    let content = Content {
        subject: subject.to_owned(),
        date: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        text: format!(
            "This message was sent by cmtp-conform, a conformance checker for CMTP servers.\n\
             It checks that {} accepts correctly signed mail. It can be deleted.\n\
             Marker: {}\n",
            to.domain,
            hex::encode(random_bytes(8))
        ),
        ..Content::default()
    };
    content
        .seal(from, sender, to, key, &mut rand_core::OsRng)
        .map_err(|e| fail("a message the checker can seal", e.to_string()))
}

/// A message from the checker's served domain to the local account, with
/// the served domain's valid trailer.
fn from_served(cx: &Ctx<'_>, p: &mut Probe, subject: &str) -> Check<Message> {
    let s = cx.served()?;
    let local = cx.local_account()?;
    let to = addr(&local, cx.domain());
    let key = user_key(p, &local, cx.domain(), &cx.key())?;
    let from = addr(s.user(), s.domain());
    let mut m = sealed_message(&from, s.user_key(), &to, &key, subject)?;
    m.trailer = s.sign_trailer(&m.hash());
    Ok(m)
}

pub(super) fn bad_trailer(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut m = from_served(cx, &mut p, "cmtp-conform: forged trailer")?;
    let forger = IdentityKey::generate(&mut rand_core::OsRng);
    m.trailer = sign_trailer(&forger, &m.hash());
    let r = mail(&mut p, &m.to_bytes(), "a message with a forged trailer")?;
    expect_delivery_failure(
        &r,
        "BADSIGNATURE",
        &format!(
            "DELIVERYFAILURE BADSIGNATURE: the trailer is not signed by the key of {}",
            m.source.domain
        ),
    )?;
    p.expect_usable("DELIVERYFAILURE BADSIGNATURE")
}

/// Checks a receipt for `hash` (§10.1): the SUCCESS body is the receipt
/// statement, which the reply's signature (already checked) covers.
pub(super) fn check_receipt(cx: &Ctx<'_>, r: &Reply, hash: &[u8; 32]) -> Check<ReceiptBody> {
    expect_status(r, &Status::Success, "SUCCESS with a receipt")?;
    let receipt = ReceiptBody::decode(&r.body).map_err(|e| {
        fail(
            "a receipt statement: hash | u64 accepted_at | domain NUL, and nothing after \
             (the reply's signature is the receipt's)",
            e.to_string(),
        )
    })?;
    if &receipt.hash != hash {
        return Err(fail(
            "a receipt for the message's hash",
            format!("a receipt for hash {}", hex::encode(&receipt.hash[..8])),
        ));
    }
    if &receipt.domain != cx.domain() {
        return Err(fail(
            format!("a receipt naming {}", cx.domain()),
            format!("{}", receipt.domain),
        ));
    }
    if receipt.accepted_at.abs_diff(now()) > 24 * 3600 {
        return Err(fail(
            "accepted_at: the time of acceptance",
            format!("{} (now is {})", receipt.accepted_at, now()),
        ));
    }
    Ok(receipt)
}

pub(super) fn accepted(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let m = from_served(cx, &mut p, "cmtp-conform: signed mail from another domain")?;
    let r = mail(
        &mut p,
        &m.to_bytes(),
        "a correctly signed message from another domain",
    )?;
    check_receipt(cx, &r, &m.hash())?;
    p.expect_usable("SUCCESS to MAIL")?;
    if let Some(copies) = super::mailbox::take_from_mailbox(cx, &m.hash())? {
        let [stored] = copies.as_slice() else {
            return Err(fail(
                "the accepted message in the recipient's mailbox, once",
                format!("{} copies", copies.len()),
            ));
        };
        if stored.trailer != m.trailer {
            return Err(fail(
                "the stored copy with the source domain's trailer as it came",
                "another trailer",
            ));
        }
        let log = String::from_utf8_lossy(&stored.log).into_owned();
        let line = log.lines().last().unwrap_or("");
        if !log.ends_with('\n') || line.split(' ').nth(1) != Some(cx.domain().as_str()) {
            return Err(fail(
                format!(
                    "a log line `<time> {} <event>` added on acceptance (§7.5)",
                    cx.domain()
                ),
                format!("the log {log:?}"),
            ));
        }
    }
    Ok(())
}

pub(super) fn duplicate(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let m = from_served(cx, &mut p, "cmtp-conform: the same message twice")?;
    let bytes = m.to_bytes();
    let first = mail(&mut p, &bytes, "a message")?;
    let a = check_receipt(cx, &first, &m.hash())?;
    let second = mail(&mut p, &bytes, "the same message again")?;
    let b = check_receipt(cx, &second, &m.hash()).map_err(|e| match e {
        crate::probe::Stop::Fail { expected, got } => fail(
            format!("the same message again: {expected} (not stored twice)"),
            got,
        ),
        other => other,
    })?;
    if a.hash != b.hash {
        return Err(fail("receipts for the same hash", describe(&second)));
    }
    if let Some(copies) = super::mailbox::take_from_mailbox(cx, &m.hash())?
        && copies.len() != 1
    {
        return Err(fail(
            "a message accepted twice stored once (§7.4)",
            format!("{} copies in the mailbox", copies.len()),
        ));
    }
    Ok(())
}

pub(super) fn attachment_too_big(cx: &mut Ctx<'_>) -> Check {
    let max = cx.info.greeting.max_message_size;
    let (mut p, _) = cx.greeted()?;
    let m = from_served(cx, &mut p, "cmtp-conform: an attachment too big")?;
    // An envelope the server accepts, then one attachment whose length
    // alone is over the limit: the server must stop at the length.
    let mut env = m.envelope();
    env.attachment_count = 1;
    let mut b = Vec::new();
    env.encode_head(0, &mut b);
    b.extend_from_slice(&m.body);
    put_u64(&mut b, max);
    let r = mail(
        &mut p,
        &b,
        "a message whose attachment length is max-message-size",
    )?;
    expect_status(
        &r,
        &Status::TooBig,
        &format!(
            "TOOBIG when an attachment length ({max}) takes the message over max-message-size"
        ),
    )?;
    p.expect_closed(cx.cfg.close_within, "TOOBIG")
}

pub(super) fn mail_loop(cx: &mut Ctx<'_>) -> Check {
    let hops = cx.cfg.limits.max_hops;
    let (mut p, _) = cx.greeted()?;
    let mut m = from_served(cx, &mut p, "cmtp-conform: a mail loop")?;
    let time = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    for i in 0..hops {
        m.log.extend_from_slice(
            format!(
                "{time} hop{i}.conform.invalid accepted from 192.0.2.1 for {}\n",
                m.destination
            )
            .as_bytes(),
        );
    }
    let r = mail(
        &mut p,
        &m.to_bytes(),
        &format!("a message with {hops} log lines"),
    )?;
    expect_delivery_failure(
        &r,
        "LOOP",
        &format!(
            "DELIVERYFAILURE LOOP for a message that has passed {hops} servers (the hop limit)"
        ),
    )?;
    p.expect_usable("DELIVERYFAILURE LOOP")
}
