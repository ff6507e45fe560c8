//! Key transparency: the rules of a domain's key directory that every party
//! checks without the directory itself (PROTOCOL.md §20).
//!
//! A domain keeps an auditable key directory (akd) of its users' keys: the
//! label is `account@domain`, the value [`key_value`] of the key its
//! statements state. Every epoch the server publishes the changes and signs
//! an [`EpochHead`] (domain, epoch, root, the directory's VRF key, the
//! previous head's hash, time), so that heads form a hash chain. Peer
//! domains witness it: a witness checks that each new head extends the one
//! it cosigned before (with the directory's append-only proof) and returns a
//! [`Cosignature`]. Two signed heads that contradict each other — two for
//! one epoch, or one whose `previous` is not the hash of the head before —
//! are a [`Misbehaviour`] proof that anyone holding the domain's key can
//! check.
//!
//! This module holds the signed structures, their wire forms and the chain
//! rules ([`HeadTracker`]); the proofs inside the directory (lookup,
//! history, append-only) are akd's and travel here as opaque bytes.
//!
//! ```
//! use cmtp_proto::crypto::IdentityKey;
//! use cmtp_proto::kt::{EpochHead, HeadTracker, Observation, SignedHead};
//! use cmtp_proto::names::Domain;
//! let server = IdentityKey::from_seed(&[1; 32]);
//! let d = Domain::parse("a.example").unwrap();
//! let h1 = EpochHead { domain: d.clone(), epoch: 1, root: [1; 32], vrf_key: [9; 32], previous: [0; 32], time: 10 };
//! let h2 = EpochHead { epoch: 2, root: [2; 32], previous: h1.hash(), time: 20, ..h1.clone() };
//! let (s1, s2) = (SignedHead::sign(&server, h1), SignedHead::sign(&server, h2));
//! let mut seen = HeadTracker::default();
//! assert_eq!(seen.observe(&s2).unwrap(), Observation::First);
//! assert!(seen.observe(&s1).is_err()); // an older epoch: a rollback
//! ```

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::crypto::sign::SIGNATURE_LEN;
use crate::crypto::{CryptoError, IdentityKey, PublicKey, SignatureTag};
use crate::names::{Address, Domain, NameError};
use crate::wire::{Reader, WireError, put_blob32, put_str, put_u32, put_u64};

/// Version of heads and of the `KEYPROOF` answer.
pub const KT_VERSION: u32 = 1;
/// Most cosignatures carried with a head.
pub const MAX_COSIGNATURES: usize = 16;
/// Most epochs one `KTAUDIT` spans.
pub const MAX_AUDIT_SPAN: u64 = 16;
/// Largest lookup or history proof carried in a reply (akd's encoding).
pub const MAX_PROOF: usize = 1 << 20;
/// Largest append-only proof in a `KTAUDIT` reply.
pub const MAX_AUDIT_PROOF: usize = 64 << 20;
/// Largest statement carried in a `KEYPROOF` answer.
pub const MAX_STATEMENT: usize = 1024;
/// The akd domain label of CMTP directories (hashes inside the tree are
/// separated from every other application's).
pub const AKD_DOMAIN_LABEL: &[u8] = b"CMTP-v2 kt";
/// The tag of [`key_value`].
pub const VALUE_TAG: &[u8] = b"CMTP-v2 kt-value\0";

/// Why a transparency structure was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KtError {
    /// The bytes are not well formed.
    #[error("malformed transparency data: {0}")]
    Wire(#[from] WireError),
    /// A name in it is invalid.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    /// A key is invalid or a signature does not verify.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// An unknown version.
    #[error("unsupported version {0}")]
    Version(u32),
    /// An unknown kind or state byte.
    #[error("unknown {what} {value}")]
    Unknown {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u8,
    },
    /// The head is for another domain than expected.
    #[error("head of {got}, expected {expected}")]
    WrongDomain {
        /// The domain in the head.
        got: String,
        /// The domain asked for.
        expected: String,
    },
    /// Two heads that were claimed to contradict each other do not.
    #[error("the two heads do not contradict each other")]
    NoContradiction,
}

