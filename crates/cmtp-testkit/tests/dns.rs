//! The test DNS server serves each record type, changes records while
//! running, tells NXDOMAIN from no data, and fails on demand.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::{Duration, Instant},
};

use cmtp_testkit::dns::{Blackhole, DnsMode, TestDns};
use hickory_resolver::{
    TokioResolver,
    config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts},
    net::{DnsError, NetError, runtime::TokioRuntimeProvider},
    proto::{
        op::ResponseCode,
        rr::{RData, RecordType},
    },
};

/// A resolver that asks only `server`, caches nothing, over UDP (or TCP
/// only when `tcp_only`).
fn resolver(server: SocketAddr, tcp_only: bool, timeout: Duration) -> TokioResolver {
    let mut udp = ConnectionConfig::udp();
    udp.port = server.port();
    let mut tcp = ConnectionConfig::tcp();
    tcp.port = server.port();
    let connections = if tcp_only { vec![tcp] } else { vec![udp, tcp] };
    let ns = NameServerConfig::new(server.ip(), true, connections);
    let mut opts = ResolverOpts::default();
    opts.cache_size = 0;
    opts.positive_max_ttl = Some(Duration::ZERO);
    opts.negative_max_ttl = Some(Duration::ZERO);
    opts.timeout = timeout;
    opts.attempts = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, vec![], vec![ns]),
        TokioRuntimeProvider::default(),
    )
    .with_options(opts)
    .build()
    .expect("resolver")
}

async fn rdatas(r: &TokioResolver, name: &str, rt: RecordType) -> Result<Vec<RData>, NetError> {
    let lookup = r.lookup(name, rt).await?;
    Ok(lookup
        .answers()
        .iter()
        .filter(|rec| rec.record_type() == rt)
        .map(|rec| rec.data.clone())
        .collect())
}

async fn example_zone() -> TestDns {
    let dns = TestDns::start().await.expect("start");
    dns.add_zone("example.org").await.expect("zone");
    dns
}

