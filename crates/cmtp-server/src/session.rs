//! One client connection: the I/O shell around
//! [`cmtp_proto::connection::server::ServerConnection`], which holds every
//! rule of the connection (PROTOCOL.md §4–§7). The shell moves bytes between
//! the socket and the state machine, passes it the time, and runs what the
//! events ask of the server: key statements, logins, the mailbox, storing
//! messages (the handlers in `auth`, `mailbox`, `mail` and here).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmtp_proto::command::Command;
use cmtp_proto::connection::server::{ServerConnection, ServerEvent};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::reply::Status;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::auth::Exchange;
use crate::limiter::ConnectionSlot;
use crate::state::Shared;

thread_local! {
    /// Each runtime thread's read buffer: zeroed once, lent to one
    /// [`Session::read_now`] at a time (a read never awaits).
    static READ_BUF: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0u8; 64 * 1024].into_boxed_slice());
}

/// The session ends (the socket failed).
#[derive(Debug)]
pub(crate) struct Stop;

/// A connection's state.
pub(crate) struct Session {
    pub(crate) sh: Arc<Shared>,
    pub(crate) conn: ServerConnection<Exchange>,
    stream: TcpStream,
    pub(crate) peer: SocketAddr,
    shutdown: watch::Receiver<bool>,
    /// Ends the session at once (after the shutdown grace period).
    cancel: CancellationToken,
    /// The message being received, once accepted.
    pub(crate) mail: Option<Box<crate::mail::Accepting>>,
    /// The connection's slot: a stranger's until the session logs in, then
    /// one of the share reserved for logged-in sessions.
    slot: ConnectionSlot,
}

impl Session {
    /// Serves a connection until it ends.
    pub(crate) fn run(
        sh: Arc<Shared>,
        stream: TcpStream,
        peer: SocketAddr,
        slot: ConnectionSlot,
        shutdown: watch::Receiver<bool>,
        cancel: CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        stream.set_nodelay(true).ok();
        let mut nonce = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
        let conn = ServerConnection::new(sh.conn_config.load_full(), nonce, Instant::now());
        let mut s = Session {
            sh,
            conn,
            stream,
            peer,
            shutdown,
            cancel,
            mail: None,
            slot,
        };
        metrics::counter!("cmtp_connections_total").increment(1);
        metrics::gauge!("cmtp_connections_open").increment(1.0);
        // A block, not an `async fn` taking the session: the task then
        // holds the session once (an `async fn` keeps its arguments beside
        // the locals they are moved into).
        async move {
            let cancel = s.cancel.clone();
            let evicted = s.slot.evicted().clone();
            tokio::select! {
                _ = s.serve() => {}
                _ = cancel.cancelled() => {
                    tracing::info!(peer = %s.peer, "closing the connection: shutdown grace period over");
                    s.conn.abort();
                }
                _ = evicted.cancelled() => {
                    tracing::info!(peer = %s.peer, "closing the connection: its slot was given to a peer holding fewer");
                    s.conn.abort();
                }
            }
            if let Some(close) = s.conn.close_reason() {
                tracing::debug!(peer = %s.peer, ?close, "connection closed");
            }
            if s.mail.take().is_some() {
                tracing::info!(peer = %s.peer, "message abandoned");
            }
            let _ = s.stream.shutdown().await;
            metrics::gauge!("cmtp_connections_open").decrement(1.0);
        }
    }

    async fn serve(&mut self) {
        loop {
            // A reload changes the limits of open connections too, from
            // their next command on.
            let current = self.sh.conn_config.load();
            if !Arc::ptr_eq(&current, self.conn.config()) {
                self.conn.reconfigure(Arc::clone(&current));
            }
            while let Some(ev) = self.conn.poll_event(Instant::now()) {
                if self.dispatch(ev).await.is_err() {
                    self.conn.handle_eof();
                }
                // The slot follows the login (PROTOCOL.md §15).
                match self.conn.logged_in() {
                    Some(_) => self.slot.promote(),
                    None => self.slot.demote(),
                }
            }
            if self.send().await.is_err() {
                self.conn.handle_eof();
                while let Some(ev) = self.conn.poll_event(Instant::now()) {
                    let _ = self.dispatch(ev).await;
                }
                return;
            }
            if self.conn.is_closed() {
                return;
            }
            self.wait().await;
        }
    }

