//! Primitive wire encodings shared by every structure (PROTOCOL.md §2 "Conventions").
//!
//! All integers are big-endian. Strings are UTF-8 followed by one NUL byte and
//! at most [`MAX_FIELD`](crate::limits::MAX_FIELD) bytes long before the NUL.
//! [`Reader`] reads from a complete buffer and fails on truncation;
//! incremental decoders check for completeness before they use it.

use thiserror::Error;

use crate::limits::MAX_FIELD;

/// A structure could not be decoded from a complete buffer.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum WireError {
    /// The buffer ended before the structure did.
    #[error("truncated: {what} needs {needed} more bytes")]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// How many bytes were missing.
        needed: usize,
    },
    /// A NUL-terminated string had no NUL within its limit.
    #[error("{what} is longer than {max} bytes or not NUL-terminated")]
    FieldTooLong {
        /// The field being read.
        what: &'static str,
        /// Its limit in bytes, NUL excluded.
        max: usize,
    },
    /// A string was not valid UTF-8.
    #[error("{what} is not valid UTF-8")]
    InvalidUtf8 {
        /// The field being read.
        what: &'static str,
    },
    /// Bytes remained after the structure ended.
    #[error("{count} unexpected bytes after the end of {what}")]
    TrailingBytes {
        /// The structure being read.
        what: &'static str,
        /// How many bytes were left over.
        count: usize,
    },
    /// A length or count exceeded its limit.
    #[error("{what} of {value} exceeds the limit of {max}")]
    TooLarge {
        /// The field being read.
        what: &'static str,
        /// The announced value.
        value: u64,
        /// The limit.
        max: u64,
    },
    /// A field held a value the protocol does not allow.
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The field being read.
        what: &'static str,
        /// Why it is invalid.
        reason: String,
    },
}

/// A cursor over a complete, untrusted buffer.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// Starts reading at the beginning of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// How many bytes have been read.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// The unread rest of the buffer, consuming it.
    pub fn rest(&mut self) -> &'a [u8] {
        let rest = &self.buf[self.pos..];
        self.pos = self.buf.len();
        rest
    }

    /// Takes exactly `n` bytes.
    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(WireError::Truncated {
                what,
                needed: n - self.remaining(),
            });
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Takes a fixed-size array.
    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self.bytes(N, what)?;
        let mut out = [0u8; N];
        out.copy_from_slice(b);
        Ok(out)
    }

    /// Reads one byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    /// Reads a big-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    /// Reads a big-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    /// Reads a NUL-terminated UTF-8 string of at most `max` bytes (NUL excluded).
    pub fn string(&mut self, max: usize, what: &'static str) -> Result<&'a str, WireError> {
        let raw = self.cstr(max, what)?;
        std::str::from_utf8(raw).map_err(|_| WireError::InvalidUtf8 { what })
    }

    /// Reads a NUL-terminated byte string of at most `max` bytes (NUL excluded).
    pub fn cstr(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let window = &self.buf[self.pos..];
        let limit = window.len().min(max + 1);
        match window[..limit].iter().position(|&b| b == 0) {
            Some(n) => {
                let out = &window[..n];
                self.pos += n + 1;
                Ok(out)
            }
            None if window.len() > max => Err(WireError::FieldTooLong { what, max }),
            None => Err(WireError::Truncated { what, needed: 1 }),
        }
    }

    /// A length-prefixed (u32) byte string of at most `max` bytes.
    pub fn blob32(&mut self, max: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        let len = self.u32(what)?;
        if len as usize > max {
            return Err(WireError::TooLarge {
                what,
                value: u64::from(len),
                max: max as u64,
            });
        }
        self.bytes(len as usize, what)
    }

    /// Fails unless every byte has been read.
    pub fn finish(&self, what: &'static str) -> Result<(), WireError> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(WireError::TrailingBytes { what, count }),
        }
    }
}

/// Appends a NUL-terminated string. Panics in debug builds if it holds a NUL
/// or exceeds [`MAX_FIELD`]; callers pass validated values.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    debug_assert!(!s.as_bytes().contains(&0), "string field holds a NUL");
    debug_assert!(s.len() <= MAX_FIELD, "string field over {MAX_FIELD} bytes");
    out.extend_from_slice(s.as_bytes());
    out.push(0);
}

/// Appends a big-endian u32.
pub fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a big-endian u64.
pub fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Appends a u32 length prefix and the bytes.
pub fn put_blob32(out: &mut Vec<u8>, b: &[u8]) {
    let len = u32::try_from(b.len()).expect("blob over 4 GiB");
    put_u32(out, len);
    out.extend_from_slice(b);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cstr_stops_at_the_limit_without_a_nul() {
        let buf = vec![b'a'; 300];
        let mut r = Reader::new(&buf);
        assert_eq!(
            r.cstr(255, "field"),
            Err(WireError::FieldTooLong {
                what: "field",
                max: 255
            })
        );
    }

    #[test]
    fn cstr_of_exactly_the_limit_is_accepted() {
        let mut buf = vec![b'a'; 255];
        buf.push(0);
        let mut r = Reader::new(&buf);
        assert_eq!(r.cstr(255, "field").unwrap().len(), 255);
        r.finish("field").unwrap();
    }

    #[test]
    fn cstr_short_of_its_nul_is_truncated() {
        let mut r = Reader::new(b"abc");
        assert!(matches!(
            r.cstr(255, "field"),
            Err(WireError::Truncated { .. })
        ));
    }

    #[test]
    fn blob32_refuses_a_length_over_its_limit_before_reading() {
        let mut r = Reader::new(&[0xff, 0xff, 0xff, 0xff]);
        assert_eq!(
            r.blob32(10, "blob"),
            Err(WireError::TooLarge {
                what: "blob",
                value: 0xffff_ffff,
                max: 10
            })
        );
    }
}
