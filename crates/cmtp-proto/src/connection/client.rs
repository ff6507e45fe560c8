//! The client's side of a connection (PROTOCOL.md §4.1, §5, §6.1, §16) as a
//! sans-IO state machine.
//!
//! [`ClientConnection`] begins TLS at once (its ClientHello goes out before
//! the banner arrives), reads the banner (and recognises an SMTP server, or
//! a server of the first, unencrypted CMTP/1, at once), completes the
//! handshake and learns the server's key from it (a raw public key, RFC
//! 7250), refuses a key other than the one the caller trusts, and only then
//! sends commands. It keeps the order of outstanding requests (commands may
//! be pipelined), decodes each reply within the body limit its request set,
//! learns the server key and the connection nonce from the `OHAI` reply,
//! and checks every later reply's signature against the key the caller
//! trusts, bound to the nonce, the reply's position and the request's
//! digest. Every outstanding reply has a whole-reply deadline: a peer that
//! drips its answer a byte at a time is cut off.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use cmtp_proto::command::Command;
//! use cmtp_proto::connection::client::{ClientConnection, ClientEvent};
//!
//! let now = Instant::now();
//! let mut conn = ClientConnection::new(None, Duration::from_secs(30), now);
//! // The ClientHello is ready before anything arrives.
//! assert_eq!(conn.output()[0], 0x16);
//! conn.handle_input(b"220 mx.example ESMTP\r\n", now);
//! assert!(conn.poll_event(now).is_err()); // an SMTP server: said at once
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::banner::{Banner, decode_banner};
use crate::command::{Command, request_digest};
use crate::crypto::{PublicKey, SignatureTag};
use crate::limits::MAX_BANNER;
use crate::payload::{Greeting, PayloadError};
use crate::reply::{
    Reply, ReplyBinding, ReplyDecoder, ReplyError, ReplyEvent, ReplyHeader, Status, body_hash,
};
use crate::tls::{ALPN, CHANNEL_BINDING_LEN, ClientTlsConfig};

/// Largest reply body accepted for commands other than FETCH (PROTOCOL.md §5.1).
pub const MAX_REPLY_BODY: u64 = 1 << 20;

/// The slowest a reply body may arrive, in bytes per second, before the
/// whole-reply deadline cuts it off (the server's default minimum rate).
pub const MIN_REPLY_RATE: u64 = 16 * 1024;

