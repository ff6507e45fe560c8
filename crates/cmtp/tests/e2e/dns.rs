//! Finding the server through DNS (SRV) and checking its key against the
//! `_cmtpkey` TXT record on first use, with an in-process DNS server.

use crate::support::{Home, Server, free_port, password_file, tempdir};
use cmtp_testkit::dns::TestDns;

/// A home whose config.toml only names the test nameserver.
fn home_with_dns(dir: std::path::PathBuf, dns: std::net::SocketAddr) -> Home {
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("config.toml"),
        format!("[dns]\nnameservers = [\"{dns}\"]\ntimeout_ms = 2000\n"),
    )
    .unwrap();
    Home::new(dir)
}

#[test]
fn the_server_is_found_by_srv_and_checked_against_the_txt_record() {
    let tmp = tempdir();
    let base = tmp.path();
    let port = free_port();
    let server = Server::start(base, "d.test", port, &[]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(async {
        let dns = TestDns::start().await.unwrap();
        dns.add_zone("d.test").await.unwrap();
        dns.add_srv("_cmtp._tcp.d.test", 10, 10, port, "cmtp.d.test")
            .await
            .unwrap();
        dns.add_a("cmtp.d.test", "127.0.0.1".parse().unwrap())
            .await
            .unwrap();
        dns
    });
    let pw = password_file(base, "erin", "erin's password");
    let first = home_with_dns(base.join("erin-1"), dns.addr());
    let v = first
        .cmd(&[
            "-o",
            "json",
            "register",
            "erin@d.test",
            "--invite",
            &server.invite("erin"),
            "--password-file",
            &pw,
        ])
        .json();
    let fp = v["server_fingerprint"].as_str().unwrap().to_owned();
    // No `server` was saved: DNS is used every time.
    let config = std::fs::read_to_string(first.dir.join("config.toml")).unwrap();
    assert!(!config.contains("server ="), "{config}");
    first.cmd(&["inbox"]).ok();

    // With a matching TXT record a new device pins the key.
    rt.block_on(dns.add_txt("_cmtpkey.d.test", &format!("v=cmtp1; k=ed25519; fp={fp}")))
        .unwrap();
    let second = home_with_dns(base.join("erin-2"), dns.addr());
    second
        .cmd(&["login", "erin@d.test", "--password-file", &pw])
        .ok();

    // A TXT record that names another key makes a new device refuse.
    rt.block_on(async {
        dns.clear("_cmtpkey.d.test").await.unwrap();
        dns.add_txt(
            "_cmtpkey.d.test",
            &format!("v=cmtp1; k=ed25519; fp={}", "ab".repeat(32)),
        )
        .await
        .unwrap();
    });
    let third = home_with_dns(base.join("erin-3"), dns.addr());
    third
        .cmd(&["login", "erin@d.test", "--password-file", &pw])
        .fails(5, "does not match its _cmtpkey DNS record");
    assert!(!third.dir.join("identity.key").exists());
    // A device that pinned the key already keeps working.
    second.cmd(&["inbox"]).ok();
}

/// Issue 10, contradiction 6: a recipient domain whose key contradicts its
/// `_cmtpkey` record is a verification failure (exit 5), not "not found".
#[test]
fn sending_to_a_domain_whose_key_contradicts_its_dns_record_fails_verification() {
    let tmp = tempdir();
    let base = tmp.path();
    let (pa, pb) = (free_port(), free_port());
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dns = rt.block_on(async {
        let dns = TestDns::start().await.unwrap();
        for (d, p) in [("a.test", pa), ("b.test", pb)] {
            dns.add_zone(d).await.unwrap();
            dns.add_srv(&format!("_cmtp._tcp.{d}"), 10, 10, p, &format!("cmtp.{d}"))
                .await
                .unwrap();
            dns.add_a(&format!("cmtp.{d}"), "127.0.0.1".parse().unwrap())
                .await
                .unwrap();
        }
        // b.test publishes a fingerprint that is not its key.
        dns.add_txt(
            "_cmtpkey.b.test",
            &format!("v=cmtp1; k=ed25519; fp={}", "ab".repeat(32)),
        )
        .await
        .unwrap();
        dns
    });
    let resolver = format!(
        "\n[dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\nallow_private = [\"a.test\", \"b.test\"]\n",
        dns.addr()
    );
    let a = Server::start_with(base, "a.test", pa, &[], &resolver);
    let _b = Server::start_with(base, "b.test", pb, &[], &resolver);
    let pw = password_file(base, "alice", "alice's password");
    let alice = Home::new(base.join("alice"));
    alice
        .cmd(&[
            "--server",
            &a.addr(),
            "register",
            "alice@a.test",
            "--invite",
            &a.invite("alice"),
            "--password-file",
            &pw,
        ])
        .ok();
    alice
        .run(&["send", "--to", "bob@b.test", "--subject", "hi"], b"hello")
        .fails(5, "_cmtpkey");
}
