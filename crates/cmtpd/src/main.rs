//! `cmtpd`: the CMTP server for one domain, and its administration commands.
//!
//! `cmtpd run --domain example.org --data-dir /var/lib/cmtpd` creates the data
//! directory, its configuration, the server key and the database on first
//! start and serves; later starts reuse them. Every other command works on
//! an existing data directory and never creates one (a wrong path is an
//! error, not a new server). See `cmtpd --help` and README.md
//! ("Administration").
#![forbid(unsafe_code)]

mod admin_cmds;
mod logs;
mod out;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cmtp_proto::names::Domain;
use cmtp_server::admin;
use cmtp_server::config::{CONFIG_FILE, Config, LogFormat, absolute};

use crate::out::{Output, Printer};

/// The CMTP (Cipher Mail Transport Protocol) server for one domain.
#[derive(Parser, Debug)]
#[command(
    name = "cmtpd",
    version,
    about,
    long_about = None,
    after_help = "Exit codes: 0 success; 1 error (or `config check` found problems); 2 usage."
)]
pub(crate) struct Cli {
    /// Configuration file (default: <data-dir>/cmtpd.toml). Relative paths
    /// inside it are relative to its directory.
    #[arg(long, global = true, env = "CMTPD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: configuration, server key, database [default: cmtpd-data].
    #[arg(long, global = true, env = "CMTPD_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Output format of the administration commands.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve (creating the data directory, key and database on first start).
    Run {
        /// The domain served (required on first start).
        #[arg(long)]
        domain: Option<String>,
        /// Address to listen on (repeatable; default 127.0.0.1:9001).
        #[arg(long)]
        listen: Vec<SocketAddr>,
        /// Log format: human or json.
        #[arg(long, value_parser = parse_log_format)]
        log_format: Option<LogFormat>,
    },
    /// Prepare the data directory without serving, and print the DNS records to publish.
    Init {
        /// The domain served.
        #[arg(long)]
        domain: Option<String>,
        /// Host name the SRV record should point at (default: cmtp.<domain>).
        #[arg(long)]
        host: Option<String>,
        /// Address to listen on, written into a new configuration
        /// (repeatable; default 127.0.0.1:9001, this machine only).
        #[arg(long)]
        listen: Vec<SocketAddr>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(admin_cmds::UserCmd),
    /// Inspect and steer the relay queue.
    #[command(subcommand)]
    Queue(admin_cmds::QueueCmd),
    /// Show or rotate the server key.
    #[command(subcommand)]
    Key(admin_cmds::KeyCmd),
    /// Check or show the configuration.
    #[command(subcommand)]
    Config(admin_cmds::ConfigCmd),
    /// Make the running server read its configuration again (as SIGHUP
    /// does): limits, routes and logging change without dropping
    /// connections.
    Reload,
    /// Write a consistent copy of the running (or stopped) server's data
    /// into FILE: database, server key and configuration (SQLite only; for
    /// PostgreSQL use pg_dump). FILE holds secrets: it is created mode 0600.
    Backup {
        /// The backup file to create.
        file: PathBuf,
    },
    /// Restore a backup into a new or empty data directory.
    Restore {
        /// The backup file (from `cmtpd backup`).
        file: PathBuf,
    },
}

fn parse_log_format(s: &str) -> Result<LogFormat, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmtpd: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cmtpd: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

impl Cli {
    /// The data directory as given (or the default), made absolute.
    fn data_dir(&self) -> PathBuf {
        absolute(self.data_dir.as_deref().unwrap_or(Path::new("cmtpd-data")))
    }

