//! `cmtp-conform --target HOST:PORT [--domain D] [...]`: runs the rules of
//! docs/PROTOCOL.md against a CMTP server and prints one line per rule.
//!
//! Exit codes: 0 nothing failed; 1 at least one rule failed; 2 the target
//! could not be checked at all, or the command line is wrong.
#![forbid(unsafe_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use cmtp_conform::{Config, RULES, list_line, text_line, text_summary};
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::names::{Account, Domain};
use zeroize::Zeroizing;

/// Checks a CMTP server against docs/PROTOCOL.md from the outside.
///
/// Every rule runs on its own connection and prints one line: pass, FAIL
/// (with what was expected and what came) or not testable (with what it
/// needs). Rules that need credentials, a second domain or minutes of
/// waiting run only when given what they need.
#[derive(Parser, Debug)]
#[command(name = "cmtp-conform", version, about, long_about)]
struct Cli {
    /// The server to check.
    #[arg(long, value_name = "HOST:PORT", required_unless_present = "list")]
    target: Option<String>,
    /// The domain the server must serve (checks the banner and greeting name it).
    #[arg(long, value_name = "DOMAIN")]
    domain: Option<String>,
    /// The server key the server must have (64 hex digits).
    #[arg(long, value_name = "HEX")]
    key: Option<String>,
    /// An account on the server to log in as (with --password-file).
    #[arg(long, value_name = "ACCOUNT", requires = "password_file")]
    user: Option<String>,
    /// File whose first line is the password of --user.
    #[arg(long, value_name = "FILE", requires = "user")]
    password_file: Option<PathBuf>,
    /// An existing account on the server to address mail to (default: --user).
    #[arg(long, value_name = "ACCOUNT")]
    recipient: Option<String>,
    /// A domain the checker serves itself; the server must route it to --serve.
    #[arg(long, value_name = "DOMAIN", requires = "serve")]
    as_domain: Option<String>,
    /// Where the checker serves --as-domain.
    #[arg(long, value_name = "ADDR", requires = "as_domain")]
    serve: Option<SocketAddr>,
    /// File with the key of --as-domain (its seed in hex), created (mode 0600) if missing.
    /// Keep one: a server pins the key it first saw for a domain.
    #[arg(long, value_name = "FILE", requires = "as_domain")]
    as_key: Option<PathBuf>,
    /// A domain the server routes to an address where nothing answers.
    #[arg(long, value_name = "DOMAIN")]
    unreachable_domain: Option<String>,
    /// Also run the rules that wait for the server's timeouts (minutes with the defaults).
    #[arg(long)]
    slow: bool,
    /// Also provoke RATELIMITED (locks an unused account out of logins for the server's window).
    #[arg(long)]
    rate_limit: bool,
    /// The server's idle timeout, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    idle_timeout: u64,
    /// The server's command timeout, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    command_timeout: u64,
    /// The server's fixed allowance for a message after MAIL, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    data_grace: u64,
    /// The server's limit of consecutive bad commands.
    #[arg(long, value_name = "N", default_value_t = 10)]
    max_bad_commands: u32,
    /// The server's limit of connections per peer address.
    #[arg(long, value_name = "N", default_value_t = 128)]
    max_per_peer: u32,
    /// The server's hop limit.
    #[arg(long, value_name = "N", default_value_t = 30)]
    max_hops: u32,
    /// The server's limit of failed logins per account.
    #[arg(long, value_name = "N", default_value_t = 5)]
    login_limit: u32,
    /// How long a reply may take, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    timeout: u64,
    /// How long a relayed message may take to reach --as-domain, seconds.
    #[arg(long, value_name = "SECS", default_value_t = 30)]
    relay_wait: u64,
    /// Run only the rules whose section (4.2, §4) or name starts with this (repeatable).
    #[arg(long, value_name = "SECTION|NAME")]
    only: Vec<String>,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = Format::Text)]
    output: Format,
    /// Print the rules and exit.
    #[arg(long)]
    list: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One line per rule, then a summary.
    Text,
    /// One JSON document.
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cmtp-conform: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> anyhow::Result<ExitCode> {
    if cli.list {
        list(cli.output)?;
        return Ok(ExitCode::SUCCESS);
    }
    let cfg = config(&cli)?;
    let text = cli.output == Format::Text;
    let report = cmtp_conform::run(&cfg, |r| {
        if text {
            println!("{}", text_line(r));
            let _ = std::io::stdout().flush();
        }
    })?;
    if text {
        println!();
        println!(
            "{} against {} ({}, {}, key {})",
            report.checker, report.target, report.domain, report.software, report.fingerprint
        );
        if let Some(s) = &report.served_domain {
            println!("served domain: {s}");
        }
        println!("{}", text_summary(&report.summary));
    } else {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn list(format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text => {
            for r in RULES {
                println!("{}", list_line(r));
            }
        }
        Format::Json => {
            let rules: Vec<serde_json::Value> = RULES
                .iter()
                .map(|r| {
                    serde_json::json!({
                        "section": r.section,
                        "id": r.id,
                        "description": r.description,
                        "needs": r.needs,
                    })
                })
                .collect();
            println!("{}", serde_json::to_string_pretty(&rules)?);
        }
    }
    Ok(())
}

/// Loads the served domain's key from `path`, or makes one and saves it there.
fn served_key(path: &std::path::Path) -> anyhow::Result<IdentityKey> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let seed: Zeroizing<[u8; 32]> = Zeroizing::new(
                hex::decode(text.trim())
                    .ok()
                    .and_then(|b| b.try_into().ok())
                    .with_context(|| format!("{} does not hold 64 hex digits", path.display()))?,
            );
            Ok(IdentityKey::from_seed(&seed))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = IdentityKey::generate(&mut rand_core::OsRng);
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let text = Zeroizing::new(format!("{}\n", hex::encode(key.seed())));
            f.write_all(text.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(key)
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn config(cli: &Cli) -> anyhow::Result<Config> {
    let target = cli.target.clone().context("--target is required")?;
    let mut cfg = Config::new(target);
    let domain = |flag: &str, s: &Option<String>| -> anyhow::Result<Option<Domain>> {
        s.as_deref()
            .map(|d| Domain::parse(d).with_context(|| format!("{flag} {d}")))
            .transpose()
    };
    let account = |flag: &str, s: &Option<String>| -> anyhow::Result<Option<Account>> {
        s.as_deref()
            .map(|a| Account::parse(a).with_context(|| format!("{flag} {a}")))
            .transpose()
    };
    cfg.domain = domain("--domain", &cli.domain)?;
    cfg.as_domain = domain("--as-domain", &cli.as_domain)?;
    cfg.unreachable_domain = domain("--unreachable-domain", &cli.unreachable_domain)?;
    cfg.user = account("--user", &cli.user)?;
    cfg.recipient = account("--recipient", &cli.recipient)?;
    cfg.serve = cli.serve;
    if let Some(path) = &cli.as_key {
        cfg.as_key = Some(served_key(path)?);
    }
    if let Some(hex_key) = &cli.key {
        let bytes: [u8; 32] = hex::decode(hex_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .context("--key takes 64 hex digits")?;
        cfg.key =
            Some(PublicKey::from_bytes(&bytes).context("--key is not an Ed25519 public key")?);
    }
    if let Some(path) = &cli.password_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?,
        );
        let line = text.lines().next().unwrap_or("");
        if line.is_empty() {
            bail!("{} holds no password on its first line", path.display());
        }
        cfg.password = Some(Zeroizing::new(line.to_owned()));
    }
    cfg.slow = cli.slow;
    cfg.rate_limit = cli.rate_limit;
    cfg.timeouts.idle = Duration::from_secs(cli.idle_timeout);
    cfg.timeouts.command = Duration::from_secs(cli.command_timeout);
    cfg.timeouts.data_grace = Duration::from_secs(cli.data_grace);
    cfg.limits.max_bad_commands = cli.max_bad_commands.max(1);
    cfg.limits.max_per_peer = cli.max_per_peer;
    cfg.limits.max_hops = cli.max_hops;
    cfg.limits.login_failures_per_account = cli.login_limit;
    cfg.reply_timeout = Duration::from_secs(cli.timeout.max(1));
    cfg.relay_wait = Duration::from_secs(cli.relay_wait);
    cfg.only = cli.only.clone();
    Ok(cfg)
}
