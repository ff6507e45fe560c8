//! Discovery against an in-process authoritative DNS server
//! (`cmtp_testkit::dns::TestDns`): static routes, SRV, MX, implicit MX, key
//! fingerprint TXT records, error classes, and records changed mid-test.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use cmtp_client::discovery::{DEFAULT_PORT, Discovery, DiscoveryConfig, DiscoveryError, Target};
use cmtp_testkit::dns::{Blackhole, DnsMode, TestDns};
use rand::{SeedableRng as _, rngs::StdRng};

const DOMAIN: &str = "example.org";

fn config(ns: SocketAddr) -> DiscoveryConfig {
    DiscoveryConfig {
        nameservers: Some(vec![ns]),
        static_routes: HashMap::new(),
        timeout: Duration::from_secs(2),
        attempts: 1,
        cache: false,
    }
}

fn discovery(ns: SocketAddr) -> Discovery {
    Discovery::new(config(ns)).expect("discovery")
}

async fn dns() -> TestDns {
    let dns = TestDns::start().await.expect("dns");
    dns.add_zone(DOMAIN).await.expect("zone");
    dns
}

fn v4(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

fn addr(ip: impl Into<std::net::IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

fn hosts(targets: &[Target]) -> Vec<(&str, u16)> {
    targets.iter().map(|t| (t.host.as_str(), t.port)).collect()
}

#[tokio::test]
async fn srv_orders_by_priority_with_ports_and_addresses() {
    let dns = dns().await;
    dns.add_srv("_cmtp._tcp.example.org", 20, 5, 9200, "b.example.org")
        .await
        .unwrap();
    dns.add_srv("_cmtp._tcp.example.org", 10, 5, 9100, "a.example.org")
        .await
        .unwrap();
    dns.add_a("a.example.org", v4(1)).await.unwrap();
    dns.add_aaaa("a.example.org", Ipv6Addr::LOCALHOST)
        .await
        .unwrap();
    dns.add_a("b.example.org", v4(2)).await.unwrap();
    // MX and A exist too: SRV wins
    dns.add_mx(DOMAIN, 10, "mx.example.org").await.unwrap();
    dns.add_a("mx.example.org", v4(9)).await.unwrap();
    dns.add_a(DOMAIN, v4(10)).await.unwrap();

    let targets = discovery(dns.addr()).resolve(DOMAIN).await.unwrap();
    assert_eq!(
        targets,
        vec![
            Target {
                host: "a.example.org".into(),
                port: 9100,
                addrs: vec![addr(Ipv6Addr::LOCALHOST, 9100), addr(v4(1), 9100)],
            },
            Target {
                host: "b.example.org".into(),
                port: 9200,
                addrs: vec![addr(v4(2), 9200)],
            },
        ]
    );
}

#[tokio::test]
async fn srv_weights_are_honoured() {
    let dns = dns().await;
    dns.set_ttl(300); // this test wants the resolver cache, for speed
    for (weight, host) in [(0, "w0"), (1, "w1"), (3, "w3")] {
        dns.add_srv(
            "_cmtp._tcp.example.org",
            10,
            weight,
            9001,
            &format!("{host}.example.org"),
        )
        .await
        .unwrap();
    }
    dns.add_srv(
        "_cmtp._tcp.example.org",
        20,
        100,
        9001,
        "backup.example.org",
    )
    .await
    .unwrap();
    for (i, host) in ["w0", "w1", "w3", "backup"].iter().enumerate() {
        dns.add_a(&format!("{host}.example.org"), v4(i as u8 + 1))
            .await
            .unwrap();
    }
    let cached = Discovery::new(DiscoveryConfig {
        cache: true,
        ..config(dns.addr())
    })
    .unwrap();

    let mut rng = StdRng::seed_from_u64(2782);
    let mut first: HashMap<String, u32> = HashMap::new();
    let draws = 1000;
    for _ in 0..draws {
        let targets = cached.resolve_with_rng(DOMAIN, &mut rng).await.unwrap();
        let order: Vec<&str> = targets.iter().map(|t| t.host.as_str()).collect();
        assert_eq!(order.len(), 4);
        assert_eq!(order[3], "backup.example.org", "{order:?}");
        assert_eq!(order[2], "w0.example.org", "weight 0 goes last: {order:?}");
        *first.entry(order[0].to_owned()).or_default() += 1;
    }
    let w3 = f64::from(first["w3.example.org"]) / f64::from(draws);
    let w1 = f64::from(first["w1.example.org"]) / f64::from(draws);
    assert!((w3 - 0.75).abs() < 0.06, "{first:?}");
    assert!((w1 - 0.25).abs() < 0.06, "{first:?}");

    // the entropy-seeded default path obeys the same rules
    for _ in 0..100 {
        let targets = cached.resolve(DOMAIN).await.unwrap();
        assert_ne!(targets[0].host, "w0.example.org");
        assert_eq!(targets[3].host, "backup.example.org");
    }
}

#[tokio::test]
async fn srv_dot_means_no_service() {
    let dns = dns().await;
    dns.add_srv("_cmtp._tcp.example.org", 0, 0, 0, ".")
        .await
        .unwrap();
    dns.add_mx(DOMAIN, 10, "mx.example.org").await.unwrap();
    dns.add_a("mx.example.org", v4(1)).await.unwrap();

    let e = discovery(dns.addr()).resolve(DOMAIN).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoService { .. }), "{e:?}");
    assert!(e.is_permanent() && !e.is_transient());

    // a "." beside a real target is ignored
    dns.add_srv("_cmtp._tcp.example.org", 5, 0, 9300, "s.example.org")
        .await
        .unwrap();
    dns.add_a("s.example.org", v4(3)).await.unwrap();
    let targets = discovery(dns.addr()).resolve(DOMAIN).await.unwrap();
    assert_eq!(hosts(&targets), [("s.example.org", 9300)]);
}

