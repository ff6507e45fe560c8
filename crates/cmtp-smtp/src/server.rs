//! The receiving side of an SMTP connection (RFC 5321, PROTOCOL.md §19.1).
//!
//! [`SmtpServer`] takes the bytes that arrive ([`SmtpServer::receive`]),
//! answers by itself what needs no data (the greeting, EHLO/HELO, RSET,
//! NOOP, VRFY, HELP, QUIT, framing errors, commands out of sequence), and
//! asks the application through an [`Event`] for what does: the sender
//! (`MAIL FROM`), each recipient (`RCPT TO`), the message (after `DATA`),
//! and the TLS handshake after `STARTTLS`. The application answers with
//! [`SmtpServer::accept`], [`SmtpServer::accept_message`] or
//! [`SmtpServer::refuse`]; until it does, no further command is read, so
//! pipelined commands (RFC 2920) are answered in order.
//!
//! Rules this machine enforces:
//!
//! - **Lines end in CR LF.** A command line ended by a bare LF is refused
//!   (`500 5.5.2`); a command line longer than [`MAX_COMMAND_LINE`] is
//!   refused and skipped up to its end.
//! - **DATA is strict** (the SMTP smuggling lesson, CVE-2023-51764): the
//!   message ends only at `CR LF . CR LF`; a bare LF or a bare CR anywhere in
//!   the message makes the server read on to that end, refuse the message
//!   (`550 5.5.2`) and close the connection, so nothing after it is ever
//!   read as a command.
//! - **SIZE** (RFC 1870): a `SIZE=` over the limit is refused at `MAIL FROM`
//!   (`552 5.3.4`); a message that grows over the limit is read to its end
//!   without being kept, then refused. Memory stays bounded by the limit.
//! - **STARTTLS** (RFC 3207): bytes pipelined after `STARTTLS` are thrown
//!   away (CVE-2011-0411), and after the handshake the session starts over
//!   (a new EHLO is needed).
//! - **Bad commands**: after `max_bad_commands` in a row, `421` and close.
//! - **Timeouts**: the command timeout between commands and the data
//!   timeout between bytes of a message (RFC 5321 §4.5.3.2); on expiry,
//!   `421 4.4.2` and close. No timeout runs while the application decides.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::address::{Mailbox, parse_path, split_path};
use crate::reply::Reply;

/// Longest command line, CR LF included (RFC 5321 §4.5.3.1.4 says 512;
/// extensions may add to it, so some room is left).
pub const MAX_COMMAND_LINE: usize = 1000;

/// Unanswered pipelined input kept while the application decides; beyond
/// it the shell stops reading ([`SmtpServer::wants_input`]).
pub const MAX_PENDING_INPUT: usize = 64 * 1024;

/// A partial DATA line is handed on once it is this long (memory stays
/// bounded whatever the line lengths).
const DATA_FLUSH: usize = 8 * 1024;

/// What the machine needs to know.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's host name, in the greeting and the EHLO reply.
    pub hostname: String,
    /// The largest message accepted (`SIZE`), in bytes.
    pub max_message_size: u64,
    /// Recipients per message.
    pub max_recipients: usize,
    /// Consecutive bad commands before the connection is closed.
    pub max_bad_commands: u32,
    /// Whether STARTTLS is offered (a certificate is configured).
    pub starttls: bool,
    /// Whether `MAIL` is refused before STARTTLS.
    pub require_tls: bool,
    /// Longest wait for a command (RFC 5321 §4.5.3.2.7: 5 minutes).
    pub command_timeout: Duration,
    /// Longest wait for the next bytes of a message (§4.5.3.2.5: 3 minutes).
    pub data_timeout: Duration,
}

impl ServerConfig {
    /// RFC 5321's timeouts, 25 MiB, 100 recipients, 10 bad commands, no TLS.
    pub fn new(hostname: &str) -> ServerConfig {
        ServerConfig {
            hostname: hostname.to_owned(),
            max_message_size: 25 * 1024 * 1024,
            max_recipients: 100,
            max_bad_commands: 10,
            starttls: false,
            require_tls: false,
            command_timeout: Duration::from_secs(300),
            data_timeout: Duration::from_secs(180),
        }
    }
}

