//! Export: the local store's decrypted mail as standard RFC 5322 / MIME
//! messages (built with `mail-builder`), in one mbox file (mboxrd) or a
//! Maildir (Maildir++ subfolders for folders other than Inbox), so that
//! people can take their mail to other tools.
//!
//! Each message carries its own header fields (From with the sender's
//! name, To, Cc, Bcc as this copy has them, Subject, Date, Message-ID,
//! In-Reply-To, References), its text as `text/plain; charset=utf-8` and
//! its attachments with their media types and file names. Four header
//! fields say what only cmtp knows:
//!
//! ```text
//! X-CMTP-Signature: verified; signer=alice@a.example
//! X-CMTP-Signature: not-verified; reason="…"
//! X-CMTP-Folder: Inbox
//! X-CMTP-Hash: <the message hash, hex>
//! X-CMTP-Content-Version: 2
//! ```
//!
//! Flags go where each format keeps them: `Status:`/`X-Status:` in mbox,
//! the `:2,FRST` suffix of the file name in a Maildir. Messages that could
//! not be decrypted are not exported (there is nothing to export); they
//! are counted. Folder names never become paths as they are: only letters,
//! digits, space, `-` and `_` are kept.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use mail_builder::MessageBuilder;
use mail_builder::headers::address::Address as MbAddress;
use mail_builder::headers::date::Date;
use mail_builder::headers::message_id::MessageId;
use mail_builder::headers::raw::Raw;

use cmtp_proto::payload::mailbox::{ANSWERED, FLAGGED, SEEN};

use crate::address::parse_resolved;
use crate::compose::guess_media_type;
use crate::failure::{Error, Result};
use crate::store::{LocalStore, StoredMessage};

/// What an export wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportReport {
    /// Messages written.
    pub messages: u64,
    /// Messages left out because they could not be decrypted.
    pub undecryptable: u64,
    /// Folders written.
    pub folders: Vec<String>,
}

fn mb_list(list: &[String]) -> Vec<MbAddress<'static>> {
    parse_resolved(list)
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            MbAddress::new_address(
                (!m.name.is_empty()).then_some(m.name),
                m.address.to_string(),
            )
        })
        .collect()
}

/// `text` with CR LF and lone CR as LF, and no control characters but tab
/// (header values).
fn header_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() && c != '\t' { ' ' } else { c })
        .collect()
}