#[tokio::test]
async fn mx_hosts_by_preference_on_the_default_port() {
    let dns = dns().await;
    dns.add_mx(DOMAIN, 20, "mx2.example.org").await.unwrap();
    dns.add_mx(DOMAIN, 10, "mx1.example.org").await.unwrap();
    dns.add_mx(DOMAIN, 30, "mx3.example.org").await.unwrap();
    dns.add_a("mx1.example.org", v4(1)).await.unwrap();
    dns.add_a("mx2.example.org", v4(2)).await.unwrap();
    dns.add_a("mx3.example.org", v4(3)).await.unwrap();
    dns.add_a(DOMAIN, v4(100)).await.unwrap();

    let targets = discovery(dns.addr()).resolve(DOMAIN).await.unwrap();
    assert_eq!(DEFAULT_PORT, 9001);
    assert_eq!(
        hosts(&targets),
        [
            ("mx1.example.org", 9001),
            ("mx2.example.org", 9001),
            ("mx3.example.org", 9001)
        ]
    );
    assert_eq!(targets[0].addrs, [addr(v4(1), 9001)]);
    assert!(
        targets
            .iter()
            .all(|t| !t.addrs.contains(&addr(v4(100), 9001)))
    );
}

#[tokio::test]
async fn mx_ties_are_shuffled() {
    let dns = dns().await;
    dns.add_mx(DOMAIN, 10, "p.example.org").await.unwrap();
    dns.add_mx(DOMAIN, 10, "q.example.org").await.unwrap();
    dns.add_a("p.example.org", v4(1)).await.unwrap();
    dns.add_a("q.example.org", v4(2)).await.unwrap();
    let d = discovery(dns.addr());
    let mut rng = StdRng::seed_from_u64(5321);
    let mut p_first = 0;
    for _ in 0..40 {
        let targets = d.resolve_with_rng(DOMAIN, &mut rng).await.unwrap();
        assert_eq!(targets.len(), 2);
        if targets[0].host == "p.example.org" {
            p_first += 1;
        }
    }
    assert!((5..=35).contains(&p_first), "{p_first}");
}

