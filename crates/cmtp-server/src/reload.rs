//! Reloading a running server's configuration, and finding the running
//! server.
//!
//! `cmtpd run` writes its process id into `<data_dir>/cmtpd.pid` and holds
//! an exclusive `flock` on that file for as long as it runs ([`PidFile`]):
//! a second server on the same data directory is refused, and a stale file
//! (a server that was killed) is recognised because nobody holds the lock.
//! `cmtpd reload` ([`signal_reload`]) checks the configuration file, sends
//! SIGHUP to that process and waits for the outcome the server writes into
//! `<data_dir>/cmtpd.reload` ([`ReloadStatus`]). On SIGHUP the server reads
//! its configuration file again and calls [`Shared::reload`]: limits,
//! timeouts, login limits, routes and DNS, the relay schedule and the log
//! level and format change at once, without closing any connection; keys
//! that need a restart ([`crate::config::RESTART_ONLY`]) keep their running
//! values and are named in the outcome. A reload also makes the node forget
//! the names and key statements it keeps in memory (for up to a minute), so
//! that an alias or account removed meanwhile is no longer answered.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::config::{Config, ReloadPlan};
use crate::state::Shared;

impl Shared {
    /// Applies a new configuration (already read from the file) to the
    /// running server. It is checked first; a configuration with problems
    /// changes nothing. Keys that need a restart keep their running values.
    pub fn reload(&self, new: Config) -> anyhow::Result<ReloadPlan> {
        new.validate()?;
        let current = self.cfg();
        let (merged, plan) = current.merge_reload(new);
        if merged.dns != current.dns {
            self.remote
                .reconfigure(&merged)
                .context("applying the [dns] section")?;
        }
        drop(current);
        let (logins, writes) = merged.stranger_pools();
        self.stranger_logins.set_limits(logins);
        self.stranger_writes.set_limits(writes);
        self.store_cfg(merged);
        // Accounts or aliases removed by other processes stop being
        // answered from memory now rather than within a minute.
        self.forget_cached_accounts();
        // Unlocks recorded meanwhile are applied now rather than at the next poll.
        self.housekeeping_wakeup.notify_one();
        tracing::info!(
            applied = ?plan.applied,
            need_restart = ?plan.need_restart,
            "configuration reloaded"
        );
        if !plan.need_restart.is_empty() {
            tracing::warn!(keys = ?plan.need_restart, "changed keys that need a restart keep their running values");
        }
        Ok(plan)
    }
}

/// The process id file of a running server, locked for as long as it
/// exists; removed when dropped.
#[derive(Debug)]
pub struct PidFile {
    path: PathBuf,
    _file: std::fs::File,
}

impl PidFile {
    /// Creates (or takes over a stale) `<data_dir>/cmtpd.pid` for this
    /// process. Fails if another live process holds it.
    pub fn create(cfg: &Config) -> anyhow::Result<PidFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = cfg.pid_path();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            bail!(
                "another cmtpd (pid {}) is running on the data directory {}",
                text.trim(),
                cfg.data_dir.display()
            );
        }
        file.set_len(0)?;
        file.rewind()?;
        writeln!(file, "{}", std::process::id())?;
        file.sync_all()?;
        Ok(PidFile { path, _file: file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The process id of the server running on this configuration's data
/// directory, if one runs.
pub fn running_pid(cfg: &Config) -> anyhow::Result<Option<i32>> {
    let path = cfg.pid_path();
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    // A lock we can take means nobody holds it: the file is stale.
    if rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared).is_ok() {
        return Ok(None);
    }
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", path.display()))?;
    Ok(Some(pid))
}

/// What the server wrote after its last reload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadStatus {
    /// The server's process id.
    pub pid: u32,
    /// Counts the reloads of this process (1 for the first).
    pub seq: u64,
    /// Whether the new configuration is in effect.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Keys whose new values apply now.
    #[serde(default)]
    pub applied: Vec<String>,
    /// Changed keys that wait for a restart.
    #[serde(default)]
    pub need_restart: Vec<String>,
}

fn status_path(cfg: &Config) -> PathBuf {
    cfg.data_dir.join("cmtpd.reload")
}

/// Records the outcome of a reload for `cmtpd reload` to read.
pub fn write_status(cfg: &Config, status: &ReloadStatus) -> anyhow::Result<()> {
    let path = status_path(cfg);
    let tmp = path.with_extension("reload.tmp");
    std::fs::write(&tmp, serde_json::to_vec(status)?)?;
    std::fs::rename(&tmp, &path)?;
    Ok(())
}

fn read_status(path: &Path) -> Option<ReloadStatus> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

/// `cmtpd reload`: sends SIGHUP to the server running on `cfg`'s data
/// directory and waits (up to `wait`) for the outcome it records.
pub fn signal_reload(cfg: &Config, wait: Duration) -> anyhow::Result<ReloadStatus> {
    let Some(pid) = running_pid(cfg)? else {
        bail!(
            "no cmtpd is running on the data directory {} (no locked {})",
            cfg.data_dir.display(),
            cfg.pid_path().display()
        );
    };
    let path = status_path(cfg);
    let before = read_status(&path).filter(|s| s.pid as i32 == pid);
    let process =
        rustix::process::Pid::from_raw(pid).with_context(|| format!("invalid process id {pid}"))?;
    rustix::process::kill_process(process, rustix::process::Signal::HUP)
        .with_context(|| format!("sending SIGHUP to cmtpd (pid {pid})"))?;
    let until = Instant::now() + wait;
    loop {
        if let Some(s) = read_status(&path)
            && s.pid as i32 == pid
            && before.as_ref().is_none_or(|b| s.seq > b.seq)
        {
            return Ok(s);
        }
        if Instant::now() >= until {
            bail!(
                "sent SIGHUP to cmtpd (pid {pid}) but it did not report a reload within {wait:?}; see its log"
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
