//! One CMTP connection, client side: the async shell around
//! [`cmtp_proto::connection::client::ClientConnection`], which holds the
//! rules (PROTOCOL.md §4, §5): the banner (an SMTP server is recognised at
//! once), the greeting, signed replies bound to the nonce, their position
//! and their request, body limits and whole-reply deadlines.
//!
//! [`Connection::connect`] opens TCP and reads the banner;
//! [`Connection::ohai`] learns the server's key and the connection nonce.
//! From then on every reply's signature is checked against the key the
//! caller expects (pinned) or, if none was given, the key the greeting
//! announced.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cmtp_proto::command::Command;
use cmtp_proto::connection::client::{
    ClientConnection, ClientEvent, ConnectionError, PeerMisbehaved,
};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{Reply, Status};
use cmtp_proto::statements::Receipt;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::ClientError;

pub use cmtp_proto::connection::client::MAX_REPLY_BODY;

thread_local! {
    /// Each thread's read buffer: zeroed once, lent to one
    /// `Connection::read_now` at a time (a read never awaits).
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// A MAIL being streamed (see [`Connection::begin_mail`]).
#[derive(Debug)]
pub struct MailInProgress {
    seq: u64,
}

/// After an early reply, the most of a message still sent to keep the
/// connection usable; beyond it the connection is given up instead.
const EARLY_REPLY_RESYNC: usize = 1 << 20;

/// An open CMTP connection.
#[derive(Debug)]
pub struct Connection {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    conn: ClientConnection,
    peer: SocketAddr,
    banner_domain: String,
    timeout: Duration,
    broken: bool,
    /// The position of the last whole reply read.
    last_seq: u64,
}

impl Connection {
    /// Connects to `addr` and reads the banner within `timeout`.
    pub async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Connection, ClientError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| ClientError::Timeout(format!("connecting to {addr}")))?
            .map_err(|e| ClientError::Unreachable {
                addr: addr.to_string(),
                error: e.to_string(),
            })?;
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let mut conn = Connection {
            rd,
            wr,
            conn: ClientConnection::new(None, timeout, Instant::now()),
            peer: addr,
            banner_domain: String::new(),
            timeout,
            broken: false,
            last_seq: 0,
        };
        match conn.next_event("the banner").await? {
            ClientEvent::Ready { domain } => conn.banner_domain = domain,
            other => {
                return Err(ClientError::Protocol(PeerMisbehaved::BadPayload {
                    what: "banner".into(),
                    error: format!("unexpected {other:?}"),
                }));
            }
        }
        Ok(conn)
    }

    /// The address connected to.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The domain the banner named.
    pub fn banner_domain(&self) -> &str {
        &self.banner_domain
    }

    /// The greeting, once [`ohai`](Self::ohai) has run.
    pub fn greeting(&self) -> Option<&Greeting> {
        self.conn.greeting()
    }

    /// Requires replies to be signed by `key` (a pinned server key). Must be
    /// called before [`ohai`](Self::ohai) to check the greeting itself.
    pub fn expect_key(&mut self, key: PublicKey) {
        self.conn.expect_key(key);
    }

    /// The key replies are checked against, if any.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.conn.server_key()
    }

    /// The key the server showed in the TLS handshake.
    pub fn tls_key(&self) -> Option<PublicKey> {
        self.conn.tls_key()
    }

    /// The connection's channel binding (the TLS exporter value) that
    /// logins bind to (PROTOCOL.md §12).
    pub fn channel_binding(&self) -> [u8; 32] {
        *self
            .conn
            .channel_binding()
            .expect("a connection is returned once TLS is established")
    }

    /// The negotiated key-exchange group.
    pub fn key_exchange_group(&self) -> Option<cmtp_proto::tls::NamedGroup> {
        self.conn.key_exchange_group()
    }

    /// Sends what the state machine has to send.
    async fn flush(&mut self) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed(
                "after an early refusal of a large message".into(),
            ));
        }
        while !self.conn.output().is_empty() {
            let n = write_timeout(&mut self.wr, self.conn.output(), self.timeout).await?;
            self.conn.consume_output(n, Instant::now());
        }
        Ok(())
    }

    /// Reads what the socket has into the state machine; whether anything
    /// came (bytes or the end). Readiness can be stale: a `WouldBlock` here
    /// clears it.
    fn read_now(&mut self) -> Result<bool, ClientError> {
        // The thread's buffer: one on the stack was zeroed for every read,
        // which cost more than the read.
        READ_BUF.with_borrow_mut(|buf| {
            match self.rd.try_read(buf) {
                Ok(0) => self.conn.handle_eof(),
                Ok(n) => self.conn.handle_input(&buf[..n], Instant::now()),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(ClientError::Io(e.to_string())),
            }
            Ok(true)
        })
    }

    /// The next event, sending what is pending and reading until it comes.
    async fn next_event(&mut self, what: &str) -> Result<ClientEvent, ClientError> {
        self.flush().await?;
        loop {
            match self.conn.poll_event(Instant::now()) {
                Ok(Some(ev)) => return Ok(ev),
                Ok(None) => {}
                Err(e) => return Err(client_error(e, what)),
            }
            let deadline = self
                .conn
                .poll_timeout()
                .unwrap_or_else(|| Instant::now() + self.timeout);
            tokio::select! {
                r = self.rd.readable() => {
                    r.map_err(|e| ClientError::Io(e.to_string()))?;
                    self.read_now()?;
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    self.conn.handle_timeout(Instant::now());
                }
            }
        }
    }

    /// The whole reply the state machine expects next.
    async fn next_reply(&mut self, what: &str) -> Result<Reply, ClientError> {
        match self.next_event(what).await? {
            ClientEvent::Reply { reply, seq } => {
                self.last_seq = seq;
                Ok(reply)
            }
            other => Err(ClientError::Protocol(PeerMisbehaved::BadPayload {
                what: what.into(),
                error: format!("unexpected {other:?}"),
            })),
        }
    }

    /// The kept receipt (PROTOCOL.md §10.1) of `reply`, the last reply read:
    /// a SUCCESS to `MAIL` or `APPEND` whose body is the receipt statement,
    /// with the connection nonce and position its signature binds. Not
    /// verified here beyond the reply's own check; the caller checks the
    /// hash and domain.
    pub fn receipt(&self, reply: &Reply) -> Result<Receipt, ClientError> {
        if reply.status != Status::Success {
            return Err(ClientError::Protocol(PeerMisbehaved::BadPayload {
                what: "receipt".into(),
                error: format!("a {} reply is no receipt", reply.status),
            }));
        }
        let nonce = self
            .conn
            .greeting()
            .map(|g| g.nonce)
            .ok_or_else(|| ClientError::Closed("a receipt before the greeting".into()))?;
        Receipt::from_reply(&reply.body, nonce, self.last_seq, reply.signature).map_err(|e| {
            ClientError::Protocol(PeerMisbehaved::BadPayload {
                what: "receipt".into(),
                error: e.to_string(),
            })
        })
    }

    /// Sends OHAI and reads the greeting; checks that the greeting is signed
    /// by the key it announces (and by the expected key, if one was set).
    pub async fn ohai(&mut self) -> Result<Greeting, ClientError> {
        self.conn
            .send(&Command::Ohai, MAX_REPLY_BODY, Instant::now());
        self.next_reply("the greeting").await?;
        Ok(self.conn.greeting().expect("checked greeting").clone())
    }

    /// Sends a command and reads its reply (bodies up to `max_body`),
    /// checking the signature when the greeting is known.
    pub async fn command(&mut self, cmd: &Command, max_body: u64) -> Result<Reply, ClientError> {
        self.conn.send(cmd, max_body, Instant::now());
        self.next_reply("a reply").await
    }

    /// Sends `MAIL` and a whole encoded message, and reads the reply. The
    /// reply may come before the message is fully sent (an early refusal).
    pub async fn mail(&mut self, message: &[u8]) -> Result<Reply, ClientError> {
        self.mail_with_progress(message, |_| {}).await
    }

    /// As [`mail`](Self::mail), calling `progress(bytes_sent)` as it goes.
    pub async fn mail_with_progress(
        &mut self,
        message: &[u8],
        progress: impl FnMut(u64),
    ) -> Result<Reply, ClientError> {
        self.command_with_message(&Command::Mail, message, progress)
            .await
    }

    /// Sends a command after which a message follows (`MAIL`, `APPEND`:
    /// [`Command::carries_message`]) and the whole encoded message, and
    /// reads the reply, calling `progress(bytes_sent)` as it goes. The reply
    /// may come before the message is fully sent (an early refusal).
    pub async fn command_with_message(
        &mut self,
        cmd: &Command,
        message: &[u8],
        mut progress: impl FnMut(u64),
    ) -> Result<Reply, ClientError> {
        debug_assert!(cmd.carries_message());
        self.conn.send(cmd, MAX_REPLY_BODY, Instant::now());
        self.flush().await?;
        let mut sent = 0usize;
        // Write in pieces, each a few TLS records, while watching for an
        // early reply. A record once begun is always written whole (the TLS
        // stream must stay intact); the next piece is not begun once the
        // server has answered.
        let mut pending: Vec<u8> = Vec::new();
        let mut written = 0usize;
        let mut answered = false;
        loop {
            if written == pending.len() {
                if answered || sent == message.len() {
                    break;
                }
                let piece = &message[sent..(sent + 256 * 1024).min(message.len())];
                pending = self.conn.encrypt_raw(piece);
                written = 0;
                sent += piece.len();
            }
            let limit = self.timeout.max(Duration::from_secs(1)) * 4;
            let write = tokio::time::timeout(limit, self.wr.write(&pending[written..]));
            tokio::select! {
                r = write => {
                    let n = r
                        .map_err(|_| ClientError::Timeout("sending the message".into()))?
                        .map_err(|e| ClientError::Io(e.to_string()))?;
                    if n == 0 {
                        return Err(ClientError::Closed("while sending the message".into()));
                    }
                    written += n;
                    self.conn.note_progress(Instant::now());
                    if written == pending.len() {
                        progress(sent as u64);
                    }
                }
                r = self.rd.readable(), if !answered => {
                    // The server answered before the end: take its reply.
                    r.map_err(|e| ClientError::Io(e.to_string()))?;
                    answered = self.read_now()?;
                }
            }
        }
        let reply = self.next_reply("the reply to MAIL").await?;
        if sent < message.len() && !reply.status.closes_connection() {
            if message.len() - sent <= EARLY_REPLY_RESYNC {
                // The server discards the rest of the message; send it so the
                // connection stays in step.
                self.send_bytes(&message[sent..]).await?;
            } else {
                // Cheaper to drop the connection than to send what will be discarded.
                self.broken = true;
            }
        }
        Ok(reply)
    }

    /// Starts a MAIL whose message the caller then streams with
    /// [`send_bytes`](Self::send_bytes) and ends with
    /// [`finish_mail`](Self::finish_mail) (bounded memory for large messages).
    pub async fn begin_mail(&mut self) -> Result<MailInProgress, ClientError> {
        let seq = self
            .conn
            .send(&Command::Mail, MAX_REPLY_BODY, Instant::now());
        self.flush().await?;
        Ok(MailInProgress { seq })
    }

    /// Sends raw bytes (part of a message after [`begin_mail`](Self::begin_mail)).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed(
                "after an early refusal of a large message".into(),
            ));
        }
        let wire = self.conn.encrypt_raw(bytes);
        let mut sent = 0;
        while sent < wire.len() {
            sent += write_timeout(&mut self.wr, &wire[sent..], self.timeout).await?;
            self.conn.note_progress(Instant::now());
        }
        Ok(())
    }

    /// Reads the reply to a streamed MAIL.
    pub async fn finish_mail(&mut self, mail: MailInProgress) -> Result<Reply, ClientError> {
        let _ = mail.seq;
        self.next_reply("the reply to MAIL").await
    }

    /// Sends FETCH and streams the body into `out`, checking the signature at
    /// the end. Returns the number of bytes written, or the failure reply.
    pub async fn fetch_into(
        &mut self,
        id: u64,
        max_body: u64,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<Result<u64, Reply>, ClientError> {
        self.conn
            .send_streamed(&Command::Fetch { id }, max_body, Instant::now());
        let mut header = None;
        let mut small_body = Vec::new();
        let mut written = 0u64;
        loop {
            match self.next_event("a message").await? {
                ClientEvent::StreamHeader { header: h, .. } => header = Some(h),
                ClientEvent::StreamData { data, .. } => {
                    if header.as_ref().is_some_and(|h| h.status == Status::Success) {
                        out.write_all(&data)
                            .await
                            .map_err(|e| ClientError::Io(e.to_string()))?;
                        written += data.len() as u64;
                    } else if small_body.len() < MAX_REPLY_BODY as usize {
                        small_body.extend_from_slice(&data);
                    }
                }
                ClientEvent::StreamEnd { signature, .. } => {
                    let header = header.expect("the header precedes the end");
                    return Ok(if header.status == Status::Success {
                        out.flush()
                            .await
                            .map_err(|e| ClientError::Io(e.to_string()))?;
                        Ok(written)
                    } else {
                        Err(Reply {
                            version: header.version,
                            status: header.status,
                            body: small_body,
                            signature,
                        })
                    });
                }
                other => {
                    return Err(ClientError::Protocol(PeerMisbehaved::BadPayload {
                        what: "FETCH reply".into(),
                        error: format!("unexpected {other:?}"),
                    }));
                }
            }
        }
    }

    /// Says OBAI and closes.
    pub async fn close(mut self) {
        let _ = self.command(&Command::Obai, MAX_REPLY_BODY).await;
    }
}

