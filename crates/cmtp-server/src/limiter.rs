//! Per-peer accounting, in memory and per node (PROTOCOL.md §12.3, §15):
//! connection slots with a share reserved for logged-in sessions, failed
//! logins, and token-bucket rate limits.
//!
//! A *peer* is a source prefix, not an address ([`PeerPrefixes`]): an IPv6
//! host usually holds a whole /64 and can use any address in it, so counting
//! addresses would let one host take every slot. IPv4 peers are single
//! addresses by default; an operator facing a flood from a whole network can
//! count a /24 as one peer. Every per-peer limit of the server (connections,
//! logins, staged bytes, remote key requests) keys on the same
//! [`PeerKey`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

/// Locks `m`, carrying on after a panic elsewhere: every structure here is
/// consistent between statements, so a poisoned lock must not turn one
/// failure into a refusal of everything that follows.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// How many leading bits of a peer's address make one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerPrefixes {
    ipv4: u8,
    ipv6: u8,
}

impl Default for PeerPrefixes {
    /// Each IPv4 address, each IPv6 /64.
    fn default() -> Self {
        PeerPrefixes { ipv4: 32, ipv6: 64 }
    }
}

impl PeerPrefixes {
    /// Prefix lengths for IPv4 and IPv6 (at most 32 and 128).
    pub fn new(ipv4: u8, ipv6: u8) -> PeerPrefixes {
        PeerPrefixes {
            ipv4: ipv4.min(32),
            ipv6: ipv6.min(128),
        }
    }

    /// The peer `ip` belongs to. An IPv4 address mapped into IPv6
    /// (`::ffff:a.b.c.d`) counts as that IPv4 address.
    pub fn key(&self, ip: IpAddr) -> PeerKey {
        match ip {
            IpAddr::V4(v4) => self.v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => self.v4(v4),
                None => {
                    let len = self.ipv6;
                    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
                    PeerKey {
                        net: IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask)),
                        len,
                    }
                }
            },
        }
    }

    fn v4(&self, v4: Ipv4Addr) -> PeerKey {
        let len = self.ipv4;
        let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
        PeerKey {
            net: IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask)),
            len,
        }
    }
}

/// One peer: a network prefix (`203.0.113.7/32`, `2001:db8:1:2::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerKey {
    net: IpAddr,
    len: u8,
}

impl fmt::Display for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.net, self.len)
    }
}

/// The connection limits of [`ConnectionTracker::acquire_stranger`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most connections at once.
    pub max: usize,
    /// Of those, how many only logged-in sessions may hold: connections that
    /// are not logged in are refused once `max - reserved_for_users` of them
    /// are open.
    pub reserved_for_users: usize,
    /// Most connections at once from one peer.
    pub max_per_peer: usize,
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectionRefusal {
    /// Every slot is taken.
    Full,
    /// Every slot open to sessions that are not logged in is taken; the rest
    /// are reserved for logged-in sessions.
    ReservedForUsers,
    /// The peer holds its most connections.
    PeerFull,
}

impl ConnectionRefusal {
    /// The `reason` label of `cmtp_connections_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            ConnectionRefusal::Full => "full",
            ConnectionRefusal::ReservedForUsers => "reserved",
            ConnectionRefusal::PeerFull => "per_peer",
        }
    }

    /// What the refused peer is told.
    pub fn text(self) -> &'static str {
        match self {
            ConnectionRefusal::Full | ConnectionRefusal::ReservedForUsers => "too many connections",
            ConnectionRefusal::PeerFull => "too many connections from your network",
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    /// Connections not logged in.
    strangers: usize,
    per_peer: HashMap<PeerKey, PeerSlots>,
    /// Peers by how many stranger connections they hold: the heaviest is
    /// the last.
    by_strangers: BTreeSet<(usize, PeerKey)>,
    next_id: u64,
}

