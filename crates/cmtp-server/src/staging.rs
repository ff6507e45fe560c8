//! Where a message's bytes go while it is being received (PROTOCOL.md §7.4,
//! §15): a sink that hands full chunks to the store as a staged blob, within
//! the message's staging reservation (`crate::budget`), and removes the
//! staged bytes at once when the message is refused or abandoned.
//!
//! Contract for the MAIL path:
//! - reserve first: [`crate::state::Shared::admit_mail`] with the size
//!   announced so far, before a byte is stored, and
//!   [`BlobSink::reserve`] when an attachment's length is announced;
//! - [`BlobSink::push`] stores nothing beyond what the reservation can be
//!   grown to (an over-budget push fails with the transient
//!   [`StoreError::Full`], answered TEMPFAILURE);
//! - [`BlobSink::finish`] hands the body over for `deliver`/`enqueue`;
//! - dropping the sink before `finish` (refusal, a closed connection, a
//!   timeout) removes the staged blob at once with [`Store::stage_abort`],
//!   then releases the reservation.

use bytes::{Bytes, BytesMut};
use cmtp_store::{AnyStore, MessageBody, StagedBlob, Store, StoreError};

use std::sync::Arc;

use crate::budget::{BudgetRefusal, Charge, Reservation};
use crate::fair::{FairPool, Turn};
use crate::limiter::PeerKey;
use crate::state::Shared;
use crate::state::now;

/// Size of the chunks a message is stored in; a message that fits in one is
/// stored inline in a single row.
pub(crate) const STORE_CHUNK: usize = 256 * 1024;

/// Accumulates the stored form of a message and hands full chunks to the
/// store, so memory stays bounded whatever the message size.
pub(crate) struct BlobSink {
    store: AnyStore,
    /// For a stranger's message: the pool its writes take turns in, and
    /// the peer.
    gate: Option<(Arc<FairPool>, PeerKey)>,
    buf: BytesMut,
    staged: Option<StagedBlob>,
    size: u64,
    /// `None` only once finished.
    reservation: Option<Reservation>,
}

impl BlobSink {
    /// A sink storing into `sh`'s store within `reservation`. A stranger's
    /// message (charged to a peer) writes through `sh.stranger_writes`.
    pub(crate) fn new(sh: &Shared, reservation: Reservation) -> Self {
        let gate = match reservation.charge() {
            Charge::Stranger { peer, .. } => Some((sh.stranger_writes.clone(), *peer)),
            Charge::Submission => None,
        };
        BlobSink {
            store: sh.store.clone(),
            gate,
            buf: BytesMut::new(),
            staged: None,
            size: 0,
            reservation: Some(reservation),
        }
    }

    /// Grows the reservation to `total` bytes (the message's size as
    /// announced so far), or says why not. Nothing is stored.
    pub(crate) fn reserve(&mut self, total: u64) -> Result<(), BudgetRefusal> {
        match &mut self.reservation {
            Some(r) => r.grow_to(total),
            None => Ok(()),
        }
    }

    pub(crate) async fn push(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        let size = self.size + bytes.len() as u64;
        self.reserve(size)
            .map_err(|refusal| StoreError::Full(refusal.to_string()))?;
        self.size = size;
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= STORE_CHUNK {
            let chunk = self.buf.split_to(STORE_CHUNK).freeze();
            self.stage(chunk).await?;
        }
        Ok(())
    }

    async fn stage(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        // A stranger's chunk waits for its turn, so that logged-in users'
        // commits never queue behind a flood of staged writes.
        let _turn = match &self.gate {
            Some((pool, peer)) => Some(pool.acquire(*peer, Turn::Normal).await),
            None => None,
        };
        if self.staged.is_none() {
            self.staged = Some(self.store.stage_begin(now()).await?);
        }
        let staged = self.staged.as_ref().expect("just set");
        let t = std::time::Instant::now();
        let r = self.store.stage_append(staged, chunk).await;
        metrics::histogram!("cmtp_store_seconds", "op" => "stage_append")
            .record(t.elapsed().as_secs_f64());
        r
    }

    /// The stored form, ready for `deliver` or `enqueue`, and its size. The
    /// reservation is released; the bytes count as stored for the disk
    /// monitor until its next sample.
    pub(crate) async fn finish(mut self) -> Result<(MessageBody, u64), StoreError> {
        let size = self.size;
        let body = match self.staged.is_some() {
            false => MessageBody::Inline(std::mem::take(&mut self.buf).freeze()),
            true => {
                if !self.buf.is_empty() {
                    let rest = std::mem::take(&mut self.buf).freeze();
                    self.stage(rest).await?;
                }
                MessageBody::Staged(self.staged.take().expect("staged"))
            }
        };
        if let Some(r) = self.reservation.take() {
            r.disk().note_stored(size);
        }
        Ok((body, size))
    }
}

impl Drop for BlobSink {
    fn drop(&mut self) {
        let Some(staged) = self.staged.take() else {
            return;
        };
        // Refused or abandoned: its bytes go now, not at the next
        // maintenance; the reservation is released once they are gone.
        let store = self.store.clone();
        let reservation = self.reservation.take();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    match store.stage_abort(&staged).await {
                        Ok(_) => metrics::counter!("cmtp_staged_aborted_total").increment(1),
                        Err(e) => tracing::warn!(
                            blob = staged.id(),
                            error = %e,
                            "cannot remove a refused upload now; maintenance will"
                        ),
                    }
                    drop(reservation);
                });
            }
            Err(_) => tracing::warn!(
                blob = staged.id(),
                "no runtime to remove a refused upload; maintenance will"
            ),
        }
    }
}
