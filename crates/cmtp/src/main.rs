//! `cmtp`: the user's command-line client for CMTP, end-to-end encrypted,
//! federated mail.
//!
//! A thin layer over [`cmtp_app`]: it parses arguments, asks for
//! passwords, opens the editor, prints tables or JSON, and maps errors to
//! exit codes (see [`EXIT_CODES`]). The home directory layout is described
//! in [`cmtp_app::home`] and in `cmtp --help`.
#![forbid(unsafe_code)]

/// `print!` that ends the program quietly (exit 0) when stdout is a closed
/// pipe (`cmtp inbox | head`), as `git log | head` does, instead of
/// panicking.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

/// `println!` that ends the program quietly when stdout is a closed pipe.
macro_rules! outln {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => {{
        $crate::output::write_stdout(format_args!($($arg)*));
        $crate::output::write_stdout(format_args!("\n"));
    }};
}

/// `eprintln!` that never panics (a closed stderr is ignored).
macro_rules! errln {
    () => { $crate::output::write_stderr(format_args!("\n")) };
    ($($arg:tt)*) => {{
        $crate::output::write_stderr(format_args!($($arg)*));
        $crate::output::write_stderr(format_args!("\n"));
    }};
}

mod commands;
mod kt_output;
mod output;
mod prompt;

use std::path::PathBuf;
use std::process::ExitCode;

pub(crate) use clap::CommandFactory;
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

Writing: `cmtp send bob@b.example`, `\"Bob <bob@b.example>, carol@c.example\"`,
a contact's alias, --cc, --bcc (a Bcc recipient's copy names only them; no
other copy names them). `reply`, `reply-all` and `forward` quote, thread and
keep attachments. Reading: `inbox` shows one line per thread, `thread ID` the
conversation, `search` finds words and from:/to:/subject:/after:/before:/date:
offline. Folders: `archive`, `move`, `delete` (to Trash, then for good),
`folders`. Contacts: `contacts`, and `verify ADDRESS` to compare the safety
number with that person; a contact's key that changes later is shown loudly.
`export --mbox FILE | --maildir DIR` writes standard RFC 5322 mail.

Home directory (--home DIR, $CMTP_HOME, default ~/.config/cmtp; mode 0700):
  config.toml     address = \"you@your.domain\"
                  name = \"Your Name\"               (optional; shown to recipients)
                  server = \"host:port\"          (optional; default: DNS)
                  [dns] nameservers = [\"ip:port\"], routes = { \"domain\" =
                        [\"host:port\"] }, timeout_ms, check_key_txt = true
                  [security.min_ksf] memory_kib, passes, lanes: the weakest
                        Argon2id cost accepted at login (default RFC 9106:
                        65536, 3, 4)
  identity.key    your identity key (mode 0600), written by register/login;
                  never printed
  known_domains   pinned server keys: domain, fingerprint, key, first seen
  mail.db         the local store (mode 0600): your synced mail, decrypted,
                  with each message's verification result; the outbox; the
                  drafts. `inbox`, `read` and `thread` work offline from it.
  smtp-allowed    contacts that may get mail by SMTP (NOT end-to-end
                  encrypted) when their domain has no CMTP service, one
                  address a line (mode 0600; `cmtp contact allow-smtp`)
                  with each message's verification result; its full-text
                  index; your contacts and their keys; the outbox; the
                  drafts. `inbox`, `read`, `thread` and `search` work
                  offline from it.
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
    /// registration), overriding [security.min_ksf]; for tests, hidden from
    /// help.
    #[arg(long, global = true, env = "CMTP_MIN_KSF", value_name = "MEMORY_KIB,PASSES,LANES",
          value_parser = cmtp_app::home::parse_ksf, hide = true)]
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

/// `cmtp contacts ...`.
#[derive(Subcommand, Debug)]
enum ContactsCmd {
    /// List your contacts with their keys, aliases and whether you verified them.
    List,
    /// Add a contact, or give one an alias (`cmtp send bob`) or a name.
    Add {
        /// The address, user@domain (or `Name <user@domain>`).
        address: String,
        /// A short name to write instead of the address.
        #[arg(long)]
        alias: Option<String>,
        /// The display name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Forget a contact (its alias and the key first seen).
    Remove {
        /// The address.
        address: String,
    },
}

/// Shells `cmtp completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    /// Bash.
    Bash,
    /// Zsh.
    Zsh,
    /// Fish.
    Fish,
}

