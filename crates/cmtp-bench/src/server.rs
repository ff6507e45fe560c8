//! The server under test: the bench's own (a separate process on a
//! throwaway data directory, with its accounts created before it starts), or
//! one already running (`--target`).

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use cmtp_client::Connection;
use cmtp_proto::account::{Login, open_release};
use cmtp_proto::command::Command as Cmd;
use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::payload::{LoginChallenge, XzibitRelease};
use cmtp_proto::reply::Status;
use cmtp_server::admin;
use cmtp_server::config::Config;

use crate::procfs;

/// Where the server under test comes from; shared by every scenario.
#[derive(Args, Debug, Clone)]
pub(crate) struct ServerOpts {
    /// Aim at a running server instead of starting one. It must serve
    /// `--domain` and have the accounts `<user-prefix>0`, `<user-prefix>1`, ...
    /// with the password `--password` (e.g. `cmtpd user add bench0
    /// --password-file pw`); see docs/BENCHMARKS.md.
    #[arg(long, value_name = "ADDR")]
    pub(crate) target: Option<SocketAddr>,
    /// The domain of the `--target` server (the own server uses a.test).
    #[arg(long, default_value = "a.test")]
    pub(crate) domain: String,
    /// Password of the `--target` accounts.
    #[arg(long, default_value = "bench-password")]
    pub(crate) password: String,
    /// Accounts are named <prefix>0, <prefix>1, ...
    #[arg(long, default_value = "bench")]
    pub(crate) user_prefix: String,
    /// Process id of the `--target` server, to read its memory and CPU time in /proc.
    #[arg(long, value_name = "PID")]
    pub(crate) server_pid: Option<u32>,
    /// Start this cmtpd binary (`cmtpd --data-dir D run`) instead of the
    /// bench's built-in copy of the server (`cmtp-bench serve`).
    #[arg(long, value_name = "PATH")]
    pub(crate) cmtpd: Option<PathBuf>,
    /// Directory for the throwaway data directories (default: the system's
    /// temporary directory). Its disk's fsync rate bounds durable mail.
    #[arg(long, value_name = "DIR")]
    pub(crate) work_dir: Option<PathBuf>,
    /// Log level of the own server (cmtpd's default is info: one line per message).
    #[arg(long, default_value = "info")]
    pub(crate) server_log: String,
    /// Run the own server under this command, e.g. "valgrind
    /// --tool=callgrind --callgrind-out-file=/tmp/cg.out" (split at spaces).
    #[arg(long, value_name = "COMMAND")]
    pub(crate) server_wrapper: Option<String>,
    /// Keep the own server's data directory (and its log) after the run.
    #[arg(long)]
    pub(crate) keep: bool,
    /// Storage backend of the own server: `sqlite` (the default, embedded)
    /// or `postgres` (a throwaway PostgreSQL cluster started for the run from
    /// the machine's PostgreSQL binaries, unless `--postgres-url` names one).
    #[arg(long, default_value = "sqlite", value_parser = ["sqlite", "postgres"])]
    pub(crate) store: String,
    /// With `--store postgres`: an existing, empty database to use.
    #[arg(long, value_name = "URL")]
    pub(crate) postgres_url: Option<String>,
}

/// An account the bench uses, with its identity key once logged in.
#[derive(Clone)]
pub(crate) struct User {
    pub(crate) address: Address,
    pub(crate) password: String,
    pub(crate) key: Option<IdentityKey>,
}

impl User {
    pub(crate) fn key(&self) -> &IdentityKey {
        self.key.as_ref().expect("logged in")
    }
}

/// A server under test.
pub(crate) struct BenchServer {
    pub(crate) addr: SocketAddr,
    pub(crate) domain: Domain,
    pub(crate) users: Vec<User>,
    /// For /proc measurements.
    pub(crate) pid: Option<u32>,
    /// The own server's data directory.
    pub(crate) data_dir: Option<PathBuf>,
    /// The own server's configuration and log file.
    own: Option<(Config, PathBuf)>,
    child: Option<Child>,
    dir: Option<tempfile::TempDir>,
    /// The throwaway PostgreSQL cluster of `--store postgres` (stopped on drop,
    /// after the server: fields drop in order).
    _postgres: Option<cmtp_testkit::postgres::PgCluster>,
}

/// A port free now on 127.0.0.1 (the server binds it a moment later).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Password of the own server's account number `i`.
fn own_password(i: usize) -> String {
    format!("bench-password-{i}")
}

