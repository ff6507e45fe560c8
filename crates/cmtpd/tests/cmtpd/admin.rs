//! Administration through the real binary (issue 16): configuration paths
//! and checks, the documented file, reload, the queue commands, quotas,
//! aliases, unlocks, resets, backups, the message hash in the logs, the
//! gauges and the Grafana dashboard, the systemd unit.

use std::collections::HashSet;
use std::io::{Read as _, Write as _};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cmtp_client::Connection;
use cmtp_proto::account::{Login, Registration, open_release};
use cmtp_proto::command::Command as Cmd;
use cmtp_proto::content::Content;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::message::{Message, Source};
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::{
    DeliveryFailure, FailureReason, LoginChallenge, RegistrationOffer, XzibitRelease,
    decode_listing,
};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::KeyStatement;
use cmtp_server::config::{Config, KEY_DOCS};
use serde_json::Value;

use super::*;

/// Runs `cmtpd --data-dir DIR ARGS` from `cwd`.
fn admin_in(cwd: &Path, dir_args: &[&str], args: &[&str]) -> (ExitStatus, String, String) {
    let out = Command::new(BIN)
        .current_dir(cwd)
        .args(dir_args)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `cmtpd --data-dir DIR ARGS`.
fn admin(dir: &Path, args: &[&str]) -> (ExitStatus, String, String) {
    let d = dir.to_str().unwrap();
    admin_in(Path::new("/"), &["--data-dir", d], args)
}

/// `cmtpd --data-dir DIR -o json ARGS`, which must succeed: the document.
fn admin_json(dir: &Path, args: &[&str]) -> Value {
    let mut all = vec!["-o", "json"];
    all.extend_from_slice(args);
    let (st, out, err) = admin(dir, &all);
    assert!(st.success(), "cmtpd {args:?}: {err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// A daemon whose log goes to a file (read by the test).
fn start_logged(dir: &Path, port: u16, log: &Path) -> Daemon {
    let file = std::fs::File::create(log).unwrap();
    let child = cmtpd(dir)
        .arg("run")
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .unwrap();
    let d = Daemon {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    d.wait_ready();
    d
}

/// Polls `f` every 20 ms until it holds, or panics after `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + limit;
    while !f().await {
        assert!(Instant::now() < until, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A LOGIN that may fail: the status of the failing step.
async fn try_login(
    addr: SocketAddr,
    address: &Address,
    password: &str,
) -> Result<(Connection, IdentityKey), Status> {
    let mut c = Connection::connect(addr, T).await.unwrap();
    let g = c.ohai().await.unwrap();
    let rng = &mut rand_core::OsRng;
    let (login, ke1) = Login::start(password.as_bytes(), rng).unwrap();
    let r = c
        .command(
            &Cmd::Login {
                user: address.account.clone(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    if r.status != Status::Success {
        return Err(r.status);
    }
    // A wrong password shows on the client already (OPAQUE): it gives up,
    // and the server has counted the LOGIN as a failure.
    let Ok(proof) = login.finish(
        password.as_bytes(),
        &LoginChallenge::decode(&r.body).unwrap(),
        address,
        &KsfParams::INSECURE_TEST,
        &c.channel_binding(),
        rng,
    ) else {
        return Err(Status::AuthFailed);
    };
    let r = c
        .command(
            &Cmd::LoginFinish {
                ke3: proof.ke3.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    if r.status != Status::Success {
        return Err(r.status);
    }
    let release = XzibitRelease::decode(&r.body).unwrap();
    let (key, _) = open_release(&release, &g.key, address, &proof.export_key, None).unwrap();
    Ok((c, key))
}

fn seal(from: &str, key: &IdentityKey, to: &str, to_key: &PublicKey, text: &str) -> Message {
    Content {
        text: text.into(),
        ..Content::default()
    }
    .seal(&addr(from), key, &addr(to), to_key, &mut rand_core::OsRng)
    .unwrap()
}

/// A version 1 message whose body is `len` opaque bytes (the server never
/// decrypts; enough for the relay and queue).
fn opaque(from: &str, to: &str, len: usize, tag: u8) -> Message {
    Message {
        version: 1,
        destination: addr(to),
        source: Source::user(addr(from)),
        log: vec![],
        body: vec![tag; len],
        attachments: vec![],
        trailer: [0; 64],
    }
}

async fn list(c: &mut Connection) -> Vec<cmtp_proto::payload::ListingEntry> {
    let r = c.command(&Cmd::List, 1 << 22).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    decode_listing(&r.body).unwrap()
}

async fn fetch(c: &mut Connection, id: u64) -> Message {
    let mut out = Vec::new();
    c.fetch_into(id, 1 << 30, &mut out).await.unwrap().unwrap();
    Message::decode(&out, Default::default()).unwrap()
}

fn json_lines(log: &Path) -> Vec<Value> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn field<'a>(v: &'a Value, name: &str) -> Option<&'a str> {
    v["fields"][name].as_str()
}

// ----- 1. configuration -----

#[test]
fn paths_in_a_config_file_are_relative_to_it_and_a_missing_data_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let etc = tmp.path().join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let conf = etc.join("cmtpd.toml");
    let port = free_port();
    std::fs::write(
        &conf,
        format!(
            "domain = \"a.test\"\ndata_dir = \"../var/cmtpd\"\nlisten = [\"127.0.0.1:{port}\"]\n"
        ),
    )
    .unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let c = ["--config", conf.to_str().unwrap()];
    // init, from another directory, creates the data directory next to etc/.
    let (st, _, err) = admin_in(&elsewhere, &c, &["init"]);
    assert!(st.success(), "{err}");
    let data = tmp.path().join("var/cmtpd");
    assert!(data.join("server.key").exists() && data.join("cmtp.db").exists());
    assert_eq!(std::fs::read_dir(&elsewhere).unwrap().count(), 0);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "pw\n").unwrap();
    let add = [
        "user",
        "add",
        "alice",
        "--password-file",
        pw.to_str().unwrap(),
    ];
    let (st, _, err) = admin_in(&elsewhere, &c, &add);
    assert!(st.success(), "{err}");
    let (st, out, _) = admin_in(Path::new("/"), &c, &["user", "list"]);
    assert!(st.success() && out.contains("alice"), "{out}");

    // The data directory moved away: every command but init/run refuses,
    // and creates nothing (no new key, no empty database).
    std::fs::rename(&data, tmp.path().join("moved")).unwrap();
    for args in [
        &["user", "list"][..],
        &["user", "invite", "bob"],
        &["queue", "list"],
        &["backup", "/tmp/never-written"],
    ] {
        let (st, _, err) = admin_in(&elsewhere, &c, args);
        assert!(!st.success(), "{args:?} succeeded");
        assert!(err.contains("does not exist"), "{args:?}: {err}");
        assert!(!data.exists(), "{args:?} created the data directory");
    }
    let (st, _, err) = admin_in(&elsewhere, &c, &["key", "show"]);
    assert!(!st.success() && err.contains("does not exist"), "{err}");
    assert!(!data.exists());
    // A --data-dir without configuration is an error too (no silent new server).
    let none = tmp.path().join("typo");
    let (st, _, err) = admin(&none, &["user", "list"]);
    assert!(!st.success() && err.contains("no configuration"), "{err}");
    assert!(!none.exists());
}

#[test]
fn init_writes_every_key_documented_private_and_warns_about_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    // umask 000: the file must still be 0600 (it may hold a database password).
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "umask 000; exec {BIN} --data-dir {} init --domain a.test",
            dir.display()
        ))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stderr}");
    let conf = dir.join("cmtpd.toml");
    let mode = std::fs::metadata(&conf).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cmtpd.toml mode {mode:o}");
    let text = std::fs::read_to_string(&conf).unwrap();
    for d in KEY_DOCS {
        let shown = text.contains(&format!("\n{} = ", d.key))
            || text.contains(&format!("\n# {} = ", d.key))
            || d.key == "routes" && text.contains("[dns.routes]");
        assert!(shown, "{}.{} is not in the file", d.section, d.key);
        let first_doc_line = d.doc.lines().next().unwrap();
        assert!(
            text.contains(&format!("# {first_doc_line}")),
            "{}.{} is not documented",
            d.section,
            d.key
        );
    }
    assert!(text.matches("# default: ").count() >= 40, "{text}");
    assert!(text.contains("data_dir = \".\""), "{text}");
    // The records are printed, with a warning that they point nowhere yet.
    assert!(stdout.contains("_cmtp._tcp.a.test."), "{stdout}");
    assert!(
        stderr.contains("warning") && stderr.contains("127.0.0.1:9001 only"),
        "{stderr}"
    );
    // A configuration made to listen publicly gets no warning.
    let public = tmp.path().join("public");
    let (st, _, err) = admin(
        &public,
        &["init", "--domain", "b.test", "--listen", "0.0.0.0:9001"],
    );
    assert!(st.success(), "{err}");
    assert!(!err.contains("warning"), "{err}");
    let v = admin_json(&public, &["init"]);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 0);
    assert_eq!(v["config_created"], false);
    let v = admin_json(&dir, &["init"]);
    assert_eq!(v["warnings"].as_array().unwrap().len(), 1);
    assert!(v["fingerprint"].as_str().unwrap().len() == 64);
}

#[test]
fn config_check_names_every_problem_and_config_show_prints_what_is_in_effect() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("data");
    write_config(&dir, "a.test", free_port(), |_| {});
    let (st, out, _) = admin(&dir, &["config", "check"]);
    assert!(st.success(), "{out}");
    assert!(out.contains("OK"), "{out}");
    let conf = dir.join("cmtpd.toml");
    let good = std::fs::read_to_string(&conf).unwrap();
    let bad = good
        .replace(
            "login_failures_per_account = 5",
            "login_failures_per_account = 0",
        )
        .replace("idle_secs = 300", "idle_secs = 0")
        .replace("backend = \"sqlite\"", "backend = \"postgres\"");
    assert_ne!(bad, good);
    std::fs::write(&conf, &bad).unwrap();
    let (st, out, _) = admin(&dir, &["config", "check"]);
    assert_eq!(st.code(), Some(1), "{out}");
    for needle in [
        "accounts.login_failures_per_account must be at least 1",
        "timeouts.idle_secs must be greater than 0",
        "store.backend = \"postgres\" needs store.url",
        "3 problem(s)",
    ] {
        assert!(out.contains(needle), "{needle}: {out}");
    }
    let mut all = vec!["-o", "json", "config", "check"];
    let (st, out, _) = admin(&dir, &all);
    assert_eq!(st.code(), Some(1));
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], false);
    assert_eq!(v["problems"].as_array().unwrap().len(), 3);
    // The server refuses to start with it, naming the problems.
    let (st, _, err) = admin(&dir, &["run"]);
    assert!(
        !st.success() && err.contains("login_failures_per_account"),
        "{err}"
    );
    // A value of the wrong kind, an unknown key.
    std::fs::write(
        &conf,
        good.replace("format = \"human\"", "format = \"xml\""),
    )
    .unwrap();
    let (st, out, _) = admin(&dir, &["config", "check"]);
    assert!(
        !st.success() && out.contains("human") && out.contains("json"),
        "{out}"
    );
    std::fs::write(&conf, format!("{good}\n[limits]\nmax_mesage_size = 1\n")).unwrap();
    let (st, _, _) = admin(&dir, &all);
    assert!(!st.success());

    std::fs::write(&conf, &good).unwrap();
    let (st, out, _) = admin(&dir, &["config", "show"]);
    assert!(st.success());
    assert!(out.contains("limits.max_message_size = 67108864"), "{out}");
    assert!(
        out.contains(&format!("data_dir = \"{}\"", dir.display())),
        "the data directory in effect, resolved: {out}"
    );
    assert!(
        out.contains("listen = [") && out.contains("# (restart)"),
        "{out}"
    );
    let (st, out, _) = admin(&dir, &["config", "show", "--defaults"]);
    assert!(st.success() && out.contains("accounts.login_failures_per_account = 5"));
    all.truncate(2);
    all.extend(["config", "show"]);
    let v: Value = serde_json::from_str(&admin(&dir, &all).1).unwrap();
    assert_eq!(v["domain"], "a.test");
    assert_eq!(v["limits"]["max_hops"], 30);
    assert_eq!(v["store"]["backend"], "sqlite");
}

