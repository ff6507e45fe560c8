//! Mail as people write it (issue 14): recipients with names and Bcc,
//! reply-all and threads, forwards that keep attachments, search, folders
//! that sync, contacts and safety numbers, export that other tools read,
//! version 1 mail from before content version 2 — all through the real
//! `cmtp` binary against a real `cmtpd`.

use std::path::Path;

use cmtp_app::home::Home as LibHome;
use cmtp_proto::content::Content;
use cmtp_proto::names::Address;
use cmtp_store::{MessageBody, NewDelivery, SqliteConfig, SqliteStore, Store};
use serde_json::Value;

use crate::support::{Home, Server, free_port, register, tempdir};

/// A folder of `home` as JSON (all its messages, synced first).
fn folder(home: &Home, folder: &str) -> Vec<Value> {
    home.cmd(&["-o", "json", "inbox", "--folder", folder, "--limit", "0"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

/// `read -o json` of the message of `home`'s Inbox whose subject is `subject`.
fn read_subject(home: &Home, subject: &str) -> Value {
    let list = folder(home, "Inbox");
    let m = list
        .iter()
        .find(|m| m["subject"] == subject)
        .unwrap_or_else(|| panic!("no {subject:?} in {list:?}"));
    let id = m["id"].as_u64().unwrap().to_string();
    home.cmd(&["-o", "json", "read", &id]).json()
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Gives the home's account a display name (config.toml `name`).
fn set_name(home: &Home, name: &str) {
    let path = home.dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("name = \"{name}\"\n{text}")).unwrap();
}

/// Everything of a home's local store on disk (the database and its log).
fn store_bytes(home: &Home) -> Vec<u8> {
    let mut all = Vec::new();
    for f in ["mail.db", "mail.db-wal"] {
        if let Ok(b) = std::fs::read(home.dir.join(f)) {
            all.extend(b);
        }
    }
    all
}

#[test]
fn reply_all_reaches_everyone_with_the_right_lists_and_a_bcc_recipient_stays_invisible() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    let carol = register(base, &server, "carol", "a.test", &addr);
    let dave = register(base, &server, "dave", "a.test", &addr);
    let erin = register(base, &server, "erin", "a.test", &addr);
    set_name(&alice, "Alice Example");
    set_name(&carol, "Carol C");

    // Names, a comma-separated positional list, Cc and Bcc.
    let sent = alice
        .run(
            &[
                "-o",
                "json",
                "send",
                "Bob Example <bob@a.test>",
                "--cc",
                "carol@a.test, \"Erin, the E\" <erin@a.test>",
                "--bcc",
                "dave@a.test",
                "-s",
                "Plans",
            ],
            b"Shall we meet on Friday?\n",
        )
        .json();
    assert_eq!(sent["delivered"].as_array().unwrap().len(), 4);

    let to = ["Bob Example <bob@a.test>"];
    let cc = ["carol@a.test", "\"Erin, the E\" <erin@a.test>"];
    let mut message_id = String::new();
    for (home, who) in [
        (&bob, "bob"),
        (&carol, "carol"),
        (&erin, "erin"),
        (&dave, "dave"),
    ] {
        let m = read_subject(home, "Plans");
        assert_eq!(m["status"], "verified", "{who}: {m}");
        assert_eq!(m["from_name"], "Alice Example");
        assert_eq!(strings(&m["to_list"]), to, "{who}");
        assert_eq!(strings(&m["cc"]), cc, "{who}");
        assert_eq!(m["content_version"], 2);
        let bcc = strings(&m["bcc"]);
        if who == "dave" {
            assert_eq!(bcc, ["dave@a.test"], "a Bcc recipient sees only himself");
        } else {
            assert!(bcc.is_empty(), "{who} sees no Bcc: {bcc:?}");
        }
        let id = m["message_id"].as_str().unwrap().to_owned();
        assert!(id.ends_with("@a.test"), "{id}");
        if message_id.is_empty() {
            message_id = id;
        } else {
            assert_eq!(id, message_id, "one message id in every copy");
        }
    }
    // The sender's own Sent copy lists the Bcc recipient.
    let sent_copy = folder(&alice, "Sent");
    assert_eq!(strings(&sent_copy[0]["bcc"]), ["dave@a.test"]);

    // carol answers everyone.
    let plans = folder(&carol, "Inbox");
    let id = plans[0]["id"].as_u64().unwrap().to_string();
    carol
        .run(&["reply-all", &id], b"Friday works for me.\n")
        .ok();
    let answered = carol.cmd(&["-o", "json", "read", &id]).json();
    assert!(
        strings(&answered["flags"]).contains(&"answered".to_owned()),
        "{answered}"
    );
    for (home, who) in [(&alice, "alice"), (&bob, "bob"), (&erin, "erin")] {
        let r = read_subject(home, "Re: Plans");
        assert_eq!(r["status"], "verified", "{who}");
        assert_eq!(r["from_name"], "Carol C");
        assert_eq!(
            strings(&r["to_list"]),
            ["Alice Example <alice@a.test>", "Bob Example <bob@a.test>"],
            "{who}"
        );
        assert_eq!(
            strings(&r["cc"]),
            ["\"Erin, the E\" <erin@a.test>"],
            "{who}"
        );
        assert!(strings(&r["bcc"]).is_empty());
        assert_eq!(r["in_reply_to"], message_id.as_str());
        assert_eq!(strings(&r["references"]), [message_id.clone()]);
        let text = r["text"].as_str().unwrap();
        assert!(text.starts_with("Friday works for me.\n"), "{text}");
        assert!(text.contains("> Shall we meet on Friday?"), "{text}");
    }
    // dave got no copy of the answer.
    assert_eq!(folder(&dave, "Inbox").len(), 1);

    // The thread: the question and the answer, on every side; alice's has
    // her Sent copy and carol's answer.
    let alice_in = folder(&alice, "Inbox");
    let rid = alice_in[0]["id"].as_u64().unwrap().to_string();
    let thread = alice.cmd(&["-o", "json", "thread", &rid]).json();
    let subjects: Vec<&str> = thread
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Plans", "Re: Plans"]);
    for (home, who) in [(&bob, "bob"), (&carol, "carol"), (&erin, "erin")] {
        let list = folder(home, "Inbox");
        let any = list[0]["id"].as_u64().unwrap().to_string();
        let t = home.cmd(&["-o", "json", "thread", &any]).json();
        assert!(t.as_array().unwrap().len() >= 2, "{who}: {t}");
        let text = home.cmd(&["thread", &any]).ok().to_owned();
        assert!(!text.contains("dave"), "{who}'s thread names dave: {text}");
        assert!(!t.to_string().contains("dave"), "{who}: {t}");
        // Not a byte of dave's address anywhere in their local store.
        let bytes = store_bytes(home);
        assert!(
            !bytes.windows(5).any(|w| w == b"dave@"),
            "{who}'s mail.db holds dave's address"
        );
        // The inbox shows the two as one thread (carol's answer is in
        // her Sent folder).
        if who != "carol" {
            let table = home.cmd(&["inbox"]).ok().to_owned();
            assert!(table.contains("[2]"), "{who}: {table}");
        }
    }
    drop(server);
}

#[test]
fn a_forward_keeps_the_attachments_byte_for_byte() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    let carol = register(base, &server, "carol", "a.test", &addr);
    let data: Vec<u8> = (0..300_000u32).map(|i| (i * 31 + i / 7) as u8).collect();
    std::fs::write(base.join("data.bin"), &data).unwrap();
    std::fs::write(base.join("report.pdf"), b"%PDF-1.7 \x00\xff\x10 binary").unwrap();
    alice
        .run(
            &[
                "send",
                "bob@a.test",
                "-s",
                "Numbers",
                "-a",
                base.join("data.bin").to_str().unwrap(),
                "-a",
                base.join("report.pdf").to_str().unwrap(),
            ],
            b"The numbers, as promised.\n",
        )
        .ok();
    let m = read_subject(&bob, "Numbers");
    let id = m["id"].as_u64().unwrap().to_string();
    let types: Vec<&str> = m["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["application/octet-stream", "application/pdf"]);
    bob.run(&["forward", &id, "carol@a.test"], b"FYI, from alice.\n")
        .ok();
    let f = read_subject(&carol, "Fwd: Numbers");
    assert_eq!(f["status"], "verified");
    let text = f["text"].as_str().unwrap();
    assert!(text.starts_with("FYI, from alice.\n"), "{text}");
    assert!(text.contains("From: alice@a.test"), "{text}");
    assert!(text.contains("The numbers, as promised."), "{text}");
    let fid = f["id"].as_u64().unwrap().to_string();
    let dir = base.join("saved");
    let saved = carol
        .cmd(&[
            "-o",
            "json",
            "read",
            &fid,
            "--save-attachments",
            dir.to_str().unwrap(),
        ])
        .json();
    let types: Vec<&str> = saved["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["media_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["application/octet-stream", "application/pdf"]);
    assert_eq!(std::fs::read(dir.join("data.bin")).unwrap(), data);
    assert_eq!(
        std::fs::read(dir.join("report.pdf")).unwrap(),
        b"%PDF-1.7 \x00\xff\x10 binary"
    );
    // A forward starts a thread of its own.
    assert!(f["in_reply_to"].is_null(), "{f}");
    drop(server);
}

#[test]
fn search_finds_words_in_bodies_and_attachment_names_and_filters_by_sender_and_date() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    let carol = register(base, &server, "carol", "a.test", &addr);
    std::fs::write(base.join("budget-2027.xlsx"), b"cells").unwrap();
    alice
        .run(
            &["send", "bob@a.test", "-s", "Zoo trip"],
            b"We saw a unicorn at the zoo.\n",
        )
        .ok();
    alice
        .run(
            &[
                "send",
                "bob@a.test",
                "-s",
                "Money",
                "-a",
                base.join("budget-2027.xlsx").to_str().unwrap(),
            ],
            b"See the sheet.\n",
        )
        .ok();
    carol
        .run(
            &["send", "bob@a.test", "-s", "Also a unicorn"],
            b"Mine was pink.\n",
        )
        .ok();
    bob.cmd(&["inbox"]).ok();
    let search = |q: &[&str]| -> Vec<String> {
        let mut args = vec!["-o", "json", "search"];
        args.extend_from_slice(q);
        bob.cmd(&args)
            .json()
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    // A word of a body (and of a subject), newest first.
    assert_eq!(search(&["unicorn"]), ["Also a unicorn", "Zoo trip"]);
    assert_eq!(search(&["pink"]), ["Also a unicorn"]);
    // A word of an attachment's name.
    assert_eq!(search(&["budget"]), ["Money"]);
    assert_eq!(search(&["budget-2027.xlsx"]), ["Money"]);
    // Filters.
    assert_eq!(search(&["unicorn", "from:alice"]), ["Zoo trip"]);
    assert_eq!(search(&["from:carol@a.test"]), ["Also a unicorn"]);
    assert_eq!(search(&["subject:unicorn"]), ["Also a unicorn"]);
    assert_eq!(search(&["to:bob", "zoo"]), ["Zoo trip"]);
    let today = cmtp_client::clock::rfc3339(cmtp_client::clock::now())[..10].to_owned();
    assert_eq!(search(&[&format!("date:{today}")]).len(), 3);
    assert!(search(&["unicorn", "before:2000-01-01"]).is_empty());
    assert!(search(&["dragon"]).is_empty());
    // Not FTS5 syntax: what is typed is what is searched.
    assert!(search(&["NEAR(unicorn", "zoo)"]).is_empty());
    let table = bob.cmd(&["search", "unicorn"]).ok().to_owned();
    assert!(
        table.contains("Zoo trip") && table.contains("2 found"),
        "{table}"
    );
    bob.cmd(&["search", "after:someday"]).fails(2, "YYYY-MM-DD");
    drop(server);
}

/// Seals `n` messages from alice to bob the way cmtp did before content
/// version 2 (version 1: reply-to, subject, date, Cc, text) and stores them
/// straight into the server's database.
fn deliver_version_1(server: &Server, alice: &Home, bob: &Home, n: u64, subject: &str) {
    let alice_key = LibHome::at(&alice.dir).load_identity().unwrap().unwrap();
    let bob_key = LibHome::at(&bob.dir)
        .load_identity()
        .unwrap()
        .unwrap()
        .public();
    let from = Address::parse("alice@a.test").unwrap();
    let to = Address::parse("bob@a.test").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(server.db()))
            .await
            .unwrap();
        for i in 0..n {
            let content = Content {
                subject: format!("{subject} {i}"),
                date: "2026-11-20T10:00:00Z".into(),
                text: format!("old message {i}\n"),
                cc: vec![cmtp_proto::content::Mailbox::bare(
                    Address::parse("carol@a.test").unwrap(),
                )],
                ..Content::default()
            };
            assert_eq!(content.version, cmtp_proto::content::ContentVersion::V1);
            let m = content
                .seal(&from, &alice_key, &to, &bob_key, &mut rand::rngs::OsRng)
                .unwrap();
            let bytes = m.to_bytes();
            store
                .deliver(NewDelivery {
                    account: "bob".into(),
                    hash: m.hash(),
                    source: "alice@a.test".into(),
                    received_at: 1_795_000_000 + i,
                    version: 1,
                    attachment_count: 0,
                    size: bytes.len() as u64,
                    body: MessageBody::Inline(bytes.into()),
                })
                .await
                .unwrap();
        }
    });
}

