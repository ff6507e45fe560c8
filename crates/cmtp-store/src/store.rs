//! The storage interface, the backend-selecting [`AnyStore`] and the
//! bounded-memory [`BlobReader`].

use std::future::Future;

use bytes::Bytes;

use crate::error::StoreError;
use crate::types::{
    Alias, BlobRef, Credentials, Delivered, Enqueued, FlagsChanged, KeyStatement, MailboxChanges,
    MailboxEntry, MailboxPage, MailboxUsage, NewDelivery, NewOutbound, NewUser, OutboundEntry, Pin,
    PurgeReport, QueueStats, Retention, StagedBlob, Unlock, User, UserSummary,
};

/// Everything cmtpd keeps, behind one interface that every backend
/// implements.
///
/// Handles are cheap to clone and share one backend. Every method returns a
/// `Send` future, so server tasks can run them on any runtime thread. A
/// method that changes something is durable when its future resolves `Ok`
/// (committed and synced), and all or nothing: when it fails, nothing was
/// changed. Nothing here reads the clock: methods that need the time take
/// `now` (unix seconds).
pub trait Store: Clone + Send + Sync + 'static {
    // ----- users -----

    /// Creates a user. With `invite` (the SHA-256 of an invite token), the
    /// invite must exist, be for this account, be unexpired at `now`, and it
    /// is consumed in the same transaction.
    ///
    /// Errors: [`StoreError::AlreadyExists`] (the invite is then left
    /// unused), [`StoreError::InviteInvalid`].
    fn create_user(
        &self,
        user: NewUser,
        invite: Option<[u8; 32]>,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The user named `account`, if any.
    fn user(&self, account: &str) -> impl Future<Output = Result<Option<User>, StoreError>> + Send;

    /// Every user with its mailbox's message count and size, by account.
    fn list_users(&self) -> impl Future<Output = Result<Vec<UserSummary>, StoreError>> + Send;

    /// How many users hold each distinct key-stretching parameter encoding
    /// (the `ksf` of their credentials), ordered by the encoding's bytes.
    fn ksf_histogram(
        &self,
    ) -> impl Future<Output = Result<Vec<([u8; 12], u64)>, StoreError>> + Send;

    /// Deletes a user together with its mailbox (entries and their bytes),
    /// its cached key statement and its pending invites, in one transaction.
    /// `false` if there was no such user. De-duplication entries and queued
    /// outbound mail stay.
    fn delete_user(&self, account: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Replaces a user's login material (password change; the identity key
    /// does not change). `false` if there is no such user.
    fn update_credentials(
        &self,
        account: &str,
        credentials: Credentials,
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Sets (`Some`) or removes (`None`) the mailbox quota of `account`,
    /// in bytes. `false` if there is no such user.
    fn set_quota(
        &self,
        account: &str,
        quota: Option<u64>,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The quota of `account` alone, read for every message delivered to
    /// it: `None` if there is no such user, `Some(None)` if it has no quota.
    fn quota(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Option<Option<u64>>, StoreError>> + Send;

    /// How many messages, and bytes, the mailbox of `account` holds (zero
    /// for an unknown account).
    fn mailbox_usage(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<MailboxUsage, StoreError>> + Send;

    /// Claims the right to send `account` a "mailbox full" notice at `now`:
    /// `true` (and recorded) unless one was claimed within the last
    /// `interval` seconds; atomic across nodes, so at most one notice per
    /// interval is sent. `false` for an unknown account.
    fn claim_quota_notice(
        &self,
        account: &str,
        now: u64,
        interval: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Records that an administrator cleared the login rate limits of
    /// `account` at `now` (the limits themselves are kept in memory by each
    /// node, which applies the records it has not seen yet, see
    /// [`Store::unlocks_after`]). `false` if there is no such user.
    fn unlock_user(
        &self,
        account: &str,
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The unlock records with an id greater than `after`, oldest first.
    fn unlocks_after(
        &self,
        after: u64,
    ) -> impl Future<Output = Result<Vec<Unlock>, StoreError>> + Send;

    // ----- aliases -----

    /// Makes `alias` another name of `account`. Errors:
    /// [`StoreError::AlreadyExists`] (an account or an alias has that name),
    /// [`StoreError::UnknownAccount`] (no such account; an alias of an alias
    /// is refused the same way).
    fn add_alias(
        &self,
        alias: &str,
        account: &str,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes an alias; `false` if there was none of that name.
    fn remove_alias(&self, alias: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every alias, by name.
    fn list_aliases(&self) -> impl Future<Output = Result<Vec<Alias>, StoreError>> + Send;

    /// The account that mail for `name` goes to: `name` itself if it is an
    /// account, the alias's account if it is an alias, else `None`.
    fn resolve_account(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<String>, StoreError>> + Send;

    // ----- reset tokens -----

    /// Records a reset token for `account` (the SHA-256 of the token).
    /// Errors: [`StoreError::UnknownAccount`], [`StoreError::AlreadyExists`]
    /// (that hash exists).
    fn create_reset(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the reset token exists, is for `account`, is unused and is
    /// unexpired at `now`.
    fn reset_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Replaces the identity key and the login material of `account` with
    /// the reset token `token_hash`, in one transaction: the token must be
    /// valid at `now` and is consumed (with every other reset token of the
    /// account), and the cached key statement of the old key is removed.
    /// Errors: [`StoreError::ResetTokenInvalid`] (nothing changes).
    fn reset_user(
        &self,
        account: &str,
        token_hash: [u8; 32],
        identity_pk: [u8; 32],
        credentials: Credentials,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ----- invites -----

    /// Records an invite for `account`, identified by the SHA-256 of its
    /// token. Errors: [`StoreError::AlreadyExists`] if that hash exists.
    fn create_invite(
        &self,
        account: &str,
        token_hash: [u8; 32],
        expires_at: u64,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Whether the invite exists, is for `account`, is unused and is
    /// unexpired at `now`.
    fn invite_valid(
        &self,
        account: &str,
        token_hash: [u8; 32],
        now: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ----- maintenance -----

    /// Removes expired invites, de-duplication entries past retention (never
    /// one whose message is still in a mailbox), staged blobs left
    /// unreferenced past their grace period, and expired remote key
    /// statements; then trims the remote statement cache and the pins to
    /// the bounds in `retention`.
    fn purge_expired(
        &self,
        now: u64,
        retention: Retention,
    ) -> impl Future<Output = Result<PurgeReport, StoreError>> + Send;

    // ----- server secrets -----

    /// The secret called `name`; if there is none yet, stores `candidate`
    /// and returns it. Several callers (or nodes) racing all get the same
    /// value.
    fn secret_get_or_init(
        &self,
        name: &str,
        candidate: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    // ----- local key statements -----

    /// Caches the key statement the server issued for its user `account`,
    /// replacing the previous one. Errors: [`StoreError::UnknownAccount`].
    fn put_key_statement(
        &self,
        account: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The cached key statement of `account`, expired or not (the caller
    /// renews it).
    fn key_statement(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Option<KeyStatement>, StoreError>> + Send;

    // ----- message blobs -----

    /// Starts a blob to be uploaded chunk by chunk.
    fn stage_begin(&self, now: u64) -> impl Future<Output = Result<StagedBlob, StoreError>> + Send;

    /// Appends the next chunk (1 to [`MAX_CHUNK`](crate::MAX_CHUNK) bytes,
    /// durable on return). Chunks are numbered in the order the appends
    /// complete: await each append before starting the next. Errors:
    /// [`StoreError::BlobNotFound`] if the blob was referenced or purged.
    fn stage_append(
        &self,
        blob: &StagedBlob,
        chunk: Bytes,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Removes a staged blob and its chunks at once: the message it was for
    /// was refused or abandoned. `false` (and nothing changes) if the blob
    /// is no longer staged: referenced by a delivery or a queue entry (whose
    /// bytes are never touched), purged, or aborted before.
    fn stage_abort(
        &self,
        blob: &StagedBlob,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Chunk `seq` of a blob; `None` past the end or once the blob is gone.
    fn read_chunk(
        &self,
        blob: BlobRef,
        seq: u32,
    ) -> impl Future<Output = Result<Option<Bytes>, StoreError>> + Send;

    // ----- mailbox -----

    /// Stores a message in a local mailbox, unless its hash was delivered
    /// before: then nothing is stored (a staged body is discarded) and the
    /// result says `duplicate` with the original id (0 if deleted since).
    /// Durable on return. Errors: [`StoreError::UnknownAccount`],
    /// [`StoreError::BlobNotFound`], [`StoreError::InvalidInput`] (size does
    /// not match the body).
    fn deliver(
        &self,
        delivery: NewDelivery,
    ) -> impl Future<Output = Result<Delivered, StoreError>> + Send;

    /// As [`deliver`](Self::deliver), filed into `folder` with `flags`
    /// (a copy of sent mail the user files itself, PROTOCOL.md §13.6).
    fn deliver_into(
        &self,
        delivery: NewDelivery,
        folder: &str,
        flags: u32,
    ) -> impl Future<Output = Result<Delivered, StoreError>> + Send;

    /// Up to `limit` entries of `account` with ids below `before` (0: no
    /// bound), highest id first, and the mailbox's state read before them.
    /// Errors: [`StoreError::UnknownAccount`].
    fn mailbox_page(
        &self,
        account: &str,
        before: u64,
        limit: usize,
    ) -> impl Future<Output = Result<MailboxPage, StoreError>> + Send;

    /// Up to `limit` changes of `account` with a modseq above `since`, lowest
    /// first: entries that arrived or changed (in their current state) and
    /// removals; and the mailbox's state read before them. Errors:
    /// [`StoreError::UnknownAccount`].
    fn mailbox_changes(
        &self,
        account: &str,
        since: u64,
        limit: usize,
    ) -> impl Future<Output = Result<MailboxChanges, StoreError>> + Send;

    /// Sets the bits `set` and clears the bits `clear` of the entries `ids` of
    /// `account`; each entry whose flags change gets the next modseq. Ids
    /// without an entry are ignored. Errors: [`StoreError::UnknownAccount`].
    fn set_flags(
        &self,
        account: &str,
        ids: Vec<u64>,
        set: u32,
        clear: u32,
    ) -> impl Future<Output = Result<FlagsChanged, StoreError>> + Send;

    /// Files the entries `ids` of `account` into `folder` (PROTOCOL.md
    /// §13.7); each entry whose folder changes gets the next modseq. Ids
    /// without an entry, and entries already in `folder`, are left alone.
    /// Errors: [`StoreError::UnknownAccount`].
    fn move_messages(
        &self,
        account: &str,
        ids: Vec<u64>,
        folder: &str,
    ) -> impl Future<Output = Result<FlagsChanged, StoreError>> + Send;

    /// The messages of `account`, by id.
    fn list_mailbox(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Vec<MailboxEntry>, StoreError>> + Send;

    /// One message of `account` and where to read its bytes; `None` if no
    /// such message belongs to `account`.
    fn mailbox_message(
        &self,
        account: &str,
        id: u64,
    ) -> impl Future<Output = Result<Option<(MailboxEntry, BlobRef)>, StoreError>> + Send;

    /// Deletes one message of `account` with its bytes, leaving a tombstone
    /// with the next modseq; `false` if no such message belongs to `account`.
    fn delete_message(
        &self,
        account: &str,
        id: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    // ----- outbound relay queue -----

    /// Queues a message for relay, due at once. Durable on return. A hash
    /// already queued returns the existing entry (`duplicate`).
    fn enqueue(
        &self,
        item: NewOutbound,
    ) -> impl Future<Output = Result<Enqueued, StoreError>> + Send;

    /// Leases up to `limit` entries that are due at `now`, not held, and not
    /// leased (or whose lease expired) to `node` until `lease_until`,
    /// atomically: two nodes never hold the same entry. Entries past
    /// `expires_at` are returned too; the caller fails them with a notice.
    fn lease_due(
        &self,
        now: u64,
        node: &str,
        lease_until: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<OutboundEntry>, StoreError>> + Send;

    /// Like [`lease_due`](Self::lease_due), but leases at most `per_domain`
    /// entries per destination domain, counting the entries of that domain
    /// the caller already has in flight (`in_flight`: domain and count;
    /// domains not listed have none). Due entries are taken in due order;
    /// entries of a domain at its limit are skipped, so one busy or slow
    /// destination does not keep the others' mail waiting. Atomic like
    /// `lease_due`.
    fn lease_due_per_domain(
        &self,
        now: u64,
        node: &str,
        lease_until: u64,
        limit: usize,
        per_domain: usize,
        in_flight: &[(String, usize)],
    ) -> impl Future<Output = Result<Vec<OutboundEntry>, StoreError>> + Send;

    /// Postpones every entry for `domain` that nobody holds (no lease, or an
    /// expired one at `now`) and is due before `until` to `until` (never
    /// later than its `expires_at`, never earlier than it was), without
    /// counting an attempt: the destination is unreachable, so its other
    /// messages need not each find that out. Returns how many changed.
    fn defer_domain(
        &self,
        domain: &str,
        now: u64,
        until: u64,
    ) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The entry was delivered: removes it and its bytes. `false` if `node`
    /// no longer holds its lease (another node took it over), and nothing
    /// changes.
    fn complete(
        &self,
        id: u64,
        node: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The attempt failed: counts it, records `error`, clears the lease and
    /// schedules the next attempt. `false` if `node` no longer holds the
    /// lease.
    fn retry_later(
        &self,
        id: u64,
        node: &str,
        next_attempt_at: u64,
        error: &str,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The relay gives up: removes the entry and delivers `notice` (whose
    /// account must be the entry's sender) in one transaction, so the notice
    /// is never lost nor doubled. `false` if `node` no longer holds the lease
    /// (nothing changes). If the sender's account no longer exists, the
    /// entry is removed and the notice dropped.
    fn fail_with_notice(
        &self,
        id: u64,
        node: &str,
        error: &str,
        notice: NewDelivery,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Every queue entry, by id.
    fn list_queue(&self) -> impl Future<Output = Result<Vec<OutboundEntry>, StoreError>> + Send;

    /// One queue entry.
    fn queue_entry(
        &self,
        id: u64,
    ) -> impl Future<Output = Result<Option<OutboundEntry>, StoreError>> + Send;

    /// Removes a queue entry and its bytes, whoever holds its lease (an
    /// attempt in progress then finds it gone and changes nothing); no
    /// notice is sent. `false` if there is no such entry.
    fn delete_queued(&self, id: u64) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Holds (`true`) or releases (`false`) a queue entry: a held entry is
    /// never leased ([`Store::lease_due`]) until it is released. An attempt
    /// already in progress finishes. `false` if there is no such entry.
    fn set_held(
        &self,
        id: u64,
        held: bool,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Makes one entry due at `now` unless it is held or leased; `false` if
    /// it is not there, held, or leased.
    fn retry_now(&self, id: u64, now: u64)
    -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Makes every deferred entry that nobody holds and that is not held due
    /// at `now`; returns how many changed.
    fn retry_all_now(&self, now: u64) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// The space the store occupies, in bytes (SQLite: the database file
    /// and its write-ahead log; PostgreSQL: the whole database, as
    /// `pg_database_size` reports it, shared by every node).
    fn size(&self) -> impl Future<Output = Result<u64, StoreError>> + Send;

    /// Queue figures at `now`.
    fn queue_stats(&self, now: u64) -> impl Future<Output = Result<QueueStats, StoreError>> + Send;

    // ----- pinned remote server keys -----

    /// The key pinned for `domain`, if any.
    fn pin(&self, domain: &str) -> impl Future<Output = Result<Option<Pin>, StoreError>> + Send;

    /// Pins `key` for `domain` (the caller decides whether a change is
    /// allowed). The same key again only updates `updated_at`; a different
    /// key restarts `first_seen`.
    fn set_pin(
        &self,
        domain: &str,
        key: [u8; 32],
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    // ----- remote key statement cache -----

    /// Caches the key statement of `account@domain` until `expires_at`.
    fn cache_statement(
        &self,
        account: &str,
        domain: &str,
        statement: Vec<u8>,
        expires_at: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The cached statement of `account@domain` if it is unexpired at `now`.
    fn cached_statement(
        &self,
        account: &str,
        domain: &str,
        now: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;
}

/// Reads a blob one chunk at a time, holding at most one chunk.
#[derive(Debug)]
pub struct BlobReader<S> {
    store: S,
    blob: BlobRef,
    next: u32,
}

impl<S: Store> BlobReader<S> {
    /// A reader of `blob` through `store`.
    pub fn new(store: S, blob: BlobRef) -> Self {
        BlobReader {
            store,
            blob,
            next: 0,
        }
    }

    /// The next chunk, or `None` at the end. Errors with
    /// [`StoreError::BlobNotFound`] if the blob vanished (its message was
    /// deleted) before the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StoreError> {
        if self.next >= self.blob.chunks {
            return Ok(None);
        }
        match self.store.read_chunk(self.blob, self.next).await? {
            Some(chunk) => {
                self.next += 1;
                Ok(Some(chunk))
            }
            None => Err(StoreError::BlobNotFound),
        }
    }
}

/// Which backend to open, and how.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum StoreConfig {
    /// The embedded SQLite backend.
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::SqliteConfig),
    /// The shared PostgreSQL backend.
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PostgresConfig),
}

/// A store of whichever backend the configuration chose. Implements
/// [`Store`] by delegation.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum AnyStore {
    /// The embedded SQLite backend.
    #[cfg(feature = "sqlite")]
    Sqlite(crate::sqlite::SqliteStore),
    /// The shared PostgreSQL backend.
    #[cfg(feature = "postgres")]
    Postgres(crate::postgres::PostgresStore),
}

impl AnyStore {
    /// Opens (creating or migrating if needed) the configured store.
    pub async fn open(config: StoreConfig) -> Result<AnyStore, StoreError> {
        match config {
            #[cfg(feature = "sqlite")]
            StoreConfig::Sqlite(c) => {
                Ok(AnyStore::Sqlite(crate::sqlite::SqliteStore::open(c).await?))
            }
            #[cfg(feature = "postgres")]
            StoreConfig::Postgres(c) => Ok(AnyStore::Postgres(
                crate::postgres::PostgresStore::open(c).await?,
            )),
        }
    }
}

/// Implements every [`Store`] method of [`AnyStore`] by matching on the
/// backend. A new backend is one more arm here.
macro_rules! delegate {
    ($( fn $name:ident(&self $(, $arg:ident : $ty:ty)* ) -> $ret:ty; )*) => {
        $(
            async fn $name(&self $(, $arg: $ty)*) -> Result<$ret, StoreError> {
                match self {
                    #[cfg(feature = "sqlite")]
                    AnyStore::Sqlite(s) => s.$name($($arg),*).await,
                    #[cfg(feature = "postgres")]
                    AnyStore::Postgres(s) => s.$name($($arg),*).await,
                }
            }
        )*
    };
}

impl Store for AnyStore {
    delegate! {
        fn create_user(&self, user: NewUser, invite: Option<[u8; 32]>, now: u64) -> ();
        fn user(&self, account: &str) -> Option<User>;
        fn list_users(&self) -> Vec<UserSummary>;
        fn ksf_histogram(&self) -> Vec<([u8; 12], u64)>;
        fn delete_user(&self, account: &str) -> bool;
        fn update_credentials(&self, account: &str, credentials: Credentials, now: u64) -> bool;
        fn set_quota(&self, account: &str, quota: Option<u64>) -> bool;
        fn quota(&self, account: &str) -> Option<Option<u64>>;
        fn mailbox_usage(&self, account: &str) -> MailboxUsage;
        fn claim_quota_notice(&self, account: &str, now: u64, interval: u64) -> bool;
        fn unlock_user(&self, account: &str, now: u64) -> bool;
        fn unlocks_after(&self, after: u64) -> Vec<Unlock>;
        fn add_alias(&self, alias: &str, account: &str, now: u64) -> ();
        fn remove_alias(&self, alias: &str) -> bool;
        fn list_aliases(&self) -> Vec<Alias>;
        fn resolve_account(&self, name: &str) -> Option<String>;
        fn create_reset(&self, account: &str, token_hash: [u8; 32], expires_at: u64, now: u64) -> ();
        fn reset_valid(&self, account: &str, token_hash: [u8; 32], now: u64) -> bool;
        fn reset_user(&self, account: &str, token_hash: [u8; 32], identity_pk: [u8; 32], credentials: Credentials, now: u64) -> ();
        fn create_invite(&self, account: &str, token_hash: [u8; 32], expires_at: u64, now: u64) -> ();
        fn invite_valid(&self, account: &str, token_hash: [u8; 32], now: u64) -> bool;
        fn purge_expired(&self, now: u64, retention: Retention) -> PurgeReport;
        fn secret_get_or_init(&self, name: &str, candidate: Vec<u8>) -> Vec<u8>;
        fn put_key_statement(&self, account: &str, statement: Vec<u8>, expires_at: u64) -> ();
        fn key_statement(&self, account: &str) -> Option<KeyStatement>;
        fn stage_begin(&self, now: u64) -> StagedBlob;
        fn stage_append(&self, blob: &StagedBlob, chunk: Bytes) -> ();
        fn stage_abort(&self, blob: &StagedBlob) -> bool;
        fn read_chunk(&self, blob: BlobRef, seq: u32) -> Option<Bytes>;
        fn deliver(&self, delivery: NewDelivery) -> Delivered;
        fn deliver_into(&self, delivery: NewDelivery, folder: &str, flags: u32) -> Delivered;
        fn mailbox_page(&self, account: &str, before: u64, limit: usize) -> MailboxPage;
        fn mailbox_changes(&self, account: &str, since: u64, limit: usize) -> MailboxChanges;
        fn set_flags(&self, account: &str, ids: Vec<u64>, set: u32, clear: u32) -> FlagsChanged;
        fn move_messages(&self, account: &str, ids: Vec<u64>, folder: &str) -> FlagsChanged;
        fn list_mailbox(&self, account: &str) -> Vec<MailboxEntry>;
        fn mailbox_message(&self, account: &str, id: u64) -> Option<(MailboxEntry, BlobRef)>;
        fn delete_message(&self, account: &str, id: u64) -> bool;
        fn enqueue(&self, item: NewOutbound) -> Enqueued;
        fn lease_due(&self, now: u64, node: &str, lease_until: u64, limit: usize) -> Vec<OutboundEntry>;
        fn lease_due_per_domain(&self, now: u64, node: &str, lease_until: u64, limit: usize, per_domain: usize, in_flight: &[(String, usize)]) -> Vec<OutboundEntry>;
        fn defer_domain(&self, domain: &str, now: u64, until: u64) -> u64;
        fn complete(&self, id: u64, node: &str) -> bool;
        fn retry_later(&self, id: u64, node: &str, next_attempt_at: u64, error: &str) -> bool;
        fn fail_with_notice(&self, id: u64, node: &str, error: &str, notice: NewDelivery) -> bool;
        fn list_queue(&self) -> Vec<OutboundEntry>;
        fn queue_entry(&self, id: u64) -> Option<OutboundEntry>;
        fn delete_queued(&self, id: u64) -> bool;
        fn set_held(&self, id: u64, held: bool) -> bool;
        fn retry_now(&self, id: u64, now: u64) -> bool;
        fn retry_all_now(&self, now: u64) -> u64;
        fn size(&self) -> u64;
        fn queue_stats(&self, now: u64) -> QueueStats;
        fn pin(&self, domain: &str) -> Option<Pin>;
        fn set_pin(&self, domain: &str, key: [u8; 32], now: u64) -> ();
        fn cache_statement(&self, account: &str, domain: &str, statement: Vec<u8>, expires_at: u64) -> ();
        fn cached_statement(&self, account: &str, domain: &str, now: u64) -> Option<Vec<u8>>;
    }
}
