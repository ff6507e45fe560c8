//! Contacts: everyone the user wrote to or heard from, with a display name,
//! an optional alias (`cmtp send bob`), and their identity key as first
//! seen and as seen now.
//!
//! Keys are pinned per contact on first sight (trust on first use, as the
//! domains' server keys are, PROTOCOL.md §9.5). When a later key statement
//! names another key — the contact reset their password, or a server lies —
//! the contact is marked as changed: the old key is kept, the verification
//! (if any) is dropped, and every command that touches the contact says so
//! loudly until the user compares safety numbers again (`cmtp verify`,
//! PROTOCOL.md §9.6).

use cmtp_proto::crypto::PublicKey;
use cmtp_proto::crypto::safety::safety_number;
use cmtp_proto::names::Address;
use rusqlite::{OptionalExtension, params};

use crate::failure::{Error, Result};
use crate::store::{LocalStore, i, u};

/// A contact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Contact {
    /// The address.
    pub address: String,
    /// The display name (from their mail, or set by the user).
    pub name: String,
    /// The alias the user gave them.
    pub alias: Option<String>,
    /// Their identity key as last seen.
    pub key: Option<PublicKey>,
    /// When they were first seen.
    pub first_seen: u64,
    /// Whether the user compared safety numbers for the current key.
    pub verified: bool,
    /// The key seen before the current one, if it changed.
    pub previous_key: Option<PublicKey>,
    /// When the key changed (cleared once verified again).
    pub key_changed_at: Option<u64>,
}

impl Contact {
    /// Whether the key changed since it was first seen or last verified.
    pub fn key_changed(&self) -> bool {
        self.key_changed_at.is_some()
    }

    /// The safety number of `me` and this contact, if their key is known.
    pub fn safety_number(&self, me: &Address, my_key: &PublicKey) -> Option<String> {
        let key = self.key?;
        let address = Address::parse(&self.address).ok()?;
        Some(safety_number((me, my_key), (&address, &key)))
    }
}

/// A key that changed, as [`LocalStore::observe_key`] found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyChange {
    /// Whose.
    pub address: String,
    /// The key before.
    pub old: PublicKey,
    /// The key now.
    pub new: PublicKey,
    /// Whether the old key had been verified.
    pub was_verified: bool,
}

impl std::fmt::Display for KeyChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the key of {} CHANGED (was {}, now {}){}; compare safety numbers again: cmtp verify {}",
            self.address,
            &self.old.fingerprint_hex()[..16],
            &self.new.fingerprint_hex()[..16],
            if self.was_verified {
                ", and it had been VERIFIED"
            } else {
                ""
            },
            self.address
        )
    }
}

fn key_of(v: Option<Vec<u8>>) -> Option<PublicKey> {
    v.and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
        .and_then(|a| PublicKey::from_bytes(&a).ok())
}

const CONTACT_COLUMNS: &str =
    "address, name, alias, key, first_seen, verified, previous_key, key_changed_at";

fn contact_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Contact> {
    Ok(Contact {
        address: r.get(0)?,
        name: r.get(1)?,
        alias: r.get(2)?,
        key: key_of(r.get(3)?),
        first_seen: u(r.get(4)?),
        verified: r.get(5)?,
        previous_key: key_of(r.get(6)?),
        key_changed_at: r.get::<_, Option<i64>>(7)?.map(u),
    })
}

/// An alias: 1 to 64 of letters, digits, `.`, `_`, `-`, starting with a letter.
fn check_alias(alias: &str) -> Result<()> {
    let ok = !alias.is_empty()
        && alias.len() <= 64
        && alias.starts_with(|c: char| c.is_ascii_alphabetic())
        && alias
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "{alias:?} is not an alias: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter"
        )))
    }
}

impl LocalStore {
    /// Records that `address` was written to or heard from, with the display
    /// name their mail (or the user) gave, if any.
    pub fn touch_contact(&self, address: &Address, name: &str, now: u64) -> Result<()> {
        self.db(self.conn().execute(
            "INSERT INTO contacts (address, name, first_seen, last_used) VALUES (?1, ?2, ?3, ?3)
             ON CONFLICT (address) DO UPDATE SET
                 name = CASE WHEN excluded.name = '' THEN contacts.name ELSE excluded.name END,
                 last_used = MAX(contacts.last_used, excluded.last_used)",
            params![address.to_string(), name, i(now)],
        ))?;
        Ok(())
    }

