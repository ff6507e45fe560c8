//! Opening and judging messages, and saving attachments safely
//! (PROTOCOL.md §8).
//!
//! Each message gets a [`Verdict`] once, when it is fetched
//! ([`open_message`]): `verified` when it decrypts with the identity key and
//! its sender signature verifies under the sender's key statement (or, for
//! a notice from a server, that server's key; for a copy of mail the user
//! sent, the user's own key); `NOT VERIFIED: …` when it decrypts but the
//! signature cannot be verified; `undecryptable` when it does not decrypt
//! (altered, or not for this key). Undecryptable content is never shown.
//! The verdict is stored with the message in the local store.

use std::io::Write;
use std::path::{Path, PathBuf};

use cmtp_proto::content::{Attachment, open, safe_file_name};
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::message::{Message, Source, VERSION_PLAINTEXT};
use cmtp_proto::names::Address;

use crate::failure::{Error, Result};
use crate::store::{Opened, StoredMessage};

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

/// Whose key signs `message`, if its verdict needs one: `None` for a copy
/// of mail `me` sent (their own key is at hand) and for plaintext.
pub fn signer_needed(message: &Message, me: &Address) -> Option<Source> {
    let from_me = message.source.address().as_ref() == Some(me);
    if from_me || message.version == VERSION_PLAINTEXT || message.destination != *me {
        None
    } else {
        Some(message.source.clone())
    }
}

/// Opens a fetched message once: decrypts it with `identity` and judges
/// its sender signature with `sender_key`, the key of
/// [`signer_needed`]'s source (looked up by the caller; `None` when none is
/// needed). What it gives is stored with the message
/// ([`crate::store::LocalStore::store_fetched`]). A transient failure to get
/// the sender's key is returned as an error (judge again later).
pub fn open_message(
    decoded: std::result::Result<Message, String>,
    me: &Address,
    identity: &IdentityKey,
    sender_key: Option<Result<PublicKey>>,
) -> Result<Opened> {
    let mut out = Opened::default();
    let message = match decoded {
        Ok(m) => m,
        Err(e) => {
            out.verdict = "undecryptable".into();
            out.verdict_detail = Some(format!("malformed message: {e}"));
            return Ok(out);
        }
    };
    out.destination = Some(message.destination.to_string());
    let opened = match open(&message, Some(identity)) {
        Ok(o) => o,
        Err(e) => {
            out.verdict = "undecryptable".into();
            out.verdict_detail = Some(e.to_string());
            return Ok(out);
        }
    };
    let from_me = message.source.address().as_ref() == Some(me);
    let verdict = if message.destination != *me && !from_me {
        Verdict::NotVerified(format!("addressed to {}, not to you", message.destination))
    } else if message.version == VERSION_PLAINTEXT {
        Verdict::NotVerified("sent as plaintext, unsigned".into())
    } else {
        let key = if from_me {
            Ok(identity.public())
        } else {
            sender_key.unwrap_or_else(|| Err(Error::Verification("no key for the sender".into())))
        };
        match key {
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
    out.verdict = verdict.word().into();
    out.verdict_detail = verdict.detail().map(str::to_owned);
    let c = opened.content;
    let list = |v: &[cmtp_proto::content::Mailbox]| v.iter().map(|m| m.to_string()).collect();
    out.content_version = Some(c.version.number());
    out.date_ts = cmtp_client::clock::parse_rfc3339(&c.date);
    out.subject = Some(c.subject);
    out.date = Some(c.date);
    out.reply_to = c.reply_to.map(|a| a.to_string());
    out.cc = list(&c.cc);
    out.to = list(&c.to);
    out.bcc = list(&c.bcc);
    let some = |s: String| (!s.is_empty()).then_some(s);
    out.from_name = some(c.from_name);
    out.message_id = some(c.message_id);
    out.in_reply_to = some(c.in_reply_to);
    out.references = c.references;
    out.body = Some(c.text);
    out.media_types = c.attachments.iter().map(|a| a.media_type.clone()).collect();
    // Mail that arrived by SMTP (§19.2), sealed by the own server: its
    // thread headers are those of the RFC 5322 message inside.
    if message.source.address().is_none()
        && message.source.domain == me.domain
        && out.message_id.is_none()
        && let Some(eml) = c
            .attachments
            .iter()
            .find(|a| a.name == cmtp_smtp::arrival::ATTACHMENT_NAME)
        && let Some((id, parent, refs)) = crate::smtp::thread_headers(&eml.data)
    {
        out.message_id = id;
        out.in_reply_to = parent;
        out.references = refs;
    }
    out.attachments = c
        .attachments
        .into_iter()
        .map(|a| (a.name, a.data))
        .collect();
    Ok(out)
}

/// The verdict of a stored message.
pub fn stored_verdict(m: &StoredMessage) -> Verdict {
    match m.verdict.as_deref() {
        Some("verified") => Verdict::Verified,
        Some("not-verified") => Verdict::NotVerified(m.verdict_detail.clone().unwrap_or_default()),
        Some(_) => Verdict::Undecryptable(m.verdict_detail.clone().unwrap_or_default()),
        None => Verdict::Undecryptable("not fetched yet".into()),
    }
}

/// The sender of a stored message as people read it (`alice@a.example`, or
/// `server of a.example` for a notice).
pub fn sender(m: &StoredMessage) -> String {
    match m.source.strip_prefix('@') {
        Some(domain) => format!("server of {domain}"),
        None => m.source.clone(),
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
            ..Attachment::default()
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
