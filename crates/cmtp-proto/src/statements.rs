//! Signed statements: key statements, server key bundles with rotations,
//! receipts and the message trailer (PROTOCOL.md §7.3, §9, §10.1).

use thiserror::Error;

use crate::connection::server::mail_digest;
use crate::crypto::sign::SIGNATURE_LEN;
use crate::crypto::{CryptoError, IdentityKey, PublicKey, SignatureTag};
use crate::names::{Account, Domain, NameError};
use crate::reply::{REPLY_VERSION, ReplyBinding, ReplyHeader, Status, body_hash};
use crate::wire::{Reader, WireError, put_str, put_u32, put_u64};

/// Version of key statements and rotations.
pub const STATEMENT_VERSION: u32 = 1;
/// Most rotations in a server key bundle.
pub const MAX_ROTATIONS: usize = 16;

/// Why a statement was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum StatementError {
    /// The bytes are not a well-formed statement.
    #[error("malformed statement: {0}")]
    Wire(#[from] WireError),
    /// A name in it is invalid.
    #[error("invalid name in statement: {0}")]
    Name(#[from] NameError),
    /// A key is invalid or the signature does not verify.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The statement version is unknown.
    #[error("unsupported statement version {0}")]
    Version(u32),
    /// The statement is about someone else than asked.
    #[error("statement is for {got}, expected {expected}")]
    WrongSubject {
        /// Who it is for.
        got: String,
        /// Who was asked for.
        expected: String,
    },
    /// The statement is not valid at this time.
    #[error("statement valid from {issued_at} to {expires_at}, now is {now}")]
    Expired {
        /// Start of validity.
        issued_at: u64,
        /// End of validity.
        expires_at: u64,
        /// The time of the check.
        now: u64,
    },
    /// A chain of rotations does not lead from the pinned key to the current one.
    #[error("the server key changed without a rotation statement signed by the pinned key")]
    KeyChanged,
}

/// A server's signed statement of a user's (or its own) public key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct KeyStatement {
    /// The account; `None` in a server's statement about its own key.
    pub account: Option<Account>,
    /// The domain whose server signed it.
    pub domain: Domain,
    /// The stated key.
    pub key: PublicKey,
    /// Start of validity (unix seconds).
    pub issued_at: u64,
    /// End of validity (unix seconds, exclusive).
    pub expires_at: u64,
    /// The domain server's signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl KeyStatement {
    fn signed_part(
        account: Option<&Account>,
        domain: &Domain,
        key: &PublicKey,
        issued_at: u64,
        expires_at: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(100);
        put_u32(&mut out, STATEMENT_VERSION);
        put_str(&mut out, account.map_or("", |a| a.as_str()));
        put_str(&mut out, domain.as_str());
        out.extend_from_slice(key.as_bytes());
        put_u64(&mut out, issued_at);
        put_u64(&mut out, expires_at);
        out
    }

    /// Issues a statement signed by the domain's `server` key.
    pub fn issue(
        server: &IdentityKey,
        account: Option<Account>,
        domain: Domain,
        key: PublicKey,
        issued_at: u64,
        expires_at: u64,
    ) -> KeyStatement {
        let part = Self::signed_part(account.as_ref(), &domain, &key, issued_at, expires_at);
        let signature = server.sign(SignatureTag::KeyStatement, &[&part]);
        KeyStatement {
            account,
            domain,
            key,
            issued_at,
            expires_at,
            signature,
        }
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::signed_part(
            self.account.as_ref(),
            &self.domain,
            &self.key,
            self.issued_at,
            self.expires_at,
        ));
        out.extend_from_slice(&self.signature);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Reads a statement (not verified) from `r`.
    pub fn read(r: &mut Reader<'_>) -> Result<KeyStatement, StatementError> {
        let version = r.u32("statement version")?;
        if version != STATEMENT_VERSION {
            return Err(StatementError::Version(version));
        }
        let account = r.string(crate::limits::MAX_FIELD, "account")?;
        let account = if account.is_empty() {
            None
        } else {
            Some(Account::parse_canonical(account)?)
        };
        let domain = Domain::parse_canonical(r.string(crate::limits::MAX_FIELD, "domain")?)?;
        let key = PublicKey::from_bytes(&r.array("public key")?)?;
        let issued_at = r.u64("issued_at")?;
        let expires_at = r.u64("expires_at")?;
        let signature = r.array("signature")?;
        Ok(KeyStatement {
            account,
            domain,
            key,
            issued_at,
            expires_at,
            signature,
        })
    }

    /// Decodes a statement occupying all of `buf` (not verified).
    pub fn decode(buf: &[u8]) -> Result<KeyStatement, StatementError> {
        let mut r = Reader::new(buf);
        let s = Self::read(&mut r)?;
        r.finish("key statement")?;
        Ok(s)
    }

    /// Checks the signature under `server_key`, the subject and the validity at `now`.
    pub fn verify(
        &self,
        server_key: &PublicKey,
        account: Option<&Account>,
        domain: &Domain,
        now: u64,
    ) -> Result<(), StatementError> {
        if self.account.as_ref() != account || &self.domain != domain {
            let show = |a: Option<&Account>, d: &Domain| match a {
                Some(a) => format!("{a}@{d}"),
                None => format!("the server of {d}"),
            };
            return Err(StatementError::WrongSubject {
                got: show(self.account.as_ref(), &self.domain),
                expected: show(account, domain),
            });
        }
        let part = Self::signed_part(
            self.account.as_ref(),
            &self.domain,
            &self.key,
            self.issued_at,
            self.expires_at,
        );
        server_key.verify(SignatureTag::KeyStatement, &[&part], &self.signature)?;
        if !(self.issued_at <= now && now < self.expires_at) {
            return Err(StatementError::Expired {
                issued_at: self.issued_at,
                expires_at: self.expires_at,
                now,
            });
        }
        Ok(())
    }
}

