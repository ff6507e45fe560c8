//! The cmtpd binary as an administrator runs it: first start, reuse, SMTP
//! clients, memory with a 100 MiB message, a full disk, SIGKILL at random
//! moments, SIGTERM, metrics and JSON logs.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cmtp_client::Connection;
use cmtp_proto::account::{Login, open_release};
use cmtp_proto::command::Command as Cmd;
use cmtp_proto::content::Content;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::message::Message;
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::{LoginChallenge, XzibitRelease, decode_listing};
use cmtp_proto::reply::Status;
use cmtp_server::config::Config;

mod abuse;
mod admin;
mod cluster;

const BIN: &str = env!("CARGO_BIN_EXE_cmtpd");
const T: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes a test configuration (fast Argon2) for `domain` into `dir`.
fn write_config(dir: &Path, domain: &str, port: u16, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut cfg = Config::new(domain, dir);
    cfg.listen = vec![SocketAddr::from(([127, 0, 0, 1], port))];
    let k = KsfParams::INSECURE_TEST;
    cfg.accounts.ksf_min_memory_kib = k.m_cost_kib;
    cfg.accounts.ksf_min_passes = k.t_cost;
    cfg.accounts.ksf_min_lanes = k.p_cost;
    tweak(&mut cfg);
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("cmtpd.toml"), cfg.to_toml()).unwrap();
    // Key and database, as an administrator makes them before adding users
    // (no command but `init` and `run` creates them).
    let out = cmtpd(dir).arg("init").output().unwrap();
    assert!(
        out.status.success(),
        "cmtpd init: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    cfg
}

fn cmtpd(dir: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--data-dir").arg(dir);
    c
}

/// A running cmtpd process, killed on drop.
struct Daemon {
    child: Child,
    addr: SocketAddr,
}

impl Daemon {
    fn start(dir: &Path, port: u16) -> Daemon {
        Self::start_with(dir, port, &[])
    }

    fn start_with(dir: &Path, port: u16, extra: &[&str]) -> Daemon {
        let child = cmtpd(dir)
            .arg("run")
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let d = Daemon { child, addr };
        d.wait_ready();
        d
    }

