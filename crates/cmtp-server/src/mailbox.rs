//! The logged-in user's mailbox (PROTOCOL.md §13): LIST, FETCH, DELETE;
//! the synchronisation commands LISTPAGE, CHANGES and FLAGS over per-user
//! ids, flags, folders and modseqs (§13.1, §13.3–§13.5); and the envelope
//! check of APPEND (§13.6), whose message is read by the MAIL path
//! (the connection state machine reads it as after MAIL; `crate::mail`).

use cmtp_proto::message::Envelope;
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::payload::mailbox::{
    Change, ChangeSet, FlagsResult, Folder, ListingPage, MAX_PAGE, Summary,
};
use cmtp_proto::payload::{FailureReason, ListingEntry, encode_listing};
use cmtp_proto::reply::Status;
use cmtp_store::{BlobReader, MailboxChange, MailboxEntry, Store, StoreError};

use crate::session::{Session, Stop};
use crate::state::{now, rfc3339};

/// Splits a stored source (`user@domain` or `@domain`) into its parts.
pub(crate) fn split_source(source: &str) -> (Option<Account>, Option<Domain>) {
    match source.rsplit_once('@') {
        Some((a, d)) => (Account::parse(a).ok(), Domain::parse(d).ok()),
        None => (None, None),
    }
}

/// A stored entry as a summary (`None` if its stored source is not a valid
/// address, which the server never stores).
fn summary(e: MailboxEntry) -> Option<Summary> {
    let (account, domain) = split_source(&e.source);
    Some(Summary {
        uid: e.id,
        modseq: e.modseq,
        flags: e.flags,
        folder: Folder::parse(&e.folder).unwrap_or_else(|_| Folder::inbox()),
        size: e.size,
        received_at: e.received_at,
        hash: e.hash,
        version: e.version,
        attachment_count: e.attachment_count,
        source_account: account,
        source_domain: domain?,
    })
}

/// The envelope check of APPEND (§13.6): logged in, and the message's source
/// is the logged-in user. Returns the envelope, the account and the log line.
pub(crate) fn decide_append(
    s: &Session,
    env: Envelope,
    folder: &Folder,
    flags: u32,
) -> Result<(Envelope, Account, String), crate::mail::Refusal> {
    let Some(user) = s.conn.logged_in().cloned() else {
        return Err(crate::mail::Refusal::status(
            Status::AuthRequired,
            "APPEND needs a logged-in session",
        ));
    };
    if env.source.domain != s.sh.domain || env.source.account.as_ref() != Some(&user) {
        return Err(crate::mail::Refusal::delivery(
            FailureReason::Refused,
            format!(
                "APPEND files only messages from {}, not from {}",
                s.address(&user),
                env.source
            ),
        ));
    }
    let line = format!(
        "{} {} filed by {user} from {} into {folder} with flags {flags}\n",
        rfc3339(now()),
        s.sh.domain,
        s.peer.ip()
    );
    Ok((env, user, line))
}

impl Session {
    /// The logged-in account (the connection lets mailbox commands through
    /// only when logged in).
    fn owner(&mut self) -> Option<Account> {
        let user = self.conn.logged_in().cloned();
        if user.is_none() {
            self.conn.reply(
                Status::AuthRequired,
                b"this command needs a logged-in session",
            );
        }
        user
    }

    fn mailbox_error(&mut self, e: StoreError) {
        match e {
            StoreError::UnknownAccount => self
                .conn
                .reply(Status::Failure, b"this account no longer exists"),
            e => self.temp_failure(&e),
        }
    }

    /// LISTPAGE (§13.3).
    pub(crate) async fn list_page(&mut self, before: u64, limit: u32) {
        let Some(user) = self.owner() else { return };
        let limit = (limit as usize).min(MAX_PAGE);
        match self
            .sh
            .store
            .mailbox_page(user.as_str(), before, limit)
            .await
        {
            Ok(p) => {
                let page = ListingPage {
                    epoch: p.state.epoch,
                    modseq: p.state.modseq,
                    entries: p.entries.into_iter().filter_map(summary).collect(),
                };
                self.conn.reply(Status::Success, &page.to_bytes());
            }
            Err(e) => self.mailbox_error(e),
        }
    }

