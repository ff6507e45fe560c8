//! Replies: framing, incremental decoding, encoding and the signed form
//! (PROTOCOL.md §5 "Replies").
//!
//! ```text
//! reply = u32 version | status word NUL | u64 body length | body | signature[64]
//! ```
//!
//! The signature is the server's Ed25519 signature (tag `CMTP-v1 reply\0`) over
//! [`ReplyBinding::signed_data`]: the connection nonce from the greeting, the
//! reply's sequence number on the connection, the digest of the request it
//! answers, the header and the SHA-256 of the body. A reply therefore cannot
//! be replayed onto another request, connection or position.

use std::fmt;

use sha2::{Digest, Sha256};
use thiserror::Error;

use crate::limits::MAX_STATUS;
use crate::wire::{put_str, put_u32, put_u64};

/// The crypto-system version replies carry.
pub const REPLY_VERSION: u32 = 1;
/// Size of a reply signature.
pub const SIGNATURE_LEN: usize = 64;

/// The status word of a reply.
#[derive(Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Status {
    /// The command succeeded; the body depends on the command.
    Success,
    /// A permanent failure of the command; the body is a UTF-8 explanation.
    Failure,
    /// KEYREQUEST: no key for that user or domain.
    KeyNotAvailable,
    /// KEYREQUEST for another domain: that domain's key could not be
    /// verified (it contradicts its `_cmtpkey` record, changed without a
    /// rotation statement, or the domain's server sent a reply its key did
    /// not sign).
    KeyUnverified,
    /// MAIL: the message will not be delivered; the body is a reason word,
    /// NUL, and a UTF-8 explanation.
    DeliveryFailure,
    /// A temporary failure: try again later (full disk, store unavailable,
    /// shutting down, remote server unreachable).
    TempFailure,
    /// An unknown or malformed command word; the connection stays usable.
    BadCommand,
    /// A well-framed argument or payload was invalid; the connection stays usable.
    BadArgument,
    /// A word or argument exceeded its limit; the server closes the connection.
    TooLong,
    /// A malformed message after MAIL; the server closes the connection
    /// unless the reply says otherwise.
    BadMessage,
    /// A message exceeded the size or attachment limits; the server closes the connection.
    TooBig,
    /// The command needs a logged-in session.
    AuthRequired,
    /// LOGIN failed: wrong password or unknown user (indistinguishable).
    AuthFailed,
    /// Too many attempts; wait before trying again.
    RateLimited,
    /// The peer was too slow; the server closes the connection.
    Timeout,
    /// Too many consecutive bad commands; the server closes the connection.
    TooManyErrors,
    /// A status word this implementation does not know (a newer peer);
    /// treat it as a failure.
    Other(String),
}

impl Status {
    /// The word on the wire.
    pub fn word(&self) -> &str {
        match self {
            Status::Success => "SUCCESS",
            Status::Failure => "FAILURE",
            Status::KeyNotAvailable => "KEYNOTAVAILABLE",
            Status::KeyUnverified => "KEYUNVERIFIED",
            Status::DeliveryFailure => "DELIVERYFAILURE",
            Status::TempFailure => "TEMPFAILURE",
            Status::BadCommand => "BADCOMMAND",
            Status::BadArgument => "BADARGUMENT",
            Status::TooLong => "TOOLONG",
            Status::BadMessage => "BADMESSAGE",
            Status::TooBig => "TOOBIG",
            Status::AuthRequired => "AUTHREQUIRED",
            Status::AuthFailed => "AUTHFAILED",
            Status::RateLimited => "RATELIMITED",
            Status::Timeout => "TIMEOUT",
            Status::TooManyErrors => "TOOMANYERRORS",
            Status::Other(w) => w,
        }
    }

