//! Reverse and forward paths of `MAIL FROM` and `RCPT TO` (RFC 5321 §4.1.2).
//!
//! Only ASCII is accepted (SMTPUTF8 is not offered). Limits (§4.5.3.1): a
//! local part of at most 64 octets, a domain of at most 255, a path of at
//! most 256. A source route (`<@a,@b:user@d>`) is accepted and ignored, as
//! §4.1.1.3 asks. Domains are folded to lower case; local parts keep their
//! case (they are the receiving domain's to interpret).

use std::fmt;

use thiserror::Error;

/// Longest local part (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL: usize = 64;
/// Longest domain (§4.5.3.1.2).
pub const MAX_DOMAIN: usize = 255;
/// Longest path, angle brackets included (§4.5.3.1.3).
pub const MAX_PATH: usize = 256;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum AddressError {
    /// No `<` ... `>` around the path.
    #[error("the address must be enclosed in <>")]
    NoBrackets,
    /// Longer than the limits of RFC 5321 §4.5.3.1.
    #[error("the address is too long")]
    TooLong,
    /// Not `local@domain`.
    #[error("malformed address")]
    Malformed,
    /// Characters outside ASCII (SMTPUTF8 is not offered).
    #[error("non-ASCII address (SMTPUTF8 is not supported)")]
    NotAscii,
    /// The null path where a mailbox is needed.
    #[error("an empty address is not allowed here")]
    Empty,
}

/// A mailbox: `local@domain`. `domain` is empty only for the special
/// recipient `<postmaster>` (§4.5.1).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Mailbox {
    /// The local part as sent (a quoted string keeps its quotes).
    pub local: String,
    /// The domain in lower case, or an address literal (`[192.0.2.1]`).
    pub domain: String,
}

impl fmt::Display for Mailbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.domain.is_empty() {
            f.write_str(&self.local)
        } else {
            write!(f, "{}@{}", self.local, self.domain)
        }
    }
}

/// Splits `<path> params` into the path's contents and the rest. Spaces
/// between the colon and `<` are tolerated.
pub fn split_path(arg: &str) -> Result<(&str, &str), AddressError> {
    let arg = arg.trim_start_matches(' ');
    let rest = arg.strip_prefix('<').ok_or(AddressError::NoBrackets)?;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in rest.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '>' if !quoted => {
                if i + 2 > MAX_PATH {
                    return Err(AddressError::TooLong);
                }
                return Ok((&rest[..i], &rest[i + 1..]));
            }
            _ => {}
        }
    }
    Err(AddressError::NoBrackets)
}

/// Parses the contents of a path (between `<` and `>`): `None` for the
/// null path `<>`.
pub fn parse_path(inner: &str) -> Result<Option<Mailbox>, AddressError> {
    if !inner.is_ascii() {
        return Err(AddressError::NotAscii);
    }
    if inner.is_empty() {
        return Ok(None);
    }
    // A source route: "@a,@b:" before the mailbox.
    let mailbox = if inner.starts_with('@') {
        let colon = inner.find(':').ok_or(AddressError::Malformed)?;
        for hop in inner[..colon].split(',') {
            let host = hop.strip_prefix('@').ok_or(AddressError::Malformed)?;
            parse_domain(host)?;
        }
        &inner[colon + 1..]
    } else {
        inner
    };
    if mailbox.eq_ignore_ascii_case("postmaster") {
        return Ok(Some(Mailbox {
            local: "postmaster".into(),
            domain: String::new(),
        }));
    }
    let at = mailbox.rfind('@').ok_or(AddressError::Malformed)?;
    let (local, domain) = (&mailbox[..at], &mailbox[at + 1..]);
    check_local(local)?;
    let domain = parse_domain(domain)?;
    Ok(Some(Mailbox {
        local: local.to_owned(),
        domain,
    }))
}

fn is_atext(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&c)
}

