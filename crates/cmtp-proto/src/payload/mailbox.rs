//! Mailbox synchronisation payloads (PROTOCOL.md §13.1, §13.3–§13.5): per-user
//! message ids, flags and folders kept by the server as per-message
//! metadata, the newest-first listing page (`LISTPAGE`), the change feed
//! since a modification sequence (`CHANGES`), and the reply to `FLAGS`.
//!
//! Every message of a mailbox has a per-user id (`uid`: 1 for the first
//! message, increasing, never reused within the mailbox's `epoch`) and a
//! modification sequence (`modseq`): the mailbox's counter at the last time
//! the message arrived or its flags or folder changed. A removed message
//! leaves a tombstone with the modseq of its removal, so a client that
//! remembers the highest modseq it has seen learns every later change, and
//! only those, from `CHANGES`.

use crate::limits::MAX_FIELD;
use crate::names::{Account, Domain};
use crate::wire::{Reader, WireError, put_str, put_u32, put_u64};

use super::PayloadError;

/// Flag bit: the message was read.
pub const SEEN: u32 = 1;
/// Flag bit: the message was answered.
pub const ANSWERED: u32 = 1 << 1;
/// Flag bit: the message is flagged (starred) for attention.
pub const FLAGGED: u32 = 1 << 2;
/// Flag bit: the message is marked for deletion (not yet removed).
pub const DELETED: u32 = 1 << 3;
/// The flag bits this version defines; servers store the other bits
/// unchanged and clients ignore those they do not know.
pub const KNOWN_FLAGS: u32 = SEEN | ANSWERED | FLAGGED | DELETED;

/// Most entries in one `LISTPAGE` or `CHANGES` reply.
pub const MAX_PAGE: usize = 1000;
/// Most message ids in one `FLAGS` command.
pub const MAX_FLAG_IDS: usize = 1024;
/// Longest folder name in bytes.
pub const MAX_FOLDER: usize = 64;

/// The names of a flag set, for people (`seen,flagged`).
pub fn flag_names(flags: u32) -> Vec<&'static str> {
    [
        (SEEN, "seen"),
        (ANSWERED, "answered"),
        (FLAGGED, "flagged"),
        (DELETED, "deleted"),
    ]
    .into_iter()
    .filter(|(bit, _)| flags & bit != 0)
    .map(|(_, name)| name)
    .collect()
}

/// A folder name: 1 to 64 bytes of UTF-8 without control characters,
/// not starting or ending with a space. The server keeps it as metadata
/// and never uses it as a path. Well-known folders: [`Folder::INBOX`],
/// [`Folder::SENT`], [`Folder::DRAFTS`], [`Folder::ARCHIVE`], [`Folder::TRASH`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Folder(String);

impl Folder {
    /// Where delivered mail lands.
    pub const INBOX: &'static str = "Inbox";
    /// Copies of the mail a user sent.
    pub const SENT: &'static str = "Sent";
    /// Unfinished messages.
    pub const DRAFTS: &'static str = "Drafts";
    /// Kept mail out of the inbox.
    pub const ARCHIVE: &'static str = "Archive";
    /// Deleted mail, before it is removed for good.
    pub const TRASH: &'static str = "Trash";

    /// Parses a folder name.
    pub fn parse(s: &str) -> Result<Folder, WireError> {
        let bad = |reason: &str| WireError::Invalid {
            what: "folder",
            reason: reason.to_owned(),
        };
        if s.is_empty() {
            return Err(bad("a folder name is not empty"));
        }
        if s.len() > MAX_FOLDER {
            return Err(bad("a folder name is at most 64 bytes"));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("a folder name holds no control characters"));
        }
        if s.starts_with(' ') || s.ends_with(' ') {
            return Err(bad("a folder name does not start or end with a space"));
        }
        Ok(Folder(s.to_owned()))
    }

    /// The inbox.
    pub fn inbox() -> Folder {
        Folder(Self::INBOX.to_owned())
    }

    /// Sent mail.
    pub fn sent() -> Folder {
        Folder(Self::SENT.to_owned())
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Folder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message as a listing describes it: its metadata and envelope summary,
/// without its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Summary {
    /// Per-user id (1 for the first message of the mailbox).
    pub uid: u64,
    /// The mailbox's modification sequence when the message last changed.
    pub modseq: u64,
    /// Flag bits ([`SEEN`], ...).
    pub flags: u32,
    /// The folder it is filed in.
    pub folder: Folder,
    /// Size of the stored message in bytes.
    pub size: u64,
    /// When the server accepted it.
    pub received_at: u64,
    /// The message hash (§7.2).
    pub hash: [u8; 32],
    /// Message version.
    pub version: u32,
    /// Number of attachments.
    pub attachment_count: u32,
    /// Source account from the envelope (`None`: the domain's server).
    pub source_account: Option<Account>,
    /// Source domain from the envelope.
    pub source_domain: Domain,
}

/// Least encoded size of a [`Summary`] (a one-byte folder, empty account,
/// one-byte domain).
const MIN_SUMMARY: usize = 8 + 8 + 4 + 2 + 8 + 8 + 32 + 4 + 4 + 1 + 2;

