//! Bounded pools with a fair share per peer for the work that sessions not
//! logged in ask of the server (PROTOCOL.md §15, README "Running on the open
//! internet").
//!
//! A stranger's LOGIN costs a database read and an OPAQUE step; a
//! stranger's message costs writes to the store while its bytes arrive.
//! Left to themselves, a few thousand such requests from an attacker would
//! queue in front of everyone else's: the owner of an account under LOGIN
//! spam would wait behind the spam, and a logged-in user's durable commit
//! behind megabytes of uploads that will be abandoned. So this work goes
//! through a [`FairPool`]:
//!
//! - at most `capacity` requests run at once, whatever the number of
//!   strangers; the rest wait (without holding anything but their place);
//! - one peer (a source prefix, [`PeerKey`]) runs at most `per_peer` of
//!   them at once, and waiting peers take turns, so a peer's share does not
//!   grow with the number of requests it sends;
//! - a peer asking as [`Turn::Last`] (one whose logins have been failing)
//!   is served only when no other peer waits.
//!
//! Logged-in sessions never go through these pools.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::limiter::PeerKey;

/// Where a request queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// With every other peer, in turns.
    Normal,
    /// After every peer asking as [`Turn::Normal`] (a peer whose logins
    /// have been failing).
    Last,
}

impl Turn {
    fn index(self) -> usize {
        match self {
            Turn::Normal => 0,
            Turn::Last => 1,
        }
    }
}

/// A pool's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FairLimits {
    /// Requests running at once (at least 1).
    pub capacity: usize,
    /// Requests of one peer running at once (at least 1).
    pub per_peer: usize,
}

struct Waiter {
    id: u64,
    turn: Turn,
    grant: oneshot::Sender<()>,
}

#[derive(Default)]
struct Peer {
    running: usize,
    waiting: VecDeque<Waiter>,
    /// In one of the turn queues.
    queued: bool,
}

struct State {
    limits: FairLimits,
    running: usize,
    peers: HashMap<PeerKey, Peer>,
    /// Peers with a request waiting and room in their share, by turn.
    turns: [VecDeque<PeerKey>; 2],
    next_id: u64,
}

impl State {
    /// Puts `key` in its turn queue if it has a request waiting and room
    /// in its share; forgets it if it has nothing left.
    fn requeue(&mut self, key: PeerKey) {
        let per_peer = self.limits.per_peer;
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.running == 0 && p.waiting.is_empty() {
            if p.queued {
                for t in &mut self.turns {
                    t.retain(|k| *k != key);
                }
            }
            self.peers.remove(&key);
            return;
        }
        if !p.queued
            && p.running < per_peer
            && let Some(w) = p.waiting.front()
        {
            p.queued = true;
            self.turns[w.turn.index()].push_back(key);
        }
    }

    /// Grants waiting requests while there is room: a turn per peer,
    /// [`Turn::Normal`] peers first.
    fn dispatch(&mut self) {
        while self.running < self.limits.capacity {
            let Some(key) = self.turns[0]
                .pop_front()
                .or_else(|| self.turns[1].pop_front())
            else {
                return;
            };
            let per_peer = self.limits.per_peer;
            let Some(p) = self.peers.get_mut(&key) else {
                continue;
            };
            p.queued = false;
            if p.running < per_peer {
                while let Some(w) = p.waiting.pop_front() {
                    // A waiter that went away removes itself under the
                    // lock, so the grant is received.
                    if w.grant.send(()).is_ok() {
                        p.running += 1;
                        self.running += 1;
                        break;
                    }
                }
            }
            self.requeue(key);
        }
    }

    fn release(&mut self, key: PeerKey) {
        self.running = self.running.saturating_sub(1);
        if let Some(p) = self.peers.get_mut(&key) {
            p.running = p.running.saturating_sub(1);
        }
        self.requeue(key);
        self.dispatch();
    }
}

/// A bounded pool with a fair share per peer (see the module's text).
pub struct FairPool {
    state: Mutex<State>,
}