// ----- 2. reload -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_applies_limits_routes_and_logging_without_dropping_connections() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    write_config(&b_dir, "b.test", b_port, |_| {});
    add_user(&b_dir, "bob", "pw-b");
    let _b = Daemon::start(&b_dir, b_port);
    write_config(&a_dir, "a.test", a_port, |_| {});
    let log = tmp.path().join("a.log");
    let a = start_logged(&a_dir, a_port, &log);

    // A second server on the same data directory is refused.
    let (st, _, err) = admin(&a_dir, &["run", "--listen", "127.0.0.1:1"]);
    assert!(!st.success() && err.contains("another cmtpd"), "{err}");

    // A connection opened before the reload.
    let mut c = Connection::connect(a.addr, T).await.unwrap();
    let before = c.ohai().await.unwrap();
    assert_eq!(before.max_message_size, 64 << 20);
    let bob_stmt = Cmd::KeyRequest {
        user: Some(Account::parse("bob").unwrap()),
        domain: Some(cmtp_proto::names::Domain::parse("b.test").unwrap()),
    };
    let r = c.command(&bob_stmt, 1 << 20).await.unwrap();
    assert_ne!(r.status, Status::Success, "no route to b.test yet");

    let conf = a_dir.join("cmtpd.toml");
    let text = std::fs::read_to_string(&conf).unwrap();
    let edited = text
        .replace("max_message_size = 67108864", "max_message_size = 2048")
        .replace("format = \"human\"", "format = \"json\"")
        .replace(
            "[dns.routes]\n",
            &format!("[dns.routes]\n\"b.test\" = [\"127.0.0.1:{b_port}\"]\n"),
        )
        .replace(
            &format!("listen = [\"127.0.0.1:{a_port}\"]"),
            "listen = [\"127.0.0.1:1\"]",
        );
    std::fs::write(&conf, &edited).unwrap();
    let (st, out, err) = admin(&a_dir, &["reload"]);
    assert!(st.success(), "{out}{err}");
    assert!(
        out.contains("limits.max_message_size")
            && out.contains("dns.routes")
            && out.contains("log.format"),
        "{out}"
    );
    assert!(
        out.contains("needs a restart") && out.contains("listen"),
        "{out}"
    );

    // The same connection: still open, new limit, new route.
    let after = c.ohai().await.unwrap();
    assert_eq!(after.max_message_size, 2048);
    let r = c.command(&bob_stmt, 1 << 20).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    KeyStatement::decode(&r.body).unwrap();
    // listen needs a restart: still served where it was.
    assert!(std::net::TcpStream::connect(a.addr).is_ok());

    // Logging: what is logged from now on is JSON.
    let v = admin_json(&a_dir, &["reload"]);
    assert_eq!(v["ok"], true);
    assert_eq!(v["applied"].as_array().unwrap().len(), 0);
    let lines = std::fs::read_to_string(&log).unwrap();
    let last = lines.lines().last().unwrap();
    serde_json::from_str::<Value>(last).unwrap_or_else(|e| panic!("not JSON ({e}): {last}"));
    assert!(
        json_lines(&log)
            .iter()
            .any(|v| field(v, "message").is_some_and(|m| m.contains("configuration reloaded"))),
        "{lines}"
    );

    // A broken file is refused before anything is signalled; the server
    // keeps its configuration and its connections.
    std::fs::write(&conf, edited.replace("max_hops = 30", "max_hops = 0")).unwrap();
    let (st, _, err) = admin(&a_dir, &["reload"]);
    assert!(!st.success() && err.contains("max_hops"), "{err}");
    assert_eq!(c.ohai().await.unwrap().max_message_size, 2048);

    // SIGHUP does the same as `cmtpd reload`.
    std::fs::write(
        &conf,
        edited.replace("max_message_size = 2048", "max_message_size = 4096"),
    )
    .unwrap();
    a.signal("HUP");
    eventually(T, "the SIGHUP reload", || async {
        let mut c2 = Connection::connect(a.addr, T).await.unwrap();
        c2.ohai().await.unwrap().max_message_size == 4096
    })
    .await;
    let r = c.command(&Cmd::Noop, 100).await.unwrap();
    assert_eq!(r.status, Status::Success, "the first connection survived");
}