impl Summary {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        put_u64(out, self.uid);
        put_u64(out, self.modseq);
        put_u32(out, self.flags);
        put_str(out, self.folder.as_str());
        put_u64(out, self.size);
        put_u64(out, self.received_at);
        out.extend_from_slice(&self.hash);
        put_u32(out, self.version);
        put_u32(out, self.attachment_count);
        put_str(out, self.source_account.as_ref().map_or("", |a| a.as_str()));
        put_str(out, self.source_domain.as_str());
    }

    /// Reads one summary.
    pub fn read(r: &mut Reader<'_>) -> Result<Summary, PayloadError> {
        let uid = r.u64("uid")?;
        let modseq = r.u64("modseq")?;
        let flags = r.u32("flags")?;
        let folder = Folder::parse(r.string(MAX_FOLDER, "folder")?)?;
        let size = r.u64("size")?;
        let received_at = r.u64("received_at")?;
        let hash = r.array("hash")?;
        let version = r.u32("version")?;
        let attachment_count = r.u32("attachment count")?;
        let acc = r.string(MAX_FIELD, "source account")?;
        let source_account = if acc.is_empty() {
            None
        } else {
            Some(Account::parse_canonical(acc)?)
        };
        let source_domain = Domain::parse_canonical(r.string(MAX_FIELD, "source domain")?)?;
        Ok(Summary {
            uid,
            modseq,
            flags,
            folder,
            size,
            received_at,
            hash,
            version,
            attachment_count,
            source_account,
            source_domain,
        })
    }
}

fn check_count(n: usize, r: &Reader<'_>, least: usize) -> Result<(), WireError> {
    if n > MAX_PAGE {
        return Err(WireError::TooLarge {
            what: "entry count",
            value: n as u64,
            max: MAX_PAGE as u64,
        });
    }
    // Bound the allocation by what is there.
    if n.saturating_mul(least) > r.remaining() {
        return Err(WireError::Truncated {
            what: "entries",
            needed: n * least - r.remaining(),
        });
    }
    Ok(())
}

/// The body of SUCCESS after `LISTPAGE before limit`: the mailbox's epoch and
/// highest modseq, and up to `limit` messages with ids below `before`,
/// newest (highest id) first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListingPage {
    /// Identifies the mailbox's id space; a different epoch means the ids a
    /// client holds are void (the account was re-created).
    pub epoch: u64,
    /// The mailbox's modification sequence when the page was read.
    pub modseq: u64,
    /// The messages, highest id first.
    pub entries: Vec<Summary>,
}

impl ListingPage {
    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(20 + self.entries.len() * 120);
        put_u64(&mut out, self.epoch);
        put_u64(&mut out, self.modseq);
        put_u32(
            &mut out,
            u32::try_from(self.entries.len()).expect("a page fits u32"),
        );
        for e in &self.entries {
            e.encode(&mut out);
        }
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<ListingPage, PayloadError> {
        let mut r = Reader::new(body);
        let epoch = r.u64("epoch")?;
        let modseq = r.u64("modseq")?;
        let n = r.u32("count")? as usize;
        check_count(n, &r, MIN_SUMMARY)?;
        let mut entries = Vec::with_capacity(n);
        for _ in 0..n {
            entries.push(Summary::read(&mut r)?);
        }
        r.finish("listing page")?;
        Ok(ListingPage {
            epoch,
            modseq,
            entries,
        })
    }
}

/// One change in a `CHANGES` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A message arrived, or its flags or folder changed (kind 1).
    Message(Summary),
    /// A message was removed (kind 2).
    Removed {
        /// Its per-user id.
        uid: u64,
        /// The modseq of the removal.
        modseq: u64,
    },
}

impl Change {
    /// The modseq of this change.
    pub fn modseq(&self) -> u64 {
        match self {
            Change::Message(s) => s.modseq,
            Change::Removed { modseq, .. } => *modseq,
        }
    }
}

/// The body of SUCCESS after `CHANGES since limit`: every message that
/// arrived or changed, and every removal, with a modseq above `since`, in
/// ascending modseq order, at most `limit` of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeSet {
    /// The mailbox's epoch (see [`ListingPage::epoch`]).
    pub epoch: u64,
    /// The mailbox's modification sequence when the changes were read.
    pub modseq: u64,
    /// Whether more changes follow the last one of this reply.
    pub more: bool,
    /// The changes, lowest modseq first.
    pub changes: Vec<Change>,
}