impl std::fmt::Debug for FairPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.lock();
        f.debug_struct("FairPool")
            .field("limits", &st.limits)
            .field("running", &st.running)
            .finish_non_exhaustive()
    }
}

fn sane(limits: FairLimits) -> FairLimits {
    FairLimits {
        capacity: limits.capacity.max(1),
        per_peer: limits.per_peer.max(1),
    }
}

impl FairPool {
    /// An empty pool.
    pub fn new(limits: FairLimits) -> Arc<FairPool> {
        Arc::new(FairPool {
            state: Mutex::new(State {
                limits: sane(limits),
                running: 0,
                peers: HashMap::new(),
                turns: [VecDeque::new(), VecDeque::new()],
                next_id: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// New limits (a reload); requests running keep their place.
    pub fn set_limits(&self, limits: FairLimits) {
        let mut st = self.lock();
        st.limits = sane(limits);
        let keys: Vec<PeerKey> = st.peers.keys().copied().collect();
        for k in keys {
            st.requeue(k);
        }
        st.dispatch();
    }

    /// Requests running now.
    pub fn running(&self) -> usize {
        self.lock().running
    }

    /// Requests waiting now.
    pub fn waiting(&self) -> usize {
        self.lock().peers.values().map(|p| p.waiting.len()).sum()
    }

    /// Waits for a place for `peer`'s request; the place is held until the
    /// permit is dropped. Cancel-safe: a request given up while waiting
    /// leaves the queue.
    pub async fn acquire(self: &Arc<Self>, peer: PeerKey, turn: Turn) -> FairPermit {
        let (id, rx) = {
            let mut st = self.lock();
            let per_peer = st.limits.per_peer;
            let free = st.running < st.limits.capacity;
            let p = st.peers.entry(peer).or_default();
            if free && p.running < per_peer && p.waiting.is_empty() {
                p.running += 1;
                st.running += 1;
                return FairPermit {
                    pool: Arc::clone(self),
                    peer,
                };
            }
            let (tx, rx) = oneshot::channel();
            let id = st.next_id;
            st.next_id += 1;
            let p = st.peers.entry(peer).or_default();
            p.waiting.push_back(Waiter {
                id,
                turn,
                grant: tx,
            });
            st.requeue(peer);
            st.dispatch();
            (id, rx)
        };
        let mut waiting = Waiting {
            pool: self,
            peer,
            id,
            rx: Some(rx),
        };
        let rx = waiting.rx.as_mut().expect("set above");
        // The sender lives in the queue until it grants: it is never
        // dropped unsent while this waits.
        let _ = rx.await;
        waiting.rx = None;
        FairPermit {
            pool: Arc::clone(self),
            peer,
        }
    }
}

/// A request waiting in [`FairPool::acquire`]; leaves the queue (or gives
/// back a place granted meanwhile) if dropped.
struct Waiting<'a> {
    pool: &'a Arc<FairPool>,
    peer: PeerKey,
    id: u64,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else {
            return;
        };
        let mut st = self.pool.lock();
        if rx.try_recv().is_ok() {
            st.release(self.peer);
            return;
        }
        if let Some(p) = st.peers.get_mut(&self.peer) {
            p.waiting.retain(|w| w.id != self.id);
        }
        st.requeue(self.peer);
    }
}

/// A place in a [`FairPool`], given back on drop.
pub struct FairPermit {
    pool: Arc<FairPool>,
    peer: PeerKey,
}

impl std::fmt::Debug for FairPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FairPermit")
            .field("peer", &self.peer)
            .finish()
    }
}

impl Drop for FairPermit {
    fn drop(&mut self) {
        self.pool.lock().release(self.peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::PeerPrefixes;
    use std::time::Duration;

    fn peer(i: u8) -> PeerKey {
        PeerPrefixes::default().key(std::net::IpAddr::from([192, 0, 2, i]))
    }

    fn pool(capacity: usize, per_peer: usize) -> Arc<FairPool> {
        FairPool::new(FairLimits { capacity, per_peer })
    }

    /// Whether `f` completes without waiting.
    fn now<F: std::future::Future>(f: F) -> Option<F::Output> {
        let mut f = std::pin::pin!(f);
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        }
    }

    #[tokio::test]
    async fn bounded_and_one_peer_gets_its_share_only() {
        let p = pool(2, 1);
        let a1 = now(p.acquire(peer(1), Turn::Normal)).expect("free");
        // Peer 1 holds its share: its next request waits although a place
        // is free; another peer's does not.
        let mut a2 = tokio::spawn({
            let p = p.clone();
            async move { p.acquire(peer(1), Turn::Normal).await }
        });
        tokio::task::yield_now().await;
        let b1 = now(p.acquire(peer(2), Turn::Normal)).expect("peer 2 has a share");
        assert_eq!(p.running(), 2);
        // Full: a third peer waits.
        let c1 = tokio::spawn({
            let p = p.clone();
            async move { p.acquire(peer(3), Turn::Normal).await }
        });
        tokio::task::yield_now().await;
        assert_eq!(p.waiting(), 2);
        // Peer 1's place goes to the other waiting peer (3), not to peer 1's
        // second request, which waited longer: turns are per peer.
        drop(a1);
        let c1 = tokio::time::timeout(Duration::from_secs(5), c1)
            .await
            .expect("peer 3 served")
            .expect("task");
        assert!(
            now(&mut a2).is_none(),
            "peer 1's second request still waits"
        );
        drop(b1);
        let a2 = tokio::time::timeout(Duration::from_secs(5), a2)
            .await
            .expect("peer 1 served")
            .expect("task");
        assert_eq!(p.running(), 2);
        drop((a2, c1));
        assert_eq!(p.running(), 0);
        assert_eq!(p.waiting(), 0);
        assert!(p.lock().peers.is_empty(), "nothing kept for idle peers");
    }

    #[tokio::test]
    async fn failing_peers_are_served_after_the_others() {
        let p = pool(1, 1);
        let held = now(p.acquire(peer(9), Turn::Normal)).expect("free");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        // Three failing peers queue first, then one that is not.
        for (i, turn) in [
            (1, Turn::Last),
            (2, Turn::Last),
            (3, Turn::Last),
            (4, Turn::Normal),
        ] {
            let (p, order) = (p.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let permit = p.acquire(peer(i), turn).await;
                order.lock().unwrap().push(i);
                drop(permit);
            }));
            tokio::task::yield_now().await;
        }
        assert_eq!(p.waiting(), 4);
        drop(held);
        for t in tasks {
            tokio::time::timeout(Duration::from_secs(5), t)
                .await
                .expect("served")
                .expect("task");
        }
        assert_eq!(*order.lock().unwrap(), vec![4, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_request_given_up_leaves_no_trace() {
        let p = pool(1, 1);
        let held = now(p.acquire(peer(1), Turn::Normal)).expect("free");
        // Given up while waiting.
        let gave_up =
            tokio::time::timeout(Duration::from_millis(10), p.acquire(peer(2), Turn::Normal)).await;
        assert!(gave_up.is_err());
        assert_eq!(p.waiting(), 0);
        // Granted and dropped before it was polled again: the place comes back.
        let mut late = Box::pin(p.acquire(peer(3), Turn::Normal));
        assert!(now(late.as_mut()).is_none());
        drop(held);
        drop(late);
        assert_eq!(p.running(), 0);
        let again = now(p.acquire(peer(4), Turn::Normal));
        assert!(again.is_some(), "the place given back is free");
    }

    #[tokio::test]
    async fn a_reload_that_widens_the_pool_serves_the_waiting() {
        let p = pool(1, 1);
        let held = now(p.acquire(peer(1), Turn::Normal)).expect("free");
        let w = tokio::spawn({
            let p = p.clone();
            async move { p.acquire(peer(2), Turn::Normal).await }
        });
        tokio::task::yield_now().await;
        p.set_limits(FairLimits {
            capacity: 2,
            per_peer: 1,
        });
        let w = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .expect("served")
            .expect("task");
        drop((held, w));
        assert_eq!(p.running(), 0);
    }
}
