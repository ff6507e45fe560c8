//! Connection counting and login rate limiting (in memory, per node).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Counts open connections in total and per peer address.
#[derive(Debug, Default)]
pub struct ConnectionTracker {
    inner: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// A connection slot; released on drop.
#[derive(Debug)]
pub struct ConnectionSlot {
    tracker: Arc<ConnectionTracker>,
    ip: IpAddr,
}

impl ConnectionTracker {
    /// Takes a slot for `ip` unless a limit is reached (the reason is returned).
    pub fn acquire(
        self: &Arc<Self>,
        ip: IpAddr,
        max: usize,
        max_per_peer: usize,
    ) -> Result<ConnectionSlot, &'static str> {
        let mut g = self.inner.lock().expect("tracker lock");
        if g.0 >= max {
            return Err("too many connections");
        }
        let n = g.1.entry(ip).or_insert(0);
        if *n >= max_per_peer {
            return Err("too many connections from your address");
        }
        *n += 1;
        g.0 += 1;
        Ok(ConnectionSlot {
            tracker: Arc::clone(self),
            ip,
        })
    }

    /// Open connections now.
    pub fn open(&self) -> usize {
        self.inner.lock().expect("tracker lock").0
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut g = self.tracker.inner.lock().expect("tracker lock");
        g.0 -= 1;
        if let Some(n) = g.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                g.1.remove(&self.ip);
            }
        }
    }
}

/// Remembers recent failures per key and says when a key has too many.
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

    /// Whether `key` has at least `limit` failures in the window.
    pub fn is_limited(&self, key: &str, limit: u32, now: Instant) -> bool {
        let mut g = self.failures.lock().expect("limiter lock");
        match g.get_mut(key) {
            Some(q) => {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    q.pop_front();
                }
                q.len() >= limit as usize
            }
            None => false,
        }
    }

    /// Checks every `(key, limit)` and, when none is over its limit, records
    /// an attempt for each, all under one lock (concurrent attempts cannot
    /// all pass the check before any is counted). `Err(wait)` otherwise.
    pub fn try_begin(&self, keys: &[(String, u32)], now: Instant) -> Result<(), Duration> {
        let mut g = self.failures.lock().expect("limiter lock");
        let mut wait: Option<Duration> = None;
        for (key, limit) in keys {
            if let Some(q) = g.get_mut(key) {
                while q
                    .front()
                    .is_some_and(|t| now.duration_since(*t) > self.window)
                {
                    q.pop_front();
                }
                if q.len() >= *limit as usize {
                    let pivot = q[q.len() - *limit as usize];
                    let w = (pivot + self.window).saturating_duration_since(now);
                    wait = Some(wait.map_or(w, |x| x.max(w)));
                }
            }
        }
        if let Some(w) = wait {
            return Err(w);
        }
        Self::prune(&mut g, self.window, now);
        for (key, _) in keys {
            g.entry(key.clone()).or_default().push_back(now);
        }
        Ok(())
    }

    fn prune(g: &mut HashMap<String, VecDeque<Instant>>, window: Duration, now: Instant) {
        if g.len() > 100_000 {
            // Bound memory under a flood of distinct keys: forget stale entries.
            g.retain(|_, q| q.back().is_some_and(|t| now.duration_since(*t) <= window));
        }
    }

    /// How long until `key` has fewer than `limit` failures in the window.
    pub fn retry_after(&self, key: &str, limit: u32, now: Instant) -> Option<Duration> {
        let g = self.failures.lock().expect("limiter lock");
        let q = g.get(key)?;
        let live: Vec<&Instant> = q
            .iter()
            .filter(|t| now.duration_since(**t) <= self.window)
            .collect();
        if live.len() < limit as usize {
            return None;
        }
        // The failure whose expiry brings the count below the limit.
        let pivot = live[live.len() - limit as usize];
        Some((*pivot + self.window).saturating_duration_since(now))
    }

    /// Takes back the most recent failure of `key` (a login counted as failed
    /// when it started, which then succeeded).
    pub fn forgive(&self, key: &str) {
        let mut g = self.failures.lock().expect("limiter lock");
        if let Some(q) = g.get_mut(key) {
            q.pop_back();
        }
    }

    /// Forgets every failure of `key` (an administrator unlocked it:
    /// `cmtpd user unlock`, applied by [`crate::housekeeping`]).
    pub fn clear(&self, key: &str) {
        self.failures.lock().expect("limiter lock").remove(key);
    }

    /// Records a failure of `key`.
    pub fn record(&self, key: &str, now: Instant) {
        let mut g = self.failures.lock().expect("limiter lock");
        Self::prune(&mut g, self.window, now);
        let q = g.entry(key.to_owned()).or_default();
        q.push_back(now);
        if q.len() > 1000 {
            q.pop_front();
        }
    }
}

/// The rate-limit key of an account (as the login path counts it).
pub fn account_key(account: &cmtp_proto::names::Account) -> String {
    format!("account:{account}")
}

/// The rate-limit key of a peer address: the address itself for IPv4, its
/// /64 for IPv6 (one host usually holds a whole /64).
pub fn address_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("address:{v4}"),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return format!("address:{v4}");
            }
            let s = v6.segments();
            format!("address:{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_limits_hold_and_slots_are_released() {
        let t = Arc::new(ConnectionTracker::default());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = t.acquire(a, 3, 2).unwrap();
        let _s2 = t.acquire(a, 3, 2).unwrap();
        assert!(t.acquire(a, 3, 2).is_err());
        let _s3 = t.acquire(b, 3, 2).unwrap();
        assert!(t.acquire(b, 3, 2).is_err());
        drop(s1);
        assert_eq!(t.open(), 2);
        t.acquire(a, 3, 2).unwrap();
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
    fn ipv6_peers_are_limited_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        assert_eq!(
            address_key("127.0.0.1".parse().unwrap()),
            "address:127.0.0.1"
        );
        assert_eq!(
            address_key("::ffff:10.0.0.1".parse().unwrap()),
            "address:10.0.0.1"
        );
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
    fn clearing_a_key_forgets_its_failures_only() {
        let l = FailureLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            l.record("account:alice", t0);
            l.record("account:bob", t0);
        }
        l.clear("account:alice");
        assert!(!l.is_limited("account:alice", 1, t0));
        assert!(l.is_limited("account:bob", 3, t0));
        let alice = cmtp_proto::names::Account::parse("alice").unwrap();
        assert_eq!(account_key(&alice), "account:alice");
    }
}
