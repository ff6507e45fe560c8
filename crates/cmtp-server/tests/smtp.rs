//! The SMTP gateway's inbound side over real TCP, driven by real SMTP
//! clients: Python's smtplib (with STARTTLS) and swaks, and a message
//! DKIM-signed by dkimpy (PROTOCOL.md §19.1–§19.2). `scripts/test`
//! installs swaks and dkimpy when they are missing.

mod support;

use cmtp_testkit::tools::{need, need_dkimpy};
use std::net::SocketAddr;
use std::process::Command;

use cmtp_proto::content::open;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::message::Message;
use cmtp_smtp::arrival::{ATTACHMENT_NAME, Arrival};
use cmtp_store::{BlobReader, Store};
use cmtp_testkit::dns::TestDns;
use support::TestServer;

/// A phrase that must never be found on the server's disk.
const SECRET: &str = "the-plaintext-phrase-7d1c2e";

async fn gateway(tweak: impl FnOnce(&mut cmtp_server::config::Config)) -> (TestServer, SocketAddr) {
    let s = TestServer::start_with("b.test", |c| {
        c.smtp.listen = vec!["127.0.0.1:0".parse().unwrap()];
        c.smtp.max_message_size = 100_000;
        tweak(c);
    })
    .await;
    let smtp = s.server.as_ref().unwrap().smtp_addrs()[0];
    (s, smtp)
}

/// Runs a Python script with `args`; its stdout, or a panic with stderr.
async fn python(script: &str, args: &[String]) -> String {
    need("python3");
    let script = script.to_owned();
    let args = args.to_vec();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("python3")
            .arg("-c")
            .arg(script)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs swaks; (exit status success, its transcript).
async fn swaks(args: &[String]) -> (bool, String) {
    need("swaks");
    let args = args.to_vec();
    let out =
        tokio::task::spawn_blocking(move || Command::new("swaks").args(args).output().unwrap())
            .await
            .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every message of `account`, opened with `key`: (arrival record, the
/// RFC 5322 message, the subject).
async fn mailbox(
    s: &TestServer,
    account: &str,
    key: &IdentityKey,
) -> Vec<(Arrival, Vec<u8>, String)> {
    let sh = s.shared();
    let mut out = Vec::new();
    for e in sh.store.list_mailbox(account).await.unwrap() {
        let (_, blob) = sh
            .store
            .mailbox_message(account, e.id)
            .await
            .unwrap()
            .unwrap();
        let mut r = BlobReader::new(sh.store.clone(), blob);
        let mut bytes = Vec::new();
        while let Some(c) = r.next_chunk().await.unwrap() {
            bytes.extend_from_slice(&c);
        }
        let msg = Message::decode(&bytes, sh.limits()).unwrap();
        assert_eq!(msg.version, 1, "sealed");
        assert_eq!(msg.source.to_string(), "@b.test", "from the own server");
        // It never leaves the domain: no domain signature (PROTOCOL.md §7.3).
        assert_eq!(msg.trailer, [0; 64], "a zero trailer");
        let opened = open(&msg, Some(key)).unwrap();
        opened
            .verify_sender(&msg, &sh.key.public())
            .expect("signed by the server key");
        let arrival = Arrival::parse(&opened.content.text).unwrap();
        let eml = opened
            .content
            .attachments
            .iter()
            .find(|a| a.name == ATTACHMENT_NAME)
            .unwrap()
            .data
            .clone();
        out.push((arrival, eml, opened.content.subject.clone()));
    }
    out
}

/// Whether `needle` occurs in any file under `dir`.
fn on_disk(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                found.push(p);
            }
        }
    }
    found
}

const SMTPLIB_SEND: &str = r#"
import smtplib, ssl, sys
from email.message import EmailMessage
port, secret = int(sys.argv[1]), sys.argv[2]
m = EmailMessage()
m["From"] = "Carol <carol@pf.test>"
m["To"] = "bob@b.test"
m["Subject"] = "Quarterly report"
m.set_content("Hello Bob,\n" + secret + "\n")
m.add_attachment(b"%PDF-1.4 binary \x00\x01\x02", maintype="application", subtype="pdf", filename="report.pdf")
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.pf.test", timeout=10)
s.ehlo()
assert s.has_extn("starttls") and s.has_extn("pipelining") and s.has_extn("8bitmime"), s.esmtp_features
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo()
refused = s.send_message(m, from_addr="carol@pf.test", to_addrs=["bob@b.test", "robert@b.test"])
print("refused", refused)
print("tls", s.sock.version())
s.quit()
"#;

