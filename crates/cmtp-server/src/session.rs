//! One client connection: the banner, then commands and their signed replies
//! (PROTOCOL.md §4–§6). The protocol logic lives in `cmtp-proto`; this is the
//! I/O shell around it: timeouts, limits, dispatch, signing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cmtp_proto::banner;
use cmtp_proto::command::{
    Command, CommandDecodeError, CommandError, decode_command, request_digest,
};
use cmtp_proto::crypto::SignatureTag;
use cmtp_proto::names::{Account, Address};
use cmtp_proto::payload::Greeting;
use cmtp_proto::reply::{REPLY_VERSION, ReplyBinding, ReplyHeader, Status, body_hash};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::Pending;
use crate::state::Shared;

/// The session ends (the connection is closed).
#[derive(Debug)]
pub(crate) struct Stop;

/// Result of reading more bytes.
pub(crate) enum Read {
    /// Bytes arrived.
    Data,
    /// The deadline passed.
    Timeout,
    /// The peer closed or the socket failed.
    Closed,
    /// The server is shutting down (only while idle between commands).
    Shutdown,
}

/// Extensions announced in the greeting.
pub(crate) const EXTENSIONS: &[&str] = &["REGISTER", "LOGIN-OPAQUE", "MAILBOX", "RELAY"];

/// A connection's state.
pub(crate) struct Session {
    pub(crate) sh: Arc<Shared>,
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    /// Replies not yet written; flushed before waiting for input.
    out: Vec<u8>,
    pub(crate) buf: BytesMut,
    pub(crate) peer: SocketAddr,
    pub(crate) nonce: [u8; 32],
    seq: u64,
    bad_streak: u32,
    shutdown: watch::Receiver<bool>,
    /// The account this connection is logged in as.
    pub(crate) logged_in: Option<Account>,
    /// An exchange in progress (LOGIN, REGISTER, PASSWORD).
    pub(crate) pending: Pending,
}

impl Session {
    /// Serves a connection until it ends.
    pub(crate) async fn run(
        sh: Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        shutdown: watch::Receiver<bool>,
    ) {
        stream.set_nodelay(true).ok();
        let (rd, wr) = stream.into_split();
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let mut s = Session {
            sh,
            rd,
            wr,
            // Both buffers start empty and are allocated when data arrives,
            // so an idle connection costs little memory.
            out: Vec::new(),
            buf: BytesMut::new(),
            peer,
            nonce,
            seq: 0,
            bad_streak: 0,
            shutdown,
            logged_in: None,
            pending: Pending::None,
        };
        metrics::counter!("cmtp_connections_total").increment(1);
        metrics::gauge!("cmtp_connections_open").increment(1.0);
        let line = banner::ready_line(&s.sh.domain, crate::state::SOFTWARE);
        s.out.extend_from_slice(line.as_bytes());
        if s.flush().await.is_ok() {
            let _ = s.serve().await;
        }
        let _ = s.flush().await;
        let _ = s.wr.shutdown().await;
        metrics::gauge!("cmtp_connections_open").decrement(1.0);
    }

    async fn serve(&mut self) -> Result<(), Stop> {
        loop {
            let (cmd, used) = match self.next_command().await? {
                Some(c) => c,
                None => return Ok(()),
            };
            let frame = self.buf.split_to(used);
            let digest = request_digest(&frame);
            self.bad_streak = 0;
            metrics::counter!("cmtp_commands_total", "command" => cmd.word()).increment(1);
            tracing::debug!(peer = %self.peer, command = cmd.word(), "command");
            let close = matches!(cmd, Command::Obai);
            self.dispatch(cmd, digest).await?;
            if close {
                return Ok(());
            }
        }
    }

