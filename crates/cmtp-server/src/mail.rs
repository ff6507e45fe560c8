//! Receiving a message after MAIL (PROTOCOL.md §6.2, §7.4) or APPEND
//! (§13.6): the envelope is checked as soon as it arrives, the rest streams
//! into the store in chunks, and SUCCESS with a signed receipt is sent only
//! once the message is durable.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::message::{Envelope, MessageEvent, MessageReader, RawEnvelope, VERSION_PLAINTEXT};
use cmtp_proto::names::Account;
use cmtp_proto::payload::{DeliveryFailure, FailureReason};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::{Receipt, sign_trailer, verify_trailer};
use cmtp_store::{AnyStore, MessageBody, NewDelivery, NewOutbound, StagedBlob, Store, StoreError};
use tokio::time::Instant;

use crate::session::{Read, Session, Stop};
use crate::state::{now, rfc3339};

/// Size of the chunks a message is stored in; a message that fits in one is
/// stored inline in a single row.
pub(crate) const STORE_CHUNK: usize = 256 * 1024;

/// Accumulates the stored form of a message and hands full chunks to the
/// store, so memory stays bounded whatever the message size.
pub(crate) struct BlobSink {
    store: AnyStore,
    buf: BytesMut,
    staged: Option<StagedBlob>,
    size: u64,
}

impl BlobSink {
    pub(crate) fn new(store: AnyStore) -> Self {
        BlobSink {
            store,
            buf: BytesMut::new(),
            staged: None,
            size: 0,
        }
    }

    pub(crate) async fn push(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.size += bytes.len() as u64;
        self.buf.extend_from_slice(bytes);
        while self.buf.len() >= STORE_CHUNK {
            let chunk = self.buf.split_to(STORE_CHUNK).freeze();
            self.stage(chunk).await?;
        }
        Ok(())
    }

    async fn stage(&mut self, chunk: Bytes) -> Result<(), StoreError> {
        if self.staged.is_none() {
            self.staged = Some(self.store.stage_begin(now()).await?);
        }
        let staged = self.staged.as_ref().expect("just set");
        let t = std::time::Instant::now();
        let r = self.store.stage_append(staged, chunk).await;
        metrics::histogram!("cmtp_store_seconds", "op" => "stage_append")
            .record(t.elapsed().as_secs_f64());
        r
    }

    pub(crate) async fn finish(mut self) -> Result<(MessageBody, u64), StoreError> {
        let size = self.size;
        match self.staged.is_some() {
            false => Ok((MessageBody::Inline(self.buf.freeze()), size)),
            true => {
                if !self.buf.is_empty() {
                    let rest = std::mem::take(&mut self.buf).freeze();
                    self.stage(rest).await?;
                }
                Ok((
                    MessageBody::Staged(self.staged.take().expect("staged")),
                    size,
                ))
            }
        }
    }
}

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

/// A message being accepted.
struct Accepting {
    env: Envelope,
    route: Route,
    /// Submitted by the logged-in source: the server signs the trailer.
    submission: bool,
    /// Key of a foreign source domain, to check the trailer.
    source_key: Option<PublicKey>,
    sink: BlobSink,
    log_seen: u64,
    log_lines: u64,
    our_line: Vec<u8>,
}

enum Mode {
    Undecided,
    /// Refused (the reply is sent); the rest is read and dropped.
    Discard,
    Accept(Box<Accepting>),
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
}

/// An owned copy of a reader event (the reader's events borrow the buffer).
enum Event {
    Envelope(RawEnvelope),
    Log(Bytes),
    Data(Bytes),
    AttachmentStart(u64),
    End { trailer: [u8; 64], hash: [u8; 32] },
}

pub(crate) async fn receive(s: &mut Session, digest: [u8; 32]) -> Result<(), Stop> {
    receive_for(s, digest, Intake::Mail).await
}

