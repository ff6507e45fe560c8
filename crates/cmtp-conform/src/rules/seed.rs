//! §6 The seed commands (OHAI, KEYREQUEST, NOOP, HELP, OBAI), §3 names in
//! arguments, §9.2–§9.3 the statements KEYREQUEST returns.

use cmtp_proto::command::Command;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle};
use sha2::{Digest, Sha256};

use super::{Ctx, now, unused_account};
use crate::probe::{Check, Stop, describe, expect_status, fail};

pub(super) fn ohai_fields(cx: &mut Ctx<'_>) -> Check {
    let mut p = cx.probe()?;
    let r = p.cmd(&Command::Ohai)?;
    expect_status(&r, &Status::Success, "SUCCESS to OHAI")?;
    let text = std::str::from_utf8(&r.body)
        .map_err(|_| fail("a UTF-8 body", "bytes that are not UTF-8"))?;
    if !text.ends_with('\n') {
        return Err(fail("LF-ended lines", "the body does not end in LF"));
    }
    const ORDER: [&str; 10] = [
        "domain",
        "protocol",
        "software",
        "crypto",
        "extensions",
        "key",
        "fingerprint",
        "nonce",
        "max-message-size",
        "max-attachments",
    ];
    let mut seen: Vec<(&str, &str)> = Vec::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(": ") else {
            return Err(fail("`key: value` lines", format!("the line {line:?}")));
        };
        if ORDER.contains(&k) {
            if seen.iter().any(|(s, _)| *s == k) {
                return Err(fail("each key once", format!("{k} twice")));
            }
            seen.push((k, v));
        }
    }
    let keys: Vec<&str> = seen.iter().map(|(k, _)| *k).collect();
    if keys != ORDER {
        return Err(fail(
            format!("the keys {} in this order", ORDER.join(", ")),
            keys.join(", "),
        ));
    }
    let get = |k: &str| seen.iter().find(|(s, _)| *s == k).expect("present").1;
    let is_hex64 = |v: &str| {
        v.len() == 64
            && v.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if Domain::parse_canonical(get("domain")).is_err() {
        return Err(fail(
            "a canonical domain",
            format!("domain: {}", get("domain")),
        ));
    }
    if get("protocol") != "CMTP/2" {
        return Err(fail(
            "protocol: CMTP/2",
            format!("protocol: {}", get("protocol")),
        ));
    }
    if get("crypto") != "1" {
        return Err(fail("crypto: 1", format!("crypto: {}", get("crypto"))));
    }
    if !get("extensions")
        .split(' ')
        .filter(|t| !t.is_empty())
        .all(|t| {
            t.bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
        })
    {
        return Err(fail(
            "extensions: space-separated upper-case tokens",
            format!("extensions: {}", get("extensions")),
        ));
    }
    for k in ["key", "fingerprint", "nonce"] {
        if !is_hex64(get(k)) {
            return Err(fail(
                format!("{k}: 64 lower-case hex digits"),
                format!("{k}: {}", get(k)),
            ));
        }
    }
    let key_bytes: [u8; 32] = hex::decode(get("key"))
        .expect("checked hex")
        .try_into()
        .expect("32 bytes");
    if PublicKey::from_bytes(&key_bytes).is_err() {
        return Err(fail(
            "key: a valid Ed25519 public key",
            format!("key: {}", get("key")),
        ));
    }
    let fp = hex::encode(Sha256::digest(key_bytes));
    if get("fingerprint") != fp {
        return Err(fail(
            format!("fingerprint: H(key) = {fp}"),
            format!("fingerprint: {}", get("fingerprint")),
        ));
    }
    if get("max-message-size").parse::<u64>().is_err() {
        return Err(fail(
            "max-message-size: a decimal u64",
            format!("max-message-size: {}", get("max-message-size")),
        ));
    }
    if get("max-attachments").parse::<u32>().is_err() {
        return Err(fail(
            "max-attachments: a decimal u32",
            format!("max-attachments: {}", get("max-attachments")),
        ));
    }
    // The probe checks the signature of OHAI's reply with the nonce it gives.
    p.ohai()?;
    Ok(())
}

