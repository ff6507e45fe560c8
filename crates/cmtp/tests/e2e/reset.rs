//! A forgotten password: the administrator's `cmtpd user reset`, then the
//! user's `cmtp reset` (PROTOCOL.md §12.6).

use std::time::Duration;

use crate::support::{Home, Server, free_port, password_file, tempdir, wait_until};

#[test]
fn cmtp_reset_sets_a_new_password_and_key_and_keeps_the_old_key_in_the_home() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let old_pw = password_file(base, "old", "alice's old password");
    let new_pw = password_file(base, "new", "alice's new password");
    let bob_pw = password_file(base, "bob", "bob's password");
    server.add_user("alice", std::path::Path::new(&old_pw));
    server.add_user("bob", std::path::Path::new(&bob_pw));
    let login = |home: &Home, who: &str, pw: &str| {
        home.cmd(&[
            "-o",
            "json",
            "--server",
            &server.addr(),
            "login",
            who,
            "--password-file",
            pw,
        ])
    };
    let alice = Home::new(base.join("alice"));
    let old_fp = login(&alice, "alice@a.test", &old_pw).json()["fingerprint"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = Home::new(base.join("bob"));
    login(&bob, "bob@a.test", &bob_pw).ok();
    bob.run(
        &["send", "--to", "alice@a.test", "--subject", "before"],
        b"sealed to the old key\n",
    )
    .ok();

    let token = server.reset_token("alice");
    assert!(token.starts_with("rst-"), "{token}");
    let reset = |token: &str| {
        alice.cmd(&[
            "-o",
            "json",
            "--server",
            &server.addr(),
            "reset",
            "alice@a.test",
            "--token",
            token,
            "--password-file",
            &new_pw,
        ])
    };
    let r = reset(&token);
    let v = r.json();
    let new_fp = v["fingerprint"].as_str().unwrap().to_owned();
    assert_ne!(new_fp, old_fp, "a new identity key");
    assert!(r.stderr.contains("no back door"), "{}", r.stderr);
    // The old key is not lost: kept beside the new one in the home.
    let kept = alice
        .dir
        .join(format!("identity.key.old-{}", &old_fp[..16]));
    assert!(r.stderr.contains(kept.to_str().unwrap()), "{}", r.stderr);
    assert!(std::fs::read_to_string(&kept).unwrap().contains(&old_fp));
    // The token works once.
    reset(&token).fails(1, "invalid");
    // The new password logs in anywhere; the old one no longer does.
    let laptop = Home::new(base.join("alice-laptop"));
    let v = login(&laptop, "alice@a.test", &new_pw).json();
    assert_eq!(v["fingerprint"], new_fp.as_str());
    login(&Home::new(base.join("x")), "alice@a.test", &old_pw)
        .fails(3, "wrong password or unknown user");
    // Mail sealed to the old key is there but does not open with the new one.
    let mut list = Vec::new();
    wait_until(Duration::from_secs(30), "alice's inbox", || {
        list = laptop
            .cmd(&["-o", "json", "inbox"])
            .json()
            .as_array()
            .unwrap()
            .clone();
        !list.is_empty()
    });
    assert_eq!(list[0]["status"], "undecryptable", "{list:?}");
    // New mail is sealed to the new key (bob's client asks afresh) and opens.
    bob.run(
        &["send", "--to", "alice@a.test", "--subject", "after"],
        b"sealed to the new key\n",
    )
    .ok();
    wait_until(Duration::from_secs(30), "the new message", || {
        list = laptop
            .cmd(&["-o", "json", "inbox"])
            .json()
            .as_array()
            .unwrap()
            .clone();
        list.len() == 2
    });
    // The inbox is newest first.
    let after = list
        .iter()
        .find(|m| m["subject"] == "after")
        .unwrap_or_else(|| panic!("{list:?}"));
    assert_eq!(after["status"], "verified");
    assert!(
        list.iter().any(|m| m["status"] == "undecryptable"),
        "{list:?}"
    );
}
