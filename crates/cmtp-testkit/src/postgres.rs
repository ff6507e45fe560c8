//! Throwaway PostgreSQL clusters for tests.
//!
//! [`PgCluster::start`] creates a fresh cluster in a temporary directory
//! (initdb with trust authentication), starts it on a free port on
//! `127.0.0.1` (its Unix socket in the data directory, `fsync=on`), creates
//! the database `cmtp`, and stops and removes everything when dropped.
//!
//! The server binaries are found with `pg_config --bindir` (Debian's
//! PostgreSQL 15 server packages put them in `/usr/lib/postgresql/15/bin`).
//! initdb and pg_ctl refuse to run as root, so when the test runs as root they
//! run as the `postgres` OS user through `runuser`, in a directory owned by
//! that user.
//!
//! Suites that need PostgreSQL call [`pg_or_skip`]: it skips (with a reason on
//! stderr) where PostgreSQL is not installed, unless the environment sets
//! `CMTP_REQUIRE_POSTGRES=1`, in which case a missing PostgreSQL fails the
//! test.
//!
//! Starting a cluster blocks the calling thread (about a second); inside an
//! async test that is acceptable, or wrap it in `spawn_blocking`.

use std::{
    ffi::OsStr,
    fs,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

use anyhow::{Context as _, anyhow, bail};

/// The environment variable that turns a skipped PostgreSQL suite into a
/// failure (set it to `1`, as CI should where PostgreSQL is installed).
pub const REQUIRE_ENV: &str = "CMTP_REQUIRE_POSTGRES";

/// The database that [`PgCluster::start`] creates and [`PgCluster::url`]
/// names.
pub const DEFAULT_DATABASE: &str = "cmtp";

/// The superuser of the throwaway cluster (trust authentication, no password).
pub const SUPERUSER: &str = "postgres";

/// How many times to retry starting on a fresh port when the port was taken
/// between choosing it and the server binding it.
const START_ATTEMPTS: usize = 3;

/// A running throwaway PostgreSQL cluster, stopped and deleted on drop.
#[derive(Debug)]
pub struct PgCluster {
    bindir: PathBuf,
    run_as: Option<OsUser>,
    // The temporary directory (removed on drop) and the data directory in it.
    root: Option<tempfile::TempDir>,
    data: PathBuf,
    port: u16,
}

/// The unprivileged OS user that runs the PostgreSQL tools when we are root.
#[derive(Debug, Clone)]
struct OsUser {
    name: String,
    uid: u32,
    gid: u32,
}

impl PgCluster {
    /// Says whether [`PgCluster::start`] can work here: `Ok(())`, or `Err`
    /// with a human-readable reason (binaries missing, no `postgres` OS user
    /// while running as root, ...).
    pub fn availability() -> Result<(), String> {
        Self::environment().map(|_| ())
    }

    /// Creates, starts and returns a fresh cluster with the database
    /// [`DEFAULT_DATABASE`]. Blocks for about a second.
    pub fn start() -> anyhow::Result<PgCluster> {
        let (bindir, run_as) = Self::environment().map_err(|reason| anyhow!(reason))?;

        let root = tempfile::Builder::new()
            .prefix("cmtp-pg-")
            .tempdir()
            .context("creating the cluster's temporary directory")?;
        let data = root.path().join("data");
        if let Some(user) = &run_as {
            std::os::unix::fs::chown(root.path(), Some(user.uid), Some(user.gid))
                .with_context(|| format!("giving {} to {}", root.path().display(), user.name))?;
        }

        let mut cluster = PgCluster {
            bindir,
            run_as,
            root: Some(root),
            data,
            port: 0,
        };

        let data_arg = cluster.data.clone();
        cluster
            .run_tool(
                "initdb",
                [
                    OsStr::new("-D"),
                    data_arg.as_os_str(),
                    OsStr::new("-A"),
                    OsStr::new("trust"),
                    OsStr::new("-U"),
                    OsStr::new(SUPERUSER),
                    OsStr::new("-E"),
                    OsStr::new("UTF8"),
                    OsStr::new("--no-sync"),
                ],
            )
            .context("initdb")?;

        let mut last_error = None;
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match cluster.pg_ctl_start(port) {
                Ok(()) => {
                    cluster.port = port;
                    last_error = None;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
        if let Some(e) = last_error {
            return Err(e.context("starting PostgreSQL"));
        }

        cluster.create_database(DEFAULT_DATABASE)?;
        Ok(cluster)
    }

    /// The connection URL of the default database, e.g.
    /// `postgres://postgres@127.0.0.1:54321/cmtp`.
    pub fn url(&self) -> String {
        self.url_for(DEFAULT_DATABASE)
    }

    /// The connection URL of another database of this cluster.
    pub fn url_for(&self, database: &str) -> String {
        format!(
            "postgres://{SUPERUSER}@{}:{}/{database}",
            self.host(),
            self.port
        )
    }

    /// The host the cluster listens on (`127.0.0.1`).
    pub fn host(&self) -> &str {
        "127.0.0.1"
    }

    /// The TCP port the cluster listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser name (`postgres`, trust authentication).
    pub fn user(&self) -> &str {
        SUPERUSER
    }

    /// The temporary directory that holds the cluster (removed on drop).
    pub fn dir(&self) -> &Path {
        self.root
            .as_ref()
            .map(|r| r.path())
            .unwrap_or_else(|| Path::new(""))
    }

    /// The folder with the PostgreSQL binaries (`pg_config --bindir`).
    pub fn bindir(&self) -> &Path {
        &self.bindir
    }

    /// Creates another database (e.g. one per test) and returns its URL.
    pub fn create_database(&self, name: &str) -> anyhow::Result<String> {
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            bail!("database name {name:?} must be [a-z0-9_]+");
        }
        let port = self.port.to_string();
        self.run_tool(
            "createdb",
            [
                "-h",
                self.host(),
                "-p",
                port.as_str(),
                "-U",
                SUPERUSER,
                name,
            ],
        )
        .with_context(|| format!("createdb {name}"))?;
        Ok(self.url_for(name))
    }

    /// Runs `psql` on the default database with one SQL command and returns
    /// its unaligned, tuples-only output (trimmed).
    pub fn psql(&self, sql: &str) -> anyhow::Result<String> {
        let port = self.port.to_string();
        let out = self.run_tool(
            "psql",
            [
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                self.host(),
                "-p",
                port.as_str(),
                "-U",
                SUPERUSER,
                "-d",
                DEFAULT_DATABASE,
                "-c",
                sql,
            ],
        )?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Finds the binaries and the user to run them as, or says why not.
    fn environment() -> Result<(PathBuf, Option<OsUser>), String> {
        let out = Command::new("pg_config")
            .arg("--bindir")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| {
                format!("pg_config not found on PATH ({e}): PostgreSQL is not installed")
            })?;
        if !out.status.success() {
            return Err(format!(
                "`pg_config --bindir` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let bindir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        for tool in ["initdb", "pg_ctl", "postgres", "createdb", "psql"] {
            if !bindir.join(tool).is_file() {
                return Err(format!(
                    "{} not found in `pg_config --bindir` ({}): the PostgreSQL server \
                     packages are not installed",
                    tool,
                    bindir.display()
                ));
            }
        }
        let run_as = if effective_uid()? == 0 {
            let uid = id_of("-u")?;
            let gid = id_of("-g")?;
            if Command::new("runuser")
                .arg("--help")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
            {
                return Err("running as root and `runuser` is missing".to_owned());
            }
            Some(OsUser {
                name: SUPERUSER.to_owned(),
                uid,
                gid,
            })
        } else {
            None
        };
        Ok((bindir, run_as))
    }

    fn pg_ctl_start(&self, port: u16) -> anyhow::Result<()> {
        let log = self.dir().join("server.log");
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=on",
            self.data.display()
        );
        let result = self.run_tool(
            "pg_ctl",
            [
                OsStr::new("-w"),
                OsStr::new("-t"),
                OsStr::new("60"),
                OsStr::new("-D"),
                self.data.as_os_str(),
                OsStr::new("-l"),
                log.as_os_str(),
                OsStr::new("-o"),
                OsStr::new(&options),
                OsStr::new("start"),
            ],
        );
        result.map(|_| ()).map_err(|e| {
            let tail = fs::read_to_string(&log)
                .map(|l| {
                    let lines: Vec<&str> = l.lines().collect();
                    lines[lines.len().saturating_sub(15)..].join("\n")
                })
                .unwrap_or_default();
            e.context(format!("server log:\n{tail}"))
        })
    }

    /// Runs one PostgreSQL tool from the bindir (as the `postgres` user when we
    /// are root), in the cluster's directory, and fails on a non-zero exit.
    fn run_tool<I, S>(&self, tool: &str, args: I) -> anyhow::Result<Output>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = self.bindir.join(tool);
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.arg("-u").arg(&user.name).arg("--").arg(&program);
                c
            }
            None => Command::new(&program),
        };
        cmd.args(args)
            .current_dir(self.dir())
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGDATABASE")
            .env_remove("PGUSER")
            .env_remove("PGPASSWORD")
            .env("LC_ALL", "C")
            .stdin(Stdio::null());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                String::from_utf8_lossy(&out.stdout).trim()
            );
        }
        Ok(out)
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if self.port != 0 {
            let data = self.data.clone();
            let stopped = self.run_tool(
                "pg_ctl",
                [
                    OsStr::new("-D"),
                    data.as_os_str(),
                    OsStr::new("-m"),
                    OsStr::new("immediate"),
                    OsStr::new("-w"),
                    OsStr::new("stop"),
                ],
            );
            if let Err(e) = stopped {
                eprintln!(
                    "cmtp-testkit: stopping PostgreSQL on port {}: {e:#}",
                    self.port
                );
            }
        }
        if let Some(root) = self.root.take() {
            let path = root.path().to_owned();
            if let Err(e) = root.close() {
                eprintln!("cmtp-testkit: removing {}: {e}", path.display());
            }
        }
    }
}

