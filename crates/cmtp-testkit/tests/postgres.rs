//! A throwaway PostgreSQL cluster starts, accepts connections, and is gone
//! after drop. Skips (with a reason) where PostgreSQL is not installed,
//! unless CMTP_REQUIRE_POSTGRES=1.

use std::{
    net::TcpStream,
    time::{Duration, Instant},
};

use cmtp_testkit::postgres::{PgCluster, pg_or_skip};

#[test]
fn cluster_starts_serves_and_is_removed() {
    let started = Instant::now();
    let Some(pg) = pg_or_skip() else { return };
    let start_time = started.elapsed();

    assert_eq!(pg.host(), "127.0.0.1");
    assert_eq!(
        pg.url(),
        format!("postgres://postgres@127.0.0.1:{}/cmtp", pg.port())
    );
    TcpStream::connect_timeout(
        &format!("127.0.0.1:{}", pg.port()).parse().unwrap(),
        Duration::from_secs(5),
    )
    .expect("the cluster accepts TCP connections");

    assert_eq!(pg.psql("SELECT current_database()").unwrap(), "cmtp");
    assert_eq!(pg.psql("SHOW fsync").unwrap(), "on");
    assert_eq!(pg.psql("SHOW listen_addresses").unwrap(), "127.0.0.1");
    pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (41), (1)")
        .unwrap();
    assert_eq!(pg.psql("SELECT sum(x) FROM t").unwrap(), "42");

    let other = pg.create_database("second").unwrap();
    assert!(other.ends_with("/second"), "{other}");
    assert!(pg.create_database("bad name; drop").is_err());

    let dir = pg.dir().to_owned();
    let port = pg.port();
    assert!(dir.join("data").join("PG_VERSION").is_file());
    let dropped = Instant::now();
    drop(pg);
    let drop_time = dropped.elapsed();
    assert!(!dir.exists(), "{} still exists", dir.display());
    assert!(
        TcpStream::connect_timeout(
            &format!("127.0.0.1:{port}").parse().unwrap(),
            Duration::from_secs(1)
        )
        .is_err(),
        "the cluster still listens after drop"
    );
    eprintln!("PostgreSQL cluster: start {start_time:?}, stop and remove {drop_time:?}");
}

#[test]
fn two_clusters_run_side_by_side() {
    if PgCluster::availability().is_err() {
        let _ = pg_or_skip(); // prints the reason, or panics when required
        return;
    }
    let a = PgCluster::start().unwrap();
    let b = PgCluster::start().unwrap();
    assert_ne!(a.port(), b.port());
    assert_ne!(a.dir(), b.dir());
    a.psql("CREATE TABLE only_in_a (x int)").unwrap();
    assert_eq!(
        b.psql("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'")
            .unwrap(),
        "0"
    );
}

#[test]
fn availability_explains_itself() {
    match PgCluster::availability() {
        Ok(()) => {}
        Err(reason) => assert!(!reason.is_empty()),
    }
}
