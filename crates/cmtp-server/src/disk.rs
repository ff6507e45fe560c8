//! Disk space: what new mail may still use (PROTOCOL.md §15, README
//! "Running on the open internet").
//!
//! A full disk must degrade to "no new mail", never to "no service". Three
//! mechanisms:
//!
//! - a free-space reserve in the manner of Postfix's `queue_minfree`
//!   (`[store] min_free`): [`DiskMonitor::admit`] refuses a message up front
//!   when the free space, less what messages being received may still
//!   write, is below the reserve plus the message's size; and a cap on the
//!   store's size (`[store] max_size`);
//! - a ballast file (`[store] ballast_size`, `cmtpd.ballast` beside the
//!   database, in the data directory by default): when the file system fills up all the same (another
//!   program, logs), the monitor deletes it, so that deleting mail, logins,
//!   key statements and restarts have room; it is written again once space
//!   returns. (CockroachDB keeps an emergency ballast for the same reason.)
//! - the SQLite store keeps its write-ahead log across restarts, so it
//!   opens and serves reads on a full disk (see `cmtp-store`).
//!
//! The monitor samples the file system (statvfs) and the store's size every
//! [`SAMPLE_INTERVAL`]; between samples it counts what was stored since, so
//! a burst cannot overshoot. Gauges: `cmtp_disk_free_bytes`,
//! `cmtp_store_size_bytes`, `cmtp_disk_ballast_bytes`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cmtp_store::{AnyStore, Store};

use crate::config::Config;

/// How often the free space and the store's size are measured.
pub const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);

/// Name of the ballast file, beside the database.
pub const BALLAST_FILE: &str = "cmtpd.ballast";

/// Why new mail cannot be stored now (answered with TEMPFAILURE).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiskRefusal {
    /// Free space would drop below the reserve.
    LowSpace {
        /// Free space now, less what messages being received may write.
        free: u64,
        /// The reserve plus the message.
        needed: u64,
    },
    /// The store would grow beyond `[store] max_size`.
    StoreFull {
        /// The store's size with what messages being received may write.
        size: u64,
        /// The limit.
        max: u64,
    },
}

impl fmt::Display for DiskRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DiskRefusal::LowSpace { .. } => {
                write!(f, "this server is short of disk space; no new mail for now")
            }
            DiskRefusal::StoreFull { .. } => {
                write!(f, "this server's mail store is full; no new mail for now")
            }
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiskSample {
    /// Bytes available to cmtpd on the store's file system.
    pub free: u64,
    /// Bytes the store occupies.
    pub store_size: u64,
    /// Bytes of the ballast file now.
    pub ballast: u64,
}

/// Watches the store's file system and admits new mail.
#[derive(Debug)]
pub struct DiskMonitor {
    dir: PathBuf,
    ballast_path: PathBuf,
    ballast_size: u64,
    min_free: u64,
    max_size: Option<u64>,
    free: AtomicU64,
    /// How much of the ballast is missing (released): that space is kept
    /// for deleting mail, logins and restarts, never given to new mail.
    ballast_missing: AtomicU64,
    store_size: AtomicU64,
    /// Bytes stored since the last sample.
    written: AtomicU64,
    /// Serialises samples (the ballast is written or deleted by one).
    sampling: Mutex<()>,
}

impl DiskMonitor {
    /// From `[store]`; nothing is measured before the first [`sample`](Self::sample).
    pub fn new(cfg: &Config) -> DiskMonitor {
        DiskMonitor {
            dir: cfg.store_dir(),
            // On the file system it stands in for: beside the database.
            ballast_path: cfg.store_dir().join(BALLAST_FILE),
            ballast_size: cfg.store.ballast_size,
            min_free: cfg.store.min_free,
            max_size: cfg.store.max_size,
            free: AtomicU64::new(u64::MAX),
            ballast_missing: AtomicU64::new(0),
            store_size: AtomicU64::new(0),
            written: AtomicU64::new(0),
            sampling: Mutex::new(()),
        }
    }