/// The message as RFC 5322 bytes (LF line endings), or `None` when it
/// could not be decrypted.
pub fn rfc5322(store: &LocalStore, m: &StoredMessage) -> Result<Option<Vec<u8>>> {
    let verdict = m.verdict.as_deref().unwrap_or("undecryptable");
    if verdict == "undecryptable" || m.body.is_none() {
        return Ok(None);
    }
    let (from_addr, from_name) = match m.source.strip_prefix('@') {
        Some(domain) => (
            format!("postmaster@{domain}"),
            Some(format!("Server of {domain}")),
        ),
        None => (
            m.source.clone(),
            m.from_name.clone().filter(|n| !n.is_empty()),
        ),
    };
    let date = m.date_ts.unwrap_or(m.received_at);
    let message_id = m
        .message_id
        .clone()
        .unwrap_or_else(|| format!("{}@cmtp.invalid", hex::encode(m.hash)));
    let mut b = MessageBuilder::new()
        .from(MbAddress::new_address(from_name, from_addr))
        .subject(header_text(m.subject.as_deref().unwrap_or("")))
        .date(Date::new(i64::try_from(date).unwrap_or(0)))
        .message_id(MessageId::new(message_id));
    let to: Vec<String> = if m.to.is_empty() {
        m.destination.clone().into_iter().collect()
    } else {
        m.to.clone()
    };
    if !to.is_empty() {
        b = b.to(mb_list(&to));
    }
    if !m.cc.is_empty() {
        b = b.cc(mb_list(&m.cc));
    }
    if !m.bcc.is_empty() {
        b = b.bcc(mb_list(&m.bcc));
    }
    if let Some(r) = &m.reply_to {
        b = b.reply_to(MbAddress::new_address(None::<String>, r.clone()));
    }
    if let Some(p) = m.in_reply_to.clone().filter(|p| !p.is_empty()) {
        b = b.in_reply_to(MessageId::new(p));
    }
    if !m.references.is_empty() {
        b = b.references(MessageId::new_list(m.references.clone().into_iter()));
    }
    let signature = match verdict {
        "verified" => format!(
            "verified; signer={}",
            if m.source.starts_with('@') {
                format!("server{}", m.source)
            } else {
                m.source.clone()
            }
        ),
        _ => format!(
            "not-verified; reason=\"{}\"",
            header_text(m.verdict_detail.as_deref().unwrap_or("unknown")).replace(['"', '\\'], "'")
        ),
    };
    b = b
        .header("X-CMTP-Signature", Raw::new(signature))
        .header("X-CMTP-Folder", Raw::new(header_text(&m.folder)))
        .header("X-CMTP-Hash", Raw::new(hex::encode(m.hash)))
        .header(
            "X-CMTP-Content-Version",
            Raw::new(m.content_version.unwrap_or(1).to_string()),
        );
    b = b.text_body(m.body.clone().unwrap_or_default());
    for a in store.parts(m.uid)? {
        let media_type = if a.media_type.is_empty() {
            guess_media_type(&a.name).to_owned()
        } else {
            a.media_type
        };
        b = b.attachment(media_type, header_text(&a.name), a.data);
    }
    let bytes = b
        .write_to_vec()
        .map_err(|e| Error::Invalid(format!("building message {}: {e}", m.uid)))?;
    Ok(Some(crlf_to_lf(&bytes)))
}

fn crlf_to_lf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\r' && b.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// The `From ` line date of mbox (asctime: `Thu Nov 26 02:00:00 2026`).
fn asctime(secs: u64) -> String {
    // "Thu, 26 Nov 2026 02:00:00 +0000"
    let rfc = Date::new(i64::try_from(secs).unwrap_or(0)).to_rfc822();
    let p: Vec<&str> = rfc.split_whitespace().collect();
    if p.len() >= 5 {
        format!(
            "{} {} {:>2} {} {}",
            p[0].trim_end_matches(','),
            p[2],
            p[1],
            p[4],
            p[3]
        )
    } else {
        rfc
    }
}

fn status_headers(flags: u32) -> String {
    let mut out = String::new();
    if flags & SEEN != 0 {
        out.push_str("Status: RO\n");
    }
    let mut x = String::new();
    if flags & ANSWERED != 0 {
        x.push('A');
    }
    if flags & FLAGGED != 0 {
        x.push('F');
    }
    if !x.is_empty() {
        out.push_str(&format!("X-Status: {x}\n"));
    }
    out
}

/// mboxrd: `From ` lines (after any number of `>`) get one more `>`.
fn mboxrd_escape(body: &[u8], out: &mut Vec<u8>) {
    for line in body.split_inclusive(|&b| b == b'\n') {
        let start = line.iter().position(|&b| b != b'>').unwrap_or(line.len());
        if line[start..].starts_with(b"From ") {
            out.push(b'>');
        }
        out.extend_from_slice(line);
    }
}

fn open_new(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| Error::file(path, e))
}

