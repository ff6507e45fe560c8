//! Incremental sync of the server mailbox into the local store
//! (PROTOCOL.md §13.3–§13.5).
//!
//! 1. Flag changes and folder moves made on this device (offline too) are
//!    pushed (`FLAGS`, `MOVE`).
//! 2. The first time, the whole mailbox is listed newest first with
//!    `LISTPAGE`, a page at a time; the progress is saved after each page,
//!    so an interrupted listing goes on where it stopped. The modseq of the
//!    first page becomes the sync position once the listing is complete.
//! 3. From then on `CHANGES` since the sync position brings only what
//!    happened since — new messages, flags and folders changed on other
//!    devices, removals — so a sync costs O(changes) on the wire.
//! 4. Every message not fetched yet is fetched once (`FETCH`), decrypted and
//!    judged once ([`crate::mailbox::open_message`]), and stored with its
//!    verdict, in transactions of many messages.
//!
//! A new epoch (the account was created anew on the server) empties the
//! local copy and starts over.

use std::collections::HashMap;

use cmtp_client::clock::now;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::message::{Message, Source};
use cmtp_proto::payload::mailbox::{Change, Folder, MAX_PAGE};

use crate::failure::{Error, Result};
use crate::mailbox::{open_message, signer_needed};
use crate::session::Session;
use crate::store::LocalStore;

/// What a sync did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Summaries received (new or changed messages).
    pub summaries: u64,
    /// Messages removed here because they were removed on the server.
    pub removed: u64,
    /// Messages fetched, opened and stored.
    pub fetched: u64,
    /// Bytes of messages fetched.
    pub fetched_bytes: u64,
    /// Flag changes of this device pushed to the server.
    pub pushed_flags: u64,
    /// Whether the local copy was emptied first (a new epoch).
    pub reset: bool,
    /// Folder moves of this device pushed to the server.
    pub pushed_moves: u64,
    /// Senders whose key changed since it was first seen (see
    /// [`LocalStore::changed_keys`]).
    pub key_changes: u64,
}

/// Progress of a sync, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncProgress {
    /// Listing: summaries received so far.
    Listing(u64),
    /// Fetching: done so far, and how many in all.
    Fetching {
        /// Messages fetched so far.
        done: u64,
        /// Messages to fetch.
        total: u64,
    },
}

/// How many fetched messages are stored per transaction.
const FETCH_BATCH: usize = 200;

/// Brings `store` up to date with the server mailbox of `session`.
pub async fn sync(
    session: &mut Session,
    store: &mut LocalStore,
    mut progress: impl FnMut(SyncProgress),
) -> Result<SyncReport> {
    let mut report = SyncReport {
        pushed_flags: push_flags(session, store).await?,
        pushed_moves: push_moves(session, store).await?,
        ..SyncReport::default()
    };
    let mut state = store.sync_state()?;
    let limit = MAX_PAGE as u32;
    // The listing (first sync, or one that was interrupted).
    while !state.listed {
        let requested = state.listing_before;
        let page = session.list_page(requested, limit).await?;
        if state.epoch != page.epoch {
            if state.epoch != 0 {
                report.reset = true;
            }
            store.reset_mail()?;
            state = crate::store::SyncState {
                epoch: page.epoch,
                ..Default::default()
            };
            if requested != 0 {
                // That page belonged to the old id space: list from the top.
                store.set_sync_state(&state)?;
                continue;
            }
        }
        if state.listing_before == 0 {
            state.listing_modseq = page.modseq;
        }
        let n = page.entries.len();
        store.transaction(|s| {
            for e in &page.entries {
                s.upsert_summary(e)?;
            }
            Ok(())
        })?;
        report.summaries += n as u64;
        progress(SyncProgress::Listing(report.summaries));
        match page.entries.last() {
            Some(last) if n == limit as usize && last.uid > 1 => state.listing_before = last.uid,
            _ => {
                state.listed = true;
                state.modseq = state.listing_modseq;
            }
        }
        store.set_sync_state(&state)?;
    }
    // What happened since.
    loop {
        let set = session.changes(state.modseq, limit).await?;
        if set.epoch != state.epoch {
            // The account was created anew: start over.
            store.reset_mail()?;
            store.set_sync_state(&Default::default())?;
            return Box::pin(sync(session, store, progress)).await.map(|mut r| {
                r.reset = true;
                r
            });
        }
        store.transaction(|s| {
            for c in &set.changes {
                match c {
                    Change::Message(m) => {
                        s.upsert_summary(m)?;
                        report.summaries += 1;
                    }
                    Change::Removed { uid, .. } => {
                        if s.message(*uid)?.is_some() {
                            report.removed += 1;
                        }
                        s.remove(*uid)?;
                    }
                }
            }
            state.modseq = set.seen_up_to().max(state.modseq);
            s.set_sync_state(&state)
        })?;
        if !set.more {
            break;
        }
    }
    fetch_missing(session, store, &mut report, &mut progress).await?;
    Ok(report)
}