/// The directory label of an address: `account@domain`.
pub fn label(address: &Address) -> Vec<u8> {
    address.to_string().into_bytes()
}

/// The directory value for `address` holding `key`: the hash of what a key
/// statement binds (account, domain, key), without its validity period, so
/// that re-issuing a statement is not a change of key.
///
/// `value = H("CMTP-v2 kt-value\0" | account NUL | domain NUL | key[32])`
pub fn key_value(address: &Address, key: &PublicKey) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(VALUE_TAG);
    h.update(address.account.as_str().as_bytes());
    h.update([0]);
    h.update(address.domain.as_str().as_bytes());
    h.update([0]);
    h.update(key.as_bytes());
    h.finalize().into()
}

/// What a domain states about its directory at one epoch.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EpochHead {
    /// The domain whose directory this is.
    pub domain: Domain,
    /// The epoch (0: the empty directory).
    pub epoch: u64,
    /// The directory's root hash at this epoch.
    pub root: [u8; 32],
    /// The directory's VRF public key (labels are hidden behind it).
    pub vrf_key: [u8; 32],
    /// [`EpochHead::hash`] of the head of the epoch before (zeros for epoch 0).
    pub previous: [u8; 32],
    /// When the epoch was published (unix seconds).
    pub time: u64,
}

impl EpochHead {
    /// The signed part: `u32 version | domain NUL | u64 epoch | root[32] |
    /// vrf_key[32] | previous[32] | u64 time`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, KT_VERSION);
        put_str(out, self.domain.as_str());
        put_u64(out, self.epoch);
        out.extend_from_slice(&self.root);
        out.extend_from_slice(&self.vrf_key);
        out.extend_from_slice(&self.previous);
        put_u64(out, self.time);
    }

    /// The encoding as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(160);
        self.encode(&mut out);
        out
    }

    /// The head's hash, `H(encoding)`: what the next head's `previous`
    /// holds and what witnesses cosign.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.to_bytes()).into()
    }

    /// Reads a head (the signed part).
    pub fn read(r: &mut Reader<'_>) -> Result<EpochHead, KtError> {
        let version = r.u32("head version")?;
        if version != KT_VERSION {
            return Err(KtError::Version(version));
        }
        let domain = Domain::parse_canonical(r.string(crate::limits::MAX_FIELD, "domain")?)?;
        Ok(EpochHead {
            domain,
            epoch: r.u64("epoch")?,
            root: r.array("root")?,
            vrf_key: r.array("vrf key")?,
            previous: r.array("previous head")?,
            time: r.u64("time")?,
        })
    }
}

/// An epoch head with the domain server's signature:
/// `head | Sign(server key, "CMTP-v2 kt-head\0" | head)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct SignedHead {
    /// The head.
    pub head: EpochHead,
    /// The domain server's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedHead {
    /// Signs `head` with the domain's server key.
    pub fn sign(server: &IdentityKey, head: EpochHead) -> SignedHead {
        let signature = server.sign(SignatureTag::KtHead, &[&head.to_bytes()]);
        SignedHead { head, signature }
    }

    /// Checks the signature under the domain's key.
    pub fn verify(&self, key: &PublicKey) -> Result<(), KtError> {
        key.verify(
            SignatureTag::KtHead,
            &[&self.head.to_bytes()],
            &self.signature,
        )?;
        Ok(())
    }

    /// Checks the signature and that the head is `domain`'s.
    pub fn verify_for(&self, key: &PublicKey, domain: &Domain) -> Result<(), KtError> {
        if self.head.domain != *domain {
            return Err(KtError::WrongDomain {
                got: self.head.domain.to_string(),
                expected: domain.to_string(),
            });
        }
        self.verify(key)
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.head.encode(out);
        out.extend_from_slice(&self.signature);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(224);
        self.encode(&mut out);
        out
    }

    /// Reads a signed head (not verified).
    pub fn read(r: &mut Reader<'_>) -> Result<SignedHead, KtError> {
        Ok(SignedHead {
            head: EpochHead::read(r)?,
            signature: r.array("head signature")?,
        })
    }

    /// Decodes exactly one signed head.
    pub fn decode(bytes: &[u8]) -> Result<SignedHead, KtError> {
        let mut r = Reader::new(bytes);
        let h = Self::read(&mut r)?;
        r.finish("signed head")?;
        Ok(h)
    }
}

