//! Bodies of replies and payloads of extension commands (PROTOCOL.md §6,
//! §10.2, §12, §13); the mailbox synchronisation payloads (§13.1, §13.3–§13.5)
//! are in [`mailbox`].

pub mod mailbox;

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::crypto::opaque::{KE2_LEN, KsfParams, RECORD_LEN, REGISTRATION_RESPONSE_LEN};
use crate::crypto::sign::SIGNATURE_LEN;
use crate::crypto::xzibit::Xzibit;
use crate::crypto::{CryptoError, IdentityKey, PublicKey, SignatureTag};
use crate::limits::{MAX_FIELD, MAX_LISTING, MAX_XZIBIT};
use crate::names::{Account, Address, Domain, NameError};
use crate::wire::{Reader, WireError, put_blob32, put_str, put_u32, put_u64};

/// Appends `account@domain NUL` to signed data (an address may be up to
/// 318 bytes, longer than a wire string field).
pub(crate) fn put_address(out: &mut Vec<u8>, address: &Address) {
    out.extend_from_slice(address.to_string().as_bytes());
    out.push(0);
}

/// Why a payload was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum PayloadError {
    /// Malformed bytes.
    #[error("malformed payload: {0}")]
    Wire(#[from] WireError),
    /// An invalid name.
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    /// A key, signature or KSF parameter was refused.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// A text payload lacks a required field.
    #[error("greeting lacks {0}")]
    Missing(&'static str),
}

/// The body of the OHAI reply: a description of the server, as
/// `key: value` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// The server's domain.
    pub domain: Domain,
    /// Software name and version.
    pub software: String,
    /// Supported extensions.
    pub extensions: Vec<String>,
    /// The server's public key.
    pub key: PublicKey,
    /// The connection nonce (signed replies bind to it).
    pub nonce: [u8; 32],
    /// Largest message accepted.
    pub max_message_size: u64,
    /// Most attachments accepted.
    pub max_attachments: u32,
}

impl Greeting {
    /// The reply body.
    pub fn to_text(&self) -> String {
        format!(
            "domain: {}\nprotocol: CMTP/2\nsoftware: {}\ncrypto: 1\nextensions: {}\nkey: {}\nfingerprint: {}\nnonce: {}\nmax-message-size: {}\nmax-attachments: {}\n",
            self.domain,
            self.software,
            self.extensions.join(" "),
            hex::encode(self.key.as_bytes()),
            self.key.fingerprint_hex(),
            hex::encode(self.nonce),
            self.max_message_size,
            self.max_attachments,
        )
    }

    /// Parses a reply body; unknown keys are ignored.
    pub fn parse(body: &[u8]) -> Result<Greeting, PayloadError> {
        let text =
            std::str::from_utf8(body).map_err(|_| WireError::InvalidUtf8 { what: "greeting" })?;
        let get = |k: &'static str| {
            text.lines()
                .find_map(|l| l.strip_prefix(k).and_then(|r| r.strip_prefix(": ")))
                .ok_or(PayloadError::Missing(k))
        };
        let hex32 = |k: &'static str| -> Result<[u8; 32], PayloadError> {
            let v = hex::decode(get(k)?).map_err(|_| PayloadError::Missing(k))?;
            v.try_into().map_err(|_| PayloadError::Missing(k))
        };
        Ok(Greeting {
            domain: Domain::parse(get("domain")?)?,
            software: get("software").unwrap_or("").to_owned(),
            extensions: get("extensions")
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
            key: PublicKey::from_bytes(&hex32("key")?)?,
            nonce: hex32("nonce")?,
            max_message_size: get("max-message-size")?
                .parse()
                .map_err(|_| PayloadError::Missing("max-message-size"))?,
            max_attachments: get("max-attachments")?
                .parse()
                .map_err(|_| PayloadError::Missing("max-attachments"))?,
        })
    }
}

