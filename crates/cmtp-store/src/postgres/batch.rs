//! Group commit for the common delivery (a valid inline body): deliveries
//! that arrive while one is being stored wait in a queue, and the next
//! batch carries all of them in one transaction, one commit and one WAL
//! flush, as the SQLite writer does. A lone delivery's statement committed
//! on its own cost PostgreSQL a round trip, a commit and a backend wake-up
//! each; at 20 concurrent connections that was most of the database's CPU.
//!
//! A worker task is started when a delivery finds fewer than [`WORKERS`]
//! running, and stops when the queue is empty, so an idle store has no
//! task, and a store opened on one runtime may be used on another. A worker never waits for
//! a batch to fill: it takes what is queued (up to [`MAX_BATCH`] deliveries
//! and [`MAX_BATCH_BYTES`]), and a batch of one goes as before, through
//! [`ops::deliver`] and `attempt!`. The worker owns the deliveries it
//! takes, so a caller that stops waiting (its future dropped) changes
//! nothing for the others.
//!
//! A batch of several runs [`ops::DELIVER_INLINE`] once per delivery in one
//! transaction, the statements sent back to back (pipelined) and the
//! commit after every answer has come. The batch is sorted by account
//! (deliveries to one account keep their order): each statement locks its
//! account's `mailbox_state` row first, so two nodes' batches lock the rows
//! in the same order and do not deadlock, and uids still increase in commit
//! order. What the statement does not store (a duplicate, an unknown
//! recipient: no row) is run again on its own after the commit, through the
//! general path, which tells the two apart; a duplicate of a message
//! earlier in the same batch finds it then. Any error before the commit
//! (a deadlock, a lost connection, one delivery's invalid data) rolls the
//! whole batch back and runs its deliveries one by one as before, so that
//! one failing delivery fails alone and a busy database is retried as
//! before; only a database out of reach (no connection within the pool's
//! timeout) fails the whole batch at once, as each delivery would alone
//! after waiting as long again. One account's mailbox locked for long
//! (the account being deleted) holds up the other deliveries of the
//! batches waiting on it, not only its own: a lock timeout would not help
//! while the fallback runs the batch's deliveries one after the other. A delivery is answered `Ok` only once the commit that carried
//! it has succeeded; if the commit itself fails, the outcome is unknown
//! (unless PostgreSQL says it rolled back) and its deliveries get the error
//! as a lone statement's would.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use deadpool_postgres::Pool;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};
use tokio_postgres::types::ToSql;

use super::ops::{self, InlineValues};
use super::{BUSY_RETRIES, DbResult, Kind, map_pool_err, retryable};
use crate::error::StoreError;
use crate::types::{Delivered, NewDelivery};

/// The most deliveries one transaction carries.
const MAX_BATCH: usize = 64;

/// A batch takes no further delivery once its bodies reach this many bytes
/// (an inline body is at most one 256 KiB chunk, so a batch stays under
/// 1.25 MiB of parameters).
const MAX_BATCH_BYTES: usize = 1 << 20;

/// The most deliveries waiting in the queue; a further one waits for room
/// (back-pressure) before it is queued.
const MAX_QUEUED: usize = 256;

/// Workers of one store at once. One kept the batches large but ran every
/// delivery of the node in one PostgreSQL backend (one core): on the
/// `mail` benchmark (20 connections, 2 cores) it was slower than no
/// batching, four were 18-21% faster (two noisy runs each).
const WORKERS: usize = 4;

/// One queued delivery and where its answer goes.
struct Job {
    delivery: NewDelivery,
    /// The inline body (a second handle on the delivery's).
    bytes: Bytes,
    chunks: i64,
    folder: String,
    flags: u32,
    reply: oneshot::Sender<Result<Delivered, StoreError>>,
    /// The job's place in the queue, given back when it is answered.
    _room: OwnedSemaphorePermit,
}