    /// The next complete command, handling malformed input; `None` at a clean end.
    async fn next_command(&mut self) -> Result<Option<(Command, usize)>, Stop> {
        let mut partial_since: Option<Instant> = None;
        loop {
            match decode_command(&self.buf) {
                Ok(Some(c)) => return Ok(Some(c)),
                Ok(None) => {
                    let t = &self.sh.cfg.timeouts;
                    let deadline = match (self.buf.is_empty(), partial_since) {
                        (true, _) => Instant::now() + Duration::from_secs(t.idle_secs),
                        (false, Some(since)) => since + Duration::from_secs(t.command_secs),
                        (false, None) => {
                            let now = Instant::now();
                            partial_since = Some(now);
                            now + Duration::from_secs(t.command_secs)
                        }
                    };
                    let idle = self.buf.is_empty();
                    match self.read_more(deadline, idle).await {
                        Read::Data => {
                            if partial_since.is_none() && !self.buf.is_empty() {
                                partial_since = Some(Instant::now());
                            }
                        }
                        Read::Timeout => {
                            self.reply(
                                Status::Timeout,
                                b"no complete command in time; closing",
                                [0; 32],
                            )
                            .await?;
                            return Err(Stop);
                        }
                        Read::Closed | Read::Shutdown => return Ok(None),
                    }
                }
                Err(e) => self.bad_command(e).await?,
            }
        }
    }

    async fn bad_command(&mut self, e: CommandDecodeError) -> Result<(), Stop> {
        metrics::counter!("cmtp_bad_commands_total").increment(1);
        tracing::debug!(peer = %self.peer, error = %e, "bad command");
        if let CommandError::SmtpVerb(verb) = e.kind {
            let line = banner::smtp_refusal(&self.sh.domain, verb);
            self.out.extend_from_slice(line.as_bytes());
            return Err(Stop);
        }
        let Some(n) = e.resume_at else {
            let status = match e.kind {
                CommandError::WordTooLong
                | CommandError::ArgumentTooLong { .. }
                | CommandError::BlobTooLarge { .. } => Status::TooLong,
                _ => Status::BadCommand,
            };
            self.reply(status, format!("{}; closing", e.kind).as_bytes(), [0; 32])
                .await?;
            return Err(Stop);
        };
        let frame = self.buf.split_to(n);
        let status = match e.kind {
            CommandError::UnknownCommand(_) => Status::BadCommand,
            _ => Status::BadArgument,
        };
        self.bad_streak += 1;
        if self.bad_streak >= self.sh.cfg.connections.max_bad_commands {
            self.reply(
                Status::TooManyErrors,
                format!(
                    "{} consecutive bad commands; closing (last: {})",
                    self.bad_streak, e.kind
                )
                .as_bytes(),
                request_digest(&frame),
            )
            .await?;
            return Err(Stop);
        }
        self.reply(
            status,
            e.kind.to_string().as_bytes(),
            request_digest(&frame),
        )
        .await
    }