/// Reasons of a DELIVERYFAILURE (PROTOCOL.md §10.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FailureReason {
    /// The destination account does not exist.
    NoSuchUser,
    /// Another domain's mail from a connection not logged in as its source.
    NoRelay,
    /// The source claims the receiving server's domain from outside.
    Spoofed,
    /// The trailer does not verify.
    BadSignature,
    /// The destination domain has no CMTP service.
    NoDestination,
    /// The hop limit was exceeded.
    Loop,
    /// Refused by policy.
    Refused,
    /// The relay queue gave up (notices only).
    Expired,
    /// The destination's server key changed without a rotation (notices only).
    KeyChanged,
}

impl FailureReason {
    /// Every reason.
    pub const ALL: [FailureReason; 9] = [
        FailureReason::NoSuchUser,
        FailureReason::NoRelay,
        FailureReason::Spoofed,
        FailureReason::BadSignature,
        FailureReason::NoDestination,
        FailureReason::Loop,
        FailureReason::Refused,
        FailureReason::Expired,
        FailureReason::KeyChanged,
    ];

    /// The reason word.
    pub fn word(self) -> &'static str {
        match self {
            FailureReason::NoSuchUser => "NOSUCHUSER",
            FailureReason::NoRelay => "NORELAY",
            FailureReason::Spoofed => "SPOOFED",
            FailureReason::BadSignature => "BADSIGNATURE",
            FailureReason::NoDestination => "NODESTINATION",
            FailureReason::Loop => "LOOP",
            FailureReason::Refused => "REFUSED",
            FailureReason::Expired => "EXPIRED",
            FailureReason::KeyChanged => "KEYCHANGED",
        }
    }

    /// Parses a reason word.
    pub fn from_word(w: &str) -> Option<FailureReason> {
        Self::ALL.into_iter().find(|r| r.word() == w)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// The body of a DELIVERYFAILURE reply: `reason NUL text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryFailure {
    /// The reason word (`None`: a word this implementation does not know).
    pub reason: Option<FailureReason>,
    /// The reason word as received.
    pub word: String,
    /// Explanation for people.
    pub text: String,
}

impl DeliveryFailure {
    /// A failure with a known reason.
    pub fn new(reason: FailureReason, text: impl Into<String>) -> Self {
        DeliveryFailure {
            reason: Some(reason),
            word: reason.word().to_owned(),
            text: text.into(),
        }
    }

    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        put_str(&mut out, &self.word);
        out.extend_from_slice(self.text.as_bytes());
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<DeliveryFailure, PayloadError> {
        let mut r = Reader::new(body);
        let word = r.string(MAX_FIELD, "reason")?.to_owned();
        let text = String::from_utf8_lossy(r.rest()).into_owned();
        Ok(DeliveryFailure {
            reason: FailureReason::from_word(&word),
            word,
            text,
        })
    }
}

/// The body of SUCCESS after LOGIN: the account's KSF parameters and KE2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginChallenge {
    /// Argon2id parameters to use with this account's password.
    pub ksf: KsfParams,
    /// OPAQUE KE2.
    pub ke2: Vec<u8>,
}

impl LoginChallenge {
    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12 + KE2_LEN);
        self.ksf.encode(&mut out);
        out.extend_from_slice(&self.ke2);
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<LoginChallenge, PayloadError> {
        let mut r = Reader::new(body);
        let ksf = KsfParams::decode(r.bytes(KsfParams::ENCODED_LEN, "ksf")?)?;
        let ke2 = r.bytes(KE2_LEN, "KE2")?.to_vec();
        r.finish("login challenge")?;
        Ok(LoginChallenge { ksf, ke2 })
    }
}