#[tokio::test]
async fn smtplib_mail_over_starttls_is_sealed_to_the_recipient_and_no_plaintext_is_on_disk() {
    let (s, smtp) = gateway(|_| {}).await;
    let bob = s.register("bob", "pw-bob").await;
    cmtp_server::admin::add_alias(
        &s.shared().store,
        &cmtp_proto::names::Account::parse("robert").unwrap(),
        &cmtp_proto::names::Account::parse("bob").unwrap(),
    )
    .await
    .unwrap();
    let out = python(SMTPLIB_SEND, &[smtp.port().to_string(), SECRET.into()]).await;
    assert!(out.contains("refused {}"), "{out}");
    assert!(out.contains("tls TLSv1.3"), "{out}");
    let mail = mailbox(&s, "bob", &bob).await;
    // bob and his alias robert: one mailbox, one copy.
    assert_eq!(mail.len(), 1, "one sealed copy");
    let (arrival, eml, subject) = &mail[0];
    assert_eq!(subject, "Quarterly report");
    assert_eq!(arrival.helo, "client.pf.test");
    assert_eq!(arrival.ip, "127.0.0.1");
    assert_eq!(arrival.mail_from, "carol@pf.test");
    assert_eq!(arrival.tls.as_deref(), Some("TLSv1.3"));
    let eml = String::from_utf8_lossy(eml);
    assert!(
        eml.starts_with("Received: from client.pf.test ([127.0.0.1])"),
        "{eml}"
    );
    assert!(eml.contains("Authentication-Results: b.test;"), "{eml}");
    assert!(eml.contains(SECRET));
    assert!(eml.contains("filename=\"report.pdf\""));
    // The store holds the sealed copy only: no plaintext anywhere on disk.
    drop(mail);
    let found = on_disk(s.dir.path(), SECRET.as_bytes());
    assert!(found.is_empty(), "plaintext found in {found:?}");
    let found = on_disk(s.dir.path(), b"Quarterly report");
    assert!(found.is_empty(), "the subject found in {found:?}");
}

const RAW_BARE_LF: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.pf.test", timeout=10)
s.ehlo()
s.mail("carol@pf.test")
s.rcpt("bob@b.test")
code, msg = s.docmd("DATA")
assert code == 354, (code, msg)
# smtplib.data() would turn the bare LF into CR LF: send raw bytes.
s.send(b"Subject: smuggle\r\n\r\nhello\n.\r\nMAIL FROM:<evil@pf.test>\r\nRCPT TO:<bob@b.test>\r\nDATA\r\nSmuggled\r\n.\r\n")
code, msg = s.getreply()
print(code, msg.decode())
try:
    print("after", s.noop())
except smtplib.SMTPServerDisconnected:
    print("closed")
"#;

#[tokio::test]
async fn a_bare_lf_in_data_is_refused_and_nothing_is_smuggled() {
    let (s, smtp) = gateway(|_| {}).await;
    let bob = s.register("bob", "pw-bob").await;
    let out = python(RAW_BARE_LF, &[smtp.port().to_string()]).await;
    assert!(out.starts_with("550 5.5.2"), "{out}");
    assert!(out.contains("closed"), "{out}");
    assert!(mailbox(&s, "bob", &bob).await.is_empty());
}

const SIZE_AND_PIPELINING: &str = r#"
import smtplib, sys
s = smtplib.SMTP("127.0.0.1", int(sys.argv[1]), local_hostname="client.pf.test", timeout=10)
s.ehlo()
print("size", s.esmtp_features.get("size"))
print("mail", s.mail("carol@pf.test", ["SIZE=100001"]))
print("mail-ok", s.mail("carol@pf.test", ["SIZE=1000"]))
s.quit()
"#;

