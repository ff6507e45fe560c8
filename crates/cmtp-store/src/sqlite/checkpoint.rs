//! Checkpoints beside the writer thread rather than in its path.
//!
//! In WAL mode a commit appends the pages it changed to the log; a
//! checkpoint copies them into the database file, fsyncs it, and lets the
//! log start over. SQLite's automatic checkpoint runs in the connection
//! that committed, right after its commit: in the writer thread, which
//! meanwhile answers nobody and starts no batch. Under load every 1000th
//! page cost the whole queue one copy and one fsync of the database file,
//! the largest part of the MAIL latency's tail (docs/BENCHMARKS.md, issue
//! 17).
//!
//! Here a thread of its own checkpoints each database on a connection of
//! its own, in SQLite's PASSIVE mode: it copies what no reader still needs,
//! without waiting for the writer or stopping it. The writer's log hook
//! wakes it once `soft` pages have been added since its last checkpoint.
//!
//! The log starts over only when a write transaction begins while the log
//! is wholly copied, and a writer that never pauses always begins its next
//! batch before the checkpoint thread has caught up (a test saw the log
//! grow without end). So once the log holds `hard` pages, the writer
//! copies the rest itself after a commit, as SQLite's automatic checkpoint
//! would, as soon as the checkpoint thread has left it little to copy (a
//! quarter of `soft` at most: what came in during that checkpoint); at
//! twice `hard`, whatever is left. The log then starts over at the
//! writer's next write: it stays under twice `hard` pages and one batch,
//! and the writer pays one short checkpoint every `hard` pages instead of
//! a whole one every 1000.

use std::ffi::c_int;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::hooks::Wal;
use rusqlite::wal::CheckpointMode;
use rusqlite::{Connection, ErrorCode};

use crate::error::StoreError;

/// When one database's log is checkpointed, in pages of the log.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Pages added since the last checkpoint that wake the checkpoint
    /// thread.
    pub(crate) soft: u32,
    /// Pages in the log from which the writer checkpoints itself.
    pub(crate) hard: u32,
}

impl Limits {
    /// Limits for a database of `page_size`-byte pages: a checkpoint after
    /// `bytes` of log, the writer's own from four times that.
    pub(crate) fn for_bytes(bytes: u64, page_size: u32) -> Limits {
        let soft = u32::try_from(bytes / u64::from(page_size.max(512)))
            .unwrap_or(u32::MAX / 4)
            .clamp(16, u32::MAX / 4);
        Limits {
            soft,
            hard: soft * 4,
        }
    }
}

/// The checkpoint thread. Dropping it stops the thread and waits for it
/// (after a checkpoint in progress).
pub(crate) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Checkpointer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpointer").finish_non_exhaustive()
    }
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Per database: the log's pages copied into the database by the last
    /// checkpoint (the thread's or the writer's).
    copied: Vec<AtomicU32>,
}

struct State {
    /// Per database: a checkpoint is wanted.
    due: Vec<bool>,
    stop: bool,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One database: the writer's connection to it, the checkpoint thread's
/// own (read-write) connection, and when to checkpoint.
pub(crate) struct Log<'a> {
    pub(crate) writer: &'a mut Connection,
    pub(crate) own: Connection,
    pub(crate) limits: Limits,
}

/// After a checkpoint failed for another reason than a lock (a full disk,
/// an I/O error), the next one waits this long.
const AFTER_FAILURE: Duration = Duration::from_secs(1);

impl Checkpointer {
    /// Installs a log hook on each writer connection (replacing SQLite's
    /// automatic checkpoint) and starts the thread.
    pub(crate) fn start(logs: Vec<Log<'_>>) -> Result<Checkpointer, StoreError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                due: vec![false; logs.len()],
                stop: false,
            }),
            wake: Condvar::new(),
            copied: logs.iter().map(|_| AtomicU32::new(0)).collect(),
        });
        let mut own = Vec::with_capacity(logs.len());
        for (index, log) in logs.into_iter().enumerate() {
            let hook = Arc::clone(&shared);
            let limits = log.limits;
            log.writer
                .wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
                    hook.committed(index, limits, wal, pages);
                    // The commit happened whatever the checkpoint did: an
                    // error here would fail the COMMIT statement.
                    Ok(())
                }))
                .map_err(super::map_err)?;
            own.push(log.own);
        }
        let thread_shared = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("cmtp-store-ckpt".into())
            .spawn(move || run(&thread_shared, &own))
            .map_err(|e| {
                StoreError::Unavailable(format!("cannot start the checkpoint thread: {e}"))
            })?;
        Ok(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state().stop = true;
        self.shared.wake.notify_all();
        if let Some(handle) = self.thread.take()
            && handle.join().is_err()
        {
            tracing::error!("the checkpoint thread panicked");
        }
    }
}

