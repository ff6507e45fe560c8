//! The xzibit: a user's identity seed sealed under their OPAQUE export key,
//! stored by their server and released only after a successful LOGIN
//! (PROTOCOL.md §11).
//!
//! Wire format, version 1 (integers big-endian):
//!
//! ```text
//! u32 version (= 1) || nonce [24] || u32 ciphertext_len || ciphertext
//! ```
//!
//! with `16 <= ciphertext_len <= 4096` and no trailing bytes.
//!
//! - key = HKDF-SHA512(salt = empty, ikm = export key (64 bytes),
//!   info = `"CMTP-v1 xzibit key"`), 32 bytes;
//! - cipher = XChaCha20-Poly1305 (IETF; as libsodium's
//!   `crypto_aead_xchacha20poly1305_ietf_*`), ciphertext = `c || tag`;
//! - associated data = `"CMTP-v1 xzibit\0" || u32 version || address`, the
//!   address being `user@domain` as given, so a server cannot hand one user's
//!   xzibit to another;
//! - plaintext = `seed [32] || u64 created_at` (unix seconds), followed by
//!   zero or more reserved bytes that are ignored on open and written as none.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{Key, XChaCha20Poly1305, XNonce};
use hkdf::Hkdf;
use rand_core::{CryptoRng, RngCore};
use sha2::Sha512;
use zeroize::Zeroizing;

use super::CryptoError;
use super::keys::{IdentityKey, KEY_LEN};

/// The only xzibit version this implementation writes and reads.
pub const XZIBIT_VERSION: u32 = 1;
/// Length of the XChaCha20-Poly1305 nonce.
pub const NONCE_LEN: usize = 24;
/// Length of the Poly1305 tag, hence the minimum ciphertext length.
pub const MIN_CIPHERTEXT_LEN: usize = 16;
/// Maximum ciphertext length accepted on decode.
pub const MAX_CIPHERTEXT_LEN: usize = 4096;
/// Length of the fixed part of the encoding (version, nonce, length field).
pub const HEADER_LEN: usize = 4 + NONCE_LEN + 4;
/// Length of an OPAQUE export key.
pub const EXPORT_KEY_LEN: usize = 64;
/// HKDF `info` for the xzibit key.
pub const KDF_INFO: &[u8] = b"CMTP-v1 xzibit key";
/// Prefix of the associated data (the same string as the xzibit signature
/// tag, NUL included).
pub const AD_PREFIX: &[u8] = b"CMTP-v1 xzibit\0";
/// Length of a version-1 plaintext as written: seed and creation time.
pub const PLAINTEXT_V1_LEN: usize = KEY_LEN + 8;

/// An encoded-or-decoded xzibit: version, nonce and ciphertext. Not secret
/// (it is encrypted), but it is what an offline password guess is tested
/// against, so servers release it only after LOGIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Xzibit {
    version: u32,
    nonce: [u8; NONCE_LEN],
    ciphertext: Vec<u8>,
}

