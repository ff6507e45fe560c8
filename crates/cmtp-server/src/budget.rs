//! The staging budget: bytes of messages being received, reserved before
//! they are stored and released when the message is stored or dropped
//! (PROTOCOL.md §15).
//!
//! Mail from anyone for a local user is accepted after the trailer check,
//! which can only happen once the whole message is in; until then its bytes
//! sit in the store as a staged blob. A stranger could claim a sender at an
//! honest domain and stream gigabytes that are refused at the end. So every
//! message being received first reserves its bytes ([`StagingBudget::reserve`]):
//!
//! - against the disk ([`DiskMonitor::admit`]): free space must stay above
//!   `[store] min_free` counting every message in flight, and the store
//!   below `[store] max_size`;
//! - for mail that is not a logged-in user's submission, against the
//!   sending peer's budget (`[limits] staged_per_peer`, peers as
//!   `[connections] ipv4_prefix`/`ipv6_prefix` group them) and the claimed
//!   source domain's (`[limits] staged_per_domain`).
//!
//! The reservation grows as attachment lengths become known
//! ([`Reservation::grow_to`]) and is released on drop; the staged bytes of a
//! refused or abandoned message are removed at once (`crate::staging`).
//! So the store never holds more unconfirmed bytes than the budgets allow.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use cmtp_proto::names::Domain;

use crate::disk::{DiskMonitor, DiskRefusal};
use crate::limiter::PeerKey;

/// The per-peer and per-domain limits, bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingLimits {
    /// Bytes one peer may have in flight.
    pub per_peer: u64,
    /// Bytes in flight that claim one source domain.
    pub per_domain: u64,
}

/// Whom a message's bytes are charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Charge {
    /// A logged-in user's submission: the disk only.
    Submission,
    /// Anyone else: the peer and the claimed source domain too.
    Stranger {
        /// The sending peer.
        peer: PeerKey,
        /// The source domain the message claims.
        domain: Domain,
    },
}

/// Why a message's bytes were not admitted (answered with TEMPFAILURE).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BudgetRefusal {
    /// The peer has this much in flight already.
    Peer {
        /// The peer.
        peer: PeerKey,
        /// Its limit.
        limit: u64,
    },
    /// Messages claiming this domain have this much in flight already.
    Domain {
        /// The domain.
        domain: Domain,
        /// Its limit.
        limit: u64,
    },
    /// The disk or the store's size limit.
    Disk(DiskRefusal),
}

impl fmt::Display for BudgetRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetRefusal::Peer { peer, .. } => write!(
                f,
                "too much mail is being received from your network ({peer}) at once; try again later"
            ),
            BudgetRefusal::Domain { domain, .. } => write!(
                f,
                "too much mail claiming to be from {domain} is being received at once; try again later"
            ),
            BudgetRefusal::Disk(d) => d.fmt(f),
        }
    }
}

impl std::error::Error for BudgetRefusal {}

impl BudgetRefusal {
    /// The `reason` label of `cmtp_messages_refused_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            BudgetRefusal::Peer { .. } => "budget_peer",
            BudgetRefusal::Domain { .. } => "budget_domain",
            BudgetRefusal::Disk(DiskRefusal::LowSpace { .. }) => "disk_space",
            BudgetRefusal::Disk(_) => "store_full",
        }
    }
}

#[derive(Debug, Default)]
struct InFlight {
    total: u64,
    per_peer: HashMap<PeerKey, u64>,
    per_domain: HashMap<Domain, u64>,
}

/// The bytes of every message being received, per peer and per claimed
/// source domain, in memory (per node).
#[derive(Debug)]
pub struct StagingBudget {
    limits: StagingLimits,
    disk: Arc<DiskMonitor>,
    inner: Mutex<InFlight>,
}