impl Shared {
    /// The writer's log hook: `pages` are in the log of database `index`
    /// after a commit.
    fn committed(&self, index: usize, limits: Limits, wal: &mut Wal, pages: c_int) {
        let pages = u32::try_from(pages).unwrap_or(0);
        let copied = &self.copied[index];
        let mut done = copied.load(Ordering::Relaxed);
        if pages < done {
            // The log started over since that checkpoint.
            done = 0;
            copied.store(0, Ordering::Relaxed);
        }
        let pending = pages - done;
        // The log starts over at the writer's next write only if the whole
        // log is copied by then, which only the writer can make sure of:
        // it copies the rest itself once the checkpoint thread has left it
        // little (what came in during that checkpoint), or at twice the
        // limit whatever is left.
        let full = pages >= limits.hard;
        if full && (pending <= limits.soft / 4 || pages >= limits.hard.saturating_mul(2)) {
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok((_, now)) => copied.store(u32::try_from(now).unwrap_or(0), Ordering::Relaxed),
                // The checkpoint thread is at it: the next commit tries again.
                Err(e) if is_locked(&e) => {}
                Err(e) => tracing::debug!(error = %e, pages, "the writer's checkpoint failed"),
            }
        } else if full || pending >= limits.soft {
            let mut state = self.state();
            if !state.due[index] {
                state.due[index] = true;
                drop(state);
                self.wake.notify_one();
            }
        }
    }
}

fn run(shared: &Shared, conns: &[Connection]) {
    let mut failing = false;
    loop {
        let due = {
            let mut state = shared.state();
            while !state.stop && !state.due.contains(&true) {
                state = shared
                    .wake
                    .wait(state)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            if state.stop {
                return;
            }
            let none = vec![false; state.due.len()];
            std::mem::replace(&mut state.due, none)
        };
        let mut failed = false;
        for (index, conn) in conns.iter().enumerate().filter(|(i, _)| due[*i]) {
            match conn.wal_checkpoint_v2(None::<&str>, CheckpointMode::PASSIVE) {
                Ok((_, copied)) => shared.copied[index]
                    .store(u32::try_from(copied).unwrap_or(0), Ordering::Relaxed),
                // The writer is checkpointing itself (its log is full).
                Err(e) if is_locked(&e) => {}
                Err(e) => {
                    failed = true;
                    if failing {
                        tracing::debug!(error = %e, "a checkpoint failed again");
                    } else {
                        tracing::warn!(
                            error = %e,
                            "a checkpoint failed; the log grows until one succeeds"
                        );
                    }
                }
            }
        }
        failing = failed;
        if failed {
            // A full disk: do not spin on it, and stay ready to stop.
            let state = shared.state();
            if !state.stop {
                drop(
                    shared
                        .wake
                        .wait_timeout_while(state, AFTER_FAILURE, |s| !s.stop)
                        .unwrap_or_else(PoisonError::into_inner),
                );
            }
        }
    }
}

fn is_locked(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked)
    )
}

#[cfg(test)]
mod tests {
    use super::Limits;

    #[test]
    fn limits_are_counted_in_the_databases_own_pages() {
        let small = Limits::for_bytes(4 << 20, 4096);
        assert_eq!((small.soft, small.hard), (1024, 4096));
        let large = Limits::for_bytes(4 << 20, 65536);
        assert_eq!((large.soft, large.hard), (64, 256));
        // A tiny setting still leaves the writer room between checkpoints.
        assert_eq!(Limits::for_bytes(0, 4096).soft, 16);
    }
}