    /// Records `key` as `address`'s key, verified through their key
    /// statement: pinned on first sight; a different key is a
    /// [`KeyChange`] (the old key kept, the verification dropped).
    pub fn observe_key(
        &self,
        address: &Address,
        key: &PublicKey,
        now: u64,
    ) -> Result<Option<KeyChange>> {
        let a = address.to_string();
        let known: Option<(Option<Vec<u8>>, bool)> = self.db(self
            .conn()
            .query_row(
                "SELECT key, verified FROM contacts WHERE address = ?1",
                [&a],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional())?;
        match known {
            None => {
                self.db(self.conn().execute(
                    "INSERT INTO contacts (address, key, first_seen, key_seen) VALUES (?1, ?2, ?3, ?3)",
                    params![a, &key.as_bytes()[..], i(now)],
                ))?;
                Ok(None)
            }
            Some((None, _)) => {
                self.db(self.conn().execute(
                    "UPDATE contacts SET key = ?2, key_seen = ?3 WHERE address = ?1",
                    params![a, &key.as_bytes()[..], i(now)],
                ))?;
                Ok(None)
            }
            Some((Some(old), _)) if old == key.as_bytes() => Ok(None),
            Some((Some(old), was_verified)) => {
                self.db(self.conn().execute(
                    "UPDATE contacts SET previous_key = key, key = ?2, key_seen = ?3,
                            key_changed_at = ?3, verified = 0
                     WHERE address = ?1",
                    params![a, &key.as_bytes()[..], i(now)],
                ))?;
                Ok(key_of(Some(old)).map(|old| KeyChange {
                    address: a,
                    old,
                    new: *key,
                    was_verified,
                }))
            }
        }
    }

    /// Every contact, by address.
    pub fn contacts(&self) -> Result<Vec<Contact>> {
        let mut st = self.db(self.conn().prepare(&format!(
            "SELECT {CONTACT_COLUMNS} FROM contacts ORDER BY address"
        )))?;
        let rows = self.db(st.query_map([], contact_row))?;
        self.db(rows.collect())
    }

    /// One contact.
    pub fn contact(&self, address: &Address) -> Result<Option<Contact>> {
        self.db(self
            .conn()
            .query_row(
                &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE address = ?1"),
                [address.to_string()],
                contact_row,
            )
            .optional())
    }

    /// The contact with alias `alias`.
    pub fn contact_by_alias(&self, alias: &str) -> Result<Option<Contact>> {
        self.db(self
            .conn()
            .query_row(
                &format!("SELECT {CONTACT_COLUMNS} FROM contacts WHERE alias = ?1"),
                [alias],
                contact_row,
            )
            .optional())
    }

    /// Adds (or updates) a contact with an alias and a display name chosen by
    /// the user. An alias another contact has is refused.
    pub fn set_contact(
        &self,
        address: &Address,
        alias: Option<&str>,
        name: Option<&str>,
        now: u64,
    ) -> Result<()> {
        if let Some(a) = alias {
            check_alias(a)?;
            if let Some(other) = self.contact_by_alias(a)?
                && other.address != address.to_string()
            {
                return Err(Error::Invalid(format!(
                    "the alias {a:?} is {}'s already",
                    other.address
                )));
            }
        }
        if let Some(n) = name
            && n.chars().any(char::is_control)
        {
            return Err(Error::Invalid(
                "a name cannot hold control characters".into(),
            ));
        }
        self.touch_contact(address, name.unwrap_or(""), now)?;
        if let Some(a) = alias {
            self.db(self.conn().execute(
                "UPDATE contacts SET alias = ?2 WHERE address = ?1",
                params![address.to_string(), a],
            ))?;
        }
        Ok(())
    }

    /// Removes a contact; `false` if there was none.
    pub fn remove_contact(&self, address: &Address) -> Result<bool> {
        Ok(self.db(self.conn().execute(
            "DELETE FROM contacts WHERE address = ?1",
            [address.to_string()],
        ))? > 0)
    }

    /// Marks `address`'s key `key` as verified by the user (safety numbers
    /// compared); a pending key change is settled.
    pub fn set_verified(&self, address: &Address, key: &PublicKey, now: u64) -> Result<()> {
        self.observe_key(address, key, now)?;
        self.db(self.conn().execute(
            "UPDATE contacts SET verified = 1, key_changed_at = NULL WHERE address = ?1",
            [address.to_string()],
        ))?;
        Ok(())
    }

    /// Contacts whose key changed and who are not verified again.
    pub fn changed_keys(&self) -> Result<Vec<Contact>> {
        Ok(self
            .contacts()?
            .into_iter()
            .filter(Contact::key_changed)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::STORE_FILE;
    use cmtp_proto::crypto::IdentityKey;

    #[test]
    fn keys_are_pinned_on_first_sight_and_a_change_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join(STORE_FILE), "alice@a.test").unwrap();
        let bob = Address::parse("bob@b.test").unwrap();
        let k1 = IdentityKey::from_seed(&[1; 32]).public();
        let k2 = IdentityKey::from_seed(&[2; 32]).public();
        assert_eq!(s.observe_key(&bob, &k1, 10).unwrap(), None);
        assert_eq!(s.observe_key(&bob, &k1, 11).unwrap(), None);
        s.set_contact(&bob, Some("bob"), Some("Bob B"), 12).unwrap();
        s.set_verified(&bob, &k1, 13).unwrap();
        let c = s.contact_by_alias("bob").unwrap().unwrap();
        assert!(c.verified && !c.key_changed());
        assert_eq!(c.name, "Bob B");
        let change = s.observe_key(&bob, &k2, 20).unwrap().unwrap();
        assert!(change.was_verified);
        assert!(change.to_string().contains("CHANGED"));
        let c = s.contact(&bob).unwrap().unwrap();
        assert!(!c.verified && c.key_changed());
        assert_eq!(c.previous_key, Some(k1));
        assert_eq!(s.changed_keys().unwrap().len(), 1);
        s.set_verified(&bob, &k2, 21).unwrap();
        assert!(s.changed_keys().unwrap().is_empty());
        // A name from mail does not erase a known one.
        s.touch_contact(&bob, "", 22).unwrap();
        assert_eq!(s.contact(&bob).unwrap().unwrap().name, "Bob B");
        // Aliases are unique and plain.
        let carol = Address::parse("carol@c.test").unwrap();
        assert!(s.set_contact(&carol, Some("bob"), None, 1).is_err());
        assert!(s.set_contact(&carol, Some("has space"), None, 1).is_err());
        s.set_contact(&carol, Some("carol"), None, 1).unwrap();
        assert!(s.remove_contact(&carol).unwrap());
    }
}
