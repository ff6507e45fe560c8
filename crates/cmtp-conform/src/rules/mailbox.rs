//! With credentials: the OPAQUE login (§12.3), key login (§12.4), both
//! bound to the connection's channel binding (the TLS exporter), a password
//! change whose registration proof is bound likewise (§12.2, §12.5), the
//! mailbox (§13), submission (§7.3, §7.4) and relay to the checker's own
//! domain.

use std::time::Instant;

use cmtp_proto::account::{AccountError, Login, Registration, key_login_signature, open_release};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::limits::MessageLimits;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::Address;
use cmtp_proto::payload::{
    ListingEntry, LoginChallenge, RegistrationOffer, XzibitRelease, decode_listing,
};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{KeyStatement, verify_trailer};
use zeroize::Zeroizing;

use super::auth::{ANY_KSF, not_rate_limited};
use super::mail::{check_receipt, mail, opaque_message, sealed_message, user_key};
use super::{Ctx, now, unused_account};
use crate::probe::{Check, Probe, Stop, describe, expect_delivery_failure, expect_status, fail};

/// A connection logged in as `--user`.
pub(super) struct Session {
    pub(super) p: Probe,
    pub(super) address: Address,
    pub(super) identity: IdentityKey,
    /// The account's Argon2id parameters (from the LOGIN challenge).
    pub(super) ksf: KsfParams,
    /// The password of `--user`.
    pub(super) password: Zeroizing<String>,
}

/// Logs in as `--user` with the password (§12.3), the OPAQUE context bound
/// to this connection's channel binding, and opens the xzibit.
pub(super) fn log_in(cx: &Ctx<'_>) -> Check<Session> {
    let user = cx.cfg.user.clone().expect("needs Credentials");
    let password = cx.cfg.password.clone().expect("needs Credentials");
    let address = Address::new(user.clone(), cx.domain().clone());
    let (mut p, _) = cx.greeted()?;
    let account_key = user_key(&mut p, &user, cx.domain(), &cx.key())?;
    let (login, ke1) = Login::start(password.as_bytes(), &mut rand_core::OsRng)
        .map_err(|e| fail("an OPAQUE KE1", e.to_string()))?;
    let r = p.cmd(&Command::Login {
        user: user.clone(),
        ke1: ke1.to_vec(),
    })?;
    not_rate_limited(&r)?;
    expect_status(
        &r,
        &Status::Success,
        &format!("SUCCESS (a challenge) to LOGIN {user}"),
    )?;
    let challenge =
        LoginChallenge::decode(&r.body).map_err(|e| fail("ksf[12] | KE2[320]", e.to_string()))?;
    let proof = login
        .finish(
            password.as_bytes(),
            &challenge,
            &address,
            &ANY_KSF,
            &p.channel_binding(),
            &mut rand_core::OsRng,
        )
        .map_err(|e| match e {
            AccountError::WrongPassword => fail(
                format!(
                    "a KE2 that the password of {address} opens with the login context of this connection's channel binding (§12.3; check --user and --password-file)"
                ),
                "it does not open: a wrong password, an unknown user, or a KE2 made for another context (not bound to this TLS connection)",
            ),
            other => fail("a well-formed KE2", other.to_string()),
        })?;
    let r = p.expect_cmd(
        &Command::LoginFinish {
            ke3: proof.ke3.to_vec(),
        },
        Status::Success,
        "SUCCESS (the xzibit) to LOGINFINISH with the right KE3",
    )?;
    let release = XzibitRelease::decode(&r.body)
        .map_err(|e| fail("u32 length | xzibit | signature[64]", e.to_string()))?;
    let (identity, _) = open_release(
        &release,
        &cx.key(),
        &address,
        &proof.export_key,
        Some(&account_key),
    )
    .map_err(|e| {
        fail(
            "an xzibit signed by the server key for this address, sealed under the export key, holding the account's key (§11, §12.3)",
            e.to_string(),
        )
    })?;
    Ok(Session {
        p,
        address,
        identity,
        ksf: challenge.ksf,
        password,
    })
}

