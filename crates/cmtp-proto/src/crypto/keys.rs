//! Ed25519 identity keys and their X25519 forms (PROTOCOL.md §8.4, §9.1).
//!
//! One key type serves users and servers alike. Public keys are parsed
//! strictly: a 32-byte string is accepted only if it decompresses to a curve
//! point, is the canonical encoding of that point, is not of small order, and
//! lies in the prime-order subgroup. This is at least as strict as libsodium's
//! `crypto_sign_ed25519_pk_to_curve25519` (which also accepts some
//! non-canonical encodings; we do not).

use core::fmt;

use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::clamp_integer;
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

use super::CryptoError;

/// Length of an Ed25519 public key, seed, or X25519 key in bytes.
pub const KEY_LEN: usize = 32;

/// An Ed25519 identity key: the 32-byte secret seed of RFC 8032.
///
/// Zeroized on drop. `Debug` prints only the public key's fingerprint.
#[derive(Clone)]
pub struct IdentityKey {
    signing: SigningKey,
    public: PublicKey,
}

impl IdentityKey {
    /// Generates a new key from `rng`.
    pub fn generate(rng: &mut (impl RngCore + CryptoRng)) -> IdentityKey {
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        rng.fill_bytes(&mut *seed);
        IdentityKey::from_seed(&seed)
    }

    /// Rebuilds a key from its 32-byte seed.
    pub fn from_seed(seed: &[u8; KEY_LEN]) -> IdentityKey {
        let signing = SigningKey::from_bytes(seed);
        let verifying = signing.verifying_key();
        let public = PublicKey {
            bytes: verifying.to_bytes(),
            verifying,
        };
        IdentityKey { signing, public }
    }

    /// The 32-byte secret seed (what a xzibit stores). Treat as secret: the
    /// borrowed bytes are zeroized when the key is dropped; copies are yours
    /// to zeroize.
    pub fn seed(&self) -> &[u8; KEY_LEN] {
        self.signing.as_bytes()
    }

    /// The public half.
    pub fn public(&self) -> PublicKey {
        self.public
    }

    /// The X25519 secret key for sealed boxes, equal to libsodium's
    /// `crypto_sign_ed25519_sk_to_curve25519`: `clamp(SHA-512(seed)[0..32])`.
    pub fn to_x25519_secret(&self) -> Zeroizing<[u8; KEY_LEN]> {
        let mut h: [u8; 64] = Sha512::digest(self.seed()).into();
        let mut lower = [0u8; KEY_LEN];
        lower.copy_from_slice(&h[..KEY_LEN]);
        h.zeroize();
        let out = Zeroizing::new(clamp_integer(lower));
        lower.zeroize();
        out
    }

    pub(super) fn signing_key(&self) -> &SigningKey {
        &self.signing
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdentityKey")
            .field("public", &self.public.fingerprint_hex())
            .field("seed", &"<redacted>")
            .finish()
    }
}

/// A validated Ed25519 public key (see the module documentation for the
/// checks). Compares, hashes and orders by its 32 bytes.
#[derive(Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; KEY_LEN],
    verifying: VerifyingKey,
}

impl PublicKey {
    /// Parses and validates a 32-byte Ed25519 public key.
    ///
    /// Refused with [`CryptoError::InvalidPublicKey`]: encodings that do not
    /// decompress, non-canonical encodings (including a negative zero
    /// x-coordinate), points of small order (the eight torsion points,
    /// identity included), and points outside the prime-order subgroup.
    pub fn from_bytes(bytes: &[u8; KEY_LEN]) -> Result<PublicKey, CryptoError> {
        let point: EdwardsPoint =
            CompressedEdwardsY(*bytes)
                .decompress()
                .ok_or(CryptoError::InvalidPublicKey {
                    reason: "not a curve point",
                })?;
        if point.compress().to_bytes() != *bytes {
            return Err(CryptoError::InvalidPublicKey {
                reason: "non-canonical encoding",
            });
        }
        if point.is_small_order() {
            return Err(CryptoError::InvalidPublicKey {
                reason: "small order",
            });
        }
        if !point.is_torsion_free() {
            return Err(CryptoError::InvalidPublicKey {
                reason: "not in the prime-order subgroup",
            });
        }
        let verifying = VerifyingKey::from_bytes(bytes).map_err(|_| {
            // Unreachable after the checks above; kept as an error, not a panic.
            CryptoError::InvalidPublicKey {
                reason: "not a curve point",
            }
        })?;
        Ok(PublicKey {
            bytes: *bytes,
            verifying,
        })
    }

    /// Parses a public key from a slice, which must be exactly 32 bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<PublicKey, CryptoError> {
        let arr: &[u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|_| CryptoError::InvalidPublicKey {
                reason: "not 32 bytes",
            })?;
        PublicKey::from_bytes(arr)
    }

    /// The 32-byte encoding.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.bytes
    }

    /// The 32-byte encoding, borrowed.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// SHA-256 of the 32 key bytes: what `_cmtpkey` TXT records and users
    /// compare.
    pub fn fingerprint(&self) -> [u8; 32] {
        Sha256::digest(self.bytes).into()
    }

    /// [`fingerprint`](Self::fingerprint) as 64 lowercase hex characters.
    pub fn fingerprint_hex(&self) -> String {
        hex::encode(self.fingerprint())
    }

    /// The X25519 (Montgomery u) form for sealed boxes, equal to libsodium's
    /// `crypto_sign_ed25519_pk_to_curve25519`: `u = (1 + y) / (1 - y)`.
    pub fn to_x25519(&self) -> [u8; KEY_LEN] {
        self.verifying.to_montgomery().to_bytes()
    }

    pub(super) fn verifying_key(&self) -> &VerifyingKey {
        &self.verifying
    }
}

