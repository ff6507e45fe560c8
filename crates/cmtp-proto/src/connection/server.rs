//! The server's side of a connection (PROTOCOL.md §4–§7, §12.3–§13) as a
//! sans-IO state machine.
//!
//! [`ServerConnection`] owns everything the protocol says about one
//! connection: the banner, command framing and the consecutive-error limit,
//! the reply sequence and the signed binding of every reply to its request,
//! the stateless seed commands (`OHAI`, `HELP`, `NOOP`, `OBAI`), which
//! commands need a logged-in session, which exchange (`LOGIN`, `REGISTER`,
//! `PASSWORD`) is in progress, the message stream after `MAIL` with its
//! limits, hop count and early refusal, and every timeout as a deadline.
//!
//! What needs the server's data — key statements, accounts, the mailbox, the
//! store — is handed to the application as a [`ServerEvent`]; the
//! application answers with [`ServerConnection::reply`] (or the MAIL and
//! streaming calls), and the connection resumes. The driver moves bytes:
//! [`handle_input`](ServerConnection::handle_input) with what the peer sent,
//! [`output`](ServerConnection::output) for what to send, and
//! [`handle_timeout`](ServerConnection::handle_timeout) at
//! [`poll_timeout`](ServerConnection::poll_timeout). Time is passed in.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Instant;
//! use cmtp_proto::connection::server::{ServerConfig, ServerConnection};
//! use cmtp_proto::crypto::IdentityKey;
//! use cmtp_proto::names::Domain;
//!
//! let config = Arc::new(ServerConfig::new(
//!     Domain::parse("a.example").unwrap(),
//!     IdentityKey::from_seed(&[7; 32]),
//! ));
//! let now = Instant::now();
//! let mut conn: ServerConnection = ServerConnection::new(config, [1; 32], now);
//! // The banner goes out in clear; TLS follows.
//! let banner = conn.take_output();
//! assert!(banner.starts_with(b"554 a.example CMTP/2 "));
//! // An SMTP client gets an SMTP refusal and the connection closes.
//! conn.handle_input(b"EHLO mx.example\r\n", now);
//! assert!(conn.take_output().starts_with(b"554 5.5.0 "));
//! assert!(conn.is_closed());
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use sha2::{Digest, Sha256};

use crate::banner;
use crate::command::{Command, CommandDecodeError, CommandError, decode_command, request_digest};
use crate::crypto::{IdentityKey, SignatureTag};
use crate::limits::MAX_BANNER;
use crate::limits::MessageLimits;
use crate::message::{Envelope, MessageEvent, MessageReader};
use crate::names::{Account, Domain};
use crate::payload::{DeliveryFailure, FailureReason, Greeting};
use crate::reply::{REPLY_VERSION, ReplyBinding, ReplyHeader, Status, body_hash};
use crate::tls::{CHANNEL_BINDING_LEN, KeyExchange, ServerTlsConfig};
use std::io::Write;

/// The request digest of `MAIL\0`, to which every reply about a message is
/// bound (PROTOCOL.md §5.3).
pub fn mail_digest() -> [u8; 32] {
    request_digest(b"MAIL\0")
}

/// The timeouts of a connection (PROTOCOL.md §4.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a command while nothing is pending.
    pub idle: Duration,
    /// Longest time from a command's first byte to its last.
    pub command: Duration,
    /// The grace a message gets on top of its size at the minimum rate.
    pub data_grace: Duration,
    /// Minimum transfer rate of a message in bytes per second, enforced
    /// over every window of `data_grace` (PROTOCOL.md §4.3).
    pub min_data_rate: u64,
    /// Longest life of a connection that is not logged in (a peer that
    /// keeps a slot with a NOOP now and then is let go).
    pub stranger_session: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            idle: Duration::from_secs(300),
            command: Duration::from_secs(30),
            data_grace: Duration::from_secs(30),
            min_data_rate: 16 * 1024,
            stranger_session: Duration::from_secs(3600),
        }
    }
}

/// What every connection of one server shares.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The served domain.
    pub domain: Domain,
    /// The server key: signs every reply.
    pub key: IdentityKey,
    /// Software name and version (banner and greeting).
    pub software: String,
    /// Extension tokens announced in the greeting (PROTOCOL.md §6.1).
    pub extensions: Vec<String>,
    /// Message limits.
    pub limits: MessageLimits,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Consecutive bad commands answered before the connection is closed.
    pub max_bad_commands: u32,
    /// The body of the HELP reply.
    pub help: String,
    /// TLS: the key as a raw public key and in a self-issued certificate.
    pub tls: Arc<ServerTlsConfig>,
}

/// The extension tokens cmtpd announces (PROTOCOL.md §6.1).
pub const EXTENSIONS: &[&str] = &["REGISTER", "LOGIN-OPAQUE", "MAILBOX", "RELAY", "KT"];

impl ServerConfig {
    /// A configuration with the protocol's defaults.
    pub fn new(domain: Domain, key: IdentityKey) -> ServerConfig {
        let tls = ServerTlsConfig::new(&key, &domain, KeyExchange::default())
            .expect("a TLS configuration for an Ed25519 key");
        ServerConfig {
            tls: Arc::new(tls),
            domain,
            key,
            software: concat!("cmtp-proto ", env!("CARGO_PKG_VERSION")).into(),
            extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
            limits: MessageLimits::default(),
            timeouts: Timeouts::default(),
            max_bad_commands: 10,
            help: "CMTP: OHAI, MAIL, KEYREQUEST user domain, NOOP, LOGIN user, HELP, OBAI\n".into(),
        }
    }
}

