//! The local store: one SQLite file in the home directory (`mail.db`, mode
//! 0600) that keeps the user's mail, the sync position, the outbox and the
//! drafts, so that `inbox`, `read` and `thread` work offline and nothing a
//! person wrote is lost.
//!
//! # Tables
//!
//! ```text
//! meta        key → value: account, epoch, modseq (sync position),
//!             listing progress
//! messages    one row per message of the server mailbox, by per-user id
//!             (PROTOCOL.md §13.1): the summary (hash, modseq, flags, folder,
//!             size, received_at, envelope source and destination), and
//!             what opening the fetched bytes gave once:
//!             the verdict and the decrypted subject, date, reply-to, cc,
//!             text and attachment names
//! raw_messages  the sealed bytes of each message as fetched (apart, so
//!             that listing the messages never reads them)
//! parts       the decrypted attachments of each message
//! pending_flags  flag changes made offline, pushed at the next sync
//! outbox      messages composed and not yet accepted by the own server:
//!             the draft as written, then (once sealed) its copies
//! outbox_copies  the sealed bytes of each copy (one per recipient and the
//!             Sent copy), sealed once, sent as they are until accepted
//! drafts      unfinished messages
//! pending_moves  folder changes made offline, pushed at the next sync
//! contacts    everyone written to or heard from: display name, alias,
//!             the key first seen and the current one, whether the user
//!             verified it (safety number), when it changed
//! messages_fts   the full-text index (SQLite FTS5, external content on
//!             `messages`): sender, recipients, subject, text and
//!             attachment names, kept by triggers
//! ```
//!
//! Schema version 2 (content version 2, issue 14) added to `messages` the
//! sender's name, the To and Bcc lists (`cc`, `to_list` and `bcc` are JSON
//! lists of `Name <addr>`), the message id, In-Reply-To, References, the
//! thread id, the parsed date (`date_ts`) and the two search columns; and
//! the tables `pending_moves`, `contacts` and `messages_fts`. A store of
//! version 1 is migrated when it is opened (its messages are content
//! version 1: threads by subject, as before).
//!
//! Decrypted mail sits in this file next to `identity.key`: anyone who can
//! read the home directory can read both, and the key alone would decrypt
//! every sealed copy anyway. The file is created with mode 0600 and the
//! home with 0700.

use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::failure::{Error, Result};

/// Name of the local store in the home directory.
pub const STORE_FILE: &str = "mail.db";

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS messages (
    uid              INTEGER PRIMARY KEY,
    hash             BLOB NOT NULL,
    modseq           INTEGER NOT NULL,
    flags            INTEGER NOT NULL,
    folder           TEXT NOT NULL,
    size             INTEGER NOT NULL,
    received_at      INTEGER NOT NULL,
    version          INTEGER NOT NULL,
    attachment_count INTEGER NOT NULL,
    source           TEXT NOT NULL,
    destination      TEXT,
    fetched          INTEGER NOT NULL DEFAULT 0,
    verdict          TEXT,
    verdict_detail   TEXT,
    subject          TEXT,
    date             TEXT,
    reply_to         TEXT,
    cc               TEXT,
    body             TEXT,
    attachment_names TEXT,
    content_version  INTEGER,
    from_name        TEXT,
    to_list          TEXT,
    bcc              TEXT,
    message_id       TEXT,
    in_reply_to      TEXT,
    refs             TEXT,
    thread_id        TEXT,
    date_ts          INTEGER,
    search_from      TEXT,
    search_to        TEXT
);
CREATE INDEX IF NOT EXISTS messages_folder ON messages(folder, uid);
CREATE INDEX IF NOT EXISTS messages_unfetched ON messages(uid) WHERE fetched = 0;
CREATE INDEX IF NOT EXISTS messages_folder_flags ON messages(folder, flags);
CREATE TABLE IF NOT EXISTS raw_messages (
    uid   INTEGER PRIMARY KEY REFERENCES messages(uid) ON DELETE CASCADE,
    bytes BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS parts (
    uid  INTEGER NOT NULL REFERENCES messages(uid) ON DELETE CASCADE,
    idx  INTEGER NOT NULL,
    name TEXT NOT NULL,
    data BLOB NOT NULL,
    media_type TEXT,
    PRIMARY KEY (uid, idx)
);
CREATE TABLE IF NOT EXISTS pending_flags (
    uid   INTEGER PRIMARY KEY,
    set_bits   INTEGER NOT NULL,
    clear_bits INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at      INTEGER NOT NULL,
    draft           TEXT NOT NULL,
    sealed          INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT
);
CREATE TABLE IF NOT EXISTS outbox_copies (
    outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
    idx       INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    recipient TEXT NOT NULL,
    hash      BLOB NOT NULL,
    bytes     BLOB NOT NULL,
    done      INTEGER NOT NULL DEFAULT 0,
    receipt   BLOB,
    PRIMARY KEY (outbox_id, idx)
);
CREATE TABLE IF NOT EXISTS drafts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    updated_at INTEGER NOT NULL,
    draft      TEXT NOT NULL,
    note       TEXT
);
";

/// Columns added by schema version 2 (added to a version 1 store).
const V2_COLUMNS: &[(&str, &str, &str)] = &[
    ("messages", "content_version", "INTEGER"),
    ("messages", "from_name", "TEXT"),
    ("messages", "to_list", "TEXT"),
    ("messages", "bcc", "TEXT"),
    ("messages", "message_id", "TEXT"),
    ("messages", "in_reply_to", "TEXT"),
    ("messages", "refs", "TEXT"),
    ("messages", "thread_id", "TEXT"),
    ("messages", "date_ts", "INTEGER"),
    ("messages", "search_from", "TEXT"),
    ("messages", "search_to", "TEXT"),
    ("parts", "media_type", "TEXT"),
];

/// Schema version 2's tables, indexes and triggers (after its columns).
const SCHEMA_V2: &str = "
CREATE INDEX IF NOT EXISTS messages_thread ON messages(thread_id, uid);
CREATE INDEX IF NOT EXISTS messages_folder_thread ON messages(folder, thread_id, uid, flags);
CREATE INDEX IF NOT EXISTS messages_message_id ON messages(message_id);
CREATE INDEX IF NOT EXISTS messages_date ON messages(date_ts, uid) WHERE fetched = 1;
CREATE TABLE IF NOT EXISTS pending_moves (
    uid    INTEGER PRIMARY KEY,
    folder TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS contacts (
    address        TEXT PRIMARY KEY NOT NULL,
    name           TEXT NOT NULL DEFAULT '',
    alias          TEXT UNIQUE,
    key            BLOB,
    first_seen     INTEGER NOT NULL,
    key_seen       INTEGER,
    verified       INTEGER NOT NULL DEFAULT 0,
    previous_key   BLOB,
    key_changed_at INTEGER,
    last_used      INTEGER NOT NULL DEFAULT 0
);
CREATE VIRTUAL TABLE IF NOT EXISTS messages_fts USING fts5(
    search_from, search_to, subject, body, attachment_names,
    content = 'messages', content_rowid = 'uid',
    tokenize = 'unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS messages_fts_insert AFTER INSERT ON messages
WHEN new.fetched = 1 BEGIN
    INSERT INTO messages_fts (rowid, search_from, search_to, subject, body, attachment_names)
    VALUES (new.uid, new.search_from, new.search_to, new.subject, new.body, new.attachment_names);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_delete AFTER DELETE ON messages
WHEN old.fetched = 1 BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_from, search_to, subject, body, attachment_names)
    VALUES ('delete', old.uid, old.search_from, old.search_to, old.subject, old.body, old.attachment_names);
END;
CREATE TRIGGER IF NOT EXISTS messages_fts_update
AFTER UPDATE OF fetched, search_from, search_to, subject, body, attachment_names ON messages
BEGIN
    INSERT INTO messages_fts (messages_fts, rowid, search_from, search_to, subject, body, attachment_names)
    SELECT 'delete', old.uid, old.search_from, old.search_to, old.subject, old.body, old.attachment_names
    WHERE old.fetched = 1;
    INSERT INTO messages_fts (rowid, search_from, search_to, subject, body, attachment_names)
    SELECT new.uid, new.search_from, new.search_to, new.subject, new.body, new.attachment_names
    WHERE new.fetched = 1;
END;
";

/// A message as the user wrote it (before sealing), kept in the outbox and
/// the drafts. Attachments are kept by value: a file that moves or changes
/// after `send` does not change what is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Composed {
    /// To recipients (addresses as written, validated when sent).
    pub to: Vec<String>,
    /// Cc recipients.
    pub cc: Vec<String>,
    /// The subject.
    pub subject: String,
    /// The text.
    pub text: String,
    /// Attachments: name and bytes (hex in the JSON form).
    #[serde(default)]
    pub attachments: Vec<StoredAttachment>,
    /// Send as plaintext (crypto system 0).
    #[serde(default)]
    pub plaintext: bool,
    /// Recipients whose domain may be reached by SMTP, not end-to-end
    /// encrypted, if it has no CMTP service (`--allow-smtp`, or the
    /// contact's setting): the sender's consent (PROTOCOL.md §19.3).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub smtp_allowed: Vec<String>,
    /// Bcc recipients: each gets a copy that names only them; no other
    /// copy names them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bcc: Vec<String>,
    /// The sender's display name (from `name` in config.toml).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub from_name: String,
    /// The message id this one answers (a reply).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub in_reply_to: String,
    /// The thread's message ids (a reply).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub references: Vec<String>,
    /// The local id of the message this one answers, flagged answered once
    /// this one is sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answers: Option<u64>,
}

