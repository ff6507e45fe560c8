//! A well-behaved command-line program (issue 14): JSON errors with the
//! exit code, test-only flags hidden, shell completions and man pages, and
//! a setup wizard that asks a wrong answer again (driven on a real
//! pseudo-terminal by Python's `pty`).

use serde_json::Value;

use crate::support::{Home, Server, free_port, password_file, register, tempdir};

#[test]
fn json_errors_are_json_with_the_exit_code() {
    let tmp = tempdir();
    let home = Home::new(tmp.path().join("home"));
    // An error of the program: not set up (exit 2).
    let r = home.cmd(&["-o", "json", "inbox"]);
    assert_eq!(r.code, 2);
    let v: Value = serde_json::from_str(r.stderr.trim())
        .unwrap_or_else(|e| panic!("stderr is not one JSON document ({e}): {}", r.stderr));
    assert_eq!(v["error"]["exit_code"], 2);
    assert_eq!(v["error"]["kind"], "usage");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cmtp register")
    );
    assert!(r.stdout.is_empty());
    // An error of the arguments, found by the parser.
    for args in [
        &["-o", "json", "read", "not-a-number"][..],
        &["read", "x", "--output", "json"][..],
        &["--output=json", "frobnicate"][..],
    ] {
        let r = home.cmd(args);
        assert_eq!(r.code, 2, "{args:?}");
        let v: Value = serde_json::from_str(r.stderr.trim())
            .unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {}", r.stderr));
        assert_eq!(v["error"]["exit_code"], 2);
    }
    // Unreachable server: exit 4, as JSON.
    let pw = password_file(tmp.path(), "x", "pw");
    let r = home.cmd(&[
        "-o",
        "json",
        "--server",
        &format!("127.0.0.1:{}", free_port()),
        "login",
        "alice@a.test",
        "--password-file",
        &pw,
    ]);
    assert_eq!(r.code, 4);
    let v: Value = serde_json::from_str(r.stderr.trim()).unwrap();
    assert_eq!(v["error"]["exit_code"], 4);
    assert_eq!(v["error"]["kind"], "unavailable");
    // Text errors stay text.
    home.cmd(&["inbox"]).fails(2, "cmtp: error:");
}

#[test]
fn help_hides_test_only_flags_and_completions_and_man_pages_are_generated() {
    let tmp = tempdir();
    let home = Home::new(tmp.path().join("home"));
    for args in [&["--help"][..], &["send", "--help"], &["inbox", "--help"]] {
        let out = home.cmd(args).ok().to_owned();
        assert!(!out.contains("min-ksf"), "{args:?} shows --min-ksf:\n{out}");
    }
    let send = home.cmd(&["send", "--help"]).ok().to_owned();
    assert!(
        send.contains("--bcc") && send.contains("[RECIPIENT]"),
        "{send}"
    );
    // The flag still works (tests use it).
    home.cmd(&["--min-ksf", "256,1,1", "--help"]).ok();

    for (shell, marker) in [
        ("bash", "_cmtp()"),
        ("zsh", "#compdef cmtp"),
        ("fish", "complete -c cmtp"),
    ] {
        let out = home.cmd(&["completions", shell]).ok().to_owned();
        assert!(out.contains(marker), "{shell}: {out}");
        assert!(out.contains("reply-all"), "{shell} completes reply-all");
    }
    // bash can load the script.
    let script = tmp.path().join("cmtp.bash");
    std::fs::write(&script, home.cmd(&["completions", "bash"]).stdout).unwrap();
    let st = std::process::Command::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p cmtp", script.display()))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );

    let man = tmp.path().join("man");
    let out = home.cmd(&["man", man.to_str().unwrap()]).ok().to_owned();
    assert!(out.contains("cmtp.1"), "{out}");
    let page = std::fs::read_to_string(man.join("cmtp.1")).unwrap();
    assert!(page.contains(".TH cmtp 1"), "{page}");
    assert!(!page.contains("min\\-ksf"), "the man page shows --min-ksf");
    let search = std::fs::read_to_string(man.join("cmtp-search.1")).unwrap();
    assert!(search.contains("from:"), "{search}");
    // man(1) renders it, where installed.
    if std::process::Command::new("man")
        .arg("--version")
        .output()
        .is_ok()
    {
        let r = std::process::Command::new("man")
            .arg("-l")
            .arg(man.join("cmtp-reply.1"))
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .output()
            .unwrap();
        assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    }
}