    /// Whether a message of `bytes` may be stored now, while messages being
    /// received hold `in_flight` bytes (reserved but perhaps not yet
    /// written). The MAIL path calls this, through the staging budget,
    /// before it stores a byte (`crate::budget`).
    pub fn admit(&self, bytes: u64, in_flight: u64) -> Result<(), DiskRefusal> {
        let pending = self
            .written
            .load(Ordering::Relaxed)
            .saturating_add(in_flight);
        let free = self.free.load(Ordering::Relaxed).saturating_sub(pending);
        let needed = self
            .min_free
            .saturating_add(self.ballast_missing.load(Ordering::Relaxed))
            .saturating_add(bytes);
        if free < needed {
            return Err(DiskRefusal::LowSpace { free, needed });
        }
        if let Some(max) = self.max_size {
            let size = self
                .store_size
                .load(Ordering::Relaxed)
                .saturating_add(pending);
            if size.saturating_add(bytes) > max {
                return Err(DiskRefusal::StoreFull { size, max });
            }
        }
        Ok(())
    }

    /// `bytes` were stored (a message committed): counted against the free
    /// space until the next sample sees them.
    pub fn note_stored(&self, bytes: u64) {
        self.written.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Measures the file system and the store, releases the ballast on a
    /// (nearly) full disk or writes it back once there is room, and sets
    /// the gauges.
    pub async fn sample(self: &Arc<Self>, store: &AnyStore) -> std::io::Result<DiskSample> {
        let store_size = match store.size().await {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::warn!(error = %e, "cannot measure the store");
                None
            }
        };
        // statvfs, and writing the ballast, block: not on the runtime.
        let me = Arc::clone(self);
        let measured = tokio::task::spawn_blocking(move || me.measure(store_size))
            .await
            .map_err(std::io::Error::other)??;
        metrics::gauge!("cmtp_disk_free_bytes").set(measured.free as f64);
        metrics::gauge!("cmtp_store_size_bytes").set(measured.store_size as f64);
        metrics::gauge!("cmtp_disk_ballast_bytes").set(measured.ballast as f64);
        Ok(measured)
    }

    fn measure(&self, store_size: Option<u64>) -> std::io::Result<DiskSample> {
        let _one = self.sampling.lock().unwrap_or_else(|e| e.into_inner());
        // Only what this sample can see is forgotten: bytes noted while it
        // runs stay counted until the next one.
        let written = self.written.load(Ordering::Relaxed);
        let ballast = self.tend_ballast(free_space(&self.dir)?);
        let free = free_space(&self.dir)?;
        self.free.store(free, Ordering::Relaxed);
        self.ballast_missing
            .store(self.ballast_size.saturating_sub(ballast), Ordering::Relaxed);
        if let Some(n) = store_size {
            self.store_size.store(n, Ordering::Relaxed);
        }
        let _ = self
            .written
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| {
                Some(w.saturating_sub(written))
            });
        Ok(DiskSample {
            free,
            store_size: store_size.unwrap_or_else(|| self.store_size.load(Ordering::Relaxed)),
            ballast,
        })
    }

    /// Deletes the ballast when less than its size is free; writes it when
    /// the reserve and twice its size are free. Returns its size now.
    fn tend_ballast(&self, free: u64) -> u64 {
        let have = std::fs::metadata(&self.ballast_path).map_or(0, |m| m.len());
        if self.ballast_size == 0 {
            if have > 0 {
                let _ = std::fs::remove_file(&self.ballast_path);
            }
            return 0;
        }
        if have > 0 && free < self.ballast_size {
            match std::fs::remove_file(&self.ballast_path) {
                Ok(()) => {
                    tracing::warn!(
                        free,
                        released = have,
                        path = %self.ballast_path.display(),
                        "the disk is full: released the ballast so that deleting mail, logins \
                         and restarts keep working; free some space"
                    );
                    metrics::counter!("cmtp_disk_ballast_released_total").increment(1);
                    return 0;
                }
                Err(e) => {
                    tracing::error!(error = %e, path = %self.ballast_path.display(), "cannot release the ballast");
                    return have;
                }
            }
        }
        let room = self
            .min_free
            .saturating_add(self.ballast_size.saturating_mul(2));
        if have < self.ballast_size && free >= room {
            match write_ballast(&self.ballast_path, self.ballast_size) {
                Ok(()) => {
                    tracing::info!(size = self.ballast_size, path = %self.ballast_path.display(), "ballast in place");
                    return self.ballast_size;
                }
                Err(e) => {
                    tracing::warn!(error = %e, path = %self.ballast_path.display(), "cannot write the ballast");
                    let _ = std::fs::remove_file(&self.ballast_path);
                    return 0;
                }
            }
        }
        have
    }

    /// Samples every [`SAMPLE_INTERVAL`] until `shutdown`.
    pub async fn run(
        self: &Arc<Self>,
        store: &AnyStore,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(SAMPLE_INTERVAL) => {}
                _ = shutdown.changed() => return,
            }
            if let Err(e) = self.sample(store).await {
                tracing::warn!(error = %e, dir = %self.dir.display(), "cannot measure free space");
            }
        }
    }
}

