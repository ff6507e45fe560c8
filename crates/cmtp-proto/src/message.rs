//! The CMTP message format, version 0 and 1 (PROTOCOL.md §7 "Messages").
//!
//! ```text
//! u32 version | u32 attachment count | u64 log length | u64 body length
//! destination account NUL | destination domain NUL | source account NUL | source domain NUL
//! log (log length bytes) | body (body length bytes)
//! attachment count × (u64 length | bytes)
//! trailer: 64-byte Ed25519 signature of the source domain's server
//! ```
//!
//! [`MessageReader`] reads a message as a stream with bounded memory: the
//! envelope first (so a server can refuse before the body arrives), then the
//! log, body and attachments as chunks, then the trailer together with the
//! message hash. Every announced length is checked against [`MessageLimits`]
//! before anything is read or allocated, with checked arithmetic.
//!
//! The message hash — the message's identity for de-duplication and what the
//! trailer signs — is SHA-256 over the message without its log and without
//! the log length (relays append to the log):
//!
//! ```text
//! u32 version | u32 attachment count | u64 body length | the four names with their NULs
//! | body | attachment count × (u64 length | bytes)
//! ```

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::limits::{MAX_FIELD, MESSAGE_HEADER_LEN, MessageLimits, TRAILER_LEN};
use crate::names::{Account, Address, Domain, NameError};
use crate::wire::{put_str, put_u32, put_u64};

/// Crypto system 0: body and attachments in plaintext.
pub const VERSION_PLAINTEXT: u32 = 0;
/// Crypto system 1: X25519 sealed boxes and Ed25519 signatures.
pub const VERSION_SEALED: u32 = 1;

/// The source of a message: a user, or (account absent) the domain's server
/// itself, which sends DELIVERYFAILURE notices.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Source {
    /// The sending account; `None` for the server itself.
    pub account: Option<Account>,
    /// The source domain.
    pub domain: Domain,
}

impl Source {
    /// A user's address as a source.
    pub fn user(address: Address) -> Self {
        Source {
            account: Some(address.account),
            domain: address.domain,
        }
    }

    /// The server of `domain` as a source.
    pub fn server(domain: Domain) -> Self {
        Source {
            account: None,
            domain,
        }
    }

    /// The user's address, if the source is a user.
    pub fn address(&self) -> Option<Address> {
        self.account
            .as_ref()
            .map(|a| Address::new(a.clone(), self.domain.clone()))
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.account {
            Some(a) => write!(f, "{a}@{}", self.domain),
            None => write!(f, "@{}", self.domain),
        }
    }
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

/// The envelope as framed on the wire: sizes checked, names not yet parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnvelope {
    /// Version (crypto system).
    pub version: u32,
    /// Number of attachments.
    pub attachment_count: u32,
    /// Length of the log.
    pub log_len: u64,
    /// Length of the body.
    pub body_len: u64,
    /// The four name fields, in wire order, without their NULs.
    pub names: [Vec<u8>; 4],
}

/// Why an envelope's names were refused (the framing is intact).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum EnvelopeError {
    /// A name field is not UTF-8.
    #[error("{0} is not valid UTF-8")]
    InvalidUtf8(&'static str),
    /// A name field is not a valid name.
    #[error("{field}: {error}")]
    InvalidName {
        /// Which field.
        field: &'static str,
        /// What is wrong.
        error: NameError,
    },
}

const FIELD_NAMES: [&str; 4] = [
    "destination account",
    "destination domain",
    "source account",
    "source domain",
];

impl RawEnvelope {
    /// Parses the names into an [`Envelope`]. The destination account is
    /// required; an empty source account means the source domain's server.
    pub fn parse(&self) -> Result<Envelope, EnvelopeError> {
        let s = |i: usize| {
            std::str::from_utf8(&self.names[i])
                .map_err(|_| EnvelopeError::InvalidUtf8(FIELD_NAMES[i]))
        };
        let name = |i: usize, e: NameError| EnvelopeError::InvalidName {
            field: FIELD_NAMES[i],
            error: e,
        };
        let destination = Address::new(
            Account::parse_canonical(s(0)?).map_err(|e| name(0, e))?,
            Domain::parse_canonical(s(1)?).map_err(|e| name(1, e))?,
        );
        let src_account = s(2)?;
        let source = Source {
            account: if src_account.is_empty() {
                None
            } else {
                Some(Account::parse_canonical(src_account).map_err(|e| name(2, e))?)
            },
            domain: Domain::parse_canonical(s(3)?).map_err(|e| name(3, e))?,
        };
        Ok(Envelope {
            version: self.version,
            attachment_count: self.attachment_count,
            log_len: self.log_len,
            body_len: self.body_len,
            destination,
            source,
        })
    }

