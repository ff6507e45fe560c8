//! §6.5, §12, §13 without credentials: what LOGIN, LOGINFINISH, KEYLOGIN,
//! REGISTER and the mailbox commands answer to a stranger. The OPAQUE
//! exchanges run with the login context of the connection's channel
//! binding (§12.3).

use cmtp_proto::account::{AccountError, Login};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::LoginChallenge;
use cmtp_proto::reply::{Reply, Status};

use super::{Ctx, random_bytes, unused_account};
use crate::probe::{Check, Probe, Stop, describe, expect_status, fail};

/// The weakest Argon2id parameters the checker accepts from a server: it
/// protects no password of its own, it only needs the exchange to run.
pub(super) const ANY_KSF: KsfParams = KsfParams {
    m_cost_kib: 8,
    t_cost: 1,
    p_cost: 1,
};

/// LOGIN for `user` with KE1 from a random password; returns the reply and
/// the client state.
fn login_attempt(p: &mut Probe, user: &Account) -> Check<(Reply, Login, Vec<u8>)> {
    let password = random_bytes(16);
    let (login, ke1) = Login::start(&password, &mut rand_core::OsRng)
        .map_err(|e| fail("an OPAQUE KE1", e.to_string()))?;
    let r = p.cmd(&Command::Login {
        user: user.clone(),
        ke1: ke1.to_vec(),
    })?;
    Ok((r, login, password))
}

/// A LOGIN answered RATELIMITED says nothing about the rule at hand: the
/// target limits failed logins from the checker's address (§12.3).
pub(super) fn not_rate_limited(r: &Reply) -> Check {
    if r.status == Status::RateLimited {
        Err(Stop::NotTestable(format!(
            "the target limits logins from this address now (RATELIMITED: {:?}); wait or raise its limit",
            r.text()
        )))
    } else {
        Ok(())
    }
}

/// Checks a LOGIN challenge's shape: ksf[12] | KE2[320], and that KE2 is a
/// well-formed OPAQUE message that simply does not open with a wrong
/// password.
fn check_challenge(
    r: &Reply,
    login: Login,
    password: &[u8],
    address: &Address,
    channel_binding: &[u8; 32],
    what: &str,
) -> Check<LoginChallenge> {
    not_rate_limited(r)?;
    expect_status(
        r,
        &Status::Success,
        &format!("SUCCESS (a challenge) to LOGIN for {what}"),
    )?;
    let c = LoginChallenge::decode(&r.body).map_err(|e| {
        fail(
            format!("ksf[12] | KE2[320] (332 bytes) for {what}"),
            format!("{} bytes: {e}", r.body.len()),
        )
    })?;
    c.ksf.validate(&ANY_KSF).map_err(|e| {
        fail(
            format!("Argon2id parameters within Argon2's rules for {what}"),
            e.to_string(),
        )
    })?;
    match login.finish(
        password,
        &c,
        address,
        &ANY_KSF,
        channel_binding,
        &mut rand_core::OsRng,
    ) {
        Err(AccountError::WrongPassword) => Ok(c),
        Ok(_) => Err(fail(
            format!("a KE2 that a random password cannot open ({what})"),
            "the random password was accepted",
        )),
        Err(e) => Err(fail(
            format!(
                "a well-formed OPAQUE KE2 for {what} (one that fails only as a wrong password)"
            ),
            e.to_string(),
        )),
    }
}

pub(super) fn loginfinish_without_login(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    p.expect_cmd(
        &Command::LoginFinish {
            ke3: random_bytes(64),
        },
        Status::Failure,
        "FAILURE to LOGINFINISH without a LOGIN in progress",
    )?;
    Ok(())
}

pub(super) fn login_invalid_account(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let mut b = b"LOGIN\0a..b\0".to_vec();
    b.extend_from_slice(&96u32.to_be_bytes());
    b.extend_from_slice(&random_bytes(96));
    let r = p.raw_cmd(&b, "LOGIN for the account `a..b`")?;
    expect_status(
        &r,
        &Status::BadArgument,
        "BADARGUMENT to LOGIN for the invalid account `a..b`",
    )?;
    p.expect_usable("BADARGUMENT")
}

pub(super) fn login_unknown_account(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let user = unused_account();
    let (r, login, password) = login_attempt(&mut p, &user)?;
    let address = Address::new(user.clone(), cx.domain().clone());
    let cb = p.channel_binding();
    check_challenge(&r, login, &password, &address, &cb, "an unknown account")?;
    p.expect_cmd(
        &Command::LoginFinish {
            ke3: random_bytes(64),
        },
        Status::AuthFailed,
        "AUTHFAILED to LOGINFINISH for an unknown account",
    )?;
    Ok(())
}

