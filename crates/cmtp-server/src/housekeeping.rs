//! A small background task of each node: it applies the login unlocks that
//! administrators record (`cmtpd user unlock`), and keeps the disk gauges
//! current.
//!
//! Login rate limits live in each node's memory
//! ([`crate::limiter::FailureLimiter`]); an unlock is a record in the store
//! ([`cmtp_store::Store::unlock_user`]) that every node reads by cursor
//! ([`cmtp_store::Store::unlocks_after`]) at most [`UNLOCK_POLL`] later
//! (at once after a reload), and applies by forgetting the account's
//! failures. This is the only link between the limiter and the store: a
//! limiter that keeps its counts elsewhere needs only to offer `clear`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cmtp_proto::names::Account;
use cmtp_store::Store;
use tokio::sync::{mpsc, watch};

use crate::config::StoreBackend;
use crate::state::Shared;

/// How often a node looks for new unlock records.
pub const UNLOCK_POLL: Duration = Duration::from_secs(2);

/// How often the disk gauges are refreshed.
const DISK_EVERY: Duration = Duration::from_secs(15);

/// Runs until shutdown.
pub(crate) async fn run(
    sh: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
) {
    // Unlocks recorded before this node started concern failures it never saw.
    let mut cursor = loop {
        match sh.store.unlocks_after(0).await {
            Ok(all) => break all.last().map_or(0, |u| u.id),
            Err(e) => {
                tracing::warn!(error = %e, "reading unlock records failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(UNLOCK_POLL) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let mut disk_at: Option<Instant> = None;
    loop {
        if disk_at.is_none_or(|t| t.elapsed() >= DISK_EVERY) {
            disk_gauges(&sh);
            disk_at = Some(Instant::now());
        }
        tokio::select! {
            _ = tokio::time::sleep(UNLOCK_POLL) => {}
            _ = sh.housekeeping_wakeup.notified() => {}
            _ = shutdown.changed() => return,
        }
        apply_unlocks(&sh, &mut cursor).await;
    }
}

async fn apply_unlocks(sh: &Shared, cursor: &mut u64) {
    match sh.store.unlocks_after(*cursor).await {
        Ok(list) => {
            for u in list {
                *cursor = (*cursor).max(u.id);
                match Account::parse(&u.account) {
                    Ok(account) => {
                        sh.login_failures
                            .clear(&crate::limiter::account_key(&account));
                        tracing::info!(account = %account, "login rate limit cleared by an administrator");
                    }
                    Err(e) => {
                        tracing::warn!(account = %u.account, error = %e, "unlock record for an invalid name")
                    }
                }
            }
        }
        Err(e) => tracing::warn!(error = %e, "reading unlock records failed"),
    }
}

/// Free and total bytes of the file systems holding the data directory
/// and (SQLite) the database, as `cmtp_disk_free_bytes` and
/// `cmtp_disk_total_bytes` with a `volume` label (`data`, `database`).
pub(crate) fn disk_gauges(sh: &Shared) {
    let cfg = sh.cfg();
    let mut volumes = vec![("data", cfg.data_dir.clone())];
    if cfg.store.backend == StoreBackend::Sqlite {
        let db = cfg.sqlite_path();
        volumes.push((
            "database",
            db.parent().map(Path::to_owned).unwrap_or_default(),
        ));
    }
    for (volume, dir) in volumes {
        match rustix::fs::statvfs(&dir) {
            Ok(s) => {
                let unit = s.f_frsize.max(1);
                metrics::gauge!("cmtp_disk_free_bytes", "volume" => volume)
                    .set((s.f_bavail.saturating_mul(unit)) as f64);
                metrics::gauge!("cmtp_disk_total_bytes", "volume" => volume)
                    .set((s.f_blocks.saturating_mul(unit)) as f64);
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), error = %e, "statvfs failed")
            }
        }
    }
}
