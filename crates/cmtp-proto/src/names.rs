//! Account and domain names (PROTOCOL.md §3 "Names").
//!
//! Names from the wire are parsed into types that can only hold valid,
//! canonical values: an [`Account`] is never empty, never `..`, never holds
//! `/`, NUL, a control character or anything outside a small allow-list, so it
//! is safe to use as a database key and is never a path. A [`Domain`] is
//! lower-case, without a trailing dot, made of LDH labels.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

use crate::limits::{MAX_ACCOUNT, MAX_DOMAIN, MAX_LABEL};

/// Why a name was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NameError {
    /// The name is empty.
    #[error("name is empty")]
    Empty,
    /// The name is longer than its limit.
    #[error("name is {len} bytes, the limit is {max}")]
    TooLong {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The name holds a character outside the allow-list.
    #[error("character {0:?} is not allowed in a name")]
    BadCharacter(char),
    /// The name starts or ends with a character that may only stand inside it.
    #[error("a name must start and end with a letter or digit")]
    BadEdge,
    /// Two dots in a row (an empty domain label, or `..` in an account).
    #[error("empty label or two dots in a row")]
    EmptyLabel,
    /// A domain label is longer than 63 bytes.
    #[error("domain label over {MAX_LABEL} bytes")]
    LabelTooLong,
    /// The name is valid but not in its canonical form (upper case, a
    /// trailing dot). Structures that are hashed or signed carry names only
    /// in canonical form, so that every reader computes the same bytes.
    #[error("name is not in canonical form (lower case, no trailing dot)")]
    NotCanonical,
    /// An address lacks its `@`.
    #[error("an address is written user@domain")]
    NotAnAddress,
}

/// A local part of a CMTP address: 1 to 64 bytes of `a-z 0-9 . _ + -`,
/// starting and ending with a letter or digit, no two dots in a row.
/// Upper-case ASCII letters are folded to lower case on parsing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Account(String);

impl Account {
    /// Parses and canonicalises an account name.
    pub fn parse(s: &str) -> Result<Account, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_ACCOUNT {
            return Err(NameError::TooLong {
                len: s.len(),
                max: MAX_ACCOUNT,
            });
        }
        let mut out = String::with_capacity(s.len());
        for c in s.chars() {
            let c = c.to_ascii_lowercase();
            match c {
                'a'..='z' | '0'..='9' | '.' | '_' | '+' | '-' => out.push(c),
                _ => return Err(NameError::BadCharacter(c)),
            }
        }
        let bytes = out.as_bytes();
        if !bytes[0].is_ascii_alphanumeric() || !bytes[bytes.len() - 1].is_ascii_alphanumeric() {
            return Err(NameError::BadEdge);
        }
        if out.contains("..") {
            return Err(NameError::EmptyLabel);
        }
        Ok(Account(out))
    }

    /// The canonical (lower-case) form.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a name that must already be canonical (used where names are
    /// hashed or signed: messages, statements).
    pub fn parse_canonical(s: &str) -> Result<Account, NameError> {
        let a = Self::parse(s)?;
        if a.0 != s {
            return Err(NameError::NotCanonical);
        }
        Ok(a)
    }
}

/// A domain name: lower-case LDH labels of 1 to 63 bytes separated by dots,
/// 253 bytes at most, a trailing dot removed on parsing.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Domain(String);

impl Domain {
    /// Parses and canonicalises a domain name.
    pub fn parse(s: &str) -> Result<Domain, NameError> {
        let s = s.strip_suffix('.').unwrap_or(s);
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_DOMAIN {
            return Err(NameError::TooLong {
                len: s.len(),
                max: MAX_DOMAIN,
            });
        }
        let out = s.to_ascii_lowercase();
        for label in out.split('.') {
            if label.is_empty() {
                return Err(NameError::EmptyLabel);
            }
            if label.len() > MAX_LABEL {
                return Err(NameError::LabelTooLong);
            }
            if let Some(c) = label
                .chars()
                .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
            {
                return Err(NameError::BadCharacter(c));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(NameError::BadEdge);
            }
        }
        Ok(Domain(out))
    }

    /// The canonical form: lower case, no trailing dot.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Parses a name that must already be canonical (used where names are
    /// hashed or signed: messages, statements).
    pub fn parse_canonical(s: &str) -> Result<Domain, NameError> {
        let d = Self::parse(s)?;
        if d.0 != s {
            return Err(NameError::NotCanonical);
        }
        Ok(d)
    }
}

/// A full address `account@domain`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Address {
    /// The local part.
    pub account: Account,
    /// The domain.
    pub domain: Domain,
}

impl Address {
    /// Builds an address from its parts.
    pub fn new(account: Account, domain: Domain) -> Self {
        Address { account, domain }
    }

