//! Starting real servers and running the real client.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The lowered Argon2id floor of every test (server and client).
pub(crate) const TEST_KSF: &str = "256,1,1";

/// `target/debug/cmtpd`, next to this test's executable
/// (`target/debug/deps/e2e-…`).
pub(crate) fn cmtpd_path() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let debug = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/debug/deps/<test>");
    let path = debug.join("cmtpd");
    if !path.is_file() {
        panic!(
            "{} does not exist: build it first: cargo build -p cmtpd",
            path.display()
        );
    }
    path
}

/// A port that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// Polls `f` every 50 ms until it is true or `timeout` passes.
pub(crate) fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits until something listens on `port` and its first line starts with `prefix`.
pub(crate) fn wait_for_banner(port: u16, prefix: &str, timeout: Duration) -> String {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            s.set_read_timeout(Some(Duration::from_secs(2))).ok();
            let mut line = String::new();
            if BufReader::new(&s).read_line(&mut line).is_ok() && line.starts_with(prefix) {
                return line;
            }
        }
        if Instant::now() > deadline {
            panic!("nothing answering {prefix:?} on port {port} after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A running `cmtpd`, killed when dropped.
pub(crate) struct Server {
    child: Child,
    /// Its data directory.
    pub(crate) dir: PathBuf,
    /// Its port on 127.0.0.1.
    pub(crate) port: u16,
}

impl Server {
    /// Starts `cmtpd run` for `domain` on `port`, with a data directory in
    /// `base`, routing each `(domain, port)` of `routes` statically.
    pub(crate) fn start(base: &Path, domain: &str, port: u16, routes: &[(&str, u16)]) -> Server {
        Server::start_with(base, domain, port, routes, "")
    }

    /// As [`start`](Self::start), with `extra` appended to the configuration
    /// (e.g. a `[limits]` section).
    pub(crate) fn start_with(
        base: &Path,
        domain: &str,
        port: u16,
        routes: &[(&str, u16)],
        extra: &str,
    ) -> Server {
        let dir = base.join(format!("server-{domain}"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut config = format!(
            "domain = \"{domain}\"\nlisten = [\"127.0.0.1:{port}\"]\n\n\
             [accounts]\nksf_min_memory_kib = 256\nksf_min_passes = 1\nksf_min_lanes = 1\n\n\
             [relay]\npoll_ms = 100\nfirst_retry_secs = 1\n\n[dns.routes]\n"
        );
        for (d, p) in routes {
            config.push_str(&format!("\"{d}\" = [\"127.0.0.1:{p}\"]\n"));
        }
        config.push_str(extra);
        std::fs::write(dir.join("cmtpd.toml"), config).unwrap();
        let log = std::fs::File::create(dir.join("cmtpd.log")).unwrap();
        let child = Command::new(cmtpd_path())
            .arg("--data-dir")
            .arg(&dir)
            .args(["run", "--domain", domain, "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start cmtpd");
        let server = Server { child, dir, port };
        wait_for_banner(port, "554 ", Duration::from_secs(30));
        server
    }

    /// `host:port` of the server.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The SQLite database.
    pub(crate) fn db(&self) -> PathBuf {
        self.dir.join("cmtp.db")
    }

    /// Stops the server (SIGKILL, as a crash would) and waits for it.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn admin(&self, args: &[&str]) -> std::process::Output {
        let out = Command::new(cmtpd_path())
            .arg("--data-dir")
            .arg(&self.dir)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run cmtpd");
        assert!(
            out.status.success(),
            "cmtpd {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `cmtpd user invite NAME`: the token.
    pub(crate) fn invite(&self, name: &str) -> String {
        let out = self.admin(&["user", "invite", name]);
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `cmtpd user reset NAME`: the token.
    pub(crate) fn reset_token(&self, name: &str) -> String {
        let out = self.admin(&["user", "reset", name]);
        String::from_utf8(out.stdout).unwrap().trim().to_owned()
    }

    /// `cmtpd user add NAME --password-file F`.
    pub(crate) fn add_user(&self, name: &str, password_file: &Path) {
        self.admin(&[
            "user",
            "add",
            name,
            "--password-file",
            password_file.to_str().unwrap(),
        ]);
    }

    /// The server's log so far (for failure messages).
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("cmtpd.log")).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A process killed when dropped (aiosmtpd).
pub(crate) struct Guard(pub(crate) Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a `cmtp` run gave.
#[derive(Debug)]
pub(crate) struct Run {
    /// The exit code.
    pub(crate) code: i32,
    /// Standard output.
    pub(crate) stdout: String,
    /// Standard error.
    pub(crate) stderr: String,
    /// How long it took.
    pub(crate) elapsed: Duration,
}

impl Run {
    /// Asserts success and returns stdout.
    #[track_caller]
    pub(crate) fn ok(&self) -> &str {
        assert_eq!(
            self.code, 0,
            "cmtp failed:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        &self.stdout
    }

    /// Asserts the exit code and that stderr says `text`.
    #[track_caller]
    pub(crate) fn fails(&self, code: i32, text: &str) {
        assert_eq!(
            self.code, code,
            "expected exit code {code}:\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(text),
            "expected {text:?} in stderr: {}",
            self.stderr
        );
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }
}

/// A client home directory.
pub(crate) struct Home {
    /// The directory.
    pub(crate) dir: PathBuf,
    /// Whether runs get `CMTP_MIN_KSF` (else the home's config.toml must set the floor).
    pub(crate) env_floor: bool,
}

impl Home {
    /// A home at `dir` (not created: the client creates it).
    pub(crate) fn new(dir: PathBuf) -> Home {
        Home {
            dir,
            env_floor: true,
        }
    }

    /// The command `cmtp --home DIR ARGS`, not started (stdin, stdout and
    /// stderr piped).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cmtp"));
        cmd.arg("--home")
            .arg(&self.dir)
            .args(args)
            .env_remove("CMTP_HOME")
            .env_remove("CMTP_SERVER")
            .env_remove("CMTP_MIN_KSF")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if self.env_floor {
            cmd.env("CMTP_MIN_KSF", TEST_KSF);
        }
        cmd
    }

    /// Runs `cmtp --home DIR ARGS` with `stdin` (never a terminal).
    pub(crate) fn run(&self, args: &[&str], stdin: &[u8]) -> Run {
        self.run_env(args, stdin, &[])
    }

    /// As [`run`](Self::run), with extra environment variables.
    pub(crate) fn run_env(&self, args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> Run {
        let started = Instant::now();
        let mut cmd = self.command(args);
        cmd.envs(env.iter().copied());
        let mut child = cmd.spawn().expect("start cmtp");
        let mut input = child.stdin.take().unwrap();
        let data = stdin.to_vec();
        let writer = std::thread::spawn(move || {
            let _ = input.write_all(&data);
        });
        let out = child.wait_with_output().expect("run cmtp");
        writer.join().unwrap();
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// Runs without stdin input.
    pub(crate) fn cmd(&self, args: &[&str]) -> Run {
        self.run(args, b"")
    }
}

/// Writes `password` to a file in `dir` and returns its path as a string.
pub(crate) fn password_file(dir: &Path, name: &str, password: &str) -> String {
    let p = dir.join(format!("{name}.password"));
    std::fs::write(&p, format!("{password}\n")).unwrap();
    p.to_str().unwrap().to_owned()
}

/// A temporary directory for one test.
pub(crate) fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("cmtp-e2e-")
        .tempdir()
        .unwrap()
}

/// A TCP forwarding proxy on 127.0.0.1 that counts the bytes it forwards in
/// each direction (and may slow down the client's direction): a way to see
/// what a client puts on the wire. Stops when dropped.
pub(crate) struct Proxy {
    /// Its port.
    pub(crate) port: u16,
    /// Bytes forwarded client → server.
    pub(crate) up: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// Bytes forwarded server → client.
    pub(crate) down: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Proxy {
    /// Forwards to 127.0.0.1:`upstream`; client → server at most
    /// `up_rate` bytes a second when given.
    pub(crate) fn start(upstream: u16, up_rate: Option<u64>) -> Proxy {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(AtomicU64::new(0));
        let down = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (u, d, st) = (up.clone(), down.clone(), stop.clone());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                let client = match listener.accept() {
                    Ok((c, _)) => c,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    Err(_) => break,
                };
                client.set_nonblocking(false).unwrap();
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                let pipe = |mut from: TcpStream,
                            mut to: TcpStream,
                            count: Arc<AtomicU64>,
                            rate: Option<u64>| {
                    std::thread::spawn(move || {
                        use std::io::Read;
                        let started = Instant::now();
                        let mut buf = [0u8; 16384];
                        let mut total = 0u64;
                        loop {
                            let n = match from.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if to.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            total += n as u64;
                            count.fetch_add(n as u64, Ordering::SeqCst);
                            if let Some(rate) = rate {
                                let due = Duration::from_secs_f64(total as f64 / rate as f64);
                                if let Some(wait) = due.checked_sub(started.elapsed()) {
                                    std::thread::sleep(wait);
                                }
                            }
                        }
                        let _ = to.shutdown(std::net::Shutdown::Write);
                    });
                };
                pipe(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    u.clone(),
                    up_rate,
                );
                pipe(server, client, d.clone(), None);
            }
        });
        Proxy {
            port,
            up,
            down,
            stop,
        }
    }

    /// `host:port` of the proxy.
    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Bytes forwarded in both directions so far.
    pub(crate) fn total(&self) -> u64 {
        use std::sync::atomic::Ordering;
        self.up.load(Ordering::SeqCst) + self.down.load(Ordering::SeqCst)
    }

    /// Sets both counters to zero.
    pub(crate) fn reset(&self) {
        use std::sync::atomic::Ordering;
        self.up.store(0, Ordering::SeqCst);
        self.down.store(0, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Registers `user@domain` on `server` in a new home `base/name` with the
/// server given by `--server ADDR` (saved in config.toml); returns the home.
pub(crate) fn register(base: &Path, server: &Server, name: &str, domain: &str, addr: &str) -> Home {
    let home = Home::new(base.join(name));
    let pw = password_file(base, name, &format!("{name}'s password"));
    home.cmd(&[
        "--server",
        addr,
        "register",
        &format!("{name}@{domain}"),
        "--invite",
        &server.invite(name),
        "--password-file",
        &pw,
    ])
    .ok();
    home
}
