//! The single writer thread and its group commit.
//!
//! Every change goes through one connection owned by one thread. The thread
//! blocks for a first request, then takes every request already waiting (up
//! to a count and a byte budget) and runs them in one transaction, each in
//! its own SAVEPOINT so that a request that fails (a constraint, an invalid
//! invite) is rolled back alone. Then it COMMITs (one fsync for the whole
//! batch, `synchronous=FULL`) and only then answers the requests. A failing
//! COMMIT (disk full) answers every request of the batch with that
//! (transient) error; the thread rolls back and goes on with the next batch.
//! Should SQLite roll the whole transaction back on its own in the middle of
//! a batch (it may on a full disk or an I/O error), the requests that already
//! ran get the error and the ones that had not run yet go into the next
//! batch. No request is ever answered `Ok` unless the COMMIT that carried it
//! succeeded.

use std::cell::Cell;
use std::collections::VecDeque;
use std::ops::Deref;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::thread::JoinHandle;

use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::checkpoint::Checkpointer;
use super::map_err;
use crate::error::StoreError;

/// The writer's two connections: the database (a `Db` derefs to it) and
/// the bodies database (`bodies`), where staged blobs keep their chunks.
///
/// A batch's transaction on the bodies database begins when a request
/// first asks for it, and commits *before* the database's: whatever the
/// database refers to in the bodies database is durable first. A COMMIT
/// of the database that fails after the bodies' succeeded leaves chunks
/// nothing counts (a later chunk of the same blob replaces them, a swept
/// blob takes them along). A request writes the bodies database as its
/// last step, so a request that fails has written nothing there.
pub(crate) struct Db {
    main: Connection,
    bodies: Connection,
    bodies_open: Cell<bool>,
}

impl Deref for Db {
    type Target = Connection;

    fn deref(&self) -> &Connection {
        &self.main
    }
}

impl Db {
    /// The writer's connections, `main` with its schema in place. A TEMP
    /// trigger on `main` notes every blob deleted, in the transaction (a
    /// request rolled back takes its notes along); [`Db::sweep_gone`]
    /// removes their chunks from the bodies database once the deletion is
    /// committed.
    pub(crate) fn new(main: Connection, bodies: Connection) -> Result<Db, StoreError> {
        main.execute_batch(
            "CREATE TEMP TABLE IF NOT EXISTS gone_blobs (id INTEGER PRIMARY KEY);
             CREATE TEMP TRIGGER IF NOT EXISTS blob_gone AFTER DELETE ON main.blobs
             BEGIN INSERT OR IGNORE INTO gone_blobs (id) VALUES (OLD.id); END;",
        )
        .map_err(map_err)?;
        Ok(Db {
            main,
            bodies,
            bodies_open: Cell::new(false),
        })
    }

    /// Removes from the bodies database the chunks of the blobs whose
    /// deletion was just committed (outside any transaction: what the
    /// database says now is committed); returns how many had chunks there.
    pub(crate) fn sweep_gone(&self) -> Result<u64, StoreError> {
        let ids: Vec<i64> = {
            let mut stmt = self
                .main
                .prepare_cached(
                    "SELECT g.id FROM temp.gone_blobs g
                     WHERE NOT EXISTS (SELECT 1 FROM main.blobs b WHERE b.id = g.id)",
                )
                .map_err(map_err)?;
            let rows = stmt.query_map([], |r| r.get(0)).map_err(map_err)?;
            rows.collect::<rusqlite::Result<_>>().map_err(map_err)?
        };
        if ids.is_empty() {
            return Ok(0);
        }
        let swept = super::ops::sweep_bodies(self, &ids).and_then(|n| {
            self.commit_bodies()?;
            Ok(n)
        });
        if swept.is_err() && self.bodies_open.replace(false) {
            rollback(&self.bodies);
        }
        let swept = swept?;
        exec_cached(&self.main, "DELETE FROM temp.gone_blobs").map_err(map_err)?;
        Ok(swept)
    }

