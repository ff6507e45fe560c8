//! Receiving a message after MAIL (PROTOCOL.md §6.2, §7.4) or APPEND
//! (§13.6): the envelope is checked as soon as it arrives, the rest streams
//! into the store in chunks, and SUCCESS with a signed receipt is sent only
//! once the message is durable.

use cmtp_proto::crypto::PublicKey;
use cmtp_proto::message::{Envelope, VERSION_PLAINTEXT};
use cmtp_proto::names::{Account, Domain};
use cmtp_proto::payload::{DeliveryFailure, FailureReason};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{ReceiptBody, sign_trailer, verify_trailer};
use cmtp_store::{NewDelivery, NewOutbound, Store, StoreError};

use std::sync::Arc;
use std::sync::atomic::Ordering;

use tracing::Instrument;

use crate::session::{Session, internal_error};
use crate::staging::BlobSink;
use crate::state::Shared;
use crate::state::{now, rfc3339};

/// What the message after the command is for.
pub(crate) enum Intake {
    /// MAIL: deliver or relay (§7.4).
    Mail,
    /// APPEND: file a message of the logged-in user's own into a folder of
    /// their mailbox (§13.6).
    Append {
        /// The folder.
        folder: cmtp_proto::payload::mailbox::Folder,
        /// Its initial flags.
        flags: u32,
    },
}

/// Where an accepted message goes.
enum Route {
    /// Into a local mailbox.
    Local(Account),
    /// Into the relay queue, submitted by a logged-in local user.
    Relay { sender: Account },
    /// Into a folder of the logged-in user's own mailbox (APPEND).
    File {
        account: Account,
        folder: String,
        flags: u32,
    },
}

/// A message being accepted: what the server keeps while its bytes arrive.
pub(crate) struct Accepting {
    env: Envelope,
    route: Route,
    /// Submitted by the logged-in source: the server signs the trailer if
    /// the message leaves the domain (PROTOCOL.md §7.3).
    submission: bool,
    /// Key of a foreign source domain, to check the trailer.
    source_key: Option<PublicKey>,
    sink: BlobSink,
    our_line: Vec<u8>,
    _in_flight: InFlight,
}

/// Counts a message in [`Shared::messages_in_flight`] while it lives.
struct InFlight(Arc<Shared>);

impl InFlight {
    fn new(sh: Arc<Shared>) -> InFlight {
        sh.messages_in_flight.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("cmtp_messages_in_flight").increment(1.0);
        InFlight(sh)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.messages_in_flight.fetch_sub(1, Ordering::Relaxed);
        metrics::gauge!("cmtp_messages_in_flight").decrement(1.0);
    }
}

/// A refusal decided from the envelope.
pub(crate) struct Refusal {
    status: Status,
    body: Vec<u8>,
}

impl Refusal {
    pub(crate) fn delivery(reason: FailureReason, text: impl Into<String>) -> Self {
        Refusal {
            status: Status::DeliveryFailure,
            body: DeliveryFailure::new(reason, text).to_bytes(),
        }
    }
    pub(crate) fn status(status: Status, text: impl Into<String>) -> Self {
        Refusal {
            status,
            body: text.into().into_bytes(),
        }
    }
    /// TEMPFAILURE for an internal error (details logged, not sent).
    fn internal(s: &Session, e: &dyn std::fmt::Display) -> Self {
        Refusal::status(Status::TempFailure, internal_error(s.peer, e))
    }
}

/// The envelope arrived (§7.4 steps 2–6): accept (and stage the head) or refuse.
pub(crate) async fn envelope(s: &mut Session, intake: Intake, env: Envelope, announced: u64) {
    match decide(s, env, &intake, announced).await {
        Ok(mut acc) => {
            // The head: header with the new log length, and the names.
            let mut head = Vec::with_capacity(300);
            acc.env
                .encode_head(acc.env.log_len + acc.our_line.len() as u64, &mut head);
            match acc.sink.push(&head).await {
                Ok(()) => {
                    s.conn.accept_mail(acc.our_line.len() as u64);
                    s.mail = Some(Box::new(acc));
                }
                Err(e) => refuse_store(s, e),
            }
        }
        Err(r) => refuse(s, r),
    }
}

/// Bytes of the accepted message, in stored form.
pub(crate) async fn data(s: &mut Session, bytes: &[u8]) {
    let Some(acc) = s.mail.as_mut() else { return };
    if let Err(e) = acc.sink.push(bytes).await {
        refuse_store(s, e);
    }
}