/// A witness domain's signature of another domain's head:
/// `witness NUL | witness_key[32] | u64 time | signature[64]`, the signature
/// `Sign(witness key, "CMTP-v2 kt-cosignature\0" | witness NUL |
/// H(head) | u64 time)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Cosignature {
    /// The witnessing domain.
    pub witness: Domain,
    /// The witness's server key (a verifier checks it against what it
    /// trusts for that domain).
    pub key: PublicKey,
    /// When the witness cosigned.
    pub time: u64,
    /// The signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Cosignature {
    fn signed_part(witness: &Domain, head: &EpochHead, time: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        put_str(&mut out, witness.as_str());
        out.extend_from_slice(&head.hash());
        put_u64(&mut out, time);
        out
    }

    /// The witness `key` of domain `witness` cosigns `head` at `time`.
    pub fn issue(key: &IdentityKey, witness: Domain, head: &EpochHead, time: u64) -> Cosignature {
        let signature = key.sign(
            SignatureTag::KtCosignature,
            &[&Self::signed_part(&witness, head, time)],
        );
        Cosignature {
            witness,
            key: key.public(),
            time,
            signature,
        }
    }

    /// Checks that this cosignature signs `head` under its own key (the
    /// caller checks that key belongs to the witness domain).
    pub fn verify(&self, head: &EpochHead) -> Result<(), KtError> {
        self.key.verify(
            SignatureTag::KtCosignature,
            &[&Self::signed_part(&self.witness, head, self.time)],
            &self.signature,
        )?;
        Ok(())
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_str(out, self.witness.as_str());
        out.extend_from_slice(self.key.as_bytes());
        put_u64(out, self.time);
        out.extend_from_slice(&self.signature);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        self.encode(&mut out);
        out
    }

    /// Reads a cosignature (not verified).
    pub fn read(r: &mut Reader<'_>) -> Result<Cosignature, KtError> {
        let witness = Domain::parse_canonical(r.string(crate::limits::MAX_FIELD, "witness")?)?;
        let key = PublicKey::from_bytes(&r.array("witness key")?)?;
        Ok(Cosignature {
            witness,
            key,
            time: r.u64("cosignature time")?,
            signature: r.array("cosignature")?,
        })
    }

    /// Decodes exactly one cosignature.
    pub fn decode(bytes: &[u8]) -> Result<Cosignature, KtError> {
        let mut r = Reader::new(bytes);
        let c = Self::read(&mut r)?;
        r.finish("cosignature")?;
        Ok(c)
    }
}

/// A signed head with the cosignatures its domain has collected:
/// `signed_head | u8 count (≤ 16) | count × cosignature`. The `KTHEAD`
/// answer, and part of the `KEYPROOF` and `KTHISTORY` answers.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WitnessedHead {
    /// The head.
    pub head: SignedHead,
    /// Its cosignatures (unverified until checked).
    pub cosignatures: Vec<Cosignature>,
}