    /// Notes `blobs` for [`Db::sweep_gone`] (candidates read from an older
    /// snapshot: the sweep checks each against the committed database).
    pub(crate) fn note_gone(&self, blobs: &[i64]) -> Result<(), StoreError> {
        let mut stmt = self
            .main
            .prepare_cached("INSERT OR IGNORE INTO temp.gone_blobs (id) VALUES (?1)")
            .map_err(map_err)?;
        for id in blobs {
            stmt.execute([id]).map_err(map_err)?;
        }
        Ok(())
    }

    /// The bodies database, inside the current transaction on it (begun
    /// here if there is none).
    pub(crate) fn bodies(&self) -> Result<&Connection, StoreError> {
        if !self.bodies_open.get() {
            exec_cached(&self.bodies, "BEGIN IMMEDIATE").map_err(map_err)?;
            self.bodies_open.set(true);
        }
        Ok(&self.bodies)
    }

    /// Commits the transaction on the bodies database, if one is open.
    /// Outside the writer thread's batches (opening the store), call it
    /// before the database's own changes are committed.
    pub(crate) fn commit_bodies(&self) -> Result<(), StoreError> {
        if self.bodies_open.replace(false)
            && let Err(e) = exec_cached(&self.bodies, "COMMIT")
        {
            rollback(&self.bodies);
            return Err(map_err(e));
        }
        Ok(())
    }

    /// Whether SQLite rolled back the bodies transaction on its own (on a
    /// full disk or an I/O error): what the batch wrote there is gone.
    fn bodies_lost(&self) -> bool {
        self.bodies_open.get() && self.bodies.is_autocommit()
    }

    /// Rolls back both transactions.
    fn rollback(&self) {
        rollback(&self.main);
        if self.bodies_open.replace(false) {
            rollback(&self.bodies);
        }
    }
}

/// A write request waiting for the writer thread.
trait Job: Send {
    /// Runs the request on the open transaction, keeps its result, and says
    /// whether it failed (and how).
    fn run(&mut self, conn: &Db) -> Result<(), StoreError>;
    /// Answers the caller once the batch's fate (`commit`) is known.
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
    /// How many payload bytes the request carries (for the batch budget).
    fn weight(&self) -> usize;
}

struct TypedJob<T, F> {
    op: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
    weight: usize,
}

impl<T, F> Job for TypedJob<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
{
    fn run(&mut self, conn: &Db) -> Result<(), StoreError> {
        let Some(op) = self.op.take() else {
            return Err(StoreError::Internal("write request ran twice".into()));
        };
        let outcome = match catch_unwind(AssertUnwindSafe(|| op(conn))) {
            Ok(r) => r,
            Err(_) => Err(StoreError::Internal("write request panicked".into())),
        };
        let status = match &outcome {
            Ok(_) => Ok(()),
            Err(e) => Err(e.clone()),
        };
        self.result = Some(outcome);
        status
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        let answer = match (commit, self.result) {
            // A request that failed on its own changed nothing: its own
            // error is the accurate answer whatever became of the batch.
            (_, Some(Err(e))) => Err(e),
            (Ok(()), Some(Ok(v))) => Ok(v),
            (Err(e), _) => Err(e),
            (Ok(()), None) => Err(StoreError::Internal("write request never ran".into())),
        };
        // The caller may have gone away (its future dropped): nothing to do.
        let _ = self.reply.send(answer);
    }

    fn weight(&self) -> usize {
        self.weight
    }
}

/// Batch limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BatchLimits {
    pub(crate) max_requests: usize,
    pub(crate) max_bytes: usize,
}

/// The async side's handle on the writer thread. Dropping it lets the thread
/// finish the requests already queued, close the connection and exit, and
/// waits for that.
pub(crate) struct Writer {
    sender: Option<mpsc::Sender<Box<dyn Job>>>,
    thread: Option<JoinHandle<()>>,
    /// Payload admitted but not yet answered, in KiB: bounds the memory the
    /// queue may hold whatever the number of callers.
    queued_kib: Semaphore,
    max_queued_kib: u32,
}

