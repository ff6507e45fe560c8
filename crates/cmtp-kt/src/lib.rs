//! Key transparency for CMTP (PROTOCOL.md §20): where akd, Meta's
//! auditable key directory, meets the rest of the code.
//!
//! `cmtp-proto::kt` holds the protocol's own structures (epoch heads,
//! cosignatures, proofs of misbehaviour) and carries akd's proofs as opaque
//! bytes. This crate gives those bytes their meaning:
//!
//! - always: [`verify_lookup`] and [`verify_history`] check akd's lookup and
//!   history proofs against a head (`akd_core` only, for clients);
//! - with the feature `directory`: [`directory::KtDirectory`], a domain's
//!   directory on akd over any [`cmtp_store::KtStore`] backend, and
//!   [`directory::verify_audit`], a witness's check of an append-only proof.
//!
//! The directory uses akd's `ExperimentalConfiguration` with the domain
//! label [`cmtp_proto::kt::AKD_DOMAIN_LABEL`], so its hashes are CMTP's
//! own; labels are `account@domain` and values [`cmtp_proto::kt::key_value`].
//!
//! ```
//! use cmtp_proto::kt::EpochHead;
//! // A proof that does not parse is refused, whatever the head.
//! let head = EpochHead { domain: "a.example".parse().unwrap(), epoch: 1, root: [0; 32],
//!     vrf_key: [0; 32], previous: [0; 32], time: 0 };
//! assert!(cmtp_kt::verify_lookup(&head, &"bob@a.example".parse().unwrap(), b"junk").is_err());
//! ```
#![forbid(unsafe_code)]

use akd_core::AkdLabel;
use akd_core::proto::specs::types as pb;
use akd_core::verify::HistoryVerificationParams;
use akd_core::verify::history::HistoryParams;
use cmtp_proto::kt::{EpochHead, label};
use cmtp_proto::names::Address;
use protobuf::Message;
use thiserror::Error;

#[cfg(feature = "directory")]
pub mod directory;

/// The akd domain label of CMTP's directories.
#[derive(Clone, Debug)]
pub struct CmtpLabel;

impl akd_core::DomainLabel for CmtpLabel {
    fn domain_label() -> &'static [u8] {
        cmtp_proto::kt::AKD_DOMAIN_LABEL
    }
}

/// The akd configuration of CMTP's directories.
pub type Config = akd_core::ExperimentalConfiguration<CmtpLabel>;

/// Why a proof was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ProofError {
    /// The bytes are not a proof of the expected kind.
    #[error("malformed proof: {0}")]
    Malformed(String),
    /// The proof does not verify against the head.
    #[error("the proof does not verify against the epoch head: {0}")]
    Invalid(String),
    /// The directory could not produce or store something (server side).
    #[error("key directory: {0}")]
    Directory(String),
}

/// What a verified lookup proof says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proven {
    /// The epoch at which the value became current.
    pub since_epoch: u64,
    /// The label's version (how many values it has had).
    pub version: u64,
    /// The value ([`cmtp_proto::kt::key_value`] of the key).
    pub value: Vec<u8>,
}

fn root_and_key(head: &EpochHead) -> ([u8; 32], [u8; 32]) {
    (head.root, head.vrf_key)
}

/// Encodes a lookup proof (akd's protobuf encoding, `types.proto`).
pub fn encode_lookup(proof: &akd_core::LookupProof) -> Vec<u8> {
    pb::LookupProof::from(proof)
        .write_to_bytes()
        .expect("protobuf encoding of a lookup proof")
}

/// Encodes a history proof.
pub fn encode_history(proof: &akd_core::HistoryProof) -> Vec<u8> {
    pb::HistoryProof::from(proof)
        .write_to_bytes()
        .expect("protobuf encoding of a history proof")
}

fn decode<P: Message, T>(
    bytes: &[u8],
    convert: impl FnOnce(&P) -> Result<T, String>,
) -> Result<T, ProofError> {
    if bytes.len() > cmtp_proto::kt::MAX_PROOF {
        return Err(ProofError::Malformed("proof over its size limit".into()));
    }
    let p = P::parse_from_bytes(bytes).map_err(|e| ProofError::Malformed(e.to_string()))?;
    convert(&p).map_err(ProofError::Malformed)
}

/// Checks akd's lookup proof (`proof`, as it travels in a `KEYPROOF`
/// answer) of `address`'s label against `head`, and returns what it proves.
/// The caller checks the head's signature and the value.
pub fn verify_lookup(
    head: &EpochHead,
    address: &Address,
    proof: &[u8],
) -> Result<Proven, ProofError> {
    let proof: akd_core::LookupProof = decode(proof, |p: &pb::LookupProof| {
        akd_core::LookupProof::try_from(p).map_err(|e| e.to_string())
    })?;
    let (root, vrf) = root_and_key(head);
    let r = akd_core::verify::lookup_verify::<Config>(
        &vrf,
        root,
        head.epoch,
        AkdLabel(label(address)),
        proof,
    )
    .map_err(|e| ProofError::Invalid(e.to_string()))?;
    Ok(Proven {
        since_epoch: r.epoch,
        version: r.version,
        value: r.value.0,
    })
}

/// Checks akd's complete history proof of `address`'s label against
/// `head`, and returns every value the label has had, newest first.
pub fn verify_history(
    head: &EpochHead,
    address: &Address,
    proof: &[u8],
) -> Result<Vec<Proven>, ProofError> {
    let proof: akd_core::HistoryProof = decode(proof, |p: &pb::HistoryProof| {
        akd_core::HistoryProof::try_from(p).map_err(|e| e.to_string())
    })?;
    let (root, vrf) = root_and_key(head);
    let results = akd_core::verify::key_history_verify::<Config>(
        &vrf,
        root,
        head.epoch,
        AkdLabel(label(address)),
        proof,
        HistoryVerificationParams::Default {
            history_params: HistoryParams::Complete,
        },
    )
    .map_err(|e| ProofError::Invalid(e.to_string()))?;
    Ok(results
        .into_iter()
        .map(|r| Proven {
            since_epoch: r.epoch,
            version: r.version,
            value: r.value.0,
        })
        .collect())
}