/// Ways a peer broke the protocol (after rustls's `PeerMisbehaved`).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PeerMisbehaved {
    /// No line end within the banner's limit.
    #[error("the banner has no line end within {MAX_BANNER} bytes")]
    BannerTooLong,
    /// A reply could not be decoded (or its body is over the limit).
    #[error("malformed reply: {0}")]
    MalformedReply(#[from] ReplyError),
    /// A reply arrived with no request outstanding.
    #[error("a reply arrived that answers no request")]
    UnexpectedReply,
    /// The OHAI reply is not a valid greeting.
    #[error("bad greeting: {0}")]
    BadGreeting(#[from] PayloadError),
    /// The OHAI reply failed.
    #[error("OHAI answered {status}: {text}")]
    GreetingRefused {
        /// Its status.
        status: Status,
        /// Its text.
        text: String,
    },
    /// The connection closed in the middle of a reply or with replies owed.
    #[error("the server closed the connection {0}")]
    ClosedEarly(&'static str),
    /// TLS failed (the handshake, or a record).
    #[error("TLS: {0}")]
    Tls(String),
    /// The handshake did not agree on the `cmtp/2` protocol, or the server
    /// showed no Ed25519 key.
    #[error("the TLS handshake did not establish CMTP/2: {0}")]
    NotCmtp2(&'static str),
    /// A reply body that should hold a payload does not.
    #[error("bad {what}: {error}")]
    BadPayload {
        /// What was expected.
        what: String,
        /// Why it was refused.
        error: String,
    },
    /// The server serves another domain than the one asked for (a
    /// misdirected DNS record, or the asking server itself).
    #[error("the server serves {served}, not {asked}")]
    WrongDomain {
        /// The domain it serves.
        served: String,
        /// The domain asked for.
        asked: String,
    },
}

/// Why a client connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ConnectionError {
    /// The peer is an SMTP server (PROTOCOL.md §16).
    #[error("this is an SMTP server, not CMTP (it said: {line})")]
    SmtpServer {
        /// Its greeting.
        line: String,
    },
    /// The peer is not a CMTP server.
    #[error("this is not a CMTP server (it said: {line})")]
    NotCmtp {
        /// What it sent.
        line: String,
    },
    /// The server speaks only CMTP/1, in clear: refused (no plaintext
    /// fallback).
    #[error(
        "the server of {domain} speaks only CMTP/1, unencrypted; this client requires CMTP/2 (TLS)"
    )]
    OldProtocol {
        /// The domain it named.
        domain: String,
    },
    /// The server refused the connection for now (a `421` banner).
    #[error("the server for {domain} is busy: {text}")]
    Busy {
        /// Its domain.
        domain: String,
        /// Its explanation.
        text: String,
    },
    /// A reply did not arrive whole within its deadline.
    #[error("timed out waiting for a reply")]
    TimedOut,
    /// The server closed the connection with a reply that answers no
    /// request (`TIMEOUT` while idle, `TOOMANYERRORS`, PROTOCOL.md §5.3).
    #[error("the server closed the connection: {status}: {text}")]
    ClosedByServer {
        /// Its status.
        status: Status,
        /// Its text.
        text: String,
    },
    /// The peer broke the protocol.
    #[error(transparent)]
    Misbehaved(#[from] PeerMisbehaved),
    /// A reply's signature did not verify under the trusted key.
    #[error("the {0} reply is not signed by the server's key: the connection may be tampered with")]
    BadSignature(Status),
    /// The greeting announced a key other than the trusted one.
    #[error("the server of {domain} presented key {got}, not the trusted {expected}")]
    KeyMismatch {
        /// The domain in the greeting.
        domain: String,
        /// Fingerprint trusted.
        expected: String,
        /// Fingerprint presented.
        got: String,
    },
}

/// What the caller learns from the server.
#[derive(Debug)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The banner: a CMTP server ready for commands.
    Ready {
        /// The domain it named.
        domain: String,
    },
    /// A whole reply, its signature checked (once the greeting is known).
    Reply {
        /// Its position on the connection.
        seq: u64,
        /// The reply.
        reply: Reply,
    },
    /// The header of a streamed reply (see [`ClientConnection::send_streamed`]).
    StreamHeader {
        /// Its position.
        seq: u64,
        /// The header.
        header: ReplyHeader,
    },
    /// Part of a streamed reply's body.
    StreamData {
        /// Its position.
        seq: u64,
        /// The bytes.
        data: Bytes,
    },
    /// A streamed reply is complete and its signature checked.
    StreamEnd {
        /// Its position.
        seq: u64,
        /// Its signature.
        signature: [u8; 64],
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Whole,
    Greeting,
    Streamed,
}

#[derive(Debug)]
struct Outstanding {
    seq: u64,
    request: [u8; 32],
    max_body: u64,
    kind: Kind,
}

#[derive(Debug)]
struct InStream {
    decoder: ReplyDecoder,
    header: Option<ReplyHeader>,
    hasher: Sha256,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the banner (in clear); TLS bytes wait in `input`.
    Banner,
    /// The banner is read; the TLS handshake goes on.
    Handshake,
    /// TLS established and the key checked: commands flow.
    Open,
    Failed,
}

/// The client's side of one connection.
pub struct ClientConnection {
    phase: Phase,
    /// The banner (in clear), then decrypted replies.
    input: BytesMut,
    /// Commands not yet handed to TLS: held until the handshake is over and
    /// the key is checked, so nothing goes to a server not trusted.
    plain: Vec<u8>,
    /// Bytes for the wire (TLS records).
    output: Vec<u8>,
    sent: usize,
    tls: Box<rustls::ClientConnection>,
    /// The key the server showed in the handshake.
    tls_key: Option<PublicKey>,
    channel_binding: Option<[u8; CHANNEL_BINDING_LEN]>,
    expected_key: Option<PublicKey>,
    greeting: Option<Greeting>,
    banner_domain: Option<String>,
    next_seq: u64,
    outstanding: VecDeque<Outstanding>,
    stream: Option<InStream>,
    timeout: Duration,
    /// When the front reply began to be owed: the later of its request's
    /// sending and the last time our output drained.
    waiting_since: Instant,
    /// Once the front reply's header is known, how long its body may take.
    body_allowance: Duration,
    eof: bool,
    failed: Option<ConnectionError>,
    /// The `Ready` event is owed.
    ready: bool,
}

impl std::fmt::Debug for ClientConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConnection")
            .field("phase", &self.phase)
            .field("next_seq", &self.next_seq)
            .field("outstanding", &self.outstanding.len())
            .finish_non_exhaustive()
    }
}