impl std::fmt::Debug for Writer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl Writer {
    /// Starts the writer thread on `conn`; it stops `checkpointer` before
    /// its final checkpoints.
    pub(crate) fn start(
        conn: Db,
        checkpointer: Checkpointer,
        limits: BatchLimits,
    ) -> Result<Writer, StoreError> {
        let (sender, receiver) = mpsc::channel(limits.max_requests.max(1) * 4);
        let thread = std::thread::Builder::new()
            .name("cmtp-store-writer".into())
            .spawn(move || writer_loop(conn, checkpointer, receiver, limits))
            .map_err(|e| StoreError::Unavailable(format!("cannot start the writer thread: {e}")))?;
        let max_queued_kib = u32::try_from((limits.max_bytes.saturating_mul(4) >> 10).max(2048))
            .unwrap_or(u32::MAX >> 4);
        Ok(Writer {
            sender: Some(sender),
            thread: Some(thread),
            queued_kib: Semaphore::new(max_queued_kib as usize),
            max_queued_kib,
        })
    }

    /// Runs `op` in the next batch and returns its result once the batch is
    /// committed. `weight` is the payload size for the batch budget.
    pub(crate) async fn write<T, F>(&self, weight: usize, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Db) -> Result<T, StoreError> + Send + 'static,
    {
        let stopped = || StoreError::Unavailable("the database writer has stopped".into());
        let sender = self.sender.as_ref().ok_or_else(stopped)?;
        // Wait (asynchronously) while too many bytes are queued; released
        // once the request is answered.
        let kib = u32::try_from(weight.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .min(self.max_queued_kib);
        let _admitted = self
            .queued_kib
            .acquire_many(kib)
            .await
            .map_err(|_| stopped())?;
        let (reply, answer) = oneshot::channel();
        let job = TypedJob {
            op: Some(op),
            result: None,
            reply,
            weight,
        };
        sender.send(Box::new(job)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread's loop once it is drained.
        self.sender = None;
        if let Some(handle) = self.thread.take()
            && handle.join().is_err()
        {
            tracing::error!("the database writer thread panicked");
        }
    }
}

fn writer_loop(
    conn: Db,
    checkpointer: Checkpointer,
    mut receiver: mpsc::Receiver<Box<dyn Job>>,
    limits: BatchLimits,
) {
    // Room for the transaction control and every operation's statements.
    conn.set_prepared_statement_cache_capacity(64);
    let mut carried: VecDeque<Box<dyn Job>> = VecDeque::new();
    loop {
        let first = match carried.pop_front() {
            Some(job) => job,
            None => match receiver.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        let mut bytes = first.weight();
        let mut batch = vec![first];
        while batch.len() < limits.max_requests && bytes < limits.max_bytes {
            let next = match carried.pop_front() {
                Some(job) => job,
                None => match receiver.try_recv() {
                    Ok(job) => job,
                    Err(_) => break,
                },
            };
            bytes += next.weight();
            batch.push(next);
        }
        run_batch(&conn, batch, &mut carried);
    }
    // Nothing is committed any more: the checkpoint thread is done.
    drop(checkpointer);
    // The write-ahead logs stay when the store closes (they let the store
    // open on a full disk), but what they hold goes into the two database
    // files now: the files alone are then a complete copy of a stopped
    // store.
    for c in [conn.main, conn.bodies] {
        match c.query_row("PRAGMA wal_checkpoint(FULL)", [], |r| r.get::<_, i64>(0)) {
            Ok(0) => {}
            Ok(_) => tracing::warn!("the final checkpoint could not complete (a reader held it)"),
            Err(e) => tracing::warn!(error = %e, "the final checkpoint failed"),
        }
        // Close explicitly so that a failure is at least logged.
        if let Err((_, e)) = c.close() {
            tracing::warn!(error = %e, "closing a database writer connection failed");
        }
    }
}

/// Rolls back whatever transaction is still open; the connection is then
/// ready for the next batch.
fn rollback(conn: &Connection) {
    if !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "ROLLBACK failed");
    }
}

fn run_batch(conn: &Db, batch: Vec<Box<dyn Job>>, carried: &mut VecDeque<Box<dyn Job>>) {
    if let Err(e) = exec_cached(conn, "BEGIN IMMEDIATE") {
        let err = map_err(e);
        tracing::warn!(error = %err, requests = batch.len(), "cannot begin a write transaction");
        conn.rollback();
        for job in batch {
            job.finish(Err(err.clone()));
        }
        return;
    }
    let mut ran: Vec<Box<dyn Job>> = Vec::with_capacity(batch.len());
    let mut pending = batch.into_iter();
    while let Some(mut job) = pending.next() {
        match run_one(conn, &mut *job) {
            Step::Done => ran.push(job),
            Step::Abort(err) => {
                tracing::warn!(error = %err, rolled_back = ran.len() + 1, "write batch aborted");
                conn.rollback();
                job.finish(Err(err.clone()));
                for job in ran {
                    job.finish(Err(err.clone()));
                }
                carried.extend(pending);
                return;
            }
        }
    }
    // The bodies first: the database may refer to them once it commits.
    if let Err(err) = conn.commit_bodies() {
        tracing::warn!(error = %err, requests = ran.len(), "COMMIT of the bodies failed; batch rolled back");
        conn.rollback();
        for job in ran {
            job.finish(Err(err.clone()));
        }
        return;
    }
    match exec_cached(conn, "COMMIT") {
        Ok(()) => {
            tracing::trace!(requests = ran.len(), "write batch committed");
            // Before the answers: an aborted upload's bytes are gone when
            // the abort returns. Should this fail, the chunks stay until
            // the next sweep; the batch is committed all the same.
            if let Err(e) = conn.sweep_gone() {
                tracing::warn!(error = %e, "cannot remove the chunks of deleted blobs now; maintenance will");
            }
            for job in ran {
                job.finish(Ok(()));
            }
        }
        Err(e) => {
            let err = map_err(e);
            tracing::warn!(error = %err, requests = ran.len(), "COMMIT failed; batch rolled back");
            conn.rollback();
            for job in ran {
                job.finish(Err(err.clone()));
            }
        }
    }
}

/// Runs one statement without results from the connection's cache of
/// prepared statements: the transaction control of every batch and request
/// is parsed once, not each time.
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

enum Step {
    /// The request ran (it succeeded, or failed and was rolled back alone).
    Done,
    /// The whole transaction must be rolled back.
    Abort(StoreError),
}

fn run_one(conn: &Db, job: &mut dyn Job) -> Step {
    if let Err(e) = exec_cached(conn, "SAVEPOINT request") {
        return Step::Abort(map_err(e));
    }
    let outcome = job.run(conn);
    if conn.bodies_lost() {
        let e = outcome.err().filter(StoreError::is_transient);
        return Step::Abort(e.unwrap_or_else(|| {
            StoreError::Io("the bodies database rolled its transaction back".into())
        }));
    }
    match outcome {
        Ok(()) => match exec_cached(conn, "RELEASE request") {
            Ok(()) => Step::Done,
            Err(e) => Step::Abort(map_err(e)),
        },
        Err(e) => {
            // SQLite may have rolled the whole transaction back itself (it
            // may do so on disk-full and I/O errors): then the requests that
            // ran before are lost too.
            if conn.is_autocommit() {
                let err = if e.is_transient() {
                    e
                } else {
                    StoreError::Io(format!("transaction rolled back by the database: {e}"))
                };
                return Step::Abort(err);
            }
            // Otherwise only this request is undone (even for a transient
            // error such as a full database: smaller requests of the batch
            // may still fit). Should the database be unable to go on, the
            // COMMIT fails and every request of the batch gets that error.
            match conn.execute_batch("ROLLBACK TO request; RELEASE request") {
                Ok(()) => Step::Done,
                Err(e) => Step::Abort(map_err(e)),
            }
        }
    }
}
