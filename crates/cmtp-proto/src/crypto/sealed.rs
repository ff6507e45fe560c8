//! Sealed boxes, byte-compatible with libsodium's `crypto_box_seal`
//! (PROTOCOL.md §8.4).
//!
//! A sealed box to the X25519 public key `pk` is
//! `epk || XSalsa20-Poly1305(key, nonce, plaintext)` (tag first, as
//! `crypto_box_easy`), where `(esk, epk)` is a fresh X25519 key pair,
//! `key = HSalsa20(X25519(esk, pk), 0^16)` and
//! `nonce = BLAKE2b-192(epk || pk)`. Overhead: [`SEAL_OVERHEAD`] = 48 bytes.
//!
//! X25519 here is RFC 7748 exactly (clamped scalar, not reduced modulo the
//! group order), as libsodium computes it; like libsodium we refuse a peer
//! key on the small-order blacklist and an all-zero shared secret.
//! (RustCrypto `crypto_box` 0.9.1 reduces the scalar modulo the group order,
//! which differs from libsodium for keys with a torsion component, and accepts
//! an all-zero key; hence this module.)

use blake2::Blake2b;
use blake2::digest::Digest;
use blake2::digest::consts::U24;
use crypto_secretbox::aead::{AeadInPlace, KeyInit};
use crypto_secretbox::{Kdf, Key, Nonce, Tag, XSalsa20Poly1305};
use curve25519_dalek::{EdwardsPoint, MontgomeryPoint};
use rand_core::{CryptoRng, RngCore};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::CryptoError;
use super::keys::{IdentityKey, KEY_LEN, PublicKey};

/// Bytes a sealed box adds to its plaintext: the 32-byte ephemeral public key
/// and the 16-byte Poly1305 tag.
pub const SEAL_OVERHEAD: usize = 48;

/// Length of the Poly1305 tag.
const TAG_LEN: usize = 16;