    /// Parses a status word (1 to 16 upper-case ASCII letters).
    pub fn from_word(w: &str) -> Result<Status, ReplyError> {
        if w.is_empty() || w.len() > MAX_STATUS || !w.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ReplyError::BadStatus(w.escape_default().to_string()));
        }
        Ok(match w {
            "SUCCESS" => Status::Success,
            "FAILURE" => Status::Failure,
            "KEYNOTAVAILABLE" => Status::KeyNotAvailable,
            "KEYUNVERIFIED" => Status::KeyUnverified,
            "DELIVERYFAILURE" => Status::DeliveryFailure,
            "TEMPFAILURE" => Status::TempFailure,
            "BADCOMMAND" => Status::BadCommand,
            "BADARGUMENT" => Status::BadArgument,
            "TOOLONG" => Status::TooLong,
            "BADMESSAGE" => Status::BadMessage,
            "TOOBIG" => Status::TooBig,
            "AUTHREQUIRED" => Status::AuthRequired,
            "AUTHFAILED" => Status::AuthFailed,
            "RATELIMITED" => Status::RateLimited,
            "TIMEOUT" => Status::Timeout,
            "TOOMANYERRORS" => Status::TooManyErrors,
            other => Status::Other(other.to_owned()),
        })
    }

    /// Whether the server closes the connection after sending this status.
    pub fn closes_connection(&self) -> bool {
        matches!(
            self,
            Status::TooLong | Status::TooBig | Status::Timeout | Status::TooManyErrors
        )
    }

    /// Whether a failure with this status is worth retrying later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Status::TempFailure | Status::RateLimited | Status::Timeout
        )
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.word())
    }
}

/// Why a reply could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The status word is not 1–16 upper-case ASCII letters.
    #[error("malformed status word {0:?}")]
    BadStatus(String),
    /// The reply's version is not 1.
    #[error("unsupported reply version {0}")]
    UnsupportedVersion(u32),
    /// The body is longer than the caller allows for this command.
    #[error("reply body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Announced length.
        len: u64,
        /// The caller's limit.
        max: u64,
    },
}

/// The fixed part of a reply before its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyHeader {
    /// Crypto-system version (1).
    pub version: u32,
    /// The status word.
    pub status: Status,
    /// Length of the body in bytes.
    pub body_len: u64,
}

impl ReplyHeader {
    /// Appends the header's wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u32(out, self.version);
        put_str(out, self.status.word());
        put_u64(out, self.body_len);
    }

    /// Decodes a header from the front of `buf`: `Ok(None)` = need more bytes.
    pub fn decode(buf: &[u8]) -> Result<Option<(ReplyHeader, usize)>, ReplyError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let version = u32::from_be_bytes(buf[..4].try_into().expect("4 bytes"));
        if version != REPLY_VERSION {
            return Err(ReplyError::UnsupportedVersion(version));
        }
        let window = &buf[4..buf.len().min(4 + MAX_STATUS + 1)];
        let Some(n) = window.iter().position(|&b| b == 0) else {
            return if window.len() > MAX_STATUS {
                Err(ReplyError::BadStatus(
                    String::from_utf8_lossy(window).escape_default().to_string(),
                ))
            } else {
                Ok(None)
            };
        };
        let word = std::str::from_utf8(&window[..n])
            .map_err(|_| ReplyError::BadStatus(String::from_utf8_lossy(&window[..n]).into()))?;
        let status = Status::from_word(word)?;
        let at = 4 + n + 1;
        let Some(len) = buf.get(at..at + 8) else {
            return Ok(None);
        };
        let body_len = u64::from_be_bytes(len.try_into().expect("8 bytes"));
        Ok(Some((
            ReplyHeader {
                version,
                status,
                body_len,
            },
            at + 8,
        )))
    }
}

/// A complete reply held in memory.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    /// Crypto-system version (1).
    pub version: u32,
    /// The status word.
    pub status: Status,
    /// The body.
    pub body: Vec<u8>,
    /// The server's signature (see [`ReplyBinding`]).
    pub signature: [u8; SIGNATURE_LEN],
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reply")
            .field("version", &self.version)
            .field("status", &self.status)
            .field("body_len", &self.body.len())
            .finish_non_exhaustive()
    }
}

impl Reply {
    /// The header of this reply.
    pub fn header(&self) -> ReplyHeader {
        ReplyHeader {
            version: self.version,
            status: self.status.clone(),
            body_len: self.body.len() as u64,
        }
    }

    /// Appends the wire form.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.header().encode(out);
        out.extend_from_slice(&self.body);
        out.extend_from_slice(&self.signature);
    }

    /// The body as text, for error replies (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Events of the streaming [`ReplyDecoder`].
