//! Listening, accepting, and graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use cmtp_proto::banner;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::session::Session;
use crate::state::Shared;

/// A running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    /// The SMTP gateway's addresses (`[smtp] listen`).
    smtp_addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Closed when every background task has ended.
    done: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
    /// Every session.
    sessions: TaskTracker,
    /// Ends the sessions still open when the grace period is over.
    cancel: CancellationToken,
}

impl Server {
    /// Prepares the data directory (key, database) and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        let prepared = crate::admin::prepare(&cfg).await?;
        let shared = Arc::new(Shared::new(cfg, prepared.key, prepared.store).await?);
        Self::serve(shared).await
    }

    async fn serve(shared: Arc<Shared>) -> anyhow::Result<Server> {
        crate::kt::start(&shared, crate::state::now()).await?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive, done) = mpsc::channel::<()>(1);
        let sessions = TaskTracker::new();
        let cancel = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut addrs = Vec::new();
        for addr in &shared.cfg().listen {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("listening on {addr}"))?;
            let local = listener.local_addr()?;
            tracing::info!(domain = %shared.domain, addr = %local, key = %shared.key.public().fingerprint_hex(), "cmtpd listening");
            addrs.push(local);
            tasks.push(tokio::spawn(accept_loop(
                shared.clone(),
                listener,
                shutdown_rx.clone(),
                sessions.clone(),
                cancel.clone(),
            )));
        }
        let (smtp_addrs, smtp_tasks) =
            crate::smtp::start(&shared, &shutdown_rx, &sessions, &cancel).await?;
        tasks.extend(smtp_tasks);
        tasks.push(tokio::spawn(crate::relay::run(
            shared.clone(),
            shutdown_rx.clone(),
            alive.clone(),
        )));
        tasks.push(tokio::spawn(crate::housekeeping::run(
            shared.clone(),
            shutdown_rx.clone(),
            alive.clone(),
        )));
        tasks.push(tokio::spawn(crate::kt::run(
            shared.clone(),
            shutdown_rx.clone(),
            alive.clone(),
        )));
        tasks.push(tokio::spawn(crate::maintenance::run(
            shared.clone(),
            shutdown_rx.clone(),
            alive,
        )));
        Ok(Server {
            shared,
            addrs,
            smtp_addrs,
            shutdown,
            done,
            tasks,
            sessions,
            cancel,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The SMTP gateway's bound addresses (empty when it is off).
    pub fn smtp_addrs(&self) -> &[SocketAddr] {
        &self.smtp_addrs
    }

    /// The shared state (tests and admin tools).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets connections finish what they are doing (a
    /// message being received is completed and stored; idle ones close at
    /// once), and returns when all have ended — or, after the configured
    /// grace period, closes those still open and returns when they are gone.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: no new connections; finishing those in progress");
        let _ = self.shutdown.send(true);
        self.sessions.close();
        let grace = Duration::from_secs(self.shared.cfg().timeouts.shutdown_grace_secs);
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.sessions.len(),
                "connections still open after {grace:?}; closing them"
            );
            self.cancel.cancel();
            self.sessions.wait().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), self.done.recv()).await;
        for t in &self.tasks {
            t.abort();
        }
        tracing::info!("stopped");
    }

    /// Sessions open now.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    sessions: TaskTracker,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (mut stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait a little.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Read at every accept: a reload changes them.
        let limits = shared.cfg().connection_limits();
        let slot = match shared
            .conns
            .acquire_stranger(shared.peer_key(peer.ip()), &limits)
        {
            Ok(slot) => slot,
            Err(why) => {
                tracing::info!(%peer, reason = why.reason(), "connection refused");
                let line = banner::busy_line(&shared.domain, why.text());
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        stream.write_all(line.as_bytes()),
                    )
                    .await;
                    let _ = stream.shutdown().await;
                });
                continue;
            }
        };
        let (shared, shutdown, cancel) = (shared.clone(), shutdown.clone(), cancel.clone());
        sessions.spawn(Session::run(shared, stream, peer, slot, shutdown, cancel));
    }
}
