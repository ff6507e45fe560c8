//! SMTP replies (RFC 5321 §4.2) with enhanced status codes (RFC 3463).

use std::fmt;

/// One SMTP reply: a three-digit code, an enhanced status code and text
/// (one or more lines).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The basic code, 200 to 599.
    pub code: u16,
    /// The enhanced status code (`2.1.0`), or empty for replies that carry
    /// none (the greeting, EHLO).
    pub enhanced: String,
    /// The text lines (without CR LF; CR and LF are removed from them).
    pub lines: Vec<String>,
}

impl Reply {
    /// A one-line reply.
    pub fn new(code: u16, enhanced: &str, text: impl Into<String>) -> Reply {
        Reply {
            code,
            enhanced: enhanced.to_owned(),
            lines: vec![text.into()],
        }
    }

    /// Whether the code is a success (2xx or 3xx).
    pub fn is_positive(&self) -> bool {
        self.code < 400
    }

    /// Whether the code is a transient failure (4xx).
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// Whether the server closes the connection after this reply (421, 221).
    pub fn closes(&self) -> bool {
        self.code == 421 || self.code == 221
    }

    /// The reply on the wire: `code-text` lines, the last `code text`, each
    /// ended by CR LF.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.lines.len().max(1);
        for i in 0..n {
            let line = self.lines.get(i).map(String::as_str).unwrap_or("");
            let sep = if i + 1 == n { ' ' } else { '-' };
            let clean: String = line.chars().filter(|c| *c != '\r' && *c != '\n').collect();
            let text = if self.enhanced.is_empty() {
                clean
            } else {
                format!("{} {clean}", self.enhanced)
            };
            out.extend_from_slice(format!("{}{sep}{text}\r\n", self.code).as_bytes());
        }
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {}",
            self.code,
            self.enhanced,
            self.lines.join(" / ")
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_line_replies_use_dashes_until_the_last_line() {
        let r = Reply {
            code: 250,
            enhanced: String::new(),
            lines: vec![
                "mx greets you".into(),
                "PIPELINING".into(),
                "SIZE 10".into(),
            ],
        };
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(
            out,
            b"250-mx greets you\r\n250-PIPELINING\r\n250 SIZE 10\r\n"
        );
    }

    #[test]
    fn text_cannot_inject_lines() {
        let mut out = Vec::new();
        Reply::new(550, "5.1.1", "no\r\n250 ok").encode(&mut out);
        assert_eq!(out, b"550 5.1.1 no250 ok\r\n");
    }
}
