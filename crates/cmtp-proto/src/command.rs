//! Commands: framing, incremental decoding and encoding (PROTOCOL.md §4 "Commands").
//!
//! A command is an ASCII word terminated by NUL, then the word's string
//! arguments, each UTF-8 terminated by NUL, then — for the commands that carry
//! one — a binary payload ("blob") as a u32 length and that many bytes:
//!
//! ```text
//! KEYREQUEST\0alice\0example.org\0
//! LOGIN\0alice\0<u32 96><96 bytes>
//! ```
//!
//! [`decode_command`] is incremental: `Ok(None)` means more bytes are needed,
//! and the result only depends on the bytes, never on how they were split.
//!
//! ```
//! use cmtp_proto::command::{decode_command, Command};
//! let (cmd, used) = decode_command(b"NOOP\0OBAI\0").unwrap().unwrap();
//! assert_eq!((cmd, used), (Command::Noop, 5));
//! assert_eq!(decode_command(b"KEYREQ").unwrap(), None);
//! ```

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::limits::{MAX_COMMAND_BLOB, MAX_FIELD, MAX_INVITE, MAX_WORD};
use crate::names::{Account, Domain, NameError};
use crate::payload::mailbox::{Folder, MAX_FLAG_IDS, MAX_PAGE};
use crate::wire::{put_blob32, put_str};

/// Size of OPAQUE's first login message (KE1).
pub const KE1_LEN: usize = 96;
/// Size of OPAQUE's last login message (KE3).
pub const KE3_LEN: usize = 64;
/// Size of an OPAQUE registration request.
pub const REGISTRATION_REQUEST_LEN: usize = 32;

/// A decoded command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `OHAI`: greeting; the reply describes the server.
    Ohai,
    /// `MAIL`: a message follows (see [`crate::message`]).
    Mail,
    /// `KEYREQUEST user domain`: a key statement. `user` `None` asks for the
    /// server's own key; `domain` `None` means the server's own domain.
    KeyRequest {
        /// The account, or `None` (empty argument) for the server's key.
        user: Option<Account>,
        /// The domain, or `None` (empty argument) for the server's domain.
        domain: Option<Domain>,
    },
    /// `NOOP`: prompts a reply.
    Noop,
    /// `LOGIN user` + KE1: opens an OPAQUE login.
    Login {
        /// The local account logging in.
        user: Account,
        /// OPAQUE KE1 (96 bytes).
        ke1: Vec<u8>,
    },
    /// `HELP`: human-readable help.
    Help,
    /// `OBAI`: graceful close.
    Obai,
    /// `LOGINFINISH` + KE3: completes the OPAQUE login.
    LoginFinish {
        /// OPAQUE KE3 (64 bytes).
        ke3: Vec<u8>,
    },
    /// `REGISTER user invite` + registration request: opens a registration.
    Register {
        /// The account to create.
        user: Account,
        /// The invite token (empty under open registration).
        invite: String,
        /// OPAQUE registration request (32 bytes).
        request: Vec<u8>,
    },
    /// `RESET user token` + registration request: opens the replacement of a
    /// forgotten password and its identity key with a one-time token from
    /// the administrator (`cmtpd user reset`), PROTOCOL.md §12.6.
    Reset {
        /// The account whose credentials are replaced.
        user: Account,
        /// The reset token (same alphabet and limit as an invite token).
        token: String,
        /// OPAQUE registration request (32 bytes).
        request: Vec<u8>,
    },
    /// `REGFINISH` + registration bundle: completes a registration, a
    /// password change or a reset.
    RegFinish {
        /// The encoded [`crate::payload::RegistrationBundle`].
        bundle: Vec<u8>,
    },
    /// `PASSWORD` + registration request: opens a password change (logged in).
    Password {
        /// OPAQUE registration request (32 bytes).
        request: Vec<u8>,
    },
    /// `KEYLOGIN user` + signature: logs a device in with the identity key it
    /// recovered at an earlier LOGIN.
    KeyLogin {
        /// The local account logging in.
        user: Account,
        /// Signature by the identity key over the connection nonce and address (64 bytes).
        signature: Vec<u8>,
    },
    /// `LIST`: the logged-in user's mailbox.
    List,
    /// `FETCH id`: one message of the mailbox.
    Fetch {
        /// Mailbox id.
        id: u64,
    },
    /// `DELETE id`: removes one message from the mailbox.
    Delete {
        /// Mailbox id.
        id: u64,
    },
    /// `LISTPAGE before limit`: up to `limit` message summaries with ids
    /// below `before` (0: from the newest), newest first (PROTOCOL.md §13.3).
    ListPage {
        /// Only ids below this one; 0 for the newest messages.
        before: u64,
        /// Most entries wanted (1 to [`MAX_PAGE`]).
        limit: u32,
    },
    /// `CHANGES since limit`: every arrival, flag or folder change and
    /// removal after modification sequence `since`, oldest first (§13.4).
    Changes {
        /// The highest modseq the client has seen (0: none).
        since: u64,
        /// Most changes wanted (1 to [`MAX_PAGE`]).
        limit: u32,
    },
    /// `FLAGS set clear` + ids: sets and clears flag bits of messages (§13.5).
    Flags {
        /// Bits to set.
        set: u32,
        /// Bits to clear (disjoint from `set`).
        clear: u32,
        /// Per-user message ids (1 to [`MAX_FLAG_IDS`]).
        ids: Vec<u64>,
    },
    /// `MOVE folder` + ids: files messages of the mailbox into another
    /// folder (§13.7).
    Move {
        /// Where to file them.
        folder: Folder,
        /// Per-user message ids (1 to [`MAX_FLAG_IDS`]).
        ids: Vec<u64>,
    },
    /// `APPEND folder flags`, then a message (§7) follows, as after MAIL:
    /// files a message of the logged-in user's own (a copy of sent mail)
    /// into a folder of their mailbox (§13.6).
    Append {
        /// Where to file it.
        folder: Folder,
        /// Its initial flag bits.
        flags: u32,
    },
    /// `KEYPROOF user domain`: a user's key statement with its proof in
    /// the domain's key directory (PROTOCOL.md §20.5); `domain` `None`
    /// means the server's own domain.
    KeyProof {
        /// The account.
        user: Account,
        /// The domain, or `None` (empty argument) for the server's domain.
        domain: Option<Domain>,
    },
    /// `KTHEAD epoch`: the server's signed epoch head with its
    /// cosignatures (§20.6); `None` (empty argument): the newest.
    KtHead {
        /// The epoch, or `None` for the newest.
        epoch: Option<u64>,
    },
    /// `KTAUDIT from to`: the heads after `from` up to `to` and the
    /// directory's append-only proof between them (§20.6).
    KtAudit {
        /// The epoch the auditor has.
        from: u64,
        /// The epoch it wants (`from < to ≤ from + 16`).
        to: u64,
    },
    /// `KTWITNESS domain`: asks this server to witness `domain`'s newest
    /// epoch head (§20.7).
    KtWitness {
        /// The domain to witness.
        domain: Domain,
    },
    /// `KTEVIDENCE domain`: the proof of misbehaviour this server holds
    /// against `domain`, if any (§20.7).
    KtEvidence {
        /// The domain.
        domain: Domain,
    },
    /// `KTHISTORY`: the history of the logged-in account's key in the
    /// directory, with its proof (§20.8).
    KtHistory,
}

