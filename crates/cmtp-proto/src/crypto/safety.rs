//! Safety numbers (PROTOCOL.md §9.6): a number two people compare out of
//! band — read aloud, side by side — to know that each holds the other's
//! real identity key, whatever the servers in between say.
//!
//! Each person's half is 30 digits derived from their address and key by
//! 5,200 rounds of SHA-512 (as Signal's safety numbers, so that finding
//! another key with the same 30 digits costs about 2^112 hashes); the
//! safety number is the two halves ordered by address, so both sides see
//! the same 60 digits.

use sha2::{Digest, Sha512};

use super::PublicKey;
use crate::names::Address;

/// Rounds of SHA-512 per half.
pub const ITERATIONS: usize = 5200;

/// The 30 digits of one person: `SHA-512` over
/// `"CMTP-v1 safety-number\0" | address NUL | key`, then 5,199 times over
/// the previous digest and the key; the first 30 bytes, as six 5-byte
/// big-endian numbers, each modulo 100,000, written as 5 digits.
pub fn half(address: &Address, key: &PublicKey) -> String {
    let mut h = Sha512::new();
    h.update(b"CMTP-v1 safety-number\0");
    h.update(address.to_string().as_bytes());
    h.update([0u8]);
    h.update(key.as_bytes());
    let mut digest = h.finalize();
    for _ in 1..ITERATIONS {
        let mut h = Sha512::new();
        h.update(digest);
        h.update(key.as_bytes());
        digest = h.finalize();
    }
    let mut out = String::with_capacity(30);
    for chunk in digest[..30].chunks_exact(5) {
        let mut v = 0u64;
        for &b in chunk {
            v = (v << 8) | u64::from(b);
        }
        out.push_str(&format!("{:05}", v % 100_000));
    }
    out
}

/// The safety number of two people: the halves of both, the one of the
/// address that sorts first (as bytes) first; 60 digits.
pub fn safety_number(a: (&Address, &PublicKey), b: (&Address, &PublicKey)) -> String {
    let (first, second) = if a.0.to_string() <= b.0.to_string() {
        (a, b)
    } else {
        (b, a)
    };
    format!("{}{}", half(first.0, first.1), half(second.0, second.1))
}

/// 60 digits as 12 groups of five, four groups a line, as people read them.
pub fn grouped(number: &str) -> String {
    let groups: Vec<&str> = number
        .as_bytes()
        .chunks(5)
        .map(|c| std::str::from_utf8(c).unwrap_or(""))
        .collect();
    groups
        .chunks(4)
        .map(|l| l.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::IdentityKey;

    #[test]
    fn both_sides_see_the_same_number_and_a_new_key_changes_it() {
        let a = Address::parse("alice@a.test").unwrap();
        let b = Address::parse("bob@b.test").unwrap();
        let ka = IdentityKey::from_seed(&[2; 32]).public();
        let kb = IdentityKey::from_seed(&[3; 32]).public();
        let n = safety_number((&a, &ka), (&b, &kb));
        assert_eq!(n.len(), 60);
        assert!(n.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(n, safety_number((&b, &kb), (&a, &ka)));
        let kb2 = IdentityKey::from_seed(&[4; 32]).public();
        let n2 = safety_number((&a, &ka), (&b, &kb2));
        assert_ne!(n, n2);
        assert_eq!(n[..30], n2[..30], "alice's half stays");
        assert_eq!(grouped(&n).lines().count(), 3);
    }
}
