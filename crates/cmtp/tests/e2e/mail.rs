//! The main scenario across two domains: register, send with attachments,
//! log in from an empty home, read and verify, save attachments (also with a
//! hostile name), tampering, key pinning, password change.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cmtp_app::home::Home as LibHome;
use cmtp_app::session::{Client, Options};
use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::Address;
use rand::RngCore;
use serde_json::Value;

use crate::support::{Home, Server, free_port, password_file, tempdir, wait_until};

/// Bob's inbox as JSON, once it holds `n` messages.
fn inbox_with(home: &Home, n: usize) -> Vec<Value> {
    let mut last = Vec::new();
    wait_until(Duration::from_secs(30), "delivery to bob", || {
        let v = home.cmd(&["-o", "json", "inbox"]).json();
        last = v.as_array().unwrap().clone();
        last.len() >= n
    });
    last
}

/// Mailbox rows of `account` in a server's database.
fn rows(db: &Path, account: &str) -> i64 {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    c.query_row(
        "SELECT count(*) FROM mailbox WHERE account = ?1",
        [account],
        |r| r.get(0),
    )
    .unwrap()
}

/// Flips one byte inside the sealed body of `account`'s newest message, in
/// the server's SQLite database (a second writer beside the running server,
/// which WAL allows).
fn tamper_newest(db: &Path, account: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.busy_timeout(Duration::from_secs(5)).unwrap();
    let blob: i64 = c
        .query_row(
            "SELECT blob_id FROM mailbox WHERE account = ?1 ORDER BY id DESC LIMIT 1",
            [account],
            |r| r.get(0),
        )
        .unwrap();
    let mut data: Vec<u8> = c
        .query_row(
            "SELECT data FROM blob_chunks WHERE blob_id = ?1 AND seq = 0",
            [blob],
            |r| r.get(0),
        )
        .unwrap();
    // header: version, attachment count, log length, body length; four names
    let log_len = u64::from_be_bytes(data[8..16].try_into().unwrap()) as usize;
    let mut pos = 24;
    for _ in 0..4 {
        pos += data[pos..].iter().position(|&b| b == 0).unwrap() + 1;
    }
    let body = pos + log_len;
    data[body + 40] ^= 0x01;
    let n = c
        .execute(
            "UPDATE blob_chunks SET data = ?1 WHERE blob_id = ?2 AND seq = 0",
            rusqlite::params![data, blob],
        )
        .unwrap();
    assert_eq!(n, 1);
}

