//! Whose key is whose: pinned server keys (trust on first use, PROTOCOL.md
//! §9.5) and verified key statements (§9.2).
//!
//! A domain's server key is pinned in `known_domains` the first time the
//! client sees it, like SSH's `known_hosts`. Afterwards a different key is
//! accepted only when the domain's key bundle (§9.3) holds a chain of
//! rotations signed from the pinned key to the new one
//! ([`ServerKeyBundle::check_against_pin`]); otherwise
//! [`KnownDomains::admit`] refuses with [`Error::KeyChanged`].
//!
//! Users' key statements are verified against their domain's pinned key and
//! kept in `cache/keys/`, each file named by the hex SHA-256 of the address
//! it is about (never by a name from the wire).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::statements::{KeyStatement, ServerKeyBundle};
use sha2::{Digest, Sha256};

use crate::failure::{Error, Result};
use crate::home::{create_private_dir, write_private};

/// A pinned server key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The key.
    pub key: PublicKey,
    /// When the client first saw this key (unix seconds).
    pub first_seen: u64,
}

/// What [`KnownDomains::admit`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PinStatus {
    /// The key was already pinned.
    Known {
        /// When it was first seen.
        first_seen: u64,
    },
    /// First contact: the key is now pinned.
    NewlyPinned,
    /// The domain rotated its key along a signed chain from the pinned key.
    Rotated {
        /// The fingerprint of the key pinned before.
        old_fingerprint: String,
    },
}

impl std::fmt::Display for PinStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PinStatus::Known { first_seen } => {
                write!(
                    f,
                    "pinned since {}",
                    cmtp_client::clock::rfc3339(*first_seen)
                )
            }
            PinStatus::NewlyPinned => f.write_str("pinned now (first use)"),
            PinStatus::Rotated { old_fingerprint } => write!(
                f,
                "key rotated from {old_fingerprint} with a signed rotation statement; pin updated"
            ),
        }
    }
}

/// The `known_domains` file: one pinned server key per domain.
#[derive(Debug, Clone)]
pub struct KnownDomains {
    path: PathBuf,
    pins: BTreeMap<String, Pin>,
}

impl KnownDomains {
    /// Reads the file (absent: nothing pinned).
    pub fn load(path: &Path) -> Result<KnownDomains> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(Error::file(path, e)),
        };
        let mut pins = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |detail: String| Error::BadFile {
                path: path.to_owned(),
                detail: format!("line {}: {detail}", n + 1),
            };
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [domain, fingerprint, key, first_seen] = fields.as_slice() else {
                return Err(bad("expected: domain fingerprint key first-seen".into()));
            };
            let domain = Domain::parse(domain).map_err(|e| bad(e.to_string()))?;
            let mut raw = [0u8; 32];
            hex::decode_to_slice(key, &mut raw)
                .map_err(|_| bad("key is not 64 hex digits".into()))?;
            let key = PublicKey::from_bytes(&raw).map_err(|e| bad(e.to_string()))?;
            if key.fingerprint_hex() != fingerprint.to_ascii_lowercase() {
                return Err(bad("the fingerprint does not match the key".into()));
            }
            let first_seen = humantime::parse_rfc3339(first_seen)
                .map_err(|e| bad(format!("first-seen: {e}")))?
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            pins.insert(domain.to_string(), Pin { key, first_seen });
        }
        Ok(KnownDomains {
            path: path.to_owned(),
            pins,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The pin of `domain`.
    pub fn get(&self, domain: &Domain) -> Option<&Pin> {
        self.pins.get(domain.as_str())
    }

    /// Every pin, by domain.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Pin)> {
        self.pins.iter().map(|(d, p)| (d.as_str(), p))
    }

    /// Accepts `key` as `domain`'s server key: pins it on first use; accepts
    /// an equal key; accepts a different key only if `bundle` states it and
    /// holds a signed rotation chain from the pinned key (the pin is then
    /// updated). Saves the file when it changes.
    pub fn admit(
        &mut self,
        domain: &Domain,
        key: PublicKey,
        bundle: Option<&ServerKeyBundle>,
        now: u64,
    ) -> Result<PinStatus> {
        let status = match self.get(domain) {
            None => PinStatus::NewlyPinned,
            Some(pin) if pin.key == key => {
                return Ok(PinStatus::Known {
                    first_seen: pin.first_seen,
                });
            }
            Some(pin) => {
                let chained = bundle.is_some_and(|b| {
                    b.statement.key == key && b.check_against_pin(&pin.key, domain).is_ok()
                });
                if !chained {
                    return Err(Error::KeyChanged {
                        domain: domain.to_string(),
                        pinned: pin.key.fingerprint_hex(),
                        got: key.fingerprint_hex(),
                        known_domains: self.path.clone(),
                    });
                }
                PinStatus::Rotated {
                    old_fingerprint: pin.key.fingerprint_hex(),
                }
            }
        };
        self.pins.insert(
            domain.to_string(),
            Pin {
                key,
                first_seen: now,
            },
        );
        self.save()?;
        Ok(status)
    }

    /// Writes the file.
    pub fn save(&self) -> Result<()> {
        if let Some(dir) = self.path.parent() {
            create_private_dir(dir)?;
        }
        let mut text = String::from(
            "# cmtp known_domains: server keys pinned on first use, like SSH's known_hosts.\n\
             # domain fingerprint key first-seen\n",
        );
        for (domain, pin) in &self.pins {
            text.push_str(&format!(
                "{domain} {} {} {}\n",
                pin.key.fingerprint_hex(),
                hex::encode(pin.key.as_bytes()),
                cmtp_client::clock::rfc3339(pin.first_seen)
            ));
        }
        write_private(&self.path, text.as_bytes())
    }
}

