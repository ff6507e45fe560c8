//! The logged-in user's mailbox: LIST, FETCH, DELETE (PROTOCOL.md §13).

use cmtp_proto::names::{Account, Domain};
use cmtp_proto::payload::{ListingEntry, encode_listing};
use cmtp_proto::reply::Status;
use cmtp_store::{BlobReader, Store};

use crate::session::{Session, Stop};

/// Splits a stored source (`user@domain` or `@domain`) into its parts.
pub(crate) fn split_source(source: &str) -> (Option<Account>, Option<Domain>) {
    match source.rsplit_once('@') {
        Some((a, d)) => (Account::parse(a).ok(), Domain::parse(d).ok()),
        None => (None, None),
    }
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