#[test]
fn version_1_messages_from_before_this_change_still_read_and_verify() {
    let tmp = tempdir();
    let base = tmp.path();
    let port = free_port();
    let mut server = Server::start(base, "a.test", port, &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    server.kill();
    deliver_version_1(&server, &alice, &bob, 2, "Old times");
    let server = Server::start(base, "a.test", port, &[]);
    let list = folder(&bob, "Inbox");
    assert_eq!(list.len(), 2);
    for m in &list {
        assert_eq!(m["status"], "verified", "{m}");
        assert_eq!(m["content_version"], 1);
    }
    let id = list[0]["id"].as_u64().unwrap().to_string();
    let r = bob.cmd(&["read", &id]);
    let out = r.ok();
    assert!(
        out.contains("Signature: signed by alice@a.test, verified"),
        "{out}"
    );
    assert!(out.contains("Cc:        carol@a.test"), "{out}");
    assert!(out.contains("old message 1"), "{out}");
    let v = bob.cmd(&["-o", "json", "read", &id]).json();
    assert!(v["message_id"].is_null());
    assert!(strings(&v["to_list"]).is_empty());
    // Searchable and answerable like any other; the answer is version 2.
    let found = bob.cmd(&["-o", "json", "search", "old", "message"]).json();
    assert_eq!(found.as_array().unwrap().len(), 2);
    bob.run(&["reply", &id], b"Still here.\n").ok();
    let answer = read_subject(&alice, "Re: Old times 1");
    assert_eq!(answer["status"], "verified");
    assert_eq!(answer["content_version"], 2);
    assert!(answer["in_reply_to"].is_null());
    drop(server);
}

#[test]
fn folders_move_archive_and_trash_sync_between_devices() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    // bob's second device logs in with the password.
    let phone = Home::new(base.join("bob-phone"));
    let pw = crate::support::password_file(base, "bob", "bob's password");
    phone
        .cmd(&[
            "--server",
            &addr,
            "login",
            "bob@a.test",
            "--password-file",
            &pw,
        ])
        .ok();
    for s in ["one", "two", "three"] {
        alice.run(&["send", "bob@a.test", "-s", s], b"x").ok();
    }
    let list = folder(&phone, "Inbox");
    assert_eq!(list.len(), 3);
    let id = |s: &str| {
        list.iter().find(|m| m["subject"] == s).unwrap()["id"]
            .as_u64()
            .unwrap()
            .to_string()
    };
    bob.cmd(&["inbox"]).ok();
    bob.cmd(&["archive", &id("one")]).ok();
    bob.cmd(&["move", &id("two"), "Projects"]).ok();
    let v = bob.cmd(&["-o", "json", "delete", &id("three")]).json();
    assert_eq!(v["folder"], "Trash");
    bob.cmd(&["move", &id("two"), "bad\u{7}name"])
        .fails(2, "not a folder name");
    // The other device learns every move from CHANGES.
    let subjects = |f: &str| -> Vec<String> {
        folder(&phone, f)
            .iter()
            .map(|m| m["subject"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(subjects("Inbox").is_empty());
    assert_eq!(subjects("Archive"), ["one"]);
    assert_eq!(subjects("Projects"), ["two"]);
    assert_eq!(subjects("Trash"), ["three"]);
    let folders = phone.cmd(&["-o", "json", "folders"]).json();
    let names: Vec<&str> = folders
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["folder"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["Inbox", "Sent", "Drafts", "Archive", "Trash", "Projects"]
    );
    // Deleting from Trash removes it for good, on both devices.
    phone.cmd(&["delete", &id("three")]).ok();
    assert!(folder(&bob, "Trash").is_empty());
    bob.cmd(&["read", &id("three")]).fails(6, "no message");
    drop(server);
}

#[test]
fn contacts_aliases_safety_numbers_and_a_changed_key_shown_loudly() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    alice
        .cmd(&["contacts", "add", "Bob B <bob@a.test>", "--alias", "bob"])
        .ok();
    // An alias as recipient.
    alice.run(&["send", "bob", "-s", "hi"], b"hello").ok();
    bob.cmd(&["inbox"]).ok();
    let contacts = alice.cmd(&["-o", "json", "contacts"]).json();
    let c = &contacts[0];
    assert_eq!(c["address"], "bob@a.test");
    assert_eq!(c["alias"], "bob");
    assert_eq!(c["verified"], false);
    let bob_fp = bob.cmd(&["-o", "json", "key", "bob@a.test"]).json()["fingerprint"].clone();
    assert_eq!(c["fingerprint"], bob_fp);
    // Both sides compute the same safety number.
    let a = alice.cmd(&["-o", "json", "verify", "bob", "--yes"]).json();
    let b = bob
        .cmd(&["-o", "json", "verify", "alice@a.test", "--yes"])
        .json();
    let number = a["safety_number"].as_str().unwrap().to_owned();
    assert_eq!(number.len(), 60);
    assert_eq!(b["safety_number"], number.as_str());
    let text = alice
        .cmd(&["verify", "bob@a.test", "--yes"])
        .ok()
        .to_owned();
    assert!(text.contains(&number[..5]), "{text}");
    assert_eq!(
        alice.cmd(&["-o", "json", "contacts"]).json()[0]["verified"],
        true
    );
    // Without a terminal and without --yes nothing is marked.
    let carol = register(base, &server, "carol", "a.test", &addr);
    let r = carol.cmd(&["verify", "alice@a.test"]);
    assert!(r.ok().contains("Safety number"));
    assert!(r.stderr.contains("--yes"), "{}", r.stderr);

    // bob's key changes (a reset with a new key); alice is told loudly.
    let token = server.reset_token("bob");
    let pw = crate::support::password_file(base, "bob-new", "bob's new password");
    bob.cmd(&[
        "reset",
        "bob@a.test",
        "--token",
        &token,
        "--password-file",
        &pw,
    ])
    .ok();
    let r = alice.run(&["send", "bob", "-s", "again"], b"still there?");
    r.ok();
    assert!(r.stderr.contains("CHANGED"), "{}", r.stderr);
    assert!(r.stderr.contains("had been VERIFIED"), "{}", r.stderr);
    let c = &alice.cmd(&["-o", "json", "contacts"]).json()[0];
    assert_eq!(c["verified"], false);
    assert_eq!(c["key_changed"], true);
    assert_eq!(c["previous_fingerprint"], bob_fp);
    let r = alice.cmd(&["contacts"]);
    assert!(r.ok().contains("KEY CHANGED!"));
    assert!(
        r.stderr.contains("WARNING: the key of bob@a.test CHANGED"),
        "{}",
        r.stderr
    );
    let r = alice.cmd(&["inbox"]);
    assert!(r.stderr.contains("CHANGED"), "{}", r.stderr);
    // A new safety number; verifying it settles the change.
    let again = alice.cmd(&["-o", "json", "verify", "bob", "--yes"]).json();
    assert_ne!(again["safety_number"], number.as_str());
    assert_eq!(
        again["safety_number"].as_str().unwrap()[..30],
        number[..30],
        "alice's half stays"
    );
    let r = alice.cmd(&["inbox"]);
    assert!(!r.stderr.contains("CHANGED"), "{}", r.stderr);
    drop(server);
}

/// Python's `mailbox` module reads an mbox or a Maildir: per message its
/// subject, sender, X-CMTP-Signature, text and attachments (name, media
/// type, SHA-256), as JSON.
const READ_MAILBOX_PY: &str = r#"
import email, email.policy, hashlib, json, mailbox, sys
kind, path = sys.argv[1], sys.argv[2]
parse = lambda f: email.message_from_binary_file(f, policy=email.policy.default)
box = mailbox.mbox(path, factory=parse) if kind == "mbox" else mailbox.Maildir(path, factory=parse)
def describe(m):
    text, atts = None, []
    for part in m.walk():
        if part.is_multipart():
            continue
        name = part.get_filename()
        if name:
            atts.append([name, part.get_content_type(), hashlib.sha256(part.get_payload(decode=True)).hexdigest()])
        elif part.get_content_type() == "text/plain" and text is None:
            text = part.get_payload(decode=True).decode(part.get_content_charset() or "utf-8")
    h = lambda k: None if m[k] is None else str(m[k])
    return {"subject": h("subject"), "from": h("from"), "to": h("to"), "cc": h("cc"),
            "signature": h("x-cmtp-signature"), "message_id": h("message-id"),
            "in_reply_to": h("in-reply-to"), "text": text, "attachments": atts,
            "status": h("status")}
out = [describe(m) for m in box]
if kind == "maildir":
    out = {"inbox": out, "folders": {f: [describe(m) for m in box.get_folder(f)] for f in box.list_folders()}}
print(json.dumps(out))
"#;

fn python_read(kind: &str, path: &Path) -> Value {
    let out = std::process::Command::new("python3")
        .args(["-c", READ_MAILBOX_PY, kind, path.to_str().unwrap()])
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "python: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn export_mbox_and_maildir_parse_with_pythons_mailbox_module() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let addr = server.addr();
    let alice = register(base, &server, "alice", "a.test", &addr);
    let bob = register(base, &server, "bob", "a.test", &addr);
    set_name(&alice, "Alice Ünïcode");
    let pdf = b"%PDF-1.7\n\x00\x01\x02 binary \xff".to_vec();
    std::fs::write(base.join("report.pdf"), &pdf).unwrap();
    let text1 = "Grüße aus Köln ✓\nSecond line.\n";
    alice
        .run(
            &[
                "send",
                "bob@a.test",
                "-s",
                "Bericht für dich",
                "-a",
                base.join("report.pdf").to_str().unwrap(),
            ],
            text1.as_bytes(),
        )
        .ok();
    alice
        .run(&["send", "bob@a.test", "-s", "Plain one"], b"Just text.\n")
        .ok();
    let inbox = folder(&bob, "Inbox");
    let first = inbox.iter().find(|m| m["subject"] == "Plain one").unwrap()["id"]
        .as_u64()
        .unwrap()
        .to_string();
    bob.run(&["reply", &first], b"Got it.\n").ok();
    bob.cmd(&["archive", &first]).ok();

    let mbox = base.join("bob.mbox");
    let v = bob
        .cmd(&["-o", "json", "export", "--mbox", mbox.to_str().unwrap()])
        .json();
    assert_eq!(v["exported"], 3, "{v}");
    let parsed = python_read("mbox", &mbox);
    let msgs = parsed.as_array().unwrap();
    assert_eq!(msgs.len(), 3, "{parsed}");
    let by_subject = |s: &str| {
        msgs.iter()
            .find(|m| m["subject"] == s)
            .unwrap_or_else(|| panic!("no {s:?} in {parsed}"))
    };
    let m = by_subject("Bericht für dich");
    assert_eq!(m["text"], text1);
    assert_eq!(m["from"], "Alice Ünïcode <alice@a.test>");
    assert_eq!(m["to"], "bob@a.test");
    assert_eq!(m["signature"], "verified; signer=alice@a.test");
    assert_eq!(
        m["attachments"],
        serde_json::json!([["report.pdf", "application/pdf", sha256_hex(&pdf)]])
    );
    let plain = by_subject("Plain one");
    assert_eq!(plain["text"], "Just text.\n");
    assert!(plain["attachments"].as_array().unwrap().is_empty());
    let reply = by_subject("Re: Plain one");
    assert_eq!(reply["in_reply_to"], plain["message_id"]);
    assert!(reply["text"].as_str().unwrap().starts_with("Got it.\n"));
    // The same bodies as cmtp shows.
    let shown = read_subject(&bob, "Bericht für dich");
    assert_eq!(shown["text"], m["text"]);
    // An existing file is not overwritten.
    bob.cmd(&["export", "--mbox", mbox.to_str().unwrap()])
        .fails(1, "bob.mbox");

    let maildir = base.join("Maildir");
    bob.cmd(&["export", "--maildir", maildir.to_str().unwrap()])
        .ok();
    let parsed = python_read("maildir", &maildir);
    let inbox: Vec<&str> = parsed["inbox"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(inbox, ["Bericht für dich"]);
    let archive = &parsed["folders"]["Archive"];
    assert_eq!(archive[0]["subject"], "Plain one", "{parsed}");
    assert_eq!(parsed["folders"]["Sent"][0]["subject"], "Re: Plain one");
    assert_eq!(
        parsed["inbox"][0]["attachments"][0][2],
        sha256_hex(&pdf).as_str()
    );
    drop(server);
}

/// Seals `n` version 1 messages with long subjects into bob's mailbox, so
/// that `inbox -o json` prints more than a pipe holds.
fn fill_for_pipe(server: &Server, alice: &Home, bob: &Home, n: u64) {
    deliver_version_1(server, alice, bob, n, &"A long subject ".repeat(16));
}

#[test]
fn inbox_json_into_a_closed_pipe_exits_quietly() {
    let tmp = tempdir();
    let base = tmp.path();
    let port = free_port();
    let mut server = Server::start(base, "a.test", port, &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    server.kill();
    fill_for_pipe(&server, &alice, &bob, 150);
    let server = Server::start(base, "a.test", port, &[]);
    let full = bob.cmd(&["-o", "json", "inbox", "--limit", "0"]);
    assert!(
        full.stdout.len() > 128 * 1024,
        "{} bytes",
        full.stdout.len()
    );
    // The issue's own command line, ten times.
    let cmtp = env!("CARGO_BIN_EXE_cmtp");
    for _ in 0..10 {
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(
                "\"$CMTP\" --home \"$H\" inbox -o json 2>\"$H/err\" | head -c 10 >/dev/null; \
                 echo ${PIPESTATUS[0]}",
            )
            .env("CMTP", cmtp)
            .env("H", &bob.dir)
            .env("CMTP_MIN_KSF", crate::support::TEST_KSF)
            .output()
            .unwrap();
        let code = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let err = std::fs::read_to_string(bob.dir.join("err")).unwrap();
        assert_eq!(code, "0", "exit code {code}; stderr: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.is_empty(), "{err}");
    }
    // And deterministically: the reader takes 10 bytes and closes its end
    // while cmtp still has more than a pipe holds to write.
    let mut child = bob
        .command(&["-o", "json", "inbox", "--offline", "--limit", "0"])
        .spawn()
        .unwrap();
    {
        use std::io::Read;
        let mut stdout = child.stdout.take().unwrap();
        let mut ten = [0u8; 10];
        stdout.read_exact(&mut ten).unwrap();
        assert_eq!(ten[0], b'[');
    }
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(server);
}
