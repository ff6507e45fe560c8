//! `cmtp`: the user's command-line client for CMTP, end-to-end encrypted,
//! federated mail.
//!
//! A thin layer over [`cmtp_app`]: it parses arguments, asks for
//! passwords, opens the editor, prints tables or JSON, and maps errors to
//! exit codes (see [`EXIT_CODES`]). The home directory layout is described
//! in [`cmtp_app::home`] and in `cmtp --help`.
#![forbid(unsafe_code)]

mod commands;
mod kt_output;
mod output;
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use cmtp_app::failure::ErrorKind;
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
    /// The message is larger than the server accepts; nothing was sent
    /// (it is kept as a draft).
    pub const TOO_BIG: u8 = 7;
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
  6  not found: no such message or user
  7  the message is larger than your server accepts (its greeting says how
     large); nothing of it was sent, and it is kept as a draft

A message that could not be sent now (exit 4) stays in the outbox and is sent
by `cmtp outbox flush` (or at the next `send` or `inbox`): it is sealed once
and always sent as the same bytes, so it is delivered exactly once.";

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
  mail.db         the local store (mode 0600): your synced mail, decrypted,
                  with each message's verification result; the outbox; the
                  drafts. `inbox`, `read` and `thread` work offline from it.
  cache/keys/     verified key statements";

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
          value_parser = cmtp_app::home::parse_ksf)]
    min_ksf: Option<KsfParams>,
    #[command(subcommand)]
    command: Option<Cmd>,
}

/// `cmtp outbox ...`.
#[derive(Subcommand, Debug)]
enum OutboxCmd {
    /// List the messages waiting, with the last error.
    List,
    /// Send every message waiting now (the same sealed bytes as before).
    Flush,
}

/// `cmtp key ...`.
#[derive(Subcommand, Debug)]
enum KeyCmd {
    /// Your own key's history in your domain's key directory, checked
    /// against the directory's proof; warns about any key this device does
    /// not hold (also done at every login).
    History,
}

/// `cmtp draft ...`.
#[derive(Subcommand, Debug)]
enum DraftCmd {
    /// Write a new draft: in $EDITOR (To, Cc, Subject, then the text) on a
    /// terminal, else the text from stdin.
    New {
        /// A recipient (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
        /// A copy recipient (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        cc: Vec<String>,
        /// The subject.
        #[arg(long, short = 's', default_value = "")]
        subject: String,
        /// Attach a file (repeatable).
        #[arg(long, short = 'a', value_name = "FILE")]
        attach: Vec<PathBuf>,
    },
    /// Resume a draft in $EDITOR (the header block and the text).
    Edit {
        /// The draft id.
        id: u64,
    },
    /// List the drafts.
    List,
    /// Send a draft (through the outbox) and remove it.
    Send {
        /// The draft id.
        id: u64,
        /// Keep retrying (with backoff) this long while the server cannot be reached.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        retry_for: u64,
    },
    /// Delete a draft.
    Delete {
        /// The draft id.
        id: u64,
    },
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
    ///
    /// The message is saved in the outbox first; if it cannot be sent now it
    /// stays there (exit 4) and `cmtp outbox flush` sends it, exactly once.
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
        /// Keep retrying (with backoff) this long while the server cannot be reached.
        #[arg(long, value_name = "SECONDS", default_value_t = 10)]
        retry_for: u64,
    },
    /// List a folder of your mailbox (Inbox by default), newest first, after
    /// syncing new mail; shows unread marks and whether each sender verified.
    /// Works offline on what was synced.
    Inbox {
        /// The folder (Inbox, Sent, ...).
        #[arg(long, default_value = "Inbox")]
        folder: String,
        /// How many messages per page (0: all).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Which page (1: the newest).
        #[arg(long, default_value_t = 1)]
        page: u64,
        /// Do not contact the server: show what was synced.
        #[arg(long)]
        offline: bool,
    },
    /// Show a message (from the local store; fetched first if it is new).
    Read {
        /// The message id (from `cmtp inbox`).
        id: u64,
        /// Save the attachments into this folder (never outside it, never overwriting).
        #[arg(long, value_name = "DIR")]
        save_attachments: Option<PathBuf>,
    },
    /// Show the messages of a message's thread (same subject without Re:/Fwd:), oldest first.
    Thread {
        /// A message id of the thread.
        id: u64,
    },
    /// Messages waiting to be sent.
    Outbox {
        #[command(subcommand)]
        action: Option<OutboxCmd>,
    },
    /// Unfinished messages: write, resume, send.
    Draft {
        #[command(subcommand)]
        action: DraftCmd,
    },
    /// Delete a message from your mailbox.
    Delete {
        /// The message id.
        id: u64,
    },
    /// Show someone's key: statement, fingerprint, who signed it, validity,
    /// pin, and whether its domain's key directory proves it.
    /// `cmtp key history`: every key your domain's directory ever published
    /// for you.
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Key {
        /// The address, user@domain.
        #[arg(required = true)]
        address: Option<String>,
        #[command(subcommand)]
        action: Option<KeyCmd>,
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
        if let Some(c) = cause.downcast_ref::<cmtp_app::Error>() {
            return match c.kind() {
                ErrorKind::Usage => exit::USAGE,
                ErrorKind::TooBig => exit::TOO_BIG,
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