/// Decodes and checks a server key bundle of `domain` for `key` (§9.3, §9.4).
fn check_bundle(body: &[u8], domain: &Domain, key: &PublicKey) -> Check<ServerKeyBundle> {
    let b = ServerKeyBundle::decode(body).map_err(|e| {
        fail(
            "a server key bundle: key statement | u8 rotation count | rotations (§9.3)",
            e.to_string(),
        )
    })?;
    let stated = b.verify_self(domain, now()).map_err(|e| {
        fail(
            format!("a statement of the server of {domain} signed by the key it states, valid now"),
            e.to_string(),
        )
    })?;
    if stated != *key {
        return Err(fail(
            format!("the key of the greeting ({})", key.fingerprint_hex()),
            format!("a bundle for {}", stated.fingerprint_hex()),
        ));
    }
    for (i, r) in b.rotations.iter().enumerate() {
        r.verify().map_err(|e| {
            fail(
                "rotations signed by the old key (§9.4)",
                format!("rotation {}: {e}", i + 1),
            )
        })?;
        if &r.domain != domain {
            return Err(fail(
                format!("rotations of {domain}"),
                format!("rotation {} for {}", i + 1, r.domain),
            ));
        }
        let next_old = b.rotations.get(i + 1).map(|n| n.old_key).unwrap_or(stated);
        if r.new_key != next_old {
            return Err(fail(
                "rotations chained oldest first up to the current key (§9.4)",
                format!(
                    "rotation {} leads to {}",
                    i + 1,
                    r.new_key.fingerprint_hex()
                ),
            ));
        }
    }
    Ok(b)
}

/// How long a statement is valid, for the report (§9.2 leaves it to the server).
fn validity(s: &KeyStatement) -> String {
    let secs = s.expires_at.saturating_sub(s.issued_at);
    let (days, hours) = (secs / 86400, secs % 86400 / 3600);
    let ago = now().saturating_sub(s.issued_at);
    format!(
        "the statement is valid for {days} d {hours} h, issued {} h {} min ago",
        ago / 3600,
        ago % 3600 / 60
    )
}

fn server_key_request(cx: &mut Ctx<'_>, domain: Option<Domain>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let shown = domain.as_ref().map_or("\"\"".to_owned(), |d| d.to_string());
    let r = p.expect_cmd(
        &Command::KeyRequest { user: None, domain },
        Status::Success,
        &format!("SUCCESS to KEYREQUEST \"\" {shown}"),
    )?;
    let b = check_bundle(&r.body, cx.domain(), &cx.key())?;
    cx.note(validity(&b.statement));
    if !b.rotations.is_empty() {
        cx.note(format!(
            "the bundle holds {} rotation(s)",
            b.rotations.len()
        ));
    }
    Ok(())
}

pub(super) fn keyrequest_server_key(cx: &mut Ctx<'_>) -> Check {
    server_key_request(cx, None)
}

pub(super) fn keyrequest_server_key_own_domain(cx: &mut Ctx<'_>) -> Check {
    let d = cx.domain().clone();
    server_key_request(cx, Some(d))
}

pub(super) fn keyrequest_unknown_user(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let own = cx.domain().clone();
    // 64 bytes: the longest valid account.
    let longest = Account::parse(&format!("conform{}", "9".repeat(57))).expect("64-byte account");
    for (user, domain) in [
        (unused_account(), None),
        (unused_account(), Some(own)),
        (longest, None),
    ] {
        let shown = domain.as_ref().map_or("\"\"".to_owned(), |d| d.to_string());
        let r = p.expect_cmd(
            &Command::KeyRequest {
                user: Some(user.clone()),
                domain,
            },
            Status::KeyNotAvailable,
            &format!("KEYNOTAVAILABLE to KEYREQUEST {user} {shown} (no such account)"),
        )?;
        if std::str::from_utf8(&r.body).is_err() {
            return Err(fail("a UTF-8 text body", "bytes that are not UTF-8"));
        }
    }
    Ok(())
}

/// Decodes and checks the key statement of `account@domain` under `key` (§9.2).
fn check_statement(
    body: &[u8],
    account: &Account,
    domain: &Domain,
    key: &PublicKey,
) -> Check<KeyStatement> {
    let s =
        KeyStatement::decode(body).map_err(|e| fail("a key statement (§9.2)", e.to_string()))?;
    s.verify(key, Some(account), domain, now()).map_err(|e| {
        fail(
            format!("the statement of {account}@{domain} signed by the server key, valid now"),
            e.to_string(),
        )
    })?;
    Ok(s)
}