impl PartialEq for PublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Eq for PublicKey {}

impl core::hash::Hash for PublicKey {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.bytes.hash(state);
    }
}

impl PartialOrd for PublicKey {
    fn partial_cmp(&self, other: &Self) -> Option<core::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for PublicKey {
    fn cmp(&self, other: &Self) -> core::cmp::Ordering {
        self.bytes.cmp(&other.bytes)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", hex::encode(self.bytes))
    }
}

impl TryFrom<&[u8; KEY_LEN]> for PublicKey {
    type Error = CryptoError;

    fn try_from(bytes: &[u8; KEY_LEN]) -> Result<Self, Self::Error> {
        PublicKey::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
    use curve25519_dalek::constants::EIGHT_TORSION;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    /// The eight small-order points, as their canonical encodings.
    pub(crate) fn small_order_encodings() -> Vec<[u8; 32]> {
        EIGHT_TORSION
            .iter()
            .map(|p| p.compress().to_bytes())
            .collect()
    }

    #[test]
    fn generated_key_round_trips_through_seed_and_bytes() {
        let mut rng = StdRng::seed_from_u64(1);
        let k = IdentityKey::generate(&mut rng);
        let k2 = IdentityKey::from_seed(k.seed());
        assert_eq!(k.public(), k2.public());
        let pk = PublicKey::from_bytes(&k.public().to_bytes()).unwrap();
        assert_eq!(pk, k.public());
        assert_eq!(pk.fingerprint_hex().len(), 64);
        assert_eq!(
            pk.fingerprint_hex(),
            pk.fingerprint_hex().to_ascii_lowercase()
        );
        assert_eq!(
            pk.fingerprint(),
            <[u8; 32]>::from(Sha256::digest(pk.to_bytes()))
        );
    }

    #[test]
    fn small_order_points_are_refused() {
        let encs = small_order_encodings();
        assert_eq!(encs.len(), 8);
        // identity 01 00..00 is among them
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(encs.contains(&identity));
        for e in encs {
            assert!(
                matches!(
                    PublicKey::from_bytes(&e),
                    Err(CryptoError::InvalidPublicKey { .. })
                ),
                "{}",
                hex::encode(e)
            );
        }
        // all-zero: y = 0 is a point of order 4
        assert!(PublicKey::from_bytes(&[0u8; 32]).is_err());
    }

    #[test]
    fn non_canonical_encodings_are_refused() {
        // y = p + 1 (non-canonical identity), y = p + 2, ...: all y >= p
        let p_minus_1: [u8; 32] = {
            let mut b = [0xffu8; 32];
            b[0] = 0xec;
            b[31] = 0x7f;
            b
        };
        for k in 0u8..=18 {
            let mut b = p_minus_1;
            b[0] = 0xed + k; // p + k
            assert!(PublicKey::from_bytes(&b).is_err(), "p+{k}");
            b[31] |= 0x80;
            assert!(PublicKey::from_bytes(&b).is_err(), "p+{k} with sign");
        }
        // negative zero: identity with the sign bit set
        let mut neg_zero = [0u8; 32];
        neg_zero[0] = 1;
        neg_zero[31] = 0x80;
        assert!(PublicKey::from_bytes(&neg_zero).is_err());
        // the base point with its sign bit flipped decodes to -B: canonical,
        // fine; but B + torsion is refused as not torsion-free
        let b_plus_t = (ED25519_BASEPOINT_POINT + EIGHT_TORSION[1])
            .compress()
            .to_bytes();
        assert!(matches!(
            PublicKey::from_bytes(&b_plus_t),
            Err(CryptoError::InvalidPublicKey {
                reason: "not in the prime-order subgroup"
            })
        ));
        assert!(PublicKey::from_bytes(&ED25519_BASEPOINT_POINT.compress().to_bytes()).is_ok());
    }

    #[test]
    fn x25519_secret_is_clamped_and_matches_public() {
        let mut rng = StdRng::seed_from_u64(2);
        for _ in 0..16 {
            let k = IdentityKey::generate(&mut rng);
            let sk = k.to_x25519_secret();
            assert_eq!(sk[0] & 7, 0);
            assert_eq!(sk[31] & 0x80, 0);
            assert_eq!(sk[31] & 0x40, 0x40);
            let pk = curve25519_dalek::MontgomeryPoint::mul_base_clamped(*sk).to_bytes();
            assert_eq!(pk, k.public().to_x25519());
        }
    }

    #[test]
    fn debug_redacts_the_seed() {
        let k = IdentityKey::from_seed(&[0x42; 32]);
        let s = format!("{k:?}");
        assert!(s.contains("redacted"));
        assert!(!s.contains(&hex::encode([0x42u8; 32])));
        assert!(!s.contains("66, 66"));
    }
}