impl Xzibit {
    /// Seals `identity`'s seed and `created_at` for `address` (`user@domain`)
    /// under a key derived from the OPAQUE `export_key`, with a random nonce.
    pub fn seal(
        export_key: &[u8; EXPORT_KEY_LEN],
        address: &str,
        identity: &IdentityKey,
        created_at: u64,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Xzibit {
        let mut nonce = [0u8; NONCE_LEN];
        rng.fill_bytes(&mut nonce);
        Xzibit::seal_with_nonce(export_key, address, identity, created_at, &nonce)
    }

    /// [`seal`](Self::seal) with a caller-chosen nonce, for test vectors.
    /// Never reuse a nonce under one export key in production.
    pub fn seal_with_nonce(
        export_key: &[u8; EXPORT_KEY_LEN],
        address: &str,
        identity: &IdentityKey,
        created_at: u64,
        nonce: &[u8; NONCE_LEN],
    ) -> Xzibit {
        let key = xzibit_key(export_key);
        let mut pt = Zeroizing::new(Vec::with_capacity(PLAINTEXT_V1_LEN));
        pt.extend_from_slice(identity.seed());
        pt.extend_from_slice(&created_at.to_be_bytes());
        let ad = associated_data(XZIBIT_VERSION, address);
        Xzibit {
            version: XZIBIT_VERSION,
            nonce: *nonce,
            ciphertext: xchacha_seal(&key, nonce, &ad, &pt),
        }
    }

    /// Opens the xzibit for `address` with `export_key`, returning the
    /// identity key and its creation time.
    ///
    /// A wrong export key (wrong password), a different address, or tampering
    /// all give [`CryptoError::XzibitOpenFailed`].
    pub fn open(
        &self,
        export_key: &[u8; EXPORT_KEY_LEN],
        address: &str,
    ) -> Result<(IdentityKey, u64), CryptoError> {
        if self.version != XZIBIT_VERSION {
            return Err(CryptoError::XzibitUnsupportedVersion(self.version));
        }
        let key = xzibit_key(export_key);
        let ad = associated_data(self.version, address);
        let pt = xchacha_open(&key, &self.nonce, &ad, &self.ciphertext)
            .map_err(|_| CryptoError::XzibitOpenFailed)?;
        if pt.len() < PLAINTEXT_V1_LEN {
            return Err(CryptoError::XzibitPlaintextMalformed);
        }
        let mut seed = Zeroizing::new([0u8; KEY_LEN]);
        seed.copy_from_slice(&pt[..KEY_LEN]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&pt[KEY_LEN..PLAINTEXT_V1_LEN]);
        Ok((IdentityKey::from_seed(&seed), u64::from_be_bytes(ts)))
    }

    /// The format version (always [`XZIBIT_VERSION`] for now).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The 24-byte nonce.
    pub fn nonce(&self) -> &[u8; NONCE_LEN] {
        &self.nonce
    }

    /// The ciphertext, tag included.
    pub fn ciphertext(&self) -> &[u8] {
        &self.ciphertext
    }

    /// Length of [`encode`](Self::encode)'s output.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN + self.ciphertext.len()
    }

    /// Appends the wire encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.nonce);
        // ciphertext_len <= MAX_CIPHERTEXT_LEN for every Xzibit that exists:
        // decode checks it and seal writes 56 bytes.
        out.extend_from_slice(&(self.ciphertext.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.ciphertext);
    }

    /// The wire encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.encoded_len());
        self.encode(&mut v);
        v
    }

    /// Decodes the wire encoding. The whole input must be one xzibit: the
    /// length field must equal the remaining bytes exactly.
    pub fn decode(bytes: &[u8]) -> Result<Xzibit, CryptoError> {
        if bytes.len() < HEADER_LEN {
            return Err(CryptoError::XzibitMalformed {
                reason: "shorter than the header",
            });
        }
        let (v, rest) = bytes.split_at(4);
        let version = u32::from_be_bytes([v[0], v[1], v[2], v[3]]);
        if version != XZIBIT_VERSION {
            return Err(CryptoError::XzibitUnsupportedVersion(version));
        }
        let (n, rest) = rest.split_at(NONCE_LEN);
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(n);
        let (l, ct) = rest.split_at(4);
        let len = u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize;
        if len < MIN_CIPHERTEXT_LEN {
            return Err(CryptoError::XzibitMalformed {
                reason: "ciphertext shorter than a tag",
            });
        }
        if len > MAX_CIPHERTEXT_LEN {
            return Err(CryptoError::XzibitMalformed {
                reason: "ciphertext longer than 4096 bytes",
            });
        }
        if ct.len() < len {
            return Err(CryptoError::XzibitMalformed {
                reason: "truncated ciphertext",
            });
        }
        if ct.len() > len {
            return Err(CryptoError::XzibitMalformed {
                reason: "trailing bytes",
            });
        }
        Ok(Xzibit {
            version,
            nonce,
            ciphertext: ct.to_vec(),
        })
    }
}