/// Drives `argv` on a pseudo-terminal: for each (expected text, answer),
/// waits until the program has printed the text, then types the answer.
/// Prints what the program wrote and its exit code as JSON.
const PTY_DRIVER: &str = r#"
import json, os, pty, select, sys, time
steps = json.loads(sys.argv[1])
argv = sys.argv[2:]
pid, fd = pty.fork()
if pid == 0:
    os.execv(argv[0], argv)
seen = b""
pos = 0
def wait_for(text, timeout=60):
    global seen, pos
    end = time.time() + timeout
    while True:
        i = seen.find(text.encode(), pos)
        if i >= 0:
            pos = i + len(text)
            return
        r, _, _ = select.select([fd], [], [], max(0, end - time.time()))
        if not r:
            raise SystemExit("timed out waiting for %r; so far: %r" % (text, seen[-3000:]))
        try:
            data = os.read(fd, 65536)
        except OSError:
            data = b""
        if not data:
            raise SystemExit("the program ended before %r: %r" % (text, seen[-3000:]))
        seen += data
for expect, answer in steps:
    wait_for(expect)
    time.sleep(0.05)
    os.write(fd, answer.encode())
while True:
    try:
        data = os.read(fd, 65536)
    except OSError:
        break
    if not data:
        break
    seen += data
_, status = os.waitpid(pid, 0)
print(json.dumps({"code": os.waitstatus_to_exitcode(status), "output": seen.decode("utf-8", "replace")}))
"#;

fn on_a_terminal(home: &Home, steps: &[(&str, &str)]) -> (i32, String) {
    let steps: Vec<[&str; 2]> = steps.iter().map(|(a, b)| [*a, *b]).collect();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(PTY_DRIVER)
        .arg(serde_json::to_string(&steps).unwrap())
        .arg(env!("CARGO_BIN_EXE_cmtp"))
        .arg("--home")
        .arg(&home.dir)
        .arg("setup")
        .env("CMTP_MIN_KSF", crate::support::TEST_KSF)
        .env_remove("CMTP_HOME")
        .env_remove("CMTP_SERVER")
        .env("TERM", "xterm")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pty driver: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (
        v["code"].as_i64().unwrap() as i32,
        v["output"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn the_setup_wizard_asks_a_wrong_answer_again_instead_of_exiting() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    register(base, &server, "bob", "a.test", &addr);
    let dead = format!("127.0.0.1:{}", free_port());

    // Logging in: a server that does not answer, then a wrong password;
    // each is asked again, the other answers are kept.
    let phone = Home::new(base.join("bob-phone"));
    let (code, output) = on_a_terminal(
        &phone,
        &[
            ("What would you like to do?", "\x1b[B\r"),
            ("Your address", "not an address\r"),
            ("Your address", "bob@a.test\r"),
            ("Server host:port", &format!("{dead}\r")),
            ("Password", "not bob's password\r"),
            ("Please give the server again", ""),
            ("Server host:port", &format!("{addr}\r")),
            ("Please give the password again", ""),
            ("Password", "bob's password\r"),
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("logged in as bob@a.test"), "{output}");
    assert!(phone.dir.join("identity.key").is_file());

    // Registering: a wrong invite token is asked again.
    let dan = Home::new(base.join("dan"));
    let token = server.invite("dan");
    let (code, output) = on_a_terminal(
        &dan,
        &[
            ("What would you like to do?", "\r"),
            ("Your address", "dan@a.test\r"),
            ("Invite token", "not-the-token\r"),
            ("Server host:port", &format!("{addr}\r")),
            ("New password", "dan's password\r"),
            ("Repeat it", "dan's password\r"),
            ("Please give the invite token again", ""),
            ("Invite token", &format!("{token}\r")),
        ],
    );
    assert_eq!(code, 0, "{output}");
    assert!(output.contains("registered dan@a.test"), "{output}");
    dan.cmd(&["inbox"]).ok();
    drop(server);
}
