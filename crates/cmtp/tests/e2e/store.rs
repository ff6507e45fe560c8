//! The client keeps your mail (issue 13): the outbox and exactly-once
//! sending, relay through the own server while the recipient's domain is
//! down, offline reading from the local store, incremental sync measured on
//! the wire, flags shared between devices, the Sent copy, drafts, and the
//! server's size limit known before sending.

use std::path::Path;
use std::time::{Duration, Instant};

use cmtp_app::home::Home as LibHome;
use cmtp_proto::content::Content;
use cmtp_proto::names::Address;
use cmtp_store::{MessageBody, NewDelivery, SqliteConfig, SqliteStore, Store};
use serde_json::Value;

use crate::support::{Home, Proxy, Server, free_port, register, tempdir, wait_until};

/// `inbox -o json` (all messages of the folder).
fn inbox(home: &Home, folder: &str) -> Vec<Value> {
    home.cmd(&["-o", "json", "inbox", "--folder", folder, "--limit", "0"])
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn set_server(home: &Home, addr: &str) {
    let path = home.dir.join("config.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text: String = text
        .lines()
        .map(|l| {
            if l.starts_with("server =") {
                format!("server = \"{addr}\"\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(path, text).unwrap();
}

#[test]
fn a_message_written_while_the_server_is_down_waits_in_the_outbox_and_arrives_once() {
    let tmp = tempdir();
    let base = tmp.path();
    let port = free_port();
    let mut server = Server::start(base, "a.test", port, &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    // bob's key is cached once; then the server goes down.
    alice
        .run(&["send", "--to", "bob@a.test", "-s", "first"], b"one")
        .ok();
    server.kill();

    let text = "Written while the server was down.\nÄußerst wichtig ✓\n";
    let r = alice.run(
        &[
            "send",
            "--to",
            "bob@a.test",
            "-s",
            "outbox",
            "--retry-for",
            "0",
        ],
        text.as_bytes(),
    );
    r.fails(4, "kept in the outbox");
    assert!(r.stderr.contains("cmtp outbox flush"), "{}", r.stderr);
    assert!(r.stderr.contains("mail.db"), "{}", r.stderr);
    let outbox = alice.cmd(&["-o", "json", "outbox", "list"]).json();
    let entries = outbox.as_array().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["text"], text, "the text is intact");
    assert_eq!(entries[0]["subject"], "outbox");
    assert!(entries[0]["last_error"].as_str().is_some());
    // Flushing while down keeps it, and says so.
    alice
        .cmd(&["outbox", "flush"])
        .fails(4, "the outbox (1 messages) stays");

    let server = Server::start(base, "a.test", port, &[]);
    alice.cmd(&["outbox", "flush"]).ok();
    assert!(
        alice.cmd(&["-o", "json", "outbox", "list"]).json()[0].is_null(),
        "the outbox is empty"
    );
    // Flushing again sends nothing more.
    alice.cmd(&["outbox", "flush"]).ok();
    let list = inbox(&bob, "Inbox");
    let copies: Vec<&Value> = list.iter().filter(|m| m["subject"] == "outbox").collect();
    assert_eq!(copies.len(), 1, "{list:?}");
    assert_eq!(copies[0]["status"], "verified");
    let id = copies[0]["id"].as_u64().unwrap().to_string();
    let v = bob.cmd(&["-o", "json", "read", &id]).json();
    assert_eq!(v["text"], text);
    // alice's Sent folder holds both messages, sealed to her, verified.
    let sent = inbox(&alice, "Sent");
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(
        sent.iter()
            .all(|m| m["status"] == "verified" && m["seen"] == true)
    );
    drop(server);
}

#[test]
fn the_client_killed_mid_send_then_outbox_flush_delivers_exactly_one_copy() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    // alice reaches the server through a slow proxy (2 MiB/s towards it).
    let proxy = Proxy::start(server.port, Some(2 << 20));
    set_server(&alice, &proxy.addr());
    let big: Vec<u8> = (0..6u32 << 20).map(|i| (i * 7 + i / 251) as u8).collect();
    std::fs::write(base.join("big.bin"), &big).unwrap();
    let mut child = alice
        .command(&[
            "send",
            "--to",
            "bob@a.test",
            "-s",
            "killed",
            "-a",
            base.join("big.bin").to_str().unwrap(),
        ])
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"half sent").unwrap();
    }
    // Once a megabyte of the message is on its way, SIGKILL.
    wait_until(Duration::from_secs(60), "the message on the wire", || {
        proxy.up.load(std::sync::atomic::Ordering::SeqCst) > 1 << 20
    });
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let outbox = alice.cmd(&["-o", "json", "outbox", "list"]).json();
    assert_eq!(outbox.as_array().unwrap().len(), 1, "{outbox}");
    assert_eq!(outbox[0]["sealed"], true);
    // Directly to the server now, twice: the same sealed bytes.
    set_server(&alice, &server.addr());
    alice.cmd(&["outbox", "flush"]).ok();
    alice.cmd(&["outbox", "flush"]).ok();
    let list = inbox(&bob, "Inbox");
    let copies: Vec<&Value> = list.iter().filter(|m| m["subject"] == "killed").collect();
    assert_eq!(copies.len(), 1, "exactly one copy: {list:?}");
    let id = copies[0]["id"].as_u64().unwrap().to_string();
    let save = base.join("saved");
    bob.cmd(&["read", &id, "--save-attachments", save.to_str().unwrap()])
        .ok();
    assert_eq!(std::fs::read(save.join("big.bin")).unwrap(), big);
    assert_eq!(inbox(&alice, "Sent").len(), 1);
}

#[test]
fn mail_to_a_domain_that_is_down_is_relayed_with_the_pinned_key_and_without_one_waits() {
    let tmp = tempdir();
    let base = tmp.path();
    let (pa, pb) = (free_port(), free_port());
    let a = Server::start(base, "a.test", pa, &[("b.test", pb)]);
    let mut b = Server::start(base, "b.test", pb, &[("a.test", pa)]);
    let alice = register(base, &a, "alice", "a.test", &a.addr());
    let bob = register(base, &b, "bob", "b.test", &b.addr());
    let carol = register(base, &b, "carol", "b.test", &b.addr());
    // alice has written to bob before: b.test's key is pinned, bob's statement cached.
    alice
        .run(&["send", "--to", "bob@b.test", "-s", "before"], b"1")
        .ok();
    b.kill();
    let r = alice.run(
        &[
            "send",
            "--to",
            "bob@b.test",
            "-s",
            "while down",
            "--retry-for",
            "0",
        ],
        b"queued by a.test",
    );
    assert!(
        r.ok().contains("signed receipt from a.test"),
        "{}",
        r.stdout
    );
    // carol's key was never fetched: the message waits in the outbox.
    alice
        .run(
            &[
                "send",
                "--to",
                "carol@b.test",
                "-s",
                "no key",
                "--retry-for",
                "0",
            ],
            b"waits",
        )
        .fails(4, "kept in the outbox");
    let b = Server::start(base, "b.test", pb, &[("a.test", pa)]);
    a.admin(&["queue", "retry"]);
    let mut list = Vec::new();
    wait_until(Duration::from_secs(60), "the relayed message", || {
        list = inbox(&bob, "Inbox");
        list.len() >= 2
    });
    assert!(
        list.iter()
            .any(|m| m["subject"] == "while down" && m["status"] == "verified"),
        "{list:?}"
    );
    alice.cmd(&["outbox", "flush"]).ok();
    let mut got = Vec::new();
    wait_until(Duration::from_secs(60), "carol's message", || {
        got = inbox(&carol, "Inbox");
        !got.is_empty()
    });
    assert_eq!(got[0]["subject"], "no key");
    drop((a, b));
}

#[test]
fn inbox_read_and_thread_work_offline() {
    let tmp = tempdir();
    let base = tmp.path();
    let mut server = Server::start(base, "a.test", free_port(), &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    alice
        .run(
            &["send", "--to", "bob@a.test", "-s", "Plans"],
            b"Shall we meet?",
        )
        .ok();
    // A follow-up in the same thread (In-Reply-To, References): alice
    // answers her own message, which goes to its recipient.
    let sent = inbox(&alice, "Sent");
    let sent_id = sent[0]["id"].as_u64().unwrap().to_string();
    alice
        .run(&["reply", &sent_id, "--no-quote"], b"Thursday then.")
        .ok();
    assert_eq!(inbox(&bob, "Inbox").len(), 2);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(bob.dir.join("mail.db"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);
    server.kill();
    let r = bob.cmd(&["-o", "json", "inbox"]);
    let list = r.json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(r.stderr.contains("offline"), "{}", r.stderr);
    assert_eq!(list[0]["subject"], "Re: Plans", "newest first");
    assert_eq!(list[0]["seen"], false);
    let id = list[1]["id"].as_u64().unwrap().to_string();
    let out = bob.cmd(&["read", &id]).ok().to_owned();
    assert!(out.contains("Shall we meet?"), "{out}");
    assert!(out.contains("signed by alice@a.test, verified"), "{out}");
    let thread = bob.cmd(&["-o", "json", "thread", &id]).json();
    let subjects: Vec<&str> = thread
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, ["Plans", "Re: Plans"]);
    // Read offline: seen here at once, and on the server once it is back.
    assert_eq!(
        bob.cmd(&["-o", "json", "inbox", "--offline"]).json()[1]["seen"],
        true
    );
    // A message never fetched cannot be read offline.
    bob.cmd(&["read", "99"]).fails(4, "");
}

#[test]
fn two_devices_of_one_user_share_the_seen_flag_and_sent_mail() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let phone = register(base, &server, "bob", "a.test", &server.addr());
    let laptop = Home::new(base.join("bob-laptop"));
    laptop
        .cmd(&[
            "--server",
            &server.addr(),
            "login",
            "bob@a.test",
            "--password-file",
            base.join("bob.password").to_str().unwrap(),
        ])
        .ok();
    alice
        .run(&["send", "--to", "bob@a.test", "-s", "hello"], b"hi bob")
        .ok();
    let on_phone = inbox(&phone, "Inbox");
    let on_laptop = inbox(&laptop, "Inbox");
    assert_eq!(
        (on_phone[0]["seen"].clone(), on_laptop[0]["seen"].clone()),
        (false.into(), false.into())
    );
    let id = on_phone[0]["id"].as_u64().unwrap().to_string();
    assert_eq!(id, "1", "bob's first message is 1");
    phone.cmd(&["read", &id]).ok();
    let on_laptop = inbox(&laptop, "Inbox");
    assert_eq!(on_laptop[0]["seen"], true, "{on_laptop:?}");
    // What bob sends from the laptop is in Sent on the phone.
    laptop
        .run(&["send", "--to", "alice@a.test", "-s", "back"], b"hi alice")
        .ok();
    let sent = inbox(&phone, "Sent");
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(sent[0]["subject"], "back");
    assert_eq!(sent[0]["status"], "verified");
    let sid = sent[0]["id"].as_u64().unwrap().to_string();
    let v = phone.cmd(&["-o", "json", "read", &sid]).json();
    assert_eq!(v["to"], "alice@a.test");
    assert_eq!(v["text"], "hi alice");
}

#[test]
fn drafts_are_saved_resumed_in_the_editor_and_sent() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start(base, "a.test", free_port(), &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let bob = register(base, &server, "bob", "a.test", &server.addr());
    let v = alice
        .run(
            &[
                "-o",
                "json",
                "draft",
                "new",
                "--to",
                "bob@a.test",
                "-s",
                "Draft",
            ],
            b"first words",
        )
        .json();
    let id = v["draft"].as_u64().unwrap().to_string();
    // The editor gets the header template; this one changes the subject,
    // adds a Cc and appends a line.
    let editor = base.join("editor.sh");
    std::fs::write(
        &editor,
        "#!/bin/sh\ngrep -q '^To: bob@a.test$' \"$1\" || exit 1\ngrep -q '^Cc: $' \"$1\" || exit 1\n\
         sed -i 's/^Subject: Draft$/Subject: Finished/; s/^Cc: $/Cc: alice@a.test/' \"$1\"\n\
         printf '\\nand more\\n' >> \"$1\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&editor, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    alice
        .run_env(
            &["draft", "edit", &id],
            b"",
            &[
                ("EDITOR", editor.to_str().unwrap()),
                ("VISUAL", editor.to_str().unwrap()),
            ],
        )
        .ok();
    let drafts = alice.cmd(&["-o", "json", "draft", "list"]).json();
    assert_eq!(drafts[0]["subject"], "Finished");
    assert_eq!(drafts[0]["cc"][0], "alice@a.test");
    assert_eq!(drafts[0]["text"], "first words\nand more\n");
    alice.cmd(&["draft", "send", &id]).ok();
    assert!(alice.cmd(&["-o", "json", "draft", "list"]).json()[0].is_null());
    let list = inbox(&bob, "Inbox");
    assert_eq!(list[0]["subject"], "Finished");
    // alice was on Cc: her copy arrives too.
    assert_eq!(inbox(&alice, "Inbox")[0]["subject"], "Finished");
}

#[test]
fn an_oversized_message_is_refused_before_any_byte_of_it_is_sent() {
    let tmp = tempdir();
    let base = tmp.path();
    let server = Server::start_with(
        base,
        "a.test",
        free_port(),
        &[],
        "\n[limits]\nmax_message_size = 200000\n",
    );
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    register(base, &server, "bob", "a.test", &server.addr());
    alice
        .run(&["send", "--to", "bob@a.test", "-s", "small"], b"fits")
        .ok();
    let proxy = Proxy::start(server.port, None);
    set_server(&alice, &proxy.addr());
    let big = vec![0x42u8; 300_000];
    std::fs::write(base.join("big.bin"), &big).unwrap();
    let r = alice.run(
        &[
            "send",
            "--to",
            "bob@a.test",
            "-s",
            "too big",
            "-a",
            base.join("big.bin").to_str().unwrap(),
        ],
        b"with a large file",
    );
    r.fails(7, "too big");
    assert!(r.stderr.contains("200000"), "{}", r.stderr);
    assert!(r.stderr.contains("kept as draft"), "{}", r.stderr);
    let up = proxy.up.load(std::sync::atomic::Ordering::SeqCst);
    assert!(up < 10_000, "{up} bytes went to the server");
    let drafts = alice.cmd(&["-o", "json", "draft", "list"]).json();
    assert_eq!(drafts[0]["subject"], "too big");
    assert_eq!(drafts[0]["attachments"][0], "big.bin");
    assert!(alice.cmd(&["-o", "json", "outbox", "list"]).json()[0].is_null());
}

/// Seals `n` messages from alice to carol and stores them straight into the
/// (stopped) server's database through the store API, `n` times faster
/// than submitting each: the client cannot tell, it syncs real sealed mail.
fn fill_mailbox(server: &Server, alice: &Home, carol: &Home, n: u64) {
    let alice_key = LibHome::at(&alice.dir).load_identity().unwrap().unwrap();
    let carol_key = LibHome::at(&carol.dir)
        .load_identity()
        .unwrap()
        .unwrap()
        .public();
    let from = Address::parse("alice@a.test").unwrap();
    let to = Address::parse("carol@a.test").unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = SqliteStore::open(SqliteConfig::new(server.db()))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for chunk in 0..8u64 {
            let (store, alice_key, from, to) =
                (store.clone(), alice_key.clone(), from.clone(), to.clone());
            tasks.push(tokio::spawn(async move {
                for i in (chunk..n).step_by(8) {
                    let content = Content {
                        subject: format!("bulk {i}"),
                        date: "2026-12-01T00:00:00Z".into(),
                        text: format!("message number {i}"),
                        ..Content::default()
                    };
                    let m = content
                        .seal(&from, &alice_key, &to, &carol_key, &mut rand::rngs::OsRng)
                        .unwrap();
                    let bytes = m.to_bytes();
                    store
                        .deliver(NewDelivery {
                            account: "carol".into(),
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
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn after_syncing_10000_messages_the_next_inbox_transfers_only_the_10_new_ones() {
    let tmp = tempdir();
    let base: &Path = tmp.path();
    let port = free_port();
    let mut server = Server::start(base, "a.test", port, &[]);
    let alice = register(base, &server, "alice", "a.test", &server.addr());
    let carol = register(base, &server, "carol", "a.test", &server.addr());
    server.kill();
    let t = Instant::now();
    fill_mailbox(&server, &alice, &carol, 10_000);
    eprintln!("10,000 messages stored in {:?}", t.elapsed());
    let server = Server::start(base, "a.test", port, &[]);
    let proxy = Proxy::start(server.port, None);
    set_server(&carol, &proxy.addr());
    let t = Instant::now();
    let first = carol.cmd(&["-o", "json", "inbox"]).json();
    eprintln!(
        "initial sync of 10,000: {:?}, {} bytes",
        t.elapsed(),
        proxy.total()
    );
    assert_eq!(first.as_array().unwrap().len(), 50, "one page shown");
    assert!(first[0]["subject"].as_str().unwrap().starts_with("bulk "));
    assert_eq!(
        first[0]["id"],
        10_002 - 2,
        "newest first: carol's ids are 1..=10000"
    );
    assert!(proxy.total() > 10_000 * 400, "{}", proxy.total());
    let all = inbox(&carol, "Inbox");
    assert_eq!(all.len(), 10_000);
    assert!(all.iter().all(|m| m["status"] == "verified"));

    for i in 0..10 {
        alice
            .run(
                &["send", "--to", "carol@a.test", "-s", &format!("new {i}")],
                format!("new message {i}").as_bytes(),
            )
            .ok();
    }
    proxy.reset();
    let t = Instant::now();
    let second = carol.cmd(&["-o", "json", "inbox", "--limit", "10"]).json();
    let bytes = proxy.total();
    eprintln!("second inbox: {:?}, {bytes} bytes", t.elapsed());
    let subjects: Vec<&str> = second
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["subject"].as_str().unwrap())
        .collect();
    assert_eq!(subjects.len(), 10);
    assert!(
        subjects.iter().all(|s| s.starts_with("new ")),
        "{subjects:?}"
    );
    // Ten messages of about 700 bytes and their summaries, plus the TLS
    // handshake (about 4 KiB with the post-quantum key shares) and the
    // login: nothing of the 10,000 others.
    let one = first[0]["size"].as_u64().unwrap();
    assert!(
        bytes < 10 * (one + 400) + 8000,
        "{bytes} bytes for 10 messages of ~{one}"
    );
    // Nothing new: the TLS handshake (with the hybrid post-quantum key
    // shares, about 4 KiB), the key login and one empty CHANGES.
    proxy.reset();
    carol.cmd(&["inbox"]).ok();
    assert!(proxy.total() < 6500, "{}", proxy.total());
    drop(server);
}