impl Job {
    fn answer(self, result: Result<Delivered, StoreError>) {
        // The caller may have stopped waiting: nothing to tell then.
        let _ = self.reply.send(result);
    }
}

struct State {
    queue: VecDeque<Job>,
    workers: usize,
}

/// The delivery queue of one store (shared by its clones).
pub(super) struct Batcher {
    pool: Pool,
    state: Mutex<State>,
    room: Arc<Semaphore>,
}

impl Batcher {
    pub(super) fn new(pool: Pool) -> Batcher {
        Batcher {
            pool,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                workers: 0,
            }),
            room: Arc::new(Semaphore::new(MAX_QUEUED)),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // The lock is never held across anything that can panic.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        self.pool.get().await.map_err(map_pool_err)
    }

    /// Delivers `delivery`, whose body is inline, `bytes` long and checked
    /// (`chunks` is [`ops::check_inline`]'s answer), in the next batch.
    pub(super) async fn deliver(
        self: &Arc<Self>,
        delivery: NewDelivery,
        bytes: Bytes,
        chunks: i64,
        folder: &str,
        flags: u32,
    ) -> Result<Delivered, StoreError> {
        let room = Arc::clone(&self.room)
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Internal("the delivery queue is closed".into()))?;
        let (reply, answer) = oneshot::channel();
        let job = Job {
            delivery,
            bytes,
            chunks,
            folder: folder.to_owned(),
            flags,
            reply,
            _room: room,
        };
        let worker = {
            let mut state = self.state();
            state.queue.push_back(job);
            (state.workers < WORKERS).then(|| {
                state.workers += 1;
                // Counted from here: a task dropped before it ran (a
                // runtime shutting down) counts itself out too.
                Running(Some(Arc::clone(self)))
            })
        };
        if let Some(running) = worker {
            tokio::spawn(Arc::clone(self).work(running));
        }
        // Whether the delivery was stored is unknown then: a transient
        // error, so that the sender tries again (the hash de-duplicates).
        answer.await.unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the delivery worker stopped before answering".into(),
            ))
        })
    }

    /// Runs batches until the queue is empty.
    async fn work(self: Arc<Self>, mut running: Running) {
        loop {
            let batch = {
                let mut state = self.state();
                if state.queue.is_empty() {
                    // Under the lock that queued jobs take: a job queued
                    // after this starts a worker of its own.
                    state.workers -= 1;
                    running.0 = None;
                    return;
                }
                let mut batch = Vec::new();
                let mut bytes = 0;
                while batch.len() < MAX_BATCH && bytes < MAX_BATCH_BYTES {
                    let Some(job) = state.queue.pop_front() else {
                        break;
                    };
                    bytes += job.bytes.len();
                    batch.push(job);
                }
                batch
            };
            self.run(batch).await;
        }
    }

    async fn run(&self, mut batch: Vec<Job>) {
        if batch.len() == 1 {
            let job = batch.remove(0);
            let result = self.alone(&job.delivery, &job.folder, job.flags).await;
            job.answer(result);
            return;
        }
        let alone = match self.together(&batch).await {
            Ok(uids) => answer_stored(batch, uids, |id| {
                Ok(Delivered {
                    id,
                    duplicate: false,
                })
            }),
            Err(Failed::Commit(e, uids)) => answer_stored(batch, uids, |_| Err(e.clone())),
            // The database is out of reach (no connection within the
            // pool's timeout): each delivery alone would wait that long
            // again, one after the other, and get the same answer.
            Err(Failed::Unreachable(e)) => {
                for job in batch {
                    job.answer(Err(e.clone()));
                }
                return;
            }
            Err(Failed::Before(e)) => {
                tracing::debug!(error = %e, "a delivery batch failed; delivering one by one");
                batch
            }
        };
        for job in alone {
            let result = self.alone(&job.delivery, &job.folder, job.flags).await;
            job.answer(result);
        }
    }

    /// One delivery as without batches: its own statement or transaction,
    /// run again after a busy error (also the way of a delivery that is
    /// not for a batch).
    pub(super) async fn alone(
        &self,
        delivery: &NewDelivery,
        folder: &str,
        flags: u32,
    ) -> Result<Delivered, StoreError> {
        attempt!(self, Write, |c| ops::deliver(
            &mut c, delivery, folder, flags
        )
        .await)
    }

    /// Runs the batch's statements in one transaction and commits it; the
    /// new uid of each job (in the batch's order), `None` where nothing was
    /// stored.
    async fn together(&self, batch: &[Job]) -> Result<Vec<Option<u64>>, Failed> {
        let mut c = self.client().await.map_err(Failed::Unreachable)?;
        let stmt = c
            .prepare_cached(ops::DELIVER_INLINE)
            .await
            .db()
            .map_err(Failed::Before)?;
        let mut order: Vec<usize> = (0..batch.len()).collect();
        // Stable: one account's deliveries keep their arrival order.
        order.sort_by(|&a, &b| batch[a].delivery.account.cmp(&batch[b].delivery.account));
        let values: Vec<InlineValues<'_>> = order
            .iter()
            .map(|&i| {
                let job = &batch[i];
                InlineValues::new(
                    &job.delivery,
                    &job.bytes,
                    job.chunks,
                    &job.folder,
                    job.flags,
                )
            })
            .collect();
        let params: Vec<[&(dyn ToSql + Sync); 11]> = values.iter().map(|v| v.params()).collect();
        let tx = c.transaction().await.db().map_err(Failed::Before)?;
        let rows = join_all(params.iter().map(|p| tx.query_opt(&stmt, &p[..]))).await;
        let mut uids = vec![None; batch.len()];
        for (&i, row) in order.iter().zip(rows) {
            // Dropping `tx` rolls the batch back.
            if let Some(row) = row.db().map_err(Failed::Before)? {
                uids[i] = Some(ops::get_u64(&row, 0).map_err(Failed::Before)?);
            }
        }
        match tx.commit().await.db() {
            Ok(()) => Ok(uids),
            // PostgreSQL rolled it back: as if it had failed before.
            Err(e @ StoreError::Busy(_)) => Err(Failed::Before(e)),
            Err(e) => Err(Failed::Commit(e, uids)),
        }
    }
}

