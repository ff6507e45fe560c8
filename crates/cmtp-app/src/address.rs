//! Recipients as people write them: `Bob <bob@b.example>`,
//! `"Smith, Bob" <bob@b.example>`, a bare address, or a contact's alias,
//! and comma-separated lists of them (RFC 5322's mailbox lists, the subset
//! people type).
//!
//! [`parse_list`] splits a list at commas outside quotes and angle
//! brackets; [`parse_one`] reads one entry. An entry without `@` is an
//! alias, resolved by the caller (the contacts of the local store).

use cmtp_proto::content::Mailbox;
use cmtp_proto::names::Address;

use crate::failure::{Error, Result};

/// One entry of a recipient list, before aliases are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A mailbox (display name and address).
    Mailbox(Mailbox),
    /// An alias of a contact (`bob`), with the display name written
    /// before it, if any.
    Alias(String),
}

/// Splits `s` at commas that are not inside double quotes or angle
/// brackets; empty pieces are dropped.
pub fn split_list(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let (mut quoted, mut angle, mut escaped) = (false, false, false);
    for c in s.chars() {
        if escaped {
            cur.push(c);
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => {
                cur.push(c);
                escaped = true;
            }
            '"' => {
                quoted = !quoted;
                cur.push(c);
            }
            '<' if !quoted => {
                angle = true;
                cur.push(c);
            }
            '>' if !quoted => {
                angle = false;
                cur.push(c);
            }
            ',' | ';' if !quoted && !angle => {
                if !cur.trim().is_empty() {
                    out.push(cur.trim().to_owned());
                }
                cur.clear();
            }
            _ => cur.push(c),
        }
    }
    if !cur.trim().is_empty() {
        out.push(cur.trim().to_owned());
    }
    out
}

fn bad(entry: &str, why: impl std::fmt::Display) -> Error {
    Error::Invalid(format!("{entry:?} is not a valid recipient: {why}"))
}

fn unquote(name: &str) -> String {
    let name = name.trim();
    if name.len() >= 2 && name.starts_with('"') && name.ends_with('"') {
        let inner = &name[1..name.len() - 1];
        let mut out = String::with_capacity(inner.len());
        let mut escaped = false;
        for c in inner.chars() {
            if escaped {
                out.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else {
                out.push(c);
            }
        }
        out
    } else {
        name.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// Reads one entry: `Name <addr>`, `"Quoted, Name" <addr>`, `<addr>`,
/// `addr`, or an alias (a word without `@`).
pub fn parse_one(entry: &str) -> Result<Entry> {
    let entry = entry.trim();
    if entry.is_empty() {
        return Err(bad(entry, "empty"));
    }
    let (name, addr) = match entry.rfind('<') {
        Some(open) if entry.ends_with('>') => (
            unquote(&entry[..open]),
            entry[open + 1..entry.len() - 1].trim(),
        ),
        Some(_) => return Err(bad(entry, "a '<' without its '>' at the end")),
        None if entry.contains('>') => return Err(bad(entry, "a '>' without its '<'")),
        None => (String::new(), entry),
    };
    if name.chars().any(char::is_control) {
        return Err(bad(entry, "the name holds a control character"));
    }
    if !addr.contains('@') {
        if !name.is_empty() || addr.is_empty() || addr.contains(char::is_whitespace) {
            return Err(bad(
                entry,
                "an address is user@domain (a contact's alias is one word)",
            ));
        }
        return Ok(Entry::Alias(addr.to_owned()));
    }
    let address = Address::parse(addr).map_err(|e| bad(entry, e))?;
    Ok(Entry::Mailbox(Mailbox::new(name, address)))
}

/// Reads every entry of the lists in `lists` (each may hold several,
/// comma-separated), resolving aliases with `alias`.
pub fn parse_list(
    lists: &[String],
    mut alias: impl FnMut(&str) -> Result<Option<Mailbox>>,
) -> Result<Vec<Mailbox>> {
    let mut out: Vec<Mailbox> = Vec::new();
    for list in lists {
        for piece in split_list(list) {
            let m = match parse_one(&piece)? {
                Entry::Mailbox(m) => m,
                Entry::Alias(a) => alias(&a)?.ok_or_else(|| {
                    Error::Invalid(format!(
                        "{a:?} is neither an address (user@domain) nor the alias of a contact \
                         (`cmtp contacts` lists them)"
                    ))
                })?,
            };
            if !out.iter().any(|o| o.address == m.address) {
                out.push(m);
            }
        }
    }
    Ok(out)
}

/// Reads a list that must hold no aliases (stored lists, already resolved).
pub fn parse_resolved(lists: &[String]) -> Result<Vec<Mailbox>> {
    parse_list(lists, |_| Ok(None))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> Address {
        Address::parse(s).unwrap()
    }

    #[test]
    fn names_lists_and_aliases_as_people_write_them() {
        let list = parse_list(
            &[
                "Bob Example <bob@b.test>, carol@c.test".into(),
                "\"Smith, Dan\" <dan@d.test>; <eve@e.test>".into(),
                "bob@b.test".into(),
                "fay".into(),
            ],
            |alias| Ok((alias == "fay").then(|| Mailbox::new("Fay F", a("fay@f.test")))),
        )
        .unwrap();
        assert_eq!(
            list,
            [
                Mailbox::new("Bob Example", a("bob@b.test")),
                Mailbox::bare(a("carol@c.test")),
                Mailbox::new("Smith, Dan", a("dan@d.test")),
                Mailbox::bare(a("eve@e.test")),
                Mailbox::new("Fay F", a("fay@f.test")),
            ]
        );
        assert!(parse_list(&["nobody".into()], |_| Ok(None)).is_err());
        for bad in [
            "Bob <bob@b.test",
            "Bob bob@b.test>",
            "Bob <not an address>",
            "two words",
        ] {
            assert!(parse_resolved(&[bad.into()]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn displayed_mailboxes_read_back() {
        for m in [
            Mailbox::new("Carol \"C\" Example", a("carol@c.test")),
            Mailbox::new("Smith, Dan \\ Jr.", a("dan@d.test")),
            Mailbox::new("Ünïcødé Name", a("u@u.test")),
            Mailbox::bare(a("x@y.test")),
        ] {
            assert_eq!(
                parse_resolved(&[m.to_string()]).unwrap(),
                std::slice::from_ref(&m)
            );
        }
    }
}