// ----- 3. queue -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_commands_show_hold_release_retry_and_delete_and_held_mail_is_never_attempted() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_port, b_port, dead) = (free_port(), free_port(), free_port());
    write_config(&a_dir, "a.test", a_port, |c| {
        c.dns
            .routes
            .insert("b.test".into(), vec![format!("127.0.0.1:{b_port}")]);
        c.dns
            .routes
            .insert("c.test".into(), vec![format!("127.0.0.1:{dead}")]);
        c.relay.poll_ms = 100;
        c.relay.first_retry_secs = 3600;
        c.relay.max_retry_secs = 3600;
    });
    add_user(&a_dir, "alice", "pw-a");
    let a = Daemon::start(&a_dir, a_port);
    let (mut c, _) = password_login(a.addr, &addr("alice@a.test"), "pw-a").await;
    // b.test is down: three messages are deferred.
    let msgs: Vec<Message> = (0..3)
        .map(|i| opaque("alice@a.test", "bob@b.test", 3000 + i * 1000, i as u8))
        .collect();
    for m in &msgs {
        let r = c.mail(&m.to_bytes()).await.unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
    }
    let entries = |v: &Value| v["entries"].as_array().unwrap().clone();
    // One attempt finds the domain down; its other messages wait with it
    // (the relay postpones a whole unreachable domain).
    eventually(T, "an attempt, and all three deferred", || async {
        let v = admin_json(&a_dir, &["queue", "list"]);
        let e = entries(&v);
        e.len() == 3
            && e.iter().any(|e| e["attempts"].as_u64() >= Some(1))
            && e.iter().all(|e| e["state"] == "deferred")
    })
    .await;
    let v = admin_json(&a_dir, &["queue", "list"]);
    assert_eq!(
        (v["total"].as_u64(), v["deferred"].as_u64()),
        (Some(3), Some(3))
    );
    let ids: Vec<u64> = entries(&v)
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    let hashes: Vec<String> = msgs.iter().map(|m| hex::encode(m.hash())).collect();
    for (e, h) in entries(&v).iter().zip(&hashes) {
        assert_eq!(e["hash"].as_str(), Some(h.as_str()));
        assert_eq!(e["state"], "deferred");
    }
    // Text: human sizes and ages, one line per entry.
    let (st, out, _) = admin(&a_dir, &["queue", "list"]);
    assert!(st.success());
    assert!(out.contains("KiB") && out.contains("alice@a.test"), "{out}");
    assert!(
        out.contains("3 message(s)") && out.contains("3 deferred"),
        "{out}"
    );
    let (st, out, _) = admin(&a_dir, &["queue", "show", &ids[0].to_string()]);
    assert!(st.success(), "{out}");
    assert!(
        out.contains(&hashes[0]) && out.contains("bob@b.test"),
        "{out}"
    );

    // Hold the first, bring b.test up, retry everything.
    let v = admin_json(&a_dir, &["queue", "hold", &ids[0].to_string()]);
    assert_eq!(v["action"], "hold");
    let show = admin_json(&a_dir, &["queue", "show", &ids[0].to_string()]);
    assert_eq!(
        (show["held"].as_bool(), show["state"].as_str()),
        (Some(true), Some("held"))
    );
    let (st, _, err) = admin(&a_dir, &["queue", "retry", &ids[0].to_string()]);
    assert!(!st.success() && err.contains("held"), "{err}");
    write_config(&b_dir, "b.test", b_port, |c| {
        c.dns
            .routes
            .insert("a.test".into(), vec![format!("127.0.0.1:{a_port}")]);
    });
    add_user(&b_dir, "bob", "pw-b");
    let b = Daemon::start(&b_dir, b_port);
    let v = admin_json(&a_dir, &["queue", "retry"]);
    assert_eq!(v["due"], 2, "the held one is not made due");
    eventually(T, "the two released messages to be relayed", || async {
        admin_json(&a_dir, &["queue", "list"])["total"] == 1
    })
    .await;
    // The held one was never attempted: same attempt count, still held.
    let show = admin_json(&a_dir, &["queue", "show", &ids[0].to_string()]);
    assert_eq!(show["attempts"], 1);
    assert_eq!(show["held"], true);
    let (mut bc, _) = password_login(b.addr, &addr("bob@b.test"), "pw-b").await;
    let got: HashSet<[u8; 32]> = list(&mut bc).await.iter().map(|e| e.hash).collect();
    assert_eq!(got, HashSet::from([msgs[1].hash(), msgs[2].hash()]));

    // Released and retried: delivered.
    admin_json(&a_dir, &["queue", "release", &ids[0].to_string()]);
    let v = admin_json(&a_dir, &["queue", "retry", &ids[0].to_string()]);
    assert_eq!(v["action"], "retry");
    eventually(T, "the released message to be relayed", || async {
        admin_json(&a_dir, &["queue", "list"])["total"] == 0
    })
    .await;
    assert_eq!(list(&mut bc).await.len(), 3);

    // Delete: a message for an unreachable domain is removed, unsent.
    let m = opaque("alice@a.test", "carol@c.test", 100, 9);
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    let v = admin_json(&a_dir, &["queue", "list"]);
    let id = entries(&v)[0]["id"].as_u64().unwrap().to_string();
    let v = admin_json(&a_dir, &["queue", "delete", &id]);
    assert_eq!(v["hash"].as_str(), Some(hex::encode(m.hash()).as_str()));
    assert_eq!(admin_json(&a_dir, &["queue", "list"])["total"], 0);
    for args in [
        &["queue", "show", &id][..],
        &["queue", "delete", &id],
        &["queue", "hold", "999999"],
        &["queue", "retry", "999999"],
    ] {
        let (st, _, err) = admin(&a_dir, args);
        assert!(
            !st.success() && err.contains("no queue entry"),
            "{args:?}: {err}"
        );
    }
}