/// A statement, signed by a server's old key, that its key changed.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Rotation {
    /// The domain.
    pub domain: Domain,
    /// The key being replaced (the signer).
    pub old_key: PublicKey,
    /// The replacement.
    pub new_key: PublicKey,
    /// When the rotation was made.
    pub issued_at: u64,
    /// Signature by `old_key`.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Rotation {
    fn signed_part(domain: &Domain, old: &PublicKey, new: &PublicKey, issued_at: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(100);
        put_u32(&mut out, STATEMENT_VERSION);
        put_str(&mut out, domain.as_str());
        out.extend_from_slice(old.as_bytes());
        out.extend_from_slice(new.as_bytes());
        put_u64(&mut out, issued_at);
        out
    }

    /// Signs a rotation from `old` to `new`.
    pub fn issue(old: &IdentityKey, new: PublicKey, domain: Domain, issued_at: u64) -> Rotation {
        let old_key = old.public();
        let part = Self::signed_part(&domain, &old_key, &new, issued_at);
        Rotation {
            signature: old.sign(SignatureTag::KeyRotation, &[&part]),
            domain,
            old_key,
            new_key: new,
            issued_at,
        }
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&Self::signed_part(
            &self.domain,
            &self.old_key,
            &self.new_key,
            self.issued_at,
        ));
        out.extend_from_slice(&self.signature);
    }

    /// Reads a rotation (not verified).
    pub fn read(r: &mut Reader<'_>) -> Result<Rotation, StatementError> {
        let version = r.u32("rotation version")?;
        if version != STATEMENT_VERSION {
            return Err(StatementError::Version(version));
        }
        Ok(Rotation {
            domain: Domain::parse_canonical(r.string(crate::limits::MAX_FIELD, "domain")?)?,
            old_key: PublicKey::from_bytes(&r.array("old key")?)?,
            new_key: PublicKey::from_bytes(&r.array("new key")?)?,
            issued_at: r.u64("issued_at")?,
            signature: r.array("signature")?,
        })
    }

    /// Checks the old key's signature.
    pub fn verify(&self) -> Result<(), StatementError> {
        let part = Self::signed_part(&self.domain, &self.old_key, &self.new_key, self.issued_at);
        self.old_key
            .verify(SignatureTag::KeyRotation, &[&part], &self.signature)?;
        Ok(())
    }
}

/// What KEYREQUEST with an empty user returns: the server's self-signed
/// statement and the rotations that lead to its key.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ServerKeyBundle {
    /// The server's statement about its own key, signed by that key.
    pub statement: KeyStatement,
    /// Rotations from older keys to the current one, oldest first.
    pub rotations: Vec<Rotation>,
}

impl ServerKeyBundle {
    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.statement.encode(out);
        out.push(u8::try_from(self.rotations.len()).expect("at most 16 rotations"));
        for r in &self.rotations {
            r.encode(out);
        }
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a bundle occupying all of `buf` (not verified).
    pub fn decode(buf: &[u8]) -> Result<ServerKeyBundle, StatementError> {
        let mut r = Reader::new(buf);
        let statement = KeyStatement::read(&mut r)?;
        let n = r.u8("rotation count")? as usize;
        if n > MAX_ROTATIONS {
            return Err(WireError::TooLarge {
                what: "rotation count",
                value: n as u64,
                max: MAX_ROTATIONS as u64,
            }
            .into());
        }
        let rotations = (0..n)
            .map(|_| Rotation::read(&mut r))
            .collect::<Result<Vec<_>, _>>()?;
        r.finish("server key bundle")?;
        Ok(ServerKeyBundle {
            statement,
            rotations,
        })
    }

