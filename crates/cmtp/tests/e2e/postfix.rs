//! cmtpd as a domain's whole mail server, with a real Postfix on the
//! other side (PROTOCOL.md §19): mail from Postfix arrives by SMTP, is
//! sealed on arrival and read with `cmtp read`; `cmtp send --allow-smtp`
//! reaches a Postfix mailbox DKIM-signed (checked by dkimpy), and the
//! reply from there lands in the sender's thread.
//!
//! The Postfix is a throwaway instance (its own configuration, queue and
//! Maildirs under a temporary directory, listening on 127.0.0.2 only, no
//! DNS), started as bench/postfix-compare.sh starts one: `postfix -c DIR
//! start` as root, its master dropping to the `postfix` user. It needs
//! Postfix, swaks' TLS modules, dkimpy and openssl: `scripts/test`
//! installs them when missing.

use cmtp_testkit::tools::{need, need_dkimpy};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cmtp_testkit::dns::TestDns;

use crate::support::{Home, Server, free_port, password_file, register, tempdir, wait_until};

/// Where the throwaway Postfix listens (not 127.0.0.1, so that nothing
/// else on the machine answers on the CMTP port of its address).
const PF_IP: &str = "127.0.0.2";

fn free_port_on(ip: &str) -> u16 {
    std::net::TcpListener::bind((ip, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A throwaway Postfix for `pf.test` with one Maildir user, carol; mail
/// for `b.test` goes to cmtpd's SMTP port.
struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    fn start(base: &Path, cmtpd_smtp_port: u16) -> Postfix {
        need("postfix");
        need("openssl");
        let pf = base.join("postfix");
        for d in ["etc", "spool", "data", "vmail"] {
            std::fs::create_dir_all(pf.join(d)).unwrap();
        }
        // Postfix's daemons run as postfix/nobody: they must reach the paths.
        let mut p = pf.clone();
        while p != Path::new("/") {
            let _ = Command::new("chmod").arg("o+x").arg(&p).status();
            if !p.pop() {
                break;
            }
        }
        assert!(
            Command::new("chown")
                .args(["postfix"])
                .arg(pf.join("data"))
                .status()
                .unwrap()
                .success()
        );
        assert!(
            Command::new("chown")
                .args(["nobody:nogroup"])
                .arg(pf.join("vmail"))
                .status()
                .unwrap()
                .success()
        );
        let out = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=mx.pf.test",
                "-keyout",
            ])
            .arg(pf.join("etc/key.pem"))
            .arg("-out")
            .arg(pf.join("etc/cert.pem"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port_on(PF_IP);
        let d = pf.display();
        std::fs::write(
            pf.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\n\
                 config_directory = {d}/etc\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 meta_directory = /etc/postfix\nmail_owner = postfix\nsetgid_group = postdrop\n\
                 myhostname = mx.pf.test\nmydomain = pf.test\nmyorigin = pf.test\nmydestination =\n\
                 inet_interfaces = loopback-only\ninet_protocols = ipv4\nmynetworks = 127.0.0.0/8\n\
                 smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination\n\
                 smtpd_peername_lookup = no\ndisable_dns_lookups = yes\nsmtp_dns_support_level = disabled\n\
                 alias_maps =\nalias_database =\nbiff = no\n\
                 maillog_file_prefixes = {d}\nmaillog_file = {d}/maillog\n\
                 virtual_mailbox_domains = pf.test\nvirtual_mailbox_base = {d}/vmail\n\
                 virtual_mailbox_maps = inline:{{ carol@pf.test=carol/ }}\n\
                 virtual_uid_maps = static:65534\nvirtual_gid_maps = static:65534\n\
                 transport_maps = inline:{{ b.test=smtp:[127.0.0.1]:{cmtpd_smtp_port} }}\n\
                 smtp_tls_security_level = may\nsmtp_tls_loglevel = 1\n\
                 smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {d}/etc/cert.pem\n\
                 smtpd_tls_key_file = {d}/etc/key.pem\nsmtpd_tls_received_header = yes\n\
                 minimal_backoff_time = 1s\nmaximal_backoff_time = 2s\nqueue_run_delay = 1s\n"
            ),
        )
        .unwrap();
        std::fs::write(
            pf.join("etc/master.cf"),
            format!(
                "{PF_IP}:{port} inet n - n - - smtpd\n\
                 pickup unix n - n 60 1 pickup\ncleanup unix n - n - 0 cleanup\n\
                 qmgr unix n - n 300 1 qmgr\ntlsmgr unix - - n 1000? 1 tlsmgr\n\
                 rewrite unix - - n - - trivial-rewrite\nbounce unix - - n - 0 bounce\n\
                 defer unix - - n - 0 bounce\ntrace unix - - n - 0 bounce\n\
                 verify unix - - n - 1 verify\nflush unix n - n 1000? 0 flush\n\
                 proxymap unix - - n - - proxymap\nshowq unix n - n - - showq\n\
                 error unix - - n - - error\nretry unix - - n - - error\n\
                 discard unix - - n - - discard\nsmtp unix - - n - - smtp\n\
                 local unix - n n - - local\nvirtual unix - n n - - virtual\n\
                 anvil unix - - n - 1 anvil\nscache unix - - n - 1 scache\n\
                 postlog unix-dgram n - n - 1 postlogd\n"
            ),
        )
        .unwrap();
        let etc = pf.join("etc");
        let start = Command::new("postfix")
            .arg("-c")
            .arg(&etc)
            .arg("start")
            .output()
            .unwrap();
        let postfix = Postfix { dir: pf, port };
        assert!(
            start.status.success(),
            "postfix did not start: {}{}\n{}",
            String::from_utf8_lossy(&start.stdout),
            String::from_utf8_lossy(&start.stderr),
            postfix.log()
        );
        wait_until(Duration::from_secs(20), "Postfix to listen", || {
            std::net::TcpStream::connect((PF_IP, port)).is_ok()
        });
        postfix
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    /// The messages in carol's Maildir.
    fn maildir(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for sub in ["new", "cur"] {
            if let Ok(rd) = std::fs::read_dir(self.dir.join("vmail/carol").join(sub)) {
                for e in rd.flatten() {
                    out.push(std::fs::read(e.path()).unwrap());
                }
            }
        }
        out
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .args(["stop"])
            .output();
        if std::thread::panicking() {
            eprintln!("--- Postfix log ---\n{}", self.log());
        }
    }
}

fn python(script: &str, args: &[&str]) -> String {
    need("python3");
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const SEND_WITH_ATTACHMENT: &str = r#"
import dkim, email.policy, smtplib, sys
from email.message import EmailMessage
ip, port, secret, key = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
m = EmailMessage()
m["From"] = "Carol <carol@pf.test>"
m["To"] = "bob@b.test"
m["Subject"] = "Minutes of the meeting"
m["Message-ID"] = "<minutes-1@pf.test>"
m.set_content("Hi Bob,\n" + secret + "\nCarol\n")
m.add_alternative("<p>Hi Bob,<br>" + secret + "</p><script>alert(1)</script>", subtype="html")
m.add_attachment(bytes(range(256)) * 40, maintype="application", subtype="octet-stream", filename="minutes.bin")
raw = m.as_bytes(policy=email.policy.SMTP)
sig = dkim.sign(raw, b"sel", b"pf.test", open(key, "rb").read(),
                include_headers=[b"from", b"to", b"subject", b"message-id"])
s = smtplib.SMTP(ip, port, local_hostname="client.pf.test", timeout=10)
s.sendmail("carol@pf.test", ["bob@b.test"], sig + raw)
s.quit()
print("sent")
"#;

/// Prints the DKIM record of the RSA key file argv[1] (through openssl).
const DKIM_RECORD: &str = r#"
import base64, subprocess, sys
der = subprocess.run(["openssl", "pkey", "-in", sys.argv[1], "-pubout", "-outform", "DER"],
                     capture_output=True, check=True).stdout
print("v=DKIM1; k=rsa; p=" + base64.b64encode(der).decode())
"#;

const PHRASE: &str = "plaintext-phrase-4f9a1b77";

fn cmtpd_with_smtp(base: &Path, extra: &str) -> (Server, u16) {
    let smtp_port = free_port();
    let server = Server::start_with(
        base,
        "b.test",
        free_port(),
        &[],
        &format!(
            "\n[smtp]\nlisten = [\"127.0.0.1:{smtp_port}\"]\nmax_message_size = 1000000\n{extra}"
        ),
    );
    crate::support::wait_for_banner(smtp_port, "220 ", Duration::from_secs(20));
    (server, smtp_port)
}

fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if std::fs::read(&p).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            {
                found.push(p);
            }
        }
    }
    found
}

