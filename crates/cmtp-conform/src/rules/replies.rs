//! §5 Replies: framing, and the signature that binds each reply to its
//! connection, position and request.
//!
//! The probe checks the signature of every reply any rule reads; these
//! rules make the binding itself the point: pipelined replies at known
//! positions, replies before OHAI, nonces across connections.

use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::reply::Status;

use super::Ctx;
use crate::probe::{Check, expect_status, fail};

pub(super) fn reply_format(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.cmd(&Command::Noop)?;
    if r.version != 1 {
        return Err(fail("reply version 1", format!("version {}", r.version)));
    }
    expect_status(&r, &Status::Success, "SUCCESS to NOOP")?;
    if !r.body.is_empty() {
        return Err(fail(
            "an empty body (u64 length 0) for NOOP",
            format!("{} bytes", r.body.len()),
        ));
    }
    Ok(())
}

pub(super) fn signature_binding(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let cmds = [
        Command::Noop,
        Command::KeyRequest {
            user: None,
            domain: None,
        },
        Command::Help,
        Command::KeyRequest {
            user: Some(super::unused_account()),
            domain: None,
        },
        Command::Noop,
    ];
    let mut all = Vec::new();
    for c in &cmds {
        all.extend_from_slice(&c.to_bytes());
    }
    p.send(&all)?;
    for c in &cmds {
        // The probe checks the signature against nonce, seq and request.
        p.reply(request_digest(&c.to_bytes()), c.word())?;
    }
    if p.seq() != cmds.len() as u64 + 1 {
        return Err(fail(
            format!("{} replies", cmds.len() + 1),
            format!("{}", p.seq()),
        ));
    }
    Ok(())
}

pub(super) fn binding_before_ohai(cx: &mut Ctx<'_>) -> Check {
    let mut p = cx.probe()?;
    p.expect_cmd(
        &Command::Noop,
        Status::Success,
        "SUCCESS to NOOP before OHAI",
    )?;
    p.expect_cmd(
        &Command::Help,
        Status::Success,
        "SUCCESS to HELP before OHAI",
    )?;
    // OHAI is reply #2; on the nonce it gives, replies #0 and #1 are checked.
    p.ohai()?;
    Ok(())
}

pub(super) fn nonce_per_connection(cx: &mut Ctx<'_>) -> Check {
    let (mut a, ga) = cx.greeted()?;
    // A second OHAI on the same connection must give the same nonce (the
    // probe fails the rule otherwise).
    a.ohai()?;
    let (_b, gb) = cx.greeted()?;
    if ga.nonce == gb.nonce {
        return Err(fail(
            "a fresh nonce on each connection",
            format!("two connections both got nonce {}", hex::encode(ga.nonce)),
        ));
    }
    if ga.nonce == [0; 32] {
        return Err(fail("a random nonce", "32 zero bytes"));
    }
    Ok(())
}

pub(super) fn greeting_matches_banner(cx: &mut Ctx<'_>) -> Check {
    let (p, g) = cx.greeted()?;
    if g.domain.as_str() != p.banner_domain {
        return Err(fail(
            format!(
                "the greeting naming the banner's domain {}",
                p.banner_domain
            ),
            format!("domain: {}", g.domain),
        ));
    }
    // The probe refuses a greeting whose key differs from the first one.
    Ok(())
}

pub(super) fn greeting_names_domain(cx: &mut Ctx<'_>) -> Check {
    let want = cx.cfg.domain.clone().expect("needs Domain");
    let (_, g) = cx.greeted()?;
    if g.domain != want {
        return Err(fail(
            format!("a greeting with `domain: {want}`"),
            format!("domain: {}", g.domain),
        ));
    }
    Ok(())
}