    /// The key the bundle states, after checking that it signed its own
    /// statement for `domain` and is valid at `now`.
    pub fn verify_self(&self, domain: &Domain, now: u64) -> Result<PublicKey, StatementError> {
        self.statement
            .verify(&self.statement.key, None, domain, now)?;
        Ok(self.statement.key)
    }

    /// Whether `pinned` may be replaced by this bundle's key: equal, or a
    /// chain of valid rotations for `domain` leads from `pinned` to it.
    pub fn check_against_pin(
        &self,
        pinned: &PublicKey,
        domain: &Domain,
    ) -> Result<(), StatementError> {
        let target = self.statement.key;
        if *pinned == target {
            return Ok(());
        }
        let mut current = *pinned;
        for r in &self.rotations {
            if &r.domain != domain {
                continue;
            }
            if r.old_key == current && r.verify().is_ok() {
                current = r.new_key;
                if current == target {
                    return Ok(());
                }
            }
        }
        Err(StatementError::KeyChanged)
    }
}

/// The body of SUCCESS after MAIL or APPEND: the receiving server's
/// statement that it took responsibility for a message (PROTOCOL.md §10.1).
/// It carries no signature of its own: the reply's signature covers it, and
/// [`Receipt`] keeps that signature with what it binds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReceiptBody {
    /// The message hash.
    pub hash: [u8; 32],
    /// When it was accepted (unix seconds).
    pub accepted_at: u64,
    /// The receiving domain.
    pub domain: Domain,
}

impl ReceiptBody {
    /// Appends the wire form: `hash[32] | u64 accepted_at | domain NUL`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.hash);
        put_u64(out, self.accepted_at);
        put_str(out, self.domain.as_str());
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 8 + self.domain.as_str().len() + 1);
        self.encode(&mut out);
        out
    }

    /// Decodes a receipt statement occupying all of `buf`.
    pub fn decode(buf: &[u8]) -> Result<ReceiptBody, StatementError> {
        let mut r = Reader::new(buf);
        let body = Self::read(&mut r)?;
        r.finish("receipt statement")?;
        Ok(body)
    }

    fn read(r: &mut Reader<'_>) -> Result<ReceiptBody, StatementError> {
        let hash = r.array("hash")?;
        let accepted_at = r.u64("accepted_at")?;
        let domain = Domain::parse_canonical(r.string(crate::limits::MAX_FIELD, "domain")?)?;
        Ok(ReceiptBody {
            hash,
            accepted_at,
            domain,
        })
    }

    /// Checks that the statement is about the message `hash`.
    pub fn check_hash(&self, hash: &[u8; 32]) -> Result<(), StatementError> {
        if &self.hash == hash {
            Ok(())
        } else {
            Err(StatementError::Crypto(CryptoError::BadSignature))
        }
    }
}

/// A kept receipt: proof that a server took responsibility for a message,
/// verifiable later by anyone who holds the server's key (PROTOCOL.md
/// §10.1). It is the signed SUCCESS reply to `MAIL` itself: the statement
/// with the connection nonce and reply position its signature binds, so
/// accepting a message costs the server one signature, not two.
///
/// Wire form: `statement | nonce[32] | u64 seq | signature[64]`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Receipt {
    /// The statement (the reply body).
    pub body: ReceiptBody,
    /// The connection nonce of the server's OHAI reply.
    pub nonce: [u8; 32],
    /// The reply's position on that connection.
    pub seq: u64,
    /// The reply signature.
    pub signature: [u8; SIGNATURE_LEN],
}