pub(super) fn keyrequest_user(cx: &mut Ctx<'_>) -> Check {
    let account = cx.local_account()?;
    let own = cx.domain().clone();
    let (mut p, _) = cx.greeted()?;
    let mut keys = Vec::new();
    for domain in [None, Some(own.clone())] {
        let r = p.expect_cmd(
            &Command::KeyRequest {
                user: Some(account.clone()),
                domain,
            },
            Status::Success,
            &format!("SUCCESS to KEYREQUEST {account} (an existing account)"),
        )?;
        let s = check_statement(&r.body, &account, &own, &cx.key())?;
        if keys.is_empty() {
            cx.note(validity(&s));
        }
        keys.push(s.key);
    }
    if keys[0] != keys[1] {
        return Err(fail(
            "the same key with an empty domain and the own domain",
            "two different keys",
        ));
    }
    Ok(())
}

pub(super) fn keyrequest_invalid_names(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let label63 = "a".repeat(63);
    let too_long_domain = format!("{label63}.{label63}.{label63}.{}", "a".repeat(62));
    let users: Vec<String> = vec![
        "a..b".into(),
        "-a".into(),
        "a-".into(),
        ".a".into(),
        "a/b".into(),
        "a\\b".into(),
        "a b".into(),
        "é".into(),
        "a".repeat(65),
    ];
    let domains: Vec<String> = vec![
        "-a.example".into(),
        "a..example".into(),
        "a_b.example".into(),
        "a.example..".into(),
        format!("{}.example", "a".repeat(64)),
        too_long_domain,
    ];
    let mut cases: Vec<(Vec<u8>, String)> = Vec::new();
    for u in &users {
        cases.push((
            format!("KEYREQUEST\0{u}\0\0").into_bytes(),
            format!("the account {u:?}"),
        ));
    }
    for d in &domains {
        cases.push((
            format!("KEYREQUEST\0\0{d}\0").into_bytes(),
            format!("the domain {:?}", clip(d)),
        ));
    }
    for (bytes, what) in &cases {
        let r = p.raw_cmd(bytes, &format!("KEYREQUEST with {what}"))?;
        expect_status(
            &r,
            &Status::BadArgument,
            &format!("BADARGUMENT to KEYREQUEST with {what}"),
        )?;
        // A good command between bad ones keeps the bad-command count low.
        p.expect_usable("BADARGUMENT")?;
    }
    Ok(())
}

fn clip(s: &str) -> String {
    if s.len() > 40 {
        format!("{}…({} bytes)", &s[..20], s.len())
    } else {
        s.to_owned()
    }
}

pub(super) fn names_fold_case(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let upper = format!("{}.", cx.domain().as_str().to_ascii_uppercase());
    let bytes = format!("KEYREQUEST\0\0{upper}\0").into_bytes();
    let r = p.raw_cmd(&bytes, "KEYREQUEST with an upper-case domain")?;
    expect_status(
        &r,
        &Status::Success,
        &format!(
            "SUCCESS to KEYREQUEST \"\" {upper} (folded to {})",
            cx.domain()
        ),
    )?;
    check_bundle(&r.body, cx.domain(), &cx.key())?;
    let unknown = unused_account().as_str().to_ascii_uppercase();
    let bytes = format!("KEYREQUEST\0{unknown}\0\0").into_bytes();
    let r = p.raw_cmd(&bytes, "KEYREQUEST with an upper-case account")?;
    expect_status(
        &r,
        &Status::KeyNotAvailable,
        &format!("KEYNOTAVAILABLE to KEYREQUEST {unknown} (a valid name once folded)"),
    )?;
    if let Ok(account) = cx.local_account() {
        let upper = account.as_str().to_ascii_uppercase();
        let bytes = format!("KEYREQUEST\0{upper}\0\0").into_bytes();
        let r = p.raw_cmd(&bytes, "KEYREQUEST with an upper-case account")?;
        expect_status(
            &r,
            &Status::Success,
            &format!("SUCCESS to KEYREQUEST {upper} (the account {account})"),
        )?;
        check_statement(&r.body, &account, cx.domain(), &cx.key())?;
    }
    Ok(())
}