    /// `--config`, else `<data-dir>/cmtpd.toml`.
    fn config_path(&self) -> PathBuf {
        match &self.config {
            Some(c) => absolute(c),
            None => self.data_dir().join(CONFIG_FILE),
        }
    }
}

/// Reads the configuration: `--config`, else `<data-dir>/cmtpd.toml`. With
/// `create` (run, init) and none there, a new one for `--domain` is written.
/// A configuration inside the data directory always uses that directory
/// (`--data-dir`); `--data-dir` also overrides the `data_dir` of a
/// `--config` file.
pub(crate) fn resolve_config(
    cli: &Cli,
    domain: Option<&str>,
    create: bool,
) -> anyhow::Result<Config> {
    let path = cli.config_path();
    if path.exists() {
        let mut cfg = Config::load(&path)?;
        if cli.config.is_none() || cli.data_dir.is_some() {
            cfg.data_dir = cli.data_dir();
        }
        if let Some(d) = domain
            && Domain::parse(d)? != cfg.domain()
        {
            bail!(
                "--domain {d} differs from the domain {} in {}",
                cfg.domain,
                path.display()
            );
        }
        return Ok(cfg);
    }
    if !create {
        if cli.config.is_some() {
            bail!("the configuration file {} does not exist", path.display());
        }
        bail!(
            "no configuration at {}: is --data-dir right? (`cmtpd init --domain D --data-dir DIR` creates a server)",
            path.display()
        );
    }
    let Some(domain) = domain else {
        bail!(
            "no configuration at {}: give --domain to create one (e.g. cmtpd run --domain example.org --data-dir {})",
            path.display(),
            cli.data_dir().display()
        );
    };
    let cfg = Config::new(
        Domain::parse(domain)
            .with_context(|| format!("--domain {domain}"))?
            .as_str(),
        &cli.data_dir(),
    );
    cfg.validate()?;
    Ok(cfg)
}

/// Writes a configuration made by [`resolve_config`] for `run`/`init`.
fn write_if_new(cli: &Cli, cfg: &Config) -> anyhow::Result<Option<PathBuf>> {
    let path = cli.config_path();
    if path.exists() {
        return Ok(None);
    }
    admin::write_new_config(&path, cfg)?;
    Ok(Some(path))
}

async fn real_main(cli: Cli) -> anyhow::Result<u8> {
    let p = Printer { format: cli.output };
    match &cli.command {
        Cmd::Run {
            domain,
            listen,
            log_format,
        } => {
            let cfg = resolve_config(&cli, domain.as_deref(), true)?;
            if let Some(path) = write_if_new(&cli, &cfg)? {
                eprintln!("cmtpd: wrote {}", path.display());
            }
            run(&cli, cfg, domain.as_deref(), listen, *log_format).await?;
            Ok(0)
        }
        Cmd::Init {
            domain,
            host,
            listen,
        } => {
            let mut cfg = resolve_config(&cli, domain.as_deref(), true)?;
            let path = cli.config_path();
            if !listen.is_empty() {
                if path.exists() && cfg.listen != *listen {
                    bail!(
                        "{} exists and listens on {:?}: edit `listen` there",
                        path.display(),
                        cfg.listen
                    );
                }
                cfg.listen = listen.clone();
                cfg.validate()?;
            }
            let wrote = write_if_new(&cli, &cfg)?;
            admin_cmds::init(&p, &cfg, &path, wrote.is_some(), host.as_deref()).await?;
            Ok(0)
        }
        Cmd::User(u) => {
            let cfg = resolve_config(&cli, None, false)?;
            admin_cmds::user(&p, &cfg, u).await?;
            Ok(0)
        }
        Cmd::Queue(q) => {
            let cfg = resolve_config(&cli, None, false)?;
            admin_cmds::queue(&p, &cfg, q).await?;
            Ok(0)
        }
        Cmd::Key(k) => {
            let cfg = resolve_config(&cli, None, false)?;
            admin_cmds::key(&p, &cfg, k)?;
            Ok(0)
        }
        Cmd::Config(c) => admin_cmds::config(&p, &cli, c),
        Cmd::Reload => {
            let cfg = resolve_config(&cli, None, false)?;
            admin_cmds::reload(&p, &cfg)
        }
        Cmd::Backup { file } => {
            let cfg = resolve_config(&cli, None, false)?;
            admin_cmds::backup(&p, &cfg, file).await?;
            Ok(0)
        }
        Cmd::Restore { file } => {
            let path = cli.config_path();
            let cfg = if path.exists() {
                resolve_config(&cli, None, false)?
            } else {
                let data_dir = match (&cli.config, &cli.data_dir) {
                    (Some(c), None) => absolute(c.parent().unwrap_or(Path::new("."))),
                    _ => cli.data_dir(),
                };
                admin::backup_config(file, &data_dir)?
            };
            admin_cmds::restore(&p, &cfg, file, &path).await?;
            Ok(0)
        }
    }
}

/// `cmtpd run`: serves until SIGTERM or SIGINT; SIGHUP reloads.
async fn run(
    cli: &Cli,
    mut cfg: Config,
    domain: Option<&str>,
    listen: &[SocketAddr],
    log_format: Option<LogFormat>,
) -> anyhow::Result<()> {
    if !listen.is_empty() {
        cfg.listen = listen.to_vec();
    }
    let mut logs = logs::Logs::init(&cfg.log, log_format)?;
    // Every connection is a file descriptor: lift the soft limit
    // (often 1024) to the hard limit so `connections.max` can be reached.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::info!(limit = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    if let Some(addr) = cfg.metrics.listen {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(addr)
            .install()
            .with_context(|| format!("starting the metrics listener on {addr}"))?;
        tracing::info!(%addr, "metrics at http://{addr}/metrics");
    }
    for w in cfg.warnings() {
        tracing::warn!("configuration: {w}");
    }
    if !cfg.data_dir.exists() {
        admin::create_private_dir(&cfg.data_dir)?;
    }
    let _pid = cmtp_server::reload::PidFile::create(&cfg)?;
    let server = cmtp_server::Server::start(cfg).await?;
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut seq = 0u64;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received"); break }
            r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT received"); break }
            _ = hup.recv() => {
                seq += 1;
                tracing::info!("SIGHUP received: reloading the configuration");
                let status = reload_once(cli, domain, &server, &mut logs, seq);
                if let Err(e) = cmtp_server::reload::write_status(&server.shared().cfg(), &status) {
                    tracing::warn!(error = %e, "cannot record the reload outcome");
                }
            }
        }
    }
    server.shutdown().await;
    Ok(())
}

fn reload_once(
    cli: &Cli,
    domain: Option<&str>,
    server: &cmtp_server::Server,
    logs: &mut logs::Logs,
    seq: u64,
) -> cmtp_server::reload::ReloadStatus {
    let mut status = cmtp_server::reload::ReloadStatus {
        pid: std::process::id(),
        seq,
        ok: false,
        error: None,
        applied: vec![],
        need_restart: vec![],
    };
    let result = resolve_config(cli, domain, false)
        .and_then(|new| server.shared().reload(new))
        .and_then(|plan| {
            logs.apply(&server.shared().cfg().log)?;
            Ok(plan)
        });
    match result {
        Ok(plan) => {
            status.ok = true;
            status.applied = plan.applied;
            status.need_restart = plan.need_restart;
        }
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "reload failed; the running configuration stays");
            status.error = Some(format!("{e:#}"));
        }
    }
    status
}