    /// Flushes pending replies, then waits for more bytes until `deadline`.
    pub(crate) async fn read_more(&mut self, deadline: Instant, idle: bool) -> Read {
        if self.flush().await.is_err() {
            return Read::Closed;
        }
        if self.buf.is_empty() && self.buf.capacity() > 256 * 1024 {
            // Give back what a large message used (a buffer of one read or two
            // is kept: freeing it after every message costs more than it saves).
            self.buf = BytesMut::new();
        }
        loop {
            // Wait for the socket before allocating: idle connections hold no buffer.
            let ready = if idle {
                let mut shutdown = self.shutdown.clone();
                if *shutdown.borrow() {
                    return self.last_bytes();
                }
                tokio::select! {
                    r = tokio::time::timeout_at(deadline, self.rd.readable()) => r,
                    _ = shutdown.changed() => return self.last_bytes(),
                }
            } else {
                tokio::time::timeout_at(deadline, self.rd.readable()).await
            };
            match ready {
                Err(_) => return Read::Timeout,
                Ok(Err(_)) => return Read::Closed,
                Ok(Ok(())) => {}
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(if idle { 4096 } else { 64 * 1024 });
            }
            match self.rd.try_read_buf(&mut self.buf) {
                Ok(0) => return Read::Closed,
                Ok(n) => {
                    metrics::counter!("cmtp_bytes_received_total").increment(n as u64);
                    return Read::Data;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(_) => return Read::Closed,
            }
        }
    }

    /// At shutdown: serves bytes that already arrived (a command the client
    /// sent before it saw us stop), else ends the session.
    fn last_bytes(&mut self) -> Read {
        self.buf.reserve(4096);
        match self.rd.try_read_buf(&mut self.buf) {
            Ok(n) if n > 0 => Read::Data,
            _ => Read::Shutdown,
        }
    }

    fn binding(&self, request: [u8; 32]) -> ReplyBinding {
        ReplyBinding {
            nonce: self.nonce,
            seq: self.seq,
            request,
        }
    }

    /// Sends one signed reply.
    pub(crate) async fn reply(
        &mut self,
        status: Status,
        body: &[u8],
        request: [u8; 32],
    ) -> Result<(), Stop> {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status,
            body_len: body.len() as u64,
        };
        let data = self.binding(request).signed_data(&header, &body_hash(body));
        let signature = self.sh.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        let mut head = Vec::with_capacity(32);
        header.encode(&mut head);
        self.write(&head).await?;
        self.write(body).await?;
        self.write(&signature).await
    }