/// Seals `plaintext` to `recipient`'s identity key (its X25519 form, as
/// libsodium's `crypto_sign_ed25519_pk_to_curve25519`). The result opens with
/// libsodium's `crypto_box_seal_open`.
pub fn seal(
    recipient: &PublicKey,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, CryptoError> {
    seal_with(&SealKey::new(recipient), plaintext, rng)
}

/// A recipient's identity key made ready for sealing, once for any number
/// of boxes: its Edwards point and its X25519 form.
pub struct SealKey {
    edwards: EdwardsPoint,
    x25519: [u8; KEY_LEN],
}

impl SealKey {
    /// Prepares `recipient` (one field inversion).
    pub fn new(recipient: &PublicKey) -> SealKey {
        let edwards = recipient.verifying_key().to_edwards();
        SealKey {
            x25519: edwards.to_montgomery().to_bytes(),
            edwards,
        }
    }
}

/// [`seal`] to a prepared key: the same bytes for the same randomness,
/// computed faster. The X25519 shared secret of the ephemeral secret and
/// the recipient's key is taken on the recipient's Edwards point (the map
/// from the Edwards to the Montgomery form commutes with scalar
/// multiplication, and curve25519-dalek's variable-base multiplication on
/// Edwards points, with AVX2 where the processor has it, costs about half
/// of the Montgomery ladder); the scalar is clamped and not reduced, as in
/// RFC 7748.
pub fn seal_with(
    key: &SealKey,
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, CryptoError> {
    if has_small_order(&key.x25519) {
        return Err(CryptoError::WeakKey);
    }
    let mut esk = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut *esk);
    let epk = MontgomeryPoint::mul_base_clamped(*esk).to_bytes();
    let shared = Zeroizing::new(key.edwards.mul_clamped(*esk).to_montgomery().to_bytes());
    let cipher = cipher_of(&shared)?;
    Ok(encrypt(&cipher, &epk, &key.x25519, plaintext))
}

/// Opens a sealed box with `recipient`'s identity key (its X25519 form, as
/// libsodium's `crypto_sign_ed25519_sk_to_curve25519`).
pub fn open(recipient: &IdentityKey, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    open_with_x25519(&recipient.to_x25519_secret(), ciphertext)
}

/// Seals `plaintext` to a raw X25519 public key; exactly libsodium's
/// `crypto_box_seal`. Refuses a small-order `recipient` with
/// [`CryptoError::WeakKey`].
pub fn seal_to_x25519(
    recipient: &[u8; KEY_LEN],
    plaintext: &[u8],
    rng: &mut (impl RngCore + CryptoRng),
) -> Result<Vec<u8>, CryptoError> {
    let mut esk = Zeroizing::new([0u8; KEY_LEN]);
    rng.fill_bytes(&mut *esk);
    let epk = MontgomeryPoint::mul_base_clamped(*esk).to_bytes();
    let cipher = box_cipher(recipient, &esk)?;
    Ok(encrypt(&cipher, &epk, recipient, plaintext))
}

/// `epk || tag || ciphertext` of a sealed box to `recipient` (X25519 form).
fn encrypt(
    cipher: &XSalsa20Poly1305,
    epk: &[u8; KEY_LEN],
    recipient: &[u8; KEY_LEN],
    plaintext: &[u8],
) -> Vec<u8> {
    let nonce = seal_nonce(epk, recipient);
    // epk || tag || ciphertext, encrypted in place
    let mut out = Vec::with_capacity(SEAL_OVERHEAD + plaintext.len());
    out.extend_from_slice(epk);
    out.extend_from_slice(&[0u8; TAG_LEN]);
    out.extend_from_slice(plaintext);
    let tag = cipher
        .encrypt_in_place_detached(&nonce, b"", &mut out[SEAL_OVERHEAD..])
        .expect("XSalsa20-Poly1305 without associated data cannot fail");
    out[KEY_LEN..SEAL_OVERHEAD].copy_from_slice(&tag);
    out
}

/// Opens a sealed box with a raw X25519 secret key; exactly libsodium's
/// `crypto_box_seal_open` with the public key derived from `secret`.
///
/// Errors: [`CryptoError::CiphertextTooShort`] under 48 bytes,
/// [`CryptoError::WeakKey`] for a small-order ephemeral key,
/// [`CryptoError::DecryptionFailed`] when the tag does not verify.
pub fn open_with_x25519(
    secret: &[u8; KEY_LEN],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if ciphertext.len() < SEAL_OVERHEAD {
        return Err(CryptoError::CiphertextTooShort {
            len: ciphertext.len(),
            min: SEAL_OVERHEAD,
        });
    }
    let (epk, rest) = ciphertext.split_at(KEY_LEN);
    let (tag, body) = rest.split_at(TAG_LEN);
    let epk: &[u8; KEY_LEN] = epk.try_into().map_err(|_| CryptoError::DecryptionFailed)?;
    let pk = MontgomeryPoint::mul_base_clamped(*secret).to_bytes();
    let cipher = box_cipher(epk, secret)?;
    let nonce = seal_nonce(epk, &pk);
    // the tag is checked before anything is decrypted
    let mut out = Zeroizing::new(body.to_vec());
    cipher
        .decrypt_in_place_detached(&nonce, b"", &mut out, Tag::from_slice(tag))
        .map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(out)
}

/// `crypto_box_beforenm`: X25519 then HSalsa20, refusing weak peer keys.
fn box_cipher(
    peer: &[u8; KEY_LEN],
    secret: &[u8; KEY_LEN],
) -> Result<XSalsa20Poly1305, CryptoError> {
    if has_small_order(peer) {
        return Err(CryptoError::WeakKey);
    }
    let shared = Zeroizing::new(MontgomeryPoint(*peer).mul_clamped(*secret).to_bytes());
    cipher_of(&shared)
}

/// HSalsa20 of an X25519 shared secret, refusing the all-zero one.
fn cipher_of(shared: &[u8; KEY_LEN]) -> Result<XSalsa20Poly1305, CryptoError> {
    if bool::from(shared.ct_eq(&[0u8; KEY_LEN])) {
        return Err(CryptoError::WeakKey);
    }
    let key: Zeroizing<Key> = Zeroizing::new(XSalsa20Poly1305::kdf(
        Key::from_slice(&shared[..]),
        &Default::default(),
    ));
    Ok(XSalsa20Poly1305::new(&key))
}

/// `BLAKE2b-192(epk || pk)`, libsodium's sealed-box nonce.
fn seal_nonce(epk: &[u8; KEY_LEN], pk: &[u8; KEY_LEN]) -> Nonce {
    let mut h = Blake2b::<U24>::new();
    h.update(epk);
    h.update(pk);
    h.finalize()
}

/// libsodium's X25519 blacklist (`has_small_order` in `x25519_ref10.c`): the
/// small-order u-coordinates and their non-canonical aliases; the top bit is
/// ignored, as in X25519 decoding.
fn has_small_order(u: &[u8; KEY_LEN]) -> bool {
    const BLACKLIST: [[u8; 32]; 7] = [
        [0; 32],
        [
            1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0,
        ],
        [
            0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f,
            0xc4, 0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16,
            0x5f, 0x49, 0xb8, 0x00,
        ],
        [
            0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83,
            0xef, 0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd,
            0xd0, 0x9f, 0x11, 0x57,
        ],
        [
            0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
        [
            0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
        [
            0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
            0xff, 0xff, 0xff, 0x7f,
        ],
    ];
    let mut masked = *u;
    masked[31] &= 0x7f;
    let mut hit = subtle::Choice::from(0);
    for b in &BLACKLIST {
        hit |= masked.ct_eq(b);
    }
    hit.into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn a_prepared_key_seals_the_same_bytes_as_the_ladder() {
        let mut keys = StdRng::seed_from_u64(5);
        for i in 0..64u64 {
            let k = IdentityKey::generate(&mut keys);
            let pt: Vec<u8> = (0..i * 13).map(|j| j as u8).collect();
            let x25519 = k.public().to_x25519();
            let ladder = seal_to_x25519(&x25519, &pt, &mut StdRng::seed_from_u64(i)).unwrap();
            let edwards = seal_with(
                &SealKey::new(&k.public()),
                &pt,
                &mut StdRng::seed_from_u64(i),
            )
            .unwrap();
            assert_eq!(ladder, edwards, "key {i}");
            assert_eq!(&open(&k, &edwards).unwrap()[..], &pt[..]);
        }
    }

    #[test]
    fn round_trip_all_sizes() {
        let mut rng = StdRng::seed_from_u64(11);
        let k = IdentityKey::generate(&mut rng);
        for len in [0usize, 1, 15, 16, 17, 63, 64, 1000, 70_000] {
            let pt: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let ct = seal(&k.public(), &pt, &mut rng).unwrap();
            assert_eq!(ct.len(), pt.len() + SEAL_OVERHEAD);
            let back = open(&k, &ct).unwrap();
            assert_eq!(&back[..], &pt[..]);
        }
    }

    #[test]
    fn tampered_short_and_misaddressed_fail() {
        let mut rng = StdRng::seed_from_u64(12);
        let k = IdentityKey::generate(&mut rng);
        let other = IdentityKey::generate(&mut rng);
        let ct = seal(&k.public(), b"hello, world", &mut rng).unwrap();
        for i in 0..ct.len() {
            let mut bad = ct.clone();
            bad[i] ^= 0x01;
            assert!(open(&k, &bad).is_err(), "flip at {i}");
        }
        assert_eq!(open(&other, &ct), Err(CryptoError::DecryptionFailed));
        for len in 0..SEAL_OVERHEAD {
            assert_eq!(
                open(&k, &ct[..len]),
                Err(CryptoError::CiphertextTooShort {
                    len,
                    min: SEAL_OVERHEAD
                })
            );
        }
        // a truncated body with the full overhead still present fails the tag
        assert_eq!(
            open(&k, &ct[..ct.len() - 1]),
            Err(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn weak_keys_are_refused() {
        let mut rng = StdRng::seed_from_u64(13);
        let k = IdentityKey::generate(&mut rng);
        let mut u1 = [0u8; 32];
        u1[0] = 1;
        let mut with_top_bit = [0u8; 32];
        with_top_bit[31] = 0x80;
        for weak in [[0u8; 32], u1, with_top_bit] {
            assert_eq!(
                seal_to_x25519(&weak, b"x", &mut rng),
                Err(CryptoError::WeakKey)
            );
            // a box whose ephemeral key is weak
            let mut ct = vec![0u8; SEAL_OVERHEAD + 1];
            ct[..32].copy_from_slice(&weak);
            assert_eq!(open(&k, &ct), Err(CryptoError::WeakKey));
        }
        // every u-coordinate of the Edwards torsion points is weak
        for t in curve25519_dalek::constants::EIGHT_TORSION {
            let u = t.to_montgomery().to_bytes();
            assert!(has_small_order(&u), "{}", hex::encode(u));
            assert_eq!(
                seal_to_x25519(&u, b"x", &mut rng),
                Err(CryptoError::WeakKey)
            );
        }
    }

    #[test]
    fn deterministic_with_seeded_rng() {
        let k = IdentityKey::from_seed(&[5; 32]);
        let a = seal(&k.public(), b"abc", &mut StdRng::seed_from_u64(1)).unwrap();
        let b = seal(&k.public(), b"abc", &mut StdRng::seed_from_u64(1)).unwrap();
        assert_eq!(a, b);
    }

    proptest::proptest! {
        #[test]
        fn open_never_panics(ct in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..120)) {
            let k = IdentityKey::from_seed(&[1; 32]);
            proptest::prop_assert!(open(&k, &ct).is_err());
        }
    }
}
