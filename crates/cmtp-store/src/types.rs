//! The records the [`Store`](crate::Store) interface takes and returns.
//!
//! All times are unix seconds chosen by the caller (the store never reads the
//! clock). Accounts are the local part of a local user's address, already
//! validated and lower-cased by the caller; domains likewise.

use bytes::Bytes;

/// Largest chunk of a message blob, in bytes (1 MiB). An inline body and
/// every staged chunk must be at most this long.
pub const MAX_CHUNK: usize = 1 << 20;

/// A user's login material, replaced as a whole on a password change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The OPAQUE registration record (opaque to the store).
    pub opaque_record: Vec<u8>,
    /// The key-stretching function's parameters (opaque to the store).
    pub ksf: [u8; 12],
    /// The encrypted, signed xzibit (opaque to the store).
    pub xzibit: Vec<u8>,
}

/// A user to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUser {
    /// The account name (validated, lower-case).
    pub account: String,
    /// The user's Ed25519 identity public key.
    pub identity_pk: [u8; 32],
    /// The user's login material.
    pub credentials: Credentials,
}

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The account name.
    pub account: String,
    /// The user's Ed25519 identity public key (changes only with a reset,
    /// [`Store::reset_user`](crate::Store::reset_user)).
    pub identity_pk: [u8; 32],
    /// The user's current login material.
    pub credentials: Credentials,
    /// When the user was created.
    pub created_at: u64,
    /// When the user was created or last changed its credentials.
    pub updated_at: u64,
    /// The most bytes the mailbox may hold (`None`: no limit).
    pub quota: Option<u64>,
}

/// One line of `cmtpd user list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserSummary {
    /// The account name.
    pub account: String,
    /// When the user was created.
    pub created_at: u64,
    /// How many messages the mailbox holds.
    pub messages: u64,
    /// The total size of those messages, in bytes.
    pub bytes: u64,
    /// The mailbox quota in bytes, if any.
    pub quota: Option<u64>,
}

/// How much a mailbox holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MailboxUsage {
    /// How many messages.
    pub messages: u64,
    /// Their total size, in bytes.
    pub bytes: u64,
}

/// Another name of a local account: mail to `alias@domain` is delivered to
/// the account's mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alias {
    /// The alias (a valid account name that is no account).
    pub alias: String,
    /// The account it delivers to.
    pub account: String,
    /// When it was created.
    pub created_at: u64,
}

/// A key statement the server issued for one of its users, as cached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyStatement {
    /// The signed statement, verbatim.
    pub statement: Vec<u8>,
    /// When the statement expires.
    pub expires_at: u64,
}

/// A pinned remote server key (trust on first use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pin {
    /// The domain's server Ed25519 public key.
    pub key: [u8; 32],
    /// When this key was first pinned for the domain.
    pub first_seen: u64,
    /// When the pin was last confirmed or replaced.
    pub updated_at: u64,
}

/// A blob being uploaded chunk by chunk, not yet referenced by a delivery or
/// a queue entry. Obtained from [`Store::stage_begin`](crate::Store::stage_begin).
///
/// A staged blob is referenced at most once: cloning the handle does not
/// duplicate the blob, and a second reference fails with
/// [`StoreError::BlobNotFound`](crate::StoreError::BlobNotFound). The
/// server removes the blob of a refused or abandoned message at once with
/// [`Store::stage_abort`](crate::Store::stage_abort); one that is never
/// referenced nor aborted (the server died) is removed by
/// [`Store::purge_expired`](crate::Store::purge_expired) once its grace period
/// (counted from `stage_begin`) is over, and (SQLite only, where no other
/// node can be uploading) when the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StagedBlob {
    pub(crate) id: u64,
}

impl StagedBlob {
    /// The blob's identifier (for logs).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// How to read a stored message: pass it to
/// [`Store::read_chunk`](crate::Store::read_chunk) for chunks `0..chunks`, or
/// wrap it in a [`BlobReader`](crate::BlobReader).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlobRef {
    /// The blob's identifier.
    pub id: u64,
    /// Its total size in bytes.
    pub size: u64,
    /// How many chunks it has (numbered from 0).
    pub chunks: u32,
}

