//! Sending mail through the outbox, exactly once (PROTOCOL.md §7, §8,
//! §10.1, §13.6).
//!
//! 1. A composed message is put into the outbox of the local store before
//!    anything goes on the wire ([`crate::store::LocalStore::outbox_add`]).
//! 2. It is sealed once: for each recipient (To, Cc and Bcc) the key statement
//!    is fetched through the own server and verified against the pinned
//!    key of the recipient's domain — or, when the recipient's server is
//!    down right now, the cached statement that still verifies is used
//!    ([`Session::key_for_sealing`]); all keys are checked before anything
//!    is sealed, so a changed key stops the whole message, and with no key
//!    at all the message waits in the outbox. Each copy is sealed to its
//!    recipient and signed by the sender, with content version 2 (the To
//!    and Cc lists with names, one message id for all copies, the thread
//!    headers; a Bcc recipient's copy names only them under Bcc, the
//!    others' copies no Bcc at all); one more copy, sealed to the sender
//!    and naming every Bcc recipient, is the Sent copy. Each recipient's
//!    key is recorded with the contact ([`crate::contacts`]): a key that
//!    changed since it was first seen is reported. Every copy's size is checked against the
//!    server's limit from its greeting before a byte of it is sent. The
//!    sealed bytes are stored with the outbox entry.
//! 3. Each copy not yet accepted is submitted as it was sealed (MAIL), and
//!    the Sent copy filed with APPEND into `Sent`; each receipt is verified
//!    and recorded. A retry — automatic with backoff while the program runs,
//!    or `cmtp outbox flush` — sends the same bytes, and the server's
//!    de-duplication by message hash (§7.4) makes delivery exactly once,
//!    whether the earlier attempt died before, during or after the server
//!    stored the copy.
//! 4. When every copy is accepted the entry leaves the outbox. A copy the
//!    server refuses for good (no such user) is reported, and the message
//!    is kept as a draft so that the text is not lost.

use cmtp_proto::command::Command;
use cmtp_proto::content::{Attachment, Content, ContentVersion, Mailbox};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::Address;
use cmtp_proto::payload::mailbox::{ANSWERED, Folder, SEEN};
use cmtp_proto::statements::Receipt;
use rand::rngs::OsRng;

use cmtp_client::clock::{now, rfc3339};

use crate::address::parse_resolved;
use crate::compose::guess_media_type;
use crate::contacts::KeyChange;
use crate::failure::{Error, Result};
use crate::session::Session;
use crate::store::{Composed, LocalStore, OutboxCopy};

/// One copy accepted by the own server.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The recipient.
    pub recipient: String,
    /// The copy's message hash.
    pub hash: [u8; 32],
    /// Its size on the wire.
    pub size: u64,
    /// The own server's signed receipt (verified).
    pub receipt: Receipt,
    /// The copy goes on by SMTP: not end-to-end encrypted (PROTOCOL.md §19.3).
    pub by_smtp: bool,
}

/// Progress of a send, for a progress bar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Which copy (0-based).
    pub copy: usize,
    /// How many copies.
    pub copies: usize,
    /// Bytes of this copy sent so far.
    pub sent: u64,
    /// Size of this copy.
    pub len: u64,
}

/// What happened to one outbox entry.
#[derive(Debug, Default)]
pub struct Outcome {
    /// The outbox entry.
    pub outbox_id: u64,
    /// Copies to recipients the own server accepted in this attempt.
    pub delivered: Vec<Delivery>,
    /// Whether the Sent copy was filed.
    pub sent_copy_filed: bool,
    /// Recipients whose copy was refused for good, with why.
    pub failed: Vec<(String, Error)>,
    /// The draft that keeps the text when a copy was refused for good.
    pub kept_as_draft: Option<u64>,
    /// Recipients whose key changed since it was first seen.
    pub key_changes: Vec<KeyChange>,
}

/// The recipients of a composed message: To, Cc and Bcc (aliases must be
/// resolved already, see [`crate::address`]).
pub fn recipients(c: &Composed) -> Result<(Vec<Mailbox>, Vec<Mailbox>, Vec<Mailbox>)> {
    let parse = |list: &[String], what: &str| {
        parse_resolved(list).map_err(|e| Error::Invalid(format!("{what}: {e}")))
    };
    Ok((
        parse(&c.to, "--to")?,
        parse(&c.cc, "--cc")?,
        parse(&c.bcc, "--bcc")?,
    ))
}