impl ClientConnection {
    /// A connection that has just been opened, with the shared TLS
    /// configuration (hybrid post-quantum key exchange). `expected_key` is
    /// the server key the caller trusts for this domain (its pin), if any;
    /// `timeout` bounds the wait for each reply (plus its body at
    /// [`MIN_REPLY_RATE`]).
    pub fn new(expected_key: Option<PublicKey>, timeout: Duration, now: Instant) -> Self {
        Self::with_tls(
            &ClientTlsConfig::default_shared(),
            expected_key,
            timeout,
            now,
        )
    }

    /// As [`new`](Self::new), with a TLS configuration of the caller's.
    pub fn with_tls(
        tls: &ClientTlsConfig,
        expected_key: Option<PublicKey>,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let mut tls = Box::new(tls.connect().expect("a client configuration for TLS 1.3"));
        tls.set_buffer_limit(None);
        let mut output = Vec::new();
        // The ClientHello goes out at once, before the banner is read.
        while tls.wants_write() {
            if tls.write_tls(&mut output).is_err() {
                break;
            }
        }
        ClientConnection {
            phase: Phase::Banner,
            input: BytesMut::new(),
            plain: Vec::new(),
            output,
            sent: 0,
            tls,
            tls_key: None,
            channel_binding: None,
            expected_key,
            greeting: None,
            banner_domain: None,
            next_seq: 0,
            outstanding: VecDeque::new(),
            stream: None,
            timeout,
            waiting_since: now,
            body_allowance: Duration::ZERO,
            eof: false,
            failed: None,
            ready: false,
        }
    }

    /// Requires the server to hold `key`: the key it showed in the TLS
    /// handshake (checked at once if the handshake is over) and the one that
    /// signs its replies.
    pub fn expect_key(&mut self, key: PublicKey) {
        self.expected_key = Some(key);
        if let Some(shown) = self.tls_key
            && shown != key
        {
            let e = self.key_mismatch(key, shown);
            self.fail(e);
        }
    }

    fn key_mismatch(&self, expected: PublicKey, got: PublicKey) -> ConnectionError {
        ConnectionError::KeyMismatch {
            domain: self.banner_domain.clone().unwrap_or_default(),
            expected: expected.fingerprint_hex(),
            got: got.fingerprint_hex(),
        }
    }

