//! `cmtp-bench`: a load generator for cmtpd and the source of the numbers in
//! docs/BENCHMARKS.md.
//!
//! Each scenario is a subcommand. By default it starts its own server as a
//! separate process (`cmtp-bench serve`, the same code as `cmtpd run`) on a
//! throwaway data directory, so that /proc shows the server's memory and CPU
//! time alone; `--target ADDR` aims at a running server instead. Messages
//! are built and sealed before the clock starts. `--repeat N` runs the
//! scenario N times (a fresh server each time) and prints the median and the
//! spread; `--json FILE` writes everything for comparisons.
#![forbid(unsafe_code)]

mod abuse;
mod bigmail;
mod client;
mod conn;
mod crypto;
mod dns;
mod handshake;
mod idle;
mod keyrequest;
mod mail;
mod procfs;
mod relay;
mod report;
mod server;
mod setup;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::report::{Report, Run};
use crate::server::ServerOpts;

/// Load generator and benchmark report for cmtpd.
#[derive(Parser, Debug)]
#[command(name = "cmtp-bench", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

/// Options of every scenario.
#[derive(Args, Debug, Clone)]
struct Common {
    /// Write the results (every run, median, min, max) as JSON to this file.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Run the scenario this many times, each on a fresh server; print the
    /// median and the spread.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    #[command(flatten)]
    server: ServerOpts,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Local delivery with durable SUCCESS: C connections send M messages of S bytes.
    Mail {
        #[command(flatten)]
        args: mail::MailArgs,
        #[command(flatten)]
        common: Common,
    },
    /// KEYREQUEST answers per second, one at a time and pipelined.
    Keyrequest {
        #[command(flatten)]
        args: keyrequest::KeyRequestArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Full TLS handshakes per second and server CPU per handshake, with
    /// and without the post-quantum group.
    Handshake {
        #[command(flatten)]
        args: handshake::HandshakeArgs,
        #[command(flatten)]
        common: Common,
    },
    /// N idle connections after OHAI: the server's memory, and a NOOP on a new connection.
    Idle {
        #[command(flatten)]
        args: idle::IdleArgs,
        #[command(flatten)]
        common: Common,
    },
    /// K connections each stream one large message: the server's peak memory.
    Bigmail {
        #[command(flatten)]
        args: bigmail::BigMailArgs,
        #[command(flatten)]
        common: Common,
    },
    /// End to end through two servers: a.test's submission to b.test's mailboxes.
    Relay {
        #[command(flatten)]
        args: relay::RelayArgs,
        #[command(flatten)]
        common: Common,
    },
    /// The mail program: initial sync of M messages, then `inbox` with N new (time, bytes).
    Client {
        #[command(flatten)]
        args: client::ClientArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Ed25519, sealed boxes and SHA-256 on one core (the hardware limits).
    Crypto {
        #[command(flatten)]
        args: crypto::CryptoArgs,
        /// Write the results as JSON to this file.
        #[arg(long, value_name = "FILE")]
        json: Option<PathBuf>,
        /// Run this many times.
        #[arg(long, default_value_t = 1)]
        repeat: usize,
    },
    /// A stranger's attack (drip connections, abandoned uploads, LOGIN
    /// spam) while a legitimate user logs in and sends.
    Abuse {
        #[command(flatten)]
        args: abuse::AbuseArgs,
        #[command(flatten)]
        common: Common,
    },
    /// Run the server on a data directory (what the scenarios start).
    #[command(hide = true)]
    Serve {
        /// The data directory holding cmtpd.toml.
        #[arg(long)]
        data_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Cmd::Serve { data_dir } = &cli.command {
        return match server::serve(data_dir) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cmtp-bench serve: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmtp-bench: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(real_main(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cmtp-bench: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// Runs `one` `repeat` times and reports.
async fn repeat<F>(
    scenario: &str,
    params: serde_json::Value,
    repeat: usize,
    json: Option<&PathBuf>,
    mut one: F,
) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<Run>,
{
    let mut report = Report {
        scenario: scenario.to_owned(),
        params,
        runs: Vec::new(),
    };
    let n = repeat.max(1);
    for i in 0..n {
        if n > 1 {
            eprintln!("cmtp-bench {scenario}: run {} of {n}", i + 1);
        }
        report.runs.push(one().await?);
    }
    report.print();
    if let Some(path) = json {
        let value = report.to_json(&procfs::Machine::probe());
        std::fs::write(path, serde_json::to_string_pretty(&value)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

async fn real_main(cli: Cli) -> anyhow::Result<()> {
    procfs::raise_nofile();
    match cli.command {
        Cmd::Mail { args, common } => {
            repeat(
                "mail",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || mail::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Keyrequest { args, common } => {
            repeat(
                "keyrequest",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || keyrequest::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Handshake { args, common } => {
            repeat(
                "handshake",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || handshake::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Idle { args, common } => {
            repeat(
                "idle",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || idle::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Bigmail { args, common } => {
            repeat(
                "bigmail",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || bigmail::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Relay { args, common } => {
            repeat(
                "relay",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || relay::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Client { args, common } => {
            repeat(
                "client",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || client::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Abuse { args, common } => {
            repeat(
                "abuse",
                args.params(),
                common.repeat,
                common.json.as_ref(),
                async || abuse::run(&common.server, &args).await,
            )
            .await
        }
        Cmd::Crypto {
            args,
            json,
            repeat: n,
        } => {
            repeat("crypto", args.params(), n, json.as_ref(), async || {
                tokio::task::block_in_place(|| crypto::run(&args))
            })
            .await
        }
        Cmd::Serve { .. } => unreachable!("handled before the runtime starts"),
    }
}
