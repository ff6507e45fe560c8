//! One CMTP connection, client side (PROTOCOL.md §4, §5).
//!
//! [`Connection::connect`] opens TCP, reads the banner (and recognises an
//! SMTP server at once), and [`Connection::ohai`] learns the server's key and
//! the connection nonce. From then on every reply's signature is checked
//! against the server key the caller expects (pinned) or, if none was given,
//! the key the greeting announced.

use std::net::SocketAddr;
use std::time::Duration;

use cmtp_proto::banner::{Banner, decode_banner};
use cmtp_proto::command::{Command, request_digest};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::crypto::SignatureTag;
use cmtp_proto::limits::MAX_BANNER;
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{
    Reply, ReplyBinding, ReplyDecoder, ReplyEvent, ReplyHeader, Status, body_hash, decode_reply,
};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::error::ClientError;

/// Largest reply body accepted for commands other than FETCH.
pub const MAX_REPLY_BODY: u64 = 1 << 20;

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
    buf: Vec<u8>,
    peer: SocketAddr,
    banner_domain: String,
    greeting: Option<Greeting>,
    expected_key: Option<PublicKey>,
    seq: u64,
    timeout: Duration,
    broken: bool,
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
            buf: Vec::with_capacity(8192),
            peer: addr,
            banner_domain: String::new(),
            greeting: None,
            expected_key: None,
            seq: 0,
            timeout,
            broken: false,
        };
        let banner = loop {
            match decode_banner(&conn.buf) {
                Ok(Some((b, n))) => {
                    conn.buf.drain(..n);
                    break b;
                }
                Ok(None) => conn.fill("the banner").await?,
                Err(()) => {
                    return Err(ClientError::NotCmtp {
                        line: String::from_utf8_lossy(&conn.buf[..conn.buf.len().min(MAX_BANNER)])
                            .into_owned(),
                    });
                }
            }
        };
        match banner {
            Banner::Ready { domain } => conn.banner_domain = domain,
            Banner::Busy { domain, text } => return Err(ClientError::Busy { domain, text }),
            Banner::Smtp { line } => return Err(ClientError::SmtpServer { line }),
            Banner::Unknown { line } => return Err(ClientError::NotCmtp { line }),
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
        self.greeting.as_ref()
    }

    /// Requires replies to be signed by `key` (a pinned server key). Must be
    /// called before [`ohai`](Self::ohai) to check the greeting itself.
    pub fn expect_key(&mut self, key: PublicKey) {
        self.expected_key = Some(key);
    }

    /// The key replies are checked against, if any.
    pub fn server_key(&self) -> Option<PublicKey> {
        self.expected_key
            .or_else(|| self.greeting.as_ref().map(|g| g.key))
    }

    async fn fill(&mut self, what: &str) -> Result<(), ClientError> {
        let mut chunk = [0u8; 16384];
        let n = tokio::time::timeout(self.timeout, self.rd.read(&mut chunk))
            .await
            .map_err(|_| ClientError::Timeout(format!("waiting for {what}")))?
            .map_err(|e| ClientError::Io(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::Closed(format!("while waiting for {what}")));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    async fn write_all(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        if self.broken {
            return Err(ClientError::Closed(
                "after an early refusal of a large message".into(),
            ));
        }
        write_timeout(&mut self.wr, bytes, self.timeout).await
    }

    /// Sends OHAI and reads the greeting; checks that the greeting is signed
    /// by the key it announces (and by the expected key, if one was set).
    pub async fn ohai(&mut self) -> Result<Greeting, ClientError> {
        let frame = Command::Ohai.to_bytes();
        self.write_all(&frame).await?;
        let reply = self.read_reply_raw(MAX_REPLY_BODY).await?;
        let seq = self.seq - 1;
        if reply.status != Status::Success {
            return Err(ClientError::from_reply(&reply));
        }
        let g = Greeting::parse(&reply.body)
            .map_err(|e| ClientError::Protocol(format!("bad greeting: {e}")))?;
        if let Some(k) = self.expected_key
            && k != g.key
        {
            return Err(ClientError::KeyMismatch {
                domain: g.domain.to_string(),
                expected: k.fingerprint_hex(),
                got: g.key.fingerprint_hex(),
            });
        }
        let binding = ReplyBinding {
            nonce: g.nonce,
            seq,
            request: request_digest(&frame),
        };
        verify(&binding, &reply, &g.key)?;
        self.greeting = Some(g.clone());
        Ok(g)
    }

    async fn read_reply_raw(&mut self, max_body: u64) -> Result<Reply, ClientError> {
        loop {
            match decode_reply(&self.buf, max_body) {
                Ok(Some((r, n))) => {
                    self.buf.drain(..n);
                    self.seq += 1;
                    return Ok(r);
                }
                Ok(None) => self.fill("a reply").await?,
                Err(e) => return Err(ClientError::Protocol(e.to_string())),
            }
        }
    }

    fn check(&self, frame_digest: [u8; 32], seq: u64, reply: &Reply) -> Result<(), ClientError> {
        if let (Some(g), Some(key)) = (&self.greeting, self.server_key()) {
            let binding = ReplyBinding {
                nonce: g.nonce,
                seq,
                request: frame_digest,
            };
            verify(&binding, reply, &key)?;
        }
        Ok(())
    }

    /// Sends a command and reads its reply (bodies up to `max_body`),
    /// checking the signature when the greeting is known.
    pub async fn command(&mut self, cmd: &Command, max_body: u64) -> Result<Reply, ClientError> {
        let frame = cmd.to_bytes();
        self.write_all(&frame).await?;
        let seq = self.seq;
        let reply = self.read_reply_raw(max_body).await?;
        self.check(request_digest(&frame), seq, &reply)?;
        Ok(reply)
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
        let frame = cmd.to_bytes();
        self.write_all(&frame).await?;
        let seq = self.seq;
        let mut sent = 0usize;
        // Write in pieces while watching for an early reply.
        while sent < message.len() {
            let piece = &message[sent..(sent + 256 * 1024).min(message.len())];
            let mut early = [0u8; 4096];
            tokio::select! {
                // `write` is cancel-safe: if the read wins, nothing of this call was sent.
                r = self.wr.write(piece) => {
                    let n = r.map_err(|e| ClientError::Io(e.to_string()))?;
                    if n == 0 {
                        return Err(ClientError::Closed("while sending the message".into()));
                    }
                    sent += n;
                    progress(sent as u64);
                }
                r = self.rd.read(&mut early) => {
                    // The server answered before the end: take its reply.
                    let n = r.map_err(|e| ClientError::Io(e.to_string()))?;
                    if n == 0 {
                        return Err(ClientError::Closed("while sending the message".into()));
                    }
                    self.buf.extend_from_slice(&early[..n]);
                    break;
                }
            }
        }
        let reply = self.read_reply_raw(MAX_REPLY_BODY).await?;
        self.check(request_digest(&frame), seq, &reply)?;
        if sent < message.len() && !reply.status.closes_connection() {
            if message.len() - sent <= EARLY_REPLY_RESYNC {
                // The server discards the rest of the message; send it so the
                // connection stays in step.
                self.write_all(&message[sent..]).await?;
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
        self.write_all(&Command::Mail.to_bytes()).await?;
        Ok(MailInProgress { seq: self.seq })
    }

    /// Sends raw bytes (part of a message after [`begin_mail`](Self::begin_mail)).
    pub async fn send_bytes(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.write_all(bytes).await
    }

    /// Reads the reply to a streamed MAIL.
    pub async fn finish_mail(&mut self, mail: MailInProgress) -> Result<Reply, ClientError> {
        let reply = self.read_reply_raw(MAX_REPLY_BODY).await?;
        self.check(request_digest(&Command::Mail.to_bytes()), mail.seq, &reply)?;
        Ok(reply)
    }

    /// Sends FETCH and streams the body into `out`, checking the signature at
    /// the end. Returns the reply header (for the status) and, for a failure,
    /// its text.
    pub async fn fetch_into(
        &mut self,
        id: u64,
        max_body: u64,
        out: &mut (impl AsyncWrite + Unpin),
    ) -> Result<Result<u64, Reply>, ClientError> {
        let frame = Command::Fetch { id }.to_bytes();
        self.write_all(&frame).await?;
        let seq = self.seq;
        let mut dec = ReplyDecoder::new(max_body);
        let mut hasher = Sha256::new();
        let mut header: Option<ReplyHeader> = None;
        let mut small_body = Vec::new();
        let mut written = 0u64;
        loop {
            let (n, ev) = dec
                .next(&self.buf)
                .map_err(|e| ClientError::Protocol(e.to_string()))?;
            match ev {
                None => {
                    self.fill("a message").await?;
                    continue;
                }
                Some(ReplyEvent::Header(h)) => header = Some(h),
                Some(ReplyEvent::Body(b)) => {
                    hasher.update(b);
                    if header.as_ref().is_some_and(|h| h.status == Status::Success) {
                        out.write_all(b)
                            .await
                            .map_err(|e| ClientError::Io(e.to_string()))?;
                        written += b.len() as u64;
                    } else {
                        small_body.extend_from_slice(b);
                    }
                }
                Some(ReplyEvent::End(signature)) => {
                    self.buf.drain(..n);
                    self.seq += 1;
                    let header = header.expect("header precedes the end");
                    if let (Some(g), Some(key)) = (&self.greeting, self.server_key()) {
                        let binding = ReplyBinding {
                            nonce: g.nonce,
                            seq,
                            request: request_digest(&frame),
                        };
                        let data = binding.signed_data(&header, &hasher.finalize().into());
                        key.verify(SignatureTag::Reply, &[&data], &signature)
                            .map_err(|_| ClientError::BadSignature("FETCH reply".into()))?;
                    }
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
            }
            self.buf.drain(..n);
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
) -> Result<(), ClientError> {
    tokio::time::timeout(
        timeout.max(Duration::from_secs(1)) * 4,
        stream.write_all(bytes),
    )
    .await
    .map_err(|_| ClientError::Timeout("sending the message".into()))?
    .map_err(|e| ClientError::Io(e.to_string()))
}

/// Checks a reply's signature for `binding` under `key`.
pub fn verify(binding: &ReplyBinding, reply: &Reply, key: &PublicKey) -> Result<(), ClientError> {
    let data = binding.signed_data(&reply.header(), &body_hash(&reply.body));
    key.verify(SignatureTag::Reply, &[&data], &reply.signature)
        .map_err(|_| ClientError::BadSignature(format!("{} reply", reply.status)))
}
