//! Message content: the inner body, attachments, the sender signature, and
//! sealing/opening under crypto systems 0 and 1 (PROTOCOL.md §8).
//!
//! ```
//! use cmtp_proto::content::{Attachment, Content};
//! use cmtp_proto::crypto::IdentityKey;
//! use cmtp_proto::names::Address;
//! let mut rng = rand_core::OsRng;
//! let alice = IdentityKey::generate(&mut rng);
//! let bob = IdentityKey::generate(&mut rng);
//! let content = Content {
//!     subject: "Hello".into(),
//!     date: "2026-11-26T02:00:00Z".into(),
//!     text: "Hi Bob".into(),
//!     attachments: vec![Attachment { name: "a.txt".into(), data: b"data".to_vec() }],
//!     ..Content::default()
//! };
//! let from = Address::parse("alice@a.test").unwrap();
//! let to = Address::parse("bob@b.test").unwrap();
//! let msg = content.seal(&from, &alice, &to, &bob.public(), &mut rng).unwrap();
//! let opened = cmtp_proto::content::open(&msg, Some(&bob)).unwrap();
//! assert_eq!(opened.content, content);
//! opened.verify_sender(&msg, &alice.public()).unwrap();
//! ```

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::crypto::sign::SIGNATURE_LEN;
use crate::crypto::{CryptoError, IdentityKey, PublicKey, SignatureTag, sealed};
use crate::limits::{ATTACHMENT_NAME_LEN, MAX_CC, MAX_FIELD};
use crate::message::{Message, Source, VERSION_PLAINTEXT, VERSION_SEALED};
use crate::names::{Account, Address, Domain, NameError};
use crate::wire::{Reader, WireError, put_str, put_u32};

/// Why content could not be built or opened.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ContentError {
    /// The body or an attachment does not open with this key (tampered, or
    /// not sealed to it).
    #[error("cannot decrypt the {part}: {error}")]
    Decrypt {
        /// `body` or `attachment N`.
        part: String,
        /// The underlying failure.
        error: CryptoError,
    },
    /// A sealed message was opened without a key.
    #[error("the message is encrypted and no key was given")]
    NoKey,
    /// The decrypted plaintext is malformed.
    #[error("malformed {part}: {error}")]
    Malformed {
        /// Which part.
        part: String,
        /// What is wrong.
        error: WireError,
    },
    /// An address in the inner header is invalid.
    #[error("invalid address in the header: {0}")]
    Name(#[from] NameError),
    /// A header field is over 255 bytes or holds a NUL.
    #[error("{0} is longer than 255 bytes or contains NUL")]
    FieldTooLong(&'static str),
    /// More than 100 carbon copies.
    #[error("more than {MAX_CC} carbon copies")]
    TooManyCc,
    /// The message version is not 0 or 1.
    #[error("unsupported message version {0}")]
    Version(u32),
    /// Sealing failed (a weak recipient key).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// A file carried by a message.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Attachment {
    /// The file name as the sender gave it (never trust it as a path).
    pub name: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Attachment({:?}, {} bytes)", self.name, self.data.len())
    }
}

/// What a person writes: the inner header, the text and the attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content {
    /// Where replies should go, if not to the sender.
    pub reply_to: Option<Address>,
    /// The subject.
    pub subject: String,
    /// RFC 3339 UTC date.
    pub date: String,
    /// Carbon copies (informative: each recipient gets its own sealed copy).
    pub cc: Vec<Address>,
    /// The UTF-8 text.
    pub text: String,
    /// The attachments.
    pub attachments: Vec<Attachment>,
}

fn check_field(s: &str, what: &'static str) -> Result<(), ContentError> {
    if s.len() > MAX_FIELD || s.contains('\0') {
        Err(ContentError::FieldTooLong(what))
    } else {
        Ok(())
    }
}