    fn names_len(&self) -> u64 {
        self.names.iter().map(|n| n.len() as u64 + 1).sum()
    }
}

/// A parsed envelope: the header and the four names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// Version (crypto system).
    pub version: u32,
    /// Number of attachments.
    pub attachment_count: u32,
    /// Length of the log.
    pub log_len: u64,
    /// Length of the body.
    pub body_len: u64,
    /// Who the message is for.
    pub destination: Address,
    /// Who sent it.
    pub source: Source,
}

impl Envelope {
    /// Appends the header and names with the given log length (a server that
    /// appends to the log rewrites the header with the new length).
    pub fn encode_head(&self, log_len: u64, out: &mut Vec<u8>) {
        put_u32(out, self.version);
        put_u32(out, self.attachment_count);
        put_u64(out, log_len);
        put_u64(out, self.body_len);
        put_str(out, self.destination.account.as_str());
        put_str(out, self.destination.domain.as_str());
        put_str(out, self.source.account.as_ref().map_or("", |a| a.as_str()));
        put_str(out, self.source.domain.as_str());
    }
}

/// Why a message stream was refused. Every variant ends the message: the
/// stream's framing can no longer be trusted, or a limit was exceeded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MessageError {
    /// The version (crypto system) is not 0 or 1.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u32),
    /// More attachments than allowed.
    #[error("{count} attachments, the limit is {max}")]
    TooManyAttachments {
        /// Announced count.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A log longer than allowed.
    #[error("log of {len} bytes, the limit is {max}")]
    LogTooLong {
        /// Announced length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The message would exceed the size limit (`size` is `None` when the
    /// announced lengths overflow 64 bits).
    #[error("message of {} bytes, the limit is {max}", size.map_or_else(|| "more than 2^64".to_owned(), |s| s.to_string()))]
    TooBig {
        /// The size announced so far.
        size: Option<u64>,
        /// The limit.
        max: u64,
    },
    /// A name field has no NUL within 256 bytes.
    #[error("{0} longer than {MAX_FIELD} bytes")]
    FieldTooLong(&'static str),
}

impl MessageError {
    /// Whether the message was refused for its size or attachment count
    /// (reply TOOBIG) rather than for its form (reply BADMESSAGE).
    pub fn is_limit(&self) -> bool {
        matches!(
            self,
            MessageError::TooManyAttachments { .. }
                | MessageError::LogTooLong { .. }
                | MessageError::TooBig { .. }
        )
    }
}

/// Events of the [`MessageReader`], in stream order.
#[derive(Debug, PartialEq, Eq)]
pub enum MessageEvent<'a> {
    /// The envelope: header and names. Exactly once, first.
    Envelope(RawEnvelope),
    /// A piece of the log.
    Log(&'a [u8]),
    /// A piece of the body.
    Body(&'a [u8]),
    /// An attachment begins (0-based index, length in bytes).
    AttachmentStart {
        /// 0-based index.
        index: u32,
        /// Length of the attachment in bytes.
        len: u64,
    },
    /// A piece of the current attachment.
    Attachment(&'a [u8]),
    /// The message is complete: its trailer and its hash.
    End {
        /// The domain-signature trailer as received.
        trailer: [u8; TRAILER_LEN],
        /// The message hash (see the module docs).
        hash: [u8; 32],
    },
}

#[derive(Debug)]
enum State {
    Head,
    Log { left: u64 },
    Body { left: u64 },
    AttLen { index: u32 },
    Att { index: u32, left: u64 },
    Trailer,
    Done,
}

/// Incremental, bounded-memory reader of one message (sans-IO).
///
/// Feed it the bytes that follow `MAIL\0`; it returns how many it used and at
/// most one event. `(n, None)` means it used `n` bytes and needs more.
pub struct MessageReader {
    limits: MessageLimits,
    state: State,
    /// Bytes of a fixed-size part being assembled (head, attachment length, trailer).
    partial: Vec<u8>,
    hasher: Sha256,
    /// Total size announced so far (header, names, log, body, trailer, and
    /// the attachments whose lengths have been read).
    announced: u64,
    attachment_count: u32,
    body_len: u64,
    consumed: u64,
}

impl fmt::Debug for MessageReader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageReader")
            .field("state", &self.state)
            .field("announced", &self.announced)
            .field("consumed", &self.consumed)
            .finish_non_exhaustive()
    }
}

/// Largest head: the fixed header and four maximal names.
const MAX_HEAD: usize = MESSAGE_HEADER_LEN + 4 * (MAX_FIELD + 1);

impl MessageReader {
    /// A reader enforcing `limits`.
    pub fn new(limits: MessageLimits) -> Self {
        MessageReader {
            limits,
            state: State::Head,
            partial: Vec::new(),
            hasher: Sha256::new(),
            announced: 0,
            attachment_count: 0,
            body_len: 0,
            consumed: 0,
        }
    }

    /// Whether the whole message, trailer included, has been read.
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Done)
    }

    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The message size announced so far, the log not counted: after the
    /// envelope, everything but the attachments whose lengths have not been
    /// read yet.
    pub fn announced(&self) -> u64 {
        self.announced
    }

    fn too_big(&self, size: Option<u64>) -> MessageError {
        MessageError::TooBig {
            size,
            max: self.limits.max_message_size,
        }
    }

    /// Reads from `input`; see the type's docs.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<MessageEvent<'a>>), MessageError> {
        let (n, ev) = self.step(input)?;
        self.consumed += n as u64;
        Ok((n, ev))
    }

    fn step<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<MessageEvent<'a>>), MessageError> {
        match self.state {
            State::Head => self.head(input),
            State::Log { left } => {
                Ok(self.chunk(input, left, |left| State::Log { left }, MessageEvent::Log))
            }
            State::Body { left } => {
                let (n, ev) =
                    self.chunk(input, left, |left| State::Body { left }, MessageEvent::Body);
                self.hasher.update(&input[..n]);
                Ok((n, ev))
            }
            State::AttLen { index } => {
                let Some((n, bytes)) = self.fill(input, 8) else {
                    return Ok((input.len(), None));
                };
                let len = u64::from_be_bytes(bytes.as_slice().try_into().expect("8 bytes"));
                self.hasher.update(&bytes);
                let size = self.announced.checked_add(len);
                match size {
                    Some(s) if s <= self.limits.max_message_size => self.announced = s,
                    _ => return Err(self.too_big(size)),
                }
                self.state = State::Att { index, left: len };
                self.settle();
                Ok((n, Some(MessageEvent::AttachmentStart { index, len })))
            }
            State::Att { index, left } => {
                let (n, ev) = self.chunk(
                    input,
                    left,
                    |left| State::Att { index, left },
                    MessageEvent::Attachment,
                );
                self.hasher.update(&input[..n]);
                Ok((n, ev))
            }
            State::Trailer => {
                let Some((n, bytes)) = self.fill(input, TRAILER_LEN) else {
                    return Ok((input.len(), None));
                };
                let trailer: [u8; TRAILER_LEN] = bytes.as_slice().try_into().expect("64 bytes");
                let hash = std::mem::take(&mut self.hasher).finalize().into();
                self.state = State::Done;
                Ok((n, Some(MessageEvent::End { trailer, hash })))
            }
            State::Done => Ok((0, None)),
        }
    }

    /// Moves past parts of length zero, so that every state but `Done`
    /// waits for at least one byte.
    fn settle(&mut self) {
        loop {
            self.state = match self.state {
                State::Log { left: 0 } => State::Body {
                    left: self.body_len,
                },
                State::Body { left: 0 } => self.after_attachment(0),
                State::Att { index, left: 0 } => self.after_attachment(index + 1),
                _ => return,
            }
        }
    }

    fn after_attachment(&self, next: u32) -> State {
        if next < self.attachment_count {
            State::AttLen { index: next }
        } else {
            State::Trailer
        }
    }

    /// Takes a chunk of at most `left` (> 0) bytes; `next` builds the state after it.
    fn chunk<'a>(
        &mut self,
        input: &'a [u8],
        left: u64,
        next: impl Fn(u64) -> State,
        event: impl Fn(&'a [u8]) -> MessageEvent<'a>,
    ) -> (usize, Option<MessageEvent<'a>>) {
        if input.is_empty() {
            return (0, None);
        }
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
        self.state = next(left - n as u64);
        self.settle();
        (n, Some(event(&input[..n])))
    }

    /// Accumulates exactly `want` bytes in `partial`; returns the bytes used
    /// from `input` and the completed part.
    fn fill(&mut self, input: &[u8], want: usize) -> Option<(usize, Vec<u8>)> {
        let need = want - self.partial.len();
        let n = need.min(input.len());
        self.partial.extend_from_slice(&input[..n]);
        if self.partial.len() == want {
            Some((n, std::mem::take(&mut self.partial)))
        } else {
            None
        }
    }

    fn head<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<MessageEvent<'a>>), MessageError> {
        // Copy at most what the longest head could need, then parse what we have.
        let room = MAX_HEAD - self.partial.len();
        let take = room.min(input.len());
        let before = self.partial.len();
        self.partial.extend_from_slice(&input[..take]);
        match self.parse_head()? {
            None => {
                if self.partial.len() >= MAX_HEAD {
                    return Err(MessageError::FieldTooLong("a name field"));
                }
                Ok((take, None))
            }
            Some((env, head_len)) => {
                // Give back what we copied beyond the head.
                let used = head_len - before;
                self.partial.clear();
                Ok((used, Some(MessageEvent::Envelope(env))))
            }
        }
    }

    fn parse_head(&mut self) -> Result<Option<(RawEnvelope, usize)>, MessageError> {
        let buf = &self.partial;
        if buf.len() < MESSAGE_HEADER_LEN {
            return Ok(None);
        }
        let version = u32::from_be_bytes(buf[0..4].try_into().expect("4"));
        let attachment_count = u32::from_be_bytes(buf[4..8].try_into().expect("4"));
        let log_len = u64::from_be_bytes(buf[8..16].try_into().expect("8"));
        let body_len = u64::from_be_bytes(buf[16..24].try_into().expect("8"));
        let limits = self.limits;
        if version != VERSION_PLAINTEXT && version != VERSION_SEALED {
            return Err(MessageError::UnsupportedVersion(version));
        }
        if attachment_count > limits.max_attachments {
            return Err(MessageError::TooManyAttachments {
                count: attachment_count,
                max: limits.max_attachments,
            });
        }
        if log_len > limits.max_log {
            return Err(MessageError::LogTooLong {
                len: log_len,
                max: limits.max_log,
            });
        }
        // The least the message can be: header, four empty names, body, one
        // u64 per attachment, trailer. The log is not counted: it has its own
        // limit, and relays append to it (a message accepted once must not
        // grow over the size limit on its way).
        let least = (MESSAGE_HEADER_LEN as u64 + 4 + TRAILER_LEN as u64)
            .checked_add(body_len)
            .and_then(|s| s.checked_add(8 * u64::from(attachment_count)));
        match least {
            Some(s) if s <= limits.max_message_size => {}
            _ => return Err(self.too_big(least)),
        }
        let mut names: [Vec<u8>; 4] = Default::default();
        let mut pos = MESSAGE_HEADER_LEN;
        for (i, name) in names.iter_mut().enumerate() {
            let rest = &buf[pos..];
            let limit = rest.len().min(MAX_FIELD + 1);
            match rest[..limit].iter().position(|&b| b == 0) {
                Some(n) => {
                    *name = rest[..n].to_vec();
                    pos += n + 1;
                }
                None if rest.len() > MAX_FIELD => {
                    return Err(MessageError::FieldTooLong(FIELD_NAMES[i]));
                }
                None => return Ok(None),
            }
        }
        let env = RawEnvelope {
            version,
            attachment_count,
            log_len,
            body_len,
            names,
        };
        let size = least.map(|s| s - 4 + env.names_len());
        match size {
            Some(s) if s <= limits.max_message_size => self.announced = s,
            _ => return Err(self.too_big(size)),
        }
        // Hash: the header without the log length, then the names.
        self.hasher.update(&buf[0..8]);
        self.hasher.update(&buf[16..24]);
        self.hasher.update(&buf[MESSAGE_HEADER_LEN..pos]);
        self.attachment_count = attachment_count;
        self.body_len = body_len;
        self.state = State::Log { left: log_len };
        self.settle();
        Ok(Some((env, pos)))
    }
}