/// The body of SUCCESS after LOGINFINISH: the xzibit and the server's signature of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XzibitRelease {
    /// The encoded xzibit.
    pub xzibit: Vec<u8>,
    /// Server signature (tag `CMTP-v1 xzibit\0`) over `address NUL | xzibit`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl XzibitRelease {
    fn signed_part(address: &Address, xzibit: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(xzibit.len() + 80);
        put_address(&mut out, address);
        out.extend_from_slice(xzibit);
        out
    }

    /// Signs the release of `xzibit` for `address`.
    pub fn issue(server: &IdentityKey, address: &Address, xzibit: Vec<u8>) -> XzibitRelease {
        let signature = server.sign(
            SignatureTag::Xzibit,
            &[&Self::signed_part(address, &xzibit)],
        );
        XzibitRelease { xzibit, signature }
    }

    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.xzibit.len() + 68);
        put_blob32(&mut out, &self.xzibit);
        out.extend_from_slice(&self.signature);
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<XzibitRelease, PayloadError> {
        let mut r = Reader::new(body);
        let xzibit = r.blob32(MAX_XZIBIT, "xzibit")?.to_vec();
        let signature = r.array("signature")?;
        r.finish("xzibit release")?;
        Ok(XzibitRelease { xzibit, signature })
    }

    /// Checks the server's signature for `address` and decodes the xzibit.
    pub fn verify(
        &self,
        server_key: &PublicKey,
        address: &Address,
    ) -> Result<Xzibit, PayloadError> {
        server_key.verify(
            SignatureTag::Xzibit,
            &[&Self::signed_part(address, &self.xzibit)],
            &self.signature,
        )?;
        Ok(Xzibit::decode(&self.xzibit)?)
    }
}

/// The body of SUCCESS after REGISTER or PASSWORD: OPAQUE's registration
/// response and the server's KSF floor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationOffer {
    /// OPAQUE registration response (64 bytes).
    pub response: Vec<u8>,
    /// The weakest Argon2id parameters the server accepts.
    pub floor: KsfParams,
}

impl RegistrationOffer {
    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = self.response.clone();
        self.floor.encode(&mut out);
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<RegistrationOffer, PayloadError> {
        let mut r = Reader::new(body);
        let response = r
            .bytes(REGISTRATION_RESPONSE_LEN, "registration response")?
            .to_vec();
        let floor = KsfParams::decode(r.bytes(KsfParams::ENCODED_LEN, "ksf floor")?)?;
        r.finish("registration offer")?;
        Ok(RegistrationOffer { response, floor })
    }
}

/// The payload of REGFINISH: what a client uploads to create an account or
/// change its password.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistrationBundle {
    /// OPAQUE registration record (192 bytes).
    pub record: Vec<u8>,
    /// The Argon2id parameters the client used.
    pub ksf: KsfParams,
    /// The identity public key.
    pub identity: PublicKey,
    /// The encoded xzibit.
    pub xzibit: Vec<u8>,
    /// Proof of possession by the identity key.
    pub proof: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for RegistrationBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistrationBundle")
            .field("identity", &self.identity)
            .field("ksf", &self.ksf)
            .finish_non_exhaustive()
    }
}

impl RegistrationBundle {
    fn proof_data(
        address: &Address,
        channel_binding: &[u8; 32],
        identity: &PublicKey,
        record: &[u8],
        ksf: &KsfParams,
        xzibit: &[u8],
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(232);
        out.extend_from_slice(channel_binding);
        put_address(&mut out, address);
        out.extend_from_slice(identity.as_bytes());
        out.extend_from_slice(&Sha256::digest(record));
        ksf.encode(&mut out);
        out.extend_from_slice(&Sha256::digest(xzibit));
        out
    }

    /// Builds and signs a bundle with the identity key, for the connection
    /// with `channel_binding` (PROTOCOL.md §12.2).
    pub fn new(
        address: &Address,
        channel_binding: &[u8; 32],
        identity: &IdentityKey,
        record: Vec<u8>,
        ksf: KsfParams,
        xzibit: Vec<u8>,
    ) -> Self {
        let public = identity.public();
        let proof = identity.sign(
            SignatureTag::Register,
            &[&Self::proof_data(
                address,
                channel_binding,
                &public,
                &record,
                &ksf,
                &xzibit,
            )],
        );
        RegistrationBundle {
            record,
            ksf,
            identity: public,
            xzibit,
            proof,
        }
    }

