//! Message content: the inner body, attachments, the sender signature, and
//! sealing/opening under crypto systems 0 and 1 (PROTOCOL.md §8).
//!
//! Two content versions live inside the sealed body (§8.1): version 1 (the
//! subject, date, reply-to, a Cc list of addresses, the text) and version 2,
//! which adds the sender's display name, To and Cc lists with display names,
//! a Bcc list (§8.1: each Bcc recipient's copy names only that recipient,
//! the others' copies none), a message id, In-Reply-To and References for
//! threads, and a media type per attachment. [`open`] reads both; a body
//! that starts with the byte `2` is version 2.
//!
//! ```
//! use cmtp_proto::content::{Attachment, Content, ContentVersion, Mailbox};
//! use cmtp_proto::crypto::IdentityKey;
//! use cmtp_proto::names::Address;
//! let mut rng = rand_core::OsRng;
//! let alice = IdentityKey::generate(&mut rng);
//! let bob = IdentityKey::generate(&mut rng);
//! let to = Address::parse("bob@b.test").unwrap();
//! let content = Content {
//!     version: ContentVersion::V2,
//!     from_name: "Alice".into(),
//!     subject: "Hello".into(),
//!     date: "2026-11-26T02:00:00Z".into(),
//!     message_id: "0f1e2d3c@a.test".into(),
//!     to: vec![Mailbox::new("Bob", to.clone())],
//!     text: "Hi Bob".into(),
//!     attachments: vec![Attachment::new("a.txt", "text/plain", b"data".to_vec())],
//!     ..Content::default()
//! };
//! let from = Address::parse("alice@a.test").unwrap();
//! let msg = content.seal(&from, &alice, &to, &bob.public(), &mut rng).unwrap();
//! let opened = cmtp_proto::content::open(&msg, Some(&bob)).unwrap();
//! assert_eq!(opened.content, content);
//! opened.verify_sender(&msg, &alice.public()).unwrap();
//! ```

use std::fmt;

use rand_core::{CryptoRng, RngCore};
use sha2::{Digest, Sha256};
use thiserror::Error;
use zeroize::Zeroizing;

use crate::crypto::sign::SIGNATURE_LEN;
use crate::crypto::{CryptoError, IdentityKey, PublicKey, SignatureTag, sealed};
use crate::limits::{ATTACHMENT_NAME_LEN, MAX_CC, MAX_FIELD, MAX_REFERENCES};
use crate::message::{Message, Source, VERSION_PLAINTEXT, VERSION_SEALED};
use crate::names::{Account, Address, Domain, NameError};
use crate::wire::{Reader, WireError, put_str, put_u32};

/// The first byte of a version 2 inner body. A version 1 body starts with
/// its reply-to address (an account's first character) or, without one,
/// with NUL, so the two cannot be confused.
pub const CONTENT_V2_MARK: u8 = 2;

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
    /// More than 100 carbon copies (or, in version 2, To or Bcc recipients).
    #[error("more than {MAX_CC} carbon copies")]
    TooManyCc,
    /// More than [`MAX_REFERENCES`] message ids in References.
    #[error("more than {MAX_REFERENCES} references")]
    TooManyReferences,
    /// A field holds a value version 2 does not allow (a display name with
    /// a control character, a message id or media type outside its
    /// characters, a version 2 field in version 1 content).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// Which field.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The message version is not 0 or 1.
    #[error("unsupported message version {0}")]
    Version(u32),
    /// The inner body starts with a content version this implementation
    /// does not know.
    #[error("unsupported content version {0}")]
    ContentVersion(u8),
    /// Sealing failed (a weak recipient key).
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// The layout of the inner body (PROTOCOL.md §8.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum ContentVersion {
    /// Reply-to, subject, date, a Cc list of addresses, the text.
    #[default]
    V1,
    /// Version 1's fields and the sender's name, To/Cc/Bcc with names, a
    /// message id, In-Reply-To, References and media types.
    V2,
}