/// Reads the message that follows MAIL or APPEND and answers it.
pub(crate) async fn receive_for(
    s: &mut Session,
    digest: [u8; 32],
    intake: Intake,
) -> Result<(), Stop> {
    let started = Instant::now();
    let t = s.sh.cfg.timeouts.clone();
    let mut reader = MessageReader::new(s.sh.limits);
    let mut mode = Mode::Undecided;
    loop {
        let (n, ev) = match reader.next(&s.buf) {
            Ok(x) => x,
            Err(e) => {
                metrics::counter!("cmtp_messages_refused_total", "reason" => "malformed")
                    .increment(1);
                if !matches!(mode, Mode::Discard) {
                    let status = if e.is_limit() {
                        Status::TooBig
                    } else {
                        Status::BadMessage
                    };
                    s.reply(status, format!("{e}; closing").as_bytes(), digest)
                        .await?;
                }
                return Err(Stop);
            }
        };
        let ev = match ev {
            None => {
                s.buf.advance_by(n);
                let allowance = reader.announced() / t.min_data_rate.max(1);
                let deadline =
                    started + Duration::from_secs(t.data_grace_secs.saturating_add(allowance));
                match s.read_more(deadline, false).await {
                    Read::Data => continue,
                    Read::Timeout => {
                        if !matches!(mode, Mode::Discard) {
                            s.reply(
                                Status::Timeout,
                                b"the message arrived too slowly; closing",
                                digest,
                            )
                            .await?;
                        }
                        return Err(Stop);
                    }
                    Read::Closed | Read::Shutdown => return Err(Stop),
                }
            }
            Some(MessageEvent::Envelope(raw)) => {
                s.buf.advance_by(n);
                Event::Envelope(raw)
            }
            Some(MessageEvent::Log(_)) => Event::Log(s.buf.split_to(n).freeze()),
            Some(MessageEvent::Body(_)) | Some(MessageEvent::Attachment(_)) => {
                Event::Data(s.buf.split_to(n).freeze())
            }
            Some(MessageEvent::AttachmentStart { len, .. }) => {
                s.buf.advance_by(n);
                Event::AttachmentStart(len)
            }
            Some(MessageEvent::End { trailer, hash }) => {
                s.buf.advance_by(n);
                Event::End { trailer, hash }
            }
        };
        match ev {
            Event::Envelope(raw) => match decide(s, &raw, &intake).await {
                Ok(mut acc) => {
                    // The head: header with the new log length, and the names.
                    let mut head = Vec::with_capacity(300);
                    acc.env
                        .encode_head(acc.env.log_len + acc.our_line.len() as u64, &mut head);
                    let pushed = acc.sink.push(&head).await;
                    if let Err(e) = pushed {
                        mode = refuse_store(s, e, digest).await?;
                        continue;
                    }
                    mode = Mode::Accept(Box::new(acc));
                    if let Mode::Accept(acc) = &mut mode
                        && acc.env.log_len == 0
                        && let Err(r) = end_of_log(s, acc).await
                    {
                        mode = refuse(s, r, digest).await?;
                    }
                }
                Err(r) => mode = refuse(s, r, digest).await?,
            },
            Event::Log(b) => {
                if let Mode::Accept(acc) = &mut mode {
                    acc.log_seen += b.len() as u64;
                    acc.log_lines += b.iter().filter(|&&c| c == b'\n').count() as u64;
                    let r = match acc.sink.push(&b).await {
                        Err(e) => Err(Refusal::status(Status::TempFailure, store_text(&e))),
                        Ok(()) if acc.log_seen == acc.env.log_len => end_of_log(s, acc).await,
                        Ok(()) => Ok(()),
                    };
                    if let Err(r) = r {
                        mode = refuse(s, r, digest).await?;
                    }
                }
            }
            Event::Data(b) => {
                if let Mode::Accept(acc) = &mut mode
                    && let Err(e) = acc.sink.push(&b).await
                {
                    mode = refuse_store(s, e, digest).await?;
                }
            }
            Event::AttachmentStart(len) => {
                if let Mode::Accept(acc) = &mut mode
                    && let Err(e) = acc.sink.push(&len.to_be_bytes()).await
                {
                    mode = refuse_store(s, e, digest).await?;
                }
            }
            Event::End { trailer, hash } => {
                if let Mode::Accept(acc) = std::mem::replace(&mut mode, Mode::Discard) {
                    finish(s, *acc, trailer, hash, digest).await?;
                }
                return Ok(());
            }
        }
    }
}

