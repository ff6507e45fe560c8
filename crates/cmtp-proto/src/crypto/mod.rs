//! Crypto system 1 primitives (PROTOCOL.md §2, §8.4, §11, §12).
//!
//! Everything here is deterministic given its inputs: randomness comes only
//! from an `rng` parameter (`rand_core` 0.6 `RngCore + CryptoRng`), time only
//! from a `created_at`/`now` parameter.
//!
//! - [`keys`]: Ed25519 identity keys (users and servers), strict public-key
//!   parsing, fingerprints, and the libsodium-compatible X25519 forms.
//! - [`sign`]: domain-separated Ed25519 signatures (`tag || data`).
//! - [`sealed`]: libsodium `crypto_box_seal` compatible sealed boxes.
//! - [`xzibit`]: the user's identity seed sealed under the OPAQUE export key.
//! - [`opaque`]: OPAQUE (RFC 9807) registration and login behind a small,
//!   byte-oriented API.
//! - [`safety`]: safety numbers two people compare out of band (§9.6).
//!
//! Byte compatibility with libsodium is tested against libsodium itself
//! (`tests/libsodium_interop.rs`) and against the hex vectors in
//! `testdata/crypto/`.

pub mod keys;
pub mod opaque;
pub mod safety;
pub mod sealed;
pub mod sign;
pub mod xzibit;

#[cfg(test)]
mod vectors;

pub use keys::{IdentityKey, PublicKey};
pub use sign::SignatureTag;

/// Every way a crypto operation of this module can fail.
///
/// Messages never contain secret material.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// A 32-byte Ed25519 public key was refused: it does not decompress to a
    /// curve point, is not the canonical encoding of its point, is of small
    /// order, or is not in the prime-order subgroup. `reason` says which.
    #[error("invalid Ed25519 public key: {reason}")]
    InvalidPublicKey {
        /// Which check failed.
        reason: &'static str,
    },
    /// An Ed25519 signature did not verify (strict verification: wrong key,
    /// wrong tag, changed data, or a malformed/malleable signature).
    #[error("signature verification failed")]
    BadSignature,
    /// An X25519 key given to a sealed box is of small order, so the
    /// Diffie-Hellman shared secret would be all zero (libsodium refuses these
    /// too). On seal this is the recipient's key, on open the box's ephemeral
    /// key.
    #[error("X25519 key of small order (all-zero shared secret)")]
    WeakKey,
    /// A sealed box is shorter than [`sealed::SEAL_OVERHEAD`] bytes.
    #[error("sealed box too short: {len} bytes, at least {min} needed")]
    CiphertextTooShort {
        /// Length received.
        len: usize,
        /// Minimum length.
        min: usize,
    },
    /// A sealed box failed authentication: tampered, truncated, or sealed to
    /// another key.
    #[error("sealed box does not open (tampered, or not for this key)")]
    DecryptionFailed,
    /// An encoded xzibit is malformed (truncated, bad length field, trailing
    /// bytes). `reason` says which.
    #[error("malformed xzibit: {reason}")]
    XzibitMalformed {
        /// What is wrong with the encoding.
        reason: &'static str,
    },
    /// An xzibit carries a version this implementation does not know.
    #[error("unsupported xzibit version {0}")]
    XzibitUnsupportedVersion(u32),
    /// An xzibit did not open: wrong export key (i.e. wrong password) or a
    /// different address than the one it was sealed for, or tampering.
    #[error("xzibit does not open (wrong export key or wrong address)")]
    XzibitOpenFailed,
    /// An xzibit opened but its plaintext is shorter than a version-1
    /// plaintext (40 bytes).
    #[error("xzibit plaintext too short")]
    XzibitPlaintextMalformed,
    /// Argon2 parameters are below the required floor, above the sane maxima,
    /// or inconsistent (`m_cost < 8 * p_cost`). `reason` says which.
    #[error("unacceptable Argon2 parameters: {reason}")]
    KsfParams {
        /// Which check failed.
        reason: &'static str,
    },
    /// An OPAQUE message or stored record has the wrong size or does not
    /// deserialize (e.g. a point that is not a valid Ristretto255 encoding).
    /// `what` names the message.
    #[error("malformed OPAQUE {what}")]
    OpaqueMalformed {
        /// Which message or record.
        what: &'static str,
    },
    /// OPAQUE login, client side: the server's answer does not open with
    /// this password. Either the password is wrong or the user is unknown
    /// (the server answers both alike, by design).
    #[error("wrong password or unknown user")]
    WrongPassword,
    /// OPAQUE login, server side: the client's final message (KE3) does not
    /// authenticate; the client did not prove knowledge of the password.
    #[error("OPAQUE client authentication failed")]
    LoginFailed,
    /// OPAQUE: any other protocol failure reported by the OPAQUE library
    /// (a reflected OPRF value, an Argon2 failure such as an allocation
    /// refusal, an internal error). `what` describes it.
    #[error("OPAQUE protocol error: {what}")]
    Opaque {
        /// Description of the failure.
        what: &'static str,
    },
}