impl ChangeSet {
    /// The modseq a client has seen everything up to after applying this
    /// reply: the last change's, or the mailbox's when nothing more follows.
    pub fn seen_up_to(&self) -> u64 {
        if self.more {
            self.changes.last().map_or(0, Change::modseq)
        } else {
            self.modseq
        }
    }

    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(21 + self.changes.len() * 120);
        put_u64(&mut out, self.epoch);
        put_u64(&mut out, self.modseq);
        out.push(u8::from(self.more));
        put_u32(
            &mut out,
            u32::try_from(self.changes.len()).expect("a page fits u32"),
        );
        for c in &self.changes {
            match c {
                Change::Message(s) => {
                    out.push(1);
                    s.encode(&mut out);
                }
                Change::Removed { uid, modseq } => {
                    out.push(2);
                    put_u64(&mut out, *uid);
                    put_u64(&mut out, *modseq);
                }
            }
        }
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<ChangeSet, PayloadError> {
        let mut r = Reader::new(body);
        let epoch = r.u64("epoch")?;
        let modseq = r.u64("modseq")?;
        let more = match r.u8("more")? {
            0 => false,
            1 => true,
            v => {
                return Err(WireError::Invalid {
                    what: "more",
                    reason: format!("{v} is neither 0 nor 1"),
                }
                .into());
            }
        };
        let n = r.u32("count")? as usize;
        check_count(n, &r, 17)?;
        let mut changes = Vec::with_capacity(n);
        for _ in 0..n {
            changes.push(match r.u8("change kind")? {
                1 => Change::Message(Summary::read(&mut r)?),
                2 => Change::Removed {
                    uid: r.u64("uid")?,
                    modseq: r.u64("modseq")?,
                },
                k => {
                    return Err(WireError::Invalid {
                        what: "change kind",
                        reason: format!("{k} is neither 1 nor 2"),
                    }
                    .into());
                }
            });
        }
        r.finish("change set")?;
        Ok(ChangeSet {
            epoch,
            modseq,
            more,
            changes,
        })
    }
}

/// The body of SUCCESS after `FLAGS`: the mailbox's modseq after the change
/// and how many messages changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagsResult {
    /// The mailbox's modification sequence afterwards.
    pub modseq: u64,
    /// How many of the named messages exist and changed.
    pub changed: u32,
}

impl FlagsResult {
    /// The reply body.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(12);
        put_u64(&mut out, self.modseq);
        put_u32(&mut out, self.changed);
        out
    }

    /// Parses a reply body.
    pub fn decode(body: &[u8]) -> Result<FlagsResult, PayloadError> {
        let mut r = Reader::new(body);
        let modseq = r.u64("modseq")?;
        let changed = r.u32("changed")?;
        r.finish("flags result")?;
        Ok(FlagsResult { modseq, changed })
    }
}

/// Encodes the message ids of a `FLAGS` command (its blob).
pub fn encode_ids(ids: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(ids.len() * 8);
    for id in ids {
        put_u64(&mut out, *id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(uid: u64) -> Summary {
        Summary {
            uid,
            modseq: uid + 10,
            flags: SEEN | FLAGGED,
            folder: Folder::inbox(),
            size: 1234,
            received_at: 99,
            hash: [4; 32],
            version: 1,
            attachment_count: 2,
            source_account: Some(Account::parse("alice").unwrap()),
            source_domain: Domain::parse("a.test").unwrap(),
        }
    }

    #[test]
    fn pages_and_change_sets_round_trip() {
        let mut notice = summary(2);
        notice.source_account = None;
        notice.folder = Folder::parse("Reisen 2026 ✈").unwrap();
        let page = ListingPage {
            epoch: 7,
            modseq: 12,
            entries: vec![notice.clone(), summary(1)],
        };
        assert_eq!(ListingPage::decode(&page.to_bytes()).unwrap(), page);
        let set = ChangeSet {
            epoch: 7,
            modseq: 30,
            more: true,
            changes: vec![
                Change::Message(summary(1)),
                Change::Removed { uid: 2, modseq: 12 },
            ],
        };
        assert_eq!(ChangeSet::decode(&set.to_bytes()).unwrap(), set);
        assert_eq!(set.seen_up_to(), 12);
        let done = ChangeSet {
            more: false,
            ..set.clone()
        };
        assert_eq!(done.seen_up_to(), 30);
        let r = FlagsResult {
            modseq: 5,
            changed: 2,
        };
        assert_eq!(FlagsResult::decode(&r.to_bytes()).unwrap(), r);
    }

    #[test]
    fn counts_are_bounded_before_allocation() {
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&1001u32.to_be_bytes());
        assert!(matches!(
            ListingPage::decode(&b),
            Err(PayloadError::Wire(WireError::TooLarge { .. }))
        ));
        let mut b = vec![0u8; 16];
        b.extend_from_slice(&900u32.to_be_bytes());
        assert!(matches!(
            ListingPage::decode(&b),
            Err(PayloadError::Wire(WireError::Truncated { .. }))
        ));
        let mut b = vec![0u8; 16];
        b.push(2);
        assert!(ChangeSet::decode(&b).is_err());
    }

    #[test]
    fn folder_names_are_checked() {
        for ok in ["Inbox", "Sent", "a", "Reisen 2026", &"x".repeat(64)] {
            assert!(Folder::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", " Inbox", "Inbox ", "a\nb", "\u{7f}", &"x".repeat(65)] {
            assert!(Folder::parse(bad).is_err(), "{bad:?}");
        }
        assert_eq!(flag_names(SEEN | DELETED), ["seen", "deleted"]);
    }
}