/// Truncates a file name to the 255-byte field at a character boundary.
fn name_field(name: &str) -> [u8; ATTACHMENT_NAME_LEN] {
    let mut out = [0u8; ATTACHMENT_NAME_LEN];
    let mut end = name.len().min(ATTACHMENT_NAME_LEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    let clean: Vec<u8> = name.as_bytes()[..end]
        .iter()
        .copied()
        .filter(|&b| b != 0)
        .collect();
    out[..clean.len()].copy_from_slice(&clean);
    out
}

impl Content {
    /// The inner body without the sender signature.
    pub fn inner_body(&self) -> Result<Vec<u8>, ContentError> {
        let reply_to = self
            .reply_to
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        check_field(&reply_to, "reply-to")?;
        check_field(&self.subject, "subject")?;
        check_field(&self.date, "date")?;
        if self.cc.len() > MAX_CC {
            return Err(ContentError::TooManyCc);
        }
        let mut out = Vec::with_capacity(self.text.len() + 128);
        put_str(
            &mut out,
            &self
                .reply_to
                .as_ref()
                .map(|a| a.to_string())
                .unwrap_or_default(),
        );
        put_str(&mut out, &self.subject);
        put_str(&mut out, &self.date);
        for a in &self.cc {
            put_str(&mut out, a.account.as_str());
            put_str(&mut out, a.domain.as_str());
        }
        out.push(0);
        out.extend_from_slice(self.text.as_bytes());
        Ok(out)
    }

    fn attachment_plaintexts(&self) -> Vec<Vec<u8>> {
        self.attachments
            .iter()
            .map(|a| {
                let mut p = Vec::with_capacity(ATTACHMENT_NAME_LEN + a.data.len());
                p.extend_from_slice(&name_field(&a.name));
                p.extend_from_slice(&a.data);
                p
            })
            .collect()
    }

    /// Builds a crypto system 1 message: signs as `from` with `sender`'s
    /// identity key and seals body and attachments to `recipient`. The
    /// trailer is zero (the sender's server signs it).
    pub fn seal(
        &self,
        from: &Address,
        sender: &IdentityKey,
        to: &Address,
        recipient: &PublicKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Message, ContentError> {
        self.seal_as(Source::user(from.clone()), sender, to, recipient, rng)
    }

    /// As [`seal`](Self::seal) with any source (a server sends notices as
    /// its domain, with an empty account).
    pub fn seal_as(
        &self,
        source: Source,
        sender: &IdentityKey,
        to: &Address,
        recipient: &PublicKey,
        rng: &mut (impl RngCore + CryptoRng),
    ) -> Result<Message, ContentError> {
        let mut inner = self.inner_body()?;
        let plains = self.attachment_plaintexts();
        let hashes: Vec<[u8; 32]> = plains.iter().map(|p| Sha256::digest(p).into()).collect();
        let signed = sender_signed_data(
            to,
            &source,
            VERSION_SEALED,
            &Sha256::digest(&inner).into(),
            &hashes,
        );
        inner.extend_from_slice(&sender.sign(SignatureTag::SenderSignature, &[&signed]));
        let body = sealed::seal(recipient, &inner, rng)?;
        let attachments = plains
            .iter()
            .map(|p| sealed::seal(recipient, p, rng))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Message {
            version: VERSION_SEALED,
            destination: to.clone(),
            source,
            log: Vec::new(),
            body,
            attachments,
            trailer: [0; 64],
        })
    }

    /// Builds a crypto system 0 (plaintext, unsigned) message.
    pub fn plaintext(&self, from: &Address, to: &Address) -> Result<Message, ContentError> {
        Ok(Message {
            version: VERSION_PLAINTEXT,
            destination: to.clone(),
            source: Source::user(from.clone()),
            log: Vec::new(),
            body: self.inner_body()?,
            attachments: self.attachment_plaintexts(),
            trailer: [0; 64],
        })
    }
}

/// The data the sender signs (after the tag `CMTP-v1 sender-signature\0`).
fn sender_signed_data(
    to: &Address,
    source: &Source,
    version: u32,
    body_hash: &[u8; 32],
    attachment_hashes: &[[u8; 32]],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200 + 32 * attachment_hashes.len());
    put_str(&mut out, to.account.as_str());
    put_str(&mut out, to.domain.as_str());
    put_str(&mut out, source.account.as_ref().map_or("", |a| a.as_str()));
    put_str(&mut out, source.domain.as_str());
    put_u32(&mut out, version);
    out.extend_from_slice(body_hash);
    put_u32(&mut out, attachment_hashes.len() as u32);
    for h in attachment_hashes {
        out.extend_from_slice(h);
    }
    out
}

/// A decrypted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// What the sender wrote.
    pub content: Content,
    /// The sender's signature (crypto system 1), not yet verified.
    pub sender_signature: Option<[u8; SIGNATURE_LEN]>,
    body_hash: [u8; 32],
    attachment_hashes: Vec<[u8; 32]>,
}

impl Opened {
    /// Checks the sender signature with the key of the message's source
    /// (the sender's key statement, or the source server's key for a notice).
    pub fn verify_sender(&self, msg: &Message, sender_key: &PublicKey) -> Result<(), CryptoError> {
        let sig = self.sender_signature.ok_or(CryptoError::BadSignature)?;
        let signed = sender_signed_data(
            &msg.destination,
            &msg.source,
            msg.version,
            &self.body_hash,
            &self.attachment_hashes,
        );
        sender_key.verify(SignatureTag::SenderSignature, &[&signed], &sig)
    }
}