/// What a command word takes after it.
#[derive(Debug, Clone, Copy)]
struct Shape {
    args: usize,
    /// `Some((min, max))` when a blob follows the arguments.
    blob: Option<(usize, usize)>,
}

fn shape(word: &[u8]) -> Option<Shape> {
    let s = |args, blob| Some(Shape { args, blob });
    match word {
        b"OHAI" | b"MAIL" | b"NOOP" | b"HELP" | b"OBAI" | b"LIST" | b"KTHISTORY" => s(0, None),
        b"KEYPROOF" | b"KTAUDIT" => s(2, None),
        b"KTHEAD" | b"KTWITNESS" | b"KTEVIDENCE" => s(1, None),
        b"KEYREQUEST" => s(2, None),
        b"LOGIN" => s(1, Some((KE1_LEN, KE1_LEN))),
        b"LOGINFINISH" => s(0, Some((KE3_LEN, KE3_LEN))),
        b"KEYLOGIN" => s(1, Some((64, 64))),
        b"REGISTER" => s(
            2,
            Some((REGISTRATION_REQUEST_LEN, REGISTRATION_REQUEST_LEN)),
        ),
        b"RESET" => s(
            2,
            Some((REGISTRATION_REQUEST_LEN, REGISTRATION_REQUEST_LEN)),
        ),
        b"REGFINISH" => s(0, Some((1, MAX_COMMAND_BLOB))),
        b"PASSWORD" => s(
            0,
            Some((REGISTRATION_REQUEST_LEN, REGISTRATION_REQUEST_LEN)),
        ),
        b"FETCH" | b"DELETE" => s(1, None),
        b"LISTPAGE" | b"CHANGES" | b"APPEND" => s(2, None),
        b"FLAGS" => s(2, Some((8, MAX_FLAG_IDS * 8))),
        b"MOVE" => s(1, Some((8, MAX_FLAG_IDS * 8))),
        _ => None,
    }
}

/// The SMTP verbs a CMTP server recognises in order to refuse them in SMTP's
/// own format (PROTOCOL.md §16 "SMTP coexistence").
pub const SMTP_VERBS: &[&str] = &[
    "HELO", "EHLO", "MAIL", "RCPT", "DATA", "BDAT", "RSET", "VRFY", "EXPN", "QUIT", "STARTTLS",
    "AUTH", "ETRN", "TURN", "ATRN", "NOOP", "HELP",
];

/// Why a command could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No NUL within the first 17 bytes: the word is over 16 bytes.
    #[error("command word longer than {MAX_WORD} bytes")]
    WordTooLong,
    /// A well-framed word that is not a CMTP command.
    #[error("unknown command {0:?}")]
    UnknownCommand(String),
    /// The peer speaks SMTP.
    #[error("SMTP command {0} sent to a CMTP server")]
    SmtpVerb(&'static str),
    /// An argument has no NUL within 256 bytes.
    #[error("argument {index} longer than {MAX_FIELD} bytes")]
    ArgumentTooLong {
        /// 0-based argument position.
        index: usize,
    },
    /// An argument is not UTF-8.
    #[error("argument {index} is not valid UTF-8")]
    InvalidUtf8 {
        /// 0-based argument position.
        index: usize,
    },
    /// An argument is well-framed but invalid (a bad name, a bad number).
    #[error("argument {index}: {reason}")]
    BadArgument {
        /// 0-based argument position.
        index: usize,
        /// What is wrong with it.
        reason: String,
    },
    /// The blob's announced length is over the limit for this command.
    #[error("payload of {len} bytes exceeds {max}")]
    BlobTooLarge {
        /// Announced length.
        len: u64,
        /// The command's limit.
        max: usize,
    },
    /// The blob's length is not what this command takes.
    #[error("payload of {len} bytes, this command takes {min} to {max}")]
    BlobWrongSize {
        /// Announced length.
        len: usize,
        /// Least accepted.
        min: usize,
        /// Most accepted.
        max: usize,
    },
}

