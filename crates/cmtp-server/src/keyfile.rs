//! The server's Ed25519 key on disk: created on first start with mode 0600,
//! reused afterwards. The file holds one line, `cmtp-server-key-v1 <hex seed>`.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, bail};
use cmtp_proto::crypto::IdentityKey;
use zeroize::Zeroizing;

const PREFIX: &str = "cmtp-server-key-v1 ";

/// Loads the key at `path`, or creates it (mode 0600) if the file does not
/// exist. Returns the key and whether it was created.
pub fn load_or_create(path: &Path) -> anyhow::Result<(IdentityKey, bool)> {
    match std::fs::metadata(path) {
        Ok(_) => Ok((load(path)?, false)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = IdentityKey::generate(&mut rand_core::OsRng);
            let mut f = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| format!("creating server key {}", path.display()))?;
            let line = Zeroizing::new(format!("{PREFIX}{}\n", hex::encode(key.seed())));
            f.write_all(line.as_bytes())?;
            f.sync_all()?;
            if let Some(dir) = path.parent() {
                std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
            }
            Ok((key, true))
        }
        Err(e) => Err(e).with_context(|| format!("reading server key {}", path.display())),
    }
}

/// Loads an existing key file, refusing one that others may read.
pub fn load(path: &Path) -> anyhow::Result<IdentityKey> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        bail!(
            "server key {} is readable by other users (mode {:o}); run: chmod 600 {}",
            path.display(),
            meta.permissions().mode() & 0o777,
            path.display()
        );
    }
    let text = Zeroizing::new(std::fs::read_to_string(path)?);
    let hex_seed = text
        .trim()
        .strip_prefix(PREFIX)
        .with_context(|| format!("{} is not a cmtp server key file", path.display()))?;
    let bytes = Zeroizing::new(hex::decode(hex_seed).context("server key is not hex")?);
    let seed: &[u8; 32] = bytes
        .as_slice()
        .try_into()
        .context("server key seed is not 32 bytes")?;
    Ok(IdentityKey::from_seed(seed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_is_created_private_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        let (k1, created) = load_or_create(&p).unwrap();
        assert!(created);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (k2, created) = load_or_create(&p).unwrap();
        assert!(!created);
        assert_eq!(k1.public(), k2.public());
    }

    #[test]
    fn a_key_readable_by_others_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        load_or_create(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("chmod 600"), "{e}");
    }
}