pub(super) fn login(cx: &mut Ctx<'_>) -> Check {
    log_in(cx).map(|_| ())
}

pub(super) fn keylogin(cx: &mut Ctx<'_>) -> Check {
    let s = log_in(cx)?;
    let mut p = cx.probe()?;
    let signature = key_login_signature(&s.identity, &p.channel_binding(), &s.address);
    let r = p.cmd(&Command::KeyLogin {
        user: s.address.account.clone(),
        signature: signature.to_vec(),
    })?;
    not_rate_limited(&r)?;
    expect_status(
        &r,
        &Status::Success,
        "SUCCESS to KEYLOGIN signed over this connection's channel binding (§12.4)",
    )?;
    if !r.body.is_empty() {
        return Err(fail("an empty body", describe(&r)));
    }
    p.expect_cmd(
        &Command::List,
        Status::Success,
        "SUCCESS to LIST after KEYLOGIN",
    )?;
    Ok(())
}

pub(super) fn keylogin_relayed(cx: &mut Ctx<'_>) -> Check {
    let s = log_in(cx)?;
    let account = s.address.account.clone();
    // A machine in the middle holds one TLS connection with the device
    // (`elsewhere`) and one with the server (`p`): what the device signs
    // names the first.
    let elsewhere = cx.probe()?;
    let (mut p, g) = cx.greeted()?;
    for (signature, what) in [
        (
            key_login_signature(&s.identity, &elsewhere.channel_binding(), &s.address),
            "a KEYLOGIN signature made for another connection's channel binding (relayed)",
        ),
        (
            key_login_signature(&s.identity, &g.nonce, &s.address),
            "a KEYLOGIN signature over the connection nonce (the CMTP/1 form, not bound to TLS)",
        ),
    ] {
        let r = p.cmd(&Command::KeyLogin {
            user: account.clone(),
            signature: signature.to_vec(),
        })?;
        not_rate_limited(&r)?;
        expect_status(&r, &Status::AuthFailed, &format!("AUTHFAILED to {what}"))?;
        p.expect_cmd(
            &Command::List,
            Status::AuthRequired,
            &format!("AUTHREQUIRED to LIST after {what}"),
        )?;
    }
    drop(elsewhere);
    // The same key, bound to this connection, is let in: the refusals
    // above were about the binding.
    let signature = key_login_signature(&s.identity, &p.channel_binding(), &s.address);
    p.expect_cmd(
        &Command::KeyLogin {
            user: account,
            signature: signature.to_vec(),
        },
        Status::Success,
        "SUCCESS to KEYLOGIN bound to this connection, after the relayed ones",
    )?;
    Ok(())
}

/// PASSWORD (logged in) with the same password; REGFINISH with a bundle
/// whose proof is bound to `binding`. Returns the REGFINISH reply.
fn change_password(s: &mut Session, binding: &[u8; 32]) -> Check<cmtp_proto::reply::Reply> {
    let password = s.password.clone();
    let (reg, request) = Registration::start(password.as_bytes(), &mut rand_core::OsRng)
        .map_err(|e| fail("an OPAQUE registration request", e.to_string()))?;
    let r = s.p.expect_cmd(
        &Command::Password {
            request: request.to_vec(),
        },
        Status::Success,
        "SUCCESS (response and floor) to PASSWORD, logged in (§12.5)",
    )?;
    let offer = RegistrationOffer::decode(&r.body).map_err(|e| {
        fail(
            "registration response[64] | ksf floor[12] (§12.2)",
            e.to_string(),
        )
    })?;
    // The account keeps its own parameters (or the floor, if it was raised).
    let ksf = if s.ksf.validate(&offer.floor).is_ok() {
        s.ksf
    } else {
        offer.floor
    };
    let bundle = reg
        .finish(
            password.as_bytes(),
            &offer,
            &s.address,
            &s.identity,
            ksf,
            now(),
            binding,
            &mut rand_core::OsRng,
        )
        .map_err(|e| fail("a registration the checker can finish", e.to_string()))?;
    s.p.cmd(&Command::RegFinish {
        bundle: bundle.to_bytes(),
    })
}