impl WitnessedHead {
    /// Appends the wire form (at most [`MAX_COSIGNATURES`] are written).
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.head.encode(out);
        let n = self.cosignatures.len().min(MAX_COSIGNATURES);
        out.push(n as u8);
        for c in &self.cosignatures[..n] {
            c.encode(out);
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads a witnessed head.
    pub fn read(r: &mut Reader<'_>) -> Result<WitnessedHead, KtError> {
        let head = SignedHead::read(r)?;
        let n = r.u8("cosignature count")? as usize;
        if n > MAX_COSIGNATURES {
            return Err(WireError::TooLarge {
                what: "cosignature count",
                value: n as u64,
                max: MAX_COSIGNATURES as u64,
            }
            .into());
        }
        let mut cosignatures = Vec::with_capacity(n);
        for _ in 0..n {
            cosignatures.push(Cosignature::read(r)?);
        }
        Ok(WitnessedHead { head, cosignatures })
    }

    /// Decodes exactly one witnessed head.
    pub fn decode(bytes: &[u8]) -> Result<WitnessedHead, KtError> {
        let mut r = Reader::new(bytes);
        let h = Self::read(&mut r)?;
        r.finish("witnessed head")?;
        Ok(h)
    }

    /// The distinct witness domains (other than the head's own) whose
    /// cosignature verifies and whose key `trusted` accepts for that
    /// domain. Cosignatures that fail are left out, not errors: a head is
    /// witnessed by as many domains as this returns.
    pub fn witnesses(&self, trusted: impl Fn(&Domain, &PublicKey) -> bool) -> Vec<Domain> {
        let mut out: Vec<Domain> = Vec::new();
        for c in &self.cosignatures {
            if c.witness == self.head.head.domain || out.contains(&c.witness) {
                continue;
            }
            if c.verify(&self.head.head).is_ok() && trusted(&c.witness, &c.key) {
                out.push(c.witness.clone());
            }
        }
        out
    }
}

/// How two signed heads of one domain contradict each other.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum MisbehaviourKind {
    /// Two different heads for one epoch (a split view).
    Fork,
    /// A head whose `previous` is not the hash of the head of the epoch
    /// before it (a rewritten history).
    BrokenChain,
}

impl MisbehaviourKind {
    fn byte(self) -> u8 {
        match self {
            MisbehaviourKind::Fork => 1,
            MisbehaviourKind::BrokenChain => 2,
        }
    }
}

impl std::fmt::Display for MisbehaviourKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MisbehaviourKind::Fork => "two different heads for one epoch",
            MisbehaviourKind::BrokenChain => {
                "a head that does not chain to the head of the epoch before"
            }
        })
    }
}

/// Portable proof that a domain's server signed two contradictory heads:
/// `u8 kind (1 fork, 2 broken chain) | signed_head a | signed_head b`.
/// Anyone who trusts the domain's key can check it; no party's word is
/// needed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Misbehaviour {
    /// How they contradict each other.
    pub kind: MisbehaviourKind,
    /// The first head (for a broken chain: the earlier epoch).
    pub a: SignedHead,
    /// The second head.
    pub b: SignedHead,
}

impl Misbehaviour {
    /// The contradiction between two heads of one domain, if there is one
    /// (signatures not checked).
    pub fn between(a: &SignedHead, b: &SignedHead) -> Option<Misbehaviour> {
        let (ha, hb) = (&a.head, &b.head);
        if ha.domain != hb.domain {
            return None;
        }
        let make = |kind, a: &SignedHead, b: &SignedHead| Misbehaviour {
            kind,
            a: a.clone(),
            b: b.clone(),
        };
        if ha.epoch == hb.epoch {
            (ha != hb).then(|| make(MisbehaviourKind::Fork, a, b))
        } else if hb.epoch == ha.epoch.checked_add(1)? {
            (hb.previous != ha.hash()).then(|| make(MisbehaviourKind::BrokenChain, a, b))
        } else if ha.epoch == hb.epoch.checked_add(1)? {
            (ha.previous != hb.hash()).then(|| make(MisbehaviourKind::BrokenChain, b, a))
        } else {
            None
        }
    }