fn check_local(local: &str) -> Result<(), AddressError> {
    if local.is_empty() {
        return Err(AddressError::Malformed);
    }
    if local.len() > MAX_LOCAL {
        return Err(AddressError::TooLong);
    }
    let b = local.as_bytes();
    if b[0] == b'"' {
        // quoted-string: printable ASCII, with \ escapes
        if b.len() < 2 || b[b.len() - 1] != b'"' {
            return Err(AddressError::Malformed);
        }
        let mut escaped = false;
        for &c in &b[1..b.len() - 1] {
            if escaped {
                if !(32..127).contains(&c) {
                    return Err(AddressError::Malformed);
                }
                escaped = false;
            } else if c == b'\\' {
                escaped = true;
            } else if c == b'"' || !(32..127).contains(&c) {
                return Err(AddressError::Malformed);
            }
        }
        if escaped {
            return Err(AddressError::Malformed);
        }
        return Ok(());
    }
    // dot-string
    for atom in local.split('.') {
        if atom.is_empty() || !atom.bytes().all(is_atext) {
            return Err(AddressError::Malformed);
        }
    }
    Ok(())
}

/// A domain or an address literal, folded to lower case.
pub fn parse_domain(domain: &str) -> Result<String, AddressError> {
    if domain.is_empty() {
        return Err(AddressError::Malformed);
    }
    if domain.len() > MAX_DOMAIN {
        return Err(AddressError::TooLong);
    }
    if let Some(lit) = domain.strip_prefix('[') {
        let lit = lit.strip_suffix(']').ok_or(AddressError::Malformed)?;
        let ok = match lit
            .strip_prefix("IPv6:")
            .or_else(|| lit.strip_prefix("ipv6:"))
        {
            Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
            None => lit.parse::<std::net::Ipv4Addr>().is_ok(),
        };
        return if ok {
            Ok(domain.to_ascii_lowercase())
        } else {
            Err(AddressError::Malformed)
        };
    }
    let d = domain.strip_suffix('.').unwrap_or(domain);
    for label in d.split('.') {
        let b = label.as_bytes();
        if b.is_empty()
            || b.len() > 63
            || !b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
            || b[0] == b'-'
            || b[b.len() - 1] == b'-'
        {
            return Err(AddressError::Malformed);
        }
    }
    Ok(d.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(s: &str) -> Mailbox {
        let (inner, rest) = split_path(s).unwrap();
        assert_eq!(rest, "");
        parse_path(inner).unwrap().unwrap()
    }

    #[test]
    fn ordinary_addresses_parse_with_the_domain_folded() {
        let m = mb("<Bob.Smith@Example.ORG>");
        assert_eq!(m.local, "Bob.Smith");
        assert_eq!(m.domain, "example.org");
        assert_eq!(m.to_string(), "Bob.Smith@example.org");
    }

    #[test]
    fn the_null_path_and_parameters() {
        let (inner, rest) = split_path(" <> SIZE=10").unwrap();
        assert_eq!(parse_path(inner).unwrap(), None);
        assert_eq!(rest, " SIZE=10");
    }

    #[test]
    fn quoted_local_parts_and_source_routes() {
        assert_eq!(mb("<\"a b>c\"@x.test>").local, "\"a b>c\"");
        assert_eq!(
            mb("<@relay.test,@r2.test:bob@x.test>").to_string(),
            "bob@x.test"
        );
        assert_eq!(mb("<Postmaster>").domain, "");
        assert_eq!(mb("<u@[192.0.2.1]>").domain, "[192.0.2.1]");
    }

    #[test]
    fn malformed_and_oversized_addresses_are_refused() {
        for bad in [
            "<a@>",
            "<@x>",
            "<a..b@x.test>",
            "<a@-x.test>",
            "<a b@x.test>",
            "<a@x_y.test>",
        ] {
            let (inner, _) = split_path(bad).unwrap();
            assert!(parse_path(inner).is_err(), "{bad}");
        }
        assert_eq!(split_path("a@x.test"), Err(AddressError::NoBrackets));
        let long = format!("<{}@x.test>", "a".repeat(65));
        let (inner, _) = split_path(&long).unwrap();
        assert_eq!(parse_path(inner), Err(AddressError::TooLong));
        assert_eq!(parse_path("jörg@x.test"), Err(AddressError::NotAscii));
        let path = format!("<a@{}>", "b".repeat(300));
        assert_eq!(split_path(&path), Err(AddressError::TooLong));
    }
}
