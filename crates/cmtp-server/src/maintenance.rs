//! Housekeeping while the server runs: at start and every
//! [`MAINTENANCE_INTERVAL`], expired invites, old de-duplication entries,
//! abandoned uploads, expired remote key statements, and the remote caches
//! trimmed to their bounds (`[remote] max_statements`, `max_pins`); the
//! parameters unknown accounts are answered with follow the accounts; and
//! every [`crate::disk::SAMPLE_INTERVAL`] the disk is measured (free space,
//! store size, ballast).

use std::sync::Arc;
use std::time::Duration;

use cmtp_store::Store;
use tokio::sync::{mpsc, watch};

use crate::state::Shared;

/// How often the store is purged.
pub(crate) const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(600);

/// Runs until shutdown.
pub(crate) async fn run(
    shared: Arc<Shared>,
    shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    let disk = {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        async move { shared.disk.run(&shared.store, shutdown).await }
    };
    tokio::join!(disk, purge_loop(&shared, shutdown));
}

async fn purge_loop(shared: &Shared, mut shutdown: watch::Receiver<bool>) {
    loop {
        // First at start: a node of a cluster (PostgreSQL) does not remove
        // every staged blob when it opens the store, as another node may be
        // uploading, so what a dead node left is removed here.
        purge(shared).await;
        if let Err(e) = shared.decoys.refresh(&shared.store).await {
            tracing::warn!(error = %e, "cannot read the parameters accounts use");
        }
        tokio::select! {
            _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// One purge of the store.
pub(crate) async fn purge(shared: &Shared) {
    // An upload in progress must outlive the slowest transfer the data
    // timeout allows (grace + size / minimum rate), with a margin.
    let cfg = shared.cfg();
    let t = &cfg.timeouts;
    let slowest = t.data_grace_secs + cfg.limits.max_message_size / t.min_data_rate.max(1);
    let default = cmtp_store::Retention::default();
    let retention = cmtp_store::Retention {
        staged_grace: default.staged_grace.max(slowest + 600),
        max_cached_statements: cfg.remote.max_statements,
        max_pins: cfg.remote.max_pins,
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