/// An attachment kept in the outbox or a draft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    /// The file name.
    pub name: String,
    /// The media type (`application/pdf`); empty: guessed from the name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub media_type: String,
    /// The bytes, hex-encoded in the stored JSON.
    #[serde(with = "hex_bytes")]
    pub data: Vec<u8>,
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

/// A message of the local store (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Per-user id on the server.
    pub uid: u64,
    /// The message hash.
    pub hash: [u8; 32],
    /// Flag bits.
    pub flags: u32,
    /// The folder.
    pub folder: String,
    /// Size as stored by the server.
    pub size: u64,
    /// When the server accepted it.
    pub received_at: u64,
    /// Envelope source (`user@domain`, or `@domain` for a server).
    pub source: String,
    /// Envelope destination, once fetched.
    pub destination: Option<String>,
    /// Verdict word (`verified`, `not-verified`, `undecryptable`), once fetched.
    pub verdict: Option<String>,
    /// Why not verified.
    pub verdict_detail: Option<String>,
    /// Decrypted subject.
    pub subject: Option<String>,
    /// Decrypted date.
    pub date: Option<String>,
    /// Decrypted reply-to.
    pub reply_to: Option<String>,
    /// Decrypted Cc list.
    pub cc: Vec<String>,
    /// Decrypted text.
    pub body: Option<String>,
    /// Attachment names.
    pub attachment_names: Vec<String>,
    /// Number of attachments (from the envelope).
    pub attachment_count: u32,
    /// The content version (1 or 2), once fetched and decrypted.
    pub content_version: Option<u8>,
    /// The sender's display name (content version 2).
    pub from_name: Option<String>,
    /// The To list (`Name <addr>`; content version 2).
    pub to: Vec<String>,
    /// The Bcc list as this copy has it (content version 2): only the
    /// user in a copy they got as Bcc, everyone in their own Sent copy.
    pub bcc: Vec<String>,
    /// The message id (content version 2).
    pub message_id: Option<String>,
    /// The message id this one answers.
    pub in_reply_to: Option<String>,
    /// The thread's message ids.
    pub references: Vec<String>,
    /// The thread this message belongs to (see [`thread_id`]).
    pub thread_id: Option<String>,
    /// The content's date as unix seconds (else when it was received).
    pub date_ts: Option<u64>,
}

/// What opening a fetched message gave, to be stored with it.
#[derive(Debug, Clone, Default)]
pub struct Opened {
    /// Envelope destination.
    pub destination: Option<String>,
    /// Verdict word.
    pub verdict: String,
    /// Why not verified.
    pub verdict_detail: Option<String>,
    /// Decrypted fields (`None` when undecryptable).
    pub subject: Option<String>,
    /// Date.
    pub date: Option<String>,
    /// Reply-to.
    pub reply_to: Option<String>,
    /// Cc list.
    pub cc: Vec<String>,
    /// Text.
    pub body: Option<String>,
    /// Attachments (name, bytes).
    pub attachments: Vec<(String, Vec<u8>)>,
    /// Attachments' media types, in order (empty strings in version 1).
    pub media_types: Vec<String>,
    /// Content version (1 or 2) when decrypted.
    pub content_version: Option<u8>,
    /// The sender's display name.
    pub from_name: Option<String>,
    /// To list.
    pub to: Vec<String>,
    /// Bcc list as this copy has it.
    pub bcc: Vec<String>,
    /// Message id.
    pub message_id: Option<String>,
    /// In-Reply-To.
    pub in_reply_to: Option<String>,
    /// References.
    pub references: Vec<String>,
    /// The parsed date (unix seconds).
    pub date_ts: Option<u64>,
}

/// The folders every mailbox has (PROTOCOL.md §13.1), in the order shown.
pub const WELL_KNOWN_FOLDERS: &[&str] = &["Inbox", "Sent", "Drafts", "Archive", "Trash"];

/// A thread of a folder: its newest message there, how many of its
/// messages are in the folder and how many of those are unread.
#[derive(Debug, Clone)]
pub struct ThreadSummary {
    /// The newest message of the thread in the folder.
    pub newest: StoredMessage,
    /// Messages of the thread in the folder.
    pub count: u64,
    /// Of those, unread.
    pub unread: u64,
}

/// The sync position (PROTOCOL.md §13.3, §13.4).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncState {
    /// The server mailbox's epoch (0: never synced).
    pub epoch: u64,
    /// Everything up to this modseq is in the store (valid once the listing
    /// is done).
    pub modseq: u64,
    /// Whether the first full listing finished.
    pub listed: bool,
    /// Listing progress: the lowest id listed so far (0: not started).
    pub listing_before: u64,
    /// The modseq the listing started at.
    pub listing_modseq: u64,
}

/// An outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxEntry {
    /// Its id.
    pub id: u64,
    /// When it was composed.
    pub created_at: u64,
    /// The message as written.
    pub draft: Composed,
    /// Whether its copies are sealed (and stored).
    pub sealed: bool,
    /// Failed attempts.
    pub attempts: u32,
    /// When the next automatic attempt is due.
    pub next_attempt_at: u64,
    /// The last error.
    pub last_error: Option<String>,
}

/// A sealed copy of an outbox entry.
#[derive(Debug, Clone)]
pub struct OutboxCopy {
    /// Position in the entry.
    pub idx: u32,
    /// `copy` (to a recipient) or `sent` (the Sent copy, sealed to the sender).
    pub kind: String,
    /// The recipient (for the Sent copy: the envelope's destination).
    pub recipient: String,
    /// The message hash.
    pub hash: [u8; 32],
    /// The encoded message, exactly as it is sent.
    pub bytes: Vec<u8>,
    /// Accepted by the own server.
    pub done: bool,
}

/// A draft.
#[derive(Debug, Clone)]
pub struct Draft {
    /// Its id.
    pub id: u64,
    /// When it was last saved.
    pub updated_at: u64,
    /// The message.
    pub draft: Composed,
    /// Why it is a draft, if it was not saved as one (e.g. refused as too big).
    pub note: Option<String>,
}

/// The open local store.
#[derive(Debug)]
pub struct LocalStore {
    conn: Connection,
    path: PathBuf,
}

