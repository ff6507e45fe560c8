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
    fn require_login(&self) -> Option<Account> {
        self.logged_in.clone()
    }

    pub(crate) async fn list(&mut self, digest: [u8; 32]) -> Result<(), Stop> {
        let Some(user) = self.require_login() else {
            return self
                .reply(
                    Status::AuthRequired,
                    b"LIST needs a logged-in session",
                    digest,
                )
                .await;
        };
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
                self.reply(Status::Success, &encode_listing(&entries), digest)
                    .await
            }
            Err(e) => self.temp_failure(&e.to_string(), digest).await,
        }
    }

    pub(crate) async fn fetch(&mut self, id: u64, digest: [u8; 32]) -> Result<(), Stop> {
        let Some(user) = self.require_login() else {
            return self
                .reply(
                    Status::AuthRequired,
                    b"FETCH needs a logged-in session",
                    digest,
                )
                .await;
        };
        let found = match self.sh.store.mailbox_message(user.as_str(), id).await {
            Ok(f) => f,
            Err(e) => return self.temp_failure(&e.to_string(), digest).await,
        };
        let Some((entry, blob)) = found else {
            let text = format!("no message {id} in this mailbox");
            return self.reply(Status::Failure, text.as_bytes(), digest).await;
        };
        let reader = std::sync::Arc::new(tokio::sync::Mutex::new(BlobReader::new(
            self.sh.store.clone(),
            blob,
        )));
        let peer = self.peer;
        self.reply_streamed(entry.size, digest, move || {
            let reader = reader.clone();
            async move {
                match reader.lock().await.next_chunk().await {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(%peer, error = %e, "reading a stored message failed");
                        None
                    }
                }
            }
        })
        .await
    }

    pub(crate) async fn delete(&mut self, id: u64, digest: [u8; 32]) -> Result<(), Stop> {
        let Some(user) = self.require_login() else {
            return self
                .reply(
                    Status::AuthRequired,
                    b"DELETE needs a logged-in session",
                    digest,
                )
                .await;
        };
        match self.sh.store.delete_message(user.as_str(), id).await {
            Ok(true) => self.reply(Status::Success, b"", digest).await,
            Ok(false) => {
                let text = format!("no message {id} in this mailbox");
                self.reply(Status::Failure, text.as_bytes(), digest).await
            }
            Err(e) => self.temp_failure(&e.to_string(), digest).await,
        }
    }
}