    /// Checks the proof under `key`, the key the verifier trusts for the
    /// domain: both heads are signed by it, are the domain's, and
    /// contradict each other as the kind says.
    pub fn verify(&self, key: &PublicKey) -> Result<(&Domain, u64), KtError> {
        self.a.verify(key)?;
        self.b.verify(key)?;
        match Misbehaviour::between(&self.a, &self.b) {
            Some(m) if m.kind == self.kind => Ok((&self.a.head.domain, self.b.head.epoch)),
            _ => Err(KtError::NoContradiction),
        }
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.push(self.kind.byte());
        self.a.encode(out);
        self.b.encode(out);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads a proof (not verified).
    pub fn read(r: &mut Reader<'_>) -> Result<Misbehaviour, KtError> {
        let kind = match r.u8("misbehaviour kind")? {
            1 => MisbehaviourKind::Fork,
            2 => MisbehaviourKind::BrokenChain,
            value => {
                return Err(KtError::Unknown {
                    what: "misbehaviour kind",
                    value,
                });
            }
        };
        Ok(Misbehaviour {
            kind,
            a: SignedHead::read(r)?,
            b: SignedHead::read(r)?,
        })
    }

    /// Decodes exactly one proof.
    pub fn decode(bytes: &[u8]) -> Result<Misbehaviour, KtError> {
        let mut r = Reader::new(bytes);
        let m = Self::read(&mut r)?;
        r.finish("misbehaviour proof")?;
        Ok(m)
    }
}

/// Why a head was refused by a [`HeadTracker`].
#[derive(Clone, PartialEq, Eq, Debug, Error)]
#[non_exhaustive]
pub enum HeadRefused {
    /// An epoch older than one already seen for the domain.
    #[error("epoch {got} is older than epoch {seen}, already seen for this domain (a rollback)")]
    Rollback {
        /// The newest epoch seen.
        seen: u64,
        /// The epoch offered.
        got: u64,
    },
    /// A head that contradicts one already seen: the proof.
    #[error("{}: epoch {}", .0.kind, .0.b.head.epoch)]
    Misbehaviour(Box<Misbehaviour>),
}

/// What [`HeadTracker::observe`] made of a head.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Observation {
    /// The first head seen for the domain.
    First,
    /// The head already seen.
    Same,
    /// A newer epoch than the one seen.
    Newer {
        /// Whether it is the very next epoch, so that its chain link was
        /// checked (a longer gap is the witnesses' to check).
        chained: bool,
    },
}

/// The newest head a party has seen for one domain, and the rules for the
/// next: never an older epoch (rollback), never a second head for an epoch
/// (fork), and the very next epoch must chain to it.
#[derive(Clone, PartialEq, Eq, Debug, Default)]
pub struct HeadTracker {
    /// The newest head seen.
    pub latest: Option<SignedHead>,
}

impl HeadTracker {
    /// Checks `new` (already verified under the domain's key) against the
    /// newest head seen and keeps it if it is newer.
    pub fn observe(&mut self, new: &SignedHead) -> Result<Observation, HeadRefused> {
        let Some(seen) = &self.latest else {
            self.latest = Some(new.clone());
            return Ok(Observation::First);
        };
        if let Some(m) = Misbehaviour::between(seen, new) {
            return Err(HeadRefused::Misbehaviour(Box::new(m)));
        }
        let (s, n) = (seen.head.epoch, new.head.epoch);
        if n < s {
            return Err(HeadRefused::Rollback { seen: s, got: n });
        }
        if n == s {
            return Ok(Observation::Same);
        }
        let chained = n == s + 1;
        self.latest = Some(new.clone());
        Ok(Observation::Newer { chained })
    }
}

/// Checks that `chain` (heads of consecutive epochs, oldest first) extends
/// `from`: each head is of the next epoch, the same domain and VRF key, not
/// older in time, and holds the hash of the head before. The witness's
/// check between the head it cosigned last and the newest one.
pub fn check_chain(from: &SignedHead, chain: &[SignedHead]) -> Result<(), HeadRefused> {
    let mut prev = from;
    for next in chain {
        if let Some(m) = Misbehaviour::between(prev, next) {
            return Err(HeadRefused::Misbehaviour(Box::new(m)));
        }
        let (p, n) = (&prev.head, &next.head);
        if n.epoch != p.epoch + 1 {
            return Err(HeadRefused::Rollback {
                seen: p.epoch,
                got: n.epoch,
            });
        }
        if n.domain != p.domain || n.vrf_key != p.vrf_key || n.time < p.time {
            // Same epoch chain, different directory key or time going
            // backwards: not a head that extends this directory.
            return Err(HeadRefused::Misbehaviour(Box::new(Misbehaviour {
                kind: MisbehaviourKind::BrokenChain,
                a: prev.clone(),
                b: next.clone(),
            })));
        }
        prev = next;
    }
    Ok(())
}