/// The kind of exchange in progress on a connection (PROTOCOL.md §12).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExchangeKind {
    /// `LOGIN` answered; `LOGINFINISH` completes it.
    Login,
    /// `REGISTER` or `PASSWORD` answered; `REGFINISH` completes it.
    Registration,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The peer said OBAI.
    Obai,
    /// The peer closed its side.
    PeerClosed,
    /// A deadline passed (`TIMEOUT` was sent if a reply was owed).
    Timeout,
    /// A word, argument or blob over its limit (`TOOLONG`).
    TooLong,
    /// A message over the size, log or attachment limits (`TOOBIG`).
    TooBig,
    /// A message whose framing was lost (`BADMESSAGE`).
    BadMessage,
    /// Too many consecutive bad commands (`TOOMANYERRORS`).
    TooManyErrors,
    /// The peer spoke SMTP; it got an SMTP refusal.
    Smtp(&'static str),
    /// The server is shutting down.
    Shutdown,
    /// The application gave up on the connection.
    Aborted,
    /// The peer spoke in clear, not TLS: it got a refusal in clear.
    Clear,
    /// The TLS handshake or a TLS record failed.
    Tls(String),
}

impl CloseReason {
    /// Whether the server closes TLS in order (close_notify): the peer is
    /// still there to read it.
    fn says_goodbye(&self) -> bool {
        !matches!(
            self,
            CloseReason::PeerClosed | CloseReason::Aborted | CloseReason::Tls(_)
        )
    }
}

/// What the application must act on.
#[derive(Debug)]
#[non_exhaustive]
pub enum ServerEvent<E> {
    /// A command that needs the server's data. Answer it with
    /// [`ServerConnection::reply`] (or a streamed reply). The connection has
    /// already checked its framing and, for commands that need one, the
    /// login; `LOGIN`, `KEYLOGIN`, `REGISTER` and `PASSWORD` have abandoned
    /// any exchange in progress (and `LOGIN`/`KEYLOGIN` the login).
    Request(Command),
    /// `LOGINFINISH` with the state the application kept at `LOGIN`.
    LoginFinish {
        /// OPAQUE KE3.
        ke3: Vec<u8>,
        /// What [`ServerConnection::begin_exchange`] stored.
        exchange: E,
    },
    /// `REGFINISH` with the state kept at `REGISTER` or `PASSWORD`.
    RegFinish {
        /// The encoded registration bundle.
        bundle: Vec<u8>,
        /// What [`ServerConnection::begin_exchange`] stored.
        exchange: E,
    },
    /// `MAIL`: the envelope arrived (PROTOCOL.md §7.4 steps 2–6 are the
    /// application's). Answer with [`ServerConnection::accept_mail`] or
    /// [`ServerConnection::refuse_mail`].
    MailEnvelope {
        /// The command the message follows: `MAIL`, or `APPEND` (§13.6).
        intake: Command,
        /// The envelope.
        envelope: Envelope,
        /// The message's size as announced so far (§7.1): everything but
        /// the attachments, whose lengths have not arrived yet.
        announced: u64,
    },
    /// An attachment's length arrived: the accepted message's announced
    /// size is now this many bytes — reserve it before the bytes come.
    MailAnnounced(u64),
    /// Bytes of the accepted message in its stored form, in order: log,
    /// body, and for each attachment its `u64` length then its bytes.
    MailData(Bytes),
    /// The log has been read and the hop limit checked: the application's
    /// own log line goes here, before the body.
    MailLogEnd,
    /// The accepted message is complete. Answer with
    /// [`ServerConnection::reply`] (SUCCESS with a receipt once durable,
    /// DELIVERYFAILURE, TEMPFAILURE).
    MailEnd {
        /// The trailer as received.
        trailer: [u8; 64],
        /// The message hash (PROTOCOL.md §7.2).
        hash: [u8; 32],
    },
    /// The accepted message will not be completed (refused by a limit, a
    /// timeout, the peer went away): drop what was staged for it.
    MailAborted,
    /// Bad input the connection answered itself (for logs and metrics).
    BadInput(CommandError),
    /// A command the connection answered itself (for metrics): the seed's
    /// stateless commands, and refusals such as `AUTHREQUIRED`.
    Answered(&'static str),
}

#[derive(Debug)]
enum MailPhase {
    /// The envelope has not arrived yet.
    Head,
    /// The envelope was handed to the application.
    Deciding,
    /// Accepted: events flow to the application.
    Accepted {
        /// Log bytes still to come.
        log_left: u64,
        /// Lines (hops) in the log so far.
        log_lines: u64,
        /// Length of the application's own log line.
        own_line: u64,
        /// Whether the hop limit was checked.
        log_checked: bool,
    },
    /// Answered already (an early refusal): the rest is read and dropped.
    Discarding,
    /// Complete: the application owes the reply.
    Verdict,
}

#[derive(Debug)]
struct Mail {
    /// The start of the current rate window and the bytes it has seen.
    window: (Instant, u64),
    /// The command the message follows (`MAIL` or `APPEND`).
    intake: Command,
    /// Its digest: every reply about the message is bound to it.
    request: [u8; 32],
    reader: MessageReader,
    started: Instant,
    phase: MailPhase,
    /// The log length the envelope announced.
    log_len: u64,
    /// The message is over (answered early and read to its end).
    done: bool,
}

#[derive(Debug)]
struct Stream {
    request: [u8; 32],
    header: ReplyHeader,
    hasher: Sha256,
    left: u64,
}

#[derive(Debug)]
enum State {
    /// Reading commands.
    Commands,
    /// A command was handed to the application; its reply is owed.
    Awaiting { request: [u8; 32] },
    /// A reply body is being streamed.
    Streaming(Box<Stream>),
    /// Receiving a message after MAIL.
    Mail(Box<Mail>),
    /// Nothing more is read; what is in the output is the last.
    Closed(CloseReason),
}

/// The server's side of one connection. `E` is what the application keeps
/// between the two halves of an exchange (OPAQUE server state and the like).
pub struct ServerConnection<E = ()> {
    config: Arc<ServerConfig>,
    nonce: [u8; 32],
    seq: u64,
    input: BytesMut,
    /// Replies not yet handed to TLS.
    plain: Vec<u8>,
    /// Bytes for the wire: the banner, refusals in clear, TLS records.
    wire: Vec<u8>,
    /// How much of `wire` was already taken by the driver.
    sent: usize,
    /// TLS under the CMTP layer.
    transport: Transport,
    /// When the connection was accepted (the handshake's deadline).
    created: Instant,
    /// The TLS exporter value logins bind to, once established.
    channel_binding: Option<[u8; CHANNEL_BINDING_LEN]>,
    /// Whether close_notify was queued.
    close_notified: bool,
    /// Whether the client did not offer raw public keys (it got the
    /// self-issued certificate).
    x509_client: bool,
    state: State,
    bad_streak: u32,
    logged_in: Option<Account>,
    exchange: Option<(ExchangeKind, E)>,
    /// When the connection last had nothing to do (idle deadline).
    idle_since: Instant,
    /// When the first byte of an incomplete command arrived.
    partial_since: Option<Instant>,
    shutting_down: bool,
    /// An event produced outside `poll_event` (a timeout, the peer closing);
    /// boxed, as an idle connection keeps this field.
    queued: Option<Box<ServerEvent<E>>>,
}

impl<E> std::fmt::Debug for ServerConnection<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConnection")
            .field("domain", &self.config.domain)
            .field("seq", &self.seq)
            .field("state", &self.state)
            .field("logged_in", &self.logged_in)
            .finish_non_exhaustive()
    }
}

