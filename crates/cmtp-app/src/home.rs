//! The client's home directory: configuration, the identity key, pinned
//! server keys and the cache.
//!
//! # Layout
//!
//! The home is `~/.config/cmtp` (the platform's configuration directory, see
//! [`Home::default_dir`]) unless the caller chooses another (`cmtp --home DIR`
//! or `CMTP_HOME`). It is created with mode 0700.
//!
//! ```text
//! config.toml     the account address, optional `server = "host:port"`
//!                 override, optional [dns] nameservers/routes/check_key_txt,
//!                 optional [security.min_ksf] floor for logins
//! identity.key    the identity key's 32-byte seed in hex, mode 0600;
//!                 written after a password login or a registration, never
//!                 printed
//! known_domains   pinned server keys, one line per domain:
//!                 `domain fingerprint key first-seen` (TOFU, like SSH's
//!                 known_hosts; see crate::trust)
//! mail.db        the local store (SQLite, mode 0600): synced messages with
//!                 their verdicts and decrypted content, the sync position,
//!                 the outbox and the drafts (see crate::store)
//! smtp-allowed    contacts that may get mail by SMTP, not end-to-end
//!                 encrypted, when their domain has no CMTP service: one
//!                 address a line, mode 0600 (see crate::smtp)
//! cache/keys/     fetched key statements, named by the hex SHA-256 of the
//!                 address they are about
//! ```
//!
//! A `config.toml` written by `cmtp register`/`cmtp login`:
//!
//! ```toml
//! address = "alice@a.example"
//! # name = "Alice Example"         # your name in the mail you send
//! # server = "mx.a.example:9001"   # default: DNS (SRV, then MX, then A)
//!
//! [dns]
//! # nameservers = ["192.0.2.53:53"]
//! # routes = { "a.example" = ["192.0.2.10:9001"] }
//! # check_key_txt = true
//!
//! [security.min_ksf]   # weakest Argon2id cost accepted at login
//! memory_kib = 65536
//! passes = 3
//! lanes = 4
//! ```

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use cmtp_proto::crypto::IdentityKey;
use cmtp_proto::crypto::opaque::KsfParams;
use cmtp_proto::names::Address;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::failure::{Error, Result};

/// Name of the configuration file.
pub const CONFIG_FILE: &str = "config.toml";
/// Name of the identity key file.
pub const IDENTITY_FILE: &str = "identity.key";
/// Name of the pinned-keys file.
pub const KNOWN_DOMAINS_FILE: &str = "known_domains";
/// Name of the cache directory.
pub const CACHE_DIR: &str = "cache";

/// `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The account's address (`user@domain`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The own server as `host:port`, instead of DNS discovery.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Your display name, as your mail shows it to its recipients
    /// (`Alice Example`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// DNS settings.
    #[serde(default, skip_serializing_if = "is_default")]
    pub dns: DnsSection,
    /// Security settings.
    #[serde(default, skip_serializing_if = "is_default")]
    pub security: SecuritySection,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `[dns]` of `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// Nameservers (`ip:port`) instead of the system's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<SocketAddr>,
    /// Static routes, domain → `host:port` list, overriding DNS (split
    /// horizon, tests).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub routes: BTreeMap<String, Vec<String>>,
    /// Query timeout in milliseconds (default 5000).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    /// Check a domain's key against its `_cmtpkey` TXT record when first
    /// pinning it (default true).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_key_txt: Option<bool>,
}

/// `[security]` of `config.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecuritySection {
    /// The weakest Argon2id cost accepted from a server at login (and the
    /// least used at registration). Default RFC 9106's second
    /// recommendation: 64 MiB, 3 passes, 4 lanes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_ksf: Option<KsfSetting>,
}

/// Argon2id costs as written in `config.toml`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KsfSetting {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
}

impl From<KsfSetting> for KsfParams {
    fn from(k: KsfSetting) -> KsfParams {
        KsfParams {
            m_cost_kib: k.memory_kib,
            t_cost: k.passes,
            p_cost: k.lanes,
        }
    }
}