#[tokio::test]
async fn mx_present_means_the_domain_address_is_never_used() {
    let dns = dns().await;
    dns.add_mx(DOMAIN, 10, "gone.example.org").await.unwrap();
    dns.add_a(DOMAIN, v4(100)).await.unwrap();
    dns.add_aaaa(DOMAIN, Ipv6Addr::LOCALHOST).await.unwrap();

    let e = discovery(dns.addr()).resolve(DOMAIN).await.unwrap_err();
    match &e {
        DiscoveryError::NoAddresses { domain, hosts } => {
            assert_eq!(domain, DOMAIN);
            assert_eq!(hosts, &["gone.example.org".to_owned()]);
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_permanent());

    // a usable MX host beside an unusable one: only the usable one comes back
    dns.add_mx(DOMAIN, 20, "ok.example.org").await.unwrap();
    dns.add_a("ok.example.org", v4(7)).await.unwrap();
    let targets = discovery(dns.addr()).resolve(DOMAIN).await.unwrap();
    assert_eq!(hosts(&targets), [("ok.example.org", 9001)]);
}

#[tokio::test]
async fn null_mx_is_permanent() {
    let dns = dns().await;
    dns.add_null_mx(DOMAIN).await.unwrap();
    dns.add_a(DOMAIN, v4(1)).await.unwrap();
    let e = discovery(dns.addr()).resolve(DOMAIN).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NullMx { .. }), "{e:?}");
    assert!(e.is_permanent());
}

#[tokio::test]
async fn without_mx_the_domain_address_is_used() {
    let dns = dns().await;
    dns.add_a(DOMAIN, v4(5)).await.unwrap();
    dns.add_aaaa(DOMAIN, Ipv6Addr::LOCALHOST).await.unwrap();
    let targets = discovery(dns.addr()).resolve(DOMAIN).await.unwrap();
    assert_eq!(
        targets,
        [Target {
            host: DOMAIN.into(),
            port: 9001,
            addrs: vec![addr(Ipv6Addr::LOCALHOST, 9001), addr(v4(5), 9001)],
        }]
    );
}

#[tokio::test]
async fn nxdomain_and_no_records_are_permanent() {
    let dns = dns().await;
    let d = discovery(dns.addr());

    let e = d.resolve("nope.example.org").await.unwrap_err();
    assert!(
        matches!(e, DiscoveryError::NoSuchDomain { ref domain } if domain == "nope.example.org"),
        "{e:?}"
    );
    assert!(e.is_permanent());

    // exists (owns a TXT record) but names no server
    dns.add_txt("quiet.example.org", "hello").await.unwrap();
    let e = d.resolve("quiet.example.org").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoRecords { .. }), "{e:?}");
    assert!(e.is_permanent());
}

#[tokio::test]
async fn blackholed_nameserver_is_transient_and_quick() {
    let hole = Blackhole::start().await.unwrap();
    let d = Discovery::new(DiscoveryConfig {
        timeout: Duration::from_millis(200),
        attempts: 0,
        ..config(hole.addr())
    })
    .unwrap();
    let started = Instant::now();
    let e = d.resolve(DOMAIN).await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(e, DiscoveryError::Temporary { .. }), "{e:?}");
    assert!(e.is_transient() && !e.is_permanent());
    assert!(took < Duration::from_secs(2), "{took:?}");

    let e = d.key_fingerprints(DOMAIN).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    eprintln!("blackhole: {e} after {took:?}");
}

#[tokio::test]
async fn servfail_and_refused_are_transient() {
    let dns = dns().await;
    dns.add_mx(DOMAIN, 10, "mx.example.org").await.unwrap();
    dns.add_a("mx.example.org", v4(1)).await.unwrap();
    let d = discovery(dns.addr());
    for mode in [DnsMode::ServFail, DnsMode::Refuse] {
        dns.set_mode(mode);
        let e = d.resolve(DOMAIN).await.unwrap_err();
        assert!(e.is_transient(), "{mode:?}: {e:?}");
    }
    dns.set_mode(DnsMode::Serve);
    assert_eq!(d.resolve(DOMAIN).await.unwrap().len(), 1);
}