/// Starts a throwaway cluster for a PostgreSQL suite, applying the skip
/// policy:
/// - PostgreSQL available: returns the running cluster (panics if it is
///   installed but fails to start: that is a real failure);
/// - not available and `CMTP_REQUIRE_POSTGRES=1`: panics with the reason;
/// - not available otherwise: prints
///   `PostgreSQL suite did not run: <reason>` to stderr and returns `None`.
pub fn pg_or_skip() -> Option<PgCluster> {
    let required = std::env::var(REQUIRE_ENV).is_ok_and(|v| v.trim() == "1");
    match PgCluster::availability() {
        Ok(()) => match PgCluster::start() {
            Ok(cluster) => Some(cluster),
            Err(e) => panic!("PostgreSQL is installed but the throwaway cluster failed: {e:#}"),
        },
        Err(reason) if required => {
            panic!("PostgreSQL suite could not run and {REQUIRE_ENV}=1: {reason}")
        }
        Err(reason) => {
            eprintln!("PostgreSQL suite did not run: {reason}");
            None
        }
    }
}

/// A loopback TCP port that was free a moment ago.
fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The effective user id of this process, from `/proc/self/status`.
fn effective_uid() -> Result<u32, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status to learn our user id: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1))
        .and_then(|euid| euid.parse().ok())
        .ok_or_else(|| "no effective uid in /proc/self/status".to_owned())
}

/// `id -u postgres` / `id -g postgres`.
fn id_of(flag: &str) -> Result<u32, String> {
    let out = Command::new("id")
        .arg(flag)
        .arg(SUPERUSER)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run `id`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "running as root and there is no `{SUPERUSER}` OS user to run initdb as \
             (initdb refuses root)"
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .map_err(|e| format!("`id {flag} {SUPERUSER}` printed no number: {e}"))
}
