//! Domain-separated Ed25519 signatures (PROTOCOL.md §2).
//!
//! Every signature in CMTP is pure Ed25519 (RFC 8032) over `tag || data`,
//! where `tag` is one of the fixed ASCII strings of [`SignatureTag`], each
//! ending in NUL, so that a signature made for one purpose never verifies
//! for another. Verification is strict (`verify_strict`: canonical `S`,
//! no small-order `R` or key); `S` is checked against the group order here
//! too, since Cargo's feature unification may build ed25519-dalek with
//! `legacy_compatibility` (akd_core asks for it), which relaxes that check.

use ed25519_dalek::Signature;

use super::CryptoError;
use super::keys::{IdentityKey, PublicKey};

/// Length of an Ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// The domain-separation tags, one per kind of signed statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureTag {
    /// `"CMTP-v1 reply\0"`: a server's signed reply to a command.
    Reply,
    /// `"CMTP-v1 key-statement\0"`: a key statement (KEYREQUEST answer).
    KeyStatement,
    /// `"CMTP-v1 key-rotation\0"`: a server key rotation statement, signed
    /// by the old key.
    KeyRotation,
    /// `"CMTP-v1 domain-signature\0"`: the source domain's message trailer.
    DomainSignature,
    /// `"CMTP-v1 sender-signature\0"`: the sender's signature inside the
    /// sealed body.
    SenderSignature,
    /// `"CMTP-v1 xzibit\0"`: the server's signature of a released xzibit.
    Xzibit,
    /// `"CMTP-v2 register\0"`: proof of possession at registration.
    Register,
    /// `"CMTP-v2 key-login\0"`: a device's login with its identity key.
    KeyLogin,
    /// `"CMTP-v2 kt-head\0"`: a domain's key directory epoch head
    /// (PROTOCOL.md §20.2).
    KtHead,
    /// `"CMTP-v2 kt-cosignature\0"`: a witness's cosignature of another
    /// domain's epoch head (§20.3).
    KtCosignature,
}

impl SignatureTag {
    /// Every tag, in declaration order.
    pub const ALL: [SignatureTag; 10] = [
        SignatureTag::Reply,
        SignatureTag::KeyStatement,
        SignatureTag::KeyRotation,
        SignatureTag::DomainSignature,
        SignatureTag::SenderSignature,
        SignatureTag::Xzibit,
        SignatureTag::Register,
        SignatureTag::KeyLogin,
        SignatureTag::KtHead,
        SignatureTag::KtCosignature,
    ];

    /// The tag's bytes, NUL included.
    pub const fn as_bytes(self) -> &'static [u8] {
        match self {
            SignatureTag::Reply => b"CMTP-v1 reply\0",
            SignatureTag::KeyStatement => b"CMTP-v1 key-statement\0",
            SignatureTag::KeyRotation => b"CMTP-v1 key-rotation\0",
            SignatureTag::DomainSignature => b"CMTP-v1 domain-signature\0",
            SignatureTag::SenderSignature => b"CMTP-v1 sender-signature\0",
            SignatureTag::Xzibit => b"CMTP-v1 xzibit\0",
            SignatureTag::Register => b"CMTP-v2 register\0",
            SignatureTag::KeyLogin => b"CMTP-v2 key-login\0",
            SignatureTag::KtHead => b"CMTP-v2 kt-head\0",
            SignatureTag::KtCosignature => b"CMTP-v2 kt-cosignature\0",
        }
    }
}

/// The signed message: `tag || data[0] || data[1] || ...`.
///
/// Pure Ed25519 hashes the message twice, so it needs it whole; all signed
/// data in CMTP is small (hashes and short fields), so one allocation is fine.
fn signed_message(tag: SignatureTag, data: &[&[u8]]) -> Vec<u8> {
    let t = tag.as_bytes();
    let len = t.len() + data.iter().map(|d| d.len()).sum::<usize>();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(t);
    for d in data {
        msg.extend_from_slice(d);
    }
    msg
}

impl IdentityKey {
    /// Signs `tag || data[0] || data[1] || ...` (pure Ed25519, deterministic).
    pub fn sign(&self, tag: SignatureTag, data: &[&[u8]]) -> [u8; SIGNATURE_LEN] {
        use ed25519_dalek::Signer;
        let msg = signed_message(tag, data);
        self.signing_key().sign(&msg).to_bytes()
    }
}