/// One peer's connections.
#[derive(Debug, Default)]
struct PeerSlots {
    total: usize,
    /// Its connections that are not logged in, oldest first: the ones a
    /// newcomer may take over when every stranger's slot is taken.
    strangers: VecDeque<(u64, CancellationToken)>,
}

impl Counts {
    fn reindex(&mut self, peer: PeerKey, before: usize) {
        let after = self.per_peer.get(&peer).map_or(0, |p| p.strangers.len());
        if before != after {
            self.by_strangers.remove(&(before, peer));
            if after > 0 {
                self.by_strangers.insert((after, peer));
            }
        }
    }

    fn add_stranger(&mut self, peer: PeerKey, id: u64, evict: CancellationToken) {
        let e = self.per_peer.entry(peer).or_default();
        let before = e.strangers.len();
        e.strangers.push_back((id, evict));
        self.strangers += 1;
        self.reindex(peer, before);
    }

    fn remove_stranger(&mut self, peer: PeerKey, id: u64) {
        let Some(e) = self.per_peer.get_mut(&peer) else {
            return;
        };
        let before = e.strangers.len();
        if let Some(i) = e.strangers.iter().position(|(x, _)| *x == id) {
            e.strangers.remove(i);
            self.strangers -= 1;
        }
        self.reindex(peer, before);
    }

    fn release(&mut self, peer: PeerKey) {
        self.total -= 1;
        if let Some(e) = self.per_peer.get_mut(&peer) {
            e.total -= 1;
            if e.total == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }

    /// Ends the oldest stranger connection of the peer holding the most, if
    /// that peer holds at least two more than `newcomer` does: its slot is
    /// freed now, and its session is told to end at once.
    fn evict_for(&mut self, newcomer: PeerKey) -> bool {
        let mine = self
            .per_peer
            .get(&newcomer)
            .map_or(0, |p| p.strangers.len());
        let Some(&(most, victim)) = self.by_strangers.last() else {
            return false;
        };
        if most < mine + 2 {
            return false;
        }
        let Some(e) = self.per_peer.get_mut(&victim) else {
            return false;
        };
        let Some((id, token)) = e.strangers.front().cloned() else {
            return false;
        };
        token.cancel();
        self.remove_stranger(victim, id);
        self.release(victim);
        metrics::counter!("cmtp_connections_evicted_total").increment(1);
        true
    }
}

/// Counts open connections: in total, not logged in, and per peer.
///
/// Every connection starts as a stranger's ([`acquire_stranger`]); a
/// session that logs in [`promote`](ConnectionSlot::promote)s its slot into
/// the share reserved for logged-in sessions, which frees a stranger's slot.
/// Strangers can therefore never take the reserved share, whatever they do.
///
/// When every slot open to strangers is taken, a newcomer is not simply
/// refused: if some peer holds at least two more stranger connections than
/// the newcomer, that peer's oldest one is ended
/// ([`ConnectionSlot::evicted`]) and the newcomer takes its slot. Many
/// addresses that each hold many idle connections therefore cannot keep a
/// new address out; only as many addresses as there are slots could.
///
/// [`acquire_stranger`]: ConnectionTracker::acquire_stranger
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    inner: Mutex<Counts>,
}

/// A connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    tracker: Arc<ConnectionTracker>,
    peer: PeerKey,
    id: u64,
    logged_in: bool,
    /// Cancelled when a newcomer took the slot over; the slot is then no
    /// longer counted.
    evict: CancellationToken,
}