#[test]
fn postfix_delivers_to_cmtpd_and_bob_reads_it_sealed_marked_as_smtp_with_attachments() {
    need_dkimpy();
    let tmp = tempdir();
    let base = tmp.path();
    // pf.test signs its mail (dkimpy, a key made by openssl) and publishes
    // the key and a DMARC policy; no SPF record.
    need("openssl");
    let key = base.join("pf-dkim.key");
    let made = Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
        ])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let record = python(DKIM_RECORD, &[key.to_str().unwrap()]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(async {
        let dns = TestDns::start().await.unwrap();
        // The parent zone too: DMARC's tree walk asks _dmarc.test.
        dns.add_zone("test").await.unwrap();
        dns.add_zone("pf.test").await.unwrap();
        dns.add_txt("sel._domainkey.pf.test", record.trim())
            .await
            .unwrap();
        dns.add_txt("_dmarc.pf.test", "v=DMARC1; p=reject")
            .await
            .unwrap();
        dns
    });
    let (server, smtp_port) = cmtpd_with_smtp(
        base,
        &format!(
            "[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n",
            dns.addr()
        ),
    );
    let postfix = Postfix::start(base, smtp_port);
    let bob = register(base, &server, "bob", "b.test", &server.addr());

    let out = python(
        SEND_WITH_ATTACHMENT,
        &[
            PF_IP,
            &postfix.port.to_string(),
            PHRASE,
            key.to_str().unwrap(),
        ],
    );
    assert!(out.contains("sent"));
    // Postfix relays it to cmtpd's SMTP port (STARTTLS, as it is offered).
    wait_until(
        Duration::from_secs(60),
        "the message to reach bob's mailbox",
        || {
            bob.cmd(&["-o", "json", "inbox"])
                .json()
                .as_array()
                .is_some_and(|a| !a.is_empty())
        },
    );
    let inbox = bob.cmd(&["inbox"]);
    let listing = inbox.ok();
    assert!(listing.contains("carol@pf.test (SMTP)"), "{listing}");
    assert!(listing.contains("not end-to-end encrypted"), "{listing}");

    let save = base.join("saved");
    let read = bob.cmd(&["read", "1", "--save-attachments", save.to_str().unwrap()]);
    let text = read.ok();
    assert!(text.contains("From:      Carol <carol@pf.test>"), "{text}");
    assert!(text.contains("Subject:   Minutes of the meeting"), "{text}");
    assert!(
        text.contains("Security:  arrived by SMTP from mx.pf.test [127.0.0.1]"),
        "{text}"
    );
    assert!(
        text.contains("DKIM pass for pf.test, DMARC pass; not end-to-end encrypted"),
        "Postfix relayed carol's signature intact, and cmtpd checked it: {text}"
    );
    assert!(text.contains(PHRASE), "{text}");
    assert!(!text.contains("<script>"), "HTML is never shown: {text}");
    assert!(
        text.contains("Attachment: minutes.bin (10.0 KiB)"),
        "{text}"
    );
    let saved = std::fs::read(save.join("minutes.bin")).unwrap();
    let want: Vec<u8> = (0..40).flat_map(|_| 0u8..=255).collect();
    assert_eq!(saved, want, "the attachment is intact");
    let json = bob.cmd(&["-o", "json", "read", "1"]).json();
    assert_eq!(json["end_to_end"], false);
    assert_eq!(
        json["smtp"]["tls"], "TLSv1.3",
        "Postfix used STARTTLS: {json}"
    );

    // On the server: the sealed copy only.
    let found = grep_dir(&server.dir, PHRASE.as_bytes());
    assert!(
        found.is_empty(),
        "plaintext on the server's disk: {found:?}"
    );
    drop(postfix);
}