/// The message's announced size grew (an attachment's length arrived):
/// reserved before its bytes are.
pub(crate) fn announced(s: &mut Session, total: u64) {
    let Some(acc) = s.mail.as_mut() else { return };
    if let Err(r) = acc.sink.reserve(total) {
        let r = Refusal::status(Status::TempFailure, r.to_string());
        refuse(s, r);
    }
}

/// The log is complete (the connection checked the hop limit): our line.
pub(crate) async fn log_end(s: &mut Session) {
    let Some(acc) = s.mail.as_mut() else { return };
    let line = std::mem::take(&mut acc.our_line);
    if let Err(e) = acc.sink.push(&line).await {
        refuse_store(s, e);
    }
}

/// The connection gave up on the accepted message (a limit, a timeout, the
/// peer went away): what was staged for it is dropped.
pub(crate) fn aborted(s: &mut Session) {
    if s.mail.take().is_some() {
        metrics::counter!("cmtp_messages_refused_total", "reason" => "aborted").increment(1);
        tracing::info!(peer = %s.peer, "message abandoned before its end");
    }
}

fn refuse(s: &mut Session, r: Refusal) {
    metrics::counter!("cmtp_messages_refused_total", "reason" => r.status.word().to_owned())
        .increment(1);
    tracing::info!(peer = %s.peer, status = %r.status, reason = %String::from_utf8_lossy(&r.body).replace('\0', " "), "message refused");
    s.mail = None;
    s.conn.refuse_mail(r.status, &r.body);
}

fn refuse_store(s: &mut Session, e: StoreError) {
    tracing::error!(peer = %s.peer, error = %e, "store failed while receiving a message");
    let r = Refusal::internal(s, &e);
    refuse(s, r);
}

/// The span of a complete message (its hash) that every line logged while
/// refusing it, or refreshing the key its trailer failed under, carries.
/// Only made when there is something to log: an accepted message logs one
/// line with the hash as a field.
fn message_span(hash: &[u8; 32]) -> tracing::Span {
    tracing::info_span!("message", hash = %hex::encode(hash))
}

