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
//! quarter of `soft` at most: what came in during that checkpoint); from
//! twice `hard`, up to `soft` pages; from four times `hard` (a disk slower
//! than the writer), whatever is left. The log then starts over at the
//! writer's next write. The writer pays one short checkpoint every `hard`
//! pages instead of a whole one every 1000. A reader that stays on an old
//! snapshot (a backup) keeps any checkpoint from copying past it, as
//! before: the log grows until it ends.
//!
//! After a checkpoint failed for another reason than a lock (a full disk,
//! an I/O error), neither the thread nor the writer tries again for a
//! second.

use std::ffi::c_int;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    logs: Vec<LogState>,
    /// The clock's origin for `LogState::paused_until`.
    origin: Instant,
}

/// What the writer's hook and the thread know of one database's log.
#[derive(Default)]
struct LogState {
    /// The log's generation (high 32 bits: how often the hook saw the log
    /// start over) and its pages copied into the database (low 32 bits):
    /// a checkpoint that ran on an older log does not count for the new.
    copied: AtomicU64,
    /// Until when (milliseconds from `Shared::origin`) no checkpoint is
    /// tried, after one failed.
    paused_until: AtomicU64,
    /// A failure was logged as a warning and nothing succeeded since.
    warned: AtomicBool,
}

fn pack(generation: u32, copied: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(copied)
}

fn generation(packed: u64) -> u32 {
    (packed >> 32) as u32
}

fn copied(packed: u64) -> u32 {
    packed as u32
}

fn frames(n: c_int) -> u32 {
    u32::try_from(n).unwrap_or(0)
}

struct State {
    /// Per database: a checkpoint is wanted.
    due: Vec<bool>,
    stop: bool,
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
            logs: logs.iter().map(|_| LogState::default()).collect(),
            origin: Instant::now(),
        });
        let mut own = Vec::with_capacity(logs.len());
        for (index, log) in logs.into_iter().enumerate() {
            let hook = Arc::clone(&shared);
            let limits = log.limits;
            // The log's pages after the previous commit: it only grows
            // until it starts over.
            let mut last = 0;
            log.writer
                .wal_hook(Some(move |wal: &mut Wal, pages: c_int| {
                    hook.committed(index, limits, wal, frames(pages), &mut last);
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
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn paused(&self, log: &LogState) -> bool {
        self.now_ms() < log.paused_until.load(Ordering::Relaxed)
    }

    /// Notes a failed checkpoint: logged once (until one succeeds), and no
    /// other tried for [`AFTER_FAILURE`].
    fn failed(&self, log: &LogState, e: &rusqlite::Error) {
        let until = self
            .now_ms()
            .saturating_add(AFTER_FAILURE.as_millis() as u64);
        log.paused_until.store(until, Ordering::Relaxed);
        if log.warned.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "a checkpoint failed again");
        } else {
            tracing::warn!(error = %e, "a checkpoint failed; the log grows until one succeeds");
        }
    }

    fn succeeded(&self, log: &LogState, generation: u32, now: u32) {
        log.warned.store(false, Ordering::Relaxed);
        // Only for the log it ran on, and never backwards.
        let _ = log
            .copied
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (self::generation(cur) == generation && copied(cur) < now)
                    .then_some(pack(generation, now))
            });
    }

    /// The writer's log hook: `pages` are in the log of database `index`
    /// after a commit; `last` were after the previous one.
    fn committed(&self, index: usize, limits: Limits, wal: &mut Wal, pages: u32, last: &mut u32) {
        let log = &self.logs[index];
        let mut packed = log.copied.load(Ordering::Acquire);
        if pages < *last || pages < copied(packed) {
            // The log started over: what was copied of it counts no more.
            packed = pack(generation(packed).wrapping_add(1), 0);
            log.copied.store(packed, Ordering::Release);
        }
        *last = pages;
        if pages < limits.soft || self.paused(log) {
            return;
        }
        let pending = pages - copied(packed);
        let full = pages >= limits.hard;
        let rest = if pages >= limits.hard.saturating_mul(4) {
            u32::MAX
        } else if pages >= limits.hard.saturating_mul(2) {
            limits.soft
        } else {
            limits.soft / 4
        };
        if full && pending <= rest {
            match wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                Ok((_, now)) => self.succeeded(log, generation(packed), frames(now)),
                // The checkpoint thread is at it: the next commit tries again.
                Err(e) if is_locked(&e) => {}
                Err(e) => self.failed(log, &e),
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
        for (index, conn) in conns.iter().enumerate().filter(|(i, _)| due[*i]) {
            let log = &shared.logs[index];
            let on = generation(log.copied.load(Ordering::Acquire));
            match conn.wal_checkpoint_v2(Some("main"), CheckpointMode::PASSIVE) {
                Ok((_, now)) => shared.succeeded(log, on, frames(now)),
                // The writer is checkpointing itself (its log is full).
                Err(e) if is_locked(&e) => {}
                Err(e) => shared.failed(log, &e),
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