pub(super) fn password_change_bound(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    let elsewhere = cx.probe()?;
    let r = change_password(&mut s, &elsewhere.channel_binding())?;
    drop(elsewhere);
    expect_status(
        &r,
        &Status::BadArgument,
        "BADARGUMENT to REGFINISH whose registration proof is bound to another connection's channel binding (a relayed registration, §12.2)",
    )?;
    // The same change bound to this connection goes through: the account
    // keeps its password and key (a new record and xzibit).
    let binding = s.p.channel_binding();
    let r = change_password(&mut s, &binding)?;
    expect_status(
        &r,
        &Status::Success,
        "SUCCESS (the key statement) to REGFINISH with the proof bound to this connection",
    )?;
    let statement =
        KeyStatement::decode(&r.body).map_err(|e| fail("a key statement (§9.2)", e.to_string()))?;
    statement
        .verify(&cx.key(), Some(&s.address.account), cx.domain(), now())
        .map_err(|e| {
            fail(
                "a statement signed by the server key, valid now",
                e.to_string(),
            )
        })?;
    if statement.key != s.identity.public() {
        return Err(fail(
            "the statement of the account's unchanged key",
            format!("key {}", statement.key.fingerprint_hex()),
        ));
    }
    // And the password still opens the account.
    log_in(cx)?;
    Ok(())
}

pub(super) fn login_ends_session(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    s.p.expect_cmd(
        &Command::List,
        Status::Success,
        "SUCCESS to LIST, logged in",
    )?;
    let (_login, ke1) = Login::start(b"not the password", &mut rand_core::OsRng)
        .map_err(|e| fail("an OPAQUE KE1", e.to_string()))?;
    let r = s.p.cmd(&Command::Login {
        user: unused_account(),
        ke1: ke1.to_vec(),
    })?;
    not_rate_limited(&r)?;
    expect_status(
        &r,
        &Status::Success,
        "SUCCESS (a challenge) to a second LOGIN",
    )?;
    s.p.expect_cmd(
        &Command::List,
        Status::AuthRequired,
        "AUTHREQUIRED to LIST once another LOGIN has started (logged in until the connection closes or another LOGIN starts)",
    )?;
    Ok(())
}

fn listing(p: &mut Probe) -> Check<Vec<ListingEntry>> {
    let r = p.cmd(&Command::List)?;
    expect_status(&r, &Status::Success, "SUCCESS to LIST, logged in")?;
    decode_listing(&r.body).map_err(|e| fail("u32 count | entries (§13)", e.to_string()))
}

pub(super) fn list(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    let entries = listing(&mut s.p)?;
    if entries
        .windows(2)
        .any(|w| w[0].received_at > w[1].received_at)
    {
        return Err(fail("entries oldest first", "received_at goes backwards"));
    }
    cx.note(format!("{} message(s) in the mailbox", entries.len()));
    Ok(())
}

/// Submits a sealed message from the logged-in user to itself; returns it.
fn submit_to_self(cx: &Ctx<'_>, s: &mut Session, subject: &str) -> Check<Message> {
    let key = s.identity.public();
    let m = sealed_message(&s.address, &s.identity, &s.address, &key, subject)?;
    let r = mail(&mut s.p, &m.to_bytes(), "a submission to oneself")?;
    check_receipt(cx, &r, &m.hash())?;
    Ok(m)
}