/// Every recipient once, To first, then Cc, then Bcc.
fn all_recipients(to: &[Mailbox], cc: &[Mailbox], bcc: &[Mailbox]) -> Vec<Mailbox> {
    let mut out: Vec<Mailbox> = Vec::new();
    for m in to.iter().chain(cc).chain(bcc) {
        if !out.iter().any(|o| o.address == m.address) {
            out.push(m.clone());
        }
    }
    out
}

/// A new message id: 32 random hex digits `@` the sender's domain
/// (PROTOCOL.md §8.1).
pub fn new_message_id(domain: &cmtp_proto::names::Domain) -> String {
    let mut r = [0u8; 16];
    rand::RngCore::fill_bytes(&mut OsRng, &mut r);
    format!("{}@{domain}", hex::encode(r))
}

/// The content (version 2) of a composed message, dated `date` (unix
/// seconds), as the sender's own copy has it (with every Bcc recipient;
/// each recipient's copy is [`Content::for_recipient`]).
pub fn content(c: &Composed, message_id: &str, date: u64) -> Result<Content> {
    let (to, cc, bcc) = recipients(c)?;
    Ok(Content {
        version: ContentVersion::V2,
        from_name: c.from_name.clone(),
        reply_to: None,
        subject: c.subject.clone(),
        date: rfc3339(date),
        message_id: message_id.to_owned(),
        in_reply_to: c.in_reply_to.clone(),
        references: c.references.clone(),
        to,
        cc,
        bcc,
        text: c.text.clone(),
        attachments: c
            .attachments
            .iter()
            .map(|a| Attachment {
                name: a.name.clone(),
                media_type: if a.media_type.is_empty() {
                    guess_media_type(&a.name).to_owned()
                } else {
                    a.media_type.clone()
                },
                data: a.data.clone(),
            })
            .collect(),
    })
}

/// Checks what can be checked without a server: recipients, subject, the
/// inner body's limits.
pub fn validate(c: &Composed) -> Result<()> {
    let (to, cc, bcc) = recipients(c)?;
    if all_recipients(&to, &cc, &bcc).is_empty() {
        return Err(Error::Invalid(
            "no recipient: give at least one (`cmtp send bob@b.example`, --to, --cc or --bcc)"
                .into(),
        ));
    }
    content(c, "check@example.invalid", 0)?
        .inner_body()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    Ok(())
}