#[tokio::test]
async fn static_route_beats_dns() {
    let dns = dns().await;
    dns.add_srv("_cmtp._tcp.example.org", 10, 1, 9100, "a.example.org")
        .await
        .unwrap();
    dns.add_a("a.example.org", v4(1)).await.unwrap();
    dns.add_a("h.example.org", v4(8)).await.unwrap();

    let mut cfg = config(dns.addr());
    cfg.static_routes.insert(
        "example.org".into(),
        vec![
            ("127.0.0.9".into(), 7000),
            ("h.example.org".into(), 7001),
            ("[::1]".into(), 7002),
        ],
    );
    // static routes also cover domains that do not exist in DNS
    cfg.static_routes.insert(
        "Elsewhere.Example.".into(),
        vec![("127.0.0.3".into(), 7003)],
    );
    let d = Discovery::new(cfg).unwrap();

    let targets = d.resolve(DOMAIN).await.unwrap();
    assert_eq!(
        targets,
        [
            Target {
                host: "127.0.0.9".into(),
                port: 7000,
                addrs: vec![addr(v4(9), 7000)]
            },
            Target {
                host: "h.example.org".into(),
                port: 7001,
                addrs: vec![addr(v4(8), 7001)]
            },
            Target {
                host: "[::1]".into(),
                port: 7002,
                addrs: vec![addr(Ipv6Addr::LOCALHOST, 7002)]
            },
        ]
    );
    let targets = d.resolve("elsewhere.example").await.unwrap();
    assert_eq!(targets[0].addrs, [addr(v4(3), 7003)]);

    // with the nameserver failing, static routes to IP literals still work
    dns.set_mode(DnsMode::ServFail);
    assert_eq!(d.resolve("elsewhere.example").await.unwrap().len(), 1);
}

const FP1: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const FP2: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

fn fp(hex: &str) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex, &mut out).unwrap();
    out
}

#[tokio::test]
async fn key_fingerprint_txt_records() {
    let dns = dns().await;
    let d = discovery(dns.addr());
    let name = "_cmtpkey.example.org";

    // absent: the domain exists, the name does not
    dns.add_a(DOMAIN, v4(1)).await.unwrap();
    assert_eq!(
        d.key_fingerprints(DOMAIN).await.unwrap(),
        Vec::<[u8; 32]>::new()
    );
    // absent: the domain itself does not exist
    assert!(
        d.key_fingerprints("nope.example.org")
            .await
            .unwrap()
            .is_empty()
    );

    dns.add_txt(name, &format!("v=cmtp1; k=ed25519; fp={FP1}"))
        .await
        .unwrap();
    assert_eq!(d.key_fingerprints(DOMAIN).await.unwrap(), [fp(FP1)]);

    // several (rotation), odd spacing and order, unknown fields, and junk
    dns.add_txt(
        name,
        &format!("fp={FP2} ;v=cmtp1;  k=ed25519 ; note=rotating"),
    )
    .await
    .unwrap();
    dns.add_txt(name, "v=spf1 -all").await.unwrap();
    dns.add_txt(name, &format!("v=cmtp2; k=ed25519; fp={FP1}"))
        .await
        .unwrap();
    dns.add_txt(
        name,
        &format!("v=cmtp1; k=ed25519; fp={}", FP1.to_uppercase()),
    )
    .await
    .unwrap();
    dns.add_txt(name, "v=cmtp1; k=ed25519; fp=abcd")
        .await
        .unwrap();
    dns.add_txt(name, "v=cmtp1; k=x448; fp=00").await.unwrap();
    let mut got = d.key_fingerprints(DOMAIN).await.unwrap();
    got.sort();
    let mut want = vec![fp(FP1), fp(FP2)];
    want.sort();
    assert_eq!(got, want);

    // only malformed ones: empty
    dns.remove(name, hickory_resolver::proto::rr::RecordType::TXT)
        .await
        .unwrap();
    dns.add_txt(name, "v=cmtp1; k=ed25519").await.unwrap();
    assert!(d.key_fingerprints(DOMAIN).await.unwrap().is_empty());

    // a failing nameserver is a transient error, not "no record"
    dns.set_mode(DnsMode::ServFail);
    let e = d.key_fingerprints(DOMAIN).await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
}