impl ContentVersion {
    /// 1 or 2.
    pub fn number(self) -> u8 {
        match self {
            ContentVersion::V1 => 1,
            ContentVersion::V2 => 2,
        }
    }
}

/// A recipient as people write it: a display name (may be empty) and an
/// address (RFC 5322's *mailbox*).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The display name, e.g. `Bob Example`; empty when none was given.
    pub name: String,
    /// The address.
    pub address: Address,
}

impl Mailbox {
    /// A mailbox with a display name.
    pub fn new(name: impl Into<String>, address: Address) -> Mailbox {
        Mailbox {
            name: name.into(),
            address,
        }
    }

    /// A mailbox without a display name.
    pub fn bare(address: Address) -> Mailbox {
        Mailbox {
            name: String::new(),
            address,
        }
    }
}

impl fmt::Display for Mailbox {
    /// `Name <addr>` (the name quoted when it holds specials), or `addr`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name.is_empty() {
            return write!(f, "{}", self.address);
        }
        let plain = self
            .name
            .chars()
            .all(|c| c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | '\'' | '+'));
        if plain {
            write!(f, "{} <{}>", self.name, self.address)
        } else {
            let escaped = self.name.replace('\\', "\\\\").replace('"', "\\\"");
            write!(f, "\"{escaped}\" <{}>", self.address)
        }
    }
}

/// A file carried by a message.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Attachment {
    /// The file name as the sender gave it (never trust it as a path).
    pub name: String,
    /// The media type (`application/pdf`); empty in version 1 content,
    /// where none is carried.
    pub media_type: String,
    /// The file's bytes.
    pub data: Vec<u8>,
}

impl Attachment {
    /// An attachment.
    pub fn new(name: impl Into<String>, media_type: impl Into<String>, data: Vec<u8>) -> Self {
        Attachment {
            name: name.into(),
            media_type: media_type.into(),
            data,
        }
    }
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Attachment({:?}, {:?}, {} bytes)",
            self.name,
            self.media_type,
            self.data.len()
        )
    }
}

/// What a person writes: the inner header, the text and the attachments.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Content {
    /// The layout: version 1 carries only reply-to, subject, date, the Cc
    /// addresses and the text; the other header fields need version 2.
    pub version: ContentVersion,
    /// The sender's display name (version 2).
    pub from_name: String,
    /// Where replies should go, if not to the sender.
    pub reply_to: Option<Address>,
    /// The subject.
    pub subject: String,
    /// RFC 3339 UTC date.
    pub date: String,
    /// The message id (version 2: required), the same in every copy of one
    /// message: `<unique>@<the sender's domain>`, without angle brackets.
    pub message_id: String,
    /// The message id this one answers (version 2), empty for none.
    pub in_reply_to: String,
    /// The thread's message ids, oldest first (version 2).
    pub references: Vec<String>,
    /// The To recipients (version 2).
    pub to: Vec<Mailbox>,
    /// Carbon copies (each recipient gets its own sealed copy; version 1
    /// carries the addresses only).
    pub cc: Vec<Mailbox>,
    /// Blind copies (version 2): in a Bcc recipient's copy only that
    /// recipient, in the sender's own copy all of them, in the To and Cc
    /// recipients' copies none.
    pub bcc: Vec<Mailbox>,
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

fn invalid(what: &'static str, reason: impl Into<String>) -> ContentError {
    ContentError::Invalid {
        what,
        reason: reason.into(),
    }
}

/// A display name: at most 255 bytes, no control characters.
fn check_name(s: &str, what: &'static str) -> Result<(), ContentError> {
    check_field(s, what)?;
    if s.chars().any(char::is_control) {
        return Err(invalid(what, "holds a control character"));
    }
    Ok(())
}