/// The body type declared at `MAIL FROM` (RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BodyType {
    /// 7-bit ASCII (the default).
    #[default]
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// A message and its envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The sender (`None`: the null reverse path of a bounce).
    pub reverse_path: Option<Mailbox>,
    /// The recipients the application accepted.
    pub recipients: Vec<Mailbox>,
    /// The declared body type.
    pub body: BodyType,
    /// The message as sent, dot-unstuffed, lines ending in CR LF, without
    /// the final `.` line.
    pub data: Vec<u8>,
}

/// What the application must decide or learn.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `EHLO`/`HELO` (already answered): the client's name for itself.
    Hello {
        /// The name given.
        name: String,
        /// `EHLO` rather than `HELO`.
        extended: bool,
    },
    /// `MAIL FROM`: answer [`SmtpServer::accept`] or [`SmtpServer::refuse`].
    MailFrom {
        /// The sender (`None`: `<>`).
        reverse_path: Option<Mailbox>,
        /// The size the client announced.
        size: Option<u64>,
        /// The declared body type.
        body: BodyType,
    },
    /// `RCPT TO`: answer [`SmtpServer::accept`] or [`SmtpServer::refuse`].
    RcptTo {
        /// The recipient.
        forward_path: Mailbox,
    },
    /// A whole message: answer [`SmtpServer::accept_message`] once it is
    /// durably stored, or [`SmtpServer::refuse`].
    Message(Transaction),
    /// The client asked for TLS and was told to go ahead: write out what
    /// [`SmtpServer::take_output`] holds, run the handshake on the socket,
    /// then call [`SmtpServer::tls_established`] (or close).
    StartTls,
    /// The connection is over (QUIT, an error, a timeout): write out what
    /// is left and close.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Mail,
    Rcpt,
    Message,
}

#[derive(Debug)]
enum Mode {
    Command,
    /// Between `354` and the final dot.
    Data(DataState),
    /// Waiting for the application's answer.
    Deciding(Awaiting),
    /// After `220 Ready to start TLS`, until the handshake is done.
    Handshake,
    Closed,
}

#[derive(Debug, Default)]
struct DataState {
    /// The next byte starts a line, and the previous line ended in CR LF.
    line_start: bool,
    /// A bare CR or bare LF was seen.
    bad_newline: bool,
    /// The message went over the size limit.
    too_big: bool,
    /// Bytes of the message so far (counted even when not kept).
    size: u64,
    /// The application refused the message while it arrived: read on to
    /// its end, then answer this.
    refused: Option<Reply>,
}

impl DataState {
    /// Counts `bytes` of the message (a line, or the head of a long one)
    /// without its leading dot at a line's start, and keeps them in `data`
    /// unless the message is already lost (too big, bad newline, refused),
    /// in which case `data` is dropped.
    fn take(&mut self, bytes: &[u8], max: u64, data: &mut Vec<u8>) {
        let mut content = bytes;
        if self.line_start && content.first() == Some(&b'.') {
            content = &content[1..];
        }
        self.size = self.size.saturating_add(content.len() as u64);
        if self.size > max || self.bad_newline || self.refused.is_some() {
            self.too_big |= self.size > max;
            *data = Vec::new();
        } else {
            data.extend_from_slice(content);
        }
    }
}

/// The server side of one SMTP connection.
#[derive(Debug)]
pub struct SmtpServer {
    cfg: ServerConfig,
    mode: Mode,
    input: Vec<u8>,
    output: Vec<u8>,
    events: VecDeque<Event>,
    helo: Option<String>,
    tls: bool,
    reverse_path: Option<Option<Mailbox>>,
    pending_rcpt: Option<Mailbox>,
    recipients: Vec<Mailbox>,
    body: BodyType,
    data: Vec<u8>,
    bad_commands: u32,
    deadline: Option<Instant>,
    /// Skipping the rest of an over-long command line.
    skipping_line: bool,
}

