//! `cmtp`: the user's command-line client for CMTP, end-to-end encrypted,
//! federated mail.
//!
//! A thin layer over [`cmtp_client`]: it parses arguments, asks for
//! passwords, prints tables or JSON, and maps errors to exit codes (see
//! [`EXIT_CODES`]). The home directory layout is described in
//! [`cmtp_client::home`] and in `cmtp --help`.
#![forbid(unsafe_code)]

mod commands;
mod output;
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cmtp_client::failure::ErrorKind;
use cmtp_proto::crypto::opaque::KsfParams;

/// Exit codes, as `cmtp --help` documents them.
pub mod exit {
    /// Success.
    pub const OK: u8 = 0;
    /// Any other error.
    pub const OTHER: u8 = 1;
    /// Usage: bad arguments, or no account set up yet.
    pub const USAGE: u8 = 2;
    /// Authentication failed: wrong password or unknown user, a device key
    /// no longer accepted, too many failed attempts.
    pub const AUTH: u8 = 3;
    /// The server is unreachable, not a CMTP server, or failed temporarily.
    pub const UNAVAILABLE: u8 = 4;
    /// A key changed without a rotation statement, or a signature,
    /// statement, receipt or decryption did not verify.
    pub const VERIFICATION: u8 = 5;
    /// No such message or user.
    pub const NOT_FOUND: u8 = 6;
}

/// The exit code table shown by `cmtp --help`.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error
  2  usage: bad arguments, or no account set up yet
  3  authentication failed: wrong password or unknown user, device key refused,
     too many failed attempts (rate limited)
  4  server unreachable, not a CMTP server (e.g. SMTP), or temporary failure
  5  a key changed without a rotation statement, or a signature, key statement,
     receipt or decryption did not verify (also: `read` of a message whose
     sender is NOT VERIFIED)
  6  not found: no such message or user";

const LONG_ABOUT: &str = "\
cmtp: end-to-end encrypted, federated mail (CMTP/1).

Keys stay out of sight: `cmtp register` creates your identity key and stores it,
sealed under your password, on your server; `cmtp login` recovers it on any
device with nothing but the password. Mail is sealed to each recipient's key and
signed with yours; `cmtp inbox` and `cmtp read` show whether each sender's
signature verified.

Your server is found through DNS (SRV _cmtp._tcp, then MX, then A, port 9001)
unless --server or `server` in config.toml names it. Server keys are pinned on
first use (like SSH); a key that changes without a signed rotation statement is
refused.

Home directory (--home DIR, $CMTP_HOME, default ~/.config/cmtp; mode 0700):
  config.toml     address = \"you@your.domain\"
                  server = \"host:port\"          (optional; default: DNS)
                  [dns] nameservers = [\"ip:port\"], routes = { \"domain\" =
                        [\"host:port\"] }, timeout_ms, check_key_txt = true
                  [security.min_ksf] memory_kib, passes, lanes: the weakest
                        Argon2id cost accepted at login (default RFC 9106:
                        65536, 3, 4; --min-ksf or $CMTP_MIN_KSF override it)
  identity.key    your identity key (mode 0600), written by register/login;
                  never printed
  known_domains   pinned server keys: domain, fingerprint, key, first seen
  cache/          messages/ (files named by message hash) and keys/ (key
                  statements)";

#[derive(Parser, Debug)]
#[command(
    name = "cmtp",
    version,
    about = "End-to-end encrypted, federated mail (CMTP)",
    long_about = LONG_ABOUT,
    after_help = "Run `cmtp --help` for the home directory layout and exit codes.",
    after_long_help = EXIT_CODES
)]
struct Cli {
    /// Home directory (configuration, identity key, pinned keys, cache).
    #[arg(long, global = true, env = "CMTP_HOME", value_name = "DIR")]
    home: Option<PathBuf>,
    /// Output format for commands that print data.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// Your server as host:port, instead of DNS (saved by register/login).
    #[arg(long, global = true, env = "CMTP_SERVER", value_name = "HOST:PORT")]
    server: Option<String>,
    /// Weakest Argon2id cost accepted at login (and used at least at
    /// registration), overriding [security.min_ksf]; for tests.
    #[arg(long, global = true, env = "CMTP_MIN_KSF", value_name = "MEMORY_KIB,PASSES,LANES",
          value_parser = cmtp_client::home::parse_ksf)]
    min_ksf: Option<KsfParams>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Create your account with an invite token from your server's administrator.
    Register {
        /// Your new address, user@domain.
        address: String,
        /// The invite token (`cmtpd user invite NAME` prints it).
        #[arg(long)]
        invite: String,
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Forgot your password? Choose a new one with a reset token from your
    /// administrator (`cmtpd user reset`). You get a NEW identity key: mail
    /// sealed to the old key stays readable only where the old key is kept
    /// (another device, or identity.key.old-* in this home).
    Reset {
        /// Your address, user@domain.
        address: String,
        /// The reset token from your administrator.
        #[arg(long)]
        token: String,
        /// Read the new password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Log in with your password (on a new device: recovers your key).
    Login {
        /// Your address, user@domain.
        address: String,
        /// Read the password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Send a message; the text comes from stdin, or $EDITOR on a terminal.
    Send {
        /// A recipient (repeatable).
        #[arg(long, value_name = "ADDRESS", required = true)]
        to: Vec<String>,
        /// A copy recipient, listed in every copy (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        cc: Vec<String>,
        /// The subject.
        #[arg(long, short = 's', default_value = "")]
        subject: String,
        /// Attach a file (repeatable).
        #[arg(long, short = 'a', value_name = "FILE")]
        attach: Vec<PathBuf>,
        /// Send unencrypted and unsigned (crypto system 0). Refused without this flag.
        #[arg(long)]
        plaintext: bool,
    },
    /// List your mailbox, fetching new messages; shows whether each sender verified.
    Inbox,
    /// Show a message.
    Read {
        /// The message id (from `cmtp inbox`).
        id: u64,
        /// Save the attachments into this folder (never outside it, never overwriting).
        #[arg(long, value_name = "DIR")]
        save_attachments: Option<PathBuf>,
    },
    /// Delete a message from your mailbox.
    Delete {
        /// The message id.
        id: u64,
    },
    /// Show someone's key: statement, fingerprint, who signed it, validity, pin.
    Key {
        /// The address, user@domain.
        address: String,
    },
    /// Change your password (your key stays the same; the old password stops working).
    Passwd {
        /// Read the new password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
    },
    /// Set up: register with an invite or log in (asks questions on a terminal).
    Setup,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cmtp: error: cannot start the runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("cmtp: error: {e:#}");
            ExitCode::from(exit_code(&e))
        }
    }
}

/// The exit code for an error (see [`EXIT_CODES`]).
fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<cmtp_client::Error>() {
            return match c.kind() {
                ErrorKind::Usage => exit::USAGE,
                ErrorKind::Auth => exit::AUTH,
                ErrorKind::Unavailable => exit::UNAVAILABLE,
                ErrorKind::Verification => exit::VERIFICATION,
                ErrorKind::NotFound => exit::NOT_FOUND,
                _ => exit::OTHER,
            };
        }
        if cause.is::<commands::UsageError>() {
            return exit::USAGE;
        }
    }
    exit::OTHER
}
