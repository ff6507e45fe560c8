//! What cmtp says before it is set up, and when the server is unreachable.

use crate::support::{Home, free_port, password_file, tempdir};

#[test]
fn an_unconfigured_client_without_a_terminal_says_how_to_start() {
    let tmp = tempdir();
    let home = Home::new(tmp.path().join("home"));
    for args in [&["inbox"][..], &[][..], &["send", "--to", "a@b.test"][..]] {
        let r = home.cmd(args);
        r.fails(2, "cmtp register");
        assert!(r.stderr.contains("cmtp login"), "{}", r.stderr);
    }
    // Usage errors are exit code 2 too.
    home.cmd(&["read", "not-a-number"]).fails(2, "invalid");
    home.cmd(&["login", "not an address", "--password-file", "/dev/null"])
        .fails(2, "not a valid address");
}

#[test]
fn an_unreachable_server_is_exit_code_4() {
    let tmp = tempdir();
    let pw = password_file(tmp.path(), "x", "pw");
    let home = Home::new(tmp.path().join("home"));
    home.cmd(&[
        "--server",
        &format!("127.0.0.1:{}", free_port()),
        "login",
        "alice@a.test",
        "--password-file",
        &pw,
    ])
    .fails(4, "cannot reach");
}

#[test]
fn help_documents_exit_codes_and_the_home_layout() {
    let tmp = tempdir();
    let out = Home::new(tmp.path().join("h"))
        .cmd(&["--help"])
        .ok()
        .to_owned();
    for s in [
        "Exit codes:",
        "6  not found",
        "config.toml",
        "identity.key",
        "known_domains",
        "cache/",
    ] {
        assert!(out.contains(s), "{s:?} missing from --help");
    }
}