/// The hash of a message is on every log line about it: submission,
/// queueing, relay, delivery at the destination, bounce.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_message_hash_joins_submission_relay_and_bounce_log_lines() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (tmp.path().join("a"), tmp.path().join("b"));
    let (a_port, b_port) = (free_port(), free_port());
    for (dir, domain, port, other, other_port) in [
        (&a_dir, "a.test", a_port, "b.test", b_port),
        (&b_dir, "b.test", b_port, "a.test", a_port),
    ] {
        write_config(dir, domain, port, |c| {
            c.log.format = cmtp_server::config::LogFormat::Json;
            c.relay.poll_ms = 100;
            c.dns
                .routes
                .insert(other.into(), vec![format!("127.0.0.1:{other_port}")]);
        });
    }
    add_user(&a_dir, "alice", "pw-a");
    add_user(&b_dir, "bob", "pw-b");
    let (a_log, b_log) = (tmp.path().join("a.log"), tmp.path().join("b.log"));
    let a = start_logged(&a_dir, a_port, &a_log);
    let _b = start_logged(&b_dir, b_port, &b_log);
    let (mut c, _) = password_login(a.addr, &addr("alice@a.test"), "pw-a").await;
    let good = opaque("alice@a.test", "bob@b.test", 500, 1);
    let bounce = opaque("alice@a.test", "nobody@b.test", 500, 2);
    for m in [&good, &bounce] {
        assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    }
    let (g, b) = (hex::encode(good.hash()), hex::encode(bounce.hash()));
    let has = |log: &Path, hash: &str, message: &str| {
        json_lines(log).iter().any(|v| {
            field(v, "hash") == Some(hash)
                && field(v, "message").is_some_and(|m| m.contains(message))
        })
    };
    eventually(
        Duration::from_secs(30),
        "the relay and the bounce",
        || async { has(&a_log, &g, "relayed") && has(&a_log, &b, "notice delivered") },
    )
    .await;
    assert!(has(&a_log, &g, "message queued"), "submission line");
    assert!(has(&a_log, &b, "message queued"));
    assert!(
        has(&b_log, &g, "message delivered"),
        "the destination's line"
    );
    assert!(has(&a_log, &b, "relay failed; notifying the sender"));
    // Lines inside the relay attempt carry it as a span field.
    assert!(
        json_lines(&a_log)
            .iter()
            .any(|v| v["span"]["hash"].as_str() == Some(b.as_str())),
        "span"
    );
}