impl Receipt {
    fn signed_data(body: &[u8], nonce: [u8; 32], seq: u64, request: [u8; 32]) -> Vec<u8> {
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status: Status::Success,
            body_len: body.len() as u64,
        };
        ReplyBinding {
            nonce,
            seq,
            request,
        }
        .signed_data(&header, &body_hash(body))
    }

    /// Signs `body` as the SUCCESS reply to `MAIL` at position `seq` of the
    /// connection with `nonce`, as a server's connection does.
    pub fn issue(server: &IdentityKey, body: ReceiptBody, nonce: [u8; 32], seq: u64) -> Receipt {
        let data = Self::signed_data(&body.to_bytes(), nonce, seq, mail_digest());
        Receipt {
            signature: server.sign(SignatureTag::Reply, &[&data]),
            body,
            nonce,
            seq,
        }
    }

    /// Keeps a SUCCESS reply's `body` and `signature`, received at position
    /// `seq` of the connection with `nonce` (not verified here).
    pub fn from_reply(
        body: &[u8],
        nonce: [u8; 32],
        seq: u64,
        signature: [u8; SIGNATURE_LEN],
    ) -> Result<Receipt, StatementError> {
        Ok(Receipt {
            body: ReceiptBody::decode(body)?,
            nonce,
            seq,
            signature,
        })
    }

    /// The message hash.
    pub fn hash(&self) -> &[u8; 32] {
        &self.body.hash
    }

    /// When the message was accepted.
    pub fn accepted_at(&self) -> u64 {
        self.body.accepted_at
    }

    /// The receiving domain.
    pub fn domain(&self) -> &Domain {
        &self.body.domain
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.body.encode(out);
        out.extend_from_slice(&self.nonce);
        put_u64(out, self.seq);
        out.extend_from_slice(&self.signature);
    }

    /// The wire form as a new vector.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode(&mut out);
        out
    }

    /// Decodes a receipt occupying all of `buf` (not verified).
    pub fn decode(buf: &[u8]) -> Result<Receipt, StatementError> {
        let mut r = Reader::new(buf);
        let body = ReceiptBody::read(&mut r)?;
        let nonce = r.array("nonce")?;
        let seq = r.u64("seq")?;
        let signature = r.array("signature")?;
        r.finish("receipt")?;
        Ok(Receipt {
            body,
            nonce,
            seq,
            signature,
        })
    }

    /// Checks that the receipt is about `hash` and that its signature is the
    /// receiving server's SUCCESS reply to `MAIL`.
    pub fn verify(&self, server_key: &PublicKey, hash: &[u8; 32]) -> Result<(), StatementError> {
        self.verify_answering(server_key, hash, mail_digest())
    }

    /// As [`Receipt::verify`], for the reply to the request with digest
    /// `request` (an `APPEND` receipt answers the `APPEND` command, §13.6).
    pub fn verify_answering(
        &self,
        server_key: &PublicKey,
        hash: &[u8; 32],
        request: [u8; 32],
    ) -> Result<(), StatementError> {
        self.body.check_hash(hash)?;
        let data = Self::signed_data(&self.body.to_bytes(), self.nonce, self.seq, request);
        server_key.verify(SignatureTag::Reply, &[&data], &self.signature)?;
        Ok(())
    }
}

/// The trailer a source domain's server puts on a message: its signature
/// over the message hash.
pub fn sign_trailer(server: &IdentityKey, hash: &[u8; 32]) -> [u8; SIGNATURE_LEN] {
    server.sign(SignatureTag::DomainSignature, &[hash])
}

