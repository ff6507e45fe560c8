//! cmtp-conform against a real cmtpd (every rule passes or says why it
//! cannot run; the contradictions known today fail), and against peers
//! that break rules on purpose (those rules fail).

mod broken;
mod support;

use cmtp_conform::RULES;
use cmtp_proto::crypto::IdentityKey;
use support::*;

/// Rules cmtpd fails today because it contradicts docs/PROTOCOL.md (issue
/// 10; the lead is fixing them). When one starts passing, remove it here.
/// Rules cmtpd is known to break (each must fail, so the list shrinks as
/// they are fixed). Empty: the contradictions found by the first peer
/// implementation are fixed (issue 10).
const KNOWN_CONTRADICTIONS: &[(&str, &str)] = &[];

fn assert_only_known_failures(results: &[RuleResult], log: &str) {
    let failed: Vec<&RuleResult> = results.iter().filter(|r| r.result == "fail").collect();
    for f in &failed {
        let known = KNOWN_CONTRADICTIONS
            .iter()
            .find(|(id, _)| *id == f.id)
            .unwrap_or_else(|| panic!("cmtpd fails {}: {}\ncmtpd log:\n{log}", f.id, f.text));
        assert!(f.text.contains(known.1), "{}", f.text);
    }
    for (id, _) in KNOWN_CONTRADICTIONS {
        let r = results
            .iter()
            .find(|r| r.id == *id)
            .expect("every rule reported");
        assert!(
            r.result != "pass",
            "{id} passes now: remove it from KNOWN_CONTRADICTIONS"
        );
    }
}

#[test]
fn cmtpd_passes_every_rule_when_the_checker_has_all_it_needs() {
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::start();
    // The checker's own domain keeps its key in a file and publishes its
    // fingerprint, as an operator would.
    let key = IdentityKey::generate(&mut rand_core::OsRng);
    let key_file = tmp.path().join("served.key");
    std::fs::write(&key_file, hex::encode(key.seed())).unwrap();
    net.publish_key(&key.public().fingerprint_hex());
    let served_port = free_port();
    let cmtpd = Cmtpd::start(tmp.path(), &net, served_port);
    let serve = format!("127.0.0.1:{served_port}");
    let (idle, command, grace) = (
        IDLE_SECS.to_string(),
        COMMAND_SECS.to_string(),
        DATA_GRACE_SECS.to_string(),
    );
    let password = cmtpd.dir.join("alice.pw");
    let out = checker(&[
        "--target",
        &cmtpd.target(),
        "--domain",
        "a.test",
        "--user",
        "alice",
        "--password-file",
        password.to_str().unwrap(),
        "--as-domain",
        "conform.test",
        "--serve",
        &serve,
        "--as-key",
        key_file.to_str().unwrap(),
        "--unreachable-domain",
        "down.test",
        "--slow",
        "--idle-timeout",
        &idle,
        "--command-timeout",
        &command,
        "--data-grace",
        &grace,
        "--rate-limit",
        "-o",
        "json",
    ]);
    let results = results(&out);
    assert_eq!(results.len(), RULES.len(), "one result per rule");
    let not_testable: Vec<&RuleResult> = results
        .iter()
        .filter(|r| r.result == "not-testable")
        .collect();
    assert!(
        not_testable.is_empty(),
        "with every option given, every rule runs: {not_testable:#?}\ncmtpd log:\n{}",
        cmtpd.log()
    );
    assert_only_known_failures(&results, &cmtpd.log());
    // With --user as the recipient, accepted mail is looked at and removed.
    for r in &results {
        assert!(!r.text.contains("not looked at"), "{}", r.text);
    }
    let failed = results.iter().any(|r| r.result == "fail");
    assert_eq!(out.status.code(), Some(if failed { 1 } else { 0 }));
}

#[test]
fn without_credentials_or_a_second_domain_those_rules_say_what_they_need() {
    let tmp = tempfile::tempdir().unwrap();
    let net = Net::start();
    let cmtpd = Cmtpd::start(tmp.path(), &net, free_port());
    let out = checker(&["--target", &cmtpd.target()]);
    let text = String::from_utf8(out.stdout.clone()).unwrap();
    for rule in RULES {
        let head = format!("§{:<5} {}: ", rule.section, rule.id);
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(&head)).collect();
        assert_eq!(lines.len(), 1, "one line for {}:\n{text}", rule.id);
        let line = lines[0];
        if rule.needs.is_empty() {
            assert!(
                line.starts_with("pass") || line.starts_with("FAIL"),
                "{line}"
            );
        } else {
            assert!(line.starts_with("not testable"), "{line}");
            // The next line says which option it needs.
            let reason = text.lines().skip_while(|l| *l != line).nth(1).unwrap();
            assert!(reason.trim_start().starts_with("(needs --"), "{reason}");
        }
    }
    let json = checker(&["--target", &cmtpd.target(), "-o", "json"]);
    assert_only_known_failures(&results(&json), &cmtpd.log());
    assert!(
        text.lines()
            .any(|l| l.starts_with(&format!("{} rules: ", RULES.len()))),
        "{text}"
    );
}

#[test]
fn list_prints_every_rule_with_its_section_and_what_it_needs() {
    let out = checker(&["--list"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), RULES.len());
    assert!(text.contains("§4.2   word-too-long: "), "{text}");
    assert!(
        text.contains("§4.3   command-timeout [needs --slow]: "),
        "{text}"
    );
}

#[test]
fn an_unreachable_target_is_an_error_not_a_failure() {
    let port = free_port();
    let out = checker(&["--target", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be checked"), "{err}");
}

#[test]
fn a_cmtp1_server_in_clear_cannot_be_checked_and_the_checker_says_so() {
    use std::io::Write;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            let _ = s.write_all(
                b"554 old.test CMTP/1 cmtpd 0.0.9 ready; this is not an SMTP server\r\n",
            );
            // Holds the connection as a CMTP/1 server would, waiting for commands.
            std::thread::spawn(move || {
                let mut sink = [0u8; 1024];
                while matches!(std::io::Read::read(&mut s, &mut sink), Ok(n) if n > 0) {}
            });
        }
    });
    let out = checker(&["--target", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be checked"), "{err}");
    assert!(err.contains("a CMTP/1 banner"), "{err}");
}