/// Decodes a key statement and verifies it: signed by `server_key`, about
/// `account@domain` (`account` `None`: the server's own statement), valid
/// at `now`.
pub fn verify_statement(
    bytes: &[u8],
    server_key: &PublicKey,
    account: Option<&Account>,
    domain: &Domain,
    now: u64,
) -> Result<KeyStatement> {
    let who = match account {
        Some(a) => format!("{a}@{domain}"),
        None => format!("the server of {domain}"),
    };
    let s = KeyStatement::decode(bytes)
        .map_err(|e| Error::Verification(format!("key statement of {who}: {e}")))?;
    s.verify(server_key, account, domain, now)
        .map_err(|e| Error::Verification(format!("key statement of {who}: {e}")))?;
    Ok(s)
}

/// Verified key statements kept between runs (`cache/keys/`).
#[derive(Debug, Clone)]
pub struct StatementCache {
    dir: PathBuf,
}

impl StatementCache {
    /// The cache in `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> StatementCache {
        StatementCache { dir: dir.into() }
    }

    fn file(&self, address: &Address) -> PathBuf {
        let name = hex::encode(Sha256::digest(address.to_string().as_bytes()));
        self.dir.join(format!("{name}.statement"))
    }

    /// The cached statement of `address`, if there is one that still
    /// verifies under `server_key` at `now`.
    pub fn get(&self, address: &Address, server_key: &PublicKey, now: u64) -> Option<KeyStatement> {
        let bytes = std::fs::read(self.file(address)).ok()?;
        verify_statement(
            &bytes,
            server_key,
            Some(&address.account),
            &address.domain,
            now,
        )
        .ok()
    }

    /// Stores a (verified) statement.
    pub fn put(&self, address: &Address, statement: &KeyStatement) -> Result<()> {
        create_private_dir(&self.dir)?;
        write_private(&self.file(address), &statement.to_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmtp_proto::crypto::IdentityKey;
    use cmtp_proto::statements::Rotation;

    fn d(s: &str) -> Domain {
        Domain::parse(s).unwrap()
    }

    #[test]
    fn first_use_pins_and_a_change_needs_a_rotation_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_domains");
        let (k1, k2, k3) = (
            IdentityKey::from_seed(&[1; 32]),
            IdentityKey::from_seed(&[2; 32]),
            IdentityKey::from_seed(&[3; 32]),
        );
        let mut known = KnownDomains::load(&path).unwrap();
        assert_eq!(
            known.admit(&d("b.test"), k1.public(), None, 100).unwrap(),
            PinStatus::NewlyPinned
        );
        let mut known = KnownDomains::load(&path).unwrap();
        assert_eq!(
            known.admit(&d("b.test"), k1.public(), None, 200).unwrap(),
            PinStatus::Known { first_seen: 100 }
        );
        // A new key without a chain is refused loudly.
        let e = known
            .admit(&d("b.test"), k3.public(), None, 300)
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("key of b.test changed without a rotation statement"),
            "{e}"
        );
        // A bundle whose rotations lead from the pin is accepted.
        let bundle = ServerKeyBundle {
            statement: KeyStatement::issue(&k3, None, d("b.test"), k3.public(), 0, 1000),
            rotations: vec![
                Rotation::issue(&k1, k2.public(), d("b.test"), 10),
                Rotation::issue(&k2, k3.public(), d("b.test"), 20),
            ],
        };
        assert!(matches!(
            known.admit(&d("b.test"), k3.public(), Some(&bundle), 300),
            Ok(PinStatus::Rotated { .. })
        ));
        assert_eq!(
            KnownDomains::load(&path)
                .unwrap()
                .get(&d("b.test"))
                .unwrap()
                .key,
            k3.public()
        );
        // Rotations for another domain do not count.
        let mut other = KnownDomains::load(&path).unwrap();
        other.admit(&d("c.test"), k1.public(), None, 1).unwrap();
        let forged = ServerKeyBundle {
            statement: KeyStatement::issue(&k2, None, d("c.test"), k2.public(), 0, 1000),
            rotations: vec![Rotation::issue(&k1, k2.public(), d("b.test"), 10)],
        };
        assert!(matches!(
            other.admit(&d("c.test"), k2.public(), Some(&forged), 5),
            Err(Error::KeyChanged { .. })
        ));
    }

    #[test]
    fn statements_are_cached_by_a_hash_of_the_address() {
        let dir = tempfile::tempdir().unwrap();
        let server = IdentityKey::from_seed(&[5; 32]);
        let user = IdentityKey::from_seed(&[6; 32]);
        let a = Address::parse("alice@a.test").unwrap();
        let s = KeyStatement::issue(
            &server,
            Some(a.account.clone()),
            a.domain.clone(),
            user.public(),
            10,
            100,
        );
        let cache = StatementCache::new(dir.path().join("keys"));
        cache.put(&a, &s).unwrap();
        assert_eq!(cache.get(&a, &server.public(), 50), Some(s));
        assert_eq!(cache.get(&a, &server.public(), 100), None);
        assert_eq!(cache.get(&a, &user.public(), 50), None);
        let names: Vec<_> = std::fs::read_dir(dir.path().join("keys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 1);
        assert!(!names[0].contains("alice"));
    }
}
