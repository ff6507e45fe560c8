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

/// The file beside the key that holds the rotation statements leading to
/// it, one hex-encoded rotation per line, oldest first.
pub fn rotations_path(key_path: &Path) -> std::path::PathBuf {
    let mut p = key_path.as_os_str().to_owned();
    p.push(".rotations");
    p.into()
}

/// Reads the rotation statements (none if the file does not exist).
pub fn load_rotations(key_path: &Path) -> anyhow::Result<Vec<cmtp_proto::statements::Rotation>> {
    let path = rotations_path(key_path);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let bytes = hex::decode(l.trim()).context("rotation is not hex")?;
            let mut r = cmtp_proto::wire::Reader::new(&bytes);
            let rot = cmtp_proto::statements::Rotation::read(&mut r)?;
            r.finish("rotation")?;
            rot.verify()?;
            Ok(rot)
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .with_context(|| format!("reading {}", path.display()))
}

/// Replaces the key at `key_path` with a new one and records the rotation,
/// signed by the old key, so that peers who pinned the old key accept the
/// new one. Returns (old, new) public keys. Running servers must be restarted.
pub fn rotate(
    key_path: &Path,
    domain: &cmtp_proto::names::Domain,
    now: u64,
) -> anyhow::Result<(cmtp_proto::crypto::PublicKey, cmtp_proto::crypto::PublicKey)> {
    let old = load(key_path)?;
    let mut rotations = load_rotations(key_path)?;
    let new = IdentityKey::generate(&mut rand_core::OsRng);
    let rotation = cmtp_proto::statements::Rotation::issue(&old, new.public(), domain.clone(), now);
    rotations.push(rotation);
    // Keep the most recent ones: a bundle carries at most 16.
    let keep = rotations
        .len()
        .saturating_sub(cmtp_proto::statements::MAX_ROTATIONS);
    let mut text = String::from(
        "# cmtp server key rotations, oldest first (hex); written by `cmtpd key rotate`\n",
    );
    for r in &rotations[keep..] {
        let mut b = Vec::new();
        r.encode(&mut b);
        text.push_str(&hex::encode(b));
        text.push('\n');
    }
    let rot_path = rotations_path(key_path);
    let tmp_rot = rot_path.with_extension("rotations.tmp");
    std::fs::write(&tmp_rot, text)?;
    std::fs::File::open(&tmp_rot)?.sync_all()?;
    std::fs::rename(&tmp_rot, &rot_path)?;
    let tmp_key = key_path.with_extension("key.new");
    let _ = std::fs::remove_file(&tmp_key);
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp_key)?;
        let line = Zeroizing::new(format!("{PREFIX}{}\n", hex::encode(new.seed())));
        f.write_all(line.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp_key, key_path)?;
    if let Some(dir) = key_path.parent() {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).ok();
    }
    Ok((old.public(), new.public()))
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
    fn a_rotation_replaces_the_key_and_records_a_statement_signed_by_the_old_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("server.key");
        let (k1, _) = load_or_create(&p).unwrap();
        let d = cmtp_proto::names::Domain::parse("a.test").unwrap();
        let (old, new) = rotate(&p, &d, 100).unwrap();
        assert_eq!(old, k1.public());
        assert_eq!(load(&p).unwrap().public(), new);
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let (_, newer) = rotate(&p, &d, 200).unwrap();
        let rots = load_rotations(&p).unwrap();
        assert_eq!(rots.len(), 2);
        assert_eq!((rots[0].old_key, rots[0].new_key), (old, new));
        assert_eq!((rots[1].old_key, rots[1].new_key), (new, newer));
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