    /// Waits for bytes, a deadline or the shutdown signal.
    async fn wait(&mut self) {
        if *self.shutdown.borrow() {
            self.conn.shutdown();
            if self.conn.is_closed() {
                return;
            }
        }
        let deadline = self.conn.poll_timeout();
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d.into()).await,
                None => std::future::pending().await,
            }
        };
        let stopping = *self.shutdown.borrow();
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            r = self.stream.readable() => match r {
                Ok(()) => self.read_now(),
                Err(_) => self.conn.handle_eof(),
            },
            _ = sleep => self.conn.handle_timeout(Instant::now()),
            _ = shutdown.changed(), if !stopping => self.conn.shutdown(),
        }
    }

    /// Reads what the socket has into the runtime thread's read buffer (no
    /// buffer is held while idle). A buffer on the stack was zeroed for
    /// every read, which cost more than the rest of reading a 4 KiB message;
    /// one allocated per read grew the heap under many connections.
    fn read_now(&mut self) {
        READ_BUF.with_borrow_mut(|buf| match self.stream.try_read(buf) {
            Ok(0) => self.conn.handle_eof(),
            Ok(n) => {
                metrics::counter!("cmtp_bytes_received_total").increment(n as u64);
                self.conn.handle_input(&buf[..n], Instant::now());
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => self.conn.handle_eof(),
        })
    }

    /// Sends what the connection has to send: at once when the socket takes
    /// it (the usual case), otherwise in a boxed [`Session::flush`].
    async fn send(&mut self) -> Result<(), Stop> {
        while !self.conn.output().is_empty() {
            match self.stream.try_write(self.conn.output()) {
                Ok(n) if n > 0 => self.conn.consume_output(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    return Box::pin(self.flush()).await;
                }
                _ => return Err(Stop),
            }
        }
        Ok(())
    }

    /// Sends what the connection has to send. A peer that does not read its
    /// replies is cut off after the idle timeout.
    pub(crate) async fn flush(&mut self) -> Result<(), Stop> {
        let idle = Duration::from_secs(self.sh.cfg().timeouts.idle_secs);
        while !self.conn.output().is_empty() {
            let write = self.stream.write(self.conn.output());
            match tokio::time::timeout(idle, write).await {
                Ok(Ok(n)) if n > 0 => self.conn.consume_output(n),
                _ => return Err(Stop),
            }
        }
        Ok(())
    }

    /// Sends output once enough has accumulated (a streamed reply).
    pub(crate) async fn flush_if_large(&mut self) -> Result<(), Stop> {
        if self.conn.output().len() >= 64 * 1024 {
            self.flush().await?;
        }
        Ok(())
    }

    /// The address of a local account.
    pub(crate) fn address(&self, account: &Account) -> Address {
        Address::new(account.clone(), self.sh.domain.clone())
    }

    /// Runs what an event asks for: the events that need no I/O here, the
    /// others boxed. Their futures are large, and an idle connection's task
    /// should carry only what waiting needs. The steps of a message, several
    /// per message, are boxed each on its own: a box of [`Session::handle`]
    /// is as large as its largest arm (a login), and building and moving
    /// one per step cost more than a tenth of a message's instructions.
    async fn dispatch(&mut self, ev: ServerEvent<Exchange>) -> Result<(), Stop> {
        match ev {
            ServerEvent::Answered(word) => {
                metrics::counter!("cmtp_commands_total", "command" => word).increment(1);
            }
            ServerEvent::BadInput(e) => {
                metrics::counter!("cmtp_bad_commands_total").increment(1);
                tracing::debug!(peer = %self.peer, error = %e, "bad command");
            }
            ServerEvent::MailAnnounced(total) => crate::mail::announced(self, total),
            ServerEvent::MailAborted => crate::mail::aborted(self),
            ev @ (ServerEvent::MailEnvelope { .. }
            | ServerEvent::MailData(_)
            | ServerEvent::MailLogEnd
            | ServerEvent::MailEnd { .. }) => self.mail_step(ev).await,
            ev => return Box::pin(self.handle(ev)).await,
        }
        Ok(())
    }

    /// A message's step as a future boxed at its own size. A plain function,
    /// so that [`Session::dispatch`]'s own future holds only the box, not
    /// the step's arguments.
    fn mail_step(
        &mut self,
        ev: ServerEvent<Exchange>,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        match ev {
            ServerEvent::MailEnvelope {
                intake,
                envelope,
                announced,
            } => {
                metrics::counter!("cmtp_commands_total", "command" => intake.word()).increment(1);
                let intake = match intake {
                    Command::Append { folder, flags } => {
                        crate::mail::Intake::Append { folder, flags }
                    }
                    _ => crate::mail::Intake::Mail,
                };
                Box::pin(crate::mail::envelope(self, intake, envelope, announced))
            }
            ServerEvent::MailData(bytes) => {
                Box::pin(async move { crate::mail::data(self, &bytes).await })
            }
            ServerEvent::MailLogEnd => Box::pin(crate::mail::log_end(self)),
            ServerEvent::MailEnd { trailer, hash } => {
                Box::pin(crate::mail::finish(self, trailer, hash))
            }
            _ => Box::pin(std::future::ready(())),
        }
    }

    /// Runs an event that awaits I/O, other than a message's steps (see
    /// [`Session::dispatch`]).
    async fn handle(&mut self, ev: ServerEvent<Exchange>) -> Result<(), Stop> {
        match ev {
            ServerEvent::Request(cmd) => {
                metrics::counter!("cmtp_commands_total", "command" => cmd.word()).increment(1);
                tracing::debug!(peer = %self.peer, command = cmd.word(), "command");
                return self.request(cmd).await;
            }
            ServerEvent::LoginFinish { ke3, exchange } => {
                metrics::counter!("cmtp_commands_total", "command" => "LOGINFINISH").increment(1);
                self.login_finish(ke3, exchange).await;
            }
            ServerEvent::RegFinish { bundle, exchange } => {
                metrics::counter!("cmtp_commands_total", "command" => "REGFINISH").increment(1);
                self.reg_finish(bundle, exchange, crate::state::now()).await;
            }
            _ => {}
        }
        Ok(())
    }

    async fn request(&mut self, cmd: Command) -> Result<(), Stop> {
        let now = crate::state::now();
        match cmd {
            Command::KeyRequest { user, domain } => self.key_request(user, domain, now).await,
            Command::Login { user, ke1 } => self.login(user, ke1).await,
            Command::KeyLogin { user, signature } => self.key_login(user, signature).await,
            Command::Register {
                user,
                invite,
                request,
            } => self.register(user, invite, request, now).await,
            Command::Password { request } => self.password(request).await,
            Command::Reset {
                user,
                token,
                request,
            } => self.reset(user, token, request, now).await,
            Command::List => self.list().await,
            Command::Fetch { id } => return self.fetch(id).await,
            Command::Delete { id } => self.delete(id).await,
            Command::ListPage { before, limit } => self.list_page(before, limit).await,
            Command::Changes { since, limit } => self.changes(since, limit).await,
            Command::Flags { set, clear, ids } => self.flags(set, clear, ids).await,
            Command::Move { folder, ids } => self.move_messages(folder, ids).await,
            c if c.is_transparency() => crate::kt::serve(self, c, now).await,
            other => {
                let text = format!("{} is not supported by this server", other.word());
                self.conn.reply(Status::BadCommand, text.as_bytes());
            }
        }
        Ok(())
    }

    async fn key_request(&mut self, user: Option<Account>, domain: Option<Domain>, now: u64) {
        let domain = domain.unwrap_or_else(|| self.sh.domain.clone());
        if domain == self.sh.domain {
            match user {
                None => {
                    let bundle = self.sh.server_bundle(now);
                    self.conn.reply(Status::Success, &bundle);
                }
                Some(account) => match self.sh.local_statement(&account, now).await {
                    Ok(Some(bytes)) => self.conn.reply(Status::Success, &bytes),
                    Ok(None) => {
                        let text = format!("no user {account} at {domain}");
                        self.conn.reply(Status::KeyNotAvailable, text.as_bytes());
                    }
                    Err(e) => self.temp_failure(&e),
                },
            }
        } else {
            // A stranger must not make this server dial out at will (§15).
            let logged_in = self.conn.logged_in().is_some();
            if let Err(text) = self.sh.check_remote_key_request(self.peer.ip(), logged_in) {
                return self.conn.reply(Status::RateLimited, text.as_bytes());
            }
            let remote = &self.sh.remote;
            let result = match &user {
                // The bundle as the domain's server gives it, checked against the pin.
                None => remote.fetch_bundle(&domain, now).await,
                Some(account) => remote.user_statement(account, &domain, now).await,
            };
            match result {
                Ok(bytes) => self.conn.reply(Status::Success, &bytes),
                Err(e) => {
                    tracing::info!(peer = %self.peer, %domain, error = %e, "remote KEYREQUEST failed");
                    // A domain reachable by SMTP only (PROTOCOL.md §19.3).
                    if logged_in
                        && !e.is_verification()
                        && let Some(text) =
                            crate::smtp::outbound::no_cmtp_text(&self.sh, &domain).await
                    {
                        return self.conn.reply(Status::KeyNotAvailable, text.as_bytes());
                    }
                    // §6.3: unreachable → TEMPFAILURE; a key that does not
                    // verify → KEYUNVERIFIED; no such user or domain →
                    // KEYNOTAVAILABLE.
                    let status = if e.is_verification() {
                        Status::KeyUnverified
                    } else if e.is_transient() {
                        Status::TempFailure
                    } else {
                        Status::KeyNotAvailable
                    };
                    self.conn.reply(status, e.public_text().as_bytes());
                }
            }
        }
    }

    /// Answers TEMPFAILURE for an internal error: the peer gets a generic
    /// text with a reference; the details go to the log under it.
    pub(crate) fn temp_failure(&mut self, error: &dyn std::fmt::Display) {
        let text = internal_error(self.peer, error);
        self.conn.reply(Status::TempFailure, text.as_bytes());
    }
}

/// Logs an internal error under a fresh reference and returns the text a
/// peer gets: no database or file-system details leave the server.
pub(crate) fn internal_error(peer: SocketAddr, error: &dyn std::fmt::Display) -> String {
    let mut id = [0u8; 6];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut id);
    let id = hex::encode(id);
    tracing::warn!(%peer, reference = %id, error = %error, "temporary failure");
    format!("temporary failure, try again later (reference {id})")
}