#[tokio::test]
async fn serves_every_record_type_over_udp_and_tcp() {
    let started = Instant::now();
    let dns = example_zone().await;
    assert_eq!(dns.addr().ip(), Ipv4Addr::LOCALHOST);
    assert_ne!(dns.addr().port(), 0);

    dns.add_srv("_cmtp._tcp.example.org", 10, 60, 9100, "a.example.org")
        .await
        .unwrap();
    dns.add_srv("_cmtp._tcp.example.org.", 20, 0, 9200, "b.example.org.")
        .await
        .unwrap();
    dns.add_mx("example.org", 10, "mx1.example.org")
        .await
        .unwrap();
    dns.add_mx("example.org", 20, "mx2.example.org")
        .await
        .unwrap();
    dns.add_null_mx("nomail.example.org").await.unwrap();
    dns.add_a("a.example.org", Ipv4Addr::new(127, 0, 0, 7))
        .await
        .unwrap();
    dns.add_aaaa("a.example.org", Ipv6Addr::LOCALHOST)
        .await
        .unwrap();
    dns.add_txt("_cmtpkey.example.org", "v=cmtp1; k=ed25519; fp=00")
        .await
        .unwrap();
    let long = "x".repeat(600);
    dns.add_txt("long.example.org", &long).await.unwrap();

    for tcp_only in [false, true] {
        let r = resolver(dns.addr(), tcp_only, Duration::from_secs(2));

        let srv = rdatas(&r, "_cmtp._tcp.example.org.", RecordType::SRV)
            .await
            .unwrap();
        let mut srv: Vec<(u16, u16, u16, String)> = srv
            .into_iter()
            .map(|d| match d {
                RData::SRV(s) => (s.priority, s.weight, s.port, s.target.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        srv.sort();
        assert_eq!(
            srv,
            vec![
                (10, 60, 9100, "a.example.org.".to_owned()),
                (20, 0, 9200, "b.example.org.".to_owned())
            ]
        );

        let mut mx: Vec<(u16, String)> = rdatas(&r, "example.org.", RecordType::MX)
            .await
            .unwrap()
            .into_iter()
            .map(|d| match d {
                RData::MX(m) => (m.preference, m.exchange.to_ascii()),
                other => panic!("{other:?}"),
            })
            .collect();
        mx.sort();
        assert_eq!(
            mx,
            vec![
                (10, "mx1.example.org.".to_owned()),
                (20, "mx2.example.org.".to_owned())
            ]
        );

        let null = rdatas(&r, "nomail.example.org.", RecordType::MX)
            .await
            .unwrap();
        match null.as_slice() {
            [RData::MX(m)] => {
                assert_eq!(m.preference, 0);
                assert!(m.exchange.is_root());
            }
            other => panic!("{other:?}"),
        }

        let a = rdatas(&r, "a.example.org.", RecordType::A).await.unwrap();
        assert!(matches!(a.as_slice(), [RData::A(a)] if a.0 == Ipv4Addr::new(127, 0, 0, 7)));
        let aaaa = rdatas(&r, "a.example.org.", RecordType::AAAA)
            .await
            .unwrap();
        assert!(matches!(aaaa.as_slice(), [RData::AAAA(a)] if a.0 == Ipv6Addr::LOCALHOST));

        let txt = rdatas(&r, "_cmtpkey.example.org.", RecordType::TXT)
            .await
            .unwrap();
        match txt.as_slice() {
            [RData::TXT(t)] => assert_eq!(&*t.txt_data[0], b"v=cmtp1; k=ed25519; fp=00"),
            other => panic!("{other:?}"),
        }
        let txt = rdatas(&r, "long.example.org.", RecordType::TXT)
            .await
            .unwrap();
        match txt.as_slice() {
            [RData::TXT(t)] => {
                assert_eq!(t.txt_data.len(), 3);
                let joined: Vec<u8> = t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                assert_eq!(joined, long.as_bytes());
            }
            other => panic!("{other:?}"),
        }
    }
    eprintln!("DNS record-type test took {:?}", started.elapsed());
}

#[tokio::test]
async fn nxdomain_nodata_and_refused_are_told_apart() {
    let dns = example_zone().await;
    dns.add_srv("_cmtp._tcp.example.org", 0, 0, 1, "h.example.org")
        .await
        .unwrap();
    dns.add_a("example.org", Ipv4Addr::LOCALHOST).await.unwrap();
    let r = resolver(dns.addr(), false, Duration::from_secs(2));

    // owns an A record, no MX: NOERROR, no data
    let e = rdatas(&r, "example.org.", RecordType::MX)
        .await
        .unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
    // empty non-terminal: exists
    let e = rdatas(&r, "_tcp.example.org.", RecordType::TXT)
        .await
        .unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");
    // owns nothing: NXDOMAIN
    let e = rdatas(&r, "nope.example.org.", RecordType::A)
        .await
        .unwrap_err();
    assert!(e.is_nx_domain(), "{e:?}");
    // outside every zone: REFUSED (not NXDOMAIN)
    let e = rdatas(&r, "example.net.", RecordType::A).await.unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn records_change_while_running() {
    let dns = example_zone().await;
    let r = resolver(dns.addr(), false, Duration::from_secs(2));
    let name = "h.example.org.";

    assert!(
        rdatas(&r, name, RecordType::A)
            .await
            .unwrap_err()
            .is_nx_domain()
    );
    dns.add_a(name, Ipv4Addr::new(127, 0, 0, 1)).await.unwrap();
    dns.add_a(name, Ipv4Addr::new(127, 0, 0, 2)).await.unwrap();
    dns.add_a(name, Ipv4Addr::new(127, 0, 0, 2)).await.unwrap(); // no duplicate
    assert_eq!(rdatas(&r, name, RecordType::A).await.unwrap().len(), 2);

    dns.add_txt(name, "hello").await.unwrap();
    assert!(dns.remove(name, RecordType::A).await.unwrap());
    assert!(!dns.remove(name, RecordType::A).await.unwrap());
    let e = rdatas(&r, name, RecordType::A).await.unwrap_err();
    assert!(e.is_no_records_found() && !e.is_nx_domain(), "{e:?}");

    assert_eq!(dns.clear(name).await.unwrap(), 1);
    assert!(
        rdatas(&r, name, RecordType::TXT)
            .await
            .unwrap_err()
            .is_nx_domain()
    );

    // a zone added while running is served; a name outside all zones is refused by the API
    assert!(
        dns.add_a("x.example.net", Ipv4Addr::LOCALHOST)
            .await
            .is_err()
    );
    dns.add_zone("example.net").await.unwrap();
    dns.add_a("x.example.net", Ipv4Addr::LOCALHOST)
        .await
        .unwrap();
    assert_eq!(
        rdatas(&r, "x.example.net.", RecordType::A)
            .await
            .unwrap()
            .len(),
        1
    );
    // the most specific zone takes the record
    dns.add_zone("sub.example.org").await.unwrap();
    dns.add_a("h.sub.example.org", Ipv4Addr::LOCALHOST)
        .await
        .unwrap();
    assert_eq!(
        rdatas(&r, "h.sub.example.org.", RecordType::A)
            .await
            .unwrap()
            .len(),
        1
    );
    dns.remove_zone("example.net").await.unwrap();
    let e = rdatas(&r, "x.example.net.", RecordType::A)
        .await
        .unwrap_err();
    assert!(!e.is_no_records_found(), "{e:?}");
}

#[tokio::test]
async fn servfail_and_refuse_modes() {
    let dns = example_zone().await;
    dns.add_a("example.org", Ipv4Addr::LOCALHOST).await.unwrap();
    let r = resolver(dns.addr(), false, Duration::from_secs(2));

    dns.set_mode(DnsMode::ServFail);
    assert_eq!(dns.mode(), DnsMode::ServFail);
    let e = rdatas(&r, "example.org.", RecordType::A).await.unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::ServFail))
        ),
        "{e:?}"
    );

    dns.set_mode(DnsMode::Refuse);
    let e = rdatas(&r, "example.org.", RecordType::A).await.unwrap_err();
    assert!(
        matches!(
            e,
            NetError::Dns(DnsError::ResponseCode(ResponseCode::Refused))
        ),
        "{e:?}"
    );

    dns.set_mode(DnsMode::Serve);
    assert_eq!(
        rdatas(&r, "example.org.", RecordType::A)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn blackhole_never_answers() {
    let hole = Blackhole::start().await.unwrap();
    assert_eq!(hole.addr().ip(), Ipv4Addr::LOCALHOST);
    for tcp_only in [false, true] {
        let r = resolver(hole.addr(), tcp_only, Duration::from_millis(200));
        let started = Instant::now();
        let e = rdatas(&r, "example.org.", RecordType::A).await.unwrap_err();
        let took = started.elapsed();
        assert!(!e.is_no_records_found(), "{e:?}");
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(3), "{took:?}");
        eprintln!("blackhole (tcp_only={tcp_only}): {e} after {took:?}");
    }
}

#[test]
fn handles_are_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<TestDns>();
    assert_send_sync::<Blackhole>();
    assert_send_sync::<cmtp_testkit::postgres::PgCluster>();
}
