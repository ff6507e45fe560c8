//! The mailbox: listing, fetching into the local cache, decrypting and
//! verifying, deleting, and saving attachments safely (PROTOCOL.md §8, §13).
//!
//! Fetched messages are kept in `cache/messages/`, each file named by the hex
//! of the message hash computed here from the bytes received (or, for bytes
//! that do not even decode as a message, their SHA-256 with `.raw`), never by
//! anything from the wire; `index.json` maps mailbox ids to those files.
//!
//! Each message gets a [`Verdict`]: `verified` when it decrypts with the
//! identity key and its sender signature verifies under the sender's key
//! statement (or, for a notice from a server, that server's key);
//! `NOT VERIFIED: …` when it decrypts but the signature cannot be verified;
//! `undecryptable` when it does not decrypt (altered, or not for this key).
//! Undecryptable content is never shown.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use cmtp_proto::content::{Attachment, Content, open, safe_file_name};
use cmtp_proto::message::{Message, VERSION_PLAINTEXT};
use cmtp_proto::payload::ListingEntry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::failure::{Error, Result};
use crate::home::{create_private_dir, write_private};
use crate::session::Session;

/// Whether a message could be decrypted and whose signature it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Decrypted; the sender signature verifies under the sender's key.
    Verified,
    /// Decrypted (or plaintext), but the sender is not verified; the reason.
    NotVerified(String),
    /// Cannot be decrypted (or is malformed); the reason.
    Undecryptable(String),
}

impl Verdict {
    /// `verified`, `not-verified` or `undecryptable` (for scripts).
    pub fn word(&self) -> &'static str {
        match self {
            Verdict::Verified => "verified",
            Verdict::NotVerified(_) => "not-verified",
            Verdict::Undecryptable(_) => "undecryptable",
        }
    }

    /// The reason, if not verified.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Verdict::Verified => None,
            Verdict::NotVerified(d) | Verdict::Undecryptable(d) => Some(d),
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Verified => f.write_str("verified"),
            Verdict::NotVerified(why) => write!(f, "NOT VERIFIED: {why}"),
            Verdict::Undecryptable(_) => f.write_str("undecryptable"),
        }
    }
}

/// A message of the mailbox, opened and judged.
#[derive(Debug, Clone)]
pub struct Inspected {
    /// The mailbox id.
    pub id: u64,
    /// When the server received it (unix seconds).
    pub received_at: u64,
    /// Its size as stored by the server.
    pub size: u64,
    /// The message as fetched (`None` if the bytes do not decode).
    pub message: Option<Message>,
    /// The content, when it could be decrypted.
    pub content: Option<Content>,
    /// The verdict.
    pub verdict: Verdict,
}

