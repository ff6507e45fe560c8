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

use crate::config::Config;
use crate::session::Session;
use crate::state::Shared;

/// A running server.
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    /// Closed when every session and background task has ended.
    done: mpsc::Receiver<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Prepares the data directory (key, database) and starts serving.
    pub async fn start(cfg: Config) -> anyhow::Result<Server> {
        let prepared = crate::admin::prepare(&cfg).await?;
        let shared = Arc::new(Shared::new(cfg, prepared.key, prepared.store).await?);
        Self::serve(shared).await
    }

    async fn serve(shared: Arc<Shared>) -> anyhow::Result<Server> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (alive, done) = mpsc::channel::<()>(1);
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
                alive.clone(),
            )));
        }
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
        tasks.push(tokio::spawn(maintenance(
            shared.clone(),
            shutdown_rx.clone(),
            alive,
        )));
        Ok(Server {
            shared,
            addrs,
            shutdown,
            done,
            tasks,
        })
    }

    /// The addresses actually bound (useful with port 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The shared state (tests and admin tools).
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops accepting, lets connections finish what they are doing (a
    /// message being received is completed and stored), and returns when all
    /// have ended or the configured grace period has passed.
    pub async fn shutdown(mut self) {
        tracing::info!("shutting down: no new connections; finishing those in progress");
        let _ = self.shutdown.send(true);
        let grace = Duration::from_secs(self.shared.cfg().timeouts.shutdown_grace_secs);
        if tokio::time::timeout(grace, self.done.recv()).await.is_err() {
            tracing::warn!("connections still open after {grace:?}; closing them");
        }
        for t in &self.tasks {
            t.abort();
        }
        tracing::info!("stopped");
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    alive: mpsc::Sender<()>,
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
        let (max, max_per_peer) = {
            let c = &shared.cfg().connections;
            (c.max, c.max_per_peer)
        };
        let slot = match shared.conns.acquire(peer.ip(), max, max_per_peer) {
            Ok(slot) => slot,
            Err(why) => {
                metrics::counter!("cmtp_connections_refused_total").increment(1);
                tracing::info!(%peer, why, "connection refused");
                let line = banner::busy_line(&shared.domain, why);
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
        let (shared, shutdown, alive) = (shared.clone(), shutdown.clone(), alive.clone());
        tokio::spawn(async move {
            Session::run(shared, stream, peer, shutdown).await;
            drop(slot);
            drop(alive);
        });
    }
}

/// Periodic housekeeping: expired invites, old de-duplication entries,
/// abandoned uploads.
async fn maintenance(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    use cmtp_store::Store;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(600)) => {}
            _ = shutdown.changed() => return,
        }
        // An upload in progress must outlive the slowest transfer the data
        // timeout allows (grace + size / minimum rate), with a margin.
        let t = shared.cfg().timeouts.clone();
        let slowest =
            t.data_grace_secs + shared.cfg().limits.max_message_size / t.min_data_rate.max(1);
        let default = cmtp_store::Retention::default();
        let retention = cmtp_store::Retention {
            staged_grace: default.staged_grace.max(slowest + 600),
            ..default
        };
        match shared
            .store
            .purge_expired(crate::state::now(), retention)
            .await
        {
            Ok(r) => tracing::debug!(?r, "maintenance"),
            Err(e) => tracing::warn!(error = %e, "maintenance failed"),
        }
    }
}
