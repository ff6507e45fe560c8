//! Sending mail (PROTOCOL.md §7, §8, §10.1): one sealed copy per recipient,
//! each submitted over the logged-in session and acknowledged by a signed
//! receipt.
//!
//! For each recipient (To and Cc) the key statement is fetched through the
//! user's own server and verified against the pinned key of the recipient's
//! domain ([`Session::user_key`]); all keys are checked before anything is
//! sent, so a changed key stops the whole message. Each copy is sealed to its
//! recipient and signed by the sender ([`Content::seal`]), submitted with
//! MAIL, and its receipt verified under the own server's key. Plaintext
//! (crypto system 0) is sent only when the draft asks for it explicitly.

use cmtp_proto::content::{Attachment, Content};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::names::Address;
use cmtp_proto::statements::Receipt;
use rand::rngs::OsRng;

use crate::clock::{now, rfc3339};
use crate::failure::{Error, Result};
use crate::session::Session;

/// A message to send.
#[derive(Debug, Clone, Default)]
pub struct Draft {
    /// The To recipients.
    pub to: Vec<Address>,
    /// The Cc recipients (listed in every copy).
    pub cc: Vec<Address>,
    /// The subject (at most 255 bytes).
    pub subject: String,
    /// The text.
    pub text: String,
    /// The attachments.
    pub attachments: Vec<Attachment>,
    /// Send unencrypted and unsigned (crypto system 0). Off unless asked.
    pub plaintext: bool,
}

impl Draft {
    /// Every recipient once, To first.
    pub fn recipients(&self) -> Vec<Address> {
        let mut out: Vec<Address> = Vec::new();
        for a in self.to.iter().chain(&self.cc) {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }

    /// The content every copy carries, dated `date` (unix seconds).
    pub fn content(&self, date: u64) -> Content {
        Content {
            reply_to: None,
            subject: self.subject.clone(),
            date: rfc3339(date),
            cc: self.cc.clone(),
            text: self.text.clone(),
            attachments: self.attachments.clone(),
        }
    }
}

/// One copy delivered to the own server.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The recipient.
    pub recipient: Address,
    /// The copy's message hash.
    pub hash: [u8; 32],
    /// Its size on the wire.
    pub size: u64,
    /// The own server's signed receipt (verified).
    pub receipt: Receipt,
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

/// What happened to each recipient.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Copies the own server accepted.
    pub delivered: Vec<Delivery>,
    /// Recipients whose copy was refused, with why.
    pub failed: Vec<(Address, Error)>,
}

/// Sends `draft` from the logged-in account of `session`.
///
/// Key problems (unknown user, a changed key, a statement that does not
/// verify) abort before any copy is sent; a refusal of one copy is recorded
/// in [`Outcome::failed`] and the others are still sent. Transient network
/// failures abort.
pub async fn send(
    session: &mut Session,
    draft: &Draft,
    mut progress: impl FnMut(Progress),
) -> Result<Outcome> {
    let recipients = draft.recipients();
    if recipients.is_empty() {
        return Err(Error::Invalid(
            "no recipient: give at least one --to".into(),
        ));
    }
    let (from, identity) = {
        let (a, i) = session.account()?;
        (a.clone(), i.clone())
    };
    let content = draft.content(now());
    content
        .inner_body()
        .map_err(|e| Error::Invalid(e.to_string()))?;
    // Every key first: nothing leaves if one of them is wrong.
    let mut keys: Vec<(Address, Option<PublicKey>)> = Vec::with_capacity(recipients.len());
    for r in recipients {
        let key = if draft.plaintext {
            None
        } else {
            Some(session.user_key(&r, true).await?.key)
        };
        keys.push((r, key));
    }
    let copies = keys.len();
    let mut outcome = Outcome::default();
    for (copy, (recipient, key)) in keys.into_iter().enumerate() {
        let message = match key {
            Some(k) => content.seal(&from, &identity, &recipient, &k, &mut OsRng),
            None => content.plaintext(&from, &recipient),
        }
        .map_err(|e| Error::Invalid(e.to_string()))?;
        let len = message.encoded_len() as u64;
        progress(Progress {
            copy,
            copies,
            sent: 0,
            len,
        });
        match session
            .submit(&message, |sent| {
                progress(Progress {
                    copy,
                    copies,
                    sent,
                    len,
                })
            })
            .await
        {
            Ok(receipt) => outcome.delivered.push(Delivery {
                recipient,
                hash: message.hash(),
                size: len,
                receipt,
            }),
            Err(e) if e.is_transient() => return Err(e),
            Err(e) => outcome.failed.push((recipient, e)),
        }
    }
    Ok(outcome)
}