/// What every command that writes a message takes besides its recipients.
#[derive(clap::Args, Debug, Clone)]
struct WriteOpts {
    /// Attach a file (repeatable).
    #[arg(long, short = 'a', value_name = "FILE")]
    attach: Vec<PathBuf>,
    /// Send unencrypted and unsigned (crypto system 0). Refused without this flag.
    #[arg(long)]
    plaintext: bool,
    /// Recipients whose domain has no CMTP service may be reached by
    /// SMTP: that copy is NOT end-to-end encrypted (your server sends
    /// it as ordinary, DKIM-signed mail). Without this flag (or
    /// `cmtp contact allow-smtp ADDRESS`) such a recipient is refused.
    #[arg(long)]
    allow_smtp: bool,
    /// Keep retrying (with backoff) this long while the server cannot be reached.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    retry_for: u64,
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

/// `cmtp contact ...`
#[derive(Subcommand, Debug)]
enum ContactCmd {
    /// Consent to SMTP (not end-to-end encrypted) for ADDRESS, whenever its
    /// domain has no CMTP service.
    AllowSmtp {
        /// The contact's address.
        address: String,
    },
    /// Withdraw that consent.
    DenySmtp {
        /// The contact's address.
        address: String,
    },
    /// Contacts that may get mail by SMTP.
    List,
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
        /// Recipients: `bob@b.example`, `"Bob <bob@b.example>"`, a contact's
        /// alias, or comma-separated lists of them (same as --to).
        #[arg(value_name = "RECIPIENT")]
        recipients: Vec<String>,
        /// A recipient or a comma-separated list (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
        /// A copy recipient, listed in every copy (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        cc: Vec<String>,
        /// A blind copy recipient: gets a copy that names only them; nobody
        /// else's copy names them (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        bcc: Vec<String>,
        /// The subject.
        #[arg(long, short = 's', default_value = "")]
        subject: String,
        #[command(flatten)]
        opts: WriteOpts,
    },
    /// Answer a message: to its sender, with `Re:`, the thread headers and
    /// the quoted text; your text comes from stdin, or $EDITOR on a terminal.
    Reply {
        /// The message id (from `cmtp inbox`).
        id: u64,
        /// Answer everyone: the sender and the other To recipients, the Cc
        /// recipients as Cc (never you, never anyone who got a blind copy).
        #[arg(long)]
        all: bool,
        /// Do not quote the message.
        #[arg(long)]
        no_quote: bool,
        #[command(flatten)]
        opts: WriteOpts,
    },
    /// Answer everyone (the same as `reply --all`).
    #[command(name = "reply-all")]
    ReplyAll {
        /// The message id.
        id: u64,
        /// Do not quote the message.
        #[arg(long)]
        no_quote: bool,
        #[command(flatten)]
        opts: WriteOpts,
    },
    /// Forward a message with its attachments (byte for byte) to other people.
    Forward {
        /// The message id.
        id: u64,
        /// Recipients (as for `send`).
        #[arg(value_name = "RECIPIENT")]
        recipients: Vec<String>,
        /// A recipient or a comma-separated list (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
        /// A copy recipient (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        cc: Vec<String>,
        /// A blind copy recipient (repeatable).
        #[arg(long, value_name = "ADDRESS")]
        bcc: Vec<String>,
        #[command(flatten)]
        opts: WriteOpts,
    },
    /// Per-contact settings: which recipients may get mail by SMTP (not
    /// end-to-end encrypted) when their domain has no CMTP service.
    Contact {
        #[command(subcommand)]
        action: ContactCmd,
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
        /// One line per message instead of one per thread.
        #[arg(long)]
        flat: bool,
    },
    /// Show a message (from the local store; fetched first if it is new).
    Read {
        /// The message id (from `cmtp inbox`).
        id: u64,
        /// Save the attachments into this folder (never outside it, never overwriting).
        #[arg(long, value_name = "DIR")]
        save_attachments: Option<PathBuf>,
    },
    /// Show the messages of a message's thread, oldest first, in every
    /// folder (threads follow In-Reply-To and References; older mail
    /// without them, its subject without Re:/Fwd:).
    Thread {
        /// A message id of the thread.
        id: u64,
    },
    /// Search your mail (the local store, offline): words in the sender,
    /// recipients, subject, text and attachment names, with filters
    /// from:ADDR-OR-NAME to:… subject:… after:YYYY-MM-DD before:YYYY-MM-DD
    /// date:YYYY-MM-DD folder:NAME; "quoted phrases"; word* for prefixes.
    Search {
        /// The query.
        #[arg(required = true, value_name = "QUERY")]
        query: Vec<String>,
        /// Most results (0: all).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Sync new mail first.
        #[arg(long)]
        sync: bool,
    },
    /// Move a message to another folder (Inbox, Archive, Trash, or any name).
    Move {
        /// The message id.
        id: u64,
        /// The folder.
        folder: String,
    },
    /// Move a message to the Archive folder.
    Archive {
        /// The message id.
        id: u64,
    },
    /// The folders of your mailbox with their message counts.
    Folders,
    /// Your contacts, their keys and aliases.
    Contacts {
        #[command(subcommand)]
        action: Option<ContactsCmd>,
    },
    /// Show the safety number you and ADDRESS compare out of band (side by
    /// side, or read aloud); once they match, mark the contact verified.
    Verify {
        /// The address, user@domain (or a contact's alias).
        address: String,
        /// The numbers match: mark the contact verified without asking
        /// (needed when there is no terminal to ask on).
        #[arg(long)]
        yes: bool,
    },
    /// Export your mail as standard RFC 5322 / MIME messages for other
    /// programs: an mbox file, or a Maildir. A header X-CMTP-Signature
    /// records whether each sender's signature verified.
    #[command(group(clap::ArgGroup::new("format").required(true).args(["mbox", "maildir"])))]
    Export {
        /// Write one mbox file (mboxrd); it must not exist yet.
        #[arg(long, value_name = "FILE")]
        mbox: Option<PathBuf>,
        /// Write a Maildir (Inbox at its top, other folders as .Sent, .Archive, …).
        #[arg(long, value_name = "DIR")]
        maildir: Option<PathBuf>,
        /// Only this folder.
        #[arg(long)]
        folder: Option<String>,
    },
    /// Print a shell completion script (bash, zsh or fish).
    Completions {
        /// The shell.
        shell: Shell,
    },
    /// Write man pages (cmtp.1 and one per command) into a folder.
    Man {
        /// The folder (created if missing).
        #[arg(value_name = "DIR")]
        dir: PathBuf,
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
    /// Delete a message: it goes to the Trash folder first; deleting it
    /// there (or with --permanently) removes it for good.
    Delete {
        /// The message id.
        id: u64,
        /// Remove it for good now, wherever it is.
        #[arg(long)]
        permanently: bool,
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
    /// Change your password (your key stays the same; the old password stops
    /// working). Asks for the current password first.
    Passwd {
        /// Read the new password from the first line of this file instead of asking.
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// Read the current password from the first line of this file
        /// instead of asking.
        #[arg(long, value_name = "FILE")]
        current_password_file: Option<PathBuf>,
    },
    /// Set up: register with an invite or log in (asks questions on a terminal).
    Setup,
}

/// Whether the raw arguments ask for JSON output (for errors that come
/// before the arguments are parsed).
fn json_requested(args: &[std::ffi::OsString]) -> bool {
    let args: Vec<String> = args
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    args.iter().enumerate().any(|(n, a)| {
        a == "-ojson"
            || a == "--output=json"
            || ((a == "-o" || a == "--output") && args.get(n + 1).is_some_and(|v| v == "json"))
    })
}

/// The word for an exit code in JSON errors.
fn exit_kind(code: u8) -> &'static str {
    match code {
        exit::USAGE => "usage",
        exit::AUTH => "auth",
        exit::UNAVAILABLE => "unavailable",
        exit::VERIFICATION => "verification",
        exit::NOT_FOUND => "not-found",
        exit::TOO_BIG => "too-big",
        _ => "other",
    }
}

/// Prints an error as people or scripts read it: `cmtp: error: …` on
/// stderr, or with `-o json` one JSON document on stderr:
/// `{"error": {"message": …, "exit_code": N, "kind": …}}`.
fn report_error(json: bool, message: &str, code: u8) {
    if json {
        let doc = serde_json::json!({
            "error": {
                "message": message,
                "exit_code": code,
                "kind": exit_kind(code),
            }
        });
        errln!("{doc}");
    } else {
        errln!("cmtp: error: {message}");
    }
}

fn main() -> ExitCode {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let json = json_requested(&args);
    let cli = match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(e)
            if json
                && !matches!(
                    e.kind(),
                    clap::error::ErrorKind::DisplayHelp
                        | clap::error::ErrorKind::DisplayVersion
                        | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
                ) =>
        {
            let text = e.render().to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            report_error(true, first, exit::USAGE);
            return ExitCode::from(exit::USAGE);
        }
        Err(e) => {
            // Help and version go to stdout (a closed pipe ends quietly);
            // usage errors to stderr, exit 2.
            let code = e.exit_code();
            if e.use_stderr() {
                let _ = e.print();
            } else {
                out!("{}", e.render());
            }
            return ExitCode::from(u8::try_from(code).unwrap_or(exit::USAGE));
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("cmtp: error: cannot start the runtime: {e}");
            return ExitCode::from(exit::OTHER);
        }
    };
    let json = cli.output == Output::Json;
    match rt.block_on(commands::run(cli)) {
        Ok(code) => {
            output::flush_stdout();
            ExitCode::from(code)
        }
        Err(e) => {
            output::flush_stdout();
            let code = exit_code(&e);
            report_error(json, &format!("{e:#}"), code);
            ExitCode::from(code)
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