/// Writes every exported message (of `folder`, or all) into a new mbox
/// file at `path` (never overwriting a file).
pub fn mbox(store: &LocalStore, folder: Option<&str>, path: &Path) -> Result<ExportReport> {
    let mut report = ExportReport::default();
    let mut out = Vec::new();
    for m in store.fetched_messages(folder)? {
        let Some(bytes) = rfc5322(store, &m)? else {
            report.undecryptable += 1;
            continue;
        };
        let sender = if m.source.starts_with('@') {
            format!("postmaster{}", m.source)
        } else {
            m.source.clone()
        };
        out.extend_from_slice(
            format!(
                "From {sender} {}\n",
                asctime(m.date_ts.unwrap_or(m.received_at))
            )
            .as_bytes(),
        );
        // The flags go right after the separator, before the message's own
        // header fields.
        out.extend_from_slice(status_headers(m.flags).as_bytes());
        mboxrd_escape(&bytes, &mut out);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.push(b'\n');
        report.messages += 1;
        if !report.folders.contains(&m.folder) {
            report.folders.push(m.folder.clone());
        }
    }
    let mut f = open_new(path)?;
    f.write_all(&out)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::file(path, e))?;
    Ok(report)
}

/// A folder name as a Maildir++ subfolder name: `.` and the name with
/// anything but letters, digits, space, `-` and `_` made `_`.
fn maildir_folder(folder: &str) -> String {
    let clean: String = folder
        .chars()
        .map(|c| {
            if c.is_alphanumeric() || matches!(c, ' ' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(".{clean}")
}

fn make_maildir(dir: &Path) -> Result<()> {
    for sub in ["tmp", "new", "cur"] {
        let p = dir.join(sub);
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&p)
            .map_err(|e| Error::file(&p, e))?;
    }
    Ok(())
}

/// Writes every exported message (of `folder`, or all) into the Maildir
/// `dir` (created if missing): Inbox at its top, every other folder as a
/// Maildir++ subfolder (`.Sent`, `.Archive`, …). Each message is written
/// into `tmp/` and renamed into `cur/` with its flags (`:2,FRS`).
pub fn maildir(store: &LocalStore, folder: Option<&str>, dir: &Path) -> Result<ExportReport> {
    let mut report = ExportReport::default();
    make_maildir(dir)?;
    let pid = std::process::id();
    let now = cmtp_client::clock::now();
    for m in store.fetched_messages(folder)? {
        let Some(bytes) = rfc5322(store, &m)? else {
            report.undecryptable += 1;
            continue;
        };
        let target: PathBuf = if m.folder == "Inbox" {
            dir.to_owned()
        } else {
            let sub = dir.join(maildir_folder(&m.folder));
            if !sub.exists() {
                make_maildir(&sub)?;
                open_new(&sub.join("maildirfolder"))?;
            }
            sub
        };
        let mut info = String::new();
        if m.flags & FLAGGED != 0 {
            info.push('F');
        }
        if m.flags & ANSWERED != 0 {
            info.push('R');
        }
        if m.flags & SEEN != 0 {
            info.push('S');
        }
        if m.folder == "Trash" {
            info.push('T');
        }
        let base = format!("{now}.M{}P{pid}Q{}.cmtp", m.uid, hex::encode(&m.hash[..6]));
        let tmp = target.join("tmp").join(&base);
        let mut f = open_new(&tmp)?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| Error::file(&tmp, e))?;
        let cur = target.join("cur").join(format!("{base}:2,{info}"));
        std::fs::rename(&tmp, &cur).map_err(|e| Error::file(&cur, e))?;
        report.messages += 1;
        if !report.folders.contains(&m.folder) {
            report.folders.push(m.folder.clone());
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbox_details() {
        assert_eq!(asctime(1_795_658_400), "Thu Nov 26 02:00:00 2026");
        let mut out = Vec::new();
        mboxrd_escape(b"a\nFrom me\n>From you\nFrom: x\n", &mut out);
        assert_eq!(out, b"a\n>From me\n>>From you\nFrom: x\n");
        assert_eq!(crlf_to_lf(b"a\r\nb\rc\r\n"), b"a\nb\rc\n");
        assert_eq!(maildir_folder("../x/y"), ".___x_y");
        assert_eq!(status_headers(SEEN | ANSWERED), "Status: RO\nX-Status: A\n");
    }
}
