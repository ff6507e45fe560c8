//! Wrong passwords, unknown users and the login rate limit.

use crate::support::{Home, Server, free_port, password_file, tempdir};

#[test]
fn wrong_password_is_refused_and_the_rate_limit_bites() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "c.test", free_port(), &[]);
    let right = password_file(base, "right", "carol's password");
    let wrong = password_file(base, "wrong", "not carol's password");
    server.add_user("carol", std::path::Path::new(&right));
    let home = Home::new(base.join("carol"));
    let login = |pw: &str, who: &str| {
        home.cmd(&[
            "--server",
            &server.addr(),
            "login",
            who,
            "--password-file",
            pw,
        ])
    };

    // An unknown user gets the same answer as a wrong password (and does not
    // count against carol).
    login(&wrong, "nobody@c.test").fails(3, "wrong password or unknown user");

    for _ in 0..5 {
        login(&wrong, "carol@c.test").fails(3, "wrong password or unknown user");
    }
    assert!(!home.dir.join("identity.key").exists());
    // The sixth attempt is refused even with the right password.
    let r = login(&right, "carol@c.test");
    r.fails(3, "too many failed attempts");
    assert!(r.stderr.contains("wait"), "{}", r.stderr);
    assert!(!home.dir.join("identity.key").exists());

    // Another account on the same server is not locked out.
    let dave_pw = password_file(base, "dave", "dave's password");
    server.add_user("dave", std::path::Path::new(&dave_pw));
    let dave = Home::new(base.join("dave"));
    dave.cmd(&[
        "--server",
        &server.addr(),
        "login",
        "dave@c.test",
        "--password-file",
        &dave_pw,
    ])
    .ok();
    assert!(dave.dir.join("identity.key").is_file());
}

/// Issue 11: the key a server proves in the TLS handshake must be the one
/// the client pinned. An impostor for the same domain at the same address
/// (another key) is a verification failure, exit 5, and gets no command;
/// the real server after `cmtpd key rotate` is accepted along its rotation
/// statement.
#[test]
fn an_impostor_server_key_is_exit_5_and_a_rotated_key_is_accepted() {
    let tmp = tempdir();
    let base = tmp.path();
    let port = free_port();
    let mut server = Server::start(base, "c.test", port, &[]);
    let pw = password_file(base, "carol", "carol's password");
    server.add_user("carol", std::path::Path::new(&pw));
    let home = Home::new(base.join("carol"));
    home.cmd(&[
        "--server",
        &server.addr(),
        "login",
        "carol@c.test",
        "--password-file",
        &pw,
    ])
    .ok();
    home.cmd(&["inbox"]).ok();
    server.kill();

    let elsewhere = base.join("impostor");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut impostor = Server::start(&elsewhere, "c.test", port, &[]);
    let r = home.cmd(&["inbox"]);
    r.fails(5, "changed");
    assert!(
        !impostor.log().contains("logged in"),
        "the impostor saw a login: {}",
        impostor.log()
    );
    impostor.kill();

    server.admin(&["key", "rotate"]);
    let server = Server::start(base, "c.test", port, &[]);
    home.cmd(&["inbox"]).ok();
    drop(server);
}