impl Inspected {
    /// The sender as the envelope names it (`alice@a.example`, or the
    /// domain's server for a notice).
    pub fn from(&self) -> String {
        match &self.message {
            Some(m) => match m.source.address() {
                Some(a) => a.to_string(),
                None => format!("server of {}", m.source.domain),
            },
            None => "?".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Index {
    /// Mailbox id → cached entry.
    entries: BTreeMap<u64, IndexEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct IndexEntry {
    /// File name in `messages/` (hex digest computed locally + extension).
    file: String,
    received_at: u64,
    size: u64,
}

/// The local cache of the mailbox.
#[derive(Debug)]
pub struct Mailbox {
    dir: PathBuf,
    index: Index,
}

impl Mailbox {
    /// The cache in `dir` (`<home>/cache/messages`).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Mailbox> {
        let dir = dir.into();
        let path = dir.join("index.json");
        let index = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
                path,
                detail: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Index::default(),
            Err(e) => return Err(Error::file(path, e)),
        };
        Ok(Mailbox { dir, index })
    }

    fn save_index(&self) -> Result<()> {
        create_private_dir(&self.dir)?;
        let bytes = serde_json::to_vec_pretty(&self.index).expect("index serialises");
        write_private(&self.dir.join("index.json"), &bytes)
    }

    /// Ids in the cache.
    pub fn cached_ids(&self) -> Vec<u64> {
        self.index.entries.keys().copied().collect()
    }

    /// LIST, then FETCH every message not yet cached; forgets cached
    /// messages the server no longer has. Returns the listing.
    pub async fn sync(&mut self, session: &mut Session) -> Result<Vec<ListingEntry>> {
        let listing = session.list().await?;
        let live: std::collections::HashSet<u64> = listing.iter().map(|e| e.id).collect();
        let gone: Vec<u64> = self
            .index
            .entries
            .keys()
            .filter(|id| !live.contains(id))
            .copied()
            .collect();
        for id in gone {
            self.forget(id);
        }
        for e in &listing {
            let cached = self
                .index
                .entries
                .get(&e.id)
                .is_some_and(|c| self.dir.join(&c.file).is_file());
            if !cached {
                self.fetch(session, e.id, e.received_at, e.size).await?;
            }
        }
        self.save_index()?;
        Ok(listing)
    }

    fn forget(&mut self, id: u64) {
        if let Some(e) = self.index.entries.remove(&id) {
            let still_used = self.index.entries.values().any(|o| o.file == e.file);
            if !still_used {
                let _ = std::fs::remove_file(self.dir.join(&e.file));
            }
        }
    }

    async fn fetch(
        &mut self,
        session: &mut Session,
        id: u64,
        received_at: u64,
        size: u64,
    ) -> Result<()> {
        create_private_dir(&self.dir)?;
        let tmp = self
            .dir
            .join(format!(".fetch-{}.tmp", rand::random::<u64>()));
        let fetched = session.fetch_to_file(id, &tmp).await;
        if let Err(e) = fetched {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let bytes = std::fs::read(&tmp).map_err(|e| Error::file(&tmp, e))?;
        let file = match Message::decode(&bytes, session.message_limits()) {
            Ok(m) => format!("{}.msg", hex::encode(m.hash())),
            Err(_) => format!("{}.raw", hex::encode(Sha256::digest(&bytes))),
        };
        let path = self.dir.join(&file);
        std::fs::rename(&tmp, &path).map_err(|e| Error::file(&path, e))?;
        self.index.entries.insert(
            id,
            IndexEntry {
                file,
                received_at,
                size,
            },
        );
        Ok(())
    }

    /// Opens message `id` (fetching it if it is not cached), decrypts it with
    /// the session's identity key and verifies its sender.
    pub async fn inspect(&mut self, session: &mut Session, id: u64) -> Result<Inspected> {
        if !self.index.entries.contains_key(&id) {
            let listing = session.list().await?;
            let Some(e) = listing.iter().find(|e| e.id == id) else {
                return Err(Error::NotFound(format!("no message {id} in the mailbox")));
            };
            self.fetch(session, id, e.received_at, e.size).await?;
            self.save_index()?;
        }
        let entry = self.index.entries.get(&id).expect("cached above").clone();
        let path = self.dir.join(&entry.file);
        let bytes = std::fs::read(&path).map_err(|e| Error::file(&path, e))?;
        let mut inspected = Inspected {
            id,
            received_at: entry.received_at,
            size: entry.size,
            message: None,
            content: None,
            verdict: Verdict::Undecryptable(String::new()),
        };
        let message = match Message::decode(&bytes, session.message_limits()) {
            Ok(m) => m,
            Err(e) => {
                inspected.verdict = Verdict::Undecryptable(format!("malformed message: {e}"));
                return Ok(inspected);
            }
        };
        let (me, identity) = {
            let (a, i) = session.account()?;
            (a.clone(), i.clone())
        };
        let opened = match open(&message, Some(&identity)) {
            Ok(o) => o,
            Err(e) => {
                inspected.verdict = Verdict::Undecryptable(e.to_string());
                inspected.message = Some(message);
                return Ok(inspected);
            }
        };
        inspected.verdict = if message.destination != me {
            Verdict::NotVerified(format!("addressed to {}, not to you", message.destination))
        } else if message.version == VERSION_PLAINTEXT {
            Verdict::NotVerified("sent as plaintext, unsigned".into())
        } else {
            match session.sender_key(&message.source).await {
                Err(e) if e.is_transient() => return Err(e),
                Err(e) => Verdict::NotVerified(format!("cannot get the sender's key: {e}")),
                Ok(key) => match opened.verify_sender(&message, &key) {
                    Ok(()) => Verdict::Verified,
                    Err(_) => Verdict::NotVerified(format!(
                        "the signature does not match the key of {}",
                        match message.source.address() {
                            Some(a) => a.to_string(),
                            None => format!("the server of {}", message.source.domain),
                        }
                    )),
                },
            }
        };
        inspected.content = Some(opened.content);
        inspected.message = Some(message);
        Ok(inspected)
    }

    /// [`sync`](Self::sync), then [`inspect`](Self::inspect) every message.
    pub async fn inbox(&mut self, session: &mut Session) -> Result<Vec<Inspected>> {
        let listing = self.sync(session).await?;
        let mut out = Vec::with_capacity(listing.len());
        for e in listing {
            out.push(self.inspect(session, e.id).await?);
        }
        Ok(out)
    }

    /// DELETE `id` on the server and from the cache.
    pub async fn delete(&mut self, session: &mut Session, id: u64) -> Result<()> {
        session.delete(id).await?;
        self.forget(id);
        self.save_index()
    }
}

/// Saves attachments into `dir` (created if missing) and returns the paths
/// written. The names inside the message are never used as paths: each is
/// reduced by [`safe_file_name`] to a plain file name; files are created
/// with `create_new`, so nothing is overwritten and no symbolic link is
/// followed; a name already taken gets a numeric suffix (`report-1.pdf`).
pub fn save_attachments(dir: &Path, attachments: &[Attachment]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).map_err(|e| Error::file(dir, e))?;
    let mut written = Vec::with_capacity(attachments.len());
    for (i, a) in attachments.iter().enumerate() {
        let name = safe_file_name(&a.name, &format!("attachment-{}", i + 1));
        let (stem, ext) = match name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_owned(), format!(".{e}")),
            _ => (name.clone(), String::new()),
        };
        let mut n = 0u32;
        loop {
            let candidate = if n == 0 {
                name.clone()
            } else {
                format!("{stem}-{n}{ext}")
            };
            let path = dir.join(&candidate);
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
            {
                Ok(mut f) => {
                    f.write_all(&a.data)
                        .and_then(|()| f.sync_all())
                        .map_err(|e| Error::file(&path, e))?;
                    written.push(path);
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => return Err(Error::file(path, e)),
            }
        }
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(name: &str, data: &[u8]) -> Attachment {
        Attachment {
            name: name.into(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn hostile_names_stay_inside_and_nothing_is_overwritten() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("save");
        let paths = save_attachments(
            &dir,
            &[
                att("../../evil", b"1"),
                att("/etc/passwd", b"2"),
                att("..", b"3"),
                att("report.pdf", b"4"),
                att("report.pdf", b"5"),
            ],
        )
        .unwrap();
        for p in &paths {
            assert_eq!(p.parent().unwrap(), dir);
        }
        let names: Vec<_> = paths
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            names,
            [
                "evil",
                "passwd",
                "attachment-3",
                "report.pdf",
                "report-1.pdf"
            ]
        );
        assert_eq!(std::fs::read(dir.join("report-1.pdf")).unwrap(), b"5");
        assert!(!base.path().join("evil").exists());
        // A symbolic link planted under the name is not followed.
        let target = base.path().join("target");
        std::os::unix::fs::symlink(&target, dir.join("x.txt")).unwrap();
        let p = save_attachments(&dir, &[att("x.txt", b"6")]).unwrap();
        assert_eq!(p[0], dir.join("x-1.txt"));
        assert!(!target.exists());
    }
}