    /// Parses `account@domain`.
    pub fn parse(s: &str) -> Result<Address, NameError> {
        let (account, domain) = s.rsplit_once('@').ok_or(NameError::NotAnAddress)?;
        Ok(Address {
            account: Account::parse(account)?,
            domain: Domain::parse(domain)?,
        })
    }
}

macro_rules! string_name {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl FromStr for $t {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::parse(s)
            }
        }
        impl AsRef<str> for $t {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}
string_name!(Account);
string_name!(Domain);

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.account, self.domain)
    }
}

impl fmt::Debug for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl FromStr for Address {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        Self::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accounts_are_folded_to_lower_case() {
        assert_eq!(
            Account::parse("Alice.Smith").unwrap().as_str(),
            "alice.smith"
        );
    }

    #[test]
    fn accounts_that_could_be_paths_are_refused() {
        for bad in [
            "..", ".", "/", "a/b", "../etc", "a..b", ".a", "a.", "a\0b", "a\nb", "a b", "a\\b",
        ] {
            assert!(Account::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn accounts_outside_the_allow_list_are_refused_with_the_character() {
        assert_eq!(Account::parse("al*ce"), Err(NameError::BadCharacter('*')));
        assert_eq!(Account::parse("ålice"), Err(NameError::BadCharacter('å')));
        assert_eq!(
            Account::parse("a\u{7f}"),
            Err(NameError::BadCharacter('\u{7f}'))
        );
    }

    #[test]
    fn account_length_limits() {
        assert_eq!(Account::parse(""), Err(NameError::Empty));
        assert!(Account::parse(&"a".repeat(64)).is_ok());
        assert_eq!(
            Account::parse(&"a".repeat(65)),
            Err(NameError::TooLong { len: 65, max: 64 })
        );
    }

    #[test]
    fn domains_are_normalised() {
        assert_eq!(
            Domain::parse("Mail.Example.ORG.").unwrap().as_str(),
            "mail.example.org"
        );
        assert_eq!(Domain::parse("localhost").unwrap().as_str(), "localhost");
    }

    #[test]
    fn malformed_domains_are_refused() {
        assert_eq!(Domain::parse(""), Err(NameError::Empty));
        assert_eq!(Domain::parse("."), Err(NameError::Empty));
        assert_eq!(Domain::parse("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(Domain::parse("-a.b"), Err(NameError::BadEdge));
        assert_eq!(Domain::parse("a_b.c"), Err(NameError::BadCharacter('_')));
        assert_eq!(Domain::parse("a/b"), Err(NameError::BadCharacter('/')));
        assert_eq!(Domain::parse(&"a".repeat(64)), Err(NameError::LabelTooLong));
        let long = vec!["a".repeat(63); 4].join(".");
        assert_eq!(long.len(), 255);
        assert_eq!(
            Domain::parse(&long),
            Err(NameError::TooLong { len: 255, max: 253 })
        );
    }

    #[test]
    fn canonical_parsing_refuses_other_spellings() {
        assert_eq!(
            Account::parse_canonical("Bob"),
            Err(NameError::NotCanonical)
        );
        assert_eq!(
            Domain::parse_canonical("b.example."),
            Err(NameError::NotCanonical)
        );
        assert_eq!(
            Domain::parse_canonical("B.example"),
            Err(NameError::NotCanonical)
        );
        assert!(Account::parse_canonical("bob").is_ok());
        assert!(Domain::parse_canonical("b.example").is_ok());
    }

    #[test]
    fn addresses_split_at_the_last_at_sign() {
        let a = Address::parse("Bob@B.Example").unwrap();
        assert_eq!(a.to_string(), "bob@b.example");
        assert_eq!(Address::parse("bob"), Err(NameError::NotAnAddress));
        assert!(Address::parse("a@b@c").is_err());
    }

    proptest! {
        #[test]
        fn parsing_a_canonical_account_is_the_identity(s in "[a-z0-9]([a-z0-9_+-]{0,3}[a-z0-9]|\\.[a-z0-9]){0,10}") {
            let a = Account::parse(&s).unwrap();
            prop_assert_eq!(a.as_str(), s.as_str());
        }

        #[test]
        fn no_parsed_account_can_escape_a_directory(s in "\\PC{0,70}") {
            if let Ok(a) = Account::parse(&s) {
                prop_assert!(!a.as_str().contains('/'));
                prop_assert!(!a.as_str().contains(".."));
                prop_assert!(a.as_str() != "." && !a.as_str().starts_with('.'));
                prop_assert!(a.as_str().bytes().all(|b| b.is_ascii_graphic()));
            }
        }
    }
}