/// Decrypts (crypto 1, with `recipient`) or reads (crypto 0) a message.
pub fn open(msg: &Message, recipient: Option<&IdentityKey>) -> Result<Opened, ContentError> {
    let decrypt = |part: String, c: &[u8]| -> Result<Vec<u8>, ContentError> {
        match msg.version {
            VERSION_PLAINTEXT => Ok(c.to_vec()),
            VERSION_SEALED => {
                let key = recipient.ok_or(ContentError::NoKey)?;
                sealed::open(key, c)
                    .map(|p| p.to_vec())
                    .map_err(|error| ContentError::Decrypt { part, error })
            }
            v => Err(ContentError::Version(v)),
        }
    };
    let mut inner = decrypt("body".into(), &msg.body)?;
    let sender_signature = if msg.version == VERSION_SEALED {
        if inner.len() < SIGNATURE_LEN {
            return Err(ContentError::Malformed {
                part: "body".into(),
                error: WireError::Truncated {
                    what: "sender signature",
                    needed: SIGNATURE_LEN - inner.len(),
                },
            });
        }
        let sig: [u8; SIGNATURE_LEN] = inner[inner.len() - SIGNATURE_LEN..].try_into().expect("64");
        inner.truncate(inner.len() - SIGNATURE_LEN);
        Some(sig)
    } else {
        None
    };
    let body_hash: [u8; 32] = Sha256::digest(&inner).into();
    let mut content = parse_inner(&inner).map_err(|e| match e {
        ContentError::Malformed { error, .. } => ContentError::Malformed {
            part: "body".into(),
            error,
        },
        other => other,
    })?;
    let mut attachment_hashes = Vec::with_capacity(msg.attachments.len());
    for (i, a) in msg.attachments.iter().enumerate() {
        let part = format!("attachment {}", i + 1);
        let plain = decrypt(part.clone(), a)?;
        attachment_hashes.push(Sha256::digest(&plain).into());
        if plain.len() < ATTACHMENT_NAME_LEN {
            return Err(ContentError::Malformed {
                part,
                error: WireError::Truncated {
                    what: "file name field",
                    needed: ATTACHMENT_NAME_LEN - plain.len(),
                },
            });
        }
        let field = &plain[..ATTACHMENT_NAME_LEN];
        let end = field
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(ATTACHMENT_NAME_LEN);
        let name = std::str::from_utf8(&field[..end])
            .map_err(|_| ContentError::Malformed {
                part: part.clone(),
                error: WireError::InvalidUtf8 { what: "file name" },
            })?
            .to_owned();
        content.attachments.push(Attachment {
            name,
            data: plain[ATTACHMENT_NAME_LEN..].to_vec(),
        });
    }
    Ok(Opened {
        content,
        sender_signature,
        body_hash,
        attachment_hashes,
    })
}

fn parse_inner(inner: &[u8]) -> Result<Content, ContentError> {
    let malformed = |error| ContentError::Malformed {
        part: "body".into(),
        error,
    };
    let mut r = Reader::new(inner);
    let reply_to = r.string(MAX_FIELD, "reply-to").map_err(malformed)?;
    let reply_to = if reply_to.is_empty() {
        None
    } else {
        let a = Address::parse(reply_to)?;
        if a.to_string() != reply_to {
            return Err(NameError::NotCanonical.into());
        }
        Some(a)
    };
    let subject = r
        .string(MAX_FIELD, "subject")
        .map_err(malformed)?
        .to_owned();
    let date = r.string(MAX_FIELD, "date").map_err(malformed)?.to_owned();
    let mut cc = Vec::new();
    loop {
        let account = r.string(MAX_FIELD, "cc account").map_err(malformed)?;
        if account.is_empty() {
            break;
        }
        if cc.len() == MAX_CC {
            return Err(ContentError::TooManyCc);
        }
        let domain = r.string(MAX_FIELD, "cc domain").map_err(malformed)?;
        cc.push(Address::new(
            Account::parse(account)?,
            Domain::parse(domain)?,
        ));
    }
    let text = std::str::from_utf8(r.rest())
        .map_err(|_| malformed(WireError::InvalidUtf8 { what: "text" }))?
        .to_owned();
    Ok(Content {
        reply_to,
        subject,
        date,
        cc,
        text,
        attachments: Vec::new(),
    })
}