impl PublicKey {
    /// Verifies `sig` over `tag || data[0] || data[1] || ...` with
    /// `verify_strict`. Fails with [`CryptoError::BadSignature`].
    pub fn verify(
        &self,
        tag: SignatureTag,
        data: &[&[u8]],
        sig: &[u8; SIGNATURE_LEN],
    ) -> Result<(), CryptoError> {
        // S must be below the group order whatever features ed25519-dalek
        // was built with: a crate elsewhere in the build (akd_core) turns on
        // its `legacy_compatibility`, which lets `verify_strict` take an
        // unreduced S (a malleable signature).
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        if bool::from(curve25519_dalek::Scalar::from_canonical_bytes(s).is_none()) {
            return Err(CryptoError::BadSignature);
        }
        let msg = signed_message(tag, data);
        let sig = Signature::from_bytes(sig);
        self.verifying_key()
            .verify_strict(&msg, &sig)
            .map_err(|_| CryptoError::BadSignature)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn tags_are_exact() {
        let expected: [&[u8]; 10] = [
            b"CMTP-v1 reply\0",
            b"CMTP-v1 key-statement\0",
            b"CMTP-v1 key-rotation\0",
            b"CMTP-v1 domain-signature\0",
            b"CMTP-v1 sender-signature\0",
            b"CMTP-v1 xzibit\0",
            b"CMTP-v2 register\0",
            b"CMTP-v2 key-login\0",
            b"CMTP-v2 kt-head\0",
            b"CMTP-v2 kt-cosignature\0",
        ];
        for (tag, want) in SignatureTag::ALL.iter().zip(expected) {
            assert_eq!(tag.as_bytes(), want);
            assert_eq!(tag.as_bytes().last(), Some(&0));
            assert_eq!(tag.as_bytes().iter().filter(|&&b| b == 0).count(), 1);
        }
    }

    #[test]
    fn sign_verify_round_trip_and_failures() {
        let mut rng = StdRng::seed_from_u64(7);
        let k = IdentityKey::generate(&mut rng);
        let other = IdentityKey::generate(&mut rng);
        let data: [&[u8]; 3] = [b"alice", b"\0", b"example.org"];
        for tag in SignatureTag::ALL {
            let sig = k.sign(tag, &data);
            k.public().verify(tag, &data, &sig).unwrap();
            // parts are concatenated: a different split verifies the same
            k.public()
                .verify(tag, &[b"alice\0example.org"], &sig)
                .unwrap();
            // changed data
            assert_eq!(
                k.public()
                    .verify(tag, &[b"alice", b"\0", b"example.orh"], &sig),
                Err(CryptoError::BadSignature)
            );
            // changed tag
            for t2 in SignatureTag::ALL.into_iter().filter(|t| *t != tag) {
                assert_eq!(
                    k.public().verify(t2, &data, &sig),
                    Err(CryptoError::BadSignature)
                );
            }
            // changed key
            assert_eq!(
                other.public().verify(tag, &data, &sig),
                Err(CryptoError::BadSignature)
            );
            // changed signature bit
            let mut bad = sig;
            bad[10] ^= 1;
            assert!(k.public().verify(tag, &data, &bad).is_err());
        }
    }

    #[test]
    fn non_canonical_s_is_refused() {
        // S + L verifies under lax rules; verify_strict must refuse it.
        let k = IdentityKey::from_seed(&[9; 32]);
        let sig = k.sign(SignatureTag::KeyStatement, &[b"x"]);
        // the group order L, little-endian
        let l: [u8; 32] = [
            0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9,
            0xde, 0x14, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
        ];
        let mut s = [0u8; 32];
        s.copy_from_slice(&sig[32..]);
        // s + l (fits in 256 bits since s < l < 2^253)
        let mut carry = 0u16;
        for i in 0..32 {
            let v = s[i] as u16 + l[i] as u16 + carry;
            s[i] = v as u8;
            carry = v >> 8;
        }
        let mut bad = sig;
        bad[32..].copy_from_slice(&s);
        assert!(
            k.public()
                .verify(SignatureTag::KeyStatement, &[b"x"], &bad)
                .is_err()
        );
    }
}