    fn wait_ready(&self) {
        let until = Instant::now() + T;
        while Instant::now() < until {
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                let mut b = [0u8; 3];
                if s.read_exact(&mut b).is_ok() && &b == b"554" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("cmtpd did not come up on {}", self.addr);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn add_user(dir: &Path, name: &str, password: &str) {
    let pw = dir.join(format!("{name}.pw"));
    std::fs::write(&pw, format!("{password}\n")).unwrap();
    let out = cmtpd(dir)
        .args(["user", "add", name, "--password-file"])
        .arg(&pw)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// OPAQUE login with the password: returns a logged-in connection and the
/// identity key recovered from the xzibit.
async fn password_login(
    addr: SocketAddr,
    address: &Address,
    password: &str,
) -> (Connection, IdentityKey) {
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
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let proof = login
        .finish(
            password.as_bytes(),
            &LoginChallenge::decode(&r.body).unwrap(),
            address,
            &KsfParams::INSECURE_TEST,
            &c.channel_binding(),
            rng,
        )
        .unwrap();
    let r = c
        .command(
            &Cmd::LoginFinish {
                ke3: proof.ke3.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let release = XzibitRelease::decode(&r.body).unwrap();
    let (key, _) = open_release(&release, &g.key, address, &proof.export_key, None).unwrap();
    (c, key)
}

fn addr(s: &str) -> Address {
    Address::parse(s).unwrap()
}

#[test]
fn first_start_creates_everything_and_later_starts_reuse_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh");
    let port = free_port();
    let fingerprint = |dir: &Path| {
        let out = cmtpd(dir).args(["init"]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains("_cmtp._tcp.a.test."), "{text}");
        assert!(text.contains("_cmtpkey.a.test."), "{text}");
        text.lines()
            .find(|l| l.starts_with("fingerprint:"))
            .unwrap()
            .to_owned()
    };
    {
        let _d = Daemon::start_with(
            &dir,
            port,
            &[
                "--domain",
                "a.test",
                "--listen",
                &format!("127.0.0.1:{port}"),
            ],
        );
        assert!(dir.join("cmtpd.toml").exists());
        assert!(dir.join("cmtp.db").exists());
        let mode = std::fs::metadata(dir.join("server.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
    }
    let first = fingerprint(&dir);
    let _d = Daemon::start_with(&dir, port, &["--listen", &format!("127.0.0.1:{port}")]);
    assert_eq!(fingerprint(&dir), first, "the key is reused");
    // A different domain for an existing directory is refused.
    let out = cmtpd(&dir)
        .args(["run", "--domain", "b.test"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("differs"));
    // No configuration and no --domain: a clear message.
    let out = cmtpd(&tmp.path().join("none")).arg("run").output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("give --domain"));
}

#[test]
fn an_smtp_client_fails_fast_with_a_protocol_error() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(tmp.path(), "a.test", port, |_| {});
    let _d = Daemon::start(tmp.path(), port);
    let script = format!(
        r#"
import smtplib, time, sys
t = time.monotonic()
try:
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=10)
    print("CONNECTED"); sys.exit(1)
except smtplib.SMTPConnectError as e:
    print("REFUSED", e.smtp_code, round(time.monotonic() - t, 3))
# An SMTP client that ignores the greeting and speaks anyway gets an SMTP refusal.
import socket
s = socket.create_connection(("127.0.0.1", {port}))
s.recv(512)
s.sendall(b"EHLO client.example\r\n")
print("LINE", s.recv(512).decode().strip())
print("EOF", s.recv(512) == b"")
"#
    );
    let out = Command::new("python3")
        .arg("-c")
        .arg(&script)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let refused = text.lines().find(|l| l.starts_with("REFUSED")).unwrap();
    let parts: Vec<&str> = refused.split(' ').collect();
    assert_eq!(parts[1], "554");
    let secs: f64 = parts[2].parse().unwrap();
    assert!(secs < 1.0, "smtplib took {secs} s to fail");
    assert!(text.contains("LINE 554 5.5.0 a.test"), "{text}");
    assert!(text.contains("EOF True"), "{text}");
}

/// A standard TLS stack (Python's `ssl` on OpenSSL, through
/// `scripts/tls-probe.py`) reads the clear banner, completes a TLS 1.3
/// handshake with ALPN `cmtp/2`, and finds in the self-issued certificate
/// the very key the server signs its greeting with; a CMTP/1 client that
/// speaks in clear gets a sentence, not silence (PROTOCOL.md §4.1, §4.4).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standard_tls_client_sees_tls13_alpn_cmtp2_and_the_greeting_key() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(tmp.path(), "a.test", port, |_| {});
    let d = Daemon::start(tmp.path(), port);

    let mut c = Connection::connect(d.addr, T).await.unwrap();
    let greeting = c.ohai().await.unwrap();
    assert_eq!(
        c.tls_key(),
        Some(greeting.key),
        "the handshake shows the greeting's key"
    );
    // Our own client and server agree on the hybrid post-quantum group.
    assert_eq!(
        c.key_exchange_group(),
        Some(cmtp_proto::tls::NamedGroup::X25519MLKEM768)
    );
    let key_hex = hex::encode(greeting.key.to_bytes());

    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/tls-probe.py");
    let out = Command::new("python3")
        .arg(&probe)
        .args(["127.0.0.1", &port.to_string(), "--expect-key", &key_hex])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("version: TLSv1.3"), "{text}");
    assert!(text.contains("alpn: cmtp/2"), "{text}");
    assert!(text.contains(&format!("key: {key_hex}")), "{text}");
    assert!(text.contains("banner: 554 a.test CMTP/2 "), "{text}");

    // The probe must fail when the key is not the expected one, or the
    // check above proves nothing.
    let wrong = Command::new("python3")
        .arg(&probe)
        .args([
            "127.0.0.1",
            &port.to_string(),
            "--expect-key",
            &"00".repeat(32),
        ])
        .output()
        .unwrap();
    assert!(!wrong.status.success());

    // A CMTP/1 client, speaking in clear after the banner.
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.write_all(b"OHAI\0").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(
        all.contains("554 5.7.0 a.test CMTP/2: TLS 1.3 is required"),
        "{all}"
    );
}

fn vm_hwm_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mib_message_is_stored_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    write_config(tmp.path(), "a.test", port, |c| {
        c.limits.max_message_size = 200 << 20
    });
    add_user(tmp.path(), "alice", "pw-a");
    add_user(tmp.path(), "bob", "pw-b");
    let d = Daemon::start(tmp.path(), port);
    let (mut c, _) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let before = vm_hwm_kib(d.pid());
    // A version 1 message with a 100 MiB body, streamed (the server never
    // decrypts; the content need not be a real sealed box for this test).
    const BODY: u64 = 100 << 20;
    let mut head = Vec::new();
    let m = Message {
        version: 1,
        destination: addr("bob@a.test"),
        source: cmtp_proto::message::Source::user(addr("alice@a.test")),
        log: vec![],
        body: vec![],
        attachments: vec![],
        trailer: [0; 64],
    };
    let mut env = m.envelope();
    env.body_len = BODY;
    env.encode_head(0, &mut head);
    let mail = c.begin_mail().await.unwrap();
    c.send_bytes(&head).await.unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..100 {
        c.send_bytes(&chunk).await.unwrap();
    }
    c.send_bytes(&[0u8; 64]).await.unwrap();
    let r = c.finish_mail(mail).await.unwrap();
    assert_eq!(r.status, Status::Success, "{}", r.text());
    let after = vm_hwm_kib(d.pid());
    eprintln!("server peak RSS: {before} KiB before, {after} KiB after a 100 MiB message");
    assert!(
        after < 64 * 1024,
        "peak RSS {after} KiB: the message was not streamed"
    );
    let (mut b, _) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let list = decode_listing(&b.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 1);
    assert!(list[0].size > BODY);
}

fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 * 1024];
    while f.write_all(&block).is_ok() {}
    let _ = f.sync_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_gives_tempfailure_damages_nothing_and_service_resumes() {
    let fs = cmtp_testkit::tmpfs::Tmpfs::mount("48m", None)
        .unwrap_or_else(|why| panic!("{why}; CI runs as root, this test must run"));
    let dir = fs.path().join("data");
    let port = free_port();
    // No reserve and no ballast: the store itself meets the full disk here
    // (abuse.rs shows the reserve and the ballast).
    write_config(&dir, "a.test", port, |c| {
        c.store.min_free = 0;
        c.store.ballast_size = 0;
    });
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let d = Daemon::start(&dir, port);
    let (mut c, alice) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let (mut b, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let msg = |text: &str, size: usize| {
        Content {
            text: text.into(),
            attachments: vec![cmtp_proto::content::Attachment {
                name: "f".into(),
                data: vec![1; size],
            }],
            ..Content::default()
        }
        .seal(
            &addr("alice@a.test"),
            &alice,
            &addr("bob@a.test"),
            &bob.public(),
            &mut rand_core::OsRng,
        )
        .unwrap()
    };
    let before: Vec<Message> = (0..5)
        .map(|i| msg(&format!("before {i}"), 20_000))
        .collect();
    for m in &before {
        assert_eq!(c.mail(&m.to_bytes()).await.unwrap().status, Status::Success);
    }
    fill(&dir.join("filler"));
    let big = msg("while full", 4 << 20);
    let r = c.mail(&big.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    // The refusal may come before the whole message was sent; the client then
    // gives that connection up. Log in again.
    let (mut c, _) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    // Everything accepted before is intact.
    let list = decode_listing(&b.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 5);
    for (entry, m) in list.iter().zip(&before) {
        let mut out = Vec::new();
        b.fetch_into(entry.id, 1 << 30, &mut out)
            .await
            .unwrap()
            .unwrap();
        let stored = Message::decode(&out, Default::default()).unwrap();
        assert_eq!(stored.hash(), m.hash());
        assert_eq!(
            cmtp_proto::content::open(&stored, Some(&bob))
                .unwrap()
                .content
                .text,
            cmtp_proto::content::open(m, Some(&bob))
                .unwrap()
                .content
                .text
        );
    }
    std::fs::remove_file(dir.join("filler")).unwrap();
    let r = c.mail(&big.to_bytes()).await.unwrap();
    assert_eq!(r.status, Status::Success, "service resumes: {}", r.text());
    let list = decode_listing(&b.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 6);
    drop(d);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_sigkill_whole_and_once() {
    use rand::Rng;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let port = free_port();
    write_config(dir, "a.test", port, |_| {});
    add_user(dir, "alice", "pw-a");
    add_user(dir, "bob", "pw-b");
    let mut acked: Vec<Message> = Vec::new();
    let mut cycles = 0;
    let mut rng = rand::thread_rng();
    let (mut alice_key, mut bob_key) = (None, None);
    let mut pending: Option<Message> = None;
    while cycles < 20 {
        let d = Daemon::start(dir, port);
        let (mut c, a) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
        if bob_key.is_none() {
            let (_, b) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
            bob_key = Some(b);
        }
        alice_key.get_or_insert(a);
        let kill_after = Duration::from_millis(rng.gen_range(50..400));
        let started = Instant::now();
        let killer = {
            let pid = d.pid();
            std::thread::spawn(move || {
                std::thread::sleep(kill_after);
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
            })
        };
        loop {
            // A message whose fate is unknown (the server died mid-way) is sent
            // again: it must not be stored twice.
            let m = pending.take().unwrap_or_else(|| {
                Content {
                    text: format!("message {}", acked.len()),
                    ..Content::default()
                }
                .seal(
                    &addr("alice@a.test"),
                    alice_key.as_ref().unwrap(),
                    &addr("bob@a.test"),
                    &bob_key.as_ref().unwrap().public(),
                    &mut rand_core::OsRng,
                )
                .unwrap()
            });
            match c.mail(&m.to_bytes()).await {
                Ok(r) if r.status == Status::Success => acked.push(m),
                _ => {
                    pending = Some(m);
                    break;
                }
            }
            if started.elapsed() > Duration::from_secs(10) {
                break;
            }
        }
        killer.join().unwrap();
        drop(d);
        cycles += 1;
    }
    let d = Daemon::start(dir, port);
    let (mut b, _) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let list = decode_listing(&b.command(&Cmd::List, 1 << 22).await.unwrap().body).unwrap();
    eprintln!(
        "{} messages acknowledged over {cycles} SIGKILL cycles; {} in the mailbox",
        acked.len(),
        list.len()
    );
    assert!(
        acked.len() >= cycles,
        "too few messages got through: {}",
        acked.len()
    );
    let mut hashes: Vec<[u8; 32]> = list.iter().map(|e| e.hash).collect();
    hashes.sort();
    hashes.dedup();
    assert_eq!(
        hashes.len(),
        list.len(),
        "a message is in the mailbox twice"
    );
    for m in &acked {
        let entry = list
            .iter()
            .find(|e| e.hash == m.hash())
            .expect("an acknowledged message is missing");
        let mut out = Vec::new();
        b.fetch_into(entry.id, 1 << 30, &mut out)
            .await
            .unwrap()
            .unwrap();
        let stored = Message::decode(&out, Default::default()).unwrap();
        assert_eq!(
            (stored.body.as_slice(), stored.hash()),
            (m.body.as_slice(), m.hash()),
            "stored whole"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_cleanly_metrics_are_served_and_logs_can_be_json() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mport = free_port();
    write_config(tmp.path(), "a.test", port, |c| {
        c.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], mport)));
        c.log.format = cmtp_server::config::LogFormat::Json;
    });
    let mut d = Daemon::start(tmp.path(), port);
    let mut c = Connection::connect(d.addr, T).await.unwrap();
    c.ohai().await.unwrap();
    c.command(&Cmd::Noop, 100).await.unwrap();
    c.command(
        &Cmd::KeyRequest {
            user: Some(Account::parse("nobody").unwrap()),
            domain: None,
        },
        1 << 20,
    )
    .await
    .unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    for name in [
        "cmtp_connections_total",
        "cmtp_commands_total",
        "cmtp_connections_open",
    ] {
        assert!(body.contains(name), "metrics lack {name}:\n{body}");
    }
    drop(c);
    d.signal("TERM");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = d.child.try_wait().unwrap() {
            break s;
        }
        assert!(t.elapsed() < T, "cmtpd did not stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "exit status {status}");
    let mut lines = String::new();
    BufReader::new(d.child.stderr.take().unwrap())
        .read_to_string(&mut lines)
        .unwrap();
    let mut n = 0;
    for line in lines.lines().filter(|l| !l.trim().is_empty()) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v.get("level").is_some());
        n += 1;
    }
    assert!(n >= 2, "{lines}");
    assert!(lines.contains("SIGTERM"));
    let _ = BufRead::lines(BufReader::new(&b""[..]));
}

#[test]
fn the_admin_commands_work_from_a_config_file() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let cfg = write_config(&data, "a.test", free_port(), |_| {});
    // Move the configuration elsewhere and use --config.
    let conf = tmp.path().join("elsewhere.toml");
    std::fs::rename(data.join("cmtpd.toml"), &conf).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(&conf)
            .args(args)
            .output()
            .unwrap();
        (
            out.status,
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (st, token, err) = run(&["user", "invite", "carol"]);
    assert!(st.success(), "{err}");
    assert!(token.trim().starts_with("inv-"), "{token}");
    assert!(err.contains("cmtp register carol@a.test --invite"), "{err}");
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "secret\n").unwrap();
    let (st, out, err) = run(&[
        "user",
        "add",
        "dave",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(st.success(), "{err}");
    assert!(out.contains("created dave@a.test"), "{out}");
    let (st, _, err) = run(&[
        "user",
        "add",
        "dave",
        "--password-file",
        pw.to_str().unwrap(),
    ]);
    assert!(!st.success() && err.contains("already exists"), "{err}");
    let (_, out, _) = run(&["user", "list"]);
    assert!(out.contains("dave"), "{out}");
    // Deleting asks for confirmation; a wrong answer deletes nothing.
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&conf)
        .args(["user", "delete", "dave"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"no\n").unwrap();
    assert!(!child.wait().unwrap().success());
    assert!(run(&["user", "list"]).1.contains("dave"));
    let (st, out, _) = run(&["user", "delete", "dave", "--yes"]);
    assert!(st.success() && out.contains("deleted dave@a.test"));
    assert!(!run(&["user", "list"]).1.contains("dave"));
    let (st, _, err) = run(&["queue", "list"]);
    assert!(st.success() && err.contains("0 message(s) queued"), "{err}");
    let (st, out, _) = run(&["queue", "retry"]);
    assert!(st.success() && out.starts_with("0 message(s)"), "{out}");
    let (_, before, _) = run(&["key", "show"]);
    let (st, after, err) = run(&["key", "rotate"]);
    assert!(st.success(), "{err}");
    assert_ne!(before.trim(), after.trim());
    assert_eq!(run(&["key", "show"]).1.trim(), after.trim());
    assert!(
        err.contains(before.trim()) && err.contains("restart cmtpd"),
        "{err}"
    );
    assert!(
        cfg.key_path()
            .with_file_name("server.key.rotations")
            .exists()
    );
    // Bad names are refused with the reason.
    let (st, _, err) = run(&["user", "invite", "../root"]);
    assert!(!st.success() && err.contains("account name"), "{err}");
}