/// Pushes flag changes made on this device.
async fn push_flags(session: &mut Session, store: &mut LocalStore) -> Result<u64> {
    let pending = store.pending_flags()?;
    let mut groups: HashMap<(u32, u32), Vec<u64>> = HashMap::new();
    for (uid, set, clear) in &pending {
        groups.entry((*set, *clear)).or_default().push(*uid);
    }
    for ((set, clear), ids) in groups {
        session.set_flags(&ids, set, clear).await?;
        for id in ids {
            store.clear_pending_flags(id)?;
        }
    }
    Ok(pending.len() as u64)
}

/// Pushes folder moves made on this device (MOVE, PROTOCOL.md §13.7).
pub async fn push_moves(session: &mut Session, store: &mut LocalStore) -> Result<u64> {
    let pending = store.pending_moves()?;
    let mut groups: HashMap<&str, Vec<u64>> = HashMap::new();
    for (uid, folder) in &pending {
        groups.entry(folder.as_str()).or_default().push(*uid);
    }
    for (folder, ids) in groups {
        let f =
            Folder::parse(folder).map_err(|e| Error::Invalid(format!("folder {folder:?}: {e}")))?;
        session.move_to(&ids, &f).await?;
        for id in ids {
            store.clear_pending_move(id)?;
        }
    }
    Ok(pending.len() as u64)
}

/// Fetches, opens and stores every message not fetched yet, newest first.
async fn fetch_missing(
    session: &mut Session,
    store: &mut LocalStore,
    report: &mut SyncReport,
    progress: &mut impl FnMut(SyncProgress),
) -> Result<()> {
    let missing = store.unfetched()?;
    if missing.is_empty() {
        return Ok(());
    }
    let total = missing.len() as u64;
    let (me, identity) = {
        let (a, i) = session.account()?;
        (a.clone(), i.clone())
    };
    let limits = session.message_limits();
    // Sender keys looked up once per sync.
    let mut keys: HashMap<Source, std::result::Result<PublicKey, String>> = HashMap::new();
    for chunk in missing.chunks(FETCH_BATCH) {
        let mut batch = Vec::with_capacity(chunk.len());
        for &uid in chunk {
            let bytes = match session.fetch_bytes(uid).await {
                Ok(b) => b,
                // Removed on the server meanwhile: the next CHANGES says so.
                Err(Error::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let decoded = Message::decode(&bytes, limits).map_err(|e| e.to_string());
            let signer = decoded.as_ref().ok().and_then(|m| signer_needed(m, &me));
            let key = match signer.clone() {
                None => None,
                Some(source) => Some(match keys.get(&source) {
                    Some(k) => k.clone().map_err(Error::Verification),
                    None => match session.sender_key(&source).await {
                        Ok(k) => {
                            keys.insert(source, Ok(k));
                            Ok(k)
                        }
                        Err(e) if e.is_transient() => Err(e),
                        Err(e) => {
                            keys.insert(source, Err(e.to_string()));
                            Err(e)
                        }
                    },
                }),
            };
            let known_key = match (&key, &signer) {
                (Some(Ok(k)), Some(source)) => source.address().map(|a| (a, *k)),
                _ => None,
            };
            let opened = open_message(decoded, &me, &identity, key)?;
            report.fetched_bytes += bytes.len() as u64;
            batch.push((uid, bytes, opened, known_key));
        }
        let changes = store.transaction(|s| {
            let mut changes = 0;
            for (uid, bytes, opened, known_key) in &batch {
                s.store_fetched(*uid, bytes, opened)?;
                // The sender becomes a contact, with the key their
                // statement gave (a changed key is remembered).
                if let Some((address, key)) = known_key {
                    s.touch_contact(address, opened.from_name.as_deref().unwrap_or(""), now())?;
                    if s.observe_key(address, key, now())?.is_some() {
                        changes += 1;
                    }
                }
            }
            Ok(changes)
        })?;
        report.key_changes += changes;
        report.fetched += batch.len() as u64;
        progress(SyncProgress::Fetching {
            done: report.fetched,
            total,
        });
    }
    Ok(())
}