/// Checks the envelope (PROTOCOL.md §7.4 steps 1–6; §13.6 for APPEND) —
/// before any byte of the body is read — then reserves the message's bytes
/// announced so far (disk reserve, staging budgets).
async fn decide(
    s: &mut Session,
    env: Envelope,
    intake: &Intake,
    announced: u64,
) -> Result<Accepting, Refusal> {
    let sh = s.sh.clone();
    if env.version == VERSION_PLAINTEXT && sh.cfg().limits.refuse_plaintext {
        return Err(Refusal::delivery(
            FailureReason::Refused,
            "this server refuses plaintext (crypto system 0) mail",
        ));
    }
    if let Intake::Append { folder, flags } = intake {
        let (env, account, line) = crate::mailbox::decide_append(s, env, folder, *flags)?;
        let reservation = sh
            .admit_mail(s.peer.ip(), &env.source.domain, true, announced)
            .map_err(|r| Refusal::status(Status::TempFailure, r.to_string()))?;
        return Ok(Accepting {
            sink: BlobSink::new(&sh, reservation),
            env,
            route: Route::File {
                account,
                folder: folder.as_str().to_owned(),
                flags: *flags,
            },
            submission: true,
            source_key: None,
            our_line: line.into_bytes(),
            _in_flight: InFlight::new(sh.clone()),
        });
    }
    let ours = |d: &cmtp_proto::names::Domain| *d == sh.domain;
    let submitter = s.conn.logged_in().cloned();
    let is_submission = submitter
        .as_ref()
        .is_some_and(|u| ours(&env.source.domain) && env.source.account.as_ref() == Some(u));
    let route = if ours(&env.destination.domain) {
        match sh.resolve_local(&env.destination.account).await {
            Ok(Some(account)) => Route::Local(account),
            Ok(None) => {
                return Err(Refusal::delivery(
                    FailureReason::NoSuchUser,
                    format!("no user {} here", env.destination),
                ));
            }
            Err(e) => return Err(Refusal::internal(s, &e)),
        }
    } else if is_submission {
        Route::Relay {
            sender: submitter.clone().expect("submission has a user"),
        }
    } else {
        return Err(Refusal::delivery(
            FailureReason::NoRelay,
            format!(
                "{} is not a domain of this server, and relaying needs a login as the message's source",
                env.destination.domain
            ),
        ));
    };
    let mut source_key = None;
    if ours(&env.source.domain) {
        if !is_submission {
            return Err(Refusal::delivery(
                FailureReason::Spoofed,
                format!(
                    "mail from {} must be submitted by that user, logged in",
                    env.source
                ),
            ));
        }
    } else {
        // §7.4 step 6: a key that cannot be obtained or checked now (the
        // domain unreachable, its key contradicting its _cmtpkey record or
        // changed without a rotation statement) is a temporary failure: the
        // sender retries, and nothing is bounced for a fault we cannot judge.
        // A stranger must not make this server dial out at will: a source
        // domain not pinned yet costs a remote key request (§15).
        if !sh.remote.is_pinned(&env.source.domain).await
            && let Err(text) = sh.check_remote_key_request(s.peer.ip(), false)
        {
            return Err(Refusal::status(Status::TempFailure, text));
        }
        match sh.remote.server_key(&env.source.domain, now()).await {
            Ok(k) => source_key = Some(k),
            Err(e) => {
                tracing::info!(peer = %s.peer, domain = %env.source.domain, error = %e, "source key not available");
                return Err(Refusal::status(
                    Status::TempFailure,
                    format!(
                        "cannot obtain the key of {} now: {}",
                        env.source.domain,
                        e.public_text()
                    ),
                ));
            }
        }
    }
    if let Route::Local(account) = &route
        && let Err(text) = sh.check_quota(account, env.body_len + env.log_len).await
    {
        return Err(Refusal::status(Status::TempFailure, text));
    }
    let time = rfc3339(now());
    let our_line = match &submitter {
        Some(u) if is_submission => format!(
            "{time} {} submitted by {u} from {}\n",
            sh.domain,
            s.peer.ip()
        ),
        _ => format!(
            "{time} {} accepted from {} for {}\n",
            sh.domain,
            s.peer.ip(),
            env.destination
        ),
    };
    let reservation = sh
        .admit_mail(s.peer.ip(), &env.source.domain, is_submission, announced)
        .map_err(|r| Refusal::status(Status::TempFailure, r.to_string()))?;
    Ok(Accepting {
        sink: BlobSink::new(&sh, reservation),
        env,
        route,
        submission: is_submission,
        source_key,
        our_line: our_line.into_bytes(),
        _in_flight: InFlight::new(sh.clone()),
    })
}