    /// Sends a reply whose body is streamed in `chunks` of known total length.
    pub(crate) async fn reply_streamed<F, Fut>(
        &mut self,
        len: u64,
        request: [u8; 32],
        mut next: F,
    ) -> Result<(), Stop>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Option<Bytes>>,
    {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status: Status::Success,
            body_len: len,
        };
        let mut head = Vec::with_capacity(32);
        header.encode(&mut head);
        self.write(&head).await?;
        let mut hasher = Sha256::new();
        let mut sent = 0u64;
        while sent < len {
            // The length was promised: a store that fails mid-way leaves the
            // connection unusable, so it is closed.
            let chunk = next().await.ok_or(Stop)?;
            let take = chunk.len().min((len - sent) as usize);
            hasher.update(&chunk[..take]);
            self.write(&chunk[..take]).await?;
            sent += take as u64;
        }
        let data = self
            .binding(request)
            .signed_data(&header, &hasher.finalize().into());
        let signature = self.sh.key.sign(SignatureTag::Reply, &[&data]);
        self.seq += 1;
        self.write(&signature).await
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), Stop> {
        self.out.extend_from_slice(bytes);
        if self.out.len() >= 64 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends buffered replies now.
    pub(crate) async fn flush(&mut self) -> Result<(), Stop> {
        if self.out.is_empty() {
            return Ok(());
        }
        // A peer that does not read its replies is cut off after the idle timeout.
        let idle = Duration::from_secs(self.sh.cfg.timeouts.idle_secs);
        let r = match tokio::time::timeout(idle, self.wr.write_all(&self.out)).await {
            Ok(r) => r,
            Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
        };
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::new();
        }
        r.map_err(|_| Stop)
    }

    /// The address of the logged-in account, if any.
    pub(crate) fn address(&self, account: &Account) -> Address {
        Address::new(account.clone(), self.sh.domain.clone())
    }

    /// Runs one command. The arms that await I/O are boxed: their futures
    /// are large, and an idle connection's task should not carry them.
    async fn dispatch(&mut self, cmd: Command, digest: [u8; 32]) -> Result<(), Stop> {
        let now = crate::state::now();
        match cmd {
            Command::Ohai => {
                let g = Greeting {
                    domain: self.sh.domain.clone(),
                    software: crate::state::SOFTWARE.into(),
                    extensions: EXTENSIONS.iter().map(|s| s.to_string()).collect(),
                    key: self.sh.key.public(),
                    nonce: self.nonce,
                    max_message_size: self.sh.limits.max_message_size,
                    max_attachments: self.sh.limits.max_attachments,
                };
                self.reply(Status::Success, g.to_text().as_bytes(), digest)
                    .await
            }
            Command::Help => {
                self.reply(Status::Success, crate::help::TEXT.as_bytes(), digest)
                    .await
            }
            Command::Noop => self.reply(Status::Success, b"", digest).await,
            Command::Obai => self.reply(Status::Success, b"bye", digest).await,
            Command::KeyRequest { user, domain } => {
                Box::pin(self.key_request(user, domain, digest, now)).await
            }
            Command::Mail => Box::pin(crate::mail::receive(self, digest)).await,
            Command::Login { user, ke1 } => Box::pin(self.login(user, ke1, digest)).await,
            Command::LoginFinish { ke3 } => Box::pin(self.login_finish(ke3, digest)).await,
            Command::KeyLogin { user, signature } => {
                Box::pin(self.key_login(user, signature, digest)).await
            }
            Command::Register {
                user,
                invite,
                request,
            } => Box::pin(self.register(user, invite, request, digest, now)).await,
            Command::Password { request } => Box::pin(self.password(request, digest)).await,
            Command::RegFinish { bundle } => Box::pin(self.reg_finish(bundle, digest, now)).await,
            Command::List => Box::pin(self.list(digest)).await,
            Command::Fetch { id } => Box::pin(self.fetch(id, digest)).await,
            Command::Delete { id } => Box::pin(self.delete(id, digest)).await,
            Command::ListPage { before, limit } => {
                Box::pin(self.list_page(before, limit, digest)).await
            }
            Command::Changes { since, limit } => Box::pin(self.changes(since, limit, digest)).await,
            Command::Flags { set, clear, ids } => {
                Box::pin(self.flags(set, clear, ids, digest)).await
            }
            Command::Append { folder, flags } => Box::pin(self.append(folder, flags, digest)).await,
            other => {
                let text = format!("{} is not supported by this server", other.word());
                self.reply(Status::BadCommand, text.as_bytes(), digest)
                    .await
            }
        }
    }

    async fn key_request(
        &mut self,
        user: Option<Account>,
        domain: Option<cmtp_proto::names::Domain>,
        digest: [u8; 32],
        now: u64,
    ) -> Result<(), Stop> {
        let domain = domain.unwrap_or_else(|| self.sh.domain.clone());
        if domain == self.sh.domain {
            match user {
                None => {
                    let bundle = self.sh.server_bundle(now);
                    self.reply(Status::Success, &bundle, digest).await
                }
                Some(account) => match self.sh.local_statement(&account, now).await {
                    Ok(Some(bytes)) => self.reply(Status::Success, &bytes, digest).await,
                    Ok(None) => {
                        let text = format!("no user {account} at {domain}");
                        self.reply(Status::KeyNotAvailable, text.as_bytes(), digest)
                            .await
                    }
                    Err(e) => self.temp_failure(&e.to_string(), digest).await,
                },
            }
        } else {
            let remote = &self.sh.remote;
            let result = match &user {
                // The bundle as the domain's server gives it, checked against the pin.
                None => remote.fetch_bundle(&domain, now).await,
                Some(account) => remote.user_statement(account, &domain, now).await,
            };
            match result {
                Ok(bytes) => self.reply(Status::Success, &bytes, digest).await,
                Err(e) => {
                    tracing::info!(peer = %self.peer, %domain, error = %e, "remote KEYREQUEST failed");
                    if e.is_transient() {
                        self.temp_failure(&e.public_text(), digest).await
                    } else {
                        let text = e.public_text();
                        self.reply(Status::KeyNotAvailable, text.as_bytes(), digest)
                            .await
                    }
                }
            }
        }
    }

    pub(crate) async fn temp_failure(&mut self, why: &str, digest: [u8; 32]) -> Result<(), Stop> {
        tracing::warn!(peer = %self.peer, error = why, "temporary failure");
        self.reply(
            Status::TempFailure,
            format!("temporary failure, try again later: {why}").as_bytes(),
            digest,
        )
        .await
    }
}
