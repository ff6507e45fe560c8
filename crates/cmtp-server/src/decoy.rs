//! Argon2id parameters for the LOGIN challenge of an account that does not
//! exist (PROTOCOL.md §12.3).
//!
//! A LOGIN challenge carries the account's key-stretching parameters, which
//! its client chose at registration. Answering an unknown name with the
//! server's floor would tell apart every account registered above the
//! floor. Instead, an unknown name gets parameters drawn from those the
//! server's accounts actually use, in proportion to how many use them, and
//! deterministically per name (as opaque-ke's fake records are): asking
//! twice gives the same answer, on every node of a cluster.
//!
//! The draw maps a keyed hash of the name to a point `u` in [0, 1) and takes
//! the parameters whose share of accounts covers `u`, the shares laid out in
//! a fixed order. A registration moves the boundaries by one account's share,
//! so an unknown name's parameters change about as rarely as a real
//! account's do (on a password change).

use std::sync::RwLock;

use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::Account;
use cmtp_store::{Store, StoreError};
use sha2::{Digest, Sha256};

/// The parameters unknown accounts are answered with.
#[derive(Debug)]
pub struct KsfDecoys {
    key: [u8; 32],
    floor: KsfParams,
    /// Parameters in use and how many accounts use each, in encoding order.
    table: RwLock<Vec<(KsfParams, u64)>>,
}

impl KsfDecoys {
    /// The key of the draw, derived from a server secret every node of a
    /// cluster shares (the OPAQUE server setup), so that all nodes answer
    /// alike and nobody outside can predict the draw.
    pub fn derive_key(secret: &[u8]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(b"CMTP-v1 ksf decoy key\0");
        h.update(secret);
        h.finalize().into()
    }

    /// From a key and a histogram of encodings (as
    /// [`Store::ksf_histogram`] gives it).
    pub fn new(key: [u8; 32], floor: KsfParams, histogram: Vec<([u8; 12], u64)>) -> KsfDecoys {
        let decoys = KsfDecoys {
            key,
            floor,
            table: RwLock::new(Vec::new()),
        };
        decoys.set(histogram);
        decoys
    }

    /// Reads the parameters in use again (after a registration or a
    /// password change, and periodically for the other nodes' changes).
    pub async fn refresh<S: Store>(&self, store: &S) -> Result<(), StoreError> {
        self.set(store.ksf_histogram().await?);
        Ok(())
    }

    fn set(&self, histogram: Vec<([u8; 12], u64)>) {
        // Only parameters a client could be asked to use (an account stored
        // with anything else cannot log in anyway).
        let lowest = KsfParams {
            m_cost_kib: 8,
            t_cost: 1,
            p_cost: 1,
        };
        let table = histogram
            .into_iter()
            .filter_map(|(bytes, n)| {
                let k = KsfParams::decode(&bytes).ok()?;
                k.validate(&lowest).ok()?;
                (n > 0).then_some((k, n))
            })
            .collect();
        *self.table.write().unwrap_or_else(|e| e.into_inner()) = table;
    }

    /// The parameters to answer a LOGIN for the unknown `account` with.
    pub fn for_unknown(&self, account: &Account) -> KsfParams {
        let table = self.table.read().unwrap_or_else(|e| e.into_inner());
        pick(&table, self.point(account)).unwrap_or(self.floor)
    }

    /// The keyed hash of `account` as a 64-bit fraction of the unit interval.
    fn point(&self, account: &Account) -> u64 {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(b"CMTP-v1 ksf decoy\0");
        h.update(account.as_str().as_bytes());
        let d = h.finalize();
        u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
    }
}

/// The entry of `table` (weights in order) covering the point `u / 2^64`.
fn pick(table: &[(KsfParams, u64)], u: u64) -> Option<KsfParams> {
    let total: u128 = table.iter().map(|(_, n)| u128::from(*n)).sum();
    if total == 0 {
        return None;
    }
    // u / 2^64 of the way through the accounts, laid out in table order.
    let target = (u128::from(u) * total) >> 64;
    let mut seen = 0u128;
    for (k, n) in table {
        seen += u128::from(*n);
        if target < seen {
            return Some(*k);
        }
    }
    table.last().map(|(k, _)| *k)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(m: u32) -> KsfParams {
        KsfParams {
            m_cost_kib: m,
            t_cost: 3,
            p_cost: 4,
        }
    }

    #[test]
    fn draws_follow_the_accounts_shares() {
        let table = [(k(65536), 3), (k(131072), 1)];
        assert_eq!(pick(&table, 0), Some(k(65536)));
        assert_eq!(pick(&table, u64::MAX / 4 * 3 - 1), Some(k(65536)));
        assert_eq!(pick(&table, u64::MAX / 4 * 3 + 8), Some(k(131072)));
        assert_eq!(pick(&table, u64::MAX), Some(k(131072)));
        assert_eq!(pick(&[], 5), None);
        assert_eq!(pick(&[(k(65536), 0)], 5), None);
    }

    #[test]
    fn an_unknown_name_gets_the_same_parameters_every_time_and_from_every_node() {
        let histogram = vec![(k(65536).to_bytes(), 10), (k(262144).to_bytes(), 10)];
        let a = KsfDecoys::new([7; 32], k(65536), histogram.clone());
        let b = KsfDecoys::new([7; 32], k(65536), histogram);
        let mut seen = std::collections::HashSet::new();
        for i in 0..200 {
            let name = Account::parse(&format!("ghost{i}")).unwrap();
            let p = a.for_unknown(&name);
            assert_eq!(p, a.for_unknown(&name));
            assert_eq!(p, b.for_unknown(&name));
            seen.insert(p);
        }
        // Both parameter sets in use are handed out: the one above the floor
        // does not single out real accounts.
        assert_eq!(seen.len(), 2);
    }

    #[test]
    fn the_share_handed_out_matches_the_share_in_use() {
        let histogram = vec![(k(65536).to_bytes(), 90), (k(131072).to_bytes(), 10)];
        let d = KsfDecoys::new([1; 32], k(65536), histogram);
        let above = (0..2000)
            .filter(|i| d.for_unknown(&Account::parse(&format!("n{i}")).unwrap()) == k(131072))
            .count();
        assert!((120..=280).contains(&above), "{above} of 2000");
    }

    #[test]
    fn one_registration_moves_few_names() {
        let before = KsfDecoys::new(
            [2; 32],
            k(65536),
            vec![(k(65536).to_bytes(), 50), (k(131072).to_bytes(), 50)],
        );
        let after = KsfDecoys::new(
            [2; 32],
            k(65536),
            vec![(k(65536).to_bytes(), 51), (k(131072).to_bytes(), 50)],
        );
        let moved = (0..2000)
            .filter(|i| {
                let n = Account::parse(&format!("n{i}")).unwrap();
                before.for_unknown(&n) != after.for_unknown(&n)
            })
            .count();
        assert!(moved <= 60, "{moved} of 2000 names changed");
    }

    #[test]
    fn without_accounts_or_with_unusable_ones_the_floor_is_answered() {
        let floor = k(65536);
        let none = KsfDecoys::new([3; 32], floor, Vec::new());
        let ghost = Account::parse("ghost").unwrap();
        assert_eq!(none.for_unknown(&ghost), floor);
        let junk = KsfDecoys::new([3; 32], floor, vec![([0; 12], 5), ([0xff; 12], 5)]);
        assert_eq!(junk.for_unknown(&ghost), floor);
    }
}