/// The `KEYPROOF` answer (PROTOCOL.md §20.5):
///
/// ```text
/// proven_key = u32 version (1) | u32 statement_length | statement |
///              u8 state | [ witnessed_head | u32 proof_length | lookup_proof ]
/// ```
///
/// `state` 0: the key has no proof yet (changed after the last epoch, or
/// not in the directory); nothing follows. `state` 1: the witnessed head
/// of the epoch and akd's lookup proof of the label at that epoch follow.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ProvenKey {
    /// The key statement (§9.2), as KEYREQUEST gives it.
    pub statement: Vec<u8>,
    /// The head and lookup proof, when the key is in the directory.
    pub proof: Option<(WitnessedHead, Vec<u8>)>,
}

impl ProvenKey {
    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, KT_VERSION);
        put_blob32(out, &self.statement);
        match &self.proof {
            None => out.push(0),
            Some((head, proof)) => {
                out.push(1);
                head.encode(out);
                put_blob32(out, proof);
            }
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes an answer (nothing verified).
    pub fn decode(bytes: &[u8]) -> Result<ProvenKey, KtError> {
        let mut r = Reader::new(bytes);
        let version = r.u32("proven key version")?;
        if version != KT_VERSION {
            return Err(KtError::Version(version));
        }
        let statement = r.blob32(MAX_STATEMENT, "statement")?.to_vec();
        let proof = match r.u8("proof state")? {
            0 => None,
            1 => {
                let head = WitnessedHead::read(&mut r)?;
                Some((head, r.blob32(MAX_PROOF, "lookup proof")?.to_vec()))
            }
            value => {
                return Err(KtError::Unknown {
                    what: "proof state",
                    value,
                });
            }
        };
        r.finish("proven key")?;
        Ok(ProvenKey { statement, proof })
    }
}

/// The `KTHISTORY` answer: `witnessed_head | u32 proof_length |
/// history_proof` (akd's history proof of the logged-in account's label at
/// the head's epoch).
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyHistory {
    /// The head the proof is relative to.
    pub head: WitnessedHead,
    /// akd's history proof.
    pub proof: Vec<u8>,
}

impl KeyHistory {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.head.encode(&mut out);
        put_blob32(&mut out, &self.proof);
        out
    }

    /// Decodes an answer.
    pub fn decode(bytes: &[u8]) -> Result<KeyHistory, KtError> {
        let mut r = Reader::new(bytes);
        let head = WitnessedHead::read(&mut r)?;
        let proof = r.blob32(MAX_PROOF, "history proof")?.to_vec();
        r.finish("key history")?;
        Ok(KeyHistory { head, proof })
    }
}

/// The `KTAUDIT from to` answer: `u32 count | count × signed_head |
/// u32 proof_length | append_only_proof` — the heads of epochs `from + 1`
/// to `to`, oldest first, and akd's append-only proof from `from` to `to`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct AuditAnswer {
    /// The heads after `from`, oldest first.
    pub heads: Vec<SignedHead>,
    /// akd's append-only proof.
    pub proof: Vec<u8>,
}

impl AuditAnswer {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_u32(&mut out, self.heads.len() as u32);
        for h in &self.heads {
            h.encode(&mut out);
        }
        put_blob32(&mut out, &self.proof);
        out
    }

    /// Decodes an answer (at most [`MAX_AUDIT_SPAN`] heads).
    pub fn decode(bytes: &[u8]) -> Result<AuditAnswer, KtError> {
        let mut r = Reader::new(bytes);
        let n = r.u32("head count")?;
        if u64::from(n) > MAX_AUDIT_SPAN {
            return Err(WireError::TooLarge {
                what: "head count",
                value: u64::from(n),
                max: MAX_AUDIT_SPAN,
            }
            .into());
        }
        let mut heads = Vec::with_capacity(n as usize);
        for _ in 0..n {
            heads.push(SignedHead::read(&mut r)?);
        }
        let proof = r.blob32(MAX_AUDIT_PROOF, "append-only proof")?.to_vec();
        r.finish("audit answer")?;
        Ok(AuditAnswer { heads, proof })
    }
}