/// The xzibit key: HKDF-SHA512(salt = empty, ikm = `export_key`,
/// info = [`KDF_INFO`]), 32 bytes.
pub fn xzibit_key(export_key: &[u8; EXPORT_KEY_LEN]) -> Zeroizing<[u8; 32]> {
    let hk = Hkdf::<Sha512>::new(None, export_key);
    let mut okm = Zeroizing::new([0u8; 32]);
    hk.expand(KDF_INFO, &mut okm[..])
        .expect("32 bytes is a valid HKDF-SHA512 output length");
    okm
}

/// The associated data: [`AD_PREFIX`] `|| u32 version (BE) || address`.
pub fn associated_data(version: u32, address: &str) -> Vec<u8> {
    let mut ad = Vec::with_capacity(AD_PREFIX.len() + 4 + address.len());
    ad.extend_from_slice(AD_PREFIX);
    ad.extend_from_slice(&version.to_be_bytes());
    ad.extend_from_slice(address.as_bytes());
    ad
}

/// XChaCha20-Poly1305 (IETF) encryption, `c || tag`; equal to libsodium's
/// `crypto_aead_xchacha20poly1305_ietf_encrypt`. Exposed for interop tests.
pub fn xchacha_seal(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Vec<u8> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .encrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: plaintext,
                aad,
            },
        )
        .expect("XChaCha20-Poly1305 encryption fails only beyond 2^38 bytes")
}