/// The whole message has arrived: check or sign the trailer, store it
/// durably, and only then answer SUCCESS with a receipt.
pub(crate) async fn finish(s: &mut Session, trailer: [u8; 64], hash: [u8; 32]) {
    let Some(acc) = s.mail.take() else {
        // Refused on the way (a store failure): the connection still owes
        // the peer nothing more, but the state machine waits for a verdict.
        return s
            .conn
            .reply(Status::TempFailure, b"temporary failure, try again later");
    };
    let sh = s.sh.clone();
    let trailer = if acc.submission {
        // Only a message that leaves the domain carries the domain's
        // signature (§7.3); one that stays is stored with a zero trailer.
        match acc.route {
            Route::Relay { .. } => sign_trailer(&sh.key, &hash),
            Route::Local(_) | Route::File { .. } => [0; 64],
        }
    } else {
        let key = acc.source_key.expect("foreign source has a key");
        if let Err(r) = check_trailer(s, &acc.env.source.domain, key, &hash, &trailer).await {
            let _span = message_span(&hash).entered();
            return refuse(s, r);
        }
        trailer
    };
    let Accepting {
        env, route, sink, ..
    } = *acc;
    let mut sink = sink;
    if let Err(e) = sink.push(&trailer).await {
        let _span = message_span(&hash).entered();
        return refuse_store(s, e);
    }
    let (body, size) = match sink.finish().await {
        Ok(x) => x,
        Err(e) => {
            let _span = message_span(&hash).entered();
            return refuse_store(s, e);
        }
    };
    // If storing fails, the staged bytes go at once, not at maintenance.
    let staged = match &body {
        cmtp_store::MessageBody::Staged(b) => Some(b.clone()),
        cmtp_store::MessageBody::Inline(_) => None,
    };
    let at = now();
    let t = std::time::Instant::now();
    let stored = match route {
        Route::Local(account) => sh
            .store
            .deliver(NewDelivery {
                account: account.as_str().to_owned(),
                hash,
                source: env.source.to_string(),
                received_at: at,
                version: env.version,
                attachment_count: env.attachment_count,
                size,
                body,
            })
            .await
            .map(|d| ("delivered", d.duplicate)),
        Route::Relay { sender } => {
            let r = sh
                .store
                .enqueue(NewOutbound {
                    hash,
                    sender: sender.as_str().to_owned(),
                    destination: env.destination.to_string(),
                    dest_domain: env.destination.domain.as_str().to_owned(),
                    size,
                    created_at: at,
                    expires_at: at + sh.cfg().relay.lifetime_secs,
                    body,
                })
                .await
                .map(|e| ("queued", e.duplicate));
            sh.queue_wakeup.notify_one();
            r
        }
        Route::File {
            account,
            folder,
            flags,
        } => sh
            .store
            .deliver_into(
                NewDelivery {
                    account: account.as_str().to_owned(),
                    hash,
                    source: env.source.to_string(),
                    received_at: at,
                    version: env.version,
                    attachment_count: env.attachment_count,
                    size,
                    body,
                },
                &folder,
                flags,
            )
            .await
            .map(|d| ("filed", d.duplicate)),
    };
    metrics::histogram!("cmtp_store_seconds", "op" => "commit").record(t.elapsed().as_secs_f64());
    match stored {
        Ok((what, duplicate)) => {
            metrics::counter!("cmtp_messages_accepted_total", "route" => what).increment(1);
            metrics::counter!("cmtp_message_bytes_total").increment(size);
            tracing::info!(peer = %s.peer, hash = %hex::encode(hash), from = %env.source, to = %env.destination,
                size, duplicate, "message {what}");
            // The receipt statement; the reply's signature makes it a
            // receipt (§10.1).
            let receipt = ReceiptBody {
                hash,
                accepted_at: at,
                domain: sh.domain.clone(),
            };
            s.conn.reply(Status::Success, &receipt.to_bytes());
        }
        // The account went away between the envelope check and the commit.
        Err(StoreError::UnknownAccount) => {
            let _span = message_span(&hash).entered();
            refuse(
                s,
                Refusal::delivery(
                    FailureReason::NoSuchUser,
                    format!("no user {} here", env.destination),
                ),
            )
        }
        Err(e) => {
            let _span = message_span(&hash).entered();
            if let Some(blob) = staged {
                let store = sh.store.clone();
                tokio::spawn(async move {
                    if let Err(e) = store.stage_abort(&blob).await {
                        tracing::warn!(blob = blob.id(), error = %e, "cannot remove a refused upload now; maintenance will");
                    }
                });
            }
            refuse_store(s, e)
        }
    }
}

/// Checks a foreign message's trailer (§7.4). If it does not verify under
/// the pinned key, the domain may have rotated its key: its bundle is
/// fetched again (at most once a minute per domain, §9.5). Only a trailer
/// that fails under the key the domain's server itself presents now is
/// refused for good; a key that cannot be fetched or checked now — the
/// refresh limit included — is a temporary failure, so that a sender whose
/// key just rotated is retried, never bounced.
async fn check_trailer(
    s: &Session,
    domain: &Domain,
    pinned: PublicKey,
    hash: &[u8; 32],
    trailer: &[u8; 64],
) -> Result<(), Refusal> {
    if verify_trailer(&pinned, hash, trailer).is_ok() {
        return Ok(());
    }
    // What the refresh logs (a changed key, a rotation) carries the hash.
    let span = message_span(hash);
    let refreshed =
        s.sh.remote
            .refresh_server_key_limited(domain, now())
            .instrument(span.clone())
            .await;
    let _span = span.entered();
    match refreshed {
        Some(Ok(fresh)) if verify_trailer(&fresh, hash, trailer).is_ok() => Ok(()),
        Some(Ok(_)) => Err(Refusal::delivery(
            FailureReason::BadSignature,
            format!("the domain signature does not verify under the key of {domain}"),
        )),
        Some(Err(e)) => {
            tracing::info!(peer = %s.peer, %domain, error = %e, "cannot refresh the key of a source domain");
            Err(Refusal::status(
                Status::TempFailure,
                format!(
                    "the domain signature does not verify under the pinned key of {domain}, and its current key cannot be checked now: {}",
                    e.public_text()
                ),
            ))
        }
        None => Err(Refusal::status(
            Status::TempFailure,
            format!(
                "the domain signature does not verify under the pinned key of {domain}; its key was checked less than a minute ago, try again later"
            ),
        )),
    }
}