/// A command that could not be decoded, and where the next one starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{kind}")]
pub struct CommandDecodeError {
    /// What went wrong.
    pub kind: CommandError,
    /// `Some(n)`: the framing is intact and the next command starts `n`
    /// bytes in; `None`: the framing is lost and the connection must close.
    pub resume_at: Option<usize>,
}

impl CommandDecodeError {
    fn fatal(kind: CommandError) -> Self {
        CommandDecodeError {
            kind,
            resume_at: None,
        }
    }
    fn skip(kind: CommandError, n: usize) -> Self {
        CommandDecodeError {
            kind,
            resume_at: Some(n),
        }
    }
}

/// Recognises an SMTP command line: an SMTP verb (any case) followed by a
/// space, tab, CR or LF. (A NUL-terminated word is CMTP framing: an unknown
/// word gets BADCOMMAND like any other.)
pub(crate) fn smtp_verb(buf: &[u8]) -> Option<&'static str> {
    SMTP_VERBS.iter().copied().find(|verb| {
        let v = verb.as_bytes();
        buf.len() > v.len()
            && buf[..v.len()].eq_ignore_ascii_case(v)
            && matches!(buf[v.len()], b' ' | b'\t' | b'\r' | b'\n')
    })
}

/// Decodes one command from the front of `buf`.
///
/// Returns `Ok(Some((command, consumed)))`, `Ok(None)` when `buf` holds only
/// the beginning of a command, or an error saying whether the framing survived.
pub fn decode_command(buf: &[u8]) -> Result<Option<(Command, usize)>, CommandDecodeError> {
    let window = &buf[..buf.len().min(MAX_WORD + 1)];
    if let Some(verb) = smtp_verb(window) {
        return Err(CommandDecodeError::fatal(CommandError::SmtpVerb(verb)));
    }
    let Some(word_len) = window.iter().position(|&b| b == 0) else {
        return if buf.len() > MAX_WORD {
            Err(CommandDecodeError::fatal(CommandError::WordTooLong))
        } else {
            Ok(None)
        };
    };
    let word = &buf[..word_len];
    let mut pos = word_len + 1;
    let Some(shape) = shape(word) else {
        return Err(CommandDecodeError::skip(
            CommandError::UnknownCommand(String::from_utf8_lossy(word).into_owned()),
            pos,
        ));
    };

    let mut args: Vec<&[u8]> = Vec::with_capacity(shape.args);
    for index in 0..shape.args {
        let rest = &buf[pos..];
        let limit = rest.len().min(MAX_FIELD + 1);
        match rest[..limit].iter().position(|&b| b == 0) {
            Some(n) => {
                args.push(&rest[..n]);
                pos += n + 1;
            }
            None if rest.len() > MAX_FIELD => {
                return Err(CommandDecodeError::fatal(CommandError::ArgumentTooLong {
                    index,
                }));
            }
            None => return Ok(None),
        }
    }

    let mut blob: &[u8] = &[];
    if let Some((min, max)) = shape.blob {
        let Some(len_bytes) = buf.get(pos..pos + 4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes(len_bytes.try_into().expect("4 bytes")) as usize;
        if len > MAX_COMMAND_BLOB {
            return Err(CommandDecodeError::fatal(CommandError::BlobTooLarge {
                len: len as u64,
                max: MAX_COMMAND_BLOB,
            }));
        }
        let Some(b) = buf.get(pos + 4..pos + 4 + len) else {
            return Ok(None);
        };
        pos += 4 + len;
        if len < min || len > max {
            return Err(CommandDecodeError::skip(
                CommandError::BlobWrongSize { len, min, max },
                pos,
            ));
        }
        blob = b;
    }

    let mut strs: Vec<&str> = Vec::with_capacity(args.len());
    for (index, a) in args.iter().enumerate() {
        match std::str::from_utf8(a) {
            Ok(s) => strs.push(s),
            Err(_) => {
                return Err(CommandDecodeError::skip(
                    CommandError::InvalidUtf8 { index },
                    pos,
                ));
            }
        }
    }
    build(word, &strs, blob)
        .map(|c| Some((c, pos)))
        .map_err(|kind| CommandDecodeError::skip(kind, pos))
}

fn bad(index: usize, e: impl ToString) -> CommandError {
    CommandError::BadArgument {
        index,
        reason: e.to_string(),
    }
}

fn optional<T>(
    index: usize,
    s: &str,
    parse: impl Fn(&str) -> Result<T, NameError>,
) -> Result<Option<T>, CommandError> {
    if s.is_empty() {
        Ok(None)
    } else {
        parse(s).map(Some).map_err(|e| bad(index, e))
    }
}

fn message_id(index: usize, s: &str) -> Result<u64, CommandError> {
    let canonical = !s.is_empty()
        && s.len() <= 20
        && s.bytes().all(|b| b.is_ascii_digit())
        && (s == "0" || !s.starts_with('0'));
    if !canonical {
        return Err(bad(
            index,
            "a message id is a decimal number without leading zeros",
        ));
    }
    s.parse().map_err(|_| bad(index, "message id out of range"))
}

fn decimal_u32(index: usize, s: &str, what: &str) -> Result<u32, CommandError> {
    let n = message_id(index, s).map_err(|_| {
        bad(
            index,
            format!("{what} is a decimal number without leading zeros"),
        )
    })?;
    u32::try_from(n).map_err(|_| bad(index, format!("{what} out of range")))
}

fn page_limit(index: usize, s: &str) -> Result<u32, CommandError> {
    let n = decimal_u32(index, s, "a limit")?;
    if n == 0 || n as usize > MAX_PAGE {
        return Err(bad(index, format!("a limit is 1 to {MAX_PAGE}")));
    }
    Ok(n)
}

fn flag_ids(blob: &[u8]) -> Result<Vec<u64>, CommandError> {
    if !blob.len().is_multiple_of(8) {
        return Err(bad(2, "the ids are a multiple of 8 bytes"));
    }
    Ok(blob
        .chunks_exact(8)
        .map(|c| u64::from_be_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

fn invite_token(index: usize, s: &str) -> Result<String, CommandError> {
    let ok = s.len() <= MAX_INVITE
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(s.to_owned())
    } else {
        Err(bad(
            index,
            "an invite token is up to 128 characters of A-Z a-z 0-9 - _",
        ))
    }
}

fn build(word: &[u8], args: &[&str], blob: &[u8]) -> Result<Command, CommandError> {
    let account = |i: usize| Account::parse(args[i]).map_err(|e| bad(i, e));
    Ok(match word {
        b"OHAI" => Command::Ohai,
        b"MAIL" => Command::Mail,
        b"NOOP" => Command::Noop,
        b"HELP" => Command::Help,
        b"OBAI" => Command::Obai,
        b"LIST" => Command::List,
        b"KEYREQUEST" => Command::KeyRequest {
            user: optional(0, args[0], Account::parse)?,
            domain: optional(1, args[1], Domain::parse)?,
        },
        b"LOGIN" => Command::Login {
            user: account(0)?,
            ke1: blob.to_vec(),
        },
        b"LOGINFINISH" => Command::LoginFinish { ke3: blob.to_vec() },
        b"KEYLOGIN" => Command::KeyLogin {
            user: account(0)?,
            signature: blob.to_vec(),
        },
        b"REGISTER" => Command::Register {
            user: account(0)?,
            invite: invite_token(1, args[1])?,
            request: blob.to_vec(),
        },
        b"RESET" => Command::Reset {
            user: account(0)?,
            token: invite_token(1, args[1])?,
            request: blob.to_vec(),
        },
        b"REGFINISH" => Command::RegFinish {
            bundle: blob.to_vec(),
        },
        b"PASSWORD" => Command::Password {
            request: blob.to_vec(),
        },
        b"FETCH" => Command::Fetch {
            id: message_id(0, args[0])?,
        },
        b"DELETE" => Command::Delete {
            id: message_id(0, args[0])?,
        },
        b"LISTPAGE" => Command::ListPage {
            before: message_id(0, args[0])?,
            limit: page_limit(1, args[1])?,
        },
        b"CHANGES" => Command::Changes {
            since: message_id(0, args[0])?,
            limit: page_limit(1, args[1])?,
        },
        b"FLAGS" => {
            let set = decimal_u32(0, args[0], "a flag set")?;
            let clear = decimal_u32(1, args[1], "a flag set")?;
            if set & clear != 0 {
                return Err(bad(1, "a flag cannot be both set and cleared"));
            }
            Command::Flags {
                set,
                clear,
                ids: flag_ids(blob)?,
            }
        }
        b"MOVE" => Command::Move {
            folder: Folder::parse(args[0]).map_err(|e| bad(0, e))?,
            ids: flag_ids(blob)?,
        },
        b"APPEND" => Command::Append {
            folder: Folder::parse(args[0]).map_err(|e| bad(0, e))?,
            flags: decimal_u32(1, args[1], "a flag set")?,
        },
        b"KEYPROOF" => Command::KeyProof {
            user: account(0)?,
            domain: optional(1, args[1], Domain::parse)?,
        },
        b"KTHEAD" => {
            Command::KtHead {
                epoch: if args[0].is_empty() {
                    None
                } else {
                    Some(message_id(0, args[0]).map_err(|_| {
                        bad(0, "an epoch is a decimal number without leading zeros")
                    })?)
                },
            }
        }
        b"KTAUDIT" => {
            let epoch = |i: usize| {
                message_id(i, args[i])
                    .map_err(|_| bad(i, "an epoch is a decimal number without leading zeros"))
            };
            let (from, to) = (epoch(0)?, epoch(1)?);
            if to <= from || to - from > crate::kt::MAX_AUDIT_SPAN {
                return Err(bad(
                    1,
                    format!("an audit spans 1 to {} epochs", crate::kt::MAX_AUDIT_SPAN),
                ));
            }
            Command::KtAudit { from, to }
        }
        b"KTWITNESS" => Command::KtWitness {
            domain: Domain::parse(args[0]).map_err(|e| bad(0, e))?,
        },
        b"KTEVIDENCE" => Command::KtEvidence {
            domain: Domain::parse(args[0]).map_err(|e| bad(0, e))?,
        },
        b"KTHISTORY" => Command::KtHistory,
        _ => unreachable!("shape() knows only these words"),
    })
}

impl Command {
    /// The command word.
    pub fn word(&self) -> &'static str {
        match self {
            Command::Ohai => "OHAI",
            Command::Mail => "MAIL",
            Command::KeyRequest { .. } => "KEYREQUEST",
            Command::Noop => "NOOP",
            Command::Login { .. } => "LOGIN",
            Command::Help => "HELP",
            Command::Obai => "OBAI",
            Command::LoginFinish { .. } => "LOGINFINISH",
            Command::KeyLogin { .. } => "KEYLOGIN",
            Command::Register { .. } => "REGISTER",
            Command::Reset { .. } => "RESET",
            Command::RegFinish { .. } => "REGFINISH",
            Command::Password { .. } => "PASSWORD",
            Command::List => "LIST",
            Command::Fetch { .. } => "FETCH",
            Command::Delete { .. } => "DELETE",
            Command::ListPage { .. } => "LISTPAGE",
            Command::Changes { .. } => "CHANGES",
            Command::Flags { .. } => "FLAGS",
            Command::Move { .. } => "MOVE",
            Command::Append { .. } => "APPEND",
            Command::KeyProof { .. } => "KEYPROOF",
            Command::KtHead { .. } => "KTHEAD",
            Command::KtAudit { .. } => "KTAUDIT",
            Command::KtWitness { .. } => "KTWITNESS",
            Command::KtEvidence { .. } => "KTEVIDENCE",
            Command::KtHistory => "KTHISTORY",
        }
    }

    /// Appends the command's wire form to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, self.word());
        match self {
            Command::KeyRequest { user, domain } => {
                put_str(out, user.as_ref().map_or("", |u| u.as_str()));
                put_str(out, domain.as_ref().map_or("", |d| d.as_str()));
            }
            Command::Login { user, ke1 } => {
                put_str(out, user.as_str());
                put_blob32(out, ke1);
            }
            Command::LoginFinish { ke3 } => put_blob32(out, ke3),
            Command::KeyLogin { user, signature } => {
                put_str(out, user.as_str());
                put_blob32(out, signature);
            }
            Command::Register {
                user,
                invite,
                request,
            }
            | Command::Reset {
                user,
                token: invite,
                request,
            } => {
                put_str(out, user.as_str());
                put_str(out, invite);
                put_blob32(out, request);
            }
            Command::RegFinish { bundle } => put_blob32(out, bundle),
            Command::Password { request } => put_blob32(out, request),
            Command::Fetch { id } | Command::Delete { id } => put_str(out, &id.to_string()),
            Command::ListPage { before, limit } => {
                put_str(out, &before.to_string());
                put_str(out, &limit.to_string());
            }
            Command::Changes { since, limit } => {
                put_str(out, &since.to_string());
                put_str(out, &limit.to_string());
            }
            Command::Flags { set, clear, ids } => {
                put_str(out, &set.to_string());
                put_str(out, &clear.to_string());
                put_blob32(out, &crate::payload::mailbox::encode_ids(ids));
            }
            Command::Move { folder, ids } => {
                put_str(out, folder.as_str());
                put_blob32(out, &crate::payload::mailbox::encode_ids(ids));
            }
            Command::Append { folder, flags } => {
                put_str(out, folder.as_str());
                put_str(out, &flags.to_string());
            }
            Command::KeyProof { user, domain } => {
                put_str(out, user.as_str());
                put_str(out, domain.as_ref().map_or("", |d| d.as_str()));
            }
            Command::KtHead { epoch } => {
                put_str(out, &epoch.map_or(String::new(), |e| e.to_string()))
            }
            Command::KtAudit { from, to } => {
                put_str(out, &from.to_string());
                put_str(out, &to.to_string());
            }
            Command::KtWitness { domain } | Command::KtEvidence { domain } => {
                put_str(out, domain.as_str())
            }
            Command::KtHistory => {}
            Command::Ohai
            | Command::Mail
            | Command::Noop
            | Command::Help
            | Command::Obai
            | Command::List => {}
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Whether the command needs a logged-in session (PROTOCOL.md §13):
    /// without one it is answered `AUTHREQUIRED`.
    pub fn needs_login(&self) -> bool {
        matches!(
            self,
            Command::Password { .. }
                | Command::List
                | Command::Fetch { .. }
                | Command::Delete { .. }
                | Command::ListPage { .. }
                | Command::Changes { .. }
                | Command::Flags { .. }
                | Command::Move { .. }
                | Command::Append { .. }
                | Command::KtHistory
        )
    }

    /// Whether the command is one of key transparency's (PROTOCOL.md §20):
    /// `KEYPROOF`, `KTHEAD`, `KTAUDIT`, `KTWITNESS`, `KTEVIDENCE`,
    /// `KTHISTORY`.
    pub fn is_transparency(&self) -> bool {
        matches!(
            self,
            Command::KeyProof { .. }
                | Command::KtHead { .. }
                | Command::KtAudit { .. }
                | Command::KtWitness { .. }
                | Command::KtEvidence { .. }
                | Command::KtHistory
        )
    }

    /// Whether a message (§7) follows the command on the wire: `MAIL` and
    /// `APPEND`.
    pub fn carries_message(&self) -> bool {
        matches!(self, Command::Mail | Command::Append { .. })
    }

    /// Whether the seed's stateless interface defines this command (the
    /// others are extensions that may need a logged-in session).
    pub fn is_seed(&self) -> bool {
        matches!(
            self,
            Command::Ohai
                | Command::Mail
                | Command::KeyRequest { .. }
                | Command::Noop
                | Command::Login { .. }
                | Command::Help
                | Command::Obai
        )
    }
}

/// The digest that binds a reply to the request it answers: SHA-256 of the
/// command's exact bytes (for MAIL, of `MAIL\0` alone). Replies to input that
/// could not be framed use 32 zero bytes.
pub fn request_digest(frame: &[u8]) -> [u8; 32] {
    Sha256::digest(frame).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn one(buf: &[u8]) -> Command {
        let (c, n) = decode_command(buf).unwrap().unwrap();
        assert_eq!(n, buf.len(), "consumed");
        c
    }

    fn err(buf: &[u8]) -> CommandDecodeError {
        decode_command(buf).unwrap_err()
    }

    #[test]
    fn keyrequest_with_both_arguments() {
        assert_eq!(
            one(b"KEYREQUEST\0alice\0example.org\0"),
            Command::KeyRequest {
                user: Some(Account::parse("alice").unwrap()),
                domain: Some(Domain::parse("example.org").unwrap()),
            }
        );
    }

    #[test]
    fn keyrequest_with_empty_arguments_asks_for_defaults() {
        assert_eq!(
            one(b"KEYREQUEST\0\0\0"),
            Command::KeyRequest {
                user: None,
                domain: None
            }
        );
    }

    #[test]
    fn a_word_of_sixteen_bytes_is_framed_seventeen_is_too_long() {
        let e = err(b"ABCDEFGHIJKLMNOP\0");
        assert_eq!(
            e.kind,
            CommandError::UnknownCommand("ABCDEFGHIJKLMNOP".into())
        );
        assert_eq!(e.resume_at, Some(17));
        let e = err(b"ABCDEFGHIJKLMNOPQ\0");
        assert_eq!(e, CommandDecodeError::fatal(CommandError::WordTooLong));
        assert_eq!(decode_command(b"ABCDEFGHIJKLMNOP").unwrap(), None);
    }

    #[test]
    fn an_argument_of_255_bytes_is_framed_256_is_too_long() {
        let mut ok = b"FETCH\0".to_vec();
        ok.extend(std::iter::repeat_n(b'1', 255));
        ok.push(0);
        assert!(matches!(
            err(&ok).kind,
            CommandError::BadArgument { index: 0, .. }
        ));
        let mut long = b"KEYREQUEST\0".to_vec();
        long.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(
            err(&long),
            CommandDecodeError::fatal(CommandError::ArgumentTooLong { index: 0 })
        );
    }

    #[test]
    fn smtp_verbs_are_recognised() {
        for (input, verb) in [
            (&b"EHLO client.example\r\n"[..], "EHLO"),
            (b"helo x\r\n", "HELO"),
            (b"QUIT\r\n", "QUIT"),
            (b"MAIL FROM:<a@b>\r\n", "MAIL"),
            (b"NOOP\r\n", "NOOP"),
            (b"QUIT\n", "QUIT"),
        ] {
            assert_eq!(err(input).kind, CommandError::SmtpVerb(verb), "{input:?}");
        }
        assert_eq!(one(b"NOOP\0"), Command::Noop);
        assert_eq!(
            err(b"EHLO\0").kind,
            CommandError::UnknownCommand("EHLO".into())
        );
        assert_eq!(one(b"MAIL\0"), Command::Mail);
    }

    #[test]
    fn invalid_names_keep_the_framing() {
        let e = err(b"KEYREQUEST\0../etc\0a.test\0NOOP\0");
        assert!(matches!(e.kind, CommandError::BadArgument { index: 0, .. }));
        assert_eq!(e.resume_at, Some(25));
        let e = err(b"KEYREQUEST\0a/b\0\0");
        assert!(matches!(e.kind, CommandError::BadArgument { index: 0, .. }));
        let e = err(b"KEYREQUEST\0bob\0a..b\0");
        assert!(matches!(e.kind, CommandError::BadArgument { index: 1, .. }));
    }

    #[test]
    fn invalid_utf8_keeps_the_framing() {
        let e = err(b"KEYREQUEST\0\xff\xfe\0\0");
        assert_eq!(e.kind, CommandError::InvalidUtf8 { index: 0 });
        assert_eq!(e.resume_at, Some(15));
    }

    #[test]
    fn blob_lengths_are_checked_before_the_bytes_arrive() {
        let mut b = b"LOGIN\0alice\0".to_vec();
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            err(&b),
            CommandDecodeError::fatal(CommandError::BlobTooLarge {
                len: u64::from(u32::MAX),
                max: MAX_COMMAND_BLOB
            })
        );
        let mut b = b"LOGINFINISH\0".to_vec();
        b.extend_from_slice(&3u32.to_be_bytes());
        b.extend_from_slice(b"abc");
        let e = err(&b);
        assert_eq!(
            e.kind,
            CommandError::BlobWrongSize {
                len: 3,
                min: 64,
                max: 64
            }
        );
        assert_eq!(e.resume_at, Some(b.len()));
    }

    #[test]
    fn message_ids_are_canonical_decimals() {
        assert_eq!(one(b"FETCH\x000\0"), Command::Fetch { id: 0 });
        assert_eq!(
            one(b"DELETE\x0018446744073709551615\0"),
            Command::Delete { id: u64::MAX }
        );
        for bad in [
            &b"FETCH\0\0"[..],
            b"FETCH\x0001\0",
            b"FETCH\0-1\0",
            b"FETCH\x0018446744073709551616\0",
            b"FETCH\0 1\0",
        ] {
            assert!(
                matches!(err(bad).kind, CommandError::BadArgument { .. }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn an_invite_token_over_128_bytes_is_refused() {
        let mut b = b"REGISTER\0alice\0".to_vec();
        b.extend(std::iter::repeat_n(b'a', 129));
        b.push(0);
        b.extend_from_slice(&32u32.to_be_bytes());
        b.extend_from_slice(&[0; 32]);
        assert!(matches!(
            err(&b).kind,
            CommandError::BadArgument { index: 1, .. }
        ));
        let mut ok = b"REGISTER\0alice\0".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 128));
        ok.push(0);
        ok.extend_from_slice(&32u32.to_be_bytes());
        ok.extend_from_slice(&[0; 32]);
        assert!(matches!(one(&ok), Command::Register { .. }));
    }

    #[test]
    fn invite_tokens_are_restricted() {
        let mut b = b"REGISTER\0alice\0tok en\0".to_vec();
        b.extend_from_slice(&32u32.to_be_bytes());
        b.extend_from_slice(&[0; 32]);
        assert!(matches!(
            err(&b).kind,
            CommandError::BadArgument { index: 1, .. }
        ));
    }

    #[test]
    fn mailbox_sync_commands_check_their_arguments() {
        assert_eq!(
            one(b"LISTPAGE\x000\x00100\0"),
            Command::ListPage {
                before: 0,
                limit: 100
            }
        );
        assert_eq!(
            one(b"CHANGES\x0042\x001000\0"),
            Command::Changes {
                since: 42,
                limit: 1000
            }
        );
        for bad in [
            &b"LISTPAGE\x000\x000\0"[..],
            b"LISTPAGE\x000\x001001\0",
            b"CHANGES\0x\x001\0",
            b"APPEND\0 Sent\x000\0",
            b"APPEND\0Sent\x004294967296\0",
        ] {
            assert!(
                matches!(err(bad).kind, CommandError::BadArgument { .. }),
                "{bad:?}"
            );
        }
        let mut b = b"MOVE\0Archive\0".to_vec();
        b.extend_from_slice(&16u32.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        b.extend_from_slice(&9u64.to_be_bytes());
        assert_eq!(
            one(&b),
            Command::Move {
                folder: Folder::parse("Archive").unwrap(),
                ids: vec![7, 9]
            }
        );
        assert!(one(&b).needs_login());
        for bad in [&b"MOVE\0 Trash\0"[..], b"MOVE\0Tr\x01sh\0"] {
            let mut b = bad.to_vec();
            b.extend_from_slice(&8u32.to_be_bytes());
            b.extend_from_slice(&1u64.to_be_bytes());
            assert!(
                matches!(err(&b).kind, CommandError::BadArgument { index: 0, .. }),
                "{bad:?}"
            );
        }
        let mut b = b"MOVE\0Trash\0".to_vec();
        b.extend_from_slice(&12u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        assert!(matches!(err(&b).kind, CommandError::BadArgument { .. }));
        let mut b = b"FLAGS\x001\x001\0".to_vec();
        b.extend_from_slice(&8u32.to_be_bytes());
        b.extend_from_slice(&7u64.to_be_bytes());
        assert!(matches!(
            err(&b).kind,
            CommandError::BadArgument { index: 1, .. }
        ));
        let mut b = b"FLAGS\x001\x000\0".to_vec();
        b.extend_from_slice(&12u32.to_be_bytes());
        b.extend_from_slice(&[0; 12]);
        assert!(matches!(
            err(&b).kind,
            CommandError::BadArgument { index: 2, .. }
        ));
        assert!(one(b"APPEND\0Sent\x001\0").carries_message());
        assert!(!one(b"LIST\0").carries_message());
    }

    #[test]
    fn unknown_commands_keep_the_framing() {
        let e = err(b"FOO\0NOOP\0");
        assert_eq!(e.kind, CommandError::UnknownCommand("FOO".into()));
        assert_eq!(e.resume_at, Some(4));
    }

    pub(crate) fn arb_command() -> impl Strategy<Value = Command> {
        let account = "[a-z][a-z0-9]{0,10}".prop_map(|s| Account::parse(&s).unwrap());
        let domain = "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}".prop_map(|s| Domain::parse(&s).unwrap());
        let bytes = |n: usize| proptest::collection::vec(any::<u8>(), n);
        prop_oneof![
            Just(Command::Ohai),
            Just(Command::Mail),
            Just(Command::Noop),
            Just(Command::Help),
            Just(Command::Obai),
            Just(Command::List),
            (
                proptest::option::of(account.clone()),
                proptest::option::of(domain.clone())
            )
                .prop_map(|(user, domain)| Command::KeyRequest { user, domain }),
            (account.clone(), bytes(KE1_LEN)).prop_map(|(user, ke1)| Command::Login { user, ke1 }),
            bytes(KE3_LEN).prop_map(|ke3| Command::LoginFinish { ke3 }),
            (account.clone(), bytes(64))
                .prop_map(|(user, signature)| Command::KeyLogin { user, signature }),
            (
                account.clone(),
                "[A-Za-z0-9_-]{0,40}",
                bytes(REGISTRATION_REQUEST_LEN)
            )
                .prop_map(|(user, invite, request)| Command::Register {
                    user,
                    invite,
                    request
                }),
            (
                account.clone(),
                "[A-Za-z0-9_-]{0,40}",
                bytes(REGISTRATION_REQUEST_LEN)
            )
                .prop_map(|(user, token, request)| Command::Reset {
                    user,
                    token,
                    request
                }),
            proptest::collection::vec(any::<u8>(), 1..600)
                .prop_map(|bundle| Command::RegFinish { bundle }),
            bytes(REGISTRATION_REQUEST_LEN).prop_map(|request| Command::Password { request }),
            any::<u64>().prop_map(|id| Command::Fetch { id }),
            any::<u64>().prop_map(|id| Command::Delete { id }),
            (any::<u64>(), 1..=MAX_PAGE as u32)
                .prop_map(|(before, limit)| Command::ListPage { before, limit }),
            (any::<u64>(), 1..=MAX_PAGE as u32)
                .prop_map(|(since, limit)| Command::Changes { since, limit }),
            (any::<u32>(), proptest::collection::vec(any::<u64>(), 1..20)).prop_map(
                |(set, ids)| Command::Flags {
                    set: set & 0xff,
                    clear: !set & 0xff00,
                    ids
                }
            ),
            (
                "[A-Za-z][A-Za-z0-9 ]{0,20}[A-Za-z0-9]",
                proptest::collection::vec(any::<u64>(), 1..20)
            )
                .prop_map(|(f, ids)| Command::Move {
                    folder: Folder::parse(&f).unwrap(),
                    ids
                }),
            ("[A-Za-z][A-Za-z0-9 ]{0,20}[A-Za-z0-9]", any::<u32>()).prop_map(|(f, flags)| {
                Command::Append {
                    folder: Folder::parse(&f).unwrap(),
                    flags,
                }
            }),
            (account.clone(), proptest::option::of(domain.clone()))
                .prop_map(|(user, domain)| Command::KeyProof { user, domain }),
            proptest::option::of(any::<u64>()).prop_map(|epoch| Command::KtHead { epoch }),
            (0..u64::MAX - 16, 1..=16u64)
                .prop_map(|(from, n)| Command::KtAudit { from, to: from + n }),
            domain
                .clone()
                .prop_map(|domain| Command::KtWitness { domain }),
            domain.prop_map(|domain| Command::KtEvidence { domain }),
            Just(Command::KtHistory),
        ]
    }

    #[test]
    fn transparency_commands_are_framed_and_checked() {
        assert_eq!(
            one(b"KEYPROOF\0bob\0b.example\0"),
            Command::KeyProof {
                user: Account::parse("bob").unwrap(),
                domain: Some(Domain::parse("b.example").unwrap())
            }
        );
        assert_eq!(one(b"KTHEAD\0\0"), Command::KtHead { epoch: None });
        assert_eq!(one(b"KTHEAD\x0012\0"), Command::KtHead { epoch: Some(12) });
        assert_eq!(
            one(b"KTAUDIT\x003\x0019\0"),
            Command::KtAudit { from: 3, to: 19 }
        );
        assert!(one(b"KTHISTORY\0").needs_login());
        assert!(!one(b"KEYPROOF\0bob\0\0").needs_login());
        for bad in [
            &b"KEYPROOF\0\0b.example\0"[..],
            b"KTHEAD\x0001\0",
            b"KTAUDIT\x003\x003\0",
            b"KTAUDIT\x003\x0020\0",
            b"KTAUDIT\x005\x003\0",
            b"KTWITNESS\0\0",
            b"KTEVIDENCE\0a..b\0",
        ] {
            assert!(
                matches!(err(bad).kind, CommandError::BadArgument { .. }),
                "{bad:?}"
            );
        }
        // §16: no new word is an SMTP verb
        for w in [
            "KEYPROOF",
            "KTHEAD",
            "KTAUDIT",
            "KTWITNESS",
            "KTEVIDENCE",
            "KTHISTORY",
        ] {
            assert!(!SMTP_VERBS.contains(&w));
            assert!(w.len() <= MAX_WORD);
        }
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(cmd in arb_command()) {
            let bytes = cmd.to_bytes();
            let (back, used) = decode_command(&bytes).unwrap().unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(back, cmd);
        }

        #[test]
        fn every_proper_prefix_needs_more_bytes(cmd in arb_command()) {
            let bytes = cmd.to_bytes();
            for cut in 0..bytes.len() {
                prop_assert_eq!(decode_command(&bytes[..cut]).unwrap(), None, "cut at {}", cut);
            }
        }

        #[test]
        fn a_stream_decodes_the_same_however_it_is_split(
            cmds in proptest::collection::vec(arb_command(), 1..6),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..8),
        ) {
            let stream: Vec<u8> = cmds.iter().flat_map(|c| c.to_bytes()).collect();
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut buf = Vec::new();
            let mut fed = 0;
            let mut got = Vec::new();
            for p in points {
                buf.extend_from_slice(&stream[fed..p]);
                fed = p;
                while let Some((c, n)) = decode_command(&buf).unwrap() {
                    got.push(c);
                    buf.drain(..n);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got, cmds);
        }

        #[test]
        fn arbitrary_bytes_never_panic_and_consume_within_bounds(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            match decode_command(&bytes) {
                Ok(Some((_, n))) => prop_assert!(n <= bytes.len()),
                Err(CommandDecodeError { resume_at: Some(n), .. }) => prop_assert!(n <= bytes.len()),
                _ => {}
            }
        }
    }
}