    /// CHANGES (§13.4).
    pub(crate) async fn changes(&mut self, since: u64, limit: u32) {
        let Some(user) = self.owner() else { return };
        let limit = (limit as usize).min(MAX_PAGE);
        match self
            .sh
            .store
            .mailbox_changes(user.as_str(), since, limit)
            .await
        {
            Ok(c) => {
                let set = ChangeSet {
                    epoch: c.state.epoch,
                    modseq: c.state.modseq,
                    more: c.more,
                    changes: c
                        .changes
                        .into_iter()
                        .filter_map(|c| match c {
                            MailboxChange::Entry(e) => summary(e).map(Change::Message),
                            MailboxChange::Removed { id, modseq } => {
                                Some(Change::Removed { uid: id, modseq })
                            }
                        })
                        .collect(),
                };
                self.conn.reply(Status::Success, &set.to_bytes());
            }
            Err(e) => self.mailbox_error(e),
        }
    }

    /// FLAGS (§13.5).
    pub(crate) async fn flags(&mut self, set: u32, clear: u32, ids: Vec<u64>) {
        let Some(user) = self.owner() else { return };
        match self
            .sh
            .store
            .set_flags(user.as_str(), ids, set, clear)
            .await
        {
            Ok(f) => {
                let r = FlagsResult {
                    modseq: f.modseq,
                    changed: f.changed,
                };
                self.conn.reply(Status::Success, &r.to_bytes());
            }
            Err(e) => self.mailbox_error(e),
        }
    }

    /// MOVE (§13.7).
    pub(crate) async fn move_messages(&mut self, folder: Folder, ids: Vec<u64>) {
        let Some(user) = self.owner() else { return };
        match self
            .sh
            .store
            .move_messages(user.as_str(), ids, folder.as_str())
            .await
        {
            Ok(f) => {
                let r = FlagsResult {
                    modseq: f.modseq,
                    changed: f.changed,
                };
                self.conn.reply(Status::Success, &r.to_bytes());
            }
            Err(e) => self.mailbox_error(e),
        }
    }

    pub(crate) async fn list(&mut self) {
        let Some(user) = self.owner() else { return };
        match self.sh.store.list_mailbox(user.as_str()).await {
            Ok(entries) => {
                let entries: Vec<ListingEntry> = entries
                    .into_iter()
                    .filter_map(|e| {
                        let (account, domain) = split_source(&e.source);
                        Some(ListingEntry {
                            id: e.id,
                            size: e.size,
                            received_at: e.received_at,
                            hash: e.hash,
                            version: e.version,
                            attachment_count: e.attachment_count,
                            source_account: account,
                            source_domain: domain?,
                        })
                    })
                    .take(cmtp_proto::limits::MAX_LISTING)
                    .collect();
                self.conn.reply(Status::Success, &encode_listing(&entries));
            }
            Err(e) => self.temp_failure(&e),
        }
    }

    /// FETCH: the stored message streams from the store to the socket in
    /// chunks; the reply is signed at its end.
    pub(crate) async fn fetch(&mut self, id: u64) -> Result<(), Stop> {
        let Some(user) = self.owner() else {
            return Ok(());
        };
        let found = match self.sh.store.mailbox_message(user.as_str(), id).await {
            Ok(f) => f,
            Err(e) => {
                self.temp_failure(&e);
                return Ok(());
            }
        };
        let Some((entry, blob)) = found else {
            let text = format!("no message {id} in this mailbox");
            self.conn.reply(Status::Failure, text.as_bytes());
            return Ok(());
        };
        let mut reader = BlobReader::new(self.sh.store.clone(), blob);
        self.conn.begin_streamed_reply(entry.size);
        while self.conn.stream_remaining() > 0 {
            match reader.next_chunk().await {
                Ok(Some(chunk)) => self.conn.stream_body(&chunk),
                // The length was promised: a store that fails mid-way leaves
                // the connection unusable, so it is closed.
                Ok(None) => {
                    tracing::error!(peer = %self.peer, id, "a stored message is shorter than its size");
                    self.conn.abort();
                    return Err(Stop);
                }
                Err(e) => {
                    tracing::error!(peer = %self.peer, error = %e, "reading a stored message failed");
                    self.conn.abort();
                    return Err(Stop);
                }
            }
            self.flush_if_large().await?;
        }
        Ok(())
    }

    pub(crate) async fn delete(&mut self, id: u64) {
        let Some(user) = self.owner() else { return };
        match self.sh.store.delete_message(user.as_str(), id).await {
            Ok(true) => self.conn.reply(Status::Success, b""),
            Ok(false) => {
                let text = format!("no message {id} in this mailbox");
                self.conn.reply(Status::Failure, text.as_bytes());
            }
            Err(e) => self.temp_failure(&e),
        }
    }
}
