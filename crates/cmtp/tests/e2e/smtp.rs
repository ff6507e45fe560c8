//! `cmtp` pointed at a real SMTP server (aiosmtpd) says so at once.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Guard, Home, free_port, password_file, tempdir, wait_for_banner};

#[test]
fn an_smtp_server_is_recognised_at_once() {
    let probe = Command::new("python3")
        .args(["-c", "import aiosmtpd"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    match probe {
        Ok(s) if s.success() => {}
        _ => panic!(
            "this test needs Python's aiosmtpd (a real SMTP server): install it with `python3 -m pip install aiosmtpd`"
        ),
    }
    let tmp = tempdir();
    let port = free_port();
    let _smtp = Guard(
        Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start aiosmtpd"),
    );
    wait_for_banner(port, "220", Duration::from_secs(20));
    let pw = password_file(tmp.path(), "x", "whatever");
    let home = Home::new(tmp.path().join("home"));
    let r = home.cmd(&[
        "--server",
        &format!("127.0.0.1:{port}"),
        "login",
        "alice@a.test",
        "--password-file",
        &pw,
    ]);
    r.fails(4, "this is an SMTP server, not CMTP");
    assert!(r.elapsed < Duration::from_secs(5), "took {:?}", r.elapsed);
}