    /// The payload bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_LEN + 12 + 32 + 4 + self.xzibit.len() + 64);
        out.extend_from_slice(&self.record);
        self.ksf.encode(&mut out);
        out.extend_from_slice(self.identity.as_bytes());
        put_blob32(&mut out, &self.xzibit);
        out.extend_from_slice(&self.proof);
        out
    }

    /// Parses the payload (the proof is not checked).
    pub fn decode(buf: &[u8]) -> Result<RegistrationBundle, PayloadError> {
        let mut r = Reader::new(buf);
        let record = r.bytes(RECORD_LEN, "record")?.to_vec();
        let ksf = KsfParams::decode(r.bytes(KsfParams::ENCODED_LEN, "ksf")?)?;
        let identity = PublicKey::from_bytes(&r.array("identity key")?)?;
        let xzibit = r.blob32(MAX_XZIBIT, "xzibit")?.to_vec();
        let proof = r.array("proof")?;
        r.finish("registration bundle")?;
        Ok(RegistrationBundle {
            record,
            ksf,
            identity,
            xzibit,
            proof,
        })
    }

    /// Checks the proof of possession for `address` on the connection with
    /// `channel_binding`.
    pub fn verify(
        &self,
        address: &Address,
        channel_binding: &[u8; 32],
    ) -> Result<(), PayloadError> {
        self.identity.verify(
            SignatureTag::Register,
            &[&Self::proof_data(
                address,
                channel_binding,
                &self.identity,
                &self.record,
                &self.ksf,
                &self.xzibit,
            )],
            &self.proof,
        )?;
        Ok(())
    }
}

/// One message in a LIST reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingEntry {
    /// Mailbox id.
    pub id: u64,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// When the server accepted it.
    pub received_at: u64,
    /// The message hash.
    pub hash: [u8; 32],
    /// Message version.
    pub version: u32,
    /// Number of attachments.
    pub attachment_count: u32,
    /// Source account from the envelope (`None`: the domain's server).
    pub source_account: Option<Account>,
    /// Source domain from the envelope.
    pub source_domain: Domain,
}

/// Encodes a LIST reply body.
pub fn encode_listing(entries: &[ListingEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + entries.len() * 90);
    put_u32(
        &mut out,
        u32::try_from(entries.len()).expect("listing fits u32"),
    );
    for e in entries {
        put_u64(&mut out, e.id);
        put_u64(&mut out, e.size);
        put_u64(&mut out, e.received_at);
        out.extend_from_slice(&e.hash);
        put_u32(&mut out, e.version);
        put_u32(&mut out, e.attachment_count);
        put_str(
            &mut out,
            e.source_account.as_ref().map_or("", |a| a.as_str()),
        );
        put_str(&mut out, e.source_domain.as_str());
    }
    out
}

