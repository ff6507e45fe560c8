//! The connection banner and SMTP coexistence (PROTOCOL.md §4.1, §16).
//!
//! On accepting a connection a CMTP server sends one text line in clear
//! before anything else; TLS follows:
//!
//! ```text
//! 554 a.example CMTP/2 cmtpd ready; TLS 1.3 follows; this is not an SMTP server\r\n
//! ```
//!
//! An SMTP client reads it as SMTP's "no service here" greeting and fails at
//! once instead of waiting for a `220`; a CMTP client reads it, checks the
//! `CMTP/2` token, and goes on with the TLS handshake it has already begun.
//! A server that cannot take the connection (too many connections, shutting
//! down) sends `421` instead and closes. A CMTP client that receives a `220`
//! greeting has reached an SMTP server; one that sees `CMTP/1` has reached a
//! server of the first, unencrypted version.

use crate::limits::MAX_BANNER;
use crate::names::Domain;

/// The protocol token of the banner.
pub const PROTOCOL_TOKEN: &str = "CMTP/2";

/// The token of the first, unencrypted version of the protocol.
pub const OLD_PROTOCOL_TOKEN: &str = "CMTP/1";

/// What the first line from a server says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Banner {
    /// A CMTP server ready for commands.
    Ready {
        /// The domain the server serves.
        domain: String,
    },
    /// A CMTP server that refuses the connection for now (code 421).
    Busy {
        /// The domain the server serves.
        domain: String,
        /// The server's explanation.
        text: String,
    },
    /// A server of CMTP/1, which speaks in clear.
    OldProtocol {
        /// The domain it named.
        domain: String,
    },
    /// An SMTP server (a 3-digit reply code without the CMTP token).
    Smtp {
        /// The line it sent.
        line: String,
    },
    /// Something else altogether.
    Unknown {
        /// The line it sent (lossy UTF-8).
        line: String,
    },
}

/// The banner of a server ready for commands.
pub fn ready_line(domain: &Domain, software: &str) -> String {
    format!(
        "554 {domain} {PROTOCOL_TOKEN} {software} ready; TLS 1.3 follows; this is not an SMTP server\r\n"
    )
}

/// The refusal a peer gets that does not start TLS (a CMTP/1 client, a
/// port scanner), before the server closes the connection.
pub fn clear_refusal(domain: &Domain) -> String {
    format!(
        "554 5.7.0 {domain} {PROTOCOL_TOKEN}: TLS 1.3 is required; nothing is spoken in clear here (CMTP/1 is not supported)\r\n"
    )
}

/// The banner of a server refusing the connection for now.
pub fn busy_line(domain: &Domain, reason: &str) -> String {
    let reason: String = reason
        .chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect();
    format!("421 {domain} {PROTOCOL_TOKEN} {reason}\r\n")
}

/// The SMTP-formatted refusal a CMTP server sends to an SMTP command before
/// it closes the connection.
pub fn smtp_refusal(domain: &Domain, verb: &str) -> String {
    if verb.eq_ignore_ascii_case("QUIT") {
        format!("221 2.0.0 {domain} closing: this is a CMTP server\r\n")
    } else {
        format!(
            "554 5.5.0 {domain} this is a CMTP server ({PROTOCOL_TOKEN}), SMTP is not spoken here\r\n"
        )
    }
}

/// Decodes the banner line from the front of `buf`: `Ok(None)` = need more
/// bytes; `Err(())` = no line end within [`MAX_BANNER`] bytes.
#[allow(clippy::result_unit_err)]
pub fn decode_banner(buf: &[u8]) -> Result<Option<(Banner, usize)>, ()> {
    let window = &buf[..buf.len().min(MAX_BANNER)];
    let Some(lf) = window.iter().position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_BANNER {
            Err(())
        } else {
            Ok(None)
        };
    };
    let line = String::from_utf8_lossy(&window[..lf])
        .trim_end_matches('\r')
        .to_owned();
    Ok(Some((classify(&line), lf + 1)))
}

fn looks_like_smtp(b: &[u8]) -> bool {
    b.len() >= 4 && b[..3].iter().all(u8::is_ascii_digit) && matches!(b[3], b' ' | b'-')
}

fn classify(line: &str) -> Banner {
    let mut parts = line.splitn(4, ' ');
    let code = parts.next().unwrap_or("");
    let domain = parts.next().unwrap_or("").to_owned();
    let token = parts.next().unwrap_or("");
    let text = parts.next().unwrap_or("").to_owned();
    if token == PROTOCOL_TOKEN {
        match code {
            "554" => return Banner::Ready { domain },
            "421" => return Banner::Busy { domain, text },
            _ => {}
        }
    }
    if token == OLD_PROTOCOL_TOKEN && matches!(code, "554" | "421") {
        return Banner::OldProtocol { domain };
    }
    if looks_like_smtp(line.as_bytes()) {
        Banner::Smtp {
            line: line.to_owned(),
        }
    } else {
        Banner::Unknown {
            line: line.to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Domain {
        Domain::parse("a.test").unwrap()
    }

    #[test]
    fn a_cmtp1_banner_is_an_old_protocol() {
        let (b, _) =
            decode_banner(b"554 a.test CMTP/1 cmtpd ready; this is not an SMTP server\r\n")
                .unwrap()
                .unwrap();
        assert_eq!(
            b,
            Banner::OldProtocol {
                domain: "a.test".into()
            }
        );
    }

    #[test]
    fn the_ready_banner_is_recognised() {
        let line = ready_line(&d(), "cmtpd 0.1.0");
        let (b, n) = decode_banner(line.as_bytes()).unwrap().unwrap();
        assert_eq!(n, line.len());
        assert_eq!(
            b,
            Banner::Ready {
                domain: "a.test".into()
            }
        );
    }

    #[test]
    fn the_busy_banner_is_recognised() {
        let line = busy_line(&d(), "too many connections");
        let (b, _) = decode_banner(line.as_bytes()).unwrap().unwrap();
        assert_eq!(
            b,
            Banner::Busy {
                domain: "a.test".into(),
                text: "too many connections".into()
            }
        );
    }

    #[test]
    fn an_smtp_greeting_is_recognised() {
        let (b, _) = decode_banner(b"220 mx.example ESMTP Postfix\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(b, Banner::Smtp { .. }));
        let (b, _) = decode_banner(b"220-mx.example ESMTP\r\n220 more\r\n")
            .unwrap()
            .unwrap();
        assert!(matches!(b, Banner::Smtp { .. }));
    }

    #[test]
    fn a_line_without_an_end_is_refused_at_the_limit() {
        assert_eq!(decode_banner(&[b'x'; 100]), Ok(None));
        assert_eq!(decode_banner(&[b'x'; MAX_BANNER]), Err(()));
    }

    #[test]
    fn smtp_refusals_are_smtp_replies() {
        assert!(smtp_refusal(&d(), "EHLO").starts_with("554 5.5.0 a.test "));
        assert!(smtp_refusal(&d(), "quit").starts_with("221 "));
        assert!(smtp_refusal(&d(), "EHLO").ends_with("\r\n"));
    }
}