async fn write_timeout(
    stream: &mut OwnedWriteHalf,
    bytes: &[u8],
    timeout: Duration,
) -> Result<usize, ClientError> {
    let n = tokio::time::timeout(timeout.max(Duration::from_secs(1)) * 4, stream.write(bytes))
        .await
        .map_err(|_| ClientError::Timeout("sending".into()))?
        .map_err(|e| ClientError::Io(e.to_string()))?;
    if n == 0 {
        return Err(ClientError::Closed("while sending".into()));
    }
    Ok(n)
}

/// What a person is told about a connection that cannot go on.
fn client_error(e: ConnectionError, what: &str) -> ClientError {
    match e {
        ConnectionError::SmtpServer { line } => ClientError::SmtpServer { line },
        ConnectionError::NotCmtp { line } => ClientError::NotCmtp { line },
        ConnectionError::Busy { domain, text } => ClientError::Busy { domain, text },
        ConnectionError::TimedOut => ClientError::Timeout(format!("waiting for {what}")),
        ConnectionError::ClosedByServer { status, text } => {
            ClientError::Closed(format!("({status}: {text})"))
        }
        ConnectionError::Misbehaved(PeerMisbehaved::ClosedEarly(when)) => {
            ClientError::Closed(when.to_owned())
        }
        ConnectionError::Misbehaved(m) => ClientError::Protocol(m),
        ConnectionError::BadSignature(status) => {
            ClientError::BadSignature(format!("{status} reply"))
        }
        ConnectionError::KeyMismatch {
            domain,
            expected,
            got,
        } => ClientError::KeyMismatch {
            domain,
            expected,
            got,
        },
        _ => ClientError::Io(e.to_string()),
    }
}