#[tokio::test]
async fn an_oversized_message_is_refused_at_mail_from() {
    let (_s, smtp) = gateway(|_| {}).await;
    let out = python(SIZE_AND_PIPELINING, &[smtp.port().to_string()]).await;
    assert!(out.contains("size 100000"), "{out}");
    assert!(
        out.contains("mail (552, b'5.3.4 Message size exceeds fixed limit of 100000 bytes')"),
        "{out}"
    );
    assert!(out.contains("mail-ok (250, b'2.1.0 Ok')"), "{out}");
}

#[tokio::test]
async fn swaks_unknown_recipient_is_refused_at_rcpt() {
    let (s, smtp) = gateway(|_| {}).await;
    s.register("bob", "pw-bob").await;
    let (ok, t) = swaks(&[
        "--server".into(),
        smtp.to_string(),
        "--from".into(),
        "carol@pf.test".into(),
        "--to".into(),
        "nobody@b.test".into(),
        "--helo".into(),
        "client.pf.test".into(),
    ])
    .await;
    assert!(!ok, "{t}");
    assert!(
        t.contains("<** 550 5.1.1 <nobody@b.test>: no such user here"),
        "{t}"
    );
}

#[tokio::test]
async fn swaks_relay_attempt_is_refused() {
    let (s, smtp) = gateway(|_| {}).await;
    s.register("bob", "pw-bob").await;
    let (ok, t) = swaks(&[
        "--server".into(),
        smtp.to_string(),
        "--from".into(),
        "bob@b.test".into(),
        "--to".into(),
        "victim@elsewhere.test".into(),
        "--helo".into(),
        "client.pf.test".into(),
    ])
    .await;
    assert!(!ok, "{t}");
    assert!(
        t.contains("<** 550 5.7.1 <victim@elsewhere.test>: relay access denied"),
        "{t}"
    );
    assert!(
        s.shared().store.list_queue().await.unwrap().is_empty(),
        "nothing queued"
    );
}

#[tokio::test]
async fn swaks_pipelined_transaction_over_starttls_is_delivered() {
    let (s, smtp) = gateway(|_| {}).await;
    let bob = s.register("bob", "pw-bob").await;
    let (ok, t) = swaks(&[
        "--server".into(),
        smtp.to_string(),
        "--from".into(),
        "carol@pf.test".into(),
        "--to".into(),
        "bob@b.test".into(),
        "--helo".into(),
        "client.pf.test".into(),
        "--pipeline".into(),
        "--tls".into(),
        "--header".into(),
        "Subject: pipelined".into(),
        "--body".into(),
        SECRET.into(),
    ])
    .await;
    assert!(ok, "{t}");
    assert!(t.contains("<~  250 2.0.0 Ok: queued as"), "{t}");
    let mail = mailbox(&s, "bob", &bob).await;
    assert_eq!(mail.len(), 1);
    assert_eq!(mail[0].2, "pipelined");
    assert!(String::from_utf8_lossy(&mail[0].1).contains(SECRET));
}

const DKIM_SIGN_AND_SEND: &str = r#"
import dkim, smtplib, sys
port, key = int(sys.argv[1]), open(sys.argv[2], "rb").read()
msg = (b"From: Carol <carol@pf.test>\r\nTo: bob@b.test\r\nSubject: signed\r\n"
       b"Message-ID: <s1@pf.test>\r\n\r\nSigned by pf.test.\r\n")
sig = dkim.sign(msg, b"sel", b"pf.test", key, include_headers=[b"from", b"to", b"subject", b"message-id"])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.pf.test", timeout=10)
s.sendmail("carol@pf.test", ["bob@b.test"], sig + msg)
s.quit()
print("sent")
"#;