#[derive(Debug, PartialEq, Eq)]
pub enum ReplyEvent<'a> {
    /// The header; body chunks follow.
    Header(ReplyHeader),
    /// A piece of the body.
    Body(&'a [u8]),
    /// The signature; the reply is complete.
    End([u8; SIGNATURE_LEN]),
}

#[derive(Debug)]
enum ReplyState {
    Header,
    Body { left: u64 },
    Signature,
}

/// Streaming reply decoder for large bodies (FETCH): header, then body chunks
/// as they arrive, then the signature. Bodies over `max_body` are refused as
/// soon as the header is read.
#[derive(Debug)]
pub struct ReplyDecoder {
    max_body: u64,
    state: ReplyState,
}

impl ReplyDecoder {
    /// A decoder that accepts bodies up to `max_body` bytes.
    pub fn new(max_body: u64) -> Self {
        ReplyDecoder {
            max_body,
            state: ReplyState::Header,
        }
    }

    /// Decodes the next event from `input`, returning how many bytes it used.
    /// `Ok((0, None))` means more bytes are needed.
    pub fn next<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<ReplyEvent<'a>>), ReplyError> {
        match self.state {
            ReplyState::Header => match ReplyHeader::decode(input)? {
                None => Ok((0, None)),
                Some((h, n)) => {
                    if h.body_len > self.max_body {
                        return Err(ReplyError::BodyTooLarge {
                            len: h.body_len,
                            max: self.max_body,
                        });
                    }
                    self.state = if h.body_len == 0 {
                        ReplyState::Signature
                    } else {
                        ReplyState::Body { left: h.body_len }
                    };
                    Ok((n, Some(ReplyEvent::Header(h))))
                }
            },
            ReplyState::Body { left } => {
                if input.is_empty() {
                    return Ok((0, None));
                }
                let n = usize::try_from(left).unwrap_or(usize::MAX).min(input.len());
                let left = left - n as u64;
                self.state = if left == 0 {
                    ReplyState::Signature
                } else {
                    ReplyState::Body { left }
                };
                Ok((n, Some(ReplyEvent::Body(&input[..n]))))
            }
            ReplyState::Signature => {
                let Some(sig) = input.get(..SIGNATURE_LEN) else {
                    return Ok((0, None));
                };
                self.state = ReplyState::Header;
                Ok((
                    SIGNATURE_LEN,
                    Some(ReplyEvent::End(sig.try_into().expect("64 bytes"))),
                ))
            }
        }
    }
}

/// Decodes one whole reply from the front of `buf`, refusing bodies over
/// `max_body`. `Ok(None)` = need more bytes.
pub fn decode_reply(buf: &[u8], max_body: u64) -> Result<Option<(Reply, usize)>, ReplyError> {
    let Some((header, n)) = ReplyHeader::decode(buf)? else {
        return Ok(None);
    };
    if header.body_len > max_body {
        return Err(ReplyError::BodyTooLarge {
            len: header.body_len,
            max: max_body,
        });
    }
    let too_large = || ReplyError::BodyTooLarge {
        len: header.body_len,
        max: max_body,
    };
    let body_end = usize::try_from(header.body_len)
        .ok()
        .and_then(|l| n.checked_add(l))
        .ok_or_else(too_large)?;
    let Some(sig_end) = body_end.checked_add(SIGNATURE_LEN) else {
        return Err(too_large());
    };
    let Some(sig) = buf.get(body_end..sig_end) else {
        return Ok(None);
    };
    Ok(Some((
        Reply {
            version: header.version,
            status: header.status,
            body: buf[n..body_end].to_vec(),
            signature: sig.try_into().expect("64 bytes"),
        },
        sig_end,
    )))
}

/// What a reply's signature binds it to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplyBinding {
    /// The connection nonce from the server's OHAI reply.
    pub nonce: [u8; 32],
    /// 0-based position of the reply on the connection.
    pub seq: u64,
    /// [`crate::command::request_digest`] of the request answered.
    pub request: [u8; 32],
}

impl ReplyBinding {
    /// The bytes signed after the tag `CMTP-v1 reply\0`:
    /// `nonce[32] | u64 seq | request[32] | u32 version | status NUL | u64 body_len | SHA-256(body)[32]`.
    pub fn signed_data(&self, header: &ReplyHeader, body_hash: &[u8; 32]) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + 8 + 32 + 4 + 17 + 8 + 32);
        out.extend_from_slice(&self.nonce);
        put_u64(&mut out, self.seq);
        out.extend_from_slice(&self.request);
        header.encode(&mut out);
        out.extend_from_slice(body_hash);
        out
    }
}

