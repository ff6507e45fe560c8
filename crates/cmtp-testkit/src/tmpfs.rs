//! A small tmpfs mounted for one test (a real full disk), unmounted —
//! lazily if still busy — when dropped. Mounting needs root (or
//! CAP_SYS_ADMIN); CI runs as root.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A mounted tmpfs; the mountpoint lives in a fresh temporary directory.
#[derive(Debug)]
pub struct Tmpfs {
    mountpoint: PathBuf,
    _dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` (as `mount -o size=`, e.g. `"16m"`), mode
    /// 0700, owned by `owner` (uid, gid) when given — then the directories
    /// above it are made traversable so that that user reaches it.
    pub fn mount(size: &str, owner: Option<(u32, u32)>) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let mut options = format!("size={size},mode=0700");
        if let Some((uid, gid)) = owner {
            options.push_str(&format!(",uid={uid},gid={gid}"));
        }
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &options, "cmtp-test"])
            .arg(&mountpoint)
            .stderr(Stdio::null())
            .status()
            .map_err(|e| format!("running mount: {e}"))?;
        if !status.success() {
            return Err("cannot mount a tmpfs here (needs root)".into());
        }
        let fs = Tmpfs {
            mountpoint,
            _dir: dir,
        };
        if owner.is_some() {
            let mut p = fs.mountpoint.clone();
            while p.pop() && !p.as_os_str().is_empty() && p != Path::new("/") {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(&p)
                    .map_err(|e| e.to_string())?
                    .permissions()
                    .mode();
                if mode & 0o001 == 0 {
                    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode | 0o001))
                        .map_err(|e| e.to_string())?;
                }
            }
        }
        Ok(fs)
    }

    /// The mountpoint.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let plain = Command::new("umount").arg(&self.mountpoint).status();
        if !matches!(plain, Ok(s) if s.success()) {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.mountpoint)
                .status();
        }
    }
}