fn db<T>(path: &Path, r: rusqlite::Result<T>) -> Result<T> {
    r.map_err(|e| Error::BadFile {
        path: path.to_owned(),
        detail: e.to_string(),
    })
}

pub(crate) fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

pub(crate) fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn json_list(s: Option<String>) -> Vec<String> {
    s.and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or_default()
}

pub(crate) const MESSAGE_COLUMNS: &str = "uid, hash, flags, folder, size, received_at, source, destination, verdict, verdict_detail, subject, date, reply_to, cc, body, attachment_names, attachment_count, content_version, from_name, to_list, bcc, message_id, in_reply_to, refs, thread_id, date_ts";

pub(crate) fn message_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredMessage> {
    let hash: Vec<u8> = r.get(1)?;
    let mut h = [0u8; 32];
    if hash.len() == 32 {
        h.copy_from_slice(&hash);
    }
    Ok(StoredMessage {
        uid: u(r.get(0)?),
        hash: h,
        flags: r.get(2)?,
        folder: r.get(3)?,
        size: u(r.get(4)?),
        received_at: u(r.get(5)?),
        source: r.get(6)?,
        destination: r.get(7)?,
        verdict: r.get(8)?,
        verdict_detail: r.get(9)?,
        subject: r.get(10)?,
        date: r.get(11)?,
        reply_to: r.get(12)?,
        cc: json_list(r.get(13)?),
        body: r.get(14)?,
        attachment_names: json_list(r.get(15)?),
        attachment_count: r.get(16)?,
        content_version: r.get(17)?,
        from_name: r.get(18)?,
        to: json_list(r.get(19)?),
        bcc: json_list(r.get(20)?),
        message_id: r.get(21)?,
        in_reply_to: r.get(22)?,
        references: json_list(r.get(23)?),
        thread_id: r.get(24)?,
        date_ts: r.get::<_, Option<i64>>(25)?.map(u),
    })
}