/// A whole message in memory (clients build and read these; servers stream).
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Version (crypto system).
    pub version: u32,
    /// Who the message is for.
    pub destination: Address,
    /// Who sent it.
    pub source: Source,
    /// LF-terminated UTF-8 lines appended by each server that handled it.
    pub log: Vec<u8>,
    /// The body (sealed under crypto system 1).
    pub body: Vec<u8>,
    /// The attachments (each sealed under crypto system 1).
    pub attachments: Vec<Vec<u8>>,
    /// The source domain's signature over the hash (zero when submitted by a client).
    pub trailer: [u8; TRAILER_LEN],
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("version", &self.version)
            .field("destination", &self.destination)
            .field("source", &self.source)
            .field("log_len", &self.log.len())
            .field("body_len", &self.body.len())
            .field("attachments", &self.attachments.len())
            .finish_non_exhaustive()
    }
}

/// Why a complete message in memory could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum MessageDecodeError {
    /// The stream was refused.
    #[error(transparent)]
    Stream(#[from] MessageError),
    /// The names were refused.
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    /// The buffer ended before the message did.
    #[error("message truncated")]
    Truncated,
    /// Bytes follow the trailer.
    #[error("{0} bytes after the end of the message")]
    TrailingBytes(usize),
}

impl Message {
    /// The envelope of this message (lengths from its content).
    pub fn envelope(&self) -> Envelope {
        Envelope {
            version: self.version,
            attachment_count: self.attachments.len() as u32,
            log_len: self.log.len() as u64,
            body_len: self.body.len() as u64,
            destination: self.destination.clone(),
            source: self.source.clone(),
        }
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.envelope().encode_head(self.log.len() as u64, out);
        out.extend_from_slice(&self.log);
        out.extend_from_slice(&self.body);
        for a in &self.attachments {
            put_u64(out, a.len() as u64);
            out.extend_from_slice(a);
        }
        out.extend_from_slice(&self.trailer);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.encoded_len());
        self.encode(&mut out);
        out
    }

    /// Size of the wire form.
    pub fn encoded_len(&self) -> usize {
        let env = self.envelope();
        let mut head = Vec::new();
        env.encode_head(0, &mut head);
        head.len()
            + self.log.len()
            + self.body.len()
            + self.attachments.iter().map(|a| 8 + a.len()).sum::<usize>()
            + TRAILER_LEN
    }

    /// The message hash (see the module docs).
    pub fn hash(&self) -> [u8; 32] {
        let mut h = Sha256::new();
        let mut head = Vec::new();
        self.envelope().encode_head(0, &mut head);
        h.update(&head[0..8]);
        h.update(&head[16..]);
        h.update(&self.body);
        for a in &self.attachments {
            h.update((a.len() as u64).to_be_bytes());
            h.update(a);
        }
        h.finalize().into()
    }

    /// Decodes exactly one message occupying all of `buf`.
    pub fn decode(buf: &[u8], limits: MessageLimits) -> Result<Message, MessageDecodeError> {
        let mut reader = MessageReader::new(limits);
        let mut pos = 0;
        let mut env = None;
        let mut log = Vec::new();
        let mut body = Vec::new();
        let mut attachments: Vec<Vec<u8>> = Vec::new();
        loop {
            let (n, ev) = reader.next(&buf[pos..])?;
            pos += n;
            match ev {
                None if n == 0 || pos == buf.len() => return Err(MessageDecodeError::Truncated),
                None => continue,
                Some(MessageEvent::Envelope(raw)) => env = Some(raw.parse()?),
                Some(MessageEvent::Log(b)) => log.extend_from_slice(b),
                Some(MessageEvent::Body(b)) => body.extend_from_slice(b),
                Some(MessageEvent::AttachmentStart { len, .. }) => {
                    attachments.push(Vec::with_capacity(usize::try_from(len).unwrap_or(0)));
                }
                Some(MessageEvent::Attachment(b)) => {
                    attachments
                        .last_mut()
                        .expect("started")
                        .extend_from_slice(b);
                }
                Some(MessageEvent::End { trailer, .. }) => {
                    if pos != buf.len() {
                        return Err(MessageDecodeError::TrailingBytes(buf.len() - pos));
                    }
                    let env = env.expect("envelope precedes the end");
                    return Ok(Message {
                        version: env.version,
                        destination: env.destination,
                        source: env.source,
                        log,
                        body,
                        attachments,
                        trailer,
                    });
                }
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn sample(attachments: Vec<Vec<u8>>) -> Message {
        Message {
            version: VERSION_SEALED,
            destination: Address::parse("bob@b.test").unwrap(),
            source: Source::user(Address::parse("alice@a.test").unwrap()),
            log: b"2026-11-26T00:00:00Z a.test accepted\n".to_vec(),
            body: b"sealed body bytes".to_vec(),
            attachments,
            trailer: [7; 64],
        }
    }

    /// Feeds `stream` in pieces of `step` bytes and collects what the reader says.
    fn read_split(
        stream: &[u8],
        step: usize,
        limits: MessageLimits,
    ) -> Result<(Vec<String>, usize), MessageError> {
        let mut r = MessageReader::new(limits);
        let mut events = Vec::new();
        let mut buf: Vec<u8> = Vec::new();
        let mut used_total = 0;
        let mut body = Vec::new();
        for piece in stream.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            loop {
                if r.is_done() {
                    break;
                }
                let (n, ev) = r.next(&buf)?;
                used_total += n;
                let stop = ev.is_none();
                match ev {
                    Some(MessageEvent::Envelope(e)) => events.push(format!("env {:?}", e.parse())),
                    Some(MessageEvent::Log(b))
                    | Some(MessageEvent::Body(b))
                    | Some(MessageEvent::Attachment(b)) => body.extend_from_slice(b),
                    Some(MessageEvent::AttachmentStart { index, len }) => {
                        events.push(format!("data {}", hex::encode(&body)));
                        body.clear();
                        events.push(format!("att {index} {len}"));
                    }
                    Some(MessageEvent::End { trailer, hash }) => {
                        events.push(format!("data {}", hex::encode(&body)));
                        events.push(format!(
                            "end {} {}",
                            hex::encode(trailer),
                            hex::encode(hash)
                        ));
                    }
                    None => {}
                }
                buf.drain(..n);
                if stop {
                    break;
                }
            }
        }
        Ok((events, used_total))
    }

    fn limits() -> MessageLimits {
        MessageLimits::default()
    }

    #[test]
    fn a_message_round_trips() {
        let m = sample(vec![b"one".to_vec(), vec![], vec![9; 1000]]);
        let bytes = m.to_bytes();
        assert_eq!(bytes.len(), m.encoded_len());
        assert_eq!(Message::decode(&bytes, limits()).unwrap(), m);
    }

    #[test]
    fn the_reader_stops_exactly_at_the_end_of_the_message() {
        let m = sample(vec![b"att".to_vec()]);
        let mut stream = m.to_bytes();
        let len = stream.len();
        stream.extend_from_slice(b"NOOP\0");
        let (_, used) = read_split(&stream, 3, limits()).unwrap();
        assert_eq!(used, len);
    }

    #[test]
    fn the_hash_ignores_the_log() {
        let mut m = sample(vec![b"x".to_vec()]);
        let h = m.hash();
        m.log
            .extend_from_slice(b"2026-11-26T00:00:01Z b.test relayed\n");
        assert_eq!(m.hash(), h);
        m.body[0] ^= 1;
        assert_ne!(m.hash(), h);
    }

    #[test]
    fn the_reader_hash_equals_the_message_hash() {
        let m = sample(vec![b"a".to_vec(), b"bb".to_vec()]);
        let (events, _) = read_split(&m.to_bytes(), 5, limits()).unwrap();
        let end = events.last().unwrap();
        assert!(end.ends_with(&hex::encode(m.hash())), "{end}");
    }

    fn header(version: u32, count: u32, log: u64, body: u64) -> Vec<u8> {
        let mut b = Vec::new();
        put_u32(&mut b, version);
        put_u32(&mut b, count);
        put_u64(&mut b, log);
        put_u64(&mut b, body);
        b
    }

    fn first_error(bytes: &[u8], limits: MessageLimits) -> MessageError {
        read_split(bytes, bytes.len(), limits).unwrap_err()
    }

    #[test]
    fn an_unknown_version_is_refused() {
        assert_eq!(
            first_error(&header(2, 0, 0, 0), limits()),
            MessageError::UnsupportedVersion(2)
        );
    }

    #[test]
    fn an_attachment_count_of_2_pow_32_minus_1_is_refused() {
        assert_eq!(
            first_error(&header(1, u32::MAX, 0, 0), limits()),
            MessageError::TooManyAttachments {
                count: u32::MAX,
                max: 64
            }
        );
    }

    #[test]
    fn a_body_length_of_2_pow_64_minus_1_is_refused_without_overflow() {
        assert_eq!(
            first_error(&header(1, 0, 0, u64::MAX), limits()),
            MessageError::TooBig {
                size: None,
                max: limits().max_message_size
            }
        );
    }

    #[test]
    fn a_body_just_over_the_limit_is_refused_and_just_under_is_not() {
        let l = MessageLimits {
            max_message_size: 1000,
            ..limits()
        };
        // header 24 + names "b\0b.test\0a\0a.test\0" (18) + trailer 64 = 106
        let mut ok = header(1, 0, 0, 1000 - 106);
        ok.extend_from_slice(b"b\0b.test\0a\0a.test\0");
        let (events, _) = read_split(&ok, ok.len(), l).unwrap();
        assert!(events[0].starts_with("env Ok"));
        let mut over = header(1, 0, 0, 1000 - 105);
        over.extend_from_slice(b"b\0b.test\0a\0a.test\0");
        assert_eq!(
            first_error(&over, l),
            MessageError::TooBig {
                size: Some(1001),
                max: 1000
            }
        );
    }

    #[test]
    fn the_log_does_not_count_against_the_size_limit() {
        let l = MessageLimits {
            max_message_size: 1000,
            ..limits()
        };
        let mut b = header(1, 0, 500, 1000 - 106);
        b.extend_from_slice(b"b\0b.test\0a\0a.test\0");
        let (events, _) = read_split(&b, b.len(), l).unwrap();
        assert!(events[0].starts_with("env Ok"), "{events:?}");
    }

    #[test]
    fn a_log_over_the_limit_is_refused() {
        assert_eq!(
            first_error(&header(1, 0, 1 << 20, 0), limits()),
            MessageError::LogTooLong {
                len: 1 << 20,
                max: limits().max_log
            }
        );
    }

    #[test]
    fn an_attachment_length_over_the_limit_is_refused_when_it_is_read() {
        let l = MessageLimits {
            max_message_size: 4096,
            ..limits()
        };
        let mut m = sample(vec![vec![1; 10]]);
        m.log.clear();
        let mut bytes = m.to_bytes();
        let at = bytes.len() - 64 - 10 - 8;
        bytes[at..at + 8].copy_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(
            first_error(&bytes, l),
            MessageError::TooBig { size: None, .. }
        ));
    }

    #[test]
    fn a_name_field_without_nul_is_refused() {
        let mut b = header(1, 0, 0, 0);
        b.extend(std::iter::repeat_n(b'a', 300));
        assert_eq!(
            first_error(&b, limits()),
            MessageError::FieldTooLong("destination account")
        );
        let mut b = header(1, 0, 0, 0);
        b.extend_from_slice(b"bob\0");
        b.extend(std::iter::repeat_n(b'a', 256));
        assert_eq!(
            first_error(&b, limits()),
            MessageError::FieldTooLong("destination domain")
        );
    }

    #[test]
    fn invalid_names_are_reported_with_the_framing_intact() {
        let mut b = header(1, 0, 0, 0);
        b.extend_from_slice(b"../x\0b.test\0a\0a.test\0");
        b.extend_from_slice(&[0; 64]);
        let (events, used) = read_split(&b, 7, limits()).unwrap();
        assert_eq!(used, b.len());
        assert!(events[0].contains("InvalidName"), "{events:?}");
        let mut b = header(1, 0, 0, 0);
        b.extend_from_slice(b"\xff\0b.test\0a\0a.test\0");
        b.extend_from_slice(&[0; 64]);
        let (events, _) = read_split(&b, 64, limits()).unwrap();
        assert!(events[0].contains("InvalidUtf8"), "{events:?}");
    }

    #[test]
    fn non_canonical_names_are_refused_so_every_reader_hashes_the_same_bytes() {
        for names in [
            &b"Bob\0b.test\0a\0a.test\0"[..],
            b"bob\0b.test.\0a\0a.test\0",
            b"bob\0b.test\0A\0a.test\0",
        ] {
            let mut b = header(1, 0, 0, 0);
            b.extend_from_slice(names);
            b.extend_from_slice(&[0; 64]);
            let (events, _) = read_split(&b, 64, limits()).unwrap();
            assert!(events[0].contains("NotCanonical"), "{events:?}");
            assert!(matches!(
                Message::decode(&b, limits()),
                Err(MessageDecodeError::Envelope(_))
            ));
        }
    }

    #[test]
    fn a_truncated_message_and_trailing_bytes_are_errors() {
        let bytes = sample(vec![b"a".to_vec()]).to_bytes();
        assert_eq!(
            Message::decode(&bytes[..bytes.len() - 1], limits()),
            Err(MessageDecodeError::Truncated)
        );
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            Message::decode(&longer, limits()),
            Err(MessageDecodeError::TrailingBytes(1))
        );
    }

    #[test]
    fn an_empty_source_account_is_the_server() {
        let mut m = sample(vec![]);
        m.source = Source::server(Domain::parse("a.test").unwrap());
        let back = Message::decode(&m.to_bytes(), limits()).unwrap();
        assert_eq!(back.source.account, None);
        assert_eq!(back.source.to_string(), "@a.test");
    }

    pub(crate) fn arb_message() -> impl Strategy<Value = Message> {
        (
            0u32..=1,
            proptest::collection::vec(any::<u8>(), 0..200),
            proptest::collection::vec(any::<u8>(), 0..500),
            proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..100), 0..5),
            "[a-z]{1,10}",
            proptest::option::of("[a-z]{1,10}"),
        )
            .prop_map(|(version, log, body, attachments, dest, src)| Message {
                version,
                destination: Address::parse(&format!("{dest}@b.test")).unwrap(),
                source: Source {
                    account: src.map(|s| Account::parse(&s).unwrap()),
                    domain: Domain::parse("a.test").unwrap(),
                },
                log,
                body,
                attachments,
                trailer: [3; 64],
            })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(m in arb_message()) {
            prop_assert_eq!(Message::decode(&m.to_bytes(), limits()).unwrap(), m);
        }

        #[test]
        fn the_reader_sees_the_same_however_the_stream_is_split(m in arb_message(), step in 1usize..64) {
            let bytes = m.to_bytes();
            let whole = read_split(&bytes, bytes.len(), limits()).unwrap();
            let split = read_split(&bytes, step, limits()).unwrap();
            prop_assert_eq!(&whole, &split);
            prop_assert_eq!(whole.1, bytes.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic_nor_overrun(bytes in proptest::collection::vec(any::<u8>(), 0..600), step in 1usize..50) {
            if let Ok((_, used)) = read_split(&bytes, step, limits()) {
                prop_assert!(used <= bytes.len());
            }
        }
    }
}