/// SHA-256 of a reply body.
pub fn body_hash(body: &[u8]) -> [u8; 32] {
    Sha256::digest(body).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Success),
            Just(Status::Failure),
            Just(Status::KeyNotAvailable),
            Just(Status::DeliveryFailure),
            Just(Status::TempFailure),
            Just(Status::TooBig),
            Just(Status::AuthFailed),
            "[A-Z]{1,16}".prop_map(|w| Status::from_word(&w).unwrap()),
        ]
    }

    fn arb_reply() -> impl Strategy<Value = Reply> {
        (
            arb_status(),
            proptest::collection::vec(any::<u8>(), 0..300),
            proptest::array::uniform32(any::<u8>()),
        )
            .prop_map(|(status, body, half)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&half);
                Reply {
                    version: REPLY_VERSION,
                    status,
                    body,
                    signature,
                }
            })
    }

    #[test]
    fn a_body_length_near_2_pow_64_is_refused_without_overflow() {
        let mut b = Vec::new();
        ReplyHeader {
            version: 1,
            status: Status::Success,
            body_len: u64::MAX,
        }
        .encode(&mut b);
        b.extend_from_slice(&[0; 100]);
        assert!(matches!(
            decode_reply(&b, u64::MAX),
            Err(ReplyError::BodyTooLarge { .. })
        ));
        let mut v2 = 2u32.to_be_bytes().to_vec();
        v2.extend_from_slice(b"SUCCESS\0");
        assert_eq!(
            ReplyHeader::decode(&v2),
            Err(ReplyError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn a_status_word_over_sixteen_bytes_is_refused() {
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"ABCDEFGHIJKLMNOPQ\0");
        assert!(matches!(
            ReplyHeader::decode(&b),
            Err(ReplyError::BadStatus(_))
        ));
        let mut b = 1u32.to_be_bytes().to_vec();
        b.extend_from_slice(b"success\0");
        assert!(matches!(
            ReplyHeader::decode(&b),
            Err(ReplyError::BadStatus(_))
        ));
    }

    #[test]
    fn a_body_over_the_callers_limit_is_refused_before_it_arrives() {
        let mut b = Vec::new();
        ReplyHeader {
            version: 1,
            status: Status::Success,
            body_len: u64::MAX,
        }
        .encode(&mut b);
        assert_eq!(
            decode_reply(&b, 1 << 20),
            Err(ReplyError::BodyTooLarge {
                len: u64::MAX,
                max: 1 << 20
            })
        );
        assert!(ReplyDecoder::new(10).next(&b).is_err());
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_the_identity(r in arb_reply()) {
            let mut b = Vec::new();
            r.encode(&mut b);
            let (back, n) = decode_reply(&b, 1 << 20).unwrap().unwrap();
            prop_assert_eq!(n, b.len());
            prop_assert_eq!(&back, &r);
            for cut in 0..b.len() {
                prop_assert_eq!(decode_reply(&b[..cut], 1 << 20).unwrap(), None);
            }
        }

        #[test]
        fn the_streaming_decoder_agrees_however_input_is_split(r in arb_reply(), step in 1usize..40) {
            let mut b = Vec::new();
            r.encode(&mut b);
            let mut dec = ReplyDecoder::new(1 << 20);
            let mut buf: Vec<u8> = Vec::new();
            let mut body = Vec::new();
            let mut header = None;
            let mut sig = None;
            for chunk in b.chunks(step) {
                buf.extend_from_slice(chunk);
                loop {
                    let (n, ev) = dec.next(&buf).unwrap();
                    let done = match ev {
                        None => true,
                        Some(ReplyEvent::Header(h)) => { header = Some(h); false }
                        Some(ReplyEvent::Body(c)) => { body.extend_from_slice(c); false }
                        Some(ReplyEvent::End(s)) => { sig = Some(s); false }
                    };
                    buf.drain(..n);
                    if done { break; }
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(header.unwrap(), r.header());
            prop_assert_eq!(body, r.body);
            prop_assert_eq!(sig.unwrap(), r.signature);
        }
    }
}