// ----- 4. users -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_mailbox_refuses_with_tempfailure_and_tells_its_owner_once() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let port = free_port();
    write_config(&dir, "a.test", port, |_| {});
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let v = admin_json(&dir, &["user", "quota", "bob", "6K"]);
    assert_eq!(v["quota"], 6144);
    let (st, _, err) = admin(&dir, &["user", "quota", "bob", "6 parsecs"]);
    assert!(!st.success() && err.contains("unit"), "{err}");
    let (st, _, err) = admin(&dir, &["user", "quota", "nobody", "1M"]);
    assert!(!st.success() && err.contains("no account"), "{err}");
    let (_, out, _) = admin(&dir, &["user", "list"]);
    assert!(out.contains("6.0 KiB"), "{out}");
    let d = Daemon::start(&dir, port);
    let (mut c, alice) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let (mut bc, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let big = |n: usize| {
        seal(
            "alice@a.test",
            &alice,
            "bob@a.test",
            &bob.public(),
            &"x".repeat(n),
        )
    };
    let mut accepted = 0;
    let refusal = loop {
        let r = c.mail(&big(1500).to_bytes()).await.unwrap();
        match &r.status {
            Status::Success => accepted += 1,
            Status::TempFailure => break r.text(),
            other => panic!("{other}: {}", r.text()),
        }
        assert!(accepted < 10, "the quota is not enforced");
    };
    assert!(accepted >= 2, "{accepted}");
    assert!(
        refusal.contains("mailbox of bob@a.test is full") && refusal.contains("6.0 KiB"),
        "{refusal}"
    );
    // The owner finds one notice from the server, sealed to him.
    let daddr = d.addr;
    eventually(T, "the quota notice", || {
        let n = accepted + 1;
        async move {
            let mut c = password_login(daddr, &addr("bob@a.test"), "pw-b").await.0;
            list(&mut c).await.len() == n
        }
    })
    .await;
    let entries = list(&mut bc).await;
    let notice = entries.last().unwrap();
    assert_eq!(notice.source_account, None, "from the server itself");
    let m = fetch(&mut bc, notice.id).await;
    let opened = cmtp_proto::content::open(&m, Some(&bob)).unwrap();
    assert_eq!(opened.content.subject, "Your mailbox is full");
    assert!(
        opened.content.text.contains("Quota: 6144"),
        "{}",
        opened.content.text
    );
    opened.verify_sender(&m, &d_key(&dir)).unwrap();
    // Refused again; no second notice within the interval.
    let r = c.mail(&big(10).to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure);
    tokio::time::sleep(Duration::from_millis(500)).await; // an absence: give a stray notice time to show
    assert_eq!(list(&mut bc).await.len(), accepted + 1);
    // Without a quota the mail is taken again.
    let v = admin_json(&dir, &["user", "quota", "bob", "none"]);
    assert_eq!(v["quota"], Value::Null);
    let r = c.mail(&big(10).to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
}

fn d_key(dir: &Path) -> PublicKey {
    cmtp_server::keyfile::load(&dir.join("server.key"))
        .unwrap()
        .public()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alias_delivers_to_its_account_and_answers_with_its_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let port = free_port();
    write_config(&dir, "a.test", port, |_| {});
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let v = admin_json(&dir, &["user", "alias", "add", "robert", "bob"]);
    assert_eq!(
        (v["alias"].as_str(), v["account"].as_str()),
        (Some("robert"), Some("bob"))
    );
    for (args, why) in [
        (["user", "alias", "add", "alice", "bob"], "already the name"),
        (
            ["user", "alias", "add", "bobby", "robert"],
            "no account robert",
        ),
        (["user", "alias", "add", "x", "nobody"], "no account nobody"),
    ] {
        let (st, _, err) = admin(&dir, &args);
        assert!(!st.success() && err.contains(why), "{args:?}: {err}");
    }
    let (st, _, err) = admin(&dir, &["user", "invite", "robert"]);
    assert!(!st.success() && err.contains("alias of bob"), "{err}");
    let list_json = admin_json(&dir, &["user", "list"]);
    let bob_row = list_json
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["account"] == "bob")
        .unwrap();
    assert_eq!(bob_row["aliases"], serde_json::json!(["robert"]));
    let d = Daemon::start(&dir, port);
    let (mut c, alice) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let (mut bc, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    // KEYREQUEST robert: a statement for robert@a.test with bob's key.
    let r = c
        .command(
            &Cmd::KeyRequest {
                user: Some(Account::parse("robert").unwrap()),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let s = KeyStatement::decode(&r.body).unwrap();
    s.verify(
        &d_key(&dir),
        Some(&Account::parse("robert").unwrap()),
        &cmtp_proto::names::Domain::parse("a.test").unwrap(),
        cmtp_server::state::now(),
    )
    .unwrap();
    assert_eq!(s.key, bob.public());
    // MAIL to robert lands in bob's mailbox and opens with bob's key.
    let m = seal(
        "alice@a.test",
        &alice,
        "robert@a.test",
        &s.key,
        "hello robert",
    );
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let entries = list(&mut bc).await;
    assert_eq!(entries.len(), 1);
    let got = fetch(&mut bc, entries[0].id).await;
    assert_eq!(got.destination, addr("robert@a.test"));
    let opened = cmtp_proto::content::open(&got, Some(&bob)).unwrap();
    assert_eq!(opened.content.text, "hello robert");
    // Removed (and applied at once by a reload): robert is unknown again.
    let v = admin_json(&dir, &["user", "alias", "remove", "robert"]);
    assert_eq!(v["removed"], true);
    admin_json(&dir, &["reload"]);
    let m = seal("alice@a.test", &alice, "robert@a.test", &s.key, "again");
    let r = c.mail(&m.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::DeliveryFailure);
    assert_eq!(
        DeliveryFailure::decode(&r.body).unwrap().reason,
        Some(FailureReason::NoSuchUser)
    );
    assert!(
        admin_json(&dir, &["user", "alias", "list"])
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlock_clears_the_login_rate_limit_of_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let port = free_port();
    write_config(&dir, "a.test", port, |_| {});
    add_user(&dir, "alice", "pw-a");
    let d = Daemon::start(&dir, port);
    let alice = addr("alice@a.test");
    for _ in 0..5 {
        assert_eq!(
            try_login(d.addr, &alice, "wrong").await.err(),
            Some(Status::AuthFailed)
        );
    }
    // Locked: even the right password is refused now.
    assert_eq!(
        try_login(d.addr, &alice, "pw-a").await.err(),
        Some(Status::RateLimited)
    );
    let (st, _, err) = admin(&dir, &["user", "unlock", "nobody"]);
    assert!(!st.success() && err.contains("no account"), "{err}");
    let (st, out, err) = admin(&dir, &["user", "unlock", "alice"]);
    assert!(st.success(), "{err}");
    assert!(out.contains("cleared"), "{out}");
    let started = Instant::now();
    eventually(Duration::from_secs(10), "the unlock to apply", || async {
        match try_login(d.addr, &alice, "pw-a").await {
            Ok(_) => true,
            Err(Status::RateLimited) => false,
            Err(other) => panic!("{other}"),
        }
    })
    .await;
    eprintln!("unlock applied after {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_token_gives_a_new_password_and_key_once_and_old_mail_needs_the_old_key() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let port = free_port();
    write_config(&dir, "a.test", port, |_| {});
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let d = Daemon::start(&dir, port);
    let alice = addr("alice@a.test");
    let (mut bc, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let (_, old_key) = password_login(d.addr, &alice, "pw-a").await;
    let before = seal(
        "bob@a.test",
        &bob,
        "alice@a.test",
        &old_key.public(),
        "before the reset",
    );
    assert_eq!(
        bc.mail(&before.to_bytes()).await.unwrap().status,
        Status::Success
    );

    let v = admin_json(&dir, &["user", "reset", "alice"]);
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("rst-"));
    assert!(v["warning"].as_str().unwrap().contains("no back door"));
    let (st, _, err) = admin(&dir, &["user", "reset", "alice"]);
    assert!(
        st.success() && err.contains("old key") && err.contains("cmtp reset"),
        "{err}"
    );
    let (st, _, err) = admin(&dir, &["user", "reset", "nobody"]);
    assert!(!st.success() && err.contains("no account"), "{err}");

    // RESET + REGFINISH with a new key (what `cmtp reset` does).
    let daddr = d.addr;
    let reset = |token: String, password: &'static str| {
        let alice = alice.clone();
        async move {
            let mut c = Connection::connect(daddr, T).await.unwrap();
            c.ohai().await.unwrap();
            let rng = &mut rand_core::OsRng;
            let (reg, request) = Registration::start(password.as_bytes(), rng).unwrap();
            let r = c
                .command(
                    &Cmd::Reset {
                        user: alice.account.clone(),
                        token,
                        request: request.to_vec(),
                    },
                    1 << 20,
                )
                .await
                .unwrap();
            if r.status != Status::Success {
                return Err(r.text());
            }
            let offer = RegistrationOffer::decode(&r.body).unwrap();
            let new = IdentityKey::generate(rng);
            let bundle = reg
                .finish(
                    password.as_bytes(),
                    &offer,
                    &alice,
                    &new,
                    KsfParams::INSECURE_TEST,
                    cmtp_server::state::now(),
                    &c.channel_binding(),
                    rng,
                )
                .unwrap();
            let r = c
                .command(
                    &Cmd::RegFinish {
                        bundle: bundle.to_bytes(),
                    },
                    1 << 20,
                )
                .await
                .unwrap();
            if r.status != Status::Success {
                return Err(r.text());
            }
            Ok((new, KeyStatement::decode(&r.body).unwrap()))
        }
    };
    let e = reset("rst-0000".into(), "new-pw").await.unwrap_err();
    assert!(e.contains("invalid"), "{e}");
    let (new_key, statement) = reset(token.clone(), "new-pw").await.unwrap();
    assert_eq!(statement.key, new_key.public());
    assert_ne!(new_key.public(), old_key.public());
    // Once only: the token is used up (and the one made second went with it).
    let e = reset(token, "other").await.unwrap_err();
    assert!(e.contains("invalid"), "{e}");
    // The new password logs in and releases the new key; the old one fails.
    let (mut ac, key) = try_login(d.addr, &alice, "new-pw").await.unwrap();
    assert_eq!(key.public(), new_key.public());
    assert_eq!(
        try_login(d.addr, &alice, "pw-a").await.err(),
        Some(Status::AuthFailed)
    );
    // The server states the new key at once.
    let r = bc
        .command(
            &Cmd::KeyRequest {
                user: Some(alice.account.clone()),
                domain: None,
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(KeyStatement::decode(&r.body).unwrap().key, new_key.public());
    // Old mail: there, but it opens with the old key only.
    let entries = list(&mut ac).await;
    assert_eq!(entries.len(), 1);
    let m = fetch(&mut ac, entries[0].id).await;
    assert!(cmtp_proto::content::open(&m, Some(&key)).is_err());
    assert_eq!(
        cmtp_proto::content::open(&m, Some(&old_key))
            .unwrap()
            .content
            .text,
        "before the reset"
    );
}

// ----- 5. backups -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_under_load_restores_into_a_fresh_server_with_every_acknowledged_message() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let port = free_port();
    write_config(&dir, "a.test", port, |_| {});
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let d = Daemon::start(&dir, port);
    let (_, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let bob_pub = bob.public();
    // A sender that keeps sending (some messages over one store chunk).
    let acked: Arc<Mutex<Vec<Message>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let sender = {
        let (acked, stop, a) = (acked.clone(), stop.clone(), d.addr);
        tokio::spawn(async move {
            let (mut c, alice) = password_login(a, &addr("alice@a.test"), "pw-a").await;
            let mut i = 0usize;
            while !stop.load(Ordering::SeqCst) {
                let mut m = Content {
                    text: format!("message {i}"),
                    ..Content::default()
                };
                if i.is_multiple_of(7) {
                    m.attachments.push(cmtp_proto::content::Attachment {
                        name: "big".into(),
                        data: vec![i as u8; 400_000],
                        ..Default::default()
                    });
                }
                let m = m
                    .seal(
                        &addr("alice@a.test"),
                        &alice,
                        &addr("bob@a.test"),
                        &bob_pub,
                        &mut rand_core::OsRng,
                    )
                    .unwrap();
                let r = c.mail(&m.to_bytes()).await.unwrap();
                assert_eq!(r.status, Status::Success, "{}", r.text());
                acked.lock().unwrap().push(m);
                i += 1;
            }
        })
    };
    eventually(T, "some mail", || async {
        acked.lock().unwrap().len() >= 20
    })
    .await;
    let backup = tmp.path().join("backup.cmtpd");
    let before = acked.lock().unwrap().len();
    let out = tokio::task::spawn_blocking({
        let (dir, backup) = (dir.clone(), backup.clone());
        move || admin(&dir, &["-o", "json", "backup", backup.to_str().unwrap()])
    })
    .await
    .unwrap();
    let during = acked.lock().unwrap().len();
    stop.store(true, Ordering::SeqCst);
    // (`during` is only reported: a message committed inside the snapshot
    // may be acknowledged a moment after the backup returns.)
    sender.await.unwrap();
    assert!(out.0.success(), "{}", out.2);
    let report: Value = serde_json::from_str(&out.1).unwrap();
    eprintln!(
        "{before} messages acknowledged before the backup, {during} when it ended; the backup holds {}",
        report["messages"]
    );
    assert!(report["messages"].as_u64().unwrap() >= before as u64);
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    // Never over an existing file.
    let (st, _, err) = admin(&dir, &["backup", backup.to_str().unwrap()]);
    assert!(!st.success() && err.contains("exists"), "{err}");

    // Restore into a fresh directory and serve it elsewhere.
    let fresh = tmp.path().join("restored");
    let v = admin_json(&fresh, &["restore", backup.to_str().unwrap()]);
    assert_eq!(v["messages"], report["messages"]);
    assert_eq!(v["fingerprint"], report["fingerprint"]);
    // Not into a directory that holds something.
    let (st, _, err) = admin(&fresh, &["restore", backup.to_str().unwrap()]);
    assert!(!st.success() && err.contains("not empty"), "{err}");
    assert_eq!(
        admin(&fresh, &["key", "show"]).1.trim(),
        admin(&dir, &["key", "show"]).1.trim(),
        "the same server key"
    );
    drop(d);
    let port2 = free_port();
    let d2 = Daemon::start_with(&fresh, port2, &["--listen", &format!("127.0.0.1:{port2}")]);
    let (mut bc, bob2) = password_login(d2.addr, &addr("bob@a.test"), "pw-b").await;
    assert_eq!(bob2.public(), bob.public());
    let entries = list(&mut bc).await;
    let acked = acked.lock().unwrap().clone();
    let by_hash: std::collections::HashMap<[u8; 32], &Message> =
        acked.iter().map(|m| (m.hash(), m)).collect();
    for m in &acked[..before] {
        assert!(
            entries.iter().any(|e| e.hash == m.hash()),
            "a message acknowledged before the backup is missing"
        );
    }
    // Everything there is whole and readable (acknowledged during the backup or before).
    for e in &entries {
        let stored = fetch(&mut bc, e.id).await;
        let original = by_hash.get(&stored.hash()).expect("a message nobody sent");
        let a = cmtp_proto::content::open(&stored, Some(&bob2)).unwrap();
        let b = cmtp_proto::content::open(original, Some(&bob)).unwrap();
        assert_eq!(a.content.text, b.content.text);
        assert_eq!(a.content.attachments, b.content.attachments);
    }
    assert!(entries.len() >= before && entries.len() <= acked.len());
}

#[test]
fn a_postgresql_server_is_backed_up_with_postgresql_tools() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("pg");
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = Config::new("a.test", &dir);
    cfg.store.backend = cmtp_server::config::StoreBackend::Postgres;
    cfg.store.url = Some("postgres://cmtpd@127.0.0.1:1/cmtp".into());
    std::fs::write(dir.join("cmtpd.toml"), cfg.to_toml()).unwrap();
    let (st, _, err) = admin(&dir, &["backup", "/tmp/x"]);
    assert!(!st.success());
    assert!(
        err.contains("pg_dump") && err.contains("server key"),
        "{err}"
    );
}

// ----- 6. observability -----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_and_queue_gauges_are_served_and_the_dashboard_uses_only_real_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("a");
    let (port, mport) = (free_port(), free_port());
    write_config(&dir, "a.test", port, |c| {
        c.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], mport)));
        c.relay.poll_ms = 100;
    });
    add_user(&dir, "alice", "pw-a");
    let d = Daemon::start(&dir, port);
    // A message, so that the store's latency summary has values.
    let (mut c, _) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let m = opaque("alice@a.test", "alice@a.test", 100, 1);
    assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    let value = |body: &str, name: &str| -> Option<f64> {
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    };
    eventually(T, "the gauges", || async {
        let b = scrape();
        value(&b, "cmtp_disk_free_bytes{volume=\"data\"}").is_some()
            && value(&b, "cmtp_queue_oldest_due_seconds").is_some()
    })
    .await;
    let body = scrape();
    let free = value(&body, "cmtp_disk_free_bytes{volume=\"data\"}").unwrap();
    let total = value(&body, "cmtp_disk_total_bytes{volume=\"data\"}").unwrap();
    assert!(free > 0.0 && free <= total, "{free} of {total}");
    // Latencies are summaries with quantiles (what the dashboard queries).
    assert!(
        body.lines().any(|l| l.starts_with("cmtp_store_seconds{")
            && l.contains("op=\"commit\"")
            && l.contains("quantile=\"0.99\"")),
        "{body}"
    );
    for g in [
        "cmtp_queue_oldest_seconds",
        "cmtp_queue_oldest_due_seconds",
        "cmtp_queue_held",
        "cmtp_queue_messages",
        "cmtp_disk_free_bytes{volume=\"database\"}",
    ] {
        assert!(value(&body, g).is_some(), "{g} missing:\n{body}");
    }

    // The dashboard: valid JSON, and every metric it queries is one the
    // code records (histograms with their _bucket/_sum/_count series).
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("contrib/grafana-cmtpd.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    fn walk(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(e)) = m.get("expr") {
                    out.push(e.clone());
                }
                m.values().for_each(|v| walk(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    walk(&dash, &mut exprs);
    assert!(exprs.len() >= 10, "{} panels' queries", exprs.len());
    // Every source file, in subdirectories too (cmtp-server/src/smtp/).
    let mut code = String::new();
    let mut dirs: Vec<_> = ["crates/cmtp-server/src", "crates/cmtpd/src"]
        .iter()
        .map(|d| root.join(d))
        .collect();
    while let Some(dir) = dirs.pop() {
        for e in std::fs::read_dir(dir).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                code.push_str(&std::fs::read_to_string(path).unwrap());
            }
        }
    }
    let mut used = HashSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("cmtp_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            used.insert(name);
        }
    }
    for name in &used {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            code.contains(&format!("\"{base}\"")),
            "the dashboard queries {name}, which the server does not record"
        );
    }
    for needed in [
        "cmtp_disk_free_bytes",
        "cmtp_queue_oldest_seconds",
        "cmtp_login_failures_total",
        "cmtp_relay_total",
    ] {
        assert!(
            used.contains(needed),
            "the dashboard has no panel for {needed}"
        );
    }
}