/// The bytes of a message being delivered or queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageBody {
    /// A message that fits in one chunk (at most [`MAX_CHUNK`] bytes): stored
    /// in the same transaction as the delivery.
    Inline(Bytes),
    /// A blob uploaded beforehand with [`Store::stage_append`](crate::Store::stage_append).
    Staged(StagedBlob),
}

/// A message to put into a local mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDelivery {
    /// The recipient's account.
    pub account: String,
    /// The message's identity for de-duplication (hash of the message minus
    /// its log).
    pub hash: [u8; 32],
    /// Who sent it: `user@domain`, or `@domain` for a server.
    pub source: String,
    /// When it was received; also the de-duplication entry's age.
    pub received_at: u64,
    /// The message format version.
    pub version: u32,
    /// How many attachments it carries.
    pub attachment_count: u32,
    /// Its size in bytes; must equal the body's length.
    pub size: u64,
    /// The message bytes.
    pub body: MessageBody,
}

/// The outcome of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    /// The mailbox entry's per-user id. For a duplicate: the original
    /// entry's id, or 0 if that entry has since been deleted.
    pub id: u64,
    /// The hash had already been delivered; nothing was stored.
    pub duplicate: bool,
}

/// The folder delivered mail is filed in.
pub const INBOX: &str = "Inbox";

/// A message in a mailbox (without its bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxEntry {
    /// The entry's per-user id: 1 for the account's first message,
    /// increasing, never reused within the mailbox's epoch.
    pub id: u64,
    /// The mailbox's modification sequence at the entry's last change
    /// (arrival, flags, folder).
    pub modseq: u64,
    /// Flag bits, as the client set them (opaque to the store).
    pub flags: u32,
    /// The folder (validated by the caller; [`INBOX`] for delivered mail).
    pub folder: String,
    /// The message's de-duplication hash.
    pub hash: [u8; 32],
    /// Its size in bytes.
    pub size: u64,
    /// When it was received.
    pub received_at: u64,
    /// Who sent it (`user@domain` or `@domain`).
    pub source: String,
    /// The message format version.
    pub version: u32,
    /// How many attachments it carries.
    pub attachment_count: u32,
}

/// A mailbox's id space and change counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MailboxState {
    /// Identifies the id space: changes when an account of the same name is
    /// created anew, never otherwise.
    pub epoch: u64,
    /// The modification sequence: raised by one with every arrival, flag
    /// or folder change and removal.
    pub modseq: u64,
}

/// Up to `limit` entries below an id, newest first, with the state read
/// before them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxPage {
    /// The mailbox's state, read before the entries.
    pub state: MailboxState,
    /// The entries, highest id first.
    pub entries: Vec<MailboxEntry>,
}

/// One change of a mailbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailboxChange {
    /// An entry arrived or changed; its current state.
    Entry(MailboxEntry),
    /// An entry was removed (its tombstone).
    Removed {
        /// Its per-user id.
        id: u64,
        /// The modseq of the removal.
        modseq: u64,
    },
}

impl MailboxChange {
    /// The change's modseq.
    pub fn modseq(&self) -> u64 {
        match self {
            MailboxChange::Entry(e) => e.modseq,
            MailboxChange::Removed { modseq, .. } => *modseq,
        }
    }
}

/// The changes after a modseq, oldest first, with the state read before them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailboxChanges {
    /// The mailbox's state, read before the changes.
    pub state: MailboxState,
    /// Whether more changes follow the last one.
    pub more: bool,
    /// The changes, lowest modseq first.
    pub changes: Vec<MailboxChange>,
}

/// The outcome of [`Store::set_flags`](crate::Store::set_flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagsChanged {
    /// The mailbox's modseq afterwards.
    pub modseq: u64,
    /// How many entries changed.
    pub changed: u32,
}

/// A message to relay to another domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutbound {
    /// The message's de-duplication hash; a re-submission of the same hash
    /// returns the existing entry.
    pub hash: [u8; 32],
    /// The local account that sent it.
    pub sender: String,
    /// The recipient, `user@domain`.
    pub destination: String,
    /// The recipient's domain (where to deliver).
    pub dest_domain: String,
    /// Its size in bytes; must equal the body's length.
    pub size: u64,
    /// When it was queued; the first attempt is due at once.
    pub created_at: u64,
    /// When the relay gives up and notifies the sender.
    pub expires_at: u64,
    /// The message bytes.
    pub body: MessageBody,
}