fn lock(m: &Mutex<InFlight>) -> MutexGuard<'_, InFlight> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StagingBudget {
    /// A budget with `limits`, checking the disk through `disk`.
    pub fn new(limits: StagingLimits, disk: Arc<DiskMonitor>) -> StagingBudget {
        StagingBudget {
            limits,
            disk,
            inner: Mutex::new(InFlight::default()),
        }
    }

    /// Reserves `bytes` for a message about to be received, before any of
    /// it is stored. The MAIL path calls this once the envelope is known
    /// (with the size announced so far) and keeps the reservation until the
    /// message is stored or dropped.
    pub fn reserve(
        self: &Arc<Self>,
        charge: Charge,
        bytes: u64,
    ) -> Result<Reservation, BudgetRefusal> {
        let mut r = Reservation {
            budget: Arc::clone(self),
            charge,
            bytes: 0,
        };
        r.grow_to(bytes)?;
        Ok(r)
    }

    /// Bytes reserved by every message in flight.
    pub fn in_flight(&self) -> u64 {
        lock(&self.inner).total
    }

    /// Bytes reserved by messages from `peer`.
    pub fn in_flight_from(&self, peer: PeerKey) -> u64 {
        lock(&self.inner).per_peer.get(&peer).copied().unwrap_or(0)
    }

    /// The disk monitor the budget checks against.
    pub fn disk(&self) -> &Arc<DiskMonitor> {
        &self.disk
    }

    fn add(&self, charge: &Charge, extra: u64) -> Result<(), BudgetRefusal> {
        let mut g = lock(&self.inner);
        if let Charge::Stranger { peer, domain } = charge {
            let p = g.per_peer.get(peer).copied().unwrap_or(0);
            if p.saturating_add(extra) > self.limits.per_peer {
                return Err(BudgetRefusal::Peer {
                    peer: *peer,
                    limit: self.limits.per_peer,
                });
            }
            let d = g.per_domain.get(domain).copied().unwrap_or(0);
            if d.saturating_add(extra) > self.limits.per_domain {
                return Err(BudgetRefusal::Domain {
                    domain: domain.clone(),
                    limit: self.limits.per_domain,
                });
            }
        }
        // Checked under the lock, so that two messages cannot both pass on
        // the same free space.
        self.disk
            .admit(extra, g.total)
            .map_err(BudgetRefusal::Disk)?;
        g.total += extra;
        if let Charge::Stranger { peer, domain } = charge {
            *g.per_peer.entry(*peer).or_insert(0) += extra;
            *g.per_domain.entry(domain.clone()).or_insert(0) += extra;
        }
        metrics::gauge!("cmtp_staging_bytes").set(g.total as f64);
        Ok(())
    }

    fn release(&self, charge: &Charge, bytes: u64) {
        let mut g = lock(&self.inner);
        g.total = g.total.saturating_sub(bytes);
        if let Charge::Stranger { peer, domain } = charge {
            if let Some(n) = g.per_peer.get_mut(peer) {
                *n = n.saturating_sub(bytes);
                if *n == 0 {
                    g.per_peer.remove(peer);
                }
            }
            if let Some(n) = g.per_domain.get_mut(domain) {
                *n = n.saturating_sub(bytes);
                if *n == 0 {
                    g.per_domain.remove(domain);
                }
            }
        }
        metrics::gauge!("cmtp_staging_bytes").set(g.total as f64);
    }
}

/// Bytes reserved for one message; released on drop.
#[derive(Debug)]
pub struct Reservation {
    budget: Arc<StagingBudget>,
    charge: Charge,
    bytes: u64,
}

impl Reservation {
    /// Bytes reserved now.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whom the bytes are charged to.
    pub fn charge(&self) -> &Charge {
        &self.charge
    }

    /// The disk monitor the reservation was checked against.
    pub fn disk(&self) -> &Arc<DiskMonitor> {
        self.budget.disk()
    }