pub(super) fn keyrequest_remote_bundle(cx: &mut Ctx<'_>) -> Check {
    let s = cx.served()?;
    let (domain, key) = (s.domain().clone(), s.key());
    let (mut p, _) = cx.greeted()?;
    let r = p.expect_cmd(
        &Command::KeyRequest {
            user: None,
            domain: Some(domain.clone()),
        },
        Status::Success,
        &format!("SUCCESS to KEYREQUEST \"\" {domain} (the checker's own domain)"),
    )?;
    // Only the checker can sign for its key: a bundle that verifies under
    // it is one the checker served, passed on unchanged.
    check_bundle(&r.body, &domain, &key).map_err(|e| match e {
        Stop::Fail { expected, got } => fail(
            format!("the bundle the checker serves for {domain}, unchanged: {expected}"),
            got,
        ),
        other => other,
    })?;
    Ok(())
}

pub(super) fn keyrequest_remote_user(cx: &mut Ctx<'_>) -> Check {
    let s = cx.served()?;
    let (domain, user, key, user_key) = (
        s.domain().clone(),
        s.user().clone(),
        s.key(),
        s.user_key().public(),
    );
    let (mut p, _) = cx.greeted()?;
    let r = p.expect_cmd(
        &Command::KeyRequest {
            user: Some(user.clone()),
            domain: Some(domain.clone()),
        },
        Status::Success,
        &format!("SUCCESS to KEYREQUEST {user} {domain} (served by the checker)"),
    )?;
    let statement = check_statement(&r.body, &user, &domain, &key).map_err(|e| match e {
        Stop::Fail { expected, got } => fail(
            format!("the statement the checker serves for {user}@{domain}, unchanged: {expected}"),
            got,
        ),
        other => other,
    })?;
    if statement.key != user_key {
        return Err(fail(
            format!("the key of {user}@{domain} as the checker states it"),
            format!("key {}", statement.key.fingerprint_hex()),
        ));
    }
    Ok(())
}

pub(super) fn keyrequest_remote_unknown(cx: &mut Ctx<'_>) -> Check {
    let domain = cx.served()?.domain().clone();
    let (mut p, _) = cx.greeted()?;
    let user = unused_account();
    p.expect_cmd(
        &Command::KeyRequest {
            user: Some(user.clone()),
            domain: Some(domain.clone()),
        },
        Status::KeyNotAvailable,
        &format!("KEYNOTAVAILABLE to KEYREQUEST {user} {domain} (the checker has no such user)"),
    )?;
    Ok(())
}

pub(super) fn keyrequest_remote_unreachable(cx: &mut Ctx<'_>) -> Check {
    let domain = cx
        .cfg
        .unreachable_domain
        .clone()
        .expect("needs UnreachableDomain");
    let (mut p, _) = cx.greeted()?;
    p.expect_cmd(
        &Command::KeyRequest {
            user: None,
            domain: Some(domain.clone()),
        },
        Status::TempFailure,
        &format!("TEMPFAILURE to KEYREQUEST \"\" {domain} (its server cannot be reached)"),
    )?;
    Ok(())
}

pub(super) fn noop(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.expect_cmd(&Command::Noop, Status::Success, "SUCCESS to NOOP")?;
    if !r.body.is_empty() {
        return Err(fail("an empty body", describe(&r)));
    }
    Ok(())
}

pub(super) fn help(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.expect_cmd(&Command::Help, Status::Success, "SUCCESS to HELP")?;
    let text = std::str::from_utf8(&r.body)
        .map_err(|_| fail("a UTF-8 body", "bytes that are not UTF-8"))?;
    let words: std::collections::HashSet<&str> =
        text.split(|c: char| !c.is_ascii_alphanumeric()).collect();
    let missing: Vec<&str> = [
        "OHAI",
        "MAIL",
        "KEYREQUEST",
        "NOOP",
        "LOGIN",
        "HELP",
        "OBAI",
        "LOGINFINISH",
        "KEYLOGIN",
        "REGISTER",
        "REGFINISH",
        "PASSWORD",
        "LIST",
        "FETCH",
        "DELETE",
    ]
    .into_iter()
    .filter(|w| !words.contains(w))
    .collect();
    if !missing.is_empty() {
        return Err(fail(
            "a text naming every command",
            format!("it does not name {}", missing.join(", ")),
        ));
    }
    Ok(())
}

pub(super) fn obai(cx: &mut Ctx<'_>) -> Check {
    let (mut p, _) = cx.greeted()?;
    let r = p.expect_cmd(&Command::Obai, Status::Success, "SUCCESS to OBAI")?;
    if r.body != b"bye" {
        return Err(fail("the body `bye`", describe(&r)));
    }
    p.expect_closed(cx.cfg.close_within, "OBAI")
}
