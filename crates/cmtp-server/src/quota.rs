//! Mailbox quotas (`cmtpd user quota NAME SIZE`).
//!
//! The MAIL path asks [`Shared::check_quota`] once the envelope names a
//! local mailbox. A mailbox at or over its quota, or one that the message's
//! announced size (body and log; the attachments are not announced yet)
//! would take over it, refuses the message with TEMPFAILURE (PROTOCOL.md
//! §7.4): the sender's server keeps it and retries, as SMTP servers do with
//! 452 "mailbox full", until the user makes room or the sender's queue
//! lifetime ends. A mailbox may therefore exceed its quota by the
//! attachments of the last message it accepted.
//!
//! The owner learns of it from a notice the server puts into the mailbox
//! (the quota does not apply to it): a message from the server itself,
//! sealed to the owner's key and signed by the server key, like the
//! delivery failure notices of PROTOCOL.md §10.3; at most one per
//! `accounts.quota_notice_interval_hours`, for all nodes together.

use std::sync::Arc;

use cmtp_proto::content::Content;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::message::Source;
use cmtp_proto::names::{Account, Address};
use cmtp_store::{MessageBody, NewDelivery, Store};

use crate::state::{Shared, now, rfc3339};

impl Shared {
    /// Whether `account`'s mailbox may take a message of at least
    /// `announced` bytes. `Err` holds the text of the TEMPFAILURE to answer;
    /// the owner is then sent a notice (in the background, at most once per
    /// interval).
    pub async fn check_quota(
        self: &Arc<Self>,
        account: &Account,
        announced: u64,
    ) -> Result<(), String> {
        match self.store.quota(account.as_str()).await {
            Ok(Some(quota)) => self.check_quota_of(account, quota, announced).await,
            // Vanished meanwhile: the delivery will say so.
            Ok(None) => Ok(()),
            Err(e) => Err(format!("temporary failure, try again later: {e}")),
        }
    }

    /// As [`check_quota`](Self::check_quota) for an account whose record
    /// the caller has just read (`quota` is its [`cmtp_store::User::quota`]):
    /// no read at all when it has no quota.
    pub async fn check_quota_of(
        self: &Arc<Self>,
        account: &Account,
        quota: Option<u64>,
        announced: u64,
    ) -> Result<(), String> {
        let Some(quota) = quota else {
            return Ok(());
        };
        let usage = match self.store.mailbox_usage(account.as_str()).await {
            Ok(u) => u,
            Err(e) => return Err(format!("temporary failure, try again later: {e}")),
        };
        if usage.bytes < quota && usage.bytes.saturating_add(announced) <= quota {
            return Ok(());
        }
        metrics::counter!("cmtp_quota_refusals_total").increment(1);
        tracing::info!(account = %account, usage = usage.bytes, quota, announced, "mailbox over quota; message refused");
        let sh = Arc::clone(self);
        let owner = account.clone();
        tokio::spawn(async move { sh.quota_notice(&owner, usage.bytes, quota).await });
        Err(format!(
            "the mailbox of {account}@{} is full ({} of {} used); try again later",
            self.domain,
            human_bytes(usage.bytes),
            human_bytes(quota)
        ))
    }

    /// Puts one "mailbox full" notice into `account`'s mailbox unless one
    /// was sent within the configured interval.
    async fn quota_notice(&self, account: &Account, used: u64, quota: u64) {
        let interval = self
            .cfg()
            .accounts
            .quota_notice_interval_hours
            .saturating_mul(3600);
        match self
            .store
            .claim_quota_notice(account.as_str(), now(), interval)
            .await
        {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(account = %account, error = %e, "cannot record the quota notice; not sent");
                return;
            }
        }
        let notice = match self.build_quota_notice(account, used, quota).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(account = %account, error = %e, "building the quota notice failed");
                return;
            }
        };
        let hash = hex::encode(notice.hash);
        match self.store.deliver(notice).await {
            Ok(_) => {
                tracing::info!(account = %account, %hash, "mailbox full notice delivered")
            }
            Err(e) => {
                tracing::warn!(account = %account, %hash, error = %e, "delivering the quota notice failed")
            }
        }
    }

    async fn build_quota_notice(
        &self,
        account: &Account,
        used: u64,
        quota: u64,
    ) -> anyhow::Result<NewDelivery> {
        let user = self
            .store
            .user(account.as_str())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the account is gone"))?;
        let key = PublicKey::from_bytes(&user.identity_pk)?;
        let to = Address::new(account.clone(), self.domain.clone());
        let t = now();
        let content = Content {
            subject: "Your mailbox is full".into(),
            date: rfc3339(t),
            text: format!(
                "Quota: {}\nUsed: {}\n\n\
                 Your mailbox {to} holds {} of the {} your administrator allows. \
                 Mail to you is being refused with a temporary failure: senders' servers \
                 keep it and try again for a while (usually some days), then give up. \
                 Delete messages to make room, or ask your administrator for a larger quota.\n\n\
                 This notice is sent at most once every {} hours.\n",
                quota,
                used,
                human_bytes(used),
                human_bytes(quota),
                self.cfg().accounts.quota_notice_interval_hours
            ),
            ..Content::default()
        };
        let source = Source::server(self.domain.clone());
        let mut msg =
            content.seal_as(source.clone(), &self.key, &to, &key, &mut rand_core::OsRng)?;
        // The trailer stays zero: the notice never leaves the domain (§7.3).
        let hash = msg.hash();
        msg.log = format!(
            "{} {} mailbox full notice for {to}\n",
            rfc3339(t),
            self.domain
        )
        .into_bytes();
        let bytes = msg.to_bytes();
        Ok(NewDelivery {
            account: account.as_str().to_owned(),
            hash,
            source: source.to_string(),
            received_at: t,
            version: msg.version,
            attachment_count: 0,
            size: bytes.len() as u64,
            body: MessageBody::Inline(bytes.into()),
        })
    }
}

/// `bytes` for people: `512 B`, `1.5 KiB`, `64.0 MiB`, `2.0 GiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

/// A size as people write it: `1048576`, `512K`, `100M`, `1.5G`, `2GiB`,
/// `10 MB` (K, M, G, T are powers of 1024, with or without `i`/`B`).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let factor: u64 = match unit.trim_end_matches('b').trim_end_matches('i') {
        "" => 1,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
            ));
        }
    };
    if unit == "i" || unit == "ib" {
        return Err(format!(
            "{text:?}: unknown unit {unit:?} (use K, M, G or T)"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size (e.g. 500M, 2G)"))?;
    let bytes = value * factor as f64;
    if !bytes.is_finite() || bytes < 0.0 || bytes > u64::MAX as f64 {
        return Err(format!("{text:?} is out of range"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_and_print_like_people_write_them() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("512K"), Ok(512 << 10));
        assert_eq!(parse_bytes("100M"), Ok(100 << 20));
        assert_eq!(parse_bytes("1.5G"), Ok(3 << 29));
        assert_eq!(parse_bytes("2GiB"), Ok(2 << 30));
        assert_eq!(parse_bytes("10 MB"), Ok(10 << 20));
        assert!(parse_bytes("ten").is_err());
        assert!(parse_bytes("5X").is_err());
        assert!(parse_bytes("5iB").is_err());
        assert!(parse_bytes("-5").is_err());
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(64 << 20), "64.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }
}
