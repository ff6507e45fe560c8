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