impl SmtpServer {
    /// A new connection; the `220` greeting is queued.
    pub fn new(cfg: ServerConfig, now: Instant) -> SmtpServer {
        let mut s = SmtpServer {
            mode: Mode::Command,
            input: Vec::new(),
            output: Vec::new(),
            events: VecDeque::new(),
            helo: None,
            tls: false,
            reverse_path: None,
            pending_rcpt: None,
            recipients: Vec::new(),
            body: BodyType::default(),
            data: Vec::new(),
            bad_commands: 0,
            deadline: Some(now + cfg.command_timeout),
            skipping_line: false,
            cfg,
        };
        let greeting = format!("{} ESMTP cmtpd", s.cfg.hostname);
        s.reply(Reply::new(220, "", greeting));
        s
    }

    /// A connection refused at once (`421`, e.g. too many connections):
    /// the bytes to write before closing.
    pub fn busy(hostname: &str, why: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Reply::new(421, "4.7.0", format!("{hostname} {why}")).encode(&mut out);
        out
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.cfg
    }

    /// Replaces the limits (a reload); applies from the next command on.
    pub fn reconfigure(&mut self, cfg: ServerConfig) {
        self.cfg = cfg;
    }

    /// The name the client gave in EHLO/HELO.
    pub fn helo(&self) -> Option<&str> {
        self.helo.as_deref()
    }