/// The `KTWITNESS` answer: `u8 1 | cosignature` (the witness cosigned the
/// domain's newest head) or `u8 2 | misbehaviour` (it refused: the proof).
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum WitnessVerdict {
    /// Cosigned.
    Cosigned(Cosignature),
    /// Refused, with the proof of what the domain did.
    Misbehaved(Misbehaviour),
}

impl WitnessVerdict {
    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            WitnessVerdict::Cosigned(c) => {
                out.push(1);
                c.encode(&mut out);
            }
            WitnessVerdict::Misbehaved(m) => {
                out.push(2);
                m.encode(&mut out);
            }
        }
        out
    }

    /// Decodes an answer.
    pub fn decode(bytes: &[u8]) -> Result<WitnessVerdict, KtError> {
        let mut r = Reader::new(bytes);
        let v = match r.u8("verdict")? {
            1 => WitnessVerdict::Cosigned(Cosignature::read(&mut r)?),
            2 => WitnessVerdict::Misbehaved(Misbehaviour::read(&mut r)?),
            value => {
                return Err(KtError::Unknown {
                    what: "verdict",
                    value,
                });
            }
        };
        r.finish("witness verdict")?;
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    fn chain(key: &IdentityKey, n: u64) -> Vec<SignedHead> {
        let mut out: Vec<SignedHead> = Vec::new();
        for epoch in 0..n {
            let previous = out.last().map_or([0; 32], |h| h.head.hash());
            let head = EpochHead {
                domain: d("a.example"),
                epoch,
                root: [epoch as u8; 32],
                vrf_key: [7; 32],
                previous,
                time: 100 + epoch,
            };
            out.push(SignedHead::sign(key, head));
        }
        out
    }

    #[test]
    fn a_head_verifies_under_its_domain_key_only() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let other = IdentityKey::from_seed(&[2; 32]);
        let h = &chain(&k, 1)[0];
        h.verify(&k.public()).unwrap();
        assert!(h.verify(&other.public()).is_err());
        assert!(h.verify_for(&k.public(), &d("b.example")).is_err());
        let mut bad = h.clone();
        bad.head.root[0] ^= 1;
        assert!(bad.verify(&k.public()).is_err());
        assert_eq!(SignedHead::decode(&h.to_bytes()).unwrap(), *h);
    }

    #[test]
    fn tracker_refuses_rollbacks_forks_and_broken_links() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let c = chain(&k, 4);
        let mut t = HeadTracker::default();
        assert_eq!(t.observe(&c[1]).unwrap(), Observation::First);
        assert_eq!(t.observe(&c[1]).unwrap(), Observation::Same);
        assert_eq!(
            t.observe(&c[2]).unwrap(),
            Observation::Newer { chained: true }
        );
        assert!(matches!(
            t.observe(&c[0]),
            Err(HeadRefused::Rollback { seen: 2, got: 0 })
        ));
        // a second head for epoch 2
        let mut fork = c[2].head.clone();
        fork.root = [0xee; 32];
        let fork = SignedHead::sign(&k, fork);
        let Err(HeadRefused::Misbehaviour(m)) = t.observe(&fork) else {
            panic!("fork accepted")
        };
        assert_eq!(m.kind, MisbehaviourKind::Fork);
        m.verify(&k.public()).unwrap();
        // epoch 3 that does not chain to epoch 2
        let mut broken = c[3].head.clone();
        broken.previous = [0x55; 32];
        let broken = SignedHead::sign(&k, broken);
        let Err(HeadRefused::Misbehaviour(m)) = t.observe(&broken) else {
            panic!("broken chain accepted")
        };
        assert_eq!(m.kind, MisbehaviourKind::BrokenChain);
        let (domain, epoch) = m.verify(&k.public()).unwrap();
        assert_eq!((domain.as_str(), epoch), ("a.example", 3));
        // the portable proof survives the wire and needs the domain's key
        let back = Misbehaviour::decode(&m.to_bytes()).unwrap();
        back.verify(&k.public()).unwrap();
        assert!(
            back.verify(&IdentityKey::from_seed(&[3; 32]).public())
                .is_err()
        );
        // a jump over epochs is accepted, not chained
        let mut t = HeadTracker::default();
        t.observe(&c[0]).unwrap();
        assert_eq!(
            t.observe(&c[3]).unwrap(),
            Observation::Newer { chained: false }
        );
    }

    #[test]
    fn two_heads_that_agree_are_no_proof() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let c = chain(&k, 3);
        for (a, b) in [(&c[0], &c[1]), (&c[1], &c[1]), (&c[0], &c[2])] {
            assert!(Misbehaviour::between(a, b).is_none());
            let fake = Misbehaviour {
                kind: MisbehaviourKind::Fork,
                a: a.clone(),
                b: b.clone(),
            };
            assert_eq!(fake.verify(&k.public()), Err(KtError::NoContradiction));
        }
    }

    #[test]
    fn check_chain_accepts_an_extension_and_nothing_else() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let c = chain(&k, 5);
        check_chain(&c[1], &c[2..]).unwrap();
        assert!(check_chain(&c[1], &c[3..]).is_err()); // a gap
        let mut other_vrf = c[2].head.clone();
        other_vrf.vrf_key = [8; 32];
        assert!(check_chain(&c[1], &[SignedHead::sign(&k, other_vrf)]).is_err());
    }

    #[test]
    fn cosignatures_count_distinct_trusted_witnesses() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let w = IdentityKey::from_seed(&[2; 32]);
        let h = chain(&k, 1).remove(0);
        let good = Cosignature::issue(&w, d("b.example"), &h.head, 5);
        let mut forged = Cosignature::issue(&w, d("c.example"), &h.head, 5);
        forged.time = 6;
        let own = Cosignature::issue(&k, d("a.example"), &h.head, 5);
        let wh = WitnessedHead {
            head: h.clone(),
            cosignatures: vec![good.clone(), good.clone(), forged, own],
        };
        let back = WitnessedHead::decode(&wh.to_bytes()).unwrap();
        assert_eq!(back, wh);
        assert_eq!(back.witnesses(|_, _| true), vec![d("b.example")]);
        assert!(back.witnesses(|_, _| false).is_empty());
    }

    #[test]
    fn answers_round_trip_and_bounds_hold() {
        let k = IdentityKey::from_seed(&[1; 32]);
        let h = chain(&k, 2);
        let wh = WitnessedHead {
            head: h[1].clone(),
            cosignatures: vec![],
        };
        for p in [
            ProvenKey {
                statement: vec![1, 2, 3],
                proof: None,
            },
            ProvenKey {
                statement: vec![4],
                proof: Some((wh.clone(), vec![9; 100])),
            },
        ] {
            assert_eq!(ProvenKey::decode(&p.to_bytes()).unwrap(), p);
        }
        let mut bad = ProvenKey {
            statement: vec![],
            proof: None,
        }
        .to_bytes();
        *bad.last_mut().unwrap() = 7;
        assert!(ProvenKey::decode(&bad).is_err());
        let a = AuditAnswer {
            heads: h.clone(),
            proof: vec![5; 10],
        };
        assert_eq!(AuditAnswer::decode(&a.to_bytes()).unwrap(), a);
        let mut many = a.to_bytes();
        many[..4].copy_from_slice(&1000u32.to_be_bytes());
        assert!(AuditAnswer::decode(&many).is_err());
        let kh = KeyHistory {
            head: wh,
            proof: vec![1],
        };
        assert_eq!(KeyHistory::decode(&kh.to_bytes()).unwrap(), kh);
    }

    #[test]
    fn value_binds_account_domain_and_key() {
        let k1 = IdentityKey::from_seed(&[1; 32]).public();
        let k2 = IdentityKey::from_seed(&[2; 32]).public();
        let a: Address = "bob@a.example".parse().unwrap();
        let b: Address = "bob@b.example".parse().unwrap();
        assert_ne!(key_value(&a, &k1), key_value(&a, &k2));
        assert_ne!(key_value(&a, &k1), key_value(&b, &k1));
        assert_eq!(label(&a), b"bob@a.example");
    }
}