/// The outcome of [`Store::enqueue`](crate::Store::enqueue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Enqueued {
    /// The queue entry's id.
    pub id: u64,
    /// The hash was already queued: `id` is the existing entry and nothing
    /// was stored (a staged body is discarded).
    pub duplicate: bool,
}

/// An entry of the outbound relay queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundEntry {
    /// The entry's id.
    pub id: u64,
    /// The message's de-duplication hash.
    pub hash: [u8; 32],
    /// The local account that sent it.
    pub sender: String,
    /// The recipient, `user@domain`.
    pub destination: String,
    /// The recipient's domain.
    pub dest_domain: String,
    /// Its size in bytes.
    pub size: u64,
    /// When it was queued.
    pub created_at: u64,
    /// When the relay gives up.
    pub expires_at: u64,
    /// When the next attempt is due.
    pub next_attempt_at: u64,
    /// How many attempts failed so far.
    pub attempts: u32,
    /// The last attempt's error.
    pub last_error: Option<String>,
    /// The node holding the delivery lease, if any (it may have expired).
    pub lease_owner: Option<String>,
    /// When that lease expires.
    pub lease_until: Option<u64>,
    /// Held by an administrator: never attempted until released.
    pub held: bool,
    /// The message bytes.
    pub blob: BlobRef,
}

/// Outbound queue figures for metrics and `cmtpd queue`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// All entries.
    pub total: u64,
    /// Entries whose attempt is due and that nobody holds (held ones
    /// excluded).
    pub due: u64,
    /// Entries waiting for a later attempt (held ones excluded).
    pub deferred: u64,
    /// Entries held by an administrator.
    pub held: u64,
    /// Entries leased by a node (lease not yet expired).
    pub leased: u64,
    /// The total size of the queued messages, in bytes.
    pub bytes: u64,
    /// The age of the oldest entry, in seconds (`None` when empty).
    pub oldest_age: Option<u64>,
    /// How long the most overdue entry (due, not held, not leased) has been
    /// waiting past its attempt time, in seconds (`None` if none is due):
    /// a queue runner that falls behind shows here.
    pub oldest_due_age: Option<u64>,
}

/// How long [`Store::purge_expired`](crate::Store::purge_expired) keeps what
/// it may delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Keep de-duplication entries this long (seconds) after their delivery;
    /// must exceed the longest time a relay may retry (the queue lifetime).
    /// An entry whose message is still in a mailbox is always kept.
    pub dedup: u64,
    /// Remove staged blobs that are still unreferenced this long (seconds)
    /// after `stage_begin`; must exceed the longest upload.
    pub staged_grace: u64,
    /// Keep at most this many remote key statements: beyond it, those that
    /// expire soonest are removed.
    pub max_cached_statements: u64,
    /// Keep at most this many pinned remote server keys: beyond it, the
    /// pins first seen most recently are removed (an established pin is
    /// never displaced by a flood of new domains).
    pub max_pins: u64,
}

impl Default for Retention {
    /// De-duplication entries 14 days (the default relay lifetime is 5 days),
    /// staged blobs 1 hour, 100,000 remote statements and pins.
    fn default() -> Self {
        Retention {
            dedup: 14 * 24 * 3600,
            staged_grace: 3600,
            max_cached_statements: 100_000,
            max_pins: 100_000,
        }
    }
}

/// What [`Store::purge_expired`](crate::Store::purge_expired) removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PurgeReport {
    /// Expired invites.
    pub invites: u64,
    /// De-duplication entries past retention.
    pub dedup_entries: u64,
    /// Abandoned staged blobs.
    pub staged_blobs: u64,
    /// Remote key statements: expired, or over the bound.
    pub cached_statements: u64,
    /// Pinned remote server keys over the bound.
    pub pins: u64,
    /// Expired reset tokens.
    pub reset_tokens: u64,
    /// Unlock records older than a day (already applied by every node).
    pub unlocks: u64,
}

/// An administrator's request to clear the login rate limits of an
/// account, as recorded by [`Store::unlock_user`](crate::Store::unlock_user).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unlock {
    /// Increasing with each unlock (a cursor for
    /// [`Store::unlocks_after`](crate::Store::unlocks_after)).
    pub id: u64,
    /// The account.
    pub account: String,
    /// When it was unlocked.
    pub at: u64,
}