#[tokio::test]
async fn records_changed_mid_test_are_seen() {
    let dns = dns().await;
    dns.set_ttl(3600); // long TTLs: only a disabled cache makes changes visible
    let d = discovery(dns.addr());

    let e = d.resolve(DOMAIN).await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoRecords { .. }), "{e:?}");

    dns.add_mx(DOMAIN, 10, "mx1.example.org").await.unwrap();
    dns.add_a("mx1.example.org", v4(1)).await.unwrap();
    assert_eq!(
        hosts(&d.resolve(DOMAIN).await.unwrap()),
        [("mx1.example.org", 9001)]
    );

    dns.remove(DOMAIN, hickory_resolver::proto::rr::RecordType::MX)
        .await
        .unwrap();
    dns.add_mx(DOMAIN, 10, "mx2.example.org").await.unwrap();
    dns.add_a("mx2.example.org", v4(2)).await.unwrap();
    assert_eq!(
        hosts(&d.resolve(DOMAIN).await.unwrap()),
        [("mx2.example.org", 9001)]
    );

    dns.clear("mx2.example.org").await.unwrap();
    dns.add_a("mx2.example.org", v4(22)).await.unwrap();
    assert_eq!(
        d.resolve(DOMAIN).await.unwrap()[0].addrs,
        [addr(v4(22), 9001)]
    );

    dns.add_srv("_cmtp._tcp.example.org", 1, 1, 9500, "mx1.example.org")
        .await
        .unwrap();
    assert_eq!(
        hosts(&d.resolve(DOMAIN).await.unwrap()),
        [("mx1.example.org", 9500)]
    );

    dns.clear("_cmtp._tcp.example.org").await.unwrap();
    assert_eq!(
        hosts(&d.resolve(DOMAIN).await.unwrap()),
        [("mx2.example.org", 9001)]
    );

    dns.clear(DOMAIN).await.unwrap();
    dns.add_null_mx(DOMAIN).await.unwrap();
    assert!(matches!(
        d.resolve(DOMAIN).await.unwrap_err(),
        DiscoveryError::NullMx { .. }
    ));

    let e = d.resolve("late.example.org").await.unwrap_err();
    assert!(matches!(e, DiscoveryError::NoSuchDomain { .. }), "{e:?}");
    dns.add_a("late.example.org", v4(4)).await.unwrap();
    assert_eq!(d.resolve("late.example.org").await.unwrap().len(), 1);

    dns.add_txt(
        "_cmtpkey.late.example.org",
        &format!("v=cmtp1; k=ed25519; fp={FP2}"),
    )
    .await
    .unwrap();
    assert_eq!(
        d.key_fingerprints("late.example.org").await.unwrap(),
        [fp(FP2)]
    );
}

/// The `_cmtpkey` TXT vectors of testdata/vectors/dns.hex (made by the
/// independent generator from PROTOCOL.md §14.2).
#[test]
fn txt_vectors_parse_as_the_spec_says() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../testdata/vectors/dns.hex"
    );
    let text = std::fs::read_to_string(path).unwrap();
    let get = |name: &str| -> Vec<u8> {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no vector {name}"));
        hex::decode(&line[name.len() + 2..]).unwrap()
    };
    let fp: [u8; 32] = get("fingerprint").try_into().unwrap();
    let server = cmtp_proto::crypto::IdentityKey::from_seed(&[1; 32]).public();
    assert_eq!(server.fingerprint(), fp);
    let txt = |name: &str| String::from_utf8(get(name)).unwrap();
    assert_eq!(cmtp_client::discovery::parse_key_txt(&txt("txt")), Some(fp));
    assert_eq!(
        cmtp_client::discovery::parse_key_txt(&txt("txt_reordered")),
        Some(fp)
    );
    assert_eq!(
        cmtp_client::discovery::parse_key_txt(&txt("txt_wrong_version")),
        None
    );
    // Every vector of the file is used above.
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(n, _)| n))
        .filter(|n| !n.starts_with('#'))
        .collect();
    assert_eq!(
        names,
        ["fingerprint", "txt", "txt_reordered", "txt_wrong_version"]
    );
}
