//! Key transparency as the user sees it (PROTOCOL.md §20): two real cmtpd
//! processes, a.test keeping a directory that b.test witnesses, epochs of
//! one second; `cmtp key`, `cmtp read` and `cmtp key history` say whether a
//! key was proven and by how many domains it was witnessed.

use std::time::Duration;

use crate::support::{Home, Server, free_port, password_file, tempdir, wait_until};

#[test]
fn key_read_and_history_say_proven_and_witnessed() {
    let tmp = tempdir();
    let base = tmp.path();
    let (pa, pb) = (free_port(), free_port());
    let a = Server::start_with(
        base,
        "a.test",
        pa,
        &[("b.test", pb)],
        "\n[transparency]\nepoch_secs = 1\nwitnesses = [\"b.test\"]\n",
    );
    let b = Server::start_with(
        base,
        "b.test",
        pb,
        &[("a.test", pa)],
        "\n[transparency]\nepoch_secs = 1\nwitness_for = [\"a.test\"]\n",
    );

    let register = |server: &Server, who: &str| {
        let home = Home::new(base.join(who));
        let pw = password_file(base, who, &format!("{who}'s password"));
        home.cmd(&[
            "--server",
            &server.addr(),
            "register",
            &format!("{who}@{}", &server_domain(server)),
            "--invite",
            &server.invite(who),
            "--password-file",
            &pw,
        ])
        .ok();
        home
    };
    let alice = register(&a, "alice");
    let bob = register(&b, "bob");

    // Within a few epochs alice's key is in a.test's directory and b.test
    // has cosigned the head: bob's client (through b.test) sees both.
    let mut last = String::new();
    wait_until(Duration::from_secs(30), "a proven, witnessed key", || {
        let r = bob.cmd(&["key", "alice@a.test"]);
        last = format!("{}{}", r.stdout, r.stderr);
        r.code == 0 && last.contains("witnessed by 1 domain (b.test)")
    });
    assert!(
        last.contains("directory:   proven in the key directory (epoch "),
        "{last}\n{}",
        a.log()
    );
    let v = bob.cmd(&["-o", "json", "key", "alice@a.test"]).json();
    let proven = &v["key_directory"]["Proven"];
    assert_eq!(proven["witnesses"], serde_json::json!(["b.test"]), "{v}");
    assert!(proven["epoch"].as_u64().unwrap() >= 1, "{v}");

    // A message from alice: `read` says how her key was proven.
    alice
        .run(
            &["send", "--to", "bob@b.test", "--subject", "proven"],
            b"hello\n",
        )
        .ok();
    let mut id = String::new();
    wait_until(Duration::from_secs(30), "delivery to bob", || {
        let v = bob.cmd(&["-o", "json", "inbox"]).json();
        match v.as_array().and_then(|l| l.first()) {
            Some(m) => {
                id = m["id"].as_u64().unwrap().to_string();
                true
            }
            None => false,
        }
    });
    // `verify` says the same of alice's key.
    let v = bob.cmd(&["verify", "alice@a.test"]).ok().to_owned();
    assert!(
        v.contains("proven in the key directory (epoch ")
            && v.contains("witnessed by 1 domain (b.test)"),
        "{v}"
    );
    let out = bob.cmd(&["read", &id]).ok().to_owned();
    assert!(out.contains("signed by alice@a.test, verified"), "{out}");
    assert!(
        out.contains("Key:       proven in the key directory (epoch ")
            && out.contains("witnessed by 1 domain (b.test)"),
        "{out}"
    );

    // alice's own history: one key, hers, no warning.
    let r = alice.cmd(&["key", "history"]);
    let out = r.ok();
    assert!(
        out.contains("alice@a.test: key history proven at epoch ")
            && out.contains("witnessed by 1 domain(s) (b.test)"),
        "{out}"
    );
    assert!(out.contains("this device's key"), "{out}");
    assert!(!out.contains("NOT A KEY THIS DEVICE HOLDS"), "{out}");
    assert!(!r.stderr.contains("!!!"), "{}", r.stderr);
    let v = alice.cmd(&["-o", "json", "key", "history"]).json();
    assert_eq!(v["history"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["warnings"], serde_json::json!([]), "{v}");

    // b.test names no witnesses: bob's key is proven, and said to be
    // witnessed by no other domain.
    wait_until(Duration::from_secs(30), "bob's key proven", || {
        let r = alice.cmd(&["key", "bob@b.test"]);
        r.code == 0 && r.stdout.contains("witnessed by no other domain")
    });
    drop((a, b));
}

fn server_domain(s: &Server) -> String {
    s.dir
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .trim_start_matches("server-")
        .to_owned()
}