/// Seals the copies of outbox entry `id` (once) and stores them: one per
/// recipient and the Sent copy. Fails with [`Error::TooBig`] (nothing
/// stored, nothing sent) when a copy would exceed the server's limits.
/// Returns the recipients' keys that changed since they were first seen
/// (see [`crate::contacts`]).
pub async fn seal(
    session: &mut Session,
    store: &mut LocalStore,
    id: u64,
) -> Result<Vec<KeyChange>> {
    let entry = store
        .outbox_entry(id)?
        .ok_or_else(|| Error::NotFound(format!("no outbox entry {id}")))?;
    if entry.sealed {
        return Ok(Vec::new());
    }
    let draft = &entry.draft;
    let (to, cc, bcc) = recipients(draft)?;
    let all: Vec<Address> = all_recipients(&to, &cc, &bcc)
        .into_iter()
        .map(|m| m.address)
        .collect();
    let first = all
        .first()
        .cloned()
        .ok_or_else(|| Error::Invalid("no recipient".into()))?;
    let (from, identity) = {
        let (a, i) = session.account()?;
        (a.clone(), i.clone())
    };
    let limits = session.message_limits();
    if draft.attachments.len() as u64 > u64::from(limits.max_attachments) {
        return Err(Error::TooBig {
            size: 0,
            max: limits.max_message_size,
            detail: format!(
                "{} attachments, the server accepts at most {}",
                draft.attachments.len(),
                limits.max_attachments
            ),
        });
    }
    // A cheap check before any sealing: the plaintext alone is too big.
    let plain: u64 = draft.text.len() as u64
        + draft
            .attachments
            .iter()
            .map(|a| a.data.len() as u64 + 255)
            .sum::<u64>();
    if plain > limits.max_message_size {
        return Err(Error::TooBig {
            size: plain,
            max: limits.max_message_size,
            detail: String::new(),
        });
    }
    let mut content = content(draft, &new_message_id(&from.domain), entry.created_at)?;
    let all_bcc = content.bcc.clone();
    // Every key first: nothing is sealed if one of them is wrong.
    let mut keys: Vec<(Address, Option<PublicKey>)> = Vec::with_capacity(all.len());
    let mut by_smtp = Vec::new();
    let mut changes = Vec::new();
    for r in all {
        let key = if draft.plaintext {
            None
        } else {
            match session.key_for_sealing(&r).await {
                Ok(k) => {
                    changes.extend(store.observe_key(&r, &k.key, now())?);
                    Some(k.key)
                }
                // A domain without CMTP service: a plaintext copy, which the
                // own server delivers by SMTP, if the sender consented.
                Err(e) if crate::smtp::smtp_only(&e) => {
                    if !draft
                        .smtp_allowed
                        .iter()
                        .any(|a| a.eq_ignore_ascii_case(&r.to_string()))
                    {
                        return Err(crate::smtp::consent_needed(&r));
                    }
                    by_smtp.push(r.clone());
                    None
                }
                Err(e) => return Err(e),
            }
        };
        keys.push((r, key));
    }
    for m in to.iter().chain(&cc).chain(&bcc) {
        store.touch_contact(&m.address, &m.name, now())?;
    }
    let mut copies = Vec::with_capacity(keys.len() + 1);
    let own = identity.public();
    let sent_key = if draft.plaintext { None } else { Some(own) };
    for (idx, (recipient, key, kind)) in keys
        .into_iter()
        .map(|(r, k)| {
            let kind = if by_smtp.contains(&r) { "smtp" } else { "copy" };
            (r, k, kind)
        })
        .chain(std::iter::once((first, sent_key, "sent")))
        .enumerate()
    {
        // Each recipient's copy names Bcc recipients as §8.1 says
        // ([`Content::bcc_for`]); the Sent copy names them all. Only
        // the Bcc list changes between copies, so it is swapped in place
        // rather than the content (and its attachments) cloned.
        content.bcc = all_bcc.clone();
        if kind != "sent" {
            content.bcc = content.bcc_for(&recipient);
        }
        let message = match key {
            Some(k) => content.seal(&from, &identity, &recipient, &k, &mut OsRng),
            None => content.plaintext(&from, &recipient),
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let bytes = message.to_bytes();
        // The log is not counted in the size (PROTOCOL.md §7.1).
        let size = (bytes.len() - message.log.len()) as u64;
        if size > limits.max_message_size {
            return Err(Error::TooBig {
                size,
                max: limits.max_message_size,
                detail: String::new(),
            });
        }
        copies.push(OutboxCopy {
            idx: idx as u32,
            kind: kind.into(),
            recipient: recipient.to_string(),
            hash: message.hash(),
            bytes,
            done: false,
        });
    }
    store.outbox_seal(id, &copies)?;
    Ok(changes)
}

/// Sends what is left of outbox entry `id` (sealing it first if needed):
/// each copy not yet accepted, then the Sent copy. A transient failure
/// stops and is returned; the entry stays in the outbox.
pub async fn deliver(
    session: &mut Session,
    store: &mut LocalStore,
    id: u64,
    mut progress: impl FnMut(Progress),
) -> Result<Outcome> {
    let key_changes = seal(session, store, id).await?;
    let copies = store.outbox_copies(id)?;
    let mut outcome = Outcome {
        outbox_id: id,
        key_changes,
        ..Outcome::default()
    };
    let total = copies.len();
    for (n, copy) in copies.iter().enumerate() {
        if copy.done {
            continue;
        }
        let len = copy.bytes.len() as u64;
        progress(Progress {
            copy: n,
            copies: total,
            sent: 0,
            len,
        });
        let cmd = if copy.kind == "sent" {
            Command::Append {
                folder: Folder::sent(),
                flags: SEEN,
            }
        } else {
            Command::Mail
        };
        let result = session
            .submit_bytes(&cmd, &copy.bytes, &copy.hash, &copy.recipient, |sent| {
                progress(Progress {
                    copy: n,
                    copies: total,
                    sent,
                    len,
                })
            })
            .await;
        match result {
            Ok(receipt) => {
                store.outbox_copy_done(id, copy.idx, &receipt.to_bytes())?;
                if copy.kind == "sent" {
                    outcome.sent_copy_filed = true;
                } else {
                    outcome.delivered.push(Delivery {
                        recipient: copy.recipient.clone(),
                        hash: copy.hash,
                        size: len,
                        receipt,
                        by_smtp: copy.kind == "smtp",
                    });
                }
            }
            Err(e) if e.is_transient() || matches!(e, Error::Verification(_)) => {
                // Try again later; a receipt that does not verify is not proof.
                return Err(e);
            }
            Err(e) => {
                // Refused for good: no retry can help this copy.
                store.outbox_copy_done(id, copy.idx, &[])?;
                outcome.failed.push((copy.recipient.clone(), e));
            }
        }
    }
    let entry = store.outbox_entry(id)?;
    // A reply: the message it answers is flagged answered (pushed with
    // the next sync).
    if let Some(parent) = entry.as_ref().and_then(|e| e.draft.answers)
        && !outcome.delivered.is_empty()
    {
        store.set_flags(parent, ANSWERED, 0)?;
    }
    if !outcome.failed.is_empty()
        && let Some(entry) = &entry
    {
        let note = outcome
            .failed
            .iter()
            .map(|(r, e)| format!("not delivered to {r}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        outcome.kept_as_draft = Some(store.save_draft(None, &entry.draft, Some(&note), now())?);
    }
    store.outbox_remove(id)?;
    Ok(outcome)
}

/// When to try an entry again after `attempts` failures: 30 s doubling, at
/// most an hour.
pub fn backoff(attempts: u32) -> u64 {
    30u64.saturating_mul(1 << attempts.min(7)).min(3600)
}

/// A transient failure of entry `id`: remember it and when to try again.
pub fn record_failure(store: &LocalStore, id: u64, e: &Error) -> Result<()> {
    let attempts = store.outbox_entry(id)?.map_or(0, |o| o.attempts);
    store.outbox_failed(id, &e.to_string(), now() + backoff(attempts))
}

/// What a flush did.
#[derive(Debug, Default)]
pub struct Flushed {
    /// Entries sent (each with its outcome).
    pub sent: Vec<Outcome>,
    /// Entries still in the outbox, with the error of this attempt.
    pub kept: Vec<(u64, Error)>,
    /// Entries refused as too big (moved to drafts: entry, draft, error).
    pub too_big: Vec<(u64, u64, Error)>,
}

/// Sends every outbox entry (only those due at `now` when `only_due`),
/// oldest first. A transient failure of the connection stops the flush; an
/// entry whose recipient's key cannot be had now stays and the others go on.
pub async fn flush(
    session: &mut Session,
    store: &mut LocalStore,
    only_due: bool,
    mut progress: impl FnMut(Progress),
) -> Result<Flushed> {
    let mut flushed = Flushed::default();
    for entry in store.outbox()? {
        if only_due && entry.next_attempt_at > now() {
            continue;
        }
        match deliver(session, store, entry.id, &mut progress).await {
            Ok(o) => flushed.sent.push(o),
            Err(e @ Error::TooBig { .. }) => {
                let draft = keep_as_draft(store, entry.id, &e)?;
                flushed.too_big.push((entry.id, draft, e));
            }
            Err(e) if e.is_transient() => {
                record_failure(store, entry.id, &e)?;
                let connection_lost = matches!(e, Error::Client(_));
                flushed.kept.push((entry.id, e));
                if connection_lost {
                    break;
                }
            }
            Err(e) => {
                record_failure(store, entry.id, &e)?;
                flushed.kept.push((entry.id, e));
            }
        }
    }
    Ok(flushed)
}

/// Moves outbox entry `id` to the drafts (it cannot be sent as it is),
/// noting why; returns the draft's id.
pub fn keep_as_draft(store: &LocalStore, id: u64, why: &Error) -> Result<u64> {
    let entry = store
        .outbox_entry(id)?
        .ok_or_else(|| Error::NotFound(format!("no outbox entry {id}")))?;
    let draft = store.save_draft(None, &entry.draft, Some(&why.to_string()), now())?;
    store.outbox_remove(id)?;
    Ok(draft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), 30);
        assert_eq!(backoff(1), 60);
        assert_eq!(backoff(20), 3600);
    }

    #[test]
    fn composed_messages_are_checked_before_anything_is_sent() {
        let mut c = Composed {
            to: vec!["bob@b.test".into()],
            subject: "x".into(),
            ..Composed::default()
        };
        validate(&c).unwrap();
        c.to = vec!["not an address".into()];
        assert!(matches!(validate(&c), Err(Error::Invalid(_))));
        c.to.clear();
        assert!(validate(&c).is_err());
        c.to = vec!["bob@b.test".into()];
        c.subject = "x".repeat(256);
        assert!(validate(&c).is_err());
    }
}