impl BenchServer {
    /// The server for a scenario that needs `users` accounts: `--target`, or
    /// an own server for `domain` on `port` (0: any free port) whose
    /// configuration `tweak` adjusts.
    pub(crate) async fn start(
        opts: &ServerOpts,
        domain: &str,
        users: usize,
        port: u16,
        tweak: impl FnOnce(&mut Config),
    ) -> anyhow::Result<BenchServer> {
        if let Some(addr) = opts.target {
            let domain = Domain::parse(&opts.domain).context("--domain")?;
            let users = (0..users)
                .map(|i| {
                    Ok(User {
                        address: Address::new(
                            Account::parse(&format!("{}{i}", opts.user_prefix))?,
                            domain.clone(),
                        ),
                        password: opts.password.clone(),
                        key: None,
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            return Ok(BenchServer {
                addr,
                domain,
                users,
                pid: opts.server_pid,
                data_dir: None,
                own: None,
                child: None,
                dir: None,
                _postgres: None,
            });
        }
        let base = opts.work_dir.clone().unwrap_or_else(std::env::temp_dir);
        std::fs::create_dir_all(&base)?;
        let dir = tempfile::Builder::new()
            .prefix("cmtp-bench-")
            .tempdir_in(&base)
            .with_context(|| format!("creating a data directory in {}", base.display()))?;
        let data = dir.path().join(domain);
        let port = if port == 0 { free_port()? } else { port };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cfg = bench_config(domain, &data, addr, &opts.server_log);
        let mut postgres = None;
        if opts.store == "postgres" {
            let url = match &opts.postgres_url {
                Some(u) => u.clone(),
                None => {
                    let pg = cmtp_testkit::postgres::PgCluster::start()
                        .context("starting a throwaway PostgreSQL cluster (--store postgres)")?;
                    let url = pg.url();
                    postgres = Some(pg);
                    url
                }
            };
            cfg.store.backend = cmtp_server::config::StoreBackend::Postgres;
            cfg.store.url = Some(url);
        }
        tweak(&mut cfg);
        cfg.validate()?;
        admin::write_config_if_missing(&cfg)?;
        // The accounts, created directly in the database before the server
        // opens it (as `cmtpd user add` does).
        let domain = cfg.domain();
        let mut list = Vec::with_capacity(users);
        {
            let prepared = admin::prepare(&cfg).await?;
            for i in 0..users {
                let account = Account::parse(&format!("{}{i}", opts.user_prefix))?;
                let password = own_password(i);
                admin::add_user(
                    &cfg,
                    &prepared.store,
                    &account,
                    password.as_bytes(),
                    KsfParams::INSECURE_TEST,
                )
                .await?;
                list.push(User {
                    address: Address::new(account, domain.clone()),
                    password,
                    key: None,
                });
            }
        }
        let log_path = dir.path().join(format!("{domain}.log"));
        let log = std::fs::File::create(&log_path)?;
        let mut argv: Vec<std::ffi::OsString> = Vec::new();
        if let Some(w) = &opts.server_wrapper {
            argv.extend(w.split_whitespace().map(Into::into));
        }
        match &opts.cmtpd {
            Some(bin) => {
                argv.push(bin.into());
                argv.extend(["--data-dir".into(), data.clone().into(), "run".into()]);
            }
            None => {
                argv.push(std::env::current_exe()?.into());
                argv.extend(["serve".into(), "--data-dir".into(), data.clone().into()]);
            }
        }
        let mut command = Command::new(&argv[0]);
        command.args(&argv[1..]);
        let child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the server")?;
        let mut server = BenchServer {
            addr,
            domain,
            users: list,
            pid: Some(child.id()),
            data_dir: Some(data.clone()),
            own: Some((cfg.clone(), log_path.clone())),
            child: Some(child),
            dir: Some(dir),
            _postgres: postgres,
        };
        if opts.keep
            && let Some(d) = server.dir.take()
        {
            eprintln!("cmtp-bench: keeping {}", d.keep().display());
        }
        server.wait_ready(&log_path)?;
        Ok(server)
    }

    /// Creates the account `name` in the own server's store while it runs
    /// (as `cmtpd user add` does): a key change for its key directory.
    pub(crate) async fn add_account(&self, name: &str) -> anyhow::Result<()> {
        let Some((cfg, _)) = &self.own else {
            bail!("accounts are added only to the bench's own server");
        };
        let prepared = admin::prepare(cfg).await?;
        admin::add_user(
            cfg,
            &prepared.store,
            &Account::parse(name)?,
            b"bench-password",
            KsfParams::INSECURE_TEST,
        )
        .await?;
        Ok(())
    }

    /// Lines of the own server's log that contain `needle`.
    pub(crate) fn log_lines(&self, needle: &str) -> usize {
        self.own
            .as_ref()
            .and_then(|(_, log)| std::fs::read_to_string(log).ok())
            .map_or(0, |t| t.lines().filter(|l| l.contains(needle)).count())
    }

    /// The number after `field` in the last line of the own server's log
    /// that contains `needle` (`field` ends in `=`: the human format).
    pub(crate) fn log_number(&self, needle: &str, field: &str) -> Option<u64> {
        let (_, log) = self.own.as_ref()?;
        let text = std::fs::read_to_string(log).ok()?;
        let line = text.lines().rev().find(|l| l.contains(needle))?;
        let rest = &line[line.find(field)? + field.len()..];
        let digits: String = rest
            .trim_start_matches(|c: char| !c.is_ascii_digit())
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    }

    fn wait_ready(&mut self, log: &Path) -> anyhow::Result<()> {
        let until = Instant::now() + Duration::from_secs(120);
        while Instant::now() < until {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                bail!("the server exited ({status}) at start:\n{text}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(self.addr) {
                use std::io::Read;
                s.set_read_timeout(Some(Duration::from_secs(2)))?;
                let mut b = [0u8; 3];
                if s.read_exact(&mut b).is_ok() && &b == b"554" {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!("the server did not come up on {}", self.addr)
    }

    /// OPAQUE login of every account, once, to recover its identity key
    /// (later connections log in with KEYLOGIN).
    pub(crate) async fn login_all(&mut self) -> anyhow::Result<()> {
        for u in &mut self.users {
            if u.key.is_none() {
                u.key = Some(password_login(self.addr, &u.address, &u.password).await?);
            }
        }
        Ok(())
    }

    /// Resident memory of the server now, KiB (own server or `--server-pid`).
    pub(crate) fn rss_kib(&self) -> Option<u64> {
        self.pid.and_then(procfs::rss_kib)
    }

    /// Peak resident memory of the server, KiB.
    pub(crate) fn hwm_kib(&self) -> Option<u64> {
        self.pid.and_then(procfs::hwm_kib)
    }

    /// CPU seconds the server has used.
    pub(crate) fn cpu_secs(&self) -> Option<f64> {
        self.pid.and_then(procfs::cpu_secs)
    }

    /// User and system CPU seconds the server has used.
    pub(crate) fn cpu_split(&self) -> Option<(f64, f64)> {
        self.pid.and_then(procfs::cpu_split)
    }

    /// Whether this is the bench's own server.
    pub(crate) fn is_own(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for BenchServer {
    /// SIGTERM (a clean shutdown, which a profiler wrapped around the server
    /// needs to write its output), then SIGKILL if it takes too long.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .stderr(Stdio::null())
                .status();
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The own server's configuration: production defaults except the
/// loopback listener, the Argon2id floor (lowered so that setting up
/// accounts takes milliseconds) and the log level.
pub(crate) fn bench_config(domain: &str, data: &Path, addr: SocketAddr, log: &str) -> Config {
    let mut cfg = Config::new(domain, data);
    cfg.listen = vec![addr];
    let k = KsfParams::INSECURE_TEST;
    cfg.accounts.ksf_min_memory_kib = k.m_cost_kib;
    cfg.accounts.ksf_min_passes = k.t_cost;
    cfg.accounts.ksf_min_lanes = k.p_cost;
    cfg.log.level = log.to_owned();
    cfg
}

/// OPAQUE login with the password (LOGIN, LOGINFINISH); returns the identity
/// key recovered from the released xzibit.
async fn password_login(
    addr: SocketAddr,
    address: &Address,
    password: &str,
) -> anyhow::Result<IdentityKey> {
    let mut c = Connection::connect(addr, Duration::from_secs(30)).await?;
    let g = c.ohai().await?;
    let rng = &mut rand_core::OsRng;
    let (login, ke1) = Login::start(password.as_bytes(), rng)?;
    let r = c
        .command(
            &Cmd::Login {
                user: address.account.clone(),
                ke1: ke1.to_vec(),
            },
            1 << 20,
        )
        .await?;
    if r.status != Status::Success {
        bail!("LOGIN {address}: {} {}", r.status, r.text());
    }
    let proof = login.finish(
        password.as_bytes(),
        &LoginChallenge::decode(&r.body)?,
        address,
        &KsfParams::INSECURE_TEST,
        &c.channel_binding(),
        rng,
    )?;
    let r = c
        .command(
            &Cmd::LoginFinish {
                ke3: proof.ke3.to_vec(),
            },
            1 << 20,
        )
        .await?;
    if r.status != Status::Success {
        bail!("LOGINFINISH {address}: {} {}", r.status, r.text());
    }
    let release = XzibitRelease::decode(&r.body)?;
    let (key, _) = open_release(&release, &g.key, address, &proof.export_key, None)?;
    c.close().await;
    Ok(key)
}

/// `cmtp-bench serve --data-dir D`: the server as `cmtpd run` runs it (same
/// configuration file, logs to stderr), in this process, until SIGTERM or
/// SIGINT.
pub(crate) fn serve(data_dir: &Path) -> anyhow::Result<()> {
    let nofile = procfs::raise_nofile();
    let path = data_dir.join(cmtp_server::config::CONFIG_FILE);
    let mut cfg = Config::load(&path)?;
    cfg.data_dir = data_dir.to_owned();
    init_logs(&cfg)?;
    tracing::info!(nofile, "open-file limit");
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let server = cmtp_server::Server::start(cfg).await?;
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            r = tokio::signal::ctrl_c() => r?,
        }
        server.shutdown().await;
        Ok(())
    })
}

fn init_logs(cfg: &Config) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false)
        .with_writer(std::io::stderr);
    match cfg.log.format {
        cmtp_server::config::LogFormat::Json => builder.json().init(),
        cmtp_server::config::LogFormat::Human => builder.init(),
    }
    Ok(())
}