// ----- 7. systemd -----

#[test]
fn the_systemd_unit_is_hardened_and_passes_systemd_analyze() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let unit = std::fs::read_to_string(root.join("contrib/cmtpd.service")).unwrap();
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    for line in [
        "User=cmtpd",
        "Group=cmtpd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/cmtpd",
        "ExecStart=/usr/local/bin/cmtpd --data-dir /var/lib/cmtpd run",
        "ExecReload=/bin/kill -HUP $MAINPID",
        "UMask=0077",
    ] {
        assert!(has(line), "{line} is missing from contrib/cmtpd.service");
    }
    let Some(analyze) = which("systemd-analyze") else {
        eprintln!(
            "NOT VERIFIED: systemd-analyze is not installed, so contrib/cmtpd.service could not \
             be checked with `systemd-analyze verify` (scripts/test installs it where apt-get can)"
        );
        return;
    };
    // The unit as installed, but starting the binary under test.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("cmtpd.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/cmtpd", BIN)).unwrap();
    let out = Command::new(&analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "systemd-analyze verify:\n{text}");
    assert!(
        !text.contains("cmtpd.service"),
        "systemd-analyze verify complains about the unit:\n{text}"
    );
    // The exposure score systemd computes from the sandboxing options.
    let out = Command::new(&analyze)
        .args(["security", "--offline=yes", "--threshold=30"])
        .arg(&path)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "systemd-analyze security:\n{text}");
    let score = text
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .and_then(|l| l.split(':').nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(
        score <= 3.0,
        "exposure {score} (9.6 is an unhardened service):\n{text}"
    );
    // The dedicated user, as contrib/cmtpd.sysusers creates it.
    if let Some(sysusers) = which("systemd-sysusers") {
        let root = tmp.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let out = Command::new(sysusers)
            .arg(format!("--root={}", root.display()))
            .arg("--dry-run")
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/cmtpd.sysusers"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("Creating user 'cmtpd'"), "{text}");
    }
}

fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| p.is_file())
    })
}