/// Checks a message trailer under the source domain's key.
pub fn verify_trailer(
    server_key: &PublicKey,
    hash: &[u8; 32],
    trailer: &[u8; SIGNATURE_LEN],
) -> Result<(), CryptoError> {
    server_key.verify(SignatureTag::DomainSignature, &[hash], trailer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::request_digest;

    fn key(n: u8) -> IdentityKey {
        IdentityKey::from_seed(&[n; 32])
    }
    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }
    fn a(s: &str) -> Account {
        Account::parse(s).unwrap()
    }

    #[test]
    fn a_key_statement_verifies_for_its_subject_only() {
        let server = key(1);
        let s = KeyStatement::issue(
            &server,
            Some(a("alice")),
            d("a.test"),
            key(2).public(),
            100,
            200,
        );
        let back = KeyStatement::decode(&s.to_bytes()).unwrap();
        assert_eq!(back, s);
        back.verify(&server.public(), Some(&a("alice")), &d("a.test"), 150)
            .unwrap();
        assert!(matches!(
            back.verify(&server.public(), Some(&a("bob")), &d("a.test"), 150),
            Err(StatementError::WrongSubject { .. })
        ));
        assert!(matches!(
            back.verify(&server.public(), Some(&a("alice")), &d("a.test"), 200),
            Err(StatementError::Expired { .. })
        ));
        assert!(matches!(
            back.verify(&key(9).public(), Some(&a("alice")), &d("a.test"), 150),
            Err(StatementError::Crypto(CryptoError::BadSignature))
        ));
    }

    #[test]
    fn a_statement_replayed_as_someone_else_fails_its_signature() {
        let server = key(1);
        let s = KeyStatement::issue(
            &server,
            Some(a("alice")),
            d("a.test"),
            key(2).public(),
            100,
            200,
        );
        let mut forged = s.clone();
        forged.account = Some(a("bob"));
        assert!(matches!(
            forged.verify(&server.public(), Some(&a("bob")), &d("a.test"), 150),
            Err(StatementError::Crypto(CryptoError::BadSignature))
        ));
    }

    #[test]
    fn a_bundle_accepts_a_rotation_chain_from_the_pin_and_nothing_else() {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let dom = d("a.test");
        let statement = KeyStatement::issue(&k3, None, dom.clone(), k3.public(), 0, 100);
        let bundle = ServerKeyBundle {
            statement,
            rotations: vec![
                Rotation::issue(&k1, k2.public(), dom.clone(), 10),
                Rotation::issue(&k2, k3.public(), dom.clone(), 20),
            ],
        };
        let back = ServerKeyBundle::decode(&bundle.to_bytes()).unwrap();
        assert_eq!(back.verify_self(&dom, 50).unwrap(), k3.public());
        back.check_against_pin(&k1.public(), &dom).unwrap();
        back.check_against_pin(&k2.public(), &dom).unwrap();
        back.check_against_pin(&k3.public(), &dom).unwrap();
        assert_eq!(
            back.check_against_pin(&key(4).public(), &dom),
            Err(StatementError::KeyChanged)
        );
        // A rotation signed by the wrong key does not count.
        let mut bad = bundle.clone();
        bad.rotations[0].signature[0] ^= 1;
        assert_eq!(
            bad.check_against_pin(&k1.public(), &dom),
            Err(StatementError::KeyChanged)
        );
    }

    #[test]
    fn a_bundle_with_too_many_rotations_is_refused() {
        let k = key(1);
        let statement = KeyStatement::issue(&k, None, d("a.test"), k.public(), 0, 100);
        let mut bytes = statement.to_bytes();
        bytes.push(17);
        assert!(matches!(
            ServerKeyBundle::decode(&bytes),
            Err(StatementError::Wire(WireError::TooLarge { .. }))
        ));
    }

    #[test]
    fn receipts_and_trailers_verify() {
        let server = key(5);
        let body = ReceiptBody {
            hash: [7; 32],
            accepted_at: 1234,
            domain: d("b.test"),
        };
        assert_eq!(ReceiptBody::decode(&body.to_bytes()).unwrap(), body);
        let r = Receipt::issue(&server, body, [3; 32], 2);
        let back = Receipt::decode(&r.to_bytes()).unwrap();
        assert_eq!(back, r);
        back.verify(&server.public(), &[7; 32]).unwrap();
        assert!(back.verify(&server.public(), &[8; 32]).is_err());
        assert!(back.verify(&key(6).public(), &[7; 32]).is_err());
        let t = sign_trailer(&server, &[1; 32]);
        verify_trailer(&server.public(), &[1; 32], &t).unwrap();
        assert!(verify_trailer(&server.public(), &[2; 32], &t).is_err());
        // A receipt signature is no trailer.
        assert!(verify_trailer(&server.public(), &[7; 32], &r.signature).is_err());
    }

    #[test]
    fn a_receipt_is_the_signed_success_reply_to_mail() {
        let server = key(5);
        let body = ReceiptBody {
            hash: [7; 32],
            accepted_at: 1234,
            domain: d("b.test"),
        };
        let bytes = body.to_bytes();
        // The reply a connection sends: header, body, signature over the binding.
        let header = ReplyHeader {
            version: REPLY_VERSION,
            status: Status::Success,
            body_len: bytes.len() as u64,
        };
        let binding = ReplyBinding {
            nonce: [9; 32],
            seq: 4,
            request: request_digest(b"MAIL\0"),
        };
        let sig = server.sign(
            SignatureTag::Reply,
            &[&binding.signed_data(&header, &body_hash(&bytes))],
        );
        let kept = Receipt::from_reply(&bytes, [9; 32], 4, sig).unwrap();
        kept.verify(&server.public(), &[7; 32]).unwrap();
        // Bound to its position, its connection and its request.
        let mut moved = kept.clone();
        moved.seq = 5;
        assert!(moved.verify(&server.public(), &[7; 32]).is_err());
        let mut other = kept.clone();
        other.nonce = [8; 32];
        assert!(other.verify(&server.public(), &[7; 32]).is_err());
        assert!(
            kept.verify_answering(&server.public(), &[7; 32], request_digest(b"APPEND\0"))
                .is_err()
        );
        // A statement with anything after it is not a receipt statement.
        let mut long = bytes.clone();
        long.push(0);
        assert!(ReceiptBody::decode(&long).is_err());
    }
}