/// A file name from a message made safe to create inside a folder: the last
/// path component, without control characters, separators or leading dots;
/// `fallback` when nothing is left.
pub fn safe_file_name(name: &str, fallback: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| !c.is_control() && !matches!(c, '/' | '\\' | ':' | '\0'))
        .collect();
    let cleaned = cleaned.trim().trim_start_matches('.').trim().to_owned();
    if cleaned.is_empty() || cleaned == "." || cleaned == ".." {
        fallback.to_owned()
    } else {
        cleaned.chars().take(200).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::StdRng {
        rand::rngs::StdRng::seed_from_u64(7)
    }
    fn addr(s: &str) -> Address {
        Address::parse(s).unwrap()
    }
    fn content() -> Content {
        Content {
            reply_to: Some(addr("alice+replies@a.test")),
            subject: "Grüße".into(),
            date: "2026-11-26T02:00:00Z".into(),
            cc: vec![addr("carol@c.test")],
            text: "Hello Bob,\nünïcødé text.\n".into(),
            attachments: vec![
                Attachment {
                    name: "report.pdf".into(),
                    data: vec![1, 2, 3],
                },
                Attachment {
                    name: "x".repeat(300),
                    data: vec![],
                },
            ],
        }
    }

    #[test]
    fn a_sealed_message_opens_for_its_recipient_and_verifies() {
        let (alice, bob) = (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
        );
        let c = content();
        let m = c
            .seal(
                &addr("alice@a.test"),
                &alice,
                &addr("bob@b.test"),
                &bob.public(),
                &mut rng(),
            )
            .unwrap();
        let o = open(&m, Some(&bob)).unwrap();
        let mut expected = c.clone();
        expected.attachments[1].name = "x".repeat(255);
        assert_eq!(o.content, expected);
        o.verify_sender(&m, &alice.public()).unwrap();
        assert!(o.verify_sender(&m, &bob.public()).is_err());
    }

    #[test]
    fn a_copy_readdressed_to_someone_else_fails_the_sender_signature() {
        let (alice, bob) = (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
        );
        let mut m = content()
            .seal(
                &addr("alice@a.test"),
                &alice,
                &addr("bob@b.test"),
                &bob.public(),
                &mut rng(),
            )
            .unwrap();
        m.destination = addr("mallory@b.test");
        let o = open(&m, Some(&bob)).unwrap();
        assert_eq!(
            o.verify_sender(&m, &alice.public()),
            Err(CryptoError::BadSignature)
        );
    }

    #[test]
    fn a_flipped_byte_is_a_decrypt_error_not_garbage() {
        let (alice, bob) = (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
        );
        let m = content()
            .seal(
                &addr("alice@a.test"),
                &alice,
                &addr("bob@b.test"),
                &bob.public(),
                &mut rng(),
            )
            .unwrap();
        let mut body = m.clone();
        body.body[60] ^= 0x01;
        assert!(
            matches!(open(&body, Some(&bob)), Err(ContentError::Decrypt { ref part, .. }) if part == "body")
        );
        let mut att = m.clone();
        att.attachments[0][50] ^= 0x80;
        assert!(
            matches!(open(&att, Some(&bob)), Err(ContentError::Decrypt { ref part, .. }) if part == "attachment 1")
        );
        assert!(matches!(
            open(&m, Some(&alice)),
            Err(ContentError::Decrypt { .. })
        ));
        assert_eq!(open(&m, None), Err(ContentError::NoKey));
    }

    #[test]
    fn plaintext_messages_build_and_parse_without_a_signature() {
        let c = content();
        let m = c
            .plaintext(&addr("alice@a.test"), &addr("bob@b.test"))
            .unwrap();
        assert_eq!(m.version, VERSION_PLAINTEXT);
        let o = open(&m, None).unwrap();
        assert_eq!(o.content.text, c.text);
        assert_eq!(o.sender_signature, None);
        assert!(
            o.verify_sender(&m, &IdentityKey::from_seed(&[1; 32]).public())
                .is_err()
        );
    }

    #[test]
    fn oversize_header_fields_and_cc_lists_are_refused() {
        let mut c = content();
        c.subject = "s".repeat(256);
        assert_eq!(c.inner_body(), Err(ContentError::FieldTooLong("subject")));
        let mut c = content();
        c.cc = vec![addr("a@b.c"); MAX_CC + 1];
        assert_eq!(c.inner_body(), Err(ContentError::TooManyCc));
    }

    #[test]
    fn a_reply_to_address_over_255_bytes_is_refused() {
        let mut c = content();
        c.reply_to = Some(Address::new(
            Account::parse(&"a".repeat(64)).unwrap(),
            Domain::parse(&vec!["b".repeat(63); 3].join(".")).unwrap(),
        ));
        assert_eq!(c.inner_body(), Err(ContentError::FieldTooLong("reply-to")));
    }

    #[test]
    fn file_names_never_escape_the_folder() {
        for (bad, want) in [
            ("../../etc/passwd", "passwd"),
            ("/etc/shadow", "shadow"),
            ("..", "fallback"),
            ("...", "fallback"),
            ("C:\\Windows\\evil.exe", "evil.exe"),
            (".bashrc", "bashrc"),
            ("a\nb\u{7}c", "abc"),
            ("", "fallback"),
            ("dir/", "fallback"),
        ] {
            assert_eq!(safe_file_name(bad, "fallback"), want, "{bad:?}");
        }
    }
}