fn find(entries: &[ListingEntry], m: &Message) -> Check<u64> {
    entries
        .iter()
        .find(|e| e.hash == m.hash())
        .map(|e| e.id)
        .ok_or_else(|| {
            fail(
                "the accepted message in LIST",
                format!("{} entries, none with its hash", entries.len()),
            )
        })
}

fn fetch(cx: &Ctx<'_>, p: &mut Probe, id: u64) -> Check<Message> {
    let max = cx.info.greeting.max_message_size.saturating_add(1 << 20);
    let c = Command::Fetch { id };
    p.send(&c.to_bytes())?;
    let r = p.reply_max(
        cmtp_proto::command::request_digest(&c.to_bytes()),
        "FETCH",
        max,
    )?;
    expect_status(&r, &Status::Success, &format!("SUCCESS to FETCH {id}"))?;
    let limits = MessageLimits {
        max_message_size: u64::MAX / 4,
        max_attachments: u32::MAX,
        max_log: u64::MAX / 4,
        max_hops: u32::MAX,
    };
    Message::decode(&r.body, limits)
        .map_err(|e| fail("the stored message in the format of §7.1", e.to_string()))
}

/// With `--user` as the recipient: the copies of the message with `hash`
/// in the mailbox, fetched and then deleted (the checker leaves nothing
/// behind). `None` when the checker cannot look (with a note saying why).
pub(super) fn take_from_mailbox(cx: &mut Ctx<'_>, hash: &[u8; 32]) -> Check<Option<Vec<Message>>> {
    let own = cx.cfg.user.is_some()
        && cx.cfg.password.is_some()
        && cx
            .cfg
            .recipient
            .as_ref()
            .is_none_or(|r| Some(r) == cx.cfg.user.as_ref());
    if !own {
        cx.note("the stored copy was not looked at (give --user as the recipient)");
        return Ok(None);
    }
    let mut s = match log_in(cx) {
        Ok(s) => s,
        Err(Stop::NotTestable(why)) => {
            cx.note(format!("the stored copy was not looked at: {why}"));
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let ids: Vec<u64> = listing(&mut s.p)?
        .iter()
        .filter(|e| &e.hash == hash)
        .map(|e| e.id)
        .collect();
    let mut copies = Vec::new();
    for id in ids {
        copies.push(fetch(cx, &mut s.p, id)?);
        s.p.expect_cmd(
            &Command::Delete { id },
            Status::Success,
            &format!("SUCCESS to DELETE {id}"),
        )?;
    }
    Ok(Some(copies))
}

pub(super) fn submission(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    let m = submit_to_self(cx, &mut s, "cmtp-conform: submission")?;
    let id = find(&listing(&mut s.p)?, &m)?;
    let stored = fetch(cx, &mut s.p, id)?;
    let result = (|| {
        if stored.hash() != m.hash() {
            return Err(fail(
                "the stored message with the submitted hash",
                "another hash",
            ));
        }
        // Mail that stays in the domain may keep the zero trailer (§7.3);
        // a trailer that is there must verify.
        if stored.trailer != [0; 64] {
            verify_trailer(&cx.key(), &m.hash(), &stored.trailer).map_err(|_| {
                fail(
                    "the zero trailer or one signed by the server key over the hash (§7.3)",
                    "a trailer that does not verify",
                )
            })?;
        }
        let log = String::from_utf8_lossy(&stored.log).into_owned();
        let line = log.lines().last().unwrap_or("");
        let mut parts = line.split(' ');
        let time_ok = parts
            .next()
            .is_some_and(|t| humantime::parse_rfc3339(t).is_ok());
        if !log.ends_with('\n') || !time_ok || parts.next() != Some(cx.domain().as_str()) {
            return Err(fail(
                format!(
                    "a log line `<RFC 3339 time> {} <event>` appended (§7.5)",
                    cx.domain()
                ),
                format!("the log {:?}", log),
            ));
        }
        Ok(())
    })();
    // Leave the mailbox as it was.
    let _ = s.p.cmd(&Command::Delete { id });
    result
}

pub(super) fn submission_spoofed(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    let other = Address::new(unused_account(), cx.domain().clone());
    let m = opaque_message(s.address.clone(), Source::user(other.clone()));
    let r = mail(
        &mut s.p,
        &m.to_bytes(),
        &format!("a submission claiming {other}"),
    )?;
    expect_delivery_failure(
        &r,
        "SPOOFED",
        &format!(
            "DELIVERYFAILURE SPOOFED: logged in as {}, the source {other} is another account",
            s.address
        ),
    )
}

pub(super) fn fetch_delete(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    let m = submit_to_self(cx, &mut s, "cmtp-conform: fetch and delete")?;
    let id = find(&listing(&mut s.p)?, &m)?;
    let stored = fetch(cx, &mut s.p, id)?;
    if stored.hash() != m.hash() {
        return Err(fail(
            "FETCH of the listed id gives that message",
            "another hash",
        ));
    }
    let r = s.p.expect_cmd(
        &Command::Delete { id },
        Status::Success,
        &format!("SUCCESS to DELETE {id}"),
    )?;
    if !r.body.is_empty() {
        return Err(fail("an empty body", describe(&r)));
    }
    s.p.expect_cmd(
        &Command::Fetch { id },
        Status::Failure,
        &format!("FAILURE to FETCH {id} after it was deleted"),
    )?;
    s.p.expect_cmd(
        &Command::Delete { id },
        Status::Failure,
        &format!("FAILURE to DELETE {id} a second time"),
    )?;
    if find(&listing(&mut s.p)?, &m).is_ok() {
        return Err(fail(
            "LIST without the deleted message",
            "it is still listed",
        ));
    }
    Ok(())
}

pub(super) fn fetch_bad_id(cx: &mut Ctx<'_>) -> Check {
    let mut s = log_in(cx)?;
    for (bytes, what) in [
        (&b"FETCH\x0001\0"[..], "FETCH 01 (a leading zero)"),
        (&b"FETCH\0x\0"[..], "FETCH x"),
        (&b"DELETE\0-1\0"[..], "DELETE -1"),
    ] {
        let r = s.p.raw_cmd(bytes, what)?;
        expect_status(&r, &Status::BadArgument, &format!("BADARGUMENT to {what}"))?;
    }
    s.p.expect_cmd(
        &Command::Fetch { id: u64::MAX },
        Status::Failure,
        "FAILURE to FETCH of an id not in the mailbox",
    )?;
    Ok(())
}

pub(super) fn relay(cx: &mut Ctx<'_>) -> Check {
    let served = cx.served()?;
    let mut s = log_in(cx)?;
    let to = Address::new(served.user().clone(), served.domain().clone());
    let m = sealed_message(
        &s.address,
        &s.identity,
        &to,
        &served.user_key().public(),
        "cmtp-conform: relay",
    )?;
    let r = mail(&mut s.p, &m.to_bytes(), &format!("a submission to {to}"))?;
    check_receipt(cx, &r, &m.hash())?;
    let started = Instant::now();
    let Some(got) = served.wait_for(&m.hash(), cx.cfg.relay_wait) else {
        return Err(fail(
            format!(
                "the message relayed to {} (the checker) within {}s",
                to.domain,
                cx.cfg.relay_wait.as_secs()
            ),
            "it did not arrive",
        ));
    };
    cx.note(format!(
        "relayed in {:.1}s",
        started.elapsed().as_secs_f32()
    ));
    verify_trailer(&cx.key(), &m.hash(), &got.trailer).map_err(|_| {
        fail(
            format!(
                "a relayed message with a trailer signed by the key of {}",
                cx.domain()
            ),
            "a trailer that does not verify",
        )
    })?;
    if got.log.is_empty() {
        return Err(fail(
            "a log line added by the relaying server (§7.5)",
            "an empty log",
        ));
    }
    Ok(())
}