const CHECK_DKIM_AND_REPLY: &str = r#"
import dkim, smtplib, sys, email
path, record, ip, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
raw = open(path, "rb").read()
def dns(name, timeout=5):
    assert name == b"cmtp._domainkey.b.test.", name
    return record.encode()
ok = dkim.verify(raw, dnsfunc=dns)
print("dkim", ok)
m = email.message_from_bytes(raw)
print("subject", m["Subject"])
print("received-tls", "ESMTPS" in raw.decode(errors="replace"))
r = email.message.EmailMessage()
r["From"] = "Carol <carol@pf.test>"
r["To"] = m["From"]
r["Subject"] = "Re: " + m["Subject"]
r["In-Reply-To"] = m["Message-ID"]
r["References"] = m["Message-ID"]
r.set_content("Got it, thanks.\n")
s = smtplib.SMTP(ip, port, local_hostname="client.pf.test", timeout=10)
s.send_message(r)
s.quit()
print("replied")
"#;

#[test]
fn send_allow_smtp_reaches_postfix_dkim_signed_and_the_reply_lands_in_the_thread() {
    need_dkimpy();
    let tmp = tempdir();
    let base = tmp.path();
    // pf.test: an MX at the throwaway Postfix's address, no CMTP service.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(async {
        let dns = TestDns::start().await.unwrap();
        dns.add_zone("pf.test").await.unwrap();
        dns.add_mx("pf.test", 10, "mx.pf.test").await.unwrap();
        dns.add_a("mx.pf.test", PF_IP.parse().unwrap())
            .await
            .unwrap();
        dns
    });
    // Postfix needs cmtpd's SMTP port before cmtpd needs Postfix's: pick it first.
    let smtp_port = free_port();
    let postfix = Postfix::start(base, smtp_port);
    let server = Server::start_with(
        base,
        "b.test",
        free_port(),
        &[],
        &format!(
            "\n[smtp]\nlisten = [\"127.0.0.1:{smtp_port}\"]\noutbound_port = {}\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\nallow_private = [\"pf.test\"]\n",
            postfix.port,
            dns.addr()
        ),
    );
    let alice = register(base, &server, "alice", "b.test", &server.addr());

    // Without consent: refused, saying why, and the text is kept.
    let refused = alice.run(
        &["send", "--to", "carol@pf.test", "--subject", "Lunch?"],
        b"Shall we have lunch on Friday?\n",
    );
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("no CMTP service"),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("--allow-smtp"),
        "{}",
        refused.stderr
    );

    // With consent.
    let sent = alice.run(
        &[
            "send",
            "--allow-smtp",
            "--to",
            "carol@pf.test",
            "--subject",
            "Lunch?",
        ],
        b"Shall we have lunch on Friday?\n",
    );
    let stdout = sent.ok();
    assert!(stdout.contains("sent to carol@pf.test by SMTP"), "{stdout}");
    assert!(
        sent.stderr.contains("NOT end-to-end encrypted"),
        "{}",
        sent.stderr
    );

    wait_until(
        Duration::from_secs(60),
        "the message in carol's Maildir",
        || !postfix.maildir().is_empty(),
    );
    let delivered = postfix.maildir().remove(0);
    let path = base.join("delivered.eml");
    std::fs::write(&path, &delivered).unwrap();
    let text = String::from_utf8_lossy(&delivered);
    assert!(
        text.contains("DKIM-Signature: v=1; a=rsa-sha256; s=cmtp; d=b.test;"),
        "{text}"
    );
    assert!(text.contains("Shall we have lunch on Friday?"), "{text}");

    // The DKIM record cmtpd init prints, verified by dkimpy.
    let init = Command::new(crate::support::cmtpd_path())
        .arg("--data-dir")
        .arg(&server.dir)
        .args(["-o", "json", "init", "--domain", "b.test"])
        .output()
        .unwrap();
    assert!(
        init.status.success(),
        "{}",
        String::from_utf8_lossy(&init.stderr)
    );
    let init: serde_json::Value = serde_json::from_slice(&init.stdout).unwrap();
    let record_line = init["dns_records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|l| l.as_str())
        .find(|l| l.starts_with("cmtp._domainkey.b.test."))
        .expect("the DKIM record")
        .to_owned();
    let record: String = record_line
        .split('"')
        .skip(1)
        .step_by(2)
        .collect::<Vec<_>>()
        .concat();
    let out = python(
        CHECK_DKIM_AND_REPLY,
        &[
            path.to_str().unwrap(),
            &record,
            PF_IP,
            &postfix.port.to_string(),
        ],
    );
    assert!(out.contains("dkim True"), "{out}");
    assert!(out.contains("subject Lunch?"), "{out}");
    assert!(
        out.contains("received-tls True"),
        "cmtpd used STARTTLS: {text}"
    );
    assert!(out.contains("replied"));

    // The reply comes back through Postfix and inbound SMTP.
    wait_until(
        Duration::from_secs(60),
        "the reply in alice's inbox",
        || {
            alice
                .cmd(&["-o", "json", "inbox"])
                .json()
                .as_array()
                .is_some_and(|a| a.iter().any(|m| m["subject"] == "Re: Lunch?"))
        },
    );
    let inbox = alice.cmd(&["-o", "json", "inbox"]).json();
    let reply = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subject"] == "Re: Lunch?")
        .unwrap();
    let id = reply["id"].as_u64().unwrap().to_string();
    let thread = alice.cmd(&["-o", "json", "thread", &id]).json();
    let subjects: Vec<&str> = thread
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["subject"].as_str())
        .collect();
    assert!(
        subjects.contains(&"Lunch?") && subjects.contains(&"Re: Lunch?"),
        "{thread}"
    );
    let read = alice.cmd(&["read", &id]).ok().to_owned();
    assert!(read.contains("Got it, thanks."), "{read}");
    assert!(read.contains("not end-to-end encrypted"), "{read}");

    // Consent per contact instead of --allow-smtp; a recipient Postfix
    // does not know: its 550 comes back as a signed delivery failure
    // notice, through the relay queue as for CMTP.
    alice.cmd(&["contact", "allow-smtp", "nobody@pf.test"]).ok();
    let listed = alice.cmd(&["contact", "list"]);
    assert!(listed.ok().contains("nobody@pf.test"), "{}", listed.stdout);
    let sent = alice.run(
        &["send", "--to", "nobody@pf.test", "--subject", "Anyone?"],
        b"Is anybody there?\n",
    );
    assert!(
        sent.ok().contains("sent to nobody@pf.test by SMTP"),
        "{}",
        sent.stdout
    );
    wait_until(
        Duration::from_secs(60),
        "the delivery failure notice in alice's inbox",
        || {
            alice
                .cmd(&["-o", "json", "inbox"])
                .json()
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|m| m["subject"] == "Undeliverable: nobody@pf.test")
                })
        },
    );
    let inbox = alice.cmd(&["-o", "json", "inbox"]).json();
    let notice = inbox
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["subject"] == "Undeliverable: nobody@pf.test")
        .unwrap();
    let id = notice["id"].as_u64().unwrap().to_string();
    let read = alice.cmd(&["read", &id]).ok().to_owned();
    assert!(read.contains("Reason: NOSUCHUSER"), "{read}");
    assert!(read.contains("SMTP: mx.pf.test"), "{read}");
    assert!(read.contains("550"), "Postfix's refusal: {read}");
    // Withdrawn consent: refused again.
    alice.cmd(&["contact", "deny-smtp", "nobody@pf.test"]).ok();
    let refused = alice.run(
        &["send", "--to", "nobody@pf.test", "--subject", "Again?"],
        b"Still nobody?\n",
    );
    assert_ne!(refused.code, 0, "{}", refused.stdout);
    assert!(
        refused.stderr.contains("--allow-smtp"),
        "{}",
        refused.stderr
    );
    let _ = password_file;
    let _: Option<Home> = None;
}