impl LocalStore {
    /// Opens (creating with mode 0600) the store at `path` for `account`;
    /// a store that belonged to another account is emptied first.
    pub fn open(path: &Path, account: &str) -> Result<LocalStore> {
        if let Some(dir) = path.parent() {
            crate::home::create_private_dir(dir)?;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Error::file(path, e)),
        }
        let conn = db(path, Connection::open(path))?;
        db(
            path,
            conn.execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;",
            ),
        )?;
        db(path, conn.busy_timeout(std::time::Duration::from_secs(10)))?;
        db(path, conn.execute_batch(SCHEMA))?;
        let mut store = LocalStore {
            conn,
            path: path.to_owned(),
        };
        let version = store.meta("schema")?;
        store.migrate(version.as_deref())?;
        match store.meta("account")? {
            Some(a) if a == account => {}
            Some(_) => {
                // Another account's mail: not this one's. The outbox and
                // drafts stay (they are what a person wrote).
                store.reset_mail()?;
                store.set_meta("account", account)?;
            }
            None => store.set_meta("account", account)?,
        }
        Ok(store)
    }

    fn has_column(&self, table: &str, column: &str) -> Result<bool> {
        let mut st = self.db(self.conn.prepare(&format!("PRAGMA table_info({table})")))?;
        let names = self.db(st.query_map([], |r| r.get::<_, String>(1)))?;
        for n in names {
            if self.db(n)? == column {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Brings a store of schema `version` (`None`: new) to the current one.
    fn migrate(&mut self, version: Option<&str>) -> Result<()> {
        if let Some(v) = version
            && v.parse::<i64>().map_or(true, |v| v > SCHEMA_VERSION)
        {
            return Err(Error::BadFile {
                path: self.path.clone(),
                detail: format!(
                    "the local store has schema version {v}, newer than this cmtp knows ({SCHEMA_VERSION})"
                ),
            });
        }
        let from_v1 = version == Some("1");
        self.transaction(|s| {
            for (table, column, ty) in V2_COLUMNS {
                if !s.has_column(table, column)? {
                    s.db(s.conn.execute_batch(&format!(
                        "ALTER TABLE {table} ADD COLUMN {column} {ty}"
                    )))?;
                }
            }
            if from_v1 {
                s.backfill_v1()?;
            }
            s.db(s.conn.execute_batch(SCHEMA_V2))?;
            if from_v1 {
                s.db(s.conn.execute_batch(
                    "INSERT INTO messages_fts (messages_fts) VALUES ('delete-all');
                     INSERT INTO messages_fts (rowid, search_from, search_to, subject, body, attachment_names)
                     SELECT uid, search_from, search_to, subject, body, attachment_names
                     FROM messages WHERE fetched = 1;",
                ))?;
            }
            s.set_meta("schema", &SCHEMA_VERSION.to_string())
        })
    }

    /// Schema 1 → 2: the messages fetched before are content version 1;
    /// they get their thread (by subject), date and search columns.
    fn backfill_v1(&self) -> Result<()> {
        struct V1Row {
            uid: i64,
            fetched: bool,
            source: String,
            destination: Option<String>,
            cc: Option<String>,
            subject: Option<String>,
            date: Option<String>,
            received: i64,
        }
        let rows: Vec<V1Row> = {
            let mut st = self.db(self.conn.prepare(
                "SELECT uid, fetched, source, destination, cc, subject, date, received_at FROM messages",
            ))?;
            let rows = self.db(st.query_map([], |r| {
                Ok(V1Row {
                    uid: r.get(0)?,
                    fetched: r.get(1)?,
                    source: r.get(2)?,
                    destination: r.get(3)?,
                    cc: r.get(4)?,
                    subject: r.get(5)?,
                    date: r.get(6)?,
                    received: r.get(7)?,
                })
            }))?;
            self.db(rows.collect())?
        };
        for V1Row {
            uid,
            fetched,
            source,
            destination,
            cc,
            subject,
            date,
            received,
        } in rows
        {
            let thread = match (&subject, fetched) {
                (Some(sub), true) => format!("subject:{}", thread_subject(sub)),
                _ => format!("uid:{uid}"),
            };
            let date_ts = date
                .as_deref()
                .and_then(cmtp_client::clock::parse_rfc3339)
                .map_or(received, i);
            let to = destination.clone().into_iter().collect::<Vec<_>>();
            let search_to = search_text(&to, &json_list(cc), &[]);
            self.db(self.conn.execute(
                "UPDATE messages SET thread_id = ?2, date_ts = ?3, search_from = ?4, search_to = ?5,
                        content_version = CASE WHEN subject IS NULL THEN NULL ELSE 1 END
                 WHERE uid = ?1",
                params![uid, thread, date_ts, source, search_to],
            ))?;
        }
        Ok(())
    }

    /// The SQLite connection (for the other modules of this crate).
    pub(crate) fn conn(&self) -> &Connection {
        &self.conn
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        db(&self.path, r)
    }

    /// A value of `meta`.
    pub fn meta(&self, key: &str) -> Result<Option<String>> {
        self.db(self
            .conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional())
    }

    /// Sets a value of `meta`.
    pub fn set_meta(&self, key: &str, value: &str) -> Result<()> {
        self.db(self.conn.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            params![key, value],
        ))?;
        Ok(())
    }

    fn meta_u64(&self, key: &str) -> Result<u64> {
        Ok(self
            .meta(key)?
            .and_then(|v| v.parse().ok())
            .unwrap_or_default())
    }

    /// The sync position.
    pub fn sync_state(&self) -> Result<SyncState> {
        Ok(SyncState {
            epoch: self.meta_u64("epoch")?,
            modseq: self.meta_u64("modseq")?,
            listed: self.meta("listed")?.as_deref() == Some("1"),
            listing_before: self.meta_u64("listing_before")?,
            listing_modseq: self.meta_u64("listing_modseq")?,
        })
    }

    /// Saves the sync position.
    pub fn set_sync_state(&self, s: &SyncState) -> Result<()> {
        self.set_meta("epoch", &s.epoch.to_string())?;
        self.set_meta("modseq", &s.modseq.to_string())?;
        self.set_meta("listed", if s.listed { "1" } else { "0" })?;
        self.set_meta("listing_before", &s.listing_before.to_string())?;
        self.set_meta("listing_modseq", &s.listing_modseq.to_string())
    }

    /// Forgets every synced message and the sync position (a new epoch, or
    /// another account).
    pub fn reset_mail(&self) -> Result<()> {
        self.db(self.conn.execute_batch(
            "DELETE FROM parts; DELETE FROM raw_messages; DELETE FROM messages; DELETE FROM pending_flags;
             DELETE FROM pending_moves;
             DELETE FROM meta WHERE key IN ('epoch', 'modseq', 'listed', 'listing_before', 'listing_modseq');",
        ))
    }

    /// Runs `f` in one transaction.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&LocalStore) -> Result<T>) -> Result<T> {
        self.db(self.conn.execute_batch("BEGIN IMMEDIATE"))?;
        match f(self) {
            Ok(v) => {
                self.db(self.conn.execute_batch("COMMIT"))?;
                Ok(v)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Inserts or updates a message's summary. A known id with another hash
    /// (the server's database was restored) is replaced and fetched again.
    /// Returns whether its bytes still have to be fetched.
    pub fn upsert_summary(&self, s: &cmtp_proto::payload::mailbox::Summary) -> Result<bool> {
        let source = match &s.source_account {
            Some(a) => format!("{a}@{}", s.source_domain),
            None => format!("@{}", s.source_domain),
        };
        let existing: Option<(Vec<u8>, bool)> = self.db(self
            .conn
            .prepare_cached("SELECT hash, fetched FROM messages WHERE uid = ?1")
            .and_then(|mut st| {
                st.query_row([i(s.uid)], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
            }))?;
        match existing {
            Some((hash, fetched)) if hash == s.hash => {
                self.db(self
                    .conn
                    .prepare_cached(
                        "UPDATE messages SET modseq = ?2,
                             folder = COALESCE((SELECT folder FROM pending_moves WHERE uid = ?1), ?4),
                             flags = (?3 | COALESCE((SELECT set_bits FROM pending_flags WHERE uid = ?1), 0))
                                     & ~COALESCE((SELECT clear_bits FROM pending_flags WHERE uid = ?1), 0)
                         WHERE uid = ?1",
                    )
                    .and_then(|mut st| {
                        st.execute(params![i(s.uid), i(s.modseq), s.flags, s.folder.as_str()])
                    }))?;
                // A flag change or move made here and not yet pushed wins
                // (above).
                Ok(!fetched)
            }
            other => {
                if other.is_some() {
                    self.remove(s.uid)?;
                }
                self.db(self
                    .conn
                    .prepare_cached(
                        "INSERT INTO messages (uid, hash, modseq, flags, folder, size, received_at,
                                                   version, attachment_count, source, thread_id, date_ts)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 'uid:' || ?1, ?7)",
                    )
                    .and_then(|mut st| {
                        st.execute(params![
                            i(s.uid),
                            &s.hash[..],
                            i(s.modseq),
                            s.flags,
                            s.folder.as_str(),
                            i(s.size),
                            i(s.received_at),
                            s.version,
                            s.attachment_count,
                            source
                        ])
                    }))?;
                Ok(true)
            }
        }
    }

    /// Removes a message (it was deleted on the server).
    pub fn remove(&self, uid: u64) -> Result<()> {
        self.db(self
            .conn
            .execute("DELETE FROM parts WHERE uid = ?1", [i(uid)]))?;
        self.db(self
            .conn
            .execute("DELETE FROM messages WHERE uid = ?1", [i(uid)]))?;
        self.db(self
            .conn
            .execute("DELETE FROM pending_flags WHERE uid = ?1", [i(uid)]))?;
        self.db(self
            .conn
            .execute("DELETE FROM pending_moves WHERE uid = ?1", [i(uid)]))?;
        Ok(())
    }

    /// Ids whose bytes are not fetched yet, newest first.
    pub fn unfetched(&self) -> Result<Vec<u64>> {
        let mut st = self.db(self
            .conn
            .prepare("SELECT uid FROM messages WHERE fetched = 0 ORDER BY uid DESC"))?;
        let rows = self.db(st.query_map([], |r| r.get::<_, i64>(0)))?;
        Ok(self
            .db(rows.collect::<rusqlite::Result<Vec<_>>>())?
            .into_iter()
            .map(u)
            .collect())
    }

    /// Stores the fetched bytes of a message and what opening them gave.
    pub fn store_fetched(&self, uid: u64, raw: &[u8], o: &Opened) -> Result<()> {
        let names: Vec<&str> = o.attachments.iter().map(|(n, _)| n.as_str()).collect();
        let list = |v: &[String]| serde_json::to_string(v).expect("a list serialises");
        let source: Option<String> = self.db(self
            .conn
            .query_row(
                "SELECT source FROM messages WHERE uid = ?1",
                [i(uid)],
                |r| r.get(0),
            )
            .optional())?;
        let Some(source) = source else {
            return Ok(());
        };
        let search_from = match &o.from_name {
            Some(n) if !n.is_empty() => format!("{n} <{source}>"),
            _ => source,
        };
        let mut to = o.to.clone();
        if to.is_empty()
            && let Some(d) = &o.destination
        {
            to.push(d.clone());
        }
        let received: Option<i64> = self.db(self
            .conn
            .query_row(
                "SELECT received_at FROM messages WHERE uid = ?1",
                [i(uid)],
                |r| r.get(0),
            )
            .optional())?;
        let date_ts = o.date_ts.map(i).or(received);
        self.db(self
            .conn
            .prepare_cached(
                "UPDATE messages SET fetched = 1, destination = ?2, verdict = ?3, verdict_detail = ?4,
                    subject = ?5, date = ?6, reply_to = ?7, cc = ?8, body = ?9,
                    attachment_names = ?10, content_version = ?11, from_name = ?12, to_list = ?13,
                    bcc = ?14, message_id = ?15, in_reply_to = ?16, refs = ?17, thread_id = ?18,
                    date_ts = ?19, search_from = ?20, search_to = ?21
                 WHERE uid = ?1",
            )
            .and_then(|mut st| {
                st.execute(params![
                    i(uid),
                    o.destination,
                    o.verdict,
                    o.verdict_detail,
                    o.subject,
                    o.date,
                    o.reply_to,
                    list(&o.cc),
                    o.body,
                    serde_json::to_string(&names).expect("a list serialises"),
                    o.content_version,
                    o.from_name,
                    list(&o.to),
                    list(&o.bcc),
                    o.message_id,
                    o.in_reply_to,
                    list(&o.references),
                    thread_id(o, uid),
                    date_ts,
                    search_from,
                    search_text(&to, &o.cc, &o.bcc),
                ])
            }))?;
        let _ = raw;
        self.db(self
            .conn
            .execute("DELETE FROM parts WHERE uid = ?1", [i(uid)]))?;
        for (idx, (name, data)) in o.attachments.iter().enumerate() {
            let media_type = o.media_types.get(idx).filter(|t| !t.is_empty());
            self.db(self.conn.execute(
                "INSERT INTO parts (uid, idx, name, data, media_type) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![i(uid), idx as i64, name, data, media_type],
            ))?;
        }
        Ok(())
    }

    /// One message.
    pub fn message(&self, uid: u64) -> Result<Option<StoredMessage>> {
        self.db(self
            .conn
            .query_row(
                &format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE uid = ?1"),
                [i(uid)],
                message_row,
            )
            .optional())
    }

    /// The sealed bytes of a message, if fetched.
    pub fn raw(&self, uid: u64) -> Result<Option<Vec<u8>>> {
        Ok(self
            .db(self
                .conn
                .query_row(
                    "SELECT bytes FROM raw_messages WHERE uid = ?1",
                    [i(uid)],
                    |r| r.get::<_, Option<Vec<u8>>>(0),
                )
                .optional())?
            .flatten())
    }

    /// The decrypted attachments of a message.
    pub fn attachments(&self, uid: u64) -> Result<Vec<(String, Vec<u8>)>> {
        let mut st = self.db(self
            .conn
            .prepare("SELECT name, data FROM parts WHERE uid = ?1 ORDER BY idx"))?;
        let rows = self.db(st.query_map([i(uid)], |r| Ok((r.get(0)?, r.get(1)?))))?;
        self.db(rows.collect())
    }

    /// Messages of `folder`, newest first, `limit` of them after skipping
    /// `offset` (`limit` 0: all).
    pub fn list(&self, folder: &str, offset: u64, limit: u64) -> Result<Vec<StoredMessage>> {
        let limit = if limit == 0 { i64::MAX } else { i(limit) };
        let mut st = self.db(self.conn.prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE folder = ?1
             ORDER BY uid DESC LIMIT ?2 OFFSET ?3"
        )))?;
        let rows = self.db(st.query_map(params![folder, limit, i(offset)], message_row))?;
        self.db(rows.collect())
    }

    /// How many messages `folder` holds, and how many of them are unread.
    pub fn count(&self, folder: &str) -> Result<(u64, u64)> {
        self.db(self.conn.query_row(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN flags & 1 = 0 THEN 1 ELSE 0 END), 0)
             FROM messages WHERE folder = ?1",
            [folder],
            |r| Ok((u(r.get(0)?), u(r.get(1)?))),
        ))
    }

    /// Every message whose subject, stripped of `Re:`/`Fwd:` prefixes,
    /// equals `subject`, oldest first (a thread, for content without
    /// thread headers).
    pub fn by_subject(&self, subject: &str) -> Result<Vec<StoredMessage>> {
        let mut st = self.db(self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE subject IS NOT NULL ORDER BY received_at, uid"
        )))?;
        let rows = self.db(st.query_map([], message_row))?;
        let all: Vec<StoredMessage> = self.db(rows.collect())?;
        let want = thread_subject(subject);
        Ok(all
            .into_iter()
            .filter(|m| m.subject.as_deref().map(thread_subject).as_deref() == Some(&want))
            .collect())
    }

    /// The decrypted attachments of a message with their media types.
    pub fn parts(&self, uid: u64) -> Result<Vec<cmtp_proto::content::Attachment>> {
        let mut st = self.db(self.conn.prepare(
            "SELECT name, data, COALESCE(media_type, '') FROM parts WHERE uid = ?1 ORDER BY idx",
        ))?;
        let rows = self.db(st.query_map([i(uid)], |r| {
            Ok(cmtp_proto::content::Attachment {
                name: r.get(0)?,
                data: r.get(1)?,
                media_type: r.get(2)?,
            })
        }))?;
        self.db(rows.collect())
    }

    /// The threads of `folder`, newest first (by their newest message in
    /// the folder), `limit` of them after skipping `offset` (`limit` 0:
    /// all). The folder's messages are read newest first only until the
    /// page is full, and each thread is counted on the `(folder,
    /// thread_id)` index, so a page costs O(page), not O(folder).
    pub fn threads(&self, folder: &str, offset: u64, limit: u64) -> Result<Vec<ThreadSummary>> {
        let want = if limit == 0 {
            u64::MAX
        } else {
            offset.saturating_add(limit)
        };
        let mut order: Vec<(i64, String)> = Vec::new();
        {
            let mut seen = std::collections::HashSet::new();
            let mut st = self.db(self.conn.prepare_cached(
                "SELECT uid, thread_id FROM messages WHERE folder = ?1 ORDER BY uid DESC",
            ))?;
            let mut rows = self.db(st.query([folder]))?;
            while (order.len() as u64) < want {
                let Some(row) = self.db(rows.next())? else {
                    break;
                };
                let uid: i64 = self.db(row.get(0))?;
                let thread: Option<String> = self.db(row.get(1))?;
                let thread = thread.unwrap_or_else(|| format!("uid:{uid}"));
                if seen.insert(thread.clone()) {
                    order.push((uid, thread));
                }
            }
        }
        let mut out = Vec::new();
        let mut count = self.db(self.conn.prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(CASE WHEN flags & 1 = 0 THEN 1 ELSE 0 END), 0)
             FROM messages WHERE folder = ?1 AND thread_id = ?2",
        ))?;
        for (newest, thread) in order.into_iter().skip(offset as usize) {
            let (n, unread): (i64, i64) =
                self.db(count.query_row(params![folder, thread], |r| Ok((r.get(0)?, r.get(1)?))))?;
            if let Some(m) = self.message(u(newest))? {
                out.push(ThreadSummary {
                    newest: m,
                    count: u(n).max(1),
                    unread: u(unread),
                });
            }
        }
        Ok(out)
    }

    /// How many threads `folder` holds.
    pub fn thread_count(&self, folder: &str) -> Result<u64> {
        self.db(self.conn.query_row(
            "SELECT COUNT(DISTINCT thread_id) FROM messages WHERE folder = ?1",
            [folder],
            |r| Ok(u(r.get(0)?)),
        ))
    }

    /// Every message of the thread of message `uid`, in every folder,
    /// oldest first (by date); empty when there is no such message.
    pub fn thread(&self, uid: u64) -> Result<Vec<StoredMessage>> {
        let Some(m) = self.message(uid)? else {
            return Ok(Vec::new());
        };
        let Some(thread) = m.thread_id else {
            return Ok(vec![m]);
        };
        let mut st = self.db(self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE thread_id = ?1
             ORDER BY date_ts, uid"
        )))?;
        let rows = self.db(st.query_map([thread], message_row))?;
        self.db(rows.collect())
    }

    /// The messages carrying message id `id` (the copies of one message in
    /// several folders).
    pub fn by_message_id(&self, id: &str) -> Result<Vec<StoredMessage>> {
        let mut st = self.db(self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages WHERE message_id = ?1 ORDER BY uid"
        )))?;
        let rows = self.db(st.query_map([id], message_row))?;
        self.db(rows.collect())
    }

    /// Every fetched message, by id (for export); `folder` limits them to one folder.
    pub fn fetched_messages(&self, folder: Option<&str>) -> Result<Vec<StoredMessage>> {
        let mut st = self.db(self.conn.prepare(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE fetched = 1 AND (?1 IS NULL OR folder = ?1) ORDER BY uid"
        )))?;
        let rows = self.db(st.query_map([folder], message_row))?;
        self.db(rows.collect())
    }

    /// The folders that hold messages, and the well-known ones, with how
    /// many messages each holds and how many are unread.
    pub fn folders(&self) -> Result<Vec<(String, u64, u64)>> {
        let mut st = self.db(self.conn.prepare(
            "SELECT folder, COUNT(*), SUM(CASE WHEN flags & 1 = 0 THEN 1 ELSE 0 END)
             FROM messages GROUP BY folder",
        ))?;
        let rows = self.db(st.query_map([], |r| {
            Ok((r.get::<_, String>(0)?, u(r.get(1)?), u(r.get(2)?)))
        }))?;
        let mut found: Vec<(String, u64, u64)> = self.db(rows.collect())?;
        let mut out = Vec::new();
        for well_known in WELL_KNOWN_FOLDERS {
            match found.iter().position(|(f, _, _)| f == well_known) {
                Some(p) => out.push(found.remove(p)),
                None => out.push(((*well_known).to_owned(), 0, 0)),
            }
        }
        found.sort();
        out.extend(found);
        Ok(out)
    }

    /// Files a message into `folder` here (and remembers the move until it
    /// is pushed with MOVE); `false` when there is no such message.
    pub fn set_folder(&self, uid: u64, folder: &str) -> Result<bool> {
        let n = self.db(self.conn.execute(
            "UPDATE messages SET folder = ?2 WHERE uid = ?1",
            params![i(uid), folder],
        ))?;
        if n == 0 {
            return Ok(false);
        }
        self.db(self.conn.execute(
            "INSERT INTO pending_moves (uid, folder) VALUES (?1, ?2)
             ON CONFLICT (uid) DO UPDATE SET folder = excluded.folder",
            params![i(uid), folder],
        ))?;
        Ok(true)
    }

    /// Moves not yet pushed: (uid, folder).
    pub fn pending_moves(&self) -> Result<Vec<(u64, String)>> {
        let mut st = self.db(self
            .conn
            .prepare("SELECT uid, folder FROM pending_moves ORDER BY uid"))?;
        let rows = self.db(st.query_map([], |r| Ok((u(r.get(0)?), r.get(1)?))))?;
        self.db(rows.collect())
    }

    /// A pushed move.
    pub fn clear_pending_move(&self, uid: u64) -> Result<()> {
        self.db(self
            .conn
            .execute("DELETE FROM pending_moves WHERE uid = ?1", [i(uid)]))?;
        Ok(())
    }

    /// Changes flags here (and remembers the change until it is pushed).
    pub fn set_flags(&self, uid: u64, set: u32, clear: u32) -> Result<bool> {
        let n = self.db(self.conn.execute(
            "UPDATE messages SET flags = (flags | ?2) & ~?3 WHERE uid = ?1",
            params![i(uid), set, clear],
        ))?;
        if n == 0 {
            return Ok(false);
        }
        self.db(self.conn.execute(
            "INSERT INTO pending_flags (uid, set_bits, clear_bits) VALUES (?1, ?2, ?3)
             ON CONFLICT (uid) DO UPDATE SET set_bits = (set_bits & ~?3) | ?2,
                                             clear_bits = (clear_bits & ~?2) | ?3",
            params![i(uid), set, clear],
        ))?;
        Ok(true)
    }

    /// Flag changes not yet pushed: (uid, set, clear).
    pub fn pending_flags(&self) -> Result<Vec<(u64, u32, u32)>> {
        let mut st = self.db(self
            .conn
            .prepare("SELECT uid, set_bits, clear_bits FROM pending_flags ORDER BY uid"))?;
        let rows = self.db(st.query_map([], |r| Ok((u(r.get(0)?), r.get(1)?, r.get(2)?))))?;
        self.db(rows.collect())
    }

    /// A pushed flag change.
    pub fn clear_pending_flags(&self, uid: u64) -> Result<()> {
        self.db(self
            .conn
            .execute("DELETE FROM pending_flags WHERE uid = ?1", [i(uid)]))?;
        Ok(())
    }

    // ----- outbox -----

    /// Puts a composed message into the outbox (durably) and returns its id.
    pub fn outbox_add(&self, draft: &Composed, now: u64) -> Result<u64> {
        let json = serde_json::to_string(draft).expect("a draft serialises");
        self.db(self.conn.execute(
            "INSERT INTO outbox (created_at, draft, next_attempt_at) VALUES (?1, ?2, ?1)",
            params![i(now), json],
        ))?;
        Ok(u(self.conn.last_insert_rowid()))
    }

    fn outbox_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<OutboxEntry> {
        let json: String = r.get(2)?;
        Ok(OutboxEntry {
            id: u(r.get(0)?),
            created_at: u(r.get(1)?),
            draft: serde_json::from_str(&json).unwrap_or_default(),
            sealed: r.get(3)?,
            attempts: r.get(4)?,
            next_attempt_at: u(r.get(5)?),
            last_error: r.get(6)?,
        })
    }

    /// Every outbox entry, oldest first.
    pub fn outbox(&self) -> Result<Vec<OutboxEntry>> {
        let mut st = self.db(self.conn.prepare(
            "SELECT id, created_at, draft, sealed, attempts, next_attempt_at, last_error
             FROM outbox ORDER BY id",
        ))?;
        let rows = self.db(st.query_map([], Self::outbox_row))?;
        self.db(rows.collect())
    }

    /// One outbox entry.
    pub fn outbox_entry(&self, id: u64) -> Result<Option<OutboxEntry>> {
        self.db(self
            .conn
            .query_row(
                "SELECT id, created_at, draft, sealed, attempts, next_attempt_at, last_error
                     FROM outbox WHERE id = ?1",
                [i(id)],
                Self::outbox_row,
            )
            .optional())
    }

    /// Stores the sealed copies of an outbox entry (once; all together).
    pub fn outbox_seal(&mut self, id: u64, copies: &[OutboxCopy]) -> Result<()> {
        self.transaction(|s| {
            for c in copies {
                s.db(s.conn.execute(
                    "INSERT INTO outbox_copies (outbox_id, idx, kind, recipient, hash, bytes)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![i(id), c.idx, c.kind, c.recipient, &c.hash[..], c.bytes],
                ))?;
            }
            s.db(s
                .conn
                .execute("UPDATE outbox SET sealed = 1 WHERE id = ?1", [i(id)]))?;
            Ok(())
        })
    }

    /// The sealed copies of an outbox entry.
    pub fn outbox_copies(&self, id: u64) -> Result<Vec<OutboxCopy>> {
        let mut st = self.db(self.conn.prepare(
            "SELECT idx, kind, recipient, hash, bytes, done FROM outbox_copies
             WHERE outbox_id = ?1 ORDER BY idx",
        ))?;
        let rows = self.db(st.query_map([i(id)], |r| {
            let h: Vec<u8> = r.get(3)?;
            let mut hash = [0u8; 32];
            if h.len() == 32 {
                hash.copy_from_slice(&h);
            }
            Ok(OutboxCopy {
                idx: r.get(0)?,
                kind: r.get(1)?,
                recipient: r.get(2)?,
                hash,
                bytes: r.get(4)?,
                done: r.get(5)?,
            })
        }))?;
        self.db(rows.collect())
    }

    /// A copy was accepted (its receipt verified).
    pub fn outbox_copy_done(&self, id: u64, idx: u32, receipt: &[u8]) -> Result<()> {
        self.db(self.conn.execute(
            "UPDATE outbox_copies SET done = 1, receipt = ?3 WHERE outbox_id = ?1 AND idx = ?2",
            params![i(id), idx, receipt],
        ))?;
        Ok(())
    }

    /// An attempt failed: count it, remember why, and when to try again.
    pub fn outbox_failed(&self, id: u64, error: &str, next_attempt_at: u64) -> Result<()> {
        self.db(self.conn.execute(
            "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, next_attempt_at = ?3
             WHERE id = ?1",
            params![i(id), error, i(next_attempt_at)],
        ))?;
        Ok(())
    }

    /// Removes an outbox entry (all its copies were accepted).
    pub fn outbox_remove(&self, id: u64) -> Result<()> {
        self.db(self
            .conn
            .execute("DELETE FROM outbox_copies WHERE outbox_id = ?1", [i(id)]))?;
        self.db(self
            .conn
            .execute("DELETE FROM outbox WHERE id = ?1", [i(id)]))?;
        Ok(())
    }

    // ----- drafts -----

    /// Saves a draft (new when `id` is `None`); returns its id.
    pub fn save_draft(
        &self,
        id: Option<u64>,
        draft: &Composed,
        note: Option<&str>,
        now: u64,
    ) -> Result<u64> {
        let json = serde_json::to_string(draft).expect("a draft serialises");
        match id {
            Some(id) => {
                let n = self.db(self.conn.execute(
                    "UPDATE drafts SET draft = ?2, updated_at = ?3, note = ?4 WHERE id = ?1",
                    params![i(id), json, i(now), note],
                ))?;
                if n == 0 {
                    return Err(Error::NotFound(format!("no draft {id}")));
                }
                Ok(id)
            }
            None => {
                self.db(self.conn.execute(
                    "INSERT INTO drafts (updated_at, draft, note) VALUES (?1, ?2, ?3)",
                    params![i(now), json, note],
                ))?;
                Ok(u(self.conn.last_insert_rowid()))
            }
        }
    }

    /// Every draft, oldest first.
    pub fn drafts(&self) -> Result<Vec<Draft>> {
        let mut st = self.db(self
            .conn
            .prepare("SELECT id, updated_at, draft, note FROM drafts ORDER BY id"))?;
        let rows = self.db(st.query_map([], |r| {
            let json: String = r.get(2)?;
            Ok(Draft {
                id: u(r.get(0)?),
                updated_at: u(r.get(1)?),
                draft: serde_json::from_str(&json).unwrap_or_default(),
                note: r.get(3)?,
            })
        }))?;
        self.db(rows.collect())
    }

    /// One draft.
    pub fn draft(&self, id: u64) -> Result<Option<Draft>> {
        Ok(self.drafts()?.into_iter().find(|d| d.id == id))
    }

    /// Removes a draft; `false` if there was none.
    pub fn delete_draft(&self, id: u64) -> Result<bool> {
        Ok(self.db(self
            .conn
            .execute("DELETE FROM drafts WHERE id = ?1", [i(id)]))?
            > 0)
    }
}