#[test]
fn mail_between_two_domains_end_to_end() {
    let tmp = tempdir();
    let base = tmp.path();
    let (pa, pb) = (free_port(), free_port());
    let a = Server::start(base, "a.test", pa, &[("b.test", pb)]);
    let b = Server::start(base, "b.test", pb, &[("a.test", pa)]);

    // --- alice and bob are invited and register -----------------------------
    // Alice's home carries its configuration (server, floor) in config.toml.
    let alice = Home {
        dir: base.join("alice"),
        env_floor: false,
    };
    std::fs::create_dir_all(&alice.dir).unwrap();
    std::fs::write(
        alice.dir.join("config.toml"),
        format!(
            "server = \"{}\"\n[dns]\ncheck_key_txt = false\n[security.min_ksf]\nmemory_kib = 256\npasses = 1\nlanes = 1\n",
            a.addr()
        ),
    )
    .unwrap();
    let alice_pw = password_file(base, "alice", "correct horse alice");
    let invite = a.invite("alice");
    let out = alice
        .cmd(&[
            "register",
            "alice@a.test",
            "--invite",
            &invite,
            "--password-file",
            &alice_pw,
        ])
        .ok()
        .to_owned();
    assert!(out.contains("registered alice@a.test"), "{out}");
    let mode = std::fs::metadata(alice.dir.join("identity.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // The invite is used up.
    let again = Home::new(base.join("alice-again")).cmd(&[
        "--server",
        &a.addr(),
        "register",
        "alice@a.test",
        "--invite",
        &invite,
        "--password-file",
        &alice_pw,
    ]);
    assert_ne!(again.code, 0);

    // Bob registers on his first device with --server and the floor from the environment.
    let bob_pw = password_file(base, "bob", "bob's old password");
    let bob_first = Home::new(base.join("bob-first"));
    let v = bob_first
        .cmd(&[
            "-o",
            "json",
            "--server",
            &b.addr(),
            "register",
            "bob@b.test",
            "--invite",
            &b.invite("bob"),
            "--password-file",
            &bob_pw,
        ])
        .json();
    assert_eq!(v["address"], "bob@b.test");
    let bob_fingerprint = v["fingerprint"].as_str().unwrap().to_owned();

    // --- alice sends bob a message with two attachments ----------------------
    let mut big = vec![0u8; 5 * 1024 * 1024];
    rand::rngs::OsRng.fill_bytes(&mut big);
    std::fs::write(base.join("big.bin"), &big).unwrap();
    let notes = "Notizen: äöü ✓\n".as_bytes();
    std::fs::write(base.join("notes.txt"), notes).unwrap();
    let text = "Hallo Bob,\nGrüße aus a.test — 日本語もOK ✉\n";
    let sent = alice.run(
        &[
            "send",
            "--to",
            "bob@b.test",
            "--subject",
            "Grüße aus A",
            "--attach",
            base.join("notes.txt").to_str().unwrap(),
            "--attach",
            base.join("big.bin").to_str().unwrap(),
        ],
        text.as_bytes(),
    );
    assert!(
        sent.ok().contains("sent to bob@b.test"),
        "{}\n{}",
        sent.stdout,
        a.log()
    );
    assert!(sent.stdout.contains("signed receipt from a.test"));

    // --- bob logs in from a fresh, empty home with only his password ---------
    let bob = Home::new(base.join("bob-laptop"));
    assert!(!bob.dir.exists());
    let v = bob
        .cmd(&[
            "-o",
            "json",
            "--server",
            &b.addr(),
            "login",
            "bob@b.test",
            "--password-file",
            &bob_pw,
        ])
        .json();
    assert_eq!(v["fingerprint"], bob_fingerprint.as_str());
    assert!(bob.dir.join("identity.key").is_file());
    let known = std::fs::read_to_string(bob.dir.join("known_domains")).unwrap();
    assert!(known.contains("\nb.test "), "{known}");

    // --- inbox: signed and verified; -o json parses with the fields ----------
    let list = inbox_with(&bob, 1);
    assert_eq!(list.len(), 1, "{list:?}");
    let m = &list[0];
    for field in [
        "id",
        "from",
        "subject",
        "date",
        "received_at",
        "size",
        "status",
        "verified",
        "attachments",
    ] {
        assert!(m.get(field).is_some(), "field {field} missing in {m}");
    }
    assert_eq!(m["from"], "alice@a.test");
    assert_eq!(m["subject"], "Grüße aus A");
    assert_eq!(m["status"], "verified");
    assert_eq!(m["verified"], true);
    assert_eq!(m["attachments"], 2);
    assert!(m["size"].as_u64().unwrap() > 5 * 1024 * 1024);
    let id = m["id"].as_u64().unwrap().to_string();
    let table = bob.cmd(&["inbox"]).ok().to_owned();
    assert!(
        table.contains("alice@a.test") && table.contains("Grüße aus A"),
        "{table}"
    );
    assert!(
        table.contains("verified") && !table.contains("NOT VERIFIED"),
        "{table}"
    );
    // Alice's domain key was pinned on first use through bob's server.
    let known = std::fs::read_to_string(bob.dir.join("known_domains")).unwrap();
    assert!(known.contains("\na.test "), "{known}");

    // --- read, and save the attachments byte-identical ------------------------
    let save = base.join("saved");
    let out = bob
        .cmd(&["read", &id, "--save-attachments", save.to_str().unwrap()])
        .ok()
        .to_owned();
    assert!(out.contains("signed by alice@a.test, verified"), "{out}");
    assert!(out.contains("Subject:   Grüße aus A"), "{out}");
    assert!(out.contains(text), "{out}");
    assert_eq!(std::fs::read(save.join("big.bin")).unwrap(), big);
    assert_eq!(std::fs::read(save.join("notes.txt")).unwrap(), notes);
    // Saving again never overwrites: numeric suffixes.
    let v = bob
        .cmd(&[
            "-o",
            "json",
            "read",
            &id,
            "--save-attachments",
            save.to_str().unwrap(),
        ])
        .json();
    assert_eq!(v["text"], text);
    assert_eq!(v["verified"], true);
    assert_eq!(std::fs::read(save.join("notes-1.txt")).unwrap(), notes);
    assert_eq!(std::fs::read(save.join("big-1.bin")).unwrap(), big);

    // --- a hostile attachment name, built and sent with the library -----------
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = Client::open(
            LibHome::at(&alice.dir),
            Options {
                min_ksf: Some(KsfParams::INSECURE_TEST),
                ..Options::default()
            },
        )
        .unwrap();
        let from = client.address().unwrap();
        let identity = client.identity().unwrap();
        let to = Address::parse("bob@b.test").unwrap();
        let mut session = client.session().await.unwrap();
        let key = session.user_key(&to, true).await.unwrap().key;
        let content = Content {
            subject: "hostile name".into(),
            date: cmtp_client::clock::rfc3339(cmtp_client::clock::now()),
            text: "see attachment".into(),
            attachments: vec![Attachment {
                name: "../../evil".into(),
                data: b"evil bytes".to_vec(),
                ..Attachment::default()
            }],
            ..Content::default()
        };
        let msg = content
            .seal(&from, &identity, &to, &key, &mut rand::rngs::OsRng)
            .unwrap();
        let receipt = session.submit(&msg, |_| {}).await.unwrap();
        assert_eq!(receipt.hash(), &msg.hash());
        session.close().await;
    });
    let list = inbox_with(&bob, 2);
    let hostile = list
        .iter()
        .find(|m| m["subject"] == "hostile name")
        .unwrap();
    assert_eq!(hostile["status"], "verified");
    let hid = hostile["id"].as_u64().unwrap().to_string();
    let deep = base.join("x").join("y").join("save");
    bob.cmd(&["read", &hid, "--save-attachments", deep.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(deep.join("evil")).unwrap(), b"evil bytes");
    assert!(!base.join("x").join("evil").exists());
    assert!(!base.join("evil").exists());
    assert_eq!(std::fs::read_dir(&deep).unwrap().count(), 1);

    // --- plaintext only when asked, and then shown as not verified ------------
    alice
        .run(
            &[
                "send",
                "--to",
                "bob@b.test",
                "--subject",
                "in clear",
                "--plaintext",
            ],
            b"not secret",
        )
        .ok();
    let list = inbox_with(&bob, 3);
    let clear = list.iter().find(|m| m["subject"] == "in clear").unwrap();
    assert_eq!(clear["status"], "not-verified");
    let cid = clear["id"].as_u64().unwrap().to_string();
    let r = bob.cmd(&["read", &cid]);
    assert!(r.stdout.contains("not secret"));
    r.fails(5, "NOT VERIFIED");

    // --- a tampered message is a decrypt error, not garbage --------------------
    let before = rows(&b.db(), "bob");
    alice
        .run(
            &["send", "--to", "bob@b.test", "--subject", "tamper me"],
            b"secret words that must not leak out garbled",
        )
        .ok();
    wait_until(
        Duration::from_secs(30),
        "the message in b's database",
        || rows(&b.db(), "bob") > before,
    );
    tamper_newest(&b.db(), "bob");
    let list = inbox_with(&bob, 4);
    let bad = list
        .iter()
        .find(|m| m["status"] == "undecryptable")
        .unwrap_or_else(|| panic!("no undecryptable message in {list:?}"));
    assert_eq!(bad["subject"], Value::Null);
    let bid = bad["id"].as_u64().unwrap().to_string();
    let table = bob.cmd(&["inbox"]).ok().to_owned();
    assert!(table.contains("undecryptable"), "{table}");
    let r = bob.cmd(&["read", &bid]);
    r.fails(5, "cannot decrypt");
    assert!(!r.stdout.contains("secret words"), "{}", r.stdout);
    // Delete it: first into Trash, then (deleted there) gone.
    let v = bob.cmd(&["-o", "json", "delete", &bid]).json();
    assert_eq!(v["folder"], "Trash");
    assert_eq!(inbox_folder(&bob, "Trash").len(), 1);
    bob.cmd(&["delete", &bid]).ok();
    bob.cmd(&["read", &bid]).fails(6, "no message");
    bob.cmd(&["delete", &bid]).fails(6, "no message");

    // --- key: statement, fingerprint, signer, validity, pin ------------------
    let out = bob.cmd(&["key", "alice@a.test"]).ok().to_owned();
    assert!(out.contains("signed by:   the server of a.test"), "{out}");
    assert!(out.contains("pinned since"), "{out}");
    let v = bob.cmd(&["-o", "json", "key", "bob@b.test"]).json();
    assert_eq!(v["fingerprint"], bob_fingerprint.as_str());
    bob.cmd(&["key", "nobody@b.test"]).fails(6, "nobody@b.test");

    // --- password change: the new password works, the old one does not ------
    let new_pw = password_file(base, "bob-new", "bob's NEW password");
    // The current password is asked first: without a terminal it must come
    // from a file, and a wrong one changes nothing.
    bob.cmd(&["passwd", "--password-file", &new_pw])
        .fails(2, "--current-password-file");
    let wrong_pw = password_file(base, "bob-wrong", "not bob's password");
    bob.cmd(&[
        "passwd",
        "--password-file",
        &new_pw,
        "--current-password-file",
        &wrong_pw,
    ])
    .fails(3, "wrong password");
    bob.cmd(&[
        "passwd",
        "--password-file",
        &new_pw,
        "--current-password-file",
        &bob_pw,
    ])
    .ok();
    let phone = Home::new(base.join("bob-phone"));
    phone
        .cmd(&[
            "--server",
            &b.addr(),
            "login",
            "bob@b.test",
            "--password-file",
            &bob_pw,
        ])
        .fails(3, "wrong password or unknown user");
    let v = phone
        .cmd(&[
            "-o",
            "json",
            "--server",
            &b.addr(),
            "login",
            "bob@b.test",
            "--password-file",
            &new_pw,
        ])
        .json();
    assert_eq!(v["fingerprint"], bob_fingerprint.as_str(), "same key");
    assert_eq!(
        phone
            .cmd(&["-o", "json", "inbox"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        3
    );
    // The first device still logs in with its key, no password needed.
    bob_first.cmd(&["inbox"]).ok();

    // --- a changed domain key without a rotation statement is refused --------
    let known_path = phone.dir.join("known_domains");
    let known = std::fs::read_to_string(&known_path).unwrap();
    let other = cmtp_proto::crypto::IdentityKey::from_seed(&[7; 32]).public();
    let forged: String = known
        .lines()
        .map(|l| {
            if l.starts_with("a.test ") {
                let f: Vec<&str> = l.split(' ').collect();
                format!(
                    "a.test {} {} {}\n",
                    other.fingerprint_hex(),
                    hex_encode(other.as_bytes()),
                    f[3]
                )
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(&known_path, forged).unwrap();
    phone
        .cmd(&["key", "alice@a.test"])
        .fails(5, "key of a.test changed without a rotation statement");
    drop((a, b));
}

fn inbox_folder(home: &Home, folder: &str) -> Vec<Value> {
    home.cmd(&["-o", "json", "inbox", "--folder", folder, "--limit", "0"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