impl From<KsfParams> for KsfSetting {
    fn from(k: KsfParams) -> KsfSetting {
        KsfSetting {
            memory_kib: k.m_cost_kib,
            passes: k.t_cost,
            lanes: k.p_cost,
        }
    }
}

/// Parses `MEMORY_KIB,PASSES,LANES` (as `--min-ksf` and `CMTP_MIN_KSF` take it).
pub fn parse_ksf(s: &str) -> std::result::Result<KsfParams, String> {
    let parts: Vec<&str> = s.split(',').map(str::trim).collect();
    let [m, t, p] = parts.as_slice() else {
        return Err(format!(
            "expected MEMORY_KIB,PASSES,LANES (e.g. 65536,3,4), got {s:?}"
        ));
    };
    let num = |x: &str| {
        x.parse::<u32>()
            .map_err(|_| format!("{x:?} is not a number"))
    };
    let k = KsfParams {
        m_cost_kib: num(m)?,
        t_cost: num(t)?,
        p_cost: num(p)?,
    };
    k.validate(&KsfParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    })
    .map_err(|e| e.to_string())?;
    Ok(k)
}

impl Config {
    /// The configured address, parsed.
    pub fn address(&self) -> Result<Option<Address>> {
        self.address
            .as_deref()
            .map(|a| {
                Address::parse(a)
                    .map_err(|e| Error::Invalid(format!("address {a:?} in config.toml: {e}")))
            })
            .transpose()
    }

    /// The login floor from the file, if set.
    pub fn min_ksf(&self) -> Option<KsfParams> {
        self.security.min_ksf.map(Into::into)
    }

    /// The TOML text, with a header comment.
    pub fn to_toml(&self) -> String {
        let body = toml::to_string_pretty(self).expect("the configuration serialises");
        format!("# cmtp client configuration; see `cmtp --help` for every key.\n{body}")
    }
}

/// The home directory and its files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Home {
    root: PathBuf,
}

impl Home {
    /// The home at `root` (not created until something is written).
    pub fn at(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }

    /// The platform's default: `~/.config/cmtp` on Linux
    /// (`$XDG_CONFIG_HOME/cmtp`).
    pub fn default_dir() -> Option<PathBuf> {
        directories::ProjectDirs::from("", "", "cmtp").map(|d| d.config_dir().to_owned())
    }

