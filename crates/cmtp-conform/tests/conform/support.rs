//! Starting a real cmtpd (with an in-process DNS server) and running the
//! real cmtp-conform binary against it.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmtp_testkit::dns::TestDns;

/// The checker binary.
pub(crate) const CHECKER: &str = env!("CARGO_BIN_EXE_cmtp-conform");

/// `target/debug/cmtpd`, next to this test's executable
/// (`target/debug/deps/conform-…`); `cargo test --workspace` builds it.
pub(crate) fn cmtpd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>");
    let path = debug.join("cmtpd");
    assert!(
        path.is_file(),
        "{} does not exist: build it first: cargo build -p cmtpd",
        path.display()
    );
    path
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .unwrap()
        .port()
}

/// Waits until something on `port` sends a line starting with `prefix`.
pub(crate) fn wait_for_banner(port: u16, prefix: &str) {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut line = String::new();
            if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with(prefix) {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing answering {prefix:?} on port {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The test network: a DNS server for the checker's domain and the domain
/// nobody answers for.
pub(crate) struct Net {
    pub(crate) rt: tokio::runtime::Runtime,
    pub(crate) dns: TestDns,
}

impl Net {
    pub(crate) fn start() -> Net {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dns = rt.block_on(TestDns::start()).unwrap();
        rt.block_on(async {
            dns.add_zone("conform.test").await.unwrap();
            dns.add_zone("down.test").await.unwrap();
        });
        Net { rt, dns }
    }

    /// Publishes the `_cmtpkey` record of the checker's domain.
    pub(crate) fn publish_key(&self, fingerprint: &str) {
        self.rt
            .block_on(self.dns.add_txt(
                "_cmtpkey.conform.test",
                &format!("v=cmtp1; k=ed25519; fp={fingerprint}"),
            ))
            .unwrap();
    }
}

/// A running cmtpd for `a.test`, killed when dropped.
pub(crate) struct Cmtpd {
    child: Child,
    pub(crate) dir: PathBuf,
    pub(crate) port: u16,
}

/// Timeouts cmtpd is configured with, so that the §4.3 rules take seconds.
pub(crate) const IDLE_SECS: u64 = 3;
pub(crate) const COMMAND_SECS: u64 = 2;
pub(crate) const DATA_GRACE_SECS: u64 = 2;

impl Cmtpd {
    /// Starts cmtpd in `base` with one account `alice` (password in
    /// `<dir>/alice.pw`), routing `conform.test` to `served_port` and
    /// `down.test` to a port where nothing listens.
    pub(crate) fn start(base: &Path, net: &Net, served_port: u16) -> Cmtpd {
        let dir = base.join("cmtpd-a.test");
        std::fs::create_dir_all(&dir).unwrap();
        let port = free_port();
        let nobody = free_port();
        let config = format!(
            "domain = \"a.test\"\nlisten = [\"127.0.0.1:{port}\"]\n\n\
             [timeouts]\nidle_secs = {IDLE_SECS}\ncommand_secs = {COMMAND_SECS}\ndata_grace_secs = {DATA_GRACE_SECS}\n\n\
             [accounts]\nksf_min_memory_kib = 256\nksf_min_passes = 1\nksf_min_lanes = 1\n\
             # the tests run the checker several times from one address\n\
             login_failures_per_address = 1000\n\n\
             [relay]\npoll_ms = 100\nfirst_retry_secs = 1\n\n\
             [dns]\nnameservers = [\"{}\"]\ntimeout_ms = 2000\n\n\
             [dns.routes]\n\"conform.test\" = [\"127.0.0.1:{served_port}\"]\n\"down.test\" = [\"127.0.0.1:{nobody}\"]\n",
            net.dns.addr()
        );
        std::fs::write(dir.join("cmtpd.toml"), config).unwrap();
        std::fs::write(dir.join("alice.pw"), "correct horse battery staple\n").unwrap();
        // Key and database first: no command but `init` and `run` creates them.
        let out = Command::new(cmtpd_path())
            .arg("--data-dir")
            .arg(&dir)
            .arg("init")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cmtpd init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let out = Command::new(cmtpd_path())
            .arg("--data-dir")
            .arg(&dir)
            .args(["user", "add", "alice", "--password-file"])
            .arg(dir.join("alice.pw"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cmtpd user add: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let log = std::fs::File::create(dir.join("cmtpd.log")).unwrap();
        let child = Command::new(cmtpd_path())
            .arg("--data-dir")
            .arg(&dir)
            .arg("run")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let d = Cmtpd { child, dir, port };
        wait_for_banner(port, "554 ");
        d
    }

    pub(crate) fn target(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cmtpd.log")).unwrap_or_default()
    }
}

impl Drop for Cmtpd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the checker with `args`.
pub(crate) fn checker(args: &[&str]) -> Output {
    Command::new(CHECKER)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// One rule's result from the JSON report.
#[derive(Debug)]
pub(crate) struct RuleResult {
    pub(crate) id: String,
    pub(crate) result: String,
    pub(crate) text: String,
}

/// Parses `-o json` output.
pub(crate) fn results(out: &Output) -> Vec<RuleResult> {
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    v["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| RuleResult {
            id: r["id"].as_str().unwrap().to_owned(),
            result: r["result"].as_str().unwrap().to_owned(),
            text: r.to_string(),
        })
        .collect()
}