#[tokio::test]
async fn a_dkim_signature_by_dkimpy_verifies_and_the_verdict_is_sealed_with_the_message() {
    need_dkimpy();
    // pf.test publishes its DKIM key (made here, signing done by dkimpy).
    let dir = tempfile::tempdir().unwrap();
    let key_path = dir.path().join("pf.key");
    let record = cmtp_server::smtp::dkim::ensure_key(&key_path).unwrap();
    let dns = TestDns::start().await.unwrap();
    // The parent zone too: DMARC's tree walk (RFC 9989) asks _dmarc.test,
    // which must be NXDOMAIN, as on the internet.
    dns.add_zone("test").await.unwrap();
    dns.add_zone("pf.test").await.unwrap();
    dns.add_txt("sel._domainkey.pf.test", &record)
        .await
        .unwrap();
    dns.add_txt("pf.test", "v=spf1 ip4:127.0.0.1 -all")
        .await
        .unwrap();
    dns.add_txt("_dmarc.pf.test", "v=DMARC1; p=reject")
        .await
        .unwrap();
    let (s, smtp) = gateway(|c| {
        c.dns.nameservers = vec![dns.addr()];
        c.dns.timeout_ms = 2000;
    })
    .await;
    let bob = s.register("bob", "pw-bob").await;
    let out = python(
        DKIM_SIGN_AND_SEND,
        &[smtp.port().to_string(), key_path.display().to_string()],
    )
    .await;
    assert!(out.contains("sent"));
    let mail = mailbox(&s, "bob", &bob).await;
    let (arrival, eml, _) = &mail[0];
    assert_eq!(arrival.dkim.len(), 1, "{arrival:?}");
    assert!(arrival.dkim[0].is_pass(), "{arrival:?}");
    assert_eq!(arrival.dkim[0].domain.as_deref(), Some("pf.test"));
    assert_eq!(arrival.spf.result, "pass", "{arrival:?}");
    assert_eq!(arrival.dmarc.result, "pass", "{arrival:?}");
    assert!(arrival.summary().contains("DKIM pass for pf.test"));
    assert!(
        String::from_utf8_lossy(eml).contains("dkim=pass"),
        "{}",
        String::from_utf8_lossy(eml)
    );
}

/// Three messages in one session to an alias, then a second connection
/// while the first is open: (the replies to each MAIL FROM, the second
/// connection's greeting).
const ALIAS_RATE_AND_SLOTS: &str = r#"
import smtplib, socket, sys
port = int(sys.argv[1])
s = smtplib.SMTP("127.0.0.1", port, local_hostname="client.pf.test", timeout=10)
for i in range(3):
    try:
        s.sendmail("carol@pf.test", ["robert@b.test"],
                   f"From: carol@pf.test\r\nTo: robert@b.test\r\nSubject: m{i}\r\n\r\nhello {i}\r\n")
        print(f"m{i} accepted")
    except smtplib.SMTPSenderRefused as e:
        print(f"m{i} refused {e.smtp_code} {e.smtp_error.decode()}")
second = socket.create_connection(("127.0.0.1", port), timeout=10)
print("second:", second.makefile("rb").readline().decode().strip())
second.close()
s.quit()
"#;

#[tokio::test]
async fn an_alias_reaches_its_account_and_the_peer_limits_of_cmtp_hold_for_smtp() {
    let (s, smtp) = gateway(|c| {
        c.smtp.messages_per_minute = 1;
        c.smtp.message_burst = 2;
        c.connections.max_per_peer = 1;
    })
    .await;
    let bob = s.register("bob", "pw-bob").await;
    cmtp_server::admin::add_alias(
        &s.shared().store,
        &cmtp_proto::names::Account::parse("robert").unwrap(),
        &cmtp_proto::names::Account::parse("bob").unwrap(),
    )
    .await
    .unwrap();
    let out = python(ALIAS_RATE_AND_SLOTS, &[smtp.port().to_string()]).await;
    assert!(out.contains("m0 accepted\nm1 accepted\n"), "{out}");
    assert!(
        out.contains("m2 refused 450 4.7.1 too much mail from your network"),
        "{out}"
    );
    assert!(
        out.contains("second: 421 4.7.0 b.test too many connections from your network"),
        "the one slot per peer is taken: {out}"
    );
    let mail = mailbox(&s, "bob", &bob).await;
    let mut subjects: Vec<_> = mail.iter().map(|m| m.2.clone()).collect();
    subjects.sort();
    assert_eq!(subjects, ["m0", "m1"]);
    assert!(
        mail.iter().all(|m| m.0.rcpt_to == "robert@b.test"),
        "the address as written"
    );
}