impl<E> ServerConnection<E> {
    /// A new connection: the banner is queued for sending. `nonce` is a fresh
    /// random value (PROTOCOL.md §5.3).
    pub fn new(config: Arc<ServerConfig>, nonce: [u8; 32], now: Instant) -> Self {
        let wire = banner::ready_line(&config.domain, &config.software).into_bytes();
        ServerConnection {
            config,
            nonce,
            seq: 0,
            input: BytesMut::new(),
            plain: Vec::new(),
            wire,
            sent: 0,
            transport: Transport::Start,
            created: now,
            channel_binding: None,
            close_notified: false,
            x509_client: false,
            state: State::Commands,
            bad_streak: 0,
            logged_in: None,
            exchange: None,
            idle_since: now,
            partial_since: None,
            shutting_down: false,
            queued: None,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// A new configuration (the server reloaded its own): limits and
    /// timeouts apply from the next command and the next message on; a
    /// message being received keeps the limits it started with.
    pub fn reconfigure(&mut self, config: Arc<ServerConfig>) {
        self.config = config;
    }

    /// The connection nonce (KEYLOGIN signatures bind to it).
    pub fn nonce(&self) -> &[u8; 32] {
        &self.nonce
    }

    /// The account this connection is logged in as.
    pub fn logged_in(&self) -> Option<&Account> {
        self.logged_in.as_ref()
    }

    /// Number of replies sent so far.
    pub fn replies_sent(&self) -> u64 {
        self.seq
    }

    /// Why the connection closed, once it has.
    pub fn close_reason(&self) -> Option<&CloseReason> {
        match &self.state {
            State::Closed(r) => Some(r),
            _ => None,
        }
    }

    /// Whether the connection is over: send what [`output`](Self::output)
    /// still holds, then close the socket.
    pub fn is_closed(&self) -> bool {
        let State::Closed(reason) = &self.state else {
            return false;
        };
        self.queued.is_none()
            && (self.close_notified || !reason.says_goodbye() || !self.is_established())
    }

    /// Whether a reply (or a MAIL decision) is owed by the application.
    pub fn is_awaiting_application(&self) -> bool {
        match &self.state {
            State::Awaiting { .. } | State::Streaming(_) => true,
            State::Mail(m) => matches!(m.phase, MailPhase::Deciding | MailPhase::Verdict),
            _ => false,
        }
    }

    /// Whether a message is being received (shutdown lets it finish).
    pub fn in_message(&self) -> bool {
        matches!(self.state, State::Mail(_))
    }

    /// Bytes that arrived from the peer.
    pub fn handle_input(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() || matches!(self.state, State::Closed(_)) {
            return;
        }
        match &mut self.transport {
            Transport::Start => {
                // §4.1: a TLS handshake record, or a peer that speaks in clear.
                self.transport = if data[0] == TLS_HANDSHAKE_RECORD {
                    Transport::Hello(Box::default())
                } else {
                    Transport::Clear(Vec::new())
                };
                self.handle_input(data, now);
            }
            Transport::Clear(seen) => {
                let room = MAX_BANNER.saturating_sub(seen.len());
                seen.extend_from_slice(&data[..data.len().min(room)]);
                self.refuse_clear(false);
            }
            Transport::Hello(acceptor) => {
                let mut rd = data;
                loop {
                    if acceptor.read_tls(&mut rd).is_err() {
                        return self.tls_failed("the ClientHello is too large");
                    }
                    match acceptor.accept() {
                        Ok(None) if rd.is_empty() => return,
                        Ok(None) => continue,
                        Ok(Some(accepted)) => {
                            let hello = accepted.client_hello();
                            let types = hello.server_cert_types();
                            self.x509_client = !types.is_some_and(|t| {
                                t.contains(&rustls::server::CertificateType::RawPublicKey)
                            });
                            let config = self.config.tls.for_client(types);
                            match accepted.into_connection(config) {
                                Ok(mut tls) => {
                                    tls.set_buffer_limit(None);
                                    self.transport = Transport::Tls(Box::new(tls));
                                    return self.tls_input(rd, now);
                                }
                                Err((e, mut alert)) => {
                                    let _ = alert.write(&mut self.wire);
                                    return self.tls_failed(&e.to_string());
                                }
                            }
                        }
                        Err((e, mut alert)) => {
                            let _ = alert.write(&mut self.wire);
                            return self.tls_failed(&e.to_string());
                        }
                    }
                }
            }
            Transport::Tls(_) => self.tls_input(data, now),
            Transport::Closed => {}
        }
    }

    /// TLS records: decrypted into the CMTP layer's input.
    fn tls_input(&mut self, rd: &[u8], now: Instant) {
        let Transport::Tls(tls) = &mut self.transport else {
            return;
        };
        let was_handshaking = tls.is_handshaking();
        let (plain, result) = crate::tls::decrypt(tls, rd, &mut self.wire);
        let established = was_handshaking && !tls.is_handshaking();
        let binding = established.then(|| crate::tls::channel_binding(tls));
        self.cmtp_input(&plain, now);
        match result {
            Err(why) => return self.tls_failed(&why),
            Ok(true) => return self.handle_eof(),
            Ok(false) => {}
        }
        match binding {
            Some(Ok(b)) => {
                self.channel_binding = Some(b);
                self.idle_since = now;
            }
            Some(Err(e)) => self.tls_failed(&e.to_string()),
            None => {}
        }
    }

    /// The peer did not start TLS: once its first line (or NUL-terminated
    /// word) is in, it gets a refusal in clear and the connection closes
    /// (§4.1, §16). `force`: refuse with what there is.
    fn refuse_clear(&mut self, force: bool) {
        let Transport::Clear(seen) = &self.transport else {
            return;
        };
        let complete = seen.contains(&b'\n') || seen.contains(&0) || seen.len() >= MAX_BANNER;
        if !complete && !force {
            return;
        }
        let domain = &self.config.domain;
        let (line, reason) = match crate::command::smtp_verb(seen) {
            Some(verb) => (banner::smtp_refusal(domain, verb), CloseReason::Smtp(verb)),
            None => (banner::clear_refusal(domain), CloseReason::Clear),
        };
        self.wire.extend_from_slice(line.as_bytes());
        self.transport = Transport::Closed;
        self.state = State::Closed(reason);
    }

    fn tls_failed(&mut self, why: &str) {
        self.transport = Transport::Closed;
        if !matches!(self.state, State::Closed(_)) {
            self.abort_mail();
            self.state = State::Closed(CloseReason::Tls(why.to_owned()));
        }
    }

    /// Plaintext from TLS.
    fn cmtp_input(&mut self, data: &[u8], now: Instant) {
        if data.is_empty() || matches!(self.state, State::Closed(_)) {
            return;
        }
        if self.input.is_empty() && self.input.capacity() > 256 * 1024 {
            // Give back what a large message used.
            self.input = BytesMut::new();
        }
        match &mut self.state {
            State::Commands if self.partial_since.is_none() => self.partial_since = Some(now),
            State::Mail(m) => {
                // A window is complete once it has seen the minimum rate's
                // worth of bytes; the next one starts now.
                let t = &self.config.timeouts;
                m.window.1 += data.len() as u64;
                if m.window.1
                    >= t.min_data_rate
                        .saturating_mul(t.data_grace.as_secs().max(1))
                {
                    m.window = (now, 0);
                }
            }
            _ => {}
        }
        self.input.extend_from_slice(data);
    }

    /// The peer closed its side (or the socket failed).
    pub fn handle_eof(&mut self) {
        if matches!(self.transport, Transport::Clear(_)) {
            return self.refuse_clear(true);
        }
        if matches!(self.state, State::Closed(_)) {
            return;
        }
        self.abort_mail();
        self.state = State::Closed(CloseReason::PeerClosed);
    }

    /// The application gives up on the connection (a store failure in the
    /// middle of a streamed reply, say): nothing more is sent or read.
    pub fn abort(&mut self) {
        if !matches!(self.state, State::Closed(_)) {
            self.state = State::Closed(CloseReason::Aborted);
        }
    }

    /// The server is stopping: an idle connection closes at once; one with
    /// commands already received answers them first; a message in progress
    /// is completed and answered.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        if matches!(self.state, State::Commands) && self.input.is_empty() {
            if !self.is_established() {
                self.transport = Transport::Closed;
            }
            self.state = State::Closed(CloseReason::Shutdown);
        }
    }