/// Bytes available to an unprivileged user on the file system holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    let s = rustix::fs::statvfs(dir).map_err(std::io::Error::from)?;
    Ok(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Writes `size` bytes of allocated space to `path` (fallocate where the
/// file system has it, zeros otherwise) and syncs it.
fn write_ballast(path: &Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)?;
    match rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size) {
        Ok(()) => {}
        Err(rustix::io::Errno::OPNOTSUPP) => {
            let block = vec![0u8; 1 << 20];
            let mut left = size;
            while left > 0 {
                let n = left.min(block.len() as u64) as usize;
                f.write_all(&block[..n])?;
                left -= n as u64;
            }
        }
        Err(e) => return Err(e.into()),
    }
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn monitor(min_free: u64, max_size: Option<u64>) -> DiskMonitor {
        let mut cfg = Config::new("a.test", Path::new("/nonexistent"));
        cfg.store.min_free = min_free;
        cfg.store.max_size = max_size;
        let m = DiskMonitor::new(&cfg);
        m.free.store(1000, Ordering::Relaxed);
        m.store_size.store(500, Ordering::Relaxed);
        m
    }

    #[test]
    fn mail_is_refused_when_free_space_is_below_reserve_plus_its_size() {
        let m = monitor(300, None);
        m.admit(700, 0).unwrap();
        assert_eq!(
            m.admit(701, 0),
            Err(DiskRefusal::LowSpace {
                free: 1000,
                needed: 1001
            })
        );
        // What messages being received may still write counts.
        assert!(m.admit(600, 101).is_err());
        m.admit(600, 100).unwrap();
        // So does what was stored since the last sample.
        m.note_stored(200);
        assert_eq!(
            m.admit(600, 0),
            Err(DiskRefusal::LowSpace {
                free: 800,
                needed: 900
            })
        );
    }

    #[test]
    fn a_released_ballast_is_not_given_to_new_mail() {
        let m = monitor(300, None);
        m.ballast_missing.store(400, Ordering::Relaxed);
        m.admit(300, 0).unwrap();
        assert_eq!(
            m.admit(301, 0),
            Err(DiskRefusal::LowSpace {
                free: 1000,
                needed: 1001
            })
        );
    }

    #[test]
    fn mail_is_refused_when_the_store_would_exceed_its_limit() {
        let m = monitor(0, Some(800));
        m.admit(300, 0).unwrap();
        assert_eq!(
            m.admit(301, 0),
            Err(DiskRefusal::StoreFull {
                size: 500,
                max: 800
            })
        );
        assert!(m.admit(200, 101).is_err());
        let text = m.admit(301, 0).unwrap_err().to_string();
        assert!(text.contains("full") && !text.contains("800"), "{text}");
    }

    #[test]
    fn free_space_is_measured() {
        let dir = tempfile::tempdir().unwrap();
        assert!(free_space(dir.path()).unwrap() > 0);
        assert!(free_space(&dir.path().join("missing")).is_err());
    }
}