/// A message id (PROTOCOL.md §8.1): 1 to 255 bytes of printable ASCII
/// without spaces, `<` or `>`.
pub fn check_message_id(s: &str) -> Result<(), ContentError> {
    if s.is_empty() || s.len() > MAX_FIELD {
        return Err(invalid("message id", "must be 1 to 255 bytes"));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_graphic() && b != b'<' && b != b'>')
    {
        return Err(invalid(
            "message id",
            "only printable ASCII without spaces, '<' or '>'",
        ));
    }
    Ok(())
}

/// A media type (PROTOCOL.md §8.1): `type/subtype`, each 1 to 127 of the
/// characters of RFC 6838's restricted names (letters, digits,
/// `! # $ & - ^ _ . +`), no parameters.
pub fn check_media_type(s: &str) -> Result<(), ContentError> {
    let ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 127
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    match s.split_once('/') {
        Some((t, st)) if ok(t) && ok(st) => Ok(()),
        _ => Err(invalid("media type", format!("{s:?} is not type/subtype"))),
    }
}

fn put_mailboxes(out: &mut Vec<u8>, list: &[Mailbox]) {
    put_u32(out, list.len() as u32);
    for m in list {
        put_str(out, m.address.account.as_str());
        put_str(out, m.address.domain.as_str());
        put_str(out, &m.name);
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
    /// The inner body without the sender signature (PROTOCOL.md §8.1), in
    /// the layout of [`version`](Self::version). Version 1 cannot carry the
    /// fields only version 2 has: they must be empty (Cc display names are
    /// left out).
    pub fn inner_body(&self) -> Result<Vec<u8>, ContentError> {
        let reply_to = self
            .reply_to
            .as_ref()
            .map(|a| a.to_string())
            .unwrap_or_default();
        check_field(&reply_to, "reply-to")?;
        check_field(&self.subject, "subject")?;
        check_field(&self.date, "date")?;
        if self.cc.len() > MAX_CC || self.to.len() > MAX_CC || self.bcc.len() > MAX_CC {
            return Err(ContentError::TooManyCc);
        }
        let mut out = Vec::with_capacity(self.text.len() + 256);
        match self.version {
            ContentVersion::V1 => {
                let v2_only = [
                    ("sender name", !self.from_name.is_empty()),
                    ("message id", !self.message_id.is_empty()),
                    ("in-reply-to", !self.in_reply_to.is_empty()),
                    ("references", !self.references.is_empty()),
                    ("to", !self.to.is_empty()),
                    ("bcc", !self.bcc.is_empty()),
                    (
                        "media type",
                        self.attachments.iter().any(|a| !a.media_type.is_empty()),
                    ),
                ];
                if let Some((what, _)) = v2_only.iter().find(|(_, set)| *set) {
                    return Err(invalid(what, "content version 1 cannot carry it"));
                }
                put_str(&mut out, &reply_to);
                put_str(&mut out, &self.subject);
                put_str(&mut out, &self.date);
                for m in &self.cc {
                    put_str(&mut out, m.address.account.as_str());
                    put_str(&mut out, m.address.domain.as_str());
                }
                out.push(0);
            }
            ContentVersion::V2 => {
                check_name(&self.from_name, "sender name")?;
                check_message_id(&self.message_id)?;
                if !self.in_reply_to.is_empty() {
                    check_message_id(&self.in_reply_to)?;
                }
                if self.references.len() > MAX_REFERENCES {
                    return Err(ContentError::TooManyReferences);
                }
                for r in &self.references {
                    check_message_id(r)?;
                }
                for m in self.to.iter().chain(&self.cc).chain(&self.bcc) {
                    check_name(&m.name, "display name")?;
                }
                for a in &self.attachments {
                    check_media_type(&a.media_type)?;
                }
                out.push(CONTENT_V2_MARK);
                put_str(&mut out, &self.from_name);
                put_str(&mut out, &reply_to);
                put_str(&mut out, &self.subject);
                put_str(&mut out, &self.date);
                put_str(&mut out, &self.message_id);
                put_str(&mut out, &self.in_reply_to);
                put_u32(&mut out, self.references.len() as u32);
                for r in &self.references {
                    put_str(&mut out, r);
                }
                put_mailboxes(&mut out, &self.to);
                put_mailboxes(&mut out, &self.cc);
                put_mailboxes(&mut out, &self.bcc);
                put_u32(&mut out, self.attachments.len() as u32);
                for a in &self.attachments {
                    put_str(&mut out, &a.media_type);
                }
            }
        }
        out.extend_from_slice(self.text.as_bytes());
        Ok(out)
    }

    /// The copy of this content for one recipient of a message with Bcc
    /// recipients: a Bcc recipient's copy lists only that recipient under
    /// Bcc, every other recipient's copy lists none (PROTOCOL.md §8.1). The
    /// sender's own copy keeps the whole list (use `self` for it).
    pub fn for_recipient(&self, recipient: &Address) -> Content {
        Content {
            bcc: self.bcc_for(recipient),
            ..self.clone()
        }
    }

    /// The Bcc list of `recipient`'s copy (see
    /// [`for_recipient`](Self::for_recipient)): that recipient alone if
    /// they are a Bcc recipient and not also a To or Cc recipient, else
    /// none.
    pub fn bcc_for(&self, recipient: &Address) -> Vec<Mailbox> {
        let visible = self
            .to
            .iter()
            .chain(&self.cc)
            .any(|m| m.address == *recipient);
        if visible {
            return Vec::new();
        }
        self.bcc
            .iter()
            .filter(|m| m.address == *recipient)
            .cloned()
            .collect()
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
        // The plaintexts are wiped when they go out of scope, whatever the
        // outcome; the recipient's key is prepared once for all parts.
        let mut inner = Zeroizing::new(self.inner_body()?);
        let plains: Vec<Zeroizing<Vec<u8>>> = self
            .attachment_plaintexts()
            .into_iter()
            .map(Zeroizing::new)
            .collect();
        let hashes: Vec<[u8; 32]> = plains.iter().map(|p| Sha256::digest(p).into()).collect();
        let signed = sender_signed_data(
            to,
            &source,
            VERSION_SEALED,
            &Sha256::digest(&*inner).into(),
            &hashes,
        );
        inner.extend_from_slice(&sender.sign(SignatureTag::SenderSignature, &[&signed]));
        let key = sealed::SealKey::new(recipient);
        let body = sealed::seal_with(&key, &inner, rng)?;
        let attachments = plains
            .iter()
            .map(|p| sealed::seal_with(&key, p, rng))
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
    // Version 2 names one media type per attachment.
    let media_types: Vec<String> = std::mem::take(&mut content.attachments)
        .into_iter()
        .map(|a| a.media_type)
        .collect();
    if content.version == ContentVersion::V2 && media_types.len() != msg.attachments.len() {
        return Err(ContentError::Malformed {
            part: "body".into(),
            error: WireError::Invalid {
                what: "media types",
                reason: format!(
                    "{} media types for {} attachments",
                    media_types.len(),
                    msg.attachments.len()
                ),
            },
        });
    }
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
            media_type: media_types.get(i).cloned().unwrap_or_default(),
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
    let mut content = Content::default();
    match inner.first() {
        Some(&CONTENT_V2_MARK) => {
            r.u8("content version").map_err(malformed)?;
            content.version = ContentVersion::V2;
            content.from_name = r
                .string(MAX_FIELD, "sender name")
                .map_err(malformed)?
                .to_owned();
            check_name(&content.from_name, "sender name")?;
        }
        Some(&b) if b != 0 && b < 0x20 => return Err(ContentError::ContentVersion(b)),
        _ => {}
    }
    let reply_to = r.string(MAX_FIELD, "reply-to").map_err(malformed)?;
    content.reply_to = if reply_to.is_empty() {
        None
    } else {
        let a = Address::parse(reply_to)?;
        if a.to_string() != reply_to {
            return Err(NameError::NotCanonical.into());
        }
        Some(a)
    };
    content.subject = r
        .string(MAX_FIELD, "subject")
        .map_err(malformed)?
        .to_owned();
    content.date = r.string(MAX_FIELD, "date").map_err(malformed)?.to_owned();
    if content.version == ContentVersion::V1 {
        loop {
            let account = r.string(MAX_FIELD, "cc account").map_err(malformed)?;
            if account.is_empty() {
                break;
            }
            if content.cc.len() == MAX_CC {
                return Err(ContentError::TooManyCc);
            }
            let domain = r.string(MAX_FIELD, "cc domain").map_err(malformed)?;
            content.cc.push(Mailbox::bare(Address::new(
                Account::parse(account)?,
                Domain::parse(domain)?,
            )));
        }
    } else {
        content.message_id = r
            .string(MAX_FIELD, "message id")
            .map_err(malformed)?
            .to_owned();
        check_message_id(&content.message_id)?;
        content.in_reply_to = r
            .string(MAX_FIELD, "in-reply-to")
            .map_err(malformed)?
            .to_owned();
        if !content.in_reply_to.is_empty() {
            check_message_id(&content.in_reply_to)?;
        }
        let n = count(&mut r, MAX_REFERENCES, "references").map_err(malformed)?;
        for _ in 0..n {
            let id = r.string(MAX_FIELD, "reference").map_err(malformed)?;
            check_message_id(id)?;
            content.references.push(id.to_owned());
        }
        content.to = read_mailboxes(&mut r, "to")?;
        content.cc = read_mailboxes(&mut r, "cc")?;
        content.bcc = read_mailboxes(&mut r, "bcc")?;
        // Media types: one per attachment, checked against the attachments
        // once they are opened.
        let n = count(&mut r, usize::MAX, "media types").map_err(malformed)?;
        for _ in 0..n {
            let t = r.string(MAX_FIELD, "media type").map_err(malformed)?;
            check_media_type(t)?;
            content.attachments.push(Attachment {
                media_type: t.to_owned(),
                ..Attachment::default()
            });
        }
    }
    content.text = std::str::from_utf8(r.rest())
        .map_err(|_| malformed(WireError::InvalidUtf8 { what: "text" }))?
        .to_owned();
    Ok(content)
}

/// A `u32` count of a list, at most `max` and at most the bytes left (each
/// entry takes at least one), checked before anything is allocated.
fn count(r: &mut Reader<'_>, max: usize, what: &'static str) -> Result<usize, WireError> {
    let n = r.u32(what)? as usize;
    let max = max.min(r.remaining());
    if n > max {
        return Err(WireError::TooLarge {
            what,
            value: n as u64,
            max: max as u64,
        });
    }
    Ok(n)
}

fn read_mailboxes(r: &mut Reader<'_>, what: &'static str) -> Result<Vec<Mailbox>, ContentError> {
    let malformed = |error| ContentError::Malformed {
        part: "body".into(),
        error,
    };
    let n = count(r, MAX_CC, what).map_err(|e| match e {
        WireError::TooLarge { value, .. } if value > MAX_CC as u64 => ContentError::TooManyCc,
        e => malformed(e),
    })?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let account = r
            .string(MAX_FIELD, "recipient account")
            .map_err(malformed)?;
        let domain = r.string(MAX_FIELD, "recipient domain").map_err(malformed)?;
        let name = r.string(MAX_FIELD, "display name").map_err(malformed)?;
        check_name(name, "display name")?;
        out.push(Mailbox::new(
            name,
            Address::new(
                Account::parse_canonical(account)?,
                Domain::parse_canonical(domain)?,
            ),
        ));
    }
    Ok(out)
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
            cc: vec![Mailbox::bare(addr("carol@c.test"))],
            text: "Hello Bob,\nünïcødé text.\n".into(),
            attachments: vec![
                Attachment {
                    name: "report.pdf".into(),
                    data: vec![1, 2, 3],
                    ..Attachment::default()
                },
                Attachment {
                    name: "x".repeat(300),
                    data: vec![],
                    ..Attachment::default()
                },
            ],
            ..Content::default()
        }
    }

    fn content_v2() -> Content {
        Content {
            version: ContentVersion::V2,
            from_name: "Alice Ä. Example".into(),
            message_id: "9f86d081884c7d65@a.test".into(),
            in_reply_to: "root-1@b.test".into(),
            references: vec!["root-1@b.test".into()],
            to: vec![
                Mailbox::new("Bob", addr("bob@b.test")),
                Mailbox::bare(addr("dan@d.test")),
            ],
            cc: vec![Mailbox::new("Carol, the \"C\"", addr("carol@c.test"))],
            bcc: vec![Mailbox::bare(addr("eve@e.test"))],
            attachments: vec![
                Attachment::new("report.pdf", "application/pdf", vec![1, 2, 3]),
                Attachment::new("notes.txt", "text/plain", b"n".to_vec()),
            ],
            ..content()
        }
    }

    fn keys() -> (IdentityKey, IdentityKey) {
        (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
        )
    }

    #[test]
    fn version_2_content_round_trips_and_verifies() {
        let (alice, bob) = keys();
        let c = content_v2();
        let inner = c.inner_body().unwrap();
        assert_eq!(inner[0], CONTENT_V2_MARK);
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
        assert_eq!(o.content, c);
        o.verify_sender(&m, &alice.public()).unwrap();
        // Plaintext (crypto 0) carries the same fields.
        let p = c
            .plaintext(&addr("alice@a.test"), &addr("bob@b.test"))
            .unwrap();
        assert_eq!(open(&p, None).unwrap().content, c);
    }

    #[test]
    fn the_sender_signature_covers_the_version_2_fields() {
        let (alice, bob) = keys();
        let c = content_v2();
        let m = c
            .seal(
                &addr("alice@a.test"),
                &alice,
                &addr("bob@b.test"),
                &bob.public(),
                &mut rng(),
            )
            .unwrap();
        let signed = sealed::open(&bob, &m.body).unwrap().to_vec();
        let sig = &signed[signed.len() - SIGNATURE_LEN..];
        // Each field changed in turn, the original signature kept.
        let mut changes: Vec<Content> = Vec::new();
        for f in 0..6 {
            let mut x = c.clone();
            match f {
                0 => x.to[1] = Mailbox::bare(addr("mallory@d.test")),
                1 => x.cc[0].name = "Someone else".into(),
                2 => x.in_reply_to = "other@b.test".into(),
                3 => x.from_name = "Not Alice".into(),
                4 => x.attachments[0].media_type = "text/html".into(),
                _ => x.bcc.clear(),
            }
            changes.push(x);
        }
        for x in changes {
            let mut body = x.inner_body().unwrap();
            body.extend_from_slice(sig);
            let forged = Message {
                body: sealed::seal(&bob.public(), &body, &mut rng()).unwrap(),
                ..m.clone()
            };
            let o = open(&forged, Some(&bob)).unwrap();
            assert_eq!(o.content, x);
            assert_eq!(
                o.verify_sender(&forged, &alice.public()),
                Err(CryptoError::BadSignature),
                "{x:?}"
            );
        }
    }

    #[test]
    fn bcc_recipients_see_only_themselves_and_others_see_none() {
        let c = content_v2();
        assert!(c.for_recipient(&addr("bob@b.test")).bcc.is_empty());
        assert!(c.for_recipient(&addr("carol@c.test")).bcc.is_empty());
        let eve = c.for_recipient(&addr("eve@e.test"));
        assert_eq!(eve.bcc, [Mailbox::bare(addr("eve@e.test"))]);
        assert_eq!(eve.to, c.to);
        let two = Content {
            bcc: vec![
                Mailbox::bare(addr("eve@e.test")),
                Mailbox::bare(addr("fay@f.test")),
            ],
            ..content_v2()
        };
        assert_eq!(
            two.for_recipient(&addr("fay@f.test")).bcc,
            [Mailbox::bare(addr("fay@f.test"))]
        );
    }

    #[test]
    fn version_2_fields_are_refused_in_version_1_and_checked_in_version_2() {
        let mut c = content();
        c.message_id = "x@a.test".into();
        assert!(matches!(
            c.inner_body(),
            Err(ContentError::Invalid {
                what: "message id",
                ..
            })
        ));
        let mut c = content();
        c.attachments[0].media_type = "text/plain".into();
        assert!(c.inner_body().is_err());
        for bad in ["", "has space@a", "<x@a>", "é@a"] {
            let c = Content {
                message_id: bad.into(),
                ..content_v2()
            };
            assert!(c.inner_body().is_err(), "{bad:?}");
        }
        for bad in [
            "text",
            "text/",
            "/plain",
            "text/plain; charset=utf-8",
            "a/b/c",
        ] {
            let mut c = content_v2();
            c.attachments[0].media_type = bad.into();
            assert!(c.inner_body().is_err(), "{bad:?}");
        }
        let mut c = content_v2();
        c.to[0].name = "Bob\r\nBcc: x".into();
        assert!(c.inner_body().is_err());
        let mut c = content_v2();
        c.references = vec!["r@x".into(); MAX_REFERENCES + 1];
        assert_eq!(c.inner_body(), Err(ContentError::TooManyReferences));
        let mut c = content_v2();
        c.to = vec![Mailbox::bare(addr("a@b.c")); MAX_CC + 1];
        assert_eq!(c.inner_body(), Err(ContentError::TooManyCc));
    }

    #[test]
    fn malformed_version_2_bodies_are_errors() {
        let (alice, bob) = keys();
        let seal = |c: &Content, atts: usize| {
            let mut m = c
                .seal(
                    &addr("alice@a.test"),
                    &alice,
                    &addr("bob@b.test"),
                    &bob.public(),
                    &mut rng(),
                )
                .unwrap();
            m.attachments.truncate(atts);
            m
        };
        // One media type too many for the attachments that arrived.
        let m = seal(&content_v2(), 1);
        assert!(matches!(
            open(&m, Some(&bob)),
            Err(ContentError::Malformed {
                error: WireError::Invalid {
                    what: "media types",
                    ..
                },
                ..
            })
        ));
        // A count larger than what follows is refused before allocating.
        let mut body = content_v2().inner_body().unwrap();
        let at = body.len() - content_v2().text.len() - 4 - "application/pdf\0text/plain\0".len();
        body[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            parse_inner(&body),
            Err(ContentError::Malformed {
                error: WireError::TooLarge { .. },
                ..
            })
        ));
        // An unknown content version.
        assert_eq!(parse_inner(&[3, 0]), Err(ContentError::ContentVersion(3)));
        // A non-canonical recipient.
        let mut c = content_v2();
        c.to.truncate(1);
        let body = c.inner_body().unwrap();
        let pos = body.windows(4).position(|w| w == b"bob\0").unwrap();
        let mut upper = body.clone();
        upper[pos] = b'B';
        assert!(parse_inner(&upper).is_err());
    }

    #[test]
    fn mailboxes_display_as_people_write_them() {
        assert_eq!(
            Mailbox::new("Bob Example", addr("bob@b.test")).to_string(),
            "Bob Example <bob@b.test>"
        );
        assert_eq!(Mailbox::bare(addr("bob@b.test")).to_string(), "bob@b.test");
        assert_eq!(
            Mailbox::new("Carol, \"C\"", addr("c@c.test")).to_string(),
            "\"Carol, \\\"C\\\"\" <c@c.test>"
        );
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
        c.cc = vec![Mailbox::bare(addr("a@b.c")); MAX_CC + 1];
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