    /// Bytes to send to the peer (replies are encrypted here).
    pub fn output(&mut self) -> &[u8] {
        self.pump();
        &self.wire[self.sent..]
    }

    /// The driver sent `n` bytes of [`output`](Self::output).
    pub fn consume_output(&mut self, n: usize) {
        self.sent = (self.sent + n).min(self.wire.len());
        if self.sent == self.wire.len() {
            // An idle connection holds no buffer.
            self.wire = Vec::new();
            self.sent = 0;
        }
    }

    /// Takes everything there is to send.
    pub fn take_output(&mut self) -> Vec<u8> {
        self.pump();
        let out = self.wire.split_off(self.sent);
        self.wire = Vec::new();
        self.sent = 0;
        out
    }

    /// Hands the replies to TLS, and TLS's records to the wire.
    fn pump(&mut self) {
        let Transport::Tls(tls) = &mut self.transport else {
            return;
        };
        if !tls.is_handshaking() {
            if !self.plain.is_empty() {
                // The buffer limit is lifted: this never writes short.
                let _ = tls.writer().write_all(&self.plain);
                self.plain = Vec::new();
            }
            if let State::Closed(reason) = &self.state
                && reason.says_goodbye()
                && self.queued.is_none()
                && !self.close_notified
            {
                tls.send_close_notify();
                self.close_notified = true;
            }
        }
        while tls.wants_write() {
            if tls.write_tls(&mut self.wire).is_err() {
                break;
            }
        }
    }

