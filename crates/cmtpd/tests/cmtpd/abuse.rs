//! The real binary against a full disk and against password guessing
//! (issue 12 finding 2; issue 16 point 6).

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cmtp_client::Connection;
use cmtp_proto::account::Login;
use cmtp_proto::command::Command as Cmd;
use cmtp_proto::content::Content;
use cmtp_proto::names::Account;
use cmtp_proto::payload::decode_listing;
use cmtp_proto::reply::{Reply, Status};

use super::{Daemon, T, add_user, addr, fill, free_port, password_login, write_config};

/// Runs `f` until it returns `Some`, for up to 20 s.
async fn until<F, Fut, R>(what: &str, mut f: F) -> R
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<R>>,
{
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(r) = f().await {
            return r;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Stops the daemon with SIGTERM and waits for it.
fn stop(mut d: Daemon) {
    d.signal("TERM");
    let t = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(t.elapsed() < T, "cmtpd did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_a_full_disk_deletes_logins_and_restarts_work_and_new_mail_waits() {
    let fs = cmtp_testkit::tmpfs::Tmpfs::mount("48m", None)
        .unwrap_or_else(|why| panic!("{why}; CI runs as root, this test must run"));
    let dir = fs.path().join("data");
    let port = free_port();
    write_config(&dir, "a.test", port, |c| {
        c.store.min_free = 2 << 20;
        c.store.ballast_size = 4 << 20;
    });
    add_user(&dir, "alice", "pw-a");
    add_user(&dir, "bob", "pw-b");
    let d = Daemon::start(&dir, port);
    assert!(
        dir.join("cmtpd.ballast").exists(),
        "the ballast is written while there is room"
    );
    let (mut c, alice) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
    let (_, bob) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let msg = |text: &str| {
        Content {
            text: text.into(),
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
        .to_bytes()
    };
    for i in 0..5 {
        let r = c.mail(&msg(&format!("before {i}"))).await.unwrap();
        assert_eq!(r.status, Status::Success, "{}", r.text());
    }
    fill(&fs.path().join("filler"));

    // New mail waits (TEMPFAILURE) ...
    let r = c.mail(&msg("while full")).await.unwrap();
    assert_eq!(r.status, Status::TempFailure, "{}", r.text());
    // ... while deleting mail works: the ballast gives it room.
    let addr_ = d.addr;
    let deleted = until("a DELETE on the full disk", || async move {
        let (mut b, _) = password_login(addr_, &addr("bob@a.test"), "pw-b").await;
        let list = decode_listing(&b.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
        let id = list[0].id;
        let r = b.command(&Cmd::Delete { id }, 1 << 20).await.unwrap();
        (r.status == Status::Success).then_some(id)
    })
    .await;
    assert!(
        !dir.join("cmtpd.ballast").exists(),
        "the ballast was released"
    );
    let r = c.mail(&msg("still full")).await.unwrap();
    assert_eq!(
        r.status,
        Status::TempFailure,
        "the released ballast is not for new mail: {}",
        r.text()
    );

    // Filled again to the last byte, and restarted: cmtpd starts, logs in
    // and serves the mailbox.
    fill(&fs.path().join("filler2"));
    drop(c);
    stop(d);
    let d = Daemon::start(&dir, port);
    let (mut b, _) = password_login(d.addr, &addr("bob@a.test"), "pw-b").await;
    let list = decode_listing(&b.command(&Cmd::List, 1 << 20).await.unwrap().body).unwrap();
    assert_eq!(list.len(), 4);
    assert!(list.iter().all(|e| e.id != deleted));
    let mut out = Vec::new();
    b.fetch_into(list[0].id, 1 << 30, &mut out)
        .await
        .unwrap()
        .unwrap();
    assert!(!out.is_empty());

    // Space returns: the ballast is written again, and mail flows.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    std::fs::remove_file(fs.path().join("filler2")).unwrap();
    let again = msg("after");
    let end = Instant::now() + Duration::from_secs(20);
    loop {
        let (mut c, _) = password_login(d.addr, &addr("alice@a.test"), "pw-a").await;
        if c.mail(&again).await.unwrap().status == Status::Success {
            break;
        }
        assert!(Instant::now() < end, "mail is not accepted again");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(dir.join("cmtpd.ballast").exists());
    drop(b);
    stop(d);
}

/// The value of every series of `name` in a Prometheus text exposition, summed.
fn metric_sum(body: &str, name: &str) -> f64 {
    body.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter(|l| matches!(l.as_bytes().get(name.len()), Some(b' ' | b'{')))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

/// A LOGIN with the wrong password, finished with a KE3 that cannot verify
/// (what `cmtp` does when the password is wrong); the final reply.
async fn wrong_password(c: &mut Connection) -> Reply {
    let (_, ke1) = Login::start(b"wrong", &mut rand_core::OsRng).unwrap();
    let r = c
        .command(
            &Cmd::Login {
                user: Account::parse("alice").unwrap(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await
        .unwrap();
    if r.status != Status::Success {
        return r;
    }
    c.command(&Cmd::LoginFinish { ke3: vec![9; 64] }, 1 << 20)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_failed_login_is_counted_in_the_metrics() {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port();
    let mport = free_port();
    write_config(tmp.path(), "a.test", port, |c| {
        c.metrics.listen = Some(SocketAddr::from(([127, 0, 0, 1], mport)));
    });
    add_user(tmp.path(), "alice", "pw-a");
    let d = Daemon::start(tmp.path(), port);
    let mut c = Connection::connect(d.addr, T).await.unwrap();
    c.ohai().await.unwrap();
    let mut statuses = Vec::new();
    for _ in 0..8 {
        statuses.push(wrong_password(&mut c).await.status);
    }
    let mut expected = vec![Status::AuthFailed; 5];
    expected.extend(vec![Status::RateLimited; 3]);
    assert_eq!(statuses, expected);
    let body = scrape(mport);
    assert_eq!(
        metric_sum(&body, "cmtp_login_failures_total"),
        8.0,
        "5 wrong passwords and 3 rate-limited attempts:\n{body}"
    );
    assert!(body.contains("cmtp_disk_free_bytes"), "{body}");
    assert!(body.contains("cmtp_store_size_bytes"), "{body}");
    stop(d);
}