    /// Grows the reservation to `total` bytes (nothing if it holds as much
    /// already), checking the budgets and the disk for the difference. The
    /// MAIL path calls it when an attachment's length is announced; the
    /// staging sink calls it before storing bytes beyond the reservation.
    /// On refusal the reservation is unchanged.
    pub fn grow_to(&mut self, total: u64) -> Result<(), BudgetRefusal> {
        if total <= self.bytes {
            return Ok(());
        }
        let extra = total - self.bytes;
        self.budget.add(&self.charge, extra)?;
        self.bytes = total;
        Ok(())
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.budget.release(&self.charge, self.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::limiter::PeerPrefixes;

    fn budget(per_peer: u64, per_domain: u64) -> Arc<StagingBudget> {
        let mut cfg = Config::new("a.test", std::path::Path::new("/nonexistent"));
        cfg.store.min_free = 0;
        Arc::new(StagingBudget::new(
            StagingLimits {
                per_peer,
                per_domain,
            },
            Arc::new(DiskMonitor::new(&cfg)),
        ))
    }

    fn stranger(ip: &str, domain: &str) -> Charge {
        Charge::Stranger {
            peer: PeerPrefixes::default().key(ip.parse().unwrap()),
            domain: Domain::parse(domain).unwrap(),
        }
    }

    #[test]
    fn a_peer_cannot_reserve_beyond_its_budget_and_finishing_releases() {
        let b = budget(100, 1000);
        let first = b.reserve(stranger("192.0.2.1", "x.test"), 60).unwrap();
        let e = b.reserve(stranger("192.0.2.1", "y.test"), 41).unwrap_err();
        assert!(matches!(e, BudgetRefusal::Peer { limit: 100, .. }), "{e:?}");
        assert_eq!(e.reason(), "budget_peer");
        // Another peer has its own budget.
        let _other = b.reserve(stranger("192.0.2.2", "y.test"), 100).unwrap();
        let _rest = b.reserve(stranger("192.0.2.1", "y.test"), 40).unwrap();
        assert_eq!(b.in_flight(), 200);
        drop(first);
        assert_eq!(b.in_flight(), 140);
        let _again = b.reserve(stranger("192.0.2.1", "z.test"), 60).unwrap();
    }

    #[test]
    fn messages_claiming_one_domain_share_its_budget_whatever_their_peers() {
        let b = budget(1000, 150);
        let _a = b
            .reserve(stranger("192.0.2.1", "honest.test"), 100)
            .unwrap();
        let e = b
            .reserve(stranger("198.51.100.7", "honest.test"), 51)
            .unwrap_err();
        assert!(
            matches!(e, BudgetRefusal::Domain { limit: 150, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("honest.test"));
        let _b = b
            .reserve(stranger("198.51.100.7", "other.test"), 51)
            .unwrap();
    }

    #[test]
    fn a_reservation_grows_only_within_the_budget() {
        let b = budget(100, 1000);
        let mut r = b.reserve(stranger("2001:db8::1", "x.test"), 10).unwrap();
        r.grow_to(5).unwrap();
        assert_eq!(r.bytes(), 10);
        r.grow_to(100).unwrap();
        // Another address of the same /64 is the same peer.
        let same = stranger("2001:db8::2", "x.test");
        assert!(b.reserve(same.clone(), 1).is_err());
        assert!(r.grow_to(101).is_err());
        assert_eq!(r.bytes(), 100, "unchanged after a refusal");
        drop(r);
        assert_eq!(b.in_flight(), 0);
        b.reserve(same, 100).unwrap();
    }

    #[test]
    fn submissions_are_checked_against_the_disk_only() {
        let mut cfg = Config::new("a.test", std::path::Path::new("/nonexistent"));
        cfg.store.min_free = 0;
        cfg.store.max_size = Some(0);
        let disk = Arc::new(DiskMonitor::new(&cfg));
        let b = Arc::new(StagingBudget::new(
            StagingLimits {
                per_peer: 0,
                per_domain: 0,
            },
            disk,
        ));
        // The store is "full" (max_size 0): nobody gets in, with the disk's reason.
        let e = b.reserve(Charge::Submission, 1).unwrap_err();
        assert!(matches!(
            e,
            BudgetRefusal::Disk(DiskRefusal::StoreFull { .. })
        ));
        assert_eq!(b.reserve(Charge::Submission, 0).unwrap().bytes(), 0);
    }

    #[test]
    fn the_disk_check_counts_every_message_in_flight() {
        let mut cfg = Config::new("a.test", std::path::Path::new("/nonexistent"));
        cfg.store.min_free = 0;
        cfg.store.max_size = Some(1000);
        let b = Arc::new(StagingBudget::new(
            StagingLimits {
                per_peer: u64::MAX,
                per_domain: u64::MAX,
            },
            Arc::new(DiskMonitor::new(&cfg)),
        ));
        let _a = b.reserve(Charge::Submission, 600).unwrap();
        let e = b.reserve(stranger("192.0.2.1", "x.test"), 401).unwrap_err();
        assert_eq!(e.reason(), "store_full");
        assert_eq!(
            b.in_flight_from(PeerPrefixes::default().key("192.0.2.1".parse().unwrap())),
            0
        );
        b.reserve(stranger("192.0.2.1", "x.test"), 400).unwrap();
    }
}