    /// Whether TLS is established (the CMTP layer is running).
    pub fn is_established(&self) -> bool {
        matches!(&self.transport, Transport::Tls(t) if !t.is_handshaking())
    }

    /// The TLS exporter value logins bind to (PROTOCOL.md §12), once
    /// established.
    pub fn channel_binding(&self) -> Option<&[u8; CHANNEL_BINDING_LEN]> {
        self.channel_binding.as_ref()
    }

    /// The negotiated key-exchange group, once established.
    pub fn key_exchange_group(&self) -> Option<rustls::NamedGroup> {
        match &self.transport {
            Transport::Tls(t) => t.negotiated_key_exchange_group().map(|g| g.name()),
            _ => None,
        }
    }

    /// Whether the client was shown the key as a raw public key (`Some(true)`)
    /// or in the self-issued certificate (`Some(false)`), once established.
    pub fn raw_public_key(&self) -> Option<bool> {
        match &self.transport {
            Transport::Tls(t) if !t.is_handshaking() => Some(!self.x509_client),
            _ => None,
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let t = &self.config.timeouts;
        if matches!(self.state, State::Closed(_)) {
            return None;
        }
        if !self.is_established() {
            // The handshake (or a first line in clear) within the command timeout.
            return Some(self.created + t.command);
        }
        match &self.state {
            State::Commands => {
                let wait = match self.partial_since {
                    Some(since) if !self.input.is_empty() => since + t.command,
                    _ => self.idle_since + t.idle,
                };
                Some(match self.logged_in {
                    None => wait.min(self.created + t.stranger_session),
                    Some(_) => wait,
                })
            }
            State::Mail(m) => match m.phase {
                MailPhase::Deciding | MailPhase::Verdict => None,
                _ => {
                    // The whole message in its time, and at the minimum
                    // rate over every window along the way (also after an
                    // early refusal, while the rest is read and dropped).
                    let allowance = m.reader.announced() / t.min_data_rate.max(1);
                    let whole = m.started + t.data_grace + Duration::from_secs(allowance);
                    Some(whole.min(m.window.0 + t.data_grace))
                }
            },
            _ => None,
        }
    }

    /// Time has passed: a deadline that expired closes the connection, with
    /// `TIMEOUT` if a reply is owed to the peer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(deadline) = self.poll_timeout() else {
            return;
        };
        if now < deadline {
            return;
        }
        if !self.is_established() {
            if matches!(self.transport, Transport::Clear(_)) {
                return self.refuse_clear(true);
            }
            self.transport = Transport::Closed;
            self.state = State::Closed(CloseReason::Timeout);
            return;
        }
        let stranger_over =
            self.logged_in.is_none() && now >= self.created + self.config.timeouts.stranger_session;
        let owed_in_mail = match &self.state {
            State::Commands => None,
            State::Mail(m) => Some((!matches!(m.phase, MailPhase::Discarding), m.request)),
            _ => return,
        };
        match owed_in_mail {
            None if stranger_over && self.input.is_empty() => self.push_reply(
                Status::Timeout,
                b"a connection that is not logged in may last only so long; closing",
                [0; 32],
            ),
            None => self.push_reply(
                Status::Timeout,
                b"no complete command in time; closing",
                [0; 32],
            ),
            Some((owed, mail_request)) => {
                // The reply to MAIL if it is still owed; after an early
                // refusal the MAIL is answered, and TIMEOUT answers nothing.
                let request = if owed { mail_request } else { [0; 32] };
                self.push_reply(
                    Status::Timeout,
                    b"the message arrived too slowly; closing",
                    request,
                );
                self.abort_mail();
            }
        }
        self.state = State::Closed(CloseReason::Timeout);
    }

    /// The next thing the application must act on, or `None` when the
    /// connection needs more input, is waiting for the application, or is
    /// closed.
    pub fn poll_event(&mut self, now: Instant) -> Option<ServerEvent<E>> {
        if let Some(ev) = self.queued.take() {
            return Some(*ev);
        }
        loop {
            match &mut self.state {
                State::Closed(_) | State::Awaiting { .. } | State::Streaming(_) => return None,
                State::Mail(_) => match self.mail_step() {
                    Step::Event(ev) => return Some(ev),
                    Step::Wait => return None,
                    Step::Continue => continue,
                },
                State::Commands => match self.command_step(now) {
                    Step::Event(ev) => return Some(ev),
                    Step::Wait => return None,
                    Step::Continue => continue,
                },
            }
        }
    }

    /// Answers the command the application was given (or the message after
    /// [`ServerEvent::MailEnd`]).
    pub fn reply(&mut self, status: Status, body: &[u8]) {
        let request = match &self.state {
            State::Awaiting { request } => *request,
            State::Mail(m) if matches!(m.phase, MailPhase::Verdict) => m.request,
            _ => {
                debug_assert!(false, "reply with nothing to answer");
                return;
            }
        };
        self.push_reply(status.clone(), body, request);
        self.state = self.after_reply(&status);
    }

    /// Answers with a body of `len` bytes that the application streams with
    /// [`stream_body`](Self::stream_body); the signature follows the last byte.
    pub fn begin_streamed_reply(&mut self, len: u64) {
        let State::Awaiting { request } = self.state else {
            debug_assert!(false, "streamed reply with nothing to answer");
            return;
        };
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status: Status::Success,
            body_len: len,
        };
        header.encode(&mut self.plain);
        let stream = Stream {
            request,
            header,
            hasher: Sha256::new(),
            left: len,
        };
        self.state = State::Streaming(Box::new(stream));
        if len == 0 {
            self.end_stream();
        }
    }

    /// Appends body bytes to a streamed reply (at most what is left of it).
    pub fn stream_body(&mut self, bytes: &[u8]) {
        let State::Streaming(s) = &mut self.state else {
            debug_assert!(false, "no streamed reply in progress");
            return;
        };
        let take = bytes
            .len()
            .min(usize::try_from(s.left).unwrap_or(usize::MAX));
        s.hasher.update(&bytes[..take]);
        s.left -= take as u64;
        self.plain.extend_from_slice(&bytes[..take]);
        if s.left == 0 {
            self.end_stream();
        }
    }

    /// How many body bytes the streamed reply still needs.
    pub fn stream_remaining(&self) -> u64 {
        match &self.state {
            State::Streaming(s) => s.left,
            _ => 0,
        }
    }

    fn end_stream(&mut self) {
        let State::Streaming(s) = std::mem::replace(&mut self.state, State::Commands) else {
            return;
        };
        let binding = ReplyBinding {
            nonce: self.nonce,
            seq: self.seq,
            request: s.request,
        };
        let data = binding.signed_data(&s.header, &s.hasher.finalize().into());
        let signature = self.config.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        self.plain.extend_from_slice(&signature);
        self.state = self.resume();
    }

    /// Stores the application's state of an exchange its reply opened
    /// (`LOGIN` → [`ExchangeKind::Login`], `REGISTER`/`PASSWORD` →
    /// [`ExchangeKind::Registration`]); call before replying SUCCESS.
    pub fn begin_exchange(&mut self, kind: ExchangeKind, state: E) {
        self.exchange = Some((kind, state));
    }

    /// The login proved by `LOGINFINISH` or `KEYLOGIN`: the connection is
    /// logged in as `account` until it closes or another login starts.
    pub fn logged_in_as(&mut self, account: Account) {
        self.logged_in = Some(account);
    }

    /// Accepts the message whose envelope was just given; `own_log_line` is
    /// the length of the line the application will add at
    /// [`ServerEvent::MailLogEnd`] (it counts against the log limit).
    pub fn accept_mail(&mut self, own_log_line: u64) {
        let State::Mail(m) = &mut self.state else {
            debug_assert!(false, "accept_mail outside MAIL");
            return;
        };
        debug_assert!(matches!(m.phase, MailPhase::Deciding));
        m.phase = MailPhase::Accepted {
            log_left: m.log_len,
            log_lines: 0,
            own_line: own_log_line,
            log_checked: false,
        };
    }

    /// Refuses the message being received, now (at the envelope or in the
    /// middle: a store failure). The rest of the message is read and dropped;
    /// the connection stays usable unless `status` closes it.
    pub fn refuse_mail(&mut self, status: Status, body: &[u8]) {
        let State::Mail(m) = &mut self.state else {
            debug_assert!(false, "refuse_mail outside MAIL");
            return;
        };
        match m.phase {
            MailPhase::Discarding => {}
            MailPhase::Verdict => self.reply(status, body),
            _ => {
                m.phase = MailPhase::Discarding;
                let closes = status.closes_connection();
                let request = m.request;
                self.push_reply(status, body, request);
                if closes {
                    self.state = State::Closed(CloseReason::Aborted);
                }
            }
        }
    }

    fn after_reply(&mut self, status: &Status) -> State {
        if status.closes_connection() {
            self.abort_mail();
            return State::Closed(CloseReason::Aborted);
        }
        self.resume()
    }

    /// Back to reading commands (or closed, when shutting down with nothing
    /// more to do).
    fn resume(&mut self) -> State {
        if self.shutting_down && self.input.is_empty() {
            State::Closed(CloseReason::Shutdown)
        } else {
            State::Commands
        }
    }

    fn abort_mail(&mut self) {
        if let State::Mail(m) = &self.state
            && matches!(m.phase, MailPhase::Accepted { .. })
        {
            self.queued = Some(Box::new(ServerEvent::MailAborted));
        }
    }

    fn push_reply(&mut self, status: Status, body: &[u8], request: [u8; 32]) {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status,
            body_len: body.len() as u64,
        };
        let binding = ReplyBinding {
            nonce: self.nonce,
            seq: self.seq,
            request,
        };
        let data = binding.signed_data(&header, &body_hash(body));
        let signature = self.config.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        header.encode(&mut self.plain);
        self.plain.extend_from_slice(body);
        self.plain.extend_from_slice(&signature);
    }

    fn greeting(&self) -> Greeting {
        let c = &self.config;
        Greeting {
            domain: c.domain.clone(),
            software: c.software.clone(),
            extensions: c.extensions.clone(),
            key: c.key.public(),
            nonce: self.nonce,
            max_message_size: c.limits.max_message_size,
            max_attachments: c.limits.max_attachments,
        }
    }

    fn command_step(&mut self, now: Instant) -> Step<E> {
        if self.input.is_empty() {
            self.partial_since = None;
            if self.shutting_down {
                self.state = State::Closed(CloseReason::Shutdown);
            }
            return Step::Wait;
        }
        let (cmd, used) = match decode_command(&self.input) {
            Ok(Some(c)) => c,
            Ok(None) => return Step::Wait,
            Err(e) => return self.bad_command(e),
        };
        let frame = self.input.split_to(used);
        let request = request_digest(&frame);
        self.bad_streak = 0;
        self.idle_since = now;
        self.partial_since = if self.input.is_empty() {
            None
        } else {
            Some(now)
        };
        match cmd {
            Command::Ohai => {
                let text = self.greeting().to_text();
                self.push_reply(Status::Success, text.as_bytes(), request);
                Step::Event(ServerEvent::Answered("OHAI"))
            }
            Command::Help => {
                let config = self.config.clone();
                self.push_reply(Status::Success, config.help.as_bytes(), request);
                Step::Event(ServerEvent::Answered("HELP"))
            }
            Command::Noop => {
                self.push_reply(Status::Success, b"", request);
                Step::Event(ServerEvent::Answered("NOOP"))
            }
            Command::Obai => {
                self.push_reply(Status::Success, b"bye", request);
                self.state = State::Closed(CloseReason::Obai);
                Step::Event(ServerEvent::Answered("OBAI"))
            }
            cmd if cmd.carries_message() => {
                // A message follows (MAIL, APPEND): it is read whatever the
                // answer, so that the framing survives a refusal.
                let refused = cmd.needs_login() && self.logged_in.is_none();
                let word = cmd.word();
                let mut mail = Mail {
                    window: (now, 0),
                    intake: cmd,
                    request,
                    reader: MessageReader::new(self.config.limits),
                    started: now,
                    phase: MailPhase::Head,
                    log_len: 0,
                    done: false,
                };
                if refused {
                    let text = format!("{word} needs a logged-in session");
                    self.push_reply(Status::AuthRequired, text.as_bytes(), request);
                    mail.phase = MailPhase::Discarding;
                }
                self.state = State::Mail(Box::new(mail));
                Step::Continue
            }
            Command::LoginFinish { ke3 } => match self.exchange.take() {
                Some((ExchangeKind::Login, exchange)) => {
                    self.state = State::Awaiting { request };
                    Step::Event(ServerEvent::LoginFinish { ke3, exchange })
                }
                other => {
                    self.exchange = other;
                    self.push_reply(
                        Status::Failure,
                        b"no LOGIN in progress on this connection",
                        request,
                    );
                    Step::Event(ServerEvent::Answered("LOGINFINISH"))
                }
            },
            Command::RegFinish { bundle } => match self.exchange.take() {
                Some((ExchangeKind::Registration, exchange)) => {
                    self.state = State::Awaiting { request };
                    Step::Event(ServerEvent::RegFinish { bundle, exchange })
                }
                other => {
                    self.exchange = other;
                    self.push_reply(
                        Status::Failure,
                        b"no REGISTER or PASSWORD in progress on this connection",
                        request,
                    );
                    Step::Event(ServerEvent::Answered("REGFINISH"))
                }
            },
            cmd if cmd.needs_login() && self.logged_in.is_none() => {
                let text = format!("{} needs a logged-in session", cmd.word());
                self.push_reply(Status::AuthRequired, text.as_bytes(), request);
                Step::Event(ServerEvent::Answered(cmd.word()))
            }
            cmd => {
                match &cmd {
                    Command::Login { .. } | Command::KeyLogin { .. } => {
                        self.logged_in = None;
                        self.exchange = None;
                    }
                    Command::Register { .. } | Command::Password { .. } => self.exchange = None,
                    _ => {}
                }
                self.state = State::Awaiting { request };
                Step::Event(ServerEvent::Request(cmd))
            }
        }
    }

    fn bad_command(&mut self, e: CommandDecodeError) -> Step<E> {
        if let CommandError::SmtpVerb(verb) = e.kind {
            let line = banner::smtp_refusal(&self.config.domain, verb);
            self.plain.extend_from_slice(line.as_bytes());
            self.state = State::Closed(CloseReason::Smtp(verb));
            return Step::Event(ServerEvent::BadInput(e.kind));
        }
        let Some(n) = e.resume_at else {
            // The framing is lost: nothing after this can be trusted.
            let (status, reason) = match e.kind {
                CommandError::WordTooLong
                | CommandError::ArgumentTooLong { .. }
                | CommandError::BlobTooLarge { .. } => (Status::TooLong, CloseReason::TooLong),
                _ => (Status::BadCommand, CloseReason::TooLong),
            };
            self.push_reply(status, format!("{}; closing", e.kind).as_bytes(), [0; 32]);
            self.state = State::Closed(reason);
            return Step::Event(ServerEvent::BadInput(e.kind));
        };
        let frame = self.input.split_to(n);
        let request = request_digest(&frame);
        let status = match e.kind {
            CommandError::UnknownCommand(_) => Status::BadCommand,
            _ => Status::BadArgument,
        };
        self.push_reply(status, e.kind.to_string().as_bytes(), request);
        self.bad_streak += 1;
        if self.bad_streak >= self.config.max_bad_commands {
            // PROTOCOL.md §4.2: the limit-th bad command is answered as any
            // other, then TOOMANYERRORS (bound to no request) and the close.
            let text = format!("{} consecutive bad commands; closing", self.bad_streak);
            self.push_reply(Status::TooManyErrors, text.as_bytes(), [0; 32]);
            self.state = State::Closed(CloseReason::TooManyErrors);
        }
        Step::Event(ServerEvent::BadInput(e.kind))
    }

    fn mail_step(&mut self) -> Step<E> {
        let State::Mail(mut m) = std::mem::replace(&mut self.state, State::Commands) else {
            unreachable!("mail_step outside MAIL");
        };
        let step = self.mail_step_in(&mut m);
        // The step may have closed the connection or finished the message.
        if matches!(self.state, State::Commands) && !m.done {
            self.state = State::Mail(m);
        }
        step
    }

    fn mail_step_in(&mut self, m: &mut Mail) -> Step<E> {
        if matches!(m.phase, MailPhase::Deciding | MailPhase::Verdict) {
            return Step::Wait;
        }
        if let MailPhase::Accepted {
            log_left: 0,
            log_lines,
            own_line,
            log_checked: false,
        } = m.phase
        {
            // The whole log has arrived (PROTOCOL.md §7.4 step 7).
            let limits = self.config.limits;
            let log_len = m.log_len;
            let refusal = if log_len.saturating_add(own_line) > limits.max_log {
                Some(format!(
                    "the log is full ({log_len} bytes): the message has travelled too far"
                ))
            } else if log_lines >= u64::from(limits.max_hops) {
                Some(format!(
                    "the message has passed {log_lines} servers already (mail loop?)"
                ))
            } else {
                None
            };
            return match refusal {
                Some(text) => {
                    m.phase = MailPhase::Discarding;
                    let body = DeliveryFailure::new(FailureReason::Loop, text).to_bytes();
                    self.push_reply(Status::DeliveryFailure, &body, m.request);
                    Step::Event(ServerEvent::MailAborted)
                }
                None => {
                    m.phase = MailPhase::Accepted {
                        log_left: 0,
                        log_lines,
                        own_line,
                        log_checked: true,
                    };
                    Step::Event(ServerEvent::MailLogEnd)
                }
            };
        }
        let accepted = matches!(m.phase, MailPhase::Accepted { .. });
        let (n, ev) = match m.reader.next(&self.input) {
            Ok(x) => x,
            Err(e) => {
                let (status, reason) = if e.is_limit() {
                    (Status::TooBig, CloseReason::TooBig)
                } else {
                    (Status::BadMessage, CloseReason::BadMessage)
                };
                if !matches!(m.phase, MailPhase::Discarding) {
                    self.push_reply(status, format!("{e}; closing").as_bytes(), m.request);
                }
                self.state = State::Closed(reason);
                return if accepted {
                    Step::Event(ServerEvent::MailAborted)
                } else {
                    Step::Wait
                };
            }
        };
        let Some(ev) = ev else {
            self.input.advance(n);
            return Step::Wait;
        };
        match ev {
            MessageEvent::Envelope(raw) => {
                self.input.advance(n);
                m.log_len = raw.log_len;
                if matches!(m.phase, MailPhase::Discarding) {
                    // Answered before its envelope (APPEND without a login).
                    return Step::Continue;
                }
                match raw.parse() {
                    Ok(envelope) => {
                        m.phase = MailPhase::Deciding;
                        Step::Event(ServerEvent::MailEnvelope {
                            intake: m.intake.clone(),
                            envelope,
                            announced: m.reader.announced(),
                        })
                    }
                    Err(e) => {
                        // §7.4 step 1: the framing is intact, the rest is dropped.
                        m.phase = MailPhase::Discarding;
                        let text = format!("invalid envelope: {e}");
                        self.push_reply(Status::BadMessage, text.as_bytes(), m.request);
                        Step::Continue
                    }
                }
            }
            MessageEvent::Log(_) => {
                let bytes = self.input.split_to(n).freeze();
                match &mut m.phase {
                    MailPhase::Accepted {
                        log_left,
                        log_lines,
                        ..
                    } => {
                        *log_left -= bytes.len() as u64;
                        *log_lines += bytes.iter().filter(|&&c| c == b'\n').count() as u64;
                        Step::Event(ServerEvent::MailData(bytes))
                    }
                    _ => Step::Continue,
                }
            }
            MessageEvent::Body(_) | MessageEvent::Attachment(_) => {
                let bytes = self.input.split_to(n).freeze();
                if accepted {
                    Step::Event(ServerEvent::MailData(bytes))
                } else {
                    Step::Continue
                }
            }
            MessageEvent::AttachmentStart { len, .. } => {
                self.input.advance(n);
                if accepted {
                    // The size first (to reserve), then the length field.
                    self.queued = Some(Box::new(ServerEvent::MailData(Bytes::copy_from_slice(
                        &len.to_be_bytes(),
                    ))));
                    Step::Event(ServerEvent::MailAnnounced(m.reader.announced()))
                } else {
                    Step::Continue
                }
            }
            MessageEvent::End { trailer, hash } => {
                self.input.advance(n);
                if accepted {
                    m.phase = MailPhase::Verdict;
                    Step::Event(ServerEvent::MailEnd { trailer, hash })
                } else {
                    // Answered early: back to commands.
                    m.done = true;
                    self.state = self.resume();
                    Step::Continue
                }
            }
        }
    }
}

// Returned by value and matched at once: boxing the event would cost an
// allocation per event for nothing.
#[allow(clippy::large_enum_variant)]
enum Step<E> {
    Event(ServerEvent<E>),
    Wait,
    Continue,
}

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

enum Transport {
    /// Nothing from the peer yet.
    Start,
    /// The peer spoke in clear: its first bytes, until a refusal is chosen.
    Clear(Vec<u8>),
    /// The ClientHello is arriving.
    Hello(Box<rustls::server::Acceptor>),
    /// TLS, handshaking or established.
    Tls(Box<rustls::ServerConnection>),
    /// Nothing more is read or written by TLS.
    Closed,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Transport::Start => "Start",
            Transport::Clear(_) => "Clear",
            Transport::Hello(_) => "Hello",
            Transport::Tls(_) => "Tls",
            Transport::Closed => "Closed",
        })
    }
}
