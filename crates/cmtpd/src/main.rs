//! `cmtpd`: the CMTP server for one domain, and its administration commands.
//!
//! `cmtpd run --domain example.org --data-dir /var/lib/cmtpd` creates the data
//! directory, its configuration, the server key and the database on first
//! start and serves; later starts reuse them. See `cmtpd --help`.
#![forbid(unsafe_code)]

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::{Account, Domain};
use cmtp_server::admin;
use cmtp_server::config::{CONFIG_FILE, Config};

/// The CMTP (Cipher Mail Transport Protocol) server for one domain.
#[derive(Parser, Debug)]
#[command(name = "cmtpd", version, about, long_about = None)]
struct Cli {
    /// Configuration file (default: <data-dir>/cmtpd.toml).
    #[arg(long, global = true, env = "CMTPD_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory: configuration, server key, database.
    #[arg(
        long,
        global = true,
        env = "CMTPD_DATA_DIR",
        default_value = "cmtpd-data"
    )]
    data_dir: PathBuf,
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
        #[arg(long)]
        log_format: Option<String>,
    },
    /// Prepare the data directory without serving, and print the DNS records to publish.
    Init {
        /// The domain served.
        #[arg(long)]
        domain: Option<String>,
        /// Host name the SRV record should point at (default: cmtp.<domain>).
        #[arg(long)]
        host: Option<String>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCmd),
    /// Inspect and nudge the relay queue.
    #[command(subcommand)]
    Queue(QueueCmd),
    /// Show or rotate the server key.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Print the server key's fingerprint and the DNS TXT record for it.
    Show,
    /// Replace the server key; peers that pinned the old key accept the new
    /// one through a rotation statement signed by the old key. Restart cmtpd
    /// (every node of a cluster) afterwards.
    Rotate,
}