/// XChaCha20-Poly1305 (IETF) decryption of `c || tag`; fails with
/// [`CryptoError::DecryptionFailed`] when the tag does not verify.
pub fn xchacha_open(
    key: &[u8; 32],
    nonce: &[u8; NONCE_LEN],
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = XChaCha20Poly1305::new(Key::from_slice(key));
    cipher
        .decrypt(
            XNonce::from_slice(nonce),
            Payload {
                msg: ciphertext,
                aad,
            },
        )
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::DecryptionFailed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    fn setup() -> ([u8; 64], IdentityKey, StdRng) {
        let mut rng = StdRng::seed_from_u64(21);
        let mut ek = [0u8; 64];
        rng.fill_bytes(&mut ek);
        let id = IdentityKey::generate(&mut rng);
        (ek, id, rng)
    }

    #[test]
    fn round_trip() {
        let (ek, id, mut rng) = setup();
        let x = Xzibit::seal(&ek, "alice@example.org", &id, 1_760_000_000, &mut rng);
        assert_eq!(x.ciphertext().len(), PLAINTEXT_V1_LEN + 16);
        let (back, ts) = x.open(&ek, "alice@example.org").unwrap();
        assert_eq!(back.public(), id.public());
        assert_eq!(back.seed(), id.seed());
        assert_eq!(ts, 1_760_000_000);
    }

    #[test]
    fn wrong_address_or_key_fails() {
        let (ek, id, mut rng) = setup();
        let x = Xzibit::seal(&ek, "alice@example.org", &id, 5, &mut rng);
        assert_eq!(
            x.open(&ek, "bob@example.org").unwrap_err(),
            CryptoError::XzibitOpenFailed
        );
        assert_eq!(
            x.open(&ek, "alice@example.net").unwrap_err(),
            CryptoError::XzibitOpenFailed
        );
        let mut ek2 = ek;
        ek2[63] ^= 1;
        assert_eq!(
            x.open(&ek2, "alice@example.org").unwrap_err(),
            CryptoError::XzibitOpenFailed
        );
    }

    #[test]
    fn encode_decode_round_trip() {
        let (ek, id, mut rng) = setup();
        let x = Xzibit::seal(&ek, "alice@example.org", &id, 99, &mut rng);
        let mut buf = vec![0xAA]; // encode appends
        x.encode(&mut buf);
        assert_eq!(buf.len(), 1 + x.encoded_len());
        assert_eq!(&buf[1..], &x.to_bytes()[..]);
        let y = Xzibit::decode(&buf[1..]).unwrap();
        assert_eq!(x, y);
        assert_eq!(&buf[1..5], &[0, 0, 0, 1]);
        assert_eq!(&buf[5..29], x.nonce());
        assert_eq!(&buf[29..33], &56u32.to_be_bytes());
        assert_eq!(y.open(&ek, "alice@example.org").unwrap().1, 99);
    }

    #[test]
    fn decode_errors() {
        let (ek, id, mut rng) = setup();
        let enc = Xzibit::seal(&ek, "a@b", &id, 1, &mut rng).to_bytes();
        // every truncation fails
        for n in 0..enc.len() {
            assert!(
                matches!(
                    Xzibit::decode(&enc[..n]),
                    Err(CryptoError::XzibitMalformed { .. })
                ),
                "{n}"
            );
        }
        // trailing byte
        let mut long = enc.clone();
        long.push(0);
        assert_eq!(
            Xzibit::decode(&long),
            Err(CryptoError::XzibitMalformed {
                reason: "trailing bytes"
            })
        );
        // bad version
        let mut v2 = enc.clone();
        v2[3] = 2;
        assert_eq!(
            Xzibit::decode(&v2),
            Err(CryptoError::XzibitUnsupportedVersion(2))
        );
        // oversize length field, with the bytes present
        let mut big = enc[..HEADER_LEN].to_vec();
        big[28..32].copy_from_slice(&4097u32.to_be_bytes());
        big.resize(HEADER_LEN + 4097, 0);
        assert!(matches!(
            Xzibit::decode(&big),
            Err(CryptoError::XzibitMalformed { .. })
        ));
        // huge length field
        let mut huge = enc.clone();
        huge[28..32].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Xzibit::decode(&huge).is_err());
        // under a tag
        let mut tiny = enc[..HEADER_LEN].to_vec();
        tiny[28..32].copy_from_slice(&15u32.to_be_bytes());
        tiny.resize(HEADER_LEN + 15, 0);
        assert!(Xzibit::decode(&tiny).is_err());
        // exactly 4096 and exactly 16 decode (and fail to open)
        for n in [16usize, 4096] {
            let mut ok = enc[..HEADER_LEN].to_vec();
            ok[28..32].copy_from_slice(&(n as u32).to_be_bytes());
            ok.resize(HEADER_LEN + n, 0);
            let x = Xzibit::decode(&ok).unwrap();
            assert_eq!(
                x.open(&ek, "a@b").unwrap_err(),
                CryptoError::XzibitOpenFailed
            );
        }
    }

    #[test]
    fn reserved_trailing_plaintext_is_ignored_and_short_plaintext_refused() {
        let (ek, id, _) = setup();
        let key = xzibit_key(&ek);
        let nonce = [3u8; NONCE_LEN];
        let ad = associated_data(1, "a@b");
        let mut pt = id.seed().to_vec();
        pt.extend_from_slice(&7u64.to_be_bytes());
        pt.extend_from_slice(b"address book, later");
        let x = Xzibit {
            version: 1,
            nonce,
            ciphertext: xchacha_seal(&key, &nonce, &ad, &pt),
        };
        let (k, ts) = x.open(&ek, "a@b").unwrap();
        assert_eq!((k.public(), ts), (id.public(), 7));
        let short = Xzibit {
            version: 1,
            nonce,
            ciphertext: xchacha_seal(&key, &nonce, &ad, &pt[..39]),
        };
        assert_eq!(
            short.open(&ek, "a@b").unwrap_err(),
            CryptoError::XzibitPlaintextMalformed
        );
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics_and_round_trips(bytes in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 0..200)) {
            if let Ok(x) = Xzibit::decode(&bytes) {
                proptest::prop_assert_eq!(x.to_bytes(), bytes);
            }
        }

        #[test]
        fn valid_header_any_body(nonce in proptest::arbitrary::any::<[u8; 24]>(), body in proptest::collection::vec(proptest::arbitrary::any::<u8>(), 16..300)) {
            let mut enc = 1u32.to_be_bytes().to_vec();
            enc.extend_from_slice(&nonce);
            enc.extend_from_slice(&(body.len() as u32).to_be_bytes());
            enc.extend_from_slice(&body);
            let x = Xzibit::decode(&enc).unwrap();
            proptest::prop_assert_eq!(x.to_bytes(), enc);
            proptest::prop_assert_eq!(x.open(&[0u8; 64], "a@b").unwrap_err(), CryptoError::XzibitOpenFailed);
        }
    }
}