    /// The directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `config.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join(CONFIG_FILE)
    }

    /// `identity.key`.
    pub fn identity_path(&self) -> PathBuf {
        self.root.join(IDENTITY_FILE)
    }

    /// `known_domains`.
    pub fn known_domains_path(&self) -> PathBuf {
        self.root.join(KNOWN_DOMAINS_FILE)
    }

    /// `mail.db`, the local store.
    pub fn store_path(&self) -> PathBuf {
        self.root.join(crate::store::STORE_FILE)
    }

    /// `cache/`.
    pub fn cache_dir(&self) -> PathBuf {
        self.root.join(CACHE_DIR)
    }

    /// Creates the directory (mode 0700) if it does not exist.
    pub fn ensure(&self) -> Result<()> {
        create_private_dir(&self.root)
    }

    /// Reads `config.toml`; an absent file is the default configuration.
    pub fn load_config(&self) -> Result<Config> {
        let path = self.config_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::BadFile {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(Error::file(path, e)),
        }
    }

    /// Writes `config.toml` (atomically, mode 0600).
    pub fn save_config(&self, config: &Config) -> Result<()> {
        self.ensure()?;
        write_private(&self.config_path(), config.to_toml().as_bytes())
    }

    /// Whether an identity key is stored.
    pub fn has_identity(&self) -> bool {
        self.identity_path().exists()
    }

    /// Reads the identity key. Refuses a file that others may read, like SSH.
    pub fn load_identity(&self) -> Result<Option<IdentityKey>> {
        let path = self.identity_path();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Zeroizing::new(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::file(path, e)),
        };
        let mode = std::fs::metadata(&path)
            .map_err(|e| Error::file(&path, e))?
            .permissions()
            .mode();
        if mode & 0o077 != 0 {
            return Err(Error::BadFile {
                path,
                detail: format!(
                    "permissions {:04o} are too open: the identity key must be readable by you only (chmod 600)",
                    mode & 0o7777
                ),
            });
        }
        let hex_line = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'))
            .unwrap_or("");
        let mut seed = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(hex_line, &mut seed[..]).map_err(|_| Error::BadFile {
            path: path.clone(),
            detail: "not a 64-hex-digit identity key".into(),
        })?;
        Ok(Some(IdentityKey::from_seed(&seed)))
    }

    /// Where a replaced identity key with fingerprint `fp` is kept:
    /// `identity.key.old-<first 16 hex digits>`.
    pub fn old_identity_path(&self, fp: &str) -> PathBuf {
        self.root
            .join(format!("{IDENTITY_FILE}.old-{}", &fp[..fp.len().min(16)]))
    }

    /// Writes the identity key (atomically, mode 0600). A different key
    /// already there is not lost: it is kept beside, as
    /// [`old_identity_path`](Self::old_identity_path) (mail sealed to it
    /// opens with it only; after `cmtp reset` or a login to an account whose
    /// key was reset).
    pub fn save_identity(&self, identity: &IdentityKey, address: &Address) -> Result<()> {
        self.ensure()?;
        let kept = match self.load_identity() {
            Ok(Some(old)) if old.public() != identity.public() => {
                Some(self.old_identity_path(&old.public().fingerprint_hex()))
            }
            Ok(_) => None,
            // Unreadable here (permissions, format): still not ours to destroy.
            Err(_) => Some(
                self.root
                    .join(format!("{IDENTITY_FILE}.old-{}", cmtp_client::clock::now())),
            ),
        };
        if let Some(kept) = kept
            && !kept.exists()
        {
            std::fs::rename(self.identity_path(), &kept).map_err(|e| Error::file(&kept, e))?;
        }
        let text = Zeroizing::new(format!(
            "# identity key of {address}: secret, never share it. Fingerprint {}\n{}\n",
            identity.public().fingerprint_hex(),
            hex::encode(identity.seed())
        ));
        write_private(&self.identity_path(), text.as_bytes())
    }
}

/// Creates `dir` and any missing parents, each new one with mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut b = std::fs::DirBuilder::new();
    b.recursive(true);
    std::os::unix::fs::DirBuilderExt::mode(&mut b, 0o700);
    b.create(dir).map_err(|e| Error::file(dir, e))
}

/// Writes `bytes` to `path` atomically (a new file with mode 0600 in the same
/// directory, synced, then renamed over `path`).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.{}.tmp", rand::random::<u64>()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_and_an_absent_file_is_default() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path().join("h"));
        assert_eq!(home.load_config().unwrap(), Config::default());
        let mut c = Config {
            address: Some("alice@a.test".into()),
            server: Some("127.0.0.1:9001".into()),
            ..Config::default()
        };
        c.dns
            .routes
            .insert("b.test".into(), vec!["127.0.0.1:9002".into()]);
        c.security.min_ksf = Some(KsfParams::INSECURE_TEST.into());
        home.save_config(&c).unwrap();
        assert_eq!(home.load_config().unwrap(), c);
        let mode = std::fs::metadata(home.root()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn the_identity_key_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::at(dir.path());
        assert!(home.load_identity().unwrap().is_none());
        let id = IdentityKey::from_seed(&[9; 32]);
        let a = Address::parse("alice@a.test").unwrap();
        home.save_identity(&id, &a).unwrap();
        let mode = std::fs::metadata(home.identity_path())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(home.load_identity().unwrap().unwrap().public(), id.public());
        std::fs::set_permissions(home.identity_path(), std::fs::Permissions::from_mode(0o644))
            .unwrap();
        assert!(home.load_identity().is_err());
    }

    #[test]
    fn ksf_settings_parse() {
        assert_eq!(parse_ksf("256,1,1").unwrap(), KsfParams::INSECURE_TEST);
        assert!(parse_ksf("256,1").is_err());
        assert!(parse_ksf("256,0,1").is_err());
    }
}