/// Decodes a LIST reply body.
pub fn decode_listing(body: &[u8]) -> Result<Vec<ListingEntry>, PayloadError> {
    let mut r = Reader::new(body);
    let n = r.u32("count")? as usize;
    if n > MAX_LISTING {
        return Err(WireError::TooLarge {
            what: "listing count",
            value: n as u64,
            max: MAX_LISTING as u64,
        }
        .into());
    }
    // Each entry is at least 70 bytes: bound the allocation by what is there.
    let mut out = Vec::with_capacity(n.min(r.remaining() / 70));
    for _ in 0..n {
        let id = r.u64("id")?;
        let size = r.u64("size")?;
        let received_at = r.u64("received_at")?;
        let hash = r.array("hash")?;
        let version = r.u32("version")?;
        let attachment_count = r.u32("attachment count")?;
        let acc = r.string(MAX_FIELD, "source account")?;
        let source_account = if acc.is_empty() {
            None
        } else {
            Some(Account::parse(acc)?)
        };
        let source_domain = Domain::parse(r.string(MAX_FIELD, "source domain")?)?;
        out.push(ListingEntry {
            id,
            size,
            received_at,
            hash,
            version,
            attachment_count,
            source_account,
            source_domain,
        });
    }
    r.finish("listing")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_greeting_round_trips_through_its_text() {
        let g = Greeting {
            domain: Domain::parse("a.test").unwrap(),
            software: "cmtpd 0.1.0".into(),
            extensions: vec!["REGISTER".into(), "MAILBOX".into()],
            key: IdentityKey::from_seed(&[1; 32]).public(),
            nonce: [9; 32],
            max_message_size: 1000,
            max_attachments: 3,
        };
        assert_eq!(Greeting::parse(g.to_text().as_bytes()).unwrap(), g);
        assert_eq!(
            Greeting::parse(b"domain: a.test\n"),
            Err(PayloadError::Missing("key"))
        );
    }

    #[test]
    fn delivery_failures_carry_their_reason() {
        let f = DeliveryFailure::new(FailureReason::NoSuchUser, "no user bob at b.test");
        let back = DeliveryFailure::decode(&f.to_bytes()).unwrap();
        assert_eq!(back, f);
        let unknown = DeliveryFailure::decode(b"NEWREASON\0text").unwrap();
        assert_eq!(unknown.reason, None);
        assert_eq!(unknown.word, "NEWREASON");
    }

    #[test]
    fn a_registration_bundle_proves_possession_for_its_address_only() {
        let id = IdentityKey::from_seed(&[3; 32]);
        let alice = Address::parse("alice@a.test").unwrap();
        let b = RegistrationBundle::new(
            &alice,
            &[0xcb; 32],
            &id,
            vec![1; RECORD_LEN],
            KsfParams::INSECURE_TEST,
            vec![2; 60],
        );
        let back = RegistrationBundle::decode(&b.to_bytes()).unwrap();
        back.verify(&alice, &[0xcb; 32]).unwrap();
        assert!(
            back.verify(&alice, &[0xcc; 32]).is_err(),
            "bound to the connection"
        );
        assert!(
            back.verify(&Address::parse("bob@a.test").unwrap(), &[0xcb; 32])
                .is_err()
        );
        let mut swapped = back.clone();
        swapped.xzibit[0] ^= 1;
        assert!(swapped.verify(&alice, &[0xcb; 32]).is_err());
    }

    #[test]
    fn a_listing_round_trips_and_a_huge_count_is_refused() {
        let e = ListingEntry {
            id: 7,
            size: 1234,
            received_at: 99,
            hash: [4; 32],
            version: 1,
            attachment_count: 2,
            source_account: Some(Account::parse("alice").unwrap()),
            source_domain: Domain::parse("a.test").unwrap(),
        };
        let mut server = e.clone();
        server.source_account = None;
        let entries = vec![e, server];
        assert_eq!(decode_listing(&encode_listing(&entries)).unwrap(), entries);
        assert!(matches!(
            decode_listing(&u32::MAX.to_be_bytes()),
            Err(PayloadError::Wire(WireError::TooLarge { .. }))
        ));
        assert!(matches!(
            decode_listing(&5u32.to_be_bytes()),
            Err(PayloadError::Wire(WireError::Truncated { .. }))
        ));
    }

    #[test]
    fn an_xzibit_release_verifies_for_its_address() {
        let server = IdentityKey::from_seed(&[5; 32]);
        let user = IdentityKey::from_seed(&[6; 32]);
        let alice = Address::parse("alice@a.test").unwrap();
        let x = Xzibit::seal_with_nonce(&[7; 64], "alice@a.test", &user, 5, &[1; 24]);
        let rel = XzibitRelease::issue(&server, &alice, x.to_bytes());
        let back = XzibitRelease::decode(&rel.to_bytes()).unwrap();
        assert_eq!(back.verify(&server.public(), &alice).unwrap(), x);
        assert!(
            back.verify(&server.public(), &Address::parse("bob@a.test").unwrap())
                .is_err()
        );
    }
}