trait AdvanceBy {
    fn advance_by(&mut self, n: usize);
}
impl AdvanceBy for BytesMut {
    fn advance_by(&mut self, n: usize) {
        let _ = self.split_to(n);
    }
}

fn store_text(e: &StoreError) -> String {
    format!("temporary failure, try again later: {e}")
}

async fn refuse(s: &mut Session, r: Refusal, digest: [u8; 32]) -> Result<Mode, Stop> {
    metrics::counter!("cmtp_messages_refused_total", "reason" => r.status.word().to_owned())
        .increment(1);
    tracing::info!(peer = %s.peer, status = %r.status, reason = %String::from_utf8_lossy(&r.body).replace('\0', " "), "message refused");
    s.reply(r.status, &r.body, digest).await?;
    s.flush().await?;
    Ok(Mode::Discard)
}

async fn refuse_store(s: &mut Session, e: StoreError, digest: [u8; 32]) -> Result<Mode, Stop> {
    tracing::error!(peer = %s.peer, error = %e, "store failed while receiving a message");
    refuse(
        s,
        Refusal::status(Status::TempFailure, store_text(&e)),
        digest,
    )
    .await
}

/// Checks the envelope (PROTOCOL.md §7.4 steps 1–6; §13.6 for APPEND).
async fn decide(s: &mut Session, raw: &RawEnvelope, intake: &Intake) -> Result<Accepting, Refusal> {
    let env = raw
        .parse()
        .map_err(|e| Refusal::status(Status::BadMessage, format!("invalid envelope: {e}")))?;
    let sh = s.sh.clone();
    if env.version == VERSION_PLAINTEXT && sh.cfg.limits.refuse_plaintext {
        return Err(Refusal::delivery(
            FailureReason::Refused,
            "this server refuses plaintext (crypto system 0) mail",
        ));
    }
    if let Intake::Append { folder, flags } = intake {
        return crate::mailbox::decide_append(s, env, folder, *flags).map(
            |(env, account, line)| Accepting {
                sink: BlobSink::new(sh.store.clone()),
                env,
                route: Route::File {
                    account,
                    folder: folder.as_str().to_owned(),
                    flags: *flags,
                },
                submission: true,
                source_key: None,
                log_seen: 0,
                log_lines: 0,
                our_line: line.into_bytes(),
            },
        );
    }
    let ours = |d: &cmtp_proto::names::Domain| *d == sh.domain;
    let submitter = s.logged_in.clone();
    let is_submission = submitter
        .as_ref()
        .is_some_and(|u| ours(&env.source.domain) && env.source.account.as_ref() == Some(u));
    let route = if ours(&env.destination.domain) {
        match sh.local_user_exists(&env.destination.account).await {
            Ok(true) => Route::Local(env.destination.account.clone()),
            Ok(false) => {
                return Err(Refusal::delivery(
                    FailureReason::NoSuchUser,
                    format!("no user {} here", env.destination),
                ));
            }
            Err(e) => return Err(Refusal::status(Status::TempFailure, store_text(&e))),
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
        match sh.remote.server_key(&env.source.domain, now()).await {
            Ok(k) => source_key = Some(k),
            Err(e) if e.is_transient() => {
                return Err(Refusal::status(
                    Status::TempFailure,
                    format!(
                        "cannot obtain the key of {} now: {}",
                        env.source.domain,
                        e.public_text()
                    ),
                ));
            }
            Err(e) => {
                return Err(Refusal::delivery(
                    FailureReason::BadSignature,
                    format!(
                        "cannot verify mail from {}: {}",
                        env.source.domain,
                        e.public_text()
                    ),
                ));
            }
        }
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
    Ok(Accepting {
        sink: BlobSink::new(sh.store.clone()),
        env,
        route,
        submission: is_submission,
        source_key,
        log_seen: 0,
        log_lines: 0,
        our_line: our_line.into_bytes(),
    })
}

/// The log is complete: check the hop count and append our line.
async fn end_of_log(s: &Session, acc: &mut Accepting) -> Result<(), Refusal> {
    if acc.env.log_len + acc.our_line.len() as u64 > s.sh.limits.max_log {
        return Err(Refusal::delivery(
            FailureReason::Loop,
            format!(
                "the log is full ({} bytes): the message has travelled too far",
                acc.env.log_len
            ),
        ));
    }
    if acc.log_lines >= u64::from(s.sh.limits.max_hops) {
        return Err(Refusal::delivery(
            FailureReason::Loop,
            format!(
                "the message has passed {} servers already (mail loop?)",
                acc.log_lines
            ),
        ));
    }
    let line = std::mem::take(&mut acc.our_line);
    let r = acc.sink.push(&line).await;
    acc.our_line = line;
    r.map_err(|e| Refusal::status(Status::TempFailure, store_text(&e)))
}

async fn finish(
    s: &mut Session,
    acc: Accepting,
    trailer: [u8; 64],
    hash: [u8; 32],
    digest: [u8; 32],
) -> Result<(), Stop> {
    let sh = s.sh.clone();
    let trailer = if acc.submission {
        sign_trailer(&sh.key, &hash)
    } else {
        let key = acc.source_key.expect("foreign source has a key");
        if verify_trailer(&key, &hash, &trailer).is_err() {
            // Perhaps the source rotated its key since we pinned it (asked at
            // most once a minute per domain).
            let fresh = sh
                .remote
                .refresh_server_key_limited(&acc.env.source.domain, now())
                .await;
            let ok = matches!(&fresh, Some(Ok(k)) if *k != key && verify_trailer(k, &hash, &trailer).is_ok());
            if !ok {
                let text = match fresh {
                    Some(Err(e)) => format!("the domain signature does not verify ({e})"),
                    _ => format!(
                        "the domain signature does not verify under the key of {}",
                        acc.env.source.domain
                    ),
                };
                refuse(
                    s,
                    Refusal::delivery(FailureReason::BadSignature, text),
                    digest,
                )
                .await?;
                return Ok(());
            }
        }
        trailer
    };
    let mut sink = acc.sink;
    if let Err(e) = sink.push(&trailer).await {
        refuse_store(s, e, digest).await?;
        return Ok(());
    }
    let (body, size) = match sink.finish().await {
        Ok(x) => x,
        Err(e) => {
            refuse_store(s, e, digest).await?;
            return Ok(());
        }
    };
    let at = now();
    let env = acc.env;
    let t = std::time::Instant::now();
    let stored = match acc.route {
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
                    expires_at: at + sh.cfg.relay.lifetime_secs,
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
            tracing::info!(peer = %s.peer, hash = %hex::encode(&hash[..8]), from = %env.source, to = %env.destination,
                size, duplicate, "message {what}");
            let receipt = Receipt::issue(&sh.key, hash, at, sh.domain.clone());
            s.reply(Status::Success, &receipt.to_bytes(), digest).await
        }
        // The account went away between the envelope check and the commit.
        Err(StoreError::UnknownAccount) => refuse(
            s,
            Refusal::delivery(
                FailureReason::NoSuchUser,
                format!("no user {} here", env.destination),
            ),
            digest,
        )
        .await
        .map(|_| ()),
        Err(e) => refuse_store(s, e, digest).await.map(|_| ()),
    }
}