impl ConnectionTracker {
    /// Takes a slot for a new connection from `peer` (not logged in), or
    /// says why not; a refusal is counted in
    /// `cmtp_connections_refused_total{reason}`. When every slot open to
    /// strangers is taken, the oldest stranger connection of the peer that
    /// holds the most may be ended to make room (see [`ConnectionTracker`]).
    pub fn acquire_stranger(
        self: &Arc<Self>,
        peer: PeerKey,
        limits: &ConnectionLimits,
    ) -> Result<ConnectionSlot, ConnectionRefusal> {
        let refused = |why: ConnectionRefusal| {
            metrics::counter!("cmtp_connections_refused_total", "reason" => why.reason())
                .increment(1);
            Err(why)
        };
        let mut g = lock(&self.inner);
        let n = g.per_peer.get(&peer).map_or(0, |p| p.total);
        if n >= limits.max_per_peer {
            return refused(ConnectionRefusal::PeerFull);
        }
        let stranger_max = limits.max.saturating_sub(limits.reserved_for_users);
        while g.total >= limits.max || g.strangers >= stranger_max {
            if !g.evict_for(peer) {
                return refused(if g.total >= limits.max {
                    ConnectionRefusal::Full
                } else {
                    ConnectionRefusal::ReservedForUsers
                });
            }
        }
        g.next_id += 1;
        let id = g.next_id;
        let evict = CancellationToken::new();
        g.total += 1;
        g.per_peer.entry(peer).or_default().total += 1;
        g.add_stranger(peer, id, evict.clone());
        Ok(ConnectionSlot {
            tracker: Arc::clone(self),
            peer,
            id,
            logged_in: false,
            evict,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        lock(&self.inner).total
    }

    /// Open connections that are not logged in.
    pub fn strangers(&self) -> usize {
        lock(&self.inner).strangers
    }
}

impl ConnectionSlot {
    /// The session logged in: the slot moves into the share reserved for
    /// logged-in sessions (a stranger's slot frees). Idempotent.
    pub fn promote(&mut self) {
        let mut g = lock(&self.tracker.inner);
        if !self.logged_in && !self.evict.is_cancelled() {
            self.logged_in = true;
            g.remove_stranger(self.peer, self.id);
        }
    }

    /// The session is no longer logged in (a new LOGIN started): the slot
    /// counts as a stranger's again. Idempotent.
    pub fn demote(&mut self) {
        let mut g = lock(&self.tracker.inner);
        if self.logged_in && !self.evict.is_cancelled() {
            self.logged_in = false;
            g.add_stranger(self.peer, self.id, self.evict.clone());
        }
    }

    /// Whether the slot counts as a logged-in session's.
    pub fn is_logged_in(&self) -> bool {
        self.logged_in
    }

    /// The peer holding the slot.
    pub fn peer(&self) -> PeerKey {
        self.peer
    }

    /// Cancelled when a newcomer took this stranger's slot over: the
    /// session must end at once.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evict
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut g = lock(&self.tracker.inner);
        if self.evict.is_cancelled() {
            // Released when it was taken over.
            return;
        }
        if !self.logged_in {
            g.remove_stranger(self.peer, self.id);
        }
        g.release(self.peer);
    }
}

/// Remembers recent failures per key and says when a key has too many.
///
/// A limit of 0 allows no attempt at all (never a panic).
#[derive(Debug)]
pub struct FailureLimiter {
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl FailureLimiter {
    /// A limiter counting failures within `window`.
    pub fn new(window: Duration) -> Self {
        FailureLimiter {
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Forgets the failures of `q` older than the window; returns how long
    /// until fewer than `limit` remain (`None`: fewer already).
    fn wait(
        q: &mut VecDeque<Instant>,
        limit: u32,
        window: Duration,
        now: Instant,
    ) -> Option<Duration> {
        while q.front().is_some_and(|t| now.duration_since(*t) > window) {
            q.pop_front();
        }
        let limit = limit as usize;
        if q.len() < limit {
            return None;
        }
        // The failure whose expiry brings the count below the limit; with a
        // limit of 0 there is none, and the whole window is the answer.
        Some(match q.len().checked_sub(limit).and_then(|i| q.get(i)) {
            Some(pivot) if limit > 0 => (*pivot + window).saturating_duration_since(now),
            _ => window,
        })
    }

    /// Whether `key` has at least `limit` failures in the window.
    pub fn is_limited(&self, key: &str, limit: u32, now: Instant) -> bool {
        self.retry_after(key, limit, now).is_some()
    }

    /// Checks every `(key, limit)` and, when none is over its limit, records
    /// an attempt for each, all under one lock (concurrent attempts cannot
    /// all pass the check before any is counted). `Err(wait)` otherwise.
    pub fn try_begin(&self, keys: &[(String, u32)], now: Instant) -> Result<(), Duration> {
        let mut g = lock(&self.failures);
        let mut wait: Option<Duration> = None;
        for (key, limit) in keys {
            let w = match g.get_mut(key) {
                Some(q) => Self::wait(q, *limit, self.window, now),
                None if *limit == 0 => Some(self.window),
                None => None,
            };
            if let Some(w) = w {
                wait = Some(wait.map_or(w, |x| x.max(w)));
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        Self::prune(&mut g, self.window, now);
        for (key, _) in keys {
            Self::push(g.entry(key.clone()).or_default(), now);
        }
        Ok(())
    }

    fn push(q: &mut VecDeque<Instant>, now: Instant) {
        q.push_back(now);
        if q.len() > 1000 {
            q.pop_front();
        }
    }

    fn prune(g: &mut HashMap<String, VecDeque<Instant>>, window: Duration, now: Instant) {
        if g.len() > 100_000 {
            // Bound memory under a flood of distinct keys: forget stale entries.
            g.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
        }
    }

    /// How long until `key` has fewer than `limit` failures in the window;
    /// `None` if it has fewer now.
    pub fn retry_after(&self, key: &str, limit: u32, now: Instant) -> Option<Duration> {
        let mut g = lock(&self.failures);
        match g.get_mut(key) {
            Some(q) => Self::wait(q, limit, self.window, now),
            None if limit == 0 => Some(self.window),
            None => None,
        }
    }

    /// Takes back the most recent failure of `key` (a login counted as failed
    /// when it started, which then succeeded).
    pub fn forgive(&self, key: &str) {
        let mut g = lock(&self.failures);
        if let Some(q) = g.get_mut(key) {
            q.pop_back();
            if q.is_empty() {
                g.remove(key);
            }
        }
    }

    /// Forgets every failure of `key` and of the keys it is a prefix of
    /// (`account:alice` clears `account:alice peer:…` for every peer): an
    /// administrator unlocked it (`cmtpd user unlock`, applied by
    /// [`crate::housekeeping`]).
    pub fn clear(&self, key: &str) {
        let prefix = format!("{key} ");
        lock(&self.failures).retain(|k, _| k != key && !k.starts_with(&prefix));
    }

    /// Records a failure of `key`.
    pub fn record(&self, key: &str, now: Instant) {
        let mut g = lock(&self.failures);
        Self::prune(&mut g, self.window, now);
        Self::push(g.entry(key.to_owned()).or_default(), now);
    }
}

/// The rate-limit key of an account: the prefix of every key the login
/// path counts it under (`account:NAME peer:PREFIX`, PROTOCOL.md §12.3).
pub fn account_key(account: &cmtp_proto::names::Account) -> String {
    format!("account:{account}")
}

/// A token bucket per peer: `burst` requests at once, then `per_minute`.
/// A rate of 0 refuses every request.
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    burst: u32,
    buckets: Mutex<HashMap<PeerKey, (f64, Instant)>>,
}

/// Most peers a [`RateLimiter`] remembers before it forgets the full ones.
const MAX_BUCKETS: usize = 100_000;

impl RateLimiter {
    /// `per_minute` requests a minute per peer, after a first `burst` (at
    /// least 1).
    pub fn new(per_minute: u32, burst: u32) -> RateLimiter {
        RateLimiter {
            per_minute,
            burst: burst.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    fn rate(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }

    fn level(&self, tokens: f64, since: Instant, now: Instant) -> f64 {
        let refill = now.saturating_duration_since(since).as_secs_f64() * self.rate();
        (tokens + refill).min(f64::from(self.burst))
    }

    /// Takes one request's token for `peer`, or says how long until one is
    /// there.
    pub fn check(&self, peer: PeerKey, now: Instant) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Err(Duration::from_secs(60));
        }
        let mut g = lock(&self.buckets);
        if g.len() >= MAX_BUCKETS && !g.contains_key(&peer) {
            let burst = f64::from(self.burst);
            g.retain(|_, (tokens, since)| self.level(*tokens, *since, now) < burst);
        }
        let (tokens, since) = g.entry(peer).or_insert((f64::from(self.burst), now));
        let level = self.level(*tokens, *since, now);
        if level >= 1.0 {
            *tokens = level - 1.0;
            *since = now;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - level) / self.rate()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(s: &str) -> PeerKey {
        PeerPrefixes::default().key(s.parse().unwrap())
    }

    fn limits(max: usize, reserved: usize, per_peer: usize) -> ConnectionLimits {
        ConnectionLimits {
            max,
            reserved_for_users: reserved,
            max_per_peer: per_peer,
        }
    }

    #[test]
    fn connection_limits_hold_and_slots_are_released() {
        let t = Arc::new(ConnectionTracker::default());
        let l = limits(3, 0, 2);
        let (a, b) = (peer("127.0.0.1"), peer("127.0.0.2"));
        let s1 = t.acquire_stranger(a, &l).unwrap();
        let _s2 = t.acquire_stranger(a, &l).unwrap();
        assert_eq!(
            t.acquire_stranger(a, &l).unwrap_err(),
            ConnectionRefusal::PeerFull
        );
        let _s3 = t.acquire_stranger(b, &l).unwrap();
        assert_eq!(
            t.acquire_stranger(b, &l).unwrap_err(),
            ConnectionRefusal::Full
        );
        drop(s1);
        assert_eq!(t.open(), 2);
        t.acquire_stranger(a, &l).unwrap();
    }

    #[test]
    fn six_hundred_connections_from_one_64_are_one_peer() {
        let t = Arc::new(ConnectionTracker::default());
        let l = limits(16384, 0, 128);
        let prefixes = PeerPrefixes::default();
        let mut slots = Vec::new();
        let mut refused = 0;
        for i in 0..600u16 {
            let ip: IpAddr = format!("2001:db8:1:2:{i:x}::1").parse().unwrap();
            match t.acquire_stranger(prefixes.key(ip), &l) {
                Ok(s) => slots.push(s),
                Err(e) => {
                    assert_eq!(e, ConnectionRefusal::PeerFull);
                    refused += 1;
                }
            }
        }
        assert_eq!((slots.len(), refused), (128, 472));
        // Another /64 is another peer.
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert!(t.acquire_stranger(prefixes.key(other), &l).is_ok());
    }

    #[test]
    fn strangers_cannot_take_the_slots_reserved_for_logged_in_sessions() {
        let t = Arc::new(ConnectionTracker::default());
        let l = limits(4, 2, 10);
        let mut a = t.acquire_stranger(peer("10.0.0.1"), &l).unwrap();
        let _b = t.acquire_stranger(peer("10.0.0.2"), &l).unwrap();
        assert_eq!(
            t.acquire_stranger(peer("10.0.0.3"), &l).unwrap_err(),
            ConnectionRefusal::ReservedForUsers
        );
        // A login frees a stranger's slot; the logged-in session keeps one
        // of the reserved ones.
        a.promote();
        a.promote();
        assert!(a.is_logged_in());
        assert_eq!((t.open(), t.strangers()), (2, 1));
        let _c = t.acquire_stranger(peer("10.0.0.3"), &l).unwrap();
        assert_eq!(
            t.acquire_stranger(peer("10.0.0.4"), &l).unwrap_err(),
            ConnectionRefusal::ReservedForUsers
        );
        a.demote();
        assert_eq!((t.open(), t.strangers()), (3, 3));
        a.promote();
        drop(a);
        assert_eq!((t.open(), t.strangers()), (2, 2));
    }

    #[test]
    fn a_newcomer_takes_over_the_oldest_slot_of_the_peer_holding_the_most() {
        let t = Arc::new(ConnectionTracker::default());
        let l = limits(6, 1, 10);
        let heavy: Vec<_> = (0..3)
            .map(|_| t.acquire_stranger(peer("10.0.0.1"), &l).unwrap())
            .collect();
        let light: Vec<_> = (0..2)
            .map(|_| t.acquire_stranger(peer("10.0.0.2"), &l).unwrap())
            .collect();
        // Every stranger's slot is taken (6 - 1 reserved). A newcomer gets
        // the heavy peer's oldest one, which is told to end.
        let fresh = t.acquire_stranger(peer("10.0.0.3"), &l).unwrap();
        assert!(heavy[0].evicted().is_cancelled());
        assert!(!heavy[1].evicted().is_cancelled());
        assert_eq!((t.open(), t.strangers()), (5, 5));
        // Now no peer holds two more than 10.0.0.3 (2, 2, 1): refused.
        assert_eq!(
            t.acquire_stranger(peer("10.0.0.3"), &l).unwrap_err(),
            ConnectionRefusal::ReservedForUsers
        );
        // Another newcomer (0 held) takes one from a peer holding 2.
        let other = t.acquire_stranger(peer("10.0.0.4"), &l).unwrap();
        assert_eq!((t.open(), t.strangers()), (5, 5));
        // The evicted slots are not counted twice when their sessions end,
        // and promoting or demoting them changes nothing.
        let mut heavy = heavy;
        heavy[0].promote();
        heavy[0].demote();
        drop(heavy);
        drop(light);
        drop(fresh);
        drop(other);
        assert_eq!((t.open(), t.strangers()), (0, 0));
        assert!(lock(&t.inner).per_peer.is_empty());
        assert!(lock(&t.inner).by_strangers.is_empty());
    }

    #[test]
    fn logged_in_sessions_are_never_taken_over() {
        let t = Arc::new(ConnectionTracker::default());
        let l = limits(3, 0, 10);
        let mut users: Vec<_> = (0..3)
            .map(|_| t.acquire_stranger(peer("10.0.0.1"), &l).unwrap())
            .collect();
        for u in &mut users {
            u.promote();
        }
        assert_eq!(
            t.acquire_stranger(peer("10.0.0.2"), &l).unwrap_err(),
            ConnectionRefusal::Full
        );
        assert!(users.iter().all(|u| !u.evicted().is_cancelled()));
    }

    #[test]
    fn peers_are_prefixes_of_the_configured_length() {
        let p = PeerPrefixes::default();
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(p.key(a), p.key(b));
        assert_ne!(p.key(a), p.key(c));
        assert_eq!(p.key(a).to_string(), "2001:db8:1:2::/64");
        assert_eq!(
            p.key("127.0.0.1".parse().unwrap()).to_string(),
            "127.0.0.1/32"
        );
        assert_eq!(
            p.key("::ffff:10.0.0.1".parse().unwrap()).to_string(),
            "10.0.0.1/32"
        );
        let p24 = PeerPrefixes::new(24, 48);
        assert_eq!(
            p24.key("192.0.2.77".parse().unwrap()),
            p24.key("192.0.2.1".parse().unwrap())
        );
        assert_eq!(
            p24.key("192.0.2.77".parse().unwrap()).to_string(),
            "192.0.2.0/24"
        );
        assert_eq!(p24.key(c).to_string(), "2001:db8:1::/48");
        let all = PeerPrefixes::new(0, 0);
        assert_eq!(
            all.key("192.0.2.1".parse().unwrap()).to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(all.key(c).to_string(), "::/0");
        let exact = PeerPrefixes::new(40, 200);
        assert_eq!(exact.key(c).to_string(), "2001:db8:1:3::1/128");
    }

    #[test]
    fn try_begin_checks_and_counts_at_once() {
        let l = FailureLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let keys = [("a".to_owned(), 2), ("b".to_owned(), 5)];
        assert!(l.try_begin(&keys, t0).is_ok());
        assert!(l.try_begin(&keys, t0).is_ok());
        assert_eq!(l.try_begin(&keys, t0), Err(Duration::from_secs(10)));
        // "b" was not counted for the refused attempt.
        assert!(!l.is_limited("b", 3, t0));
        l.forgive("a");
        assert!(l.try_begin(&keys, t0).is_ok());
    }

    #[test]
    fn a_limit_of_zero_refuses_without_panicking_or_poisoning() {
        let l = FailureLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let zero = [("a".to_owned(), 0)];
        assert_eq!(l.try_begin(&zero, t0), Err(Duration::from_secs(10)));
        l.record("a", t0);
        assert_eq!(l.try_begin(&zero, t0), Err(Duration::from_secs(10)));
        assert!(l.is_limited("a", 0, t0));
        assert_eq!(l.retry_after("b", 0, t0), Some(Duration::from_secs(10)));
        // The limiter still works for everyone else.
        assert!(l.try_begin(&[("b".to_owned(), 1)], t0).is_ok());
        assert!(l.try_begin(&[("b".to_owned(), 1)], t0).is_err());
    }

    #[test]
    fn failures_expire_after_the_window() {
        let l = FailureLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.record("alice", t0);
        }
        assert!(l.is_limited("alice", 3, t0));
        assert!(!l.is_limited("bob", 3, t0));
        assert_eq!(
            l.retry_after("alice", 3, t0 + Duration::from_secs(4)),
            Some(Duration::from_secs(6))
        );
        l.forgive("alice");
        assert!(!l.is_limited("alice", 3, t0));
        assert_eq!(l.retry_after("alice", 3, t0), None);
        l.record("alice", t0);
        assert!(!l.is_limited("alice", 3, t0 + Duration::from_secs(11)));
    }

    #[test]
    fn the_rate_limiter_allows_a_burst_then_the_rate() {
        let r = RateLimiter::new(60, 3);
        let t0 = Instant::now();
        let (a, b) = (peer("192.0.2.1"), peer("192.0.2.2"));
        for _ in 0..3 {
            r.check(a, t0).unwrap();
        }
        let wait = r.check(a, t0).unwrap_err();
        assert!(
            wait > Duration::from_millis(990) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        r.check(b, t0).unwrap();
        r.check(a, t0 + Duration::from_secs(1)).unwrap();
        assert!(r.check(a, t0 + Duration::from_secs(1)).is_err());
        // Refilled, but never beyond the burst.
        for _ in 0..3 {
            r.check(a, t0 + Duration::from_secs(3600)).unwrap();
        }
        assert!(r.check(a, t0 + Duration::from_secs(3600)).is_err());
        let none = RateLimiter::new(0, 5);
        assert!(none.check(a, t0).is_err());
    }

    #[test]
    fn clearing_a_key_forgets_its_failures_only() {
        let l = FailureLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.record("account:alice", t0);
            l.record("account:bob", t0);
        }
        l.record("account:alice peer:192.0.2.1", t0);
        l.record("account:alicex peer:192.0.2.1", t0);
        l.clear("account:alice");
        assert!(!l.is_limited("account:alice", 1, t0));
        assert!(!l.is_limited("account:alice peer:192.0.2.1", 1, t0));
        assert!(l.is_limited("account:alicex peer:192.0.2.1", 1, t0));
        assert!(l.is_limited("account:bob", 3, t0));
        let alice = cmtp_proto::names::Account::parse("alice").unwrap();
        assert_eq!(account_key(&alice), "account:alice");
    }
}