    /// The key replies are checked against, if any: the trusted key, or
    /// the one the server showed in the TLS handshake.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.expected_key
            .or(self.tls_key)
            .or_else(|| self.greeting.as_ref().map(|g| g.key))
    }

    /// The key the server showed in the TLS handshake, once it is over.
    pub fn tls_key(&self) -> Option<PublicKey> {
        self.tls_key
    }

    /// The TLS exporter value logins bind to (PROTOCOL.md §12), once the
    /// handshake is over.
    pub fn channel_binding(&self) -> Option<&[u8; CHANNEL_BINDING_LEN]> {
        self.channel_binding.as_ref()
    }

    /// The negotiated key-exchange group, once the handshake is over.
    pub fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        self.tls.negotiated_key_exchange_group().map(|g| g.name())
    }

    /// The greeting, once the OHAI reply has arrived.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.greeting.as_ref()
    }

    /// The domain the banner named.
    pub fn banner_domain(&self) -> Option<&str> {
        self.banner_domain.as_deref()
    }

    /// Replies still owed by the server.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Sends a command whose whole reply (body up to `max_body`) is wanted.
    /// `OHAI` is recognised: its reply sets the greeting. Returns the
    /// reply's sequence number.
    pub fn send(&mut self, cmd: &Command, max_body: u64, now: Instant) -> u64 {
        let kind = if matches!(cmd, Command::Ohai) {
            Kind::Greeting
        } else {
            Kind::Whole
        };
        self.push(cmd, max_body, kind, now)
    }

    /// Sends a command whose reply body is delivered in pieces
    /// ([`ClientEvent::StreamHeader`], [`ClientEvent::StreamData`],
    /// [`ClientEvent::StreamEnd`]) — FETCH of a large message.
    pub fn send_streamed(&mut self, cmd: &Command, max_body: u64, now: Instant) -> u64 {
        self.push(cmd, max_body, Kind::Streamed, now)
    }

    /// Sends bytes that are not a command: the message after `MAIL`.
    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.plain.extend_from_slice(bytes);
    }

    fn push(&mut self, cmd: &Command, max_body: u64, kind: Kind, now: Instant) -> u64 {
        let start = self.plain.len();
        cmd.encode(&mut self.plain);
        let request = request_digest(&self.plain[start..]);
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.outstanding.is_empty() {
            self.waiting_since = now;
            self.body_allowance = Duration::ZERO;
        }
        self.outstanding.push_back(Outstanding {
            seq,
            request,
            max_body,
            kind,
        });
        seq
    }

    /// Bytes to send to the server (commands are encrypted here, once the
    /// server's key is checked).
    pub fn output(&mut self) -> &[u8] {
        if self.phase == Phase::Open {
            crate::tls::encrypt(&mut self.tls, &mut self.plain, &mut self.output);
        } else {
            // Handshake messages only: commands wait for the key check.
            crate::tls::encrypt(&mut self.tls, &mut Vec::new(), &mut self.output);
        }
        &self.output[self.sent..]
    }

    /// Encrypts `bytes` straight to the wire (a large message written from
    /// the caller's buffer, in pieces): what to write to the socket. Only
    /// once the connection is open.
    pub fn encrypt_raw(&mut self, bytes: &[u8]) -> Vec<u8> {
        let mut plain = bytes.to_vec();
        let mut wire = Vec::new();
        crate::tls::encrypt(&mut self.tls, &mut plain, &mut wire);
        wire
    }

    /// Whether TLS is established and the server's key checked.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// The driver sent `n` bytes of [`output`](Self::output).
    pub fn consume_output(&mut self, n: usize, now: Instant) {
        self.sent = (self.sent + n).min(self.output.len());
        if self.sent == self.output.len() {
            self.output.clear();
            self.sent = 0;
            if self.output.capacity() > 256 * 1024 {
                self.output = Vec::new();
            }
        }
        if n > 0 {
            self.note_progress(now);
        }
    }

    /// Bytes of ours reached the server by another way than
    /// [`output`](Self::output) (a large message written straight from the
    /// caller's buffer): the server cannot be expected to answer before it
    /// has them, so the reply deadline starts anew.
    pub fn note_progress(&mut self, now: Instant) {
        self.waiting_since = self.waiting_since.max(now);
    }

    /// Takes everything there is to send.
    pub fn take_output(&mut self, now: Instant) -> Vec<u8> {
        let out = self.output().to_vec();
        self.consume_output(out.len(), now);
        out
    }

    /// Bytes from the server.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        let _ = now;
        if self.input.is_empty() && self.input.capacity() > 256 * 1024 {
            self.input = BytesMut::new();
        }
        match self.phase {
            Phase::Banner => self.input.extend_from_slice(data),
            Phase::Handshake | Phase::Open => self.tls_input(data),
            Phase::Failed => {}
        }
    }

    /// TLS records: decrypted replies into `input`; the end of the
    /// handshake checked.
    fn tls_input(&mut self, data: &[u8]) {
        let (plain, result) = crate::tls::decrypt(&mut self.tls, data, &mut self.output);
        self.input.extend_from_slice(&plain);
        match result {
            Ok(true) => self.eof = true,
            Ok(false) => {}
            Err(e) => {
                self.fail(PeerMisbehaved::Tls(e).into());
                return;
            }
        }
        if self.phase == Phase::Handshake
            && !self.tls.is_handshaking()
            && let Err(e) = self.established()
        {
            self.fail(e);
        }
    }

    /// The handshake is over: the protocol agreed, the key shown, checked
    /// against the trusted one; commands may go.
    fn established(&mut self) -> Result<(), ConnectionError> {
        if self.tls.alpn_protocol() != Some(ALPN) {
            return Err(PeerMisbehaved::NotCmtp2("no cmtp/2 ALPN").into());
        }
        let key = self
            .tls
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| crate::tls::key_from_spki(c.as_ref()))
            .ok_or(PeerMisbehaved::NotCmtp2("no Ed25519 raw public key"))?;
        if let Some(expected) = self.expected_key
            && expected != key
        {
            return Err(self.key_mismatch(expected, key));
        }
        let binding = crate::tls::channel_binding(&self.tls)
            .map_err(|e| PeerMisbehaved::Tls(e.to_string()))?;
        self.tls_key = Some(key);
        self.channel_binding = Some(binding);
        self.phase = Phase::Open;
        self.ready = true;
        Ok(())
    }

    /// The server closed its side.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next:
    /// the deadline of the reply at the front, if one is owed.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.failed.is_some() {
            return None;
        }
        if self.phase != Phase::Open || !self.outstanding.is_empty() {
            Some(self.waiting_since + self.timeout + self.body_allowance)
        } else {
            None
        }
    }

    /// Time has passed: an expired deadline fails the connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(deadline) = self.poll_timeout()
            && now >= deadline
        {
            self.fail(ConnectionError::TimedOut);
        }
    }

    fn fail(&mut self, e: ConnectionError) -> ConnectionError {
        self.phase = Phase::Failed;
        self.failed.get_or_insert(e).clone()
    }

    /// The next thing learnt from the server; `Ok(None)` = more input is
    /// needed. After an error the connection is unusable.
    pub fn poll_event(&mut self, now: Instant) -> Result<Option<ClientEvent>, ConnectionError> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let r = match self.phase {
            Phase::Banner => self.banner(),
            Phase::Handshake => Ok(None),
            Phase::Open if self.ready => {
                self.ready = false;
                Ok(Some(ClientEvent::Ready {
                    domain: self.banner_domain.clone().unwrap_or_default(),
                }))
            }
            Phase::Open => self.reply(now),
            Phase::Failed => unreachable!("failed is set"),
        };
        match r {
            Ok(None) if self.eof => {
                let what = if self.phase == Phase::Banner {
                    "before its banner"
                } else if self.phase == Phase::Handshake {
                    "during the TLS handshake"
                } else if self.stream.is_some() || !self.input.is_empty() {
                    "in the middle of a reply"
                } else if !self.outstanding.is_empty() {
                    "with replies owed"
                } else {
                    return Ok(None);
                };
                Err(self.fail(PeerMisbehaved::ClosedEarly(what).into()))
            }
            Err(e) => Err(self.fail(e)),
            ok => ok,
        }
    }

    /// Whether the server has closed its side with nothing owed.
    pub fn is_closed_by_peer(&self) -> bool {
        self.eof && self.outstanding.is_empty() && self.input.is_empty()
    }

    fn banner(&mut self) -> Result<Option<ClientEvent>, ConnectionError> {
        let (banner, n) = match decode_banner(&self.input) {
            Ok(Some(x)) => x,
            Ok(None) => return Ok(None),
            Err(()) => {
                let line = String::from_utf8_lossy(&self.input[..MAX_BANNER.min(self.input.len())])
                    .into_owned();
                // An SMTP greeting of more than 512 bytes is still SMTP.
                return Err(if line.as_bytes().first().is_some_and(u8::is_ascii_digit) {
                    ConnectionError::NotCmtp { line }
                } else {
                    PeerMisbehaved::BannerTooLong.into()
                });
            }
        };
        self.input.advance(n);
        match banner {
            Banner::Ready { domain } => {
                self.banner_domain = Some(domain);
                self.phase = Phase::Handshake;
                // What followed the banner is TLS.
                let rest = self.input.split().freeze();
                self.tls_input(&rest);
                if let Some(e) = &self.failed {
                    return Err(e.clone());
                }
                if self.phase == Phase::Open {
                    self.ready = false;
                    let domain = self.banner_domain.clone().unwrap_or_default();
                    return Ok(Some(ClientEvent::Ready { domain }));
                }
                Ok(None)
            }
            Banner::OldProtocol { domain } => Err(ConnectionError::OldProtocol { domain }),
            Banner::Busy { domain, text } => Err(ConnectionError::Busy { domain, text }),
            Banner::Smtp { line } => Err(ConnectionError::SmtpServer { line }),
            Banner::Unknown { line } => Err(ConnectionError::NotCmtp { line }),
        }
    }

    fn reply(&mut self, now: Instant) -> Result<Option<ClientEvent>, ConnectionError> {
        if self.input.is_empty() {
            return Ok(None);
        }
        let Some(front) = self.outstanding.front() else {
            return self.unsolicited();
        };
        if front.kind == Kind::Streamed && self.stream.is_none() {
            // A closing reply bound to no request may come instead.
            if let Some(e) = self.closing_reply(front.seq) {
                return Err(e);
            }
        }
        if front.kind == Kind::Streamed {
            return self.streamed(now);
        }
        let decoded = crate::reply::decode_reply(&self.input, front.max_body)
            .map_err(PeerMisbehaved::from)?;
        let Some((reply, n)) = decoded else {
            if self.body_allowance.is_zero()
                && let Ok(Some((h, _))) = ReplyHeader::decode(&self.input)
            {
                self.body_allowance = allowance(h.body_len);
            }
            return Ok(None);
        };
        if let Some(e) = self.closing_reply(front.seq) {
            return Err(e);
        }
        self.input.advance(n);
        let front = self.outstanding.pop_front().expect("checked above");
        self.next_front(now);
        if front.kind == Kind::Greeting {
            self.greet(&front, &reply)?;
        } else {
            self.check(
                &front,
                &reply.header(),
                &body_hash(&reply.body),
                &reply.signature,
            )?;
        }
        Ok(Some(ClientEvent::Reply {
            seq: front.seq,
            reply,
        }))
    }

    /// Input while no reply is owed: only a closing reply may come.
    fn unsolicited(&mut self) -> Result<Option<ClientEvent>, ConnectionError> {
        match crate::reply::decode_reply(&self.input, MAX_REPLY_BODY) {
            Ok(None) => Ok(None),
            _ => Err(self
                .closing_reply(self.next_seq)
                .unwrap_or(PeerMisbehaved::UnexpectedReply.into())),
        }
    }

    /// A whole reply at the front of the input that closes the connection
    /// and is bound to no request (32 zero bytes) at position `seq`.
    fn closing_reply(&self, seq: u64) -> Option<ConnectionError> {
        let (reply, _) = crate::reply::decode_reply(&self.input, MAX_REPLY_BODY).ok()??;
        if !reply.status.closes_connection() {
            return None;
        }
        let unbound = Outstanding {
            seq,
            request: [0; 32],
            max_body: MAX_REPLY_BODY,
            kind: Kind::Whole,
        };
        self.check(
            &unbound,
            &reply.header(),
            &body_hash(&reply.body),
            &reply.signature,
        )
        .ok()?;
        Some(ConnectionError::ClosedByServer {
            status: reply.status.clone(),
            text: reply.text(),
        })
    }

    fn next_front(&mut self, now: Instant) {
        self.waiting_since = now;
        self.body_allowance = Duration::ZERO;
    }

    fn streamed(&mut self, now: Instant) -> Result<Option<ClientEvent>, ConnectionError> {
        let front = self.outstanding.front().expect("caller checked");
        let seq = front.seq;
        let max_body = front.max_body;
        let stream = self.stream.get_or_insert_with(|| InStream {
            decoder: ReplyDecoder::new(max_body),
            header: None,
            hasher: Sha256::new(),
        });
        let (n, ev) = stream
            .decoder
            .next(&self.input)
            .map_err(PeerMisbehaved::from)?;
        match ev {
            None => Ok(None),
            Some(ReplyEvent::Header(h)) => {
                self.input.advance(n);
                stream.header = Some(h.clone());
                self.body_allowance = allowance(h.body_len);
                Ok(Some(ClientEvent::StreamHeader { seq, header: h }))
            }
            Some(ReplyEvent::Body(_)) => {
                let data = self.input.split_to(n).freeze();
                stream.hasher.update(&data);
                Ok(Some(ClientEvent::StreamData { seq, data }))
            }
            Some(ReplyEvent::End(signature)) => {
                self.input.advance(n);
                let stream = self.stream.take().expect("in a stream");
                let header = stream.header.expect("the header precedes the end");
                let front = self.outstanding.pop_front().expect("caller checked");
                self.next_front(now);
                self.check(
                    &front,
                    &header,
                    &stream.hasher.finalize().into(),
                    &signature,
                )?;
                Ok(Some(ClientEvent::StreamEnd { seq, signature }))
            }
        }
    }

    fn greet(&mut self, front: &Outstanding, reply: &Reply) -> Result<(), ConnectionError> {
        if reply.status != Status::Success {
            return Err(PeerMisbehaved::GreetingRefused {
                status: reply.status.clone(),
                text: reply.text(),
            }
            .into());
        }
        let g = Greeting::parse(&reply.body).map_err(PeerMisbehaved::from)?;
        if let Some(k) = self.expected_key.or(self.tls_key)
            && k != g.key
        {
            return Err(ConnectionError::KeyMismatch {
                domain: g.domain.to_string(),
                expected: k.fingerprint_hex(),
                got: g.key.fingerprint_hex(),
            });
        }
        let binding = ReplyBinding {
            nonce: g.nonce,
            seq: front.seq,
            request: front.request,
        };
        verify(
            &binding,
            &reply.header(),
            &body_hash(&reply.body),
            &reply.signature,
            &g.key,
        )?;
        self.greeting = Some(g);
        Ok(())
    }

    fn check(
        &self,
        front: &Outstanding,
        header: &ReplyHeader,
        body_hash: &[u8; 32],
        signature: &[u8; 64],
    ) -> Result<(), ConnectionError> {
        // Before the greeting there is no nonce to check against: a client
        // that wants verified replies sends OHAI first (PROTOCOL.md §5.3).
        if let (Some(g), Some(key)) = (&self.greeting, self.server_key()) {
            let binding = ReplyBinding {
                nonce: g.nonce,
                seq: front.seq,
                request: front.request,
            };
            verify(&binding, header, body_hash, signature, &key)?;
        }
        Ok(())
    }
}

fn allowance(body_len: u64) -> Duration {
    Duration::from_secs(body_len / MIN_REPLY_RATE)
}

/// Checks a reply's signature for `binding` under `key`.
pub fn verify(
    binding: &ReplyBinding,
    header: &ReplyHeader,
    body_hash: &[u8; 32],
    signature: &[u8; 64],
    key: &PublicKey,
) -> Result<(), ConnectionError> {
    let data = binding.signed_data(header, body_hash);
    key.verify(SignatureTag::Reply, &[&data], signature)
        .map_err(|_| ConnectionError::BadSignature(header.status.clone()))
}