/// What the index holds of a message's recipients: the lists as written
/// (`Name <addr>`), space-separated.
pub fn search_text(to: &[String], cc: &[String], bcc: &[String]) -> String {
    to.iter()
        .chain(cc)
        .chain(bcc)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The thread a message belongs to: for content version 2 the first of
/// its references, else the message it answers, else its own id (so a
/// thread is named by its first message's id); for version 1 content,
/// which has no ids, `subject:` and its subject without `Re:`/`Fwd:`; for
/// a message that could not be read, `uid:` and its id.
pub fn thread_id(o: &Opened, uid: u64) -> String {
    if let Some(first) = o.references.first() {
        return format!("id:{first}");
    }
    if let Some(parent) = o.in_reply_to.as_deref().filter(|p| !p.is_empty()) {
        return format!("id:{parent}");
    }
    if let Some(own) = o.message_id.as_deref().filter(|p| !p.is_empty()) {
        return format!("id:{own}");
    }
    match &o.subject {
        Some(sub) => format!("subject:{}", thread_subject(sub)),
        None => format!("uid:{uid}"),
    }
}

/// A subject without `Re:`, `Fwd:`, `Fw:` and `AW:` prefixes and outer
/// spaces, lower-cased: what the messages of one thread share.
pub fn thread_subject(s: &str) -> String {
    let mut s = s.trim();
    loop {
        let lower = s.to_ascii_lowercase();
        let cut = ["re:", "fwd:", "fw:", "aw:", "wg:"]
            .iter()
            .find(|p| lower.starts_with(*p))
            .map(|p| p.len());
        match cut {
            Some(n) => s = s[n..].trim_start(),
            None => break,
        }
    }
    s.to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use cmtp_proto::names::{Account, Domain};
    use cmtp_proto::payload::mailbox::{Folder, Summary};
    use std::os::unix::fs::PermissionsExt;

    fn summary(uid: u64, hash: u8) -> Summary {
        Summary {
            uid,
            modseq: uid,
            flags: 0,
            folder: Folder::inbox(),
            size: 10,
            received_at: 100 + uid,
            hash: [hash; 32],
            version: 1,
            attachment_count: 0,
            source_account: Some(Account::parse("alice").unwrap()),
            source_domain: Domain::parse("a.test").unwrap(),
        }
    }

    #[test]
    fn the_store_is_private_and_belongs_to_one_account() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("home").join(STORE_FILE);
        let s = LocalStore::open(&path, "bob@b.test").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(s.upsert_summary(&summary(1, 1)).unwrap());
        s.outbox_add(&Composed::default(), 5).unwrap();
        drop(s);
        let s = LocalStore::open(&path, "bob@b.test").unwrap();
        assert!(s.message(1).unwrap().is_some());
        drop(s);
        // Another account: its mail goes, the outbox stays.
        let s = LocalStore::open(&path, "carol@b.test").unwrap();
        assert!(s.message(1).unwrap().is_none());
        assert_eq!(s.outbox().unwrap().len(), 1);
    }

    #[test]
    fn summaries_update_flags_and_a_new_hash_replaces_the_message() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join(STORE_FILE), "bob@b.test").unwrap();
        assert!(s.upsert_summary(&summary(1, 1)).unwrap());
        s.store_fetched(
            1,
            b"raw",
            &Opened {
                verdict: "verified".into(),
                subject: Some("Re: Hello".into()),
                attachments: vec![("a.txt".into(), b"x".to_vec())],
                ..Opened::default()
            },
        )
        .unwrap();
        let mut seen = summary(1, 1);
        seen.flags = 1;
        assert!(!s.upsert_summary(&seen).unwrap(), "already fetched");
        assert_eq!(s.message(1).unwrap().unwrap().flags, 1);
        // A change made here and not pushed yet stays over the server's.
        s.set_flags(1, 4, 1).unwrap();
        s.upsert_summary(&seen).unwrap();
        assert_eq!(s.message(1).unwrap().unwrap().flags, 4);
        s.clear_pending_flags(1).unwrap();
        assert_eq!(s.attachments(1).unwrap().len(), 1);
        assert!(s.upsert_summary(&summary(1, 2)).unwrap(), "another message");
        assert!(s.attachments(1).unwrap().is_empty());
        assert_eq!(s.unfetched().unwrap(), [1]);
    }

    #[test]
    fn offline_flag_changes_are_remembered_until_pushed() {
        let dir = tempfile::tempdir().unwrap();
        let s = LocalStore::open(&dir.path().join(STORE_FILE), "bob@b.test").unwrap();
        s.upsert_summary(&summary(3, 1)).unwrap();
        assert!(s.set_flags(3, 1, 0).unwrap());
        assert!(s.set_flags(3, 4, 0).unwrap());
        assert!(s.set_flags(3, 0, 4).unwrap());
        assert!(!s.set_flags(9, 1, 0).unwrap());
        assert_eq!(s.pending_flags().unwrap(), [(3, 1, 4)]);
        assert_eq!(s.count("Inbox").unwrap(), (1, 0));
        s.clear_pending_flags(3).unwrap();
        assert!(s.pending_flags().unwrap().is_empty());
    }

    /// The schema of version 1 (before content version 2), as it was.
    const SCHEMA_V1: &str = "
    CREATE TABLE IF NOT EXISTS meta (
        key   TEXT PRIMARY KEY NOT NULL,
        value TEXT NOT NULL
    );
    CREATE TABLE IF NOT EXISTS messages (
        uid              INTEGER PRIMARY KEY,
        hash             BLOB NOT NULL,
        modseq           INTEGER NOT NULL,
        flags            INTEGER NOT NULL,
        folder           TEXT NOT NULL,
        size             INTEGER NOT NULL,
        received_at      INTEGER NOT NULL,
        version          INTEGER NOT NULL,
        attachment_count INTEGER NOT NULL,
        source           TEXT NOT NULL,
        destination      TEXT,
        fetched          INTEGER NOT NULL DEFAULT 0,
        verdict          TEXT,
        verdict_detail   TEXT,
        subject          TEXT,
        date             TEXT,
        reply_to         TEXT,
        cc               TEXT,
        body             TEXT,
        attachment_names TEXT
    );
    CREATE INDEX IF NOT EXISTS messages_folder ON messages(folder, uid);
    CREATE INDEX IF NOT EXISTS messages_unfetched ON messages(uid) WHERE fetched = 0;
    CREATE INDEX IF NOT EXISTS messages_folder_flags ON messages(folder, flags);
    CREATE TABLE IF NOT EXISTS raw_messages (
        uid   INTEGER PRIMARY KEY REFERENCES messages(uid) ON DELETE CASCADE,
        bytes BLOB NOT NULL
    );
    CREATE TABLE IF NOT EXISTS parts (
        uid  INTEGER NOT NULL REFERENCES messages(uid) ON DELETE CASCADE,
        idx  INTEGER NOT NULL,
        name TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (uid, idx)
    );
    CREATE TABLE IF NOT EXISTS pending_flags (
        uid   INTEGER PRIMARY KEY,
        set_bits   INTEGER NOT NULL,
        clear_bits INTEGER NOT NULL
    );
    CREATE TABLE IF NOT EXISTS outbox (
        id              INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at      INTEGER NOT NULL,
        draft           TEXT NOT NULL,
        sealed          INTEGER NOT NULL DEFAULT 0,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL DEFAULT 0,
        last_error      TEXT
    );
    CREATE TABLE IF NOT EXISTS outbox_copies (
        outbox_id INTEGER NOT NULL REFERENCES outbox(id) ON DELETE CASCADE,
        idx       INTEGER NOT NULL,
        kind      TEXT NOT NULL,
        recipient TEXT NOT NULL,
        hash      BLOB NOT NULL,
        bytes     BLOB NOT NULL,
        done      INTEGER NOT NULL DEFAULT 0,
        receipt   BLOB,
        PRIMARY KEY (outbox_id, idx)
    );
    CREATE TABLE IF NOT EXISTS drafts (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        updated_at INTEGER NOT NULL,
        draft      TEXT NOT NULL,
        note       TEXT
    );
    ";

    #[test]
    fn a_version_1_store_is_migrated_with_its_mail_searchable_and_threaded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(SCHEMA_V1).unwrap();
            c.execute_batch(
                "INSERT INTO meta VALUES ('schema', '1'), ('account', 'bob@b.test');
                 INSERT INTO messages (uid, hash, modseq, flags, folder, size, received_at, version,
                     attachment_count, source, destination, fetched, verdict, subject, date, cc, body,
                     attachment_names)
                 VALUES (1, x'01', 1, 0, 'Inbox', 10, 100, 1, 1, 'alice@a.test', 'bob@b.test', 1,
                     'verified', 'Plans', '2026-11-26T02:00:00Z', '[\"carol@c.test\"]',
                     'the zebra crossing', '[\"map.png\"]'),
                        (2, x'02', 2, 0, 'Inbox', 10, 101, 1, 0, 'carol@c.test', 'bob@b.test', 1,
                     'verified', 'Re: plans', '2026-11-26T03:00:00Z', '[]', 'agreed', '[]'),
                        (3, x'03', 3, 0, 'Inbox', 10, 102, 1, 0, 'dan@d.test', NULL, 0,
                     NULL, NULL, NULL, NULL, NULL, NULL);",
            )
            .unwrap();
        }
        let s = LocalStore::open(&path, "bob@b.test").unwrap();
        assert_eq!(s.meta("schema").unwrap().as_deref(), Some("2"));
        let q = |text: &str| {
            s.search(&crate::search::Query::parse(text).unwrap(), 0)
                .unwrap()
                .iter()
                .map(|m| m.uid)
                .collect::<Vec<_>>()
        };
        assert_eq!(q("zebra"), [1]);
        assert_eq!(q("map.png"), [1]);
        assert_eq!(q("to:carol"), [1]);
        assert_eq!(q("from:carol"), [2]);
        assert_eq!(q("date:2026-11-26"), [2, 1]);
        // Version 1 threads by subject, as before.
        let t: Vec<u64> = s.thread(2).unwrap().iter().map(|m| m.uid).collect();
        assert_eq!(t, [1, 2]);
        assert_eq!(s.message(1).unwrap().unwrap().content_version, Some(1));
        // The unfetched one is indexed once it is fetched.
        s.store_fetched(
            3,
            b"",
            &Opened {
                verdict: "verified".into(),
                subject: Some("News".into()),
                body: Some("more zebras".into()),
                content_version: Some(2),
                message_id: Some("z@d.test".into()),
                ..Opened::default()
            },
        )
        .unwrap();
        assert_eq!(q("zebra"), [1]);
        // Newest first by date: message 3 has none, so its arrival counts.
        assert_eq!(q("zebra*"), [1, 3]);
        drop(s);
        // Opening again changes nothing.
        let s = LocalStore::open(&path, "bob@b.test").unwrap();
        assert_eq!(
            s.search(&crate::search::Query::parse("zebras").unwrap(), 0)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn the_index_follows_changes_removals_and_resets() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = LocalStore::open(&dir.path().join(STORE_FILE), "bob@b.test").unwrap();
        let opened = |subject: &str, body: &str, id: &str, refs: &[&str]| Opened {
            verdict: "verified".into(),
            subject: Some(subject.into()),
            body: Some(body.into()),
            content_version: Some(2),
            message_id: Some(id.into()),
            references: refs.iter().map(|r| (*r).to_owned()).collect(),
            to: vec!["Bob <bob@b.test>".into()],
            from_name: Some("Alice A".into()),
            ..Opened::default()
        };
        for uid in 1..=3 {
            s.upsert_summary(&summary(uid, uid as u8)).unwrap();
        }
        s.store_fetched(1, b"", &opened("Plans", "apples", "r@a", &[]))
            .unwrap();
        s.store_fetched(2, b"", &opened("Re: Plans", "pears", "s@b", &["r@a"]))
            .unwrap();
        s.store_fetched(3, b"", &opened("Other", "apples again", "t@a", &[]))
            .unwrap();
        let q = |s: &LocalStore, text: &str| {
            s.search(&crate::search::Query::parse(text).unwrap(), 0)
                .unwrap()
                .iter()
                .map(|m| m.uid)
                .collect::<Vec<_>>()
        };
        assert_eq!(q(&s, "apples"), [3, 1]);
        assert_eq!(q(&s, "from:\"Alice A\""), [3, 2, 1]);
        assert_eq!(q(&s, "to:bob@b.test pears"), [2]);
        // Threads: 1 and 2 are one, 3 its own; the inbox groups them.
        let th: Vec<(u64, u64)> = s
            .threads("Inbox", 0, 0)
            .unwrap()
            .iter()
            .map(|t| (t.newest.uid, t.count))
            .collect();
        assert_eq!(th, [(3, 1), (2, 2)]);
        assert_eq!(s.thread_count("Inbox").unwrap(), 2);
        // Moves are local at once and remembered until pushed.
        assert!(s.set_folder(3, "Archive").unwrap());
        assert_eq!(s.pending_moves().unwrap(), [(3, "Archive".to_owned())]);
        let mut from_server = summary(3, 3);
        from_server.modseq = 9;
        s.upsert_summary(&from_server).unwrap();
        assert_eq!(
            s.message(3).unwrap().unwrap().folder,
            "Archive",
            "the local move wins"
        );
        assert_eq!(q(&s, "apples folder:Archive"), [3]);
        // A removed message leaves the index.
        s.remove(3).unwrap();
        assert_eq!(q(&s, "apples"), [1]);
        // A message fetched again is indexed once.
        s.store_fetched(1, b"", &opened("Plans", "bananas", "r@a", &[]))
            .unwrap();
        assert!(q(&s, "apples").is_empty());
        assert_eq!(q(&s, "bananas"), [1]);
        s.transaction(|s| s.reset_mail()).unwrap();
        assert!(q(&s, "bananas").is_empty());
        s.db(s
            .conn
            .execute_batch("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check');"))
            .unwrap();
    }

    #[test]
    fn thread_subjects_drop_reply_prefixes() {
        assert_eq!(thread_subject("Re: RE: Fwd: Hello"), "hello");
        assert_eq!(thread_subject("  hello "), "hello");
        assert_eq!(thread_subject("Reply policy"), "reply policy");
    }
}