/// Answers the jobs that stored their message (`uids[i]` is `Some`) with
/// `answer(uid)`; returns the others, to be delivered alone.
fn answer_stored(
    batch: Vec<Job>,
    uids: Vec<Option<u64>>,
    answer: impl Fn(u64) -> Result<Delivered, StoreError>,
) -> Vec<Job> {
    let mut alone = Vec::new();
    for (job, uid) in batch.into_iter().zip(uids) {
        match uid {
            Some(uid) => job.answer(answer(uid)),
            None => alone.push(job),
        }
    }
    alone
}

enum Failed {
    /// No connection to the database in time; nothing was run.
    Unreachable(StoreError),
    /// Nothing was committed.
    Before(StoreError),
    /// The commit failed, committed or not; the uids the batch had stored.
    Commit(StoreError, Vec<Option<u64>>),
}

/// Keeps the worker count right if a worker panics or its task is dropped
/// (a worker that returns has already counted itself out). The last one
/// gone answers what is still queued, which nobody would take otherwise.
struct Running(Option<Arc<Batcher>>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(batcher) = self.0.take() {
            let orphans: Vec<Job> = {
                let mut state = batcher.state();
                state.workers -= 1;
                if state.workers == 0 {
                    state.queue.drain(..).collect()
                } else {
                    Vec::new()
                }
            };
            for job in orphans {
                job.answer(Err(StoreError::Unavailable(
                    "the delivery worker stopped".into(),
                )));
            }
        }
    }
}

/// Polls all `futures` until each is done, in order at every wake-up:
/// tokio-postgres sends a query when its future is first polled, so the
/// statements leave back to back, in this order, and PostgreSQL runs them
/// without waiting for the client between them.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