/// Where a real CMTP server listens on the CMTP port for the MX-host step
/// of the discovery order (a loopback address of its own, so that port
/// 9001 is free there).
const CMTP_MX_IP: [u8; 4] = [127, 0, 0, 93];
/// An MX host address with nothing listening on port 9001.
const SMTP_MX_IP: [u8; 4] = [127, 0, 0, 94];

#[tokio::test]
async fn the_discovery_order_is_cmtp_srv_then_cmtp_on_the_mx_hosts_then_smtp() {
    use cmtp_server::smtp::outbound::{Service, ServiceError, service};
    // A real CMTP server on an MX host's port 9001.
    let mx_cmtp = TestServer::start_with("mxc.test", |c| {
        c.listen = vec![SocketAddr::from((CMTP_MX_IP, 9001))];
    })
    .await;
    let dns = TestDns::start().await.unwrap();
    dns.add_zone("test").await.unwrap();
    for zone in ["srv.test", "mxc.test", "dot.test", "smtp.test", "null.test"] {
        dns.add_zone(zone).await.unwrap();
    }
    // 1. SRV with a real target: CMTP, the MX records are not even asked.
    dns.add_srv("_cmtp._tcp.srv.test", 10, 10, 9001, "cmtp.srv.test")
        .await
        .unwrap();
    dns.add_mx("srv.test", 10, "mx.smtp.test").await.unwrap();
    // 2. No SRV, an MX host that greets with the CMTP banner on 9001: CMTP.
    dns.add_mx("mxc.test", 10, "mx.mxc.test").await.unwrap();
    dns.add_a("mx.mxc.test", CMTP_MX_IP.into()).await.unwrap();
    // The same MX host, but SRV "." says "no CMTP service": SMTP.
    dns.add_srv("_cmtp._tcp.dot.test", 0, 0, 0, ".")
        .await
        .unwrap();
    dns.add_mx("dot.test", 10, "mx.mxc.test").await.unwrap();
    // 3. MX hosts where nothing speaks CMTP: SMTP to them, by preference.
    dns.add_mx("smtp.test", 20, "mx2.smtp.test").await.unwrap();
    dns.add_mx("smtp.test", 10, "mx.smtp.test").await.unwrap();
    dns.add_a("mx.smtp.test", SMTP_MX_IP.into()).await.unwrap();
    dns.add_a("mx2.smtp.test", SMTP_MX_IP.into()).await.unwrap();
    // No mail at all: a null MX, a name that does not exist.
    dns.add_null_mx("null.test").await.unwrap();

    let (s, _) = gateway(|c| {
        c.dns.nameservers = vec![dns.addr()];
        c.dns.timeout_ms = 2000;
        c.dns.allow_private = [
            "srv.test",
            "mxc.test",
            "dot.test",
            "smtp.test",
            "null.test",
            "gone.test",
        ]
        .map(String::from)
        .to_vec();
    })
    .await;
    let sh = s.shared();
    assert!(matches!(service(sh, "srv.test").await, Ok(Service::Cmtp)));
    assert!(matches!(service(sh, "mxc.test").await, Ok(Service::Cmtp)));
    match service(sh, "dot.test").await {
        Ok(Service::SmtpOnly(hosts)) => assert_eq!(hosts[0].name, "mx.mxc.test"),
        other => panic!("SRV \".\" is no CMTP service: {other:?}"),
    }
    match service(sh, "smtp.test").await {
        Ok(Service::SmtpOnly(hosts)) => {
            let names: Vec<_> = hosts.iter().map(|h| h.name.as_str()).collect();
            assert_eq!(names, ["mx.smtp.test", "mx2.smtp.test"], "by preference");
            assert_eq!(hosts[0].addrs, [std::net::IpAddr::from(SMTP_MX_IP)]);
        }
        other => panic!("no CMTP on the MX hosts: {other:?}"),
    }
    assert!(
        matches!(service(sh, "null.test").await, Err(ServiceError::Permanent(e)) if e.contains("null MX")),
    );
    assert!(
        matches!(service(sh, "gone.test").await, Err(ServiceError::Permanent(e)) if e.contains("NXDOMAIN")),
    );
    drop(mx_cmtp);
}