pub(super) fn login_indistinguishable(cx: &mut Ctx<'_>) -> Check {
    let known = cx.local_account()?;
    let unknown = unused_account();
    let mut seen = Vec::new();
    for (user, what) in [
        (&known, "an existing account"),
        (&unknown, "an unknown account"),
    ] {
        let (mut p, _) = cx.greeted()?;
        let (r, login, password) = login_attempt(&mut p, user)?;
        let address = Address::new(user.clone(), cx.domain().clone());
        let cb = p.channel_binding();
        let c = check_challenge(&r, login, &password, &address, &cb, what)?;
        let fin = p.expect_cmd(
            &Command::LoginFinish {
                ke3: random_bytes(64),
            },
            Status::AuthFailed,
            &format!("AUTHFAILED to LOGINFINISH with a wrong KE3 for {what}"),
        )?;
        seen.push((r.body.len(), c.ksf, fin));
    }
    let (a, b) = (&seen[0], &seen[1]);
    if a.0 != b.0 {
        return Err(fail(
            "LOGIN replies of the same size for an existing and an unknown account",
            format!("{} and {} bytes", a.0, b.0),
        ));
    }
    if a.2.body != b.2.body {
        return Err(fail(
            "the same AUTHFAILED for a wrong password and an unknown account",
            format!("{} / {}", describe(&a.2), describe(&b.2)),
        ));
    }
    if a.1 != b.1 {
        cx.note(format!(
            "the Argon2id parameters differ ({:?} for {known}, the default {:?} for an unknown account): the account chose its own",
            a.1, b.1
        ));
    }
    Ok(())
}

pub(super) fn keylogin_bad_signature(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.cmd(&Command::KeyLogin {
        user: unused_account(),
        signature: random_bytes(64),
    })?;
    not_rate_limited(&r)?;
    expect_status(
        &r,
        &Status::AuthFailed,
        "AUTHFAILED to KEYLOGIN with a signature that does not verify",
    )
}

pub(super) fn register_invalid_invite(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    for (invite, what) in [
        ("A".repeat(129), "an invite of 129 characters"),
        (
            "bad token!".to_owned(),
            "an invite with characters outside A-Z a-z 0-9 - _",
        ),
    ] {
        let mut b = format!("REGISTER\0{}\0{invite}\0", unused_account()).into_bytes();
        b.extend_from_slice(&32u32.to_be_bytes());
        b.extend_from_slice(&random_bytes(32));
        let r = p.raw_cmd(&b, &format!("REGISTER with {what}"))?;
        expect_status(
            &r,
            &Status::BadArgument,
            &format!("BADARGUMENT to REGISTER with {what}"),
        )?;
        p.expect_usable("BADARGUMENT")?;
    }
    Ok(())
}

pub(super) fn extensions_need_login(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    for c in [
        Command::List,
        Command::Fetch { id: 1 },
        Command::Delete { id: 1 },
        Command::Password {
            request: random_bytes(32),
        },
    ] {
        p.expect_cmd(
            &c,
            Status::AuthRequired,
            &format!("AUTHREQUIRED to {} without a login", c.word()),
        )?;
    }
    Ok(())
}

pub(super) fn rate_limited(cx: &mut Ctx<'_>) -> Check {
    let limit = cx.cfg.limits.login_failures_per_account;
    let user = unused_account();
    let (mut p, _) = cx.greeted()?;
    for attempt in 1..=limit + 1 {
        let (r, _, _) = login_attempt(&mut p, &user)?;
        if r.status == Status::RateLimited {
            let text = r.text();
            if !text.bytes().any(|b| b.is_ascii_digit()) {
                return Err(fail(
                    "RATELIMITED with a text saying how long to wait (`... try again in N seconds`)",
                    describe(&r),
                ));
            }
            if attempt <= limit {
                cx.note(format!(
                    "RATELIMITED at attempt {attempt}, before the per-account limit of {limit} (the per-address limit may have been reached)"
                ));
            }
            return Ok(());
        }
        expect_status(
            &r,
            &Status::Success,
            &format!("SUCCESS or RATELIMITED to LOGIN attempt {attempt}"),
        )?;
        p.expect_cmd(
            &Command::LoginFinish {
                ke3: random_bytes(64),
            },
            Status::AuthFailed,
            "AUTHFAILED to a wrong KE3",
        )?;
    }
    Err(fail(
        format!("RATELIMITED to LOGIN after {limit} failed logins for one account"),
        format!("SUCCESS to attempt {}", limit + 1),
    ))
}