#[derive(Subcommand, Debug)]
enum UserCmd {
    /// Print a one-time invite token for a new account.
    Invite {
        /// The account name (the part before @).
        name: String,
        /// Hours the token stays valid (default from the configuration: 168).
        #[arg(long)]
        valid_hours: Option<u64>,
    },
    /// Create an account directly (keys are generated here, as a client would).
    Add {
        /// The account name.
        name: String,
        /// Read the password from the first line of this file instead of a prompt.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// List accounts.
    List,
    /// Delete an account with all its mail and keys.
    Delete {
        /// The account name.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Subcommand, Debug)]
enum QueueCmd {
    /// List queued messages.
    List,
    /// Make every queued message due now.
    Retry,
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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cmtpd: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Finds the configuration: `--config`, else `<data-dir>/cmtpd.toml`, else a
/// new one for `--domain` (written to the data directory when `write`).
fn resolve_config(cli: &Cli, domain: Option<&str>, write: bool) -> anyhow::Result<Config> {
    let path = cli
        .config
        .clone()
        .unwrap_or_else(|| cli.data_dir.join(CONFIG_FILE));
    if path.exists() {
        let mut cfg = Config::load(&path)?;
        if cli.config.is_none() {
            cfg.data_dir = cli.data_dir.clone();
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
    if cli.config.is_some() {
        bail!("configuration file {} does not exist", path.display());
    }
    let Some(domain) = domain else {
        bail!(
            "no configuration at {}: give --domain to create one (e.g. cmtpd run --domain example.org --data-dir {})",
            path.display(),
            cli.data_dir.display()
        );
    };
    let cfg = Config::new(
        Domain::parse(domain)
            .with_context(|| format!("--domain {domain}"))?
            .as_str(),
        &cli.data_dir,
    );
    cfg.validate()?;
    if write {
        let (p, _) = admin::write_config_if_missing(&cfg)?;
        eprintln!("cmtpd: wrote {}", p.display());
    }
    Ok(cfg)
}

fn existing_config(cli: &Cli) -> anyhow::Result<Config> {
    resolve_config(cli, None, false)
}

fn init_logs(cfg: &Config, format: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.log.level));
    let format = format.unwrap_or(&cfg.log.format);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        "json" => builder.json().init(),
        "human" => builder.init(),
        other => bail!("unknown log format {other:?} (human or json)"),
    }
    Ok(())
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Cmd::Run {
            domain,
            listen,
            log_format,
        } => {
            let mut cfg = resolve_config(&cli, domain.as_deref(), true)?;
            if !listen.is_empty() {
                cfg.listen = listen.clone();
            }
            init_logs(&cfg, log_format.as_deref())?;
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
            let server = cmtp_server::Server::start(cfg).await?;
            wait_for_signal().await?;
            server.shutdown().await;
            Ok(())
        }
        Cmd::Init { domain, host } => {
            let cfg = resolve_config(&cli, domain.as_deref(), true)?;
            let prepared = admin::prepare(&cfg).await?;
            println!("data directory: {}", cfg.data_dir.display());
            println!(
                "server key:     {} ({})",
                cfg.key_path().display(),
                if prepared.key_created {
                    "created"
                } else {
                    "existing"
                }
            );
            println!(
                "fingerprint:    {}",
                prepared.key.public().fingerprint_hex()
            );
            println!();
            let host = host
                .clone()
                .unwrap_or_else(|| format!("cmtp.{}", cfg.domain));
            print!("{}", admin::dns_records(&cfg, &prepared.key, &host));
            Ok(())
        }
        Cmd::User(u) => {
            let cfg = existing_config(&cli)?;
            let store = admin::prepare(&cfg).await?.store;
            match u {
                UserCmd::Invite { name, valid_hours } => {
                    let account =
                        Account::parse(name).with_context(|| format!("account name {name:?}"))?;
                    let hours = valid_hours.unwrap_or(cfg.accounts.invite_validity_hours);
                    let (token, expires) = admin::invite(&store, &account, hours * 3600).await?;
                    println!("{token}");
                    eprintln!(
                        "invite for {account}@{} valid until {}; register with:\n  cmtp register {account}@{} --invite {token}",
                        cfg.domain,
                        cmtp_server::state::rfc3339(expires),
                        cfg.domain
                    );
                    Ok(())
                }
                UserCmd::Add {
                    name,
                    password_file,
                } => {
                    let account =
                        Account::parse(name).with_context(|| format!("account name {name:?}"))?;
                    let password = match password_file {
                        Some(p) => admin::read_password_file(p)?,
                        None => prompt_new_password()?,
                    };
                    let fp = admin::add_user(
                        &cfg,
                        &store,
                        &account,
                        password.as_bytes(),
                        client_ksf(&cfg),
                    )
                    .await?;
                    println!("created {account}@{} (key fingerprint {fp})", cfg.domain);
                    Ok(())
                }
                UserCmd::List => {
                    let users = admin::list_users(&store).await?;
                    println!(
                        "{:<32} {:>9} {:>12}  created",
                        "account", "messages", "bytes"
                    );
                    for u in users {
                        println!(
                            "{:<32} {:>9} {:>12}  {}",
                            u.account,
                            u.messages,
                            u.bytes,
                            cmtp_server::state::rfc3339(u.created_at)
                        );
                    }
                    Ok(())
                }
                UserCmd::Delete { name, yes } => {
                    let account =
                        Account::parse(name).with_context(|| format!("account name {name:?}"))?;
                    if !yes
                        && !confirm(
                            &format!(
                                "Delete {account}@{} with all its mail and keys? Type the account name to confirm: ",
                                cfg.domain
                            ),
                            account.as_str(),
                        )?
                    {
                        bail!("not confirmed; nothing deleted");
                    }
                    if admin::delete_user(&store, &account).await? {
                        println!("deleted {account}@{}", cfg.domain);
                        Ok(())
                    } else {
                        bail!("no account {account}")
                    }
                }
            }
        }
        Cmd::Key(k) => {
            let cfg = existing_config(&cli)?;
            let path = cfg.key_path();
            match k {
                KeyCmd::Show => {
                    let key = cmtp_server::keyfile::load(&path)?;
                    println!("{}", key.public().fingerprint_hex());
                    eprintln!(
                        "_cmtpkey.{}. IN TXT \"v=cmtp1; k=ed25519; fp={}\"",
                        cfg.domain,
                        key.public().fingerprint_hex()
                    );
                }
                KeyCmd::Rotate => {
                    let (old, new) = cmtp_server::keyfile::rotate(
                        &path,
                        &cfg.domain(),
                        cmtp_server::state::now(),
                    )?;
                    println!("{}", new.fingerprint_hex());
                    eprintln!(
                        "rotated the key of {d}: {} -> {}\n\
                         restart cmtpd (every node) to use it; while peers catch up, publish both fingerprints:\n  \
                         _cmtpkey.{d}. IN TXT \"v=cmtp1; k=ed25519; fp={}\"\n  \
                         _cmtpkey.{d}. IN TXT \"v=cmtp1; k=ed25519; fp={}\"",
                        old.fingerprint_hex(),
                        new.fingerprint_hex(),
                        new.fingerprint_hex(),
                        old.fingerprint_hex(),
                        d = cfg.domain
                    );
                }
            }
            Ok(())
        }
        Cmd::Queue(q) => {
            let cfg = existing_config(&cli)?;
            let store = admin::prepare(&cfg).await?.store;
            match q {
                QueueCmd::List => {
                    let entries = admin::queue(&store).await?;
                    println!(
                        "{:>6} {:<28} {:<28} {:>9} {:>8}  next attempt / last error",
                        "id", "sender", "destination", "size", "attempts"
                    );
                    for e in &entries {
                        println!(
                            "{:>6} {:<28} {:<28} {:>9} {:>8}  {} / {}",
                            e.id,
                            format!("{}@{}", e.sender, cfg.domain),
                            e.destination,
                            e.size,
                            e.attempts,
                            cmtp_server::state::rfc3339(e.next_attempt_at),
                            e.last_error.as_deref().unwrap_or("-")
                        );
                    }
                    eprintln!("{} message(s) queued", entries.len());
                    Ok(())
                }
                QueueCmd::Retry => {
                    let n = admin::queue_retry(&store).await?;
                    println!(
                        "{n} message(s) due now; a running cmtpd picks them up within a second"
                    );
                    Ok(())
                }
            }
        }
    }
}

/// The Argon2id cost `user add` registers with: the configured floor, but
/// never less than RFC 9106's second recommendation unless the floor is lower
/// on purpose (tests).
fn client_ksf(cfg: &Config) -> KsfParams {
    cfg.accounts.ksf_floor()
}

fn prompt_new_password() -> anyhow::Result<zeroize::Zeroizing<String>> {
    let a = zeroize::Zeroizing::new(rpassword::prompt_password("New password: ")?);
    let b = zeroize::Zeroizing::new(rpassword::prompt_password("Repeat it: ")?);
    if *a != *b {
        bail!("the passwords differ");
    }
    Ok(a)
}

fn confirm(question: &str, expected: &str) -> anyhow::Result<bool> {
    eprint!("{question}");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim() == expected)
}

async fn wait_for_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        r = tokio::signal::ctrl_c() => { r?; tracing::info!("SIGINT received") }
    }
    Ok(())
}