    /// Whether the session runs inside TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Whether the connection is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.mode, Mode::Closed)
    }

    /// Whether the shell should read more bytes now.
    pub fn wants_input(&self) -> bool {
        match self.mode {
            Mode::Closed | Mode::Handshake => false,
            Mode::Deciding(_) => self.input.len() < MAX_PENDING_INPUT,
            Mode::Command => self.input.len() < MAX_PENDING_INPUT,
            Mode::Data(_) => true,
        }
    }

    /// Bytes from the peer.
    pub fn receive(&mut self, bytes: &[u8], now: Instant) {
        if matches!(self.mode, Mode::Closed | Mode::Handshake) {
            return;
        }
        self.input.extend_from_slice(bytes);
        if !matches!(self.mode, Mode::Deciding(_)) {
            self.deadline = Some(now + self.timeout_now());
        }
    }

    fn timeout_now(&self) -> Duration {
        match self.mode {
            Mode::Data(_) => self.cfg.data_timeout,
            _ => self.cfg.command_timeout,
        }
    }

    /// The peer closed its side.
    pub fn handle_eof(&mut self) {
        if !self.is_closed() {
            self.mode = Mode::Closed;
            self.events.push_back(Event::Closed);
        }
    }

    /// When [`handle_timeout`](Self::handle_timeout) must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.mode {
            Mode::Deciding(_) | Mode::Closed | Mode::Handshake => None,
            _ => self.deadline,
        }
    }

    /// Time passed: past the deadline the connection is closed with `421`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.poll_timeout()
            && now >= d
        {
            let host = self.cfg.hostname.clone();
            self.close_with(Reply::new(
                421,
                "4.4.2",
                format!("{host} Error: timeout exceeded"),
            ));
        }
    }

    /// Bytes to write to the peer.
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.output)
    }

    /// The next thing the application must handle, after processing as
    /// much input as can be answered without it.
    pub fn poll_event(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.events.pop_front() {
                return Some(e);
            }
            if !self.step() {
                return None;
            }
        }
    }

    /// Bytes of the message being received that are held in memory now
    /// (0 outside DATA): what the application has to reserve for.
    pub fn data_len(&self) -> usize {
        match self.mode {
            Mode::Data(_) => self.data.len(),
            _ => 0,
        }
    }

    /// Refuses the message being received (e.g. its bytes no longer fit
    /// the budget): the rest is read and dropped, and `reply` answers it at
    /// its end. Outside DATA, nothing happens.
    pub fn refuse_data(&mut self, reply: Reply) {
        if let Mode::Data(st) = &mut self.mode {
            st.refused = Some(reply);
            self.data = Vec::new();
        }
    }

    /// Accepts the pending `MAIL FROM` or `RCPT TO`.
    pub fn accept(&mut self) {
        match self.mode {
            Mode::Deciding(Awaiting::Mail) => {
                self.mode = Mode::Command;
                self.reply(Reply::new(250, "2.1.0", "Ok"));
            }
            Mode::Deciding(Awaiting::Rcpt) => {
                self.mode = Mode::Command;
                if let Some(r) = self.pending_rcpt.take() {
                    self.recipients.push(r);
                }
                self.reply(Reply::new(250, "2.1.5", "Ok"));
            }
            _ => {}
        }
    }

    /// The message is durably stored: `250 2.0.0 Ok: queued as <id>`.
    pub fn accept_message(&mut self, id: &str) {
        if let Mode::Deciding(Awaiting::Message) = self.mode {
            self.mode = Mode::Command;
            self.reset_transaction();
            self.reply(Reply::new(250, "2.0.0", format!("Ok: queued as {id}")));
        }
    }

    /// Refuses what is pending (`MAIL FROM`, `RCPT TO` or the message) with
    /// `reply`; a `421` reply closes the connection.
    pub fn refuse(&mut self, reply: Reply) {
        let Mode::Deciding(what) = self.mode else {
            return;
        };
        self.mode = Mode::Command;
        match what {
            Awaiting::Mail => self.reverse_path = None,
            Awaiting::Rcpt => self.pending_rcpt = None,
            Awaiting::Message => self.reset_transaction(),
        }
        if reply.closes() {
            self.close_with(reply);
        } else {
            self.reply(reply);
        }
    }

    /// Closes the connection with `reply` (e.g. `421 4.3.2` at shutdown)
    /// unless a decision is pending (the application finishes it first).
    pub fn close(&mut self, reply: Reply) {
        if !matches!(self.mode, Mode::Deciding(_)) {
            self.close_with(reply);
        }
    }

    /// The TLS handshake after `STARTTLS` succeeded: the session starts
    /// over (RFC 3207 §4.2).
    pub fn tls_established(&mut self, now: Instant) {
        if let Mode::Handshake = self.mode {
            self.tls = true;
            self.helo = None;
            self.reset_transaction();
            self.input.clear();
            self.mode = Mode::Command;
            self.deadline = Some(now + self.cfg.command_timeout);
        }
    }

    fn reply(&mut self, r: Reply) {
        r.encode(&mut self.output);
    }

    fn close_with(&mut self, r: Reply) {
        self.reply(r);
        self.input.clear();
        self.data = Vec::new();
        if !self.is_closed() {
            self.mode = Mode::Closed;
            self.events.push_back(Event::Closed);
        }
    }

    fn reset_transaction(&mut self) {
        self.reverse_path = None;
        self.pending_rcpt = None;
        self.recipients.clear();
        self.body = BodyType::default();
        self.data = Vec::new();
    }

    /// Processes one unit of input; `false` when nothing more can be done
    /// without more bytes or the application's answer.
    fn step(&mut self) -> bool {
        match self.mode {
            Mode::Command => self.step_command(),
            Mode::Data(_) => self.step_data(),
            _ => false,
        }
    }

    fn step_command(&mut self) -> bool {
        let Some(lf) = self.input.iter().position(|&b| b == b'\n') else {
            if self.input.len() > MAX_COMMAND_LINE {
                if !self.skipping_line {
                    self.bad_command(Reply::new(500, "5.5.2", "Error: line too long"));
                }
                self.skipping_line = true;
                self.input.clear();
            }
            return false;
        };
        let line: Vec<u8> = self.input.drain(..=lf).collect();
        if self.skipping_line {
            self.skipping_line = false;
            return true;
        }
        if line.len() > MAX_COMMAND_LINE {
            self.bad_command(Reply::new(500, "5.5.2", "Error: line too long"));
            return true;
        }
        if line.len() < 2 || line[line.len() - 2] != b'\r' {
            self.bad_command(Reply::new(
                500,
                "5.5.2",
                "Error: bare <LF> received; lines end in <CR><LF>",
            ));
            return true;
        }
        let text = &line[..line.len() - 2];
        if text.contains(&b'\r') {
            self.bad_command(Reply::new(500, "5.5.2", "Error: bare <CR> received"));
            return true;
        }
        let Ok(text) = std::str::from_utf8(text) else {
            self.bad_command(Reply::new(500, "5.5.2", "Error: command is not ASCII"));
            return true;
        };
        let text = text.to_owned();
        self.command(&text);
        true
    }

    fn bad_command(&mut self, r: Reply) {
        self.bad_commands += 1;
        if self.bad_commands >= self.cfg.max_bad_commands {
            let host = self.cfg.hostname.clone();
            self.reply(r);
            self.close_with(Reply::new(
                421,
                "4.7.0",
                format!("{host} Error: too many errors"),
            ));
        } else {
            self.reply(r);
        }
    }

    fn good(&mut self) {
        self.bad_commands = 0;
    }

    fn command(&mut self, line: &str) {
        let (verb, arg) = match line.find(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, ""),
        };
        let verb = verb.to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" | "HELO" => self.hello(arg, verb == "EHLO"),
            "MAIL" => self.mail(arg),
            "RCPT" => self.rcpt(arg),
            "DATA" => self.data_cmd(arg),
            "RSET" => {
                if !arg.is_empty() {
                    return self.bad_command(Reply::new(501, "5.5.4", "Syntax: RSET"));
                }
                self.good();
                self.reset_transaction();
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            "NOOP" => {
                self.good();
                self.reply(Reply::new(250, "2.0.0", "Ok"));
            }
            "QUIT" => {
                let host = self.cfg.hostname.clone();
                self.close_with(Reply::new(
                    221,
                    "2.0.0",
                    format!("{host} closing connection"),
                ));
            }
            "VRFY" => {
                self.good();
                self.reply(Reply::new(252, "2.5.2", "Cannot VRFY user; send some mail"));
            }
            "EXPN" => self.bad_command(Reply::new(502, "5.5.1", "EXPN is not supported")),
            "HELP" => {
                self.good();
                self.reply(Reply::new(
                    214,
                    "2.0.0",
                    "This is cmtpd's SMTP gateway: EHLO HELO MAIL RCPT DATA RSET NOOP QUIT VRFY STARTTLS",
                ));
            }
            "STARTTLS" => self.starttls(arg),
            "BDAT" | "AUTH" | "ETRN" | "TURN" | "ATRN" => self.bad_command(Reply::new(
                502,
                "5.5.1",
                format!("{verb} is not supported here"),
            )),
            _ => self.bad_command(Reply::new(500, "5.5.2", "Error: command not recognized")),
        }
    }

    fn hello(&mut self, arg: &str, extended: bool) {
        let name = arg.trim();
        if name.is_empty() || name.contains(' ') && !extended {
            return self.bad_command(Reply::new(501, "5.5.4", "Syntax: EHLO hostname"));
        }
        let name: String = name
            .split(' ')
            .next()
            .unwrap_or("")
            .chars()
            .take(255)
            .collect();
        self.good();
        self.reset_transaction();
        self.helo = Some(name.clone());
        let host = self.cfg.hostname.clone();
        if extended {
            let mut lines = vec![
                host,
                "PIPELINING".to_owned(),
                format!("SIZE {}", self.cfg.max_message_size),
                "8BITMIME".to_owned(),
                "ENHANCEDSTATUSCODES".to_owned(),
            ];
            if self.cfg.starttls && !self.tls {
                lines.push("STARTTLS".to_owned());
            }
            self.reply(Reply {
                code: 250,
                enhanced: String::new(),
                lines,
            });
        } else {
            self.reply(Reply::new(250, "", host));
        }
        self.events.push_back(Event::Hello { name, extended });
    }

    fn mail(&mut self, arg: &str) {
        if self.helo.is_none() {
            return self.bad_command(Reply::new(503, "5.5.1", "Error: send EHLO first"));
        }
        if self.reverse_path.is_some() {
            return self.bad_command(Reply::new(503, "5.5.1", "Error: nested MAIL command"));
        }
        if self.cfg.require_tls && !self.tls {
            return self.bad_command(Reply::new(
                530,
                "5.7.0",
                "Must issue a STARTTLS command first",
            ));
        }
        let Some(rest) = strip_keyword(arg, "FROM:") else {
            return self.bad_command(Reply::new(501, "5.5.4", "Syntax: MAIL FROM:<address>"));
        };
        let (inner, params) = match split_path(rest) {
            Ok(x) => x,
            Err(e) => {
                return self.bad_command(Reply::new(
                    501,
                    "5.1.7",
                    format!("Bad sender address syntax: {e}"),
                ));
            }
        };
        let reverse_path = match parse_path(inner) {
            Ok(p) => p,
            Err(e) => {
                return self.bad_command(Reply::new(
                    501,
                    "5.1.7",
                    format!("Bad sender address syntax: {e}"),
                ));
            }
        };
        let mut size = None;
        let mut body = BodyType::SevenBit;
        for p in params.split(' ').filter(|p| !p.is_empty()) {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            match k.to_ascii_uppercase().as_str() {
                "SIZE" => match v.parse::<u64>() {
                    Ok(n) if v.len() <= 20 => size = Some(n),
                    _ => return self.bad_command(Reply::new(501, "5.5.4", "Bad SIZE parameter")),
                },
                "BODY" => match v.to_ascii_uppercase().as_str() {
                    "7BIT" => body = BodyType::SevenBit,
                    "8BITMIME" => body = BodyType::EightBitMime,
                    _ => return self.bad_command(Reply::new(501, "5.5.4", "Bad BODY parameter")),
                },
                _ => {
                    return self.bad_command(Reply::new(
                        555,
                        "5.5.4",
                        format!("Unsupported parameter {k}"),
                    ));
                }
            }
        }
        self.good();
        if let Some(n) = size
            && n > self.cfg.max_message_size
        {
            return self.reply(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed limit of {} bytes",
                    self.cfg.max_message_size
                ),
            ));
        }
        self.reverse_path = Some(reverse_path.clone());
        self.body = body;
        self.mode = Mode::Deciding(Awaiting::Mail);
        self.events.push_back(Event::MailFrom {
            reverse_path,
            size,
            body,
        });
    }

    fn rcpt(&mut self, arg: &str) {
        if self.reverse_path.is_none() {
            return self.bad_command(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        }
        let Some(rest) = strip_keyword(arg, "TO:") else {
            return self.bad_command(Reply::new(501, "5.5.4", "Syntax: RCPT TO:<address>"));
        };
        let (inner, params) = match split_path(rest) {
            Ok(x) => x,
            Err(e) => {
                return self.bad_command(Reply::new(
                    501,
                    "5.1.3",
                    format!("Bad recipient address syntax: {e}"),
                ));
            }
        };
        let forward_path = match parse_path(inner) {
            Ok(Some(m)) => m,
            Ok(None) => {
                return self.bad_command(Reply::new(
                    501,
                    "5.1.3",
                    "Bad recipient address syntax: empty",
                ));
            }
            Err(e) => {
                return self.bad_command(Reply::new(
                    501,
                    "5.1.3",
                    format!("Bad recipient address syntax: {e}"),
                ));
            }
        };
        if !params.trim().is_empty() {
            return self.bad_command(Reply::new(
                555,
                "5.5.4",
                "RCPT parameters are not supported",
            ));
        }
        self.good();
        if self.recipients.len() >= self.cfg.max_recipients {
            return self.reply(Reply::new(452, "4.5.3", "Error: too many recipients"));
        }
        self.pending_rcpt = Some(forward_path.clone());
        self.mode = Mode::Deciding(Awaiting::Rcpt);
        self.events.push_back(Event::RcptTo { forward_path });
    }

    fn data_cmd(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.bad_command(Reply::new(501, "5.5.4", "Syntax: DATA"));
        }
        if self.reverse_path.is_none() {
            return self.bad_command(Reply::new(503, "5.5.1", "Error: need MAIL command"));
        }
        if self.recipients.is_empty() {
            return self.bad_command(Reply::new(554, "5.5.1", "Error: no valid recipients"));
        }
        self.good();
        self.reply(Reply::new(354, "", "End data with <CR><LF>.<CR><LF>"));
        self.data = Vec::new();
        self.mode = Mode::Data(DataState {
            line_start: true,
            ..DataState::default()
        });
    }

    fn starttls(&mut self, arg: &str) {
        if !arg.is_empty() {
            return self.bad_command(Reply::new(501, "5.5.4", "Syntax: STARTTLS"));
        }
        if self.tls {
            return self.bad_command(Reply::new(503, "5.5.1", "Error: TLS already active"));
        }
        if !self.cfg.starttls {
            return self.bad_command(Reply::new(454, "4.7.0", "TLS not available"));
        }
        self.good();
        self.reply(Reply::new(220, "2.0.0", "Ready to start TLS"));
        // Anything pipelined after STARTTLS arrived in clear: thrown away
        // (CVE-2011-0411).
        self.input.clear();
        self.mode = Mode::Handshake;
        self.events.push_back(Event::StartTls);
    }

    fn step_data(&mut self) -> bool {
        let Mode::Data(st) = &mut self.mode else {
            return false;
        };
        if self.input.is_empty() {
            return false;
        }
        let max = self.cfg.max_message_size;
        // Every complete line in the input at once, and one drain at the
        // end: draining line by line moved the rest of the input each time
        // (quadratic in the bytes of one read).
        let mut consumed = 0;
        let mut ended = false;
        while let Some(off) = self.input[consumed..].iter().position(|&b| b == b'\n') {
            let line = &self.input[consumed..=consumed + off];
            consumed += off + 1;
            let crlf = line.len() >= 2 && line[line.len() - 2] == b'\r';
            let body = if crlf {
                &line[..line.len() - 2]
            } else {
                &line[..line.len() - 1]
            };
            if !crlf || body.contains(&b'\r') {
                st.bad_newline = true;
            }
            if st.line_start && crlf && body == b"." {
                ended = true;
                break;
            }
            st.take(line, max, &mut self.data);
            st.line_start = crlf;
        }
        if consumed > 0 {
            self.input.drain(..consumed);
            if ended {
                self.end_of_data();
            }
            return true;
        }
        if self.input.len() < DATA_FLUSH {
            return false;
        }
        // A long line: hand on all but the last byte (a CR that a LF may
        // follow).
        let take = self.input.len() - 1;
        let chunk = &self.input[..take];
        if chunk.windows(2).any(|w| w[0] == b'\r' && w[1] != b'\n')
            || (chunk.last() == Some(&b'\r') && self.input[take] != b'\n')
        {
            st.bad_newline = true;
        }
        st.take(chunk, max, &mut self.data);
        st.line_start = false;
        self.input.drain(..take);
        true
    }

    fn end_of_data(&mut self) {
        let Mode::Data(st) = std::mem::replace(&mut self.mode, Mode::Command) else {
            return;
        };
        if st.bad_newline {
            self.reset_transaction();
            return self.close_with(Reply::new(
                550,
                "5.5.2",
                "Error: bare <CR> or <LF> in message (RFC 5321 §2.3.8); message refused, closing",
            ));
        }
        if let Some(reply) = st.refused {
            self.reset_transaction();
            return if reply.closes() {
                self.close_with(reply)
            } else {
                self.reply(reply)
            };
        }
        if st.too_big {
            self.reset_transaction();
            return self.reply(Reply::new(
                552,
                "5.3.4",
                format!(
                    "Message size exceeds fixed limit of {} bytes",
                    self.cfg.max_message_size
                ),
            ));
        }
        let t = Transaction {
            reverse_path: self.reverse_path.clone().flatten(),
            recipients: self.recipients.clone(),
            body: self.body,
            data: std::mem::take(&mut self.data),
        };
        self.mode = Mode::Deciding(Awaiting::Message);
        self.events.push_back(Event::Message(t));
    }
}

/// `FROM:` / `TO:` at the start of `arg`, case-insensitively.
fn strip_keyword<'a>(arg: &'a str, kw: &str) -> Option<&'a str> {
    match arg.get(..kw.len()) {
        Some(head) if head.eq_ignore_ascii_case(kw) => Some(&arg[kw.len()..]),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
