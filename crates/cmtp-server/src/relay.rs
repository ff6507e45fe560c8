//! The relay queue runner: delivers queued mail to other domains, retries
//! with exponential backoff, and bounces with one signed DELIVERYFAILURE
//! notice into the sender's mailbox (PROTOCOL.md §10.3).
//!
//! One slow or dead destination must not delay the others (§15): the runner
//! leases due entries with at most `relay.per_destination` in flight per
//! domain ([`Store::lease_due_per_domain`]), takes the domain's slot before
//! a global one (so a domain at its limit never holds a global slot), and
//! when a destination cannot be reached at all, postpones all its waiting
//! entries together ([`Store::defer_domain`]) instead of letting each find
//! out alone. The queue figures (a scan of the whole queue) are read every
//! [`STATS_INTERVAL`], not on every pass.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cmtp_client::{ClientError, Connection};
use cmtp_proto::content::Content;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::message::Source;
use cmtp_proto::names::{Address, Domain};
use cmtp_proto::payload::{DeliveryFailure, FailureReason};
use cmtp_proto::reply::Status;
use cmtp_store::{BlobReader, MessageBody, NewDelivery, OutboundEntry, Store};
use tokio::sync::{Semaphore, mpsc, watch};
use tracing::Instrument;

use crate::remote::RemoteError;
use crate::state::{Shared, now, rfc3339};

/// How one delivery attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    Delivered,
    /// Try again later.
    Retry(String),
    /// The destination could not be reached at all: try again later, and
    /// postpone its other waiting messages as well.
    Unreachable(String),
    /// Give up and bounce.
    Bounce(FailureReason, String),
}

/// How often the queue figures are read for the metrics.
pub const STATS_INTERVAL: Duration = Duration::from_secs(15);

/// Runs the queue until shutdown.
pub async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>, _alive: mpsc::Sender<()>) {
    // `parallel` and `per_destination` need a restart; the rest of
    // `[relay]` is read afresh each round (a reload applies it).
    let started = sh.cfg().relay.clone();
    let slots = Arc::new(Semaphore::new(started.parallel));
    let mut per_domain: HashMap<String, Arc<Semaphore>> = HashMap::new();
    let mut stats_read: Option<std::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let cfg = sh.cfg().relay.clone();
        let free = slots.available_permits();
        if free > 0 {
            let t = now();
            let in_flight: Vec<(String, usize)> = per_domain
                .iter()
                .map(|(d, sem)| (d.clone(), cfg.per_destination - sem.available_permits()))
                .filter(|(_, n)| *n > 0)
                .collect();
            match sh
                .store
                .lease_due_per_domain(
                    t,
                    &sh.node,
                    t + cfg.lease_secs,
                    free,
                    cfg.per_destination,
                    &in_flight,
                )
                .await
            {
                Ok(entries) => {
                    for e in entries {
                        let dest = per_domain
                            .entry(e.dest_domain.clone())
                            .or_insert_with(|| Arc::new(Semaphore::new(started.per_destination)))
                            .clone();
                        start(&sh, &slots, dest, e);
                    }
                }
                Err(e) => tracing::warn!(error = %e, "reading the relay queue failed"),
            }
        }
        if stats_read.is_none_or(|t| t.elapsed() >= STATS_INTERVAL) {
            stats_read = Some(std::time::Instant::now());
            if let Ok(stats) = sh.store.queue_stats(now()).await {
                metrics::gauge!("cmtp_queue_messages").set(stats.total as f64);
                metrics::gauge!("cmtp_queue_due").set(stats.due as f64);
                metrics::gauge!("cmtp_queue_bytes").set(stats.bytes as f64);
                metrics::gauge!("cmtp_queue_oldest_seconds")
                    .set(stats.oldest_age.unwrap_or(0) as f64);
                metrics::gauge!("cmtp_queue_held").set(stats.held as f64);
                metrics::gauge!("cmtp_queue_oldest_due_seconds")
                    .set(stats.oldest_due_age.unwrap_or(0) as f64);
            }
        }
        // Forget what is no longer used: idle connections past their time,
        // per-domain limits with nothing in flight.
        sh.relay_pool.prune();
        per_domain.retain(|_, sem| sem.available_permits() < started.per_destination);
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(cfg.poll_ms)) => {}
            _ = sh.queue_wakeup.notified() => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Starts the delivery of a leased entry: the destination's slot first,
/// then a global one. The entry was leased within both limits, and only
/// the runner takes slots, so both are free; should one not be, the task
/// waits for it in the same order.
fn start(sh: &Arc<Shared>, slots: &Arc<Semaphore>, dest: Arc<Semaphore>, e: OutboundEntry) {
    let dest_slot = dest.clone().try_acquire_owned().ok();
    let slot = dest_slot
        .as_ref()
        .and_then(|_| slots.clone().try_acquire_owned().ok());
    let (sh, slots) = (sh.clone(), slots.clone());
    tokio::spawn(async move {
        let dest_slot = match dest_slot {
            Some(p) => p,
            None => dest.acquire_owned().await.expect("semaphore open"),
        };
        let slot = match slot {
            Some(p) => p,
            None => slots.acquire_owned().await.expect("semaphore open"),
        };
        // Every line logged during the attempt carries the queue id and the
        // message hash.
        let span = tracing::info_span!("relay", id = e.id, hash = %hex::encode(e.hash));
        attempt(&sh, e).instrument(span).await;
        drop(slot);
        drop(dest_slot);
        // A slot is free: look for more due mail now.
        sh.queue_wakeup.notify_one();
    });
}

async fn attempt(sh: &Shared, e: OutboundEntry) {
    let outcome = if now() >= e.expires_at {
        Outcome::Bounce(
            FailureReason::Expired,
            format!(
                "gave up after {} attempts over {}; last error: {}",
                e.attempts,
                humantime::format_duration(Duration::from_secs(
                    e.expires_at.saturating_sub(e.created_at)
                )),
                e.last_error.clone().unwrap_or_else(|| "none".into())
            ),
        )
    } else {
        deliver(sh, &e).await
    };
    let id = e.id;
    let hash = hex::encode(e.hash);
    match outcome {
        Outcome::Delivered => {
            tracing::info!(id, %hash, to = %e.destination, "relayed");
            metrics::counter!("cmtp_relay_total", "result" => "delivered").increment(1);
            if let Err(err) = sh.store.complete(id, &sh.node).await {
                tracing::error!(id, %hash, error = %err, "marking a relayed message done failed; it may be sent again (the destination de-duplicates it)");
            }
        }
        Outcome::Retry(why) => {
            retry(sh, &e, &why, false).await;
        }
        Outcome::Unreachable(why) => {
            retry(sh, &e, &why, true).await;
        }
        Outcome::Bounce(reason, why) => {
            tracing::info!(id, %hash, to = %e.destination, %reason, error = %why, "relay failed; notifying the sender");
            metrics::counter!("cmtp_relay_total", "result" => "bounced").increment(1);
            // The sender must learn of it: a store that cannot answer now
            // means trying again later, not dropping the message silently.
            let sender = match sh.store.user(&e.sender).await {
                Ok(u) => u,
                Err(err) => {
                    tracing::warn!(id, %hash, error = %err, "cannot read the sender for the notice; retrying later");
                    let _ = sh.store.retry_later(id, &sh.node, now() + 60, &why).await;
                    return;
                }
            };
            let Some(sender) = sender else {
                tracing::info!(id, %hash, sender = %e.sender, "the sender no longer exists; no notice");
                let _ = sh.store.complete(id, &sh.node).await;
                return;
            };
            match notice(sh, &e, &sender, reason, &why) {
                Ok(n) => {
                    let notice_hash = hex::encode(n.hash);
                    match sh.store.fail_with_notice(id, &sh.node, &why, n).await {
                        Ok(true) => {
                            tracing::info!(id, %hash, notice = %notice_hash, "bounced: delivery failure notice delivered to the sender")
                        }
                        Ok(false) => {}
                        Err(err) => {
                            tracing::error!(id, %hash, error = %err, "storing the delivery failure notice failed; will retry")
                        }
                    }
                }
                Err(err) => {
                    tracing::error!(id, %hash, error = %err, "building the delivery failure notice failed; dropping the message");
                    let _ = sh.store.complete(id, &sh.node).await;
                }
            }
        }
    }
}

/// Schedules the next attempt of `e` with exponential backoff; with
/// `domain_down`, the destination's other waiting entries wait as long.
async fn retry(sh: &Shared, e: &OutboundEntry, why: &str, domain_down: bool) {
    let cfg = sh.cfg().relay.clone();
    let delay = cfg
        .first_retry_secs
        .saturating_mul(1u64 << e.attempts.min(30))
        .min(cfg.max_retry_secs)
        .max(1);
    let t = now();
    let next = (t + delay).min(e.expires_at);
    tracing::info!(id = e.id, hash = %hex::encode(e.hash), to = %e.destination, attempt = e.attempts + 1, retry_in = delay, error = %why, "relay deferred");
    metrics::counter!("cmtp_relay_total", "result" => "deferred").increment(1);
    if let Err(err) = sh.store.retry_later(e.id, &sh.node, next, why).await {
        tracing::error!(id = e.id, hash = %hex::encode(e.hash), error = %err, "rescheduling failed");
    }
    if domain_down {
        match sh.store.defer_domain(&e.dest_domain, t, t + delay).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(domain = %e.dest_domain, postponed = n, retry_in = delay, "destination unreachable; its other messages wait too")
            }
            Err(err) => {
                tracing::warn!(domain = %e.dest_domain, error = %err, "postponing the destination's messages failed")
            }
        }
    }
}

/// Like [`classify`], for a failure to reach the destination at all
/// (discovery, connection, greeting): a transient one postpones the whole
/// domain.
fn classify_reach(e: &RemoteError) -> Outcome {
    match classify(e) {
        Outcome::Retry(why) if e.is_transient() => Outcome::Unreachable(why),
        other => other,
    }
}

fn classify(e: &RemoteError) -> Outcome {
    match e {
        RemoteError::KeyChanged { .. } | RemoteError::DnsMismatch { .. } => {
            Outcome::Bounce(FailureReason::KeyChanged, e.to_string())
        }
        RemoteError::Discovery(d) if d.is_permanent() => {
            Outcome::Bounce(FailureReason::NoDestination, e.to_string())
        }
        // A statement that does not verify now (clocks apart, a key being
        // replaced) may verify later: retried until the lifetime ends.
        RemoteError::Statement { .. } => Outcome::Retry(e.to_string()),
        e if e.is_transient() => Outcome::Retry(e.to_string()),
        e => Outcome::Bounce(FailureReason::NoDestination, e.to_string()),
    }
}

async fn deliver(sh: &Shared, e: &OutboundEntry) -> Outcome {
    // Consented plaintext for a domain without CMTP leaves by SMTP (§19.3).
    if let Some(outcome) = crate::smtp::outbound::try_deliver(sh, e).await {
        return outcome;
    }
    let Ok(domain) = Domain::parse(&e.dest_domain) else {
        return Outcome::Bounce(
            FailureReason::NoDestination,
            format!("invalid domain {}", e.dest_domain),
        );
    };
    let key: PublicKey = match sh.remote.server_key(&domain, now()).await {
        Ok(k) => k,
        Err(err) => return classify_reach(&err),
    };
    // Reuse an open connection to the destination when there is one; a
    // reused connection that fails is replaced by a fresh one once (sending a
    // message twice is harmless: the destination de-duplicates by hash).
    let mut reused = sh.relay_pool.take(&domain, key);
    let (reply, conn) = loop {
        let was_reused = reused.is_some();
        let mut conn = match reused.take() {
            Some(c) => c,
            None => match sh.remote.connect(&domain, Some(key)).await {
                Ok(c) => c,
                Err(RemoteError::Client {
                    error: ClientError::KeyMismatch { .. },
                    ..
                }) => {
                    // Perhaps a rotation: fetch the bundle and check the chain.
                    return match sh.remote.refresh_server_key(&domain, now()).await {
                        Ok(_) => Outcome::Retry(
                            "the server key rotated; retrying with the new key".into(),
                        ),
                        Err(err) => classify(&err),
                    };
                }
                Err(err) => return classify_reach(&err),
            },
        };
        match send(sh, &mut conn, e).await {
            Ok(r) => break (r, conn),
            Err(_) if was_reused => continue,
            // A broken connection or protocol error mid-message: the message
            // may or may not have arrived; retrying later is safe.
            Err(err) => return Outcome::Retry(format!("{domain}: {err}")),
        }
    };
    // The reply's signature was checked under the pinned `key` as every
    // reply's is; for SUCCESS it is the receipt's (§10.1).
    let receipt = conn.receipt(&reply);
    if !reply.status.closes_connection() {
        sh.relay_pool.put(&domain, key, conn);
    }
    match &reply.status {
        Status::Success => match receipt {
            Ok(r) if r.body.check_hash(&e.hash).is_ok() => Outcome::Delivered,
            _ => Outcome::Retry(format!("{domain} answered SUCCESS without a valid receipt")),
        },
        Status::DeliveryFailure => {
            let f = DeliveryFailure::decode(&reply.body).ok();
            let reason = f
                .as_ref()
                .and_then(|f| f.reason)
                .unwrap_or(FailureReason::Refused);
            let text = f
                .map(|f| format!("{}: {}", f.word, f.text))
                .unwrap_or_else(|| reply.text());
            Outcome::Bounce(reason, format!("{domain} refused the message: {text}"))
        }
        s if s.is_transient() => Outcome::Retry(format!("{domain}: {s}: {}", reply.text())),
        s => Outcome::Bounce(
            FailureReason::Refused,
            format!("{domain}: {s}: {}", reply.text()),
        ),
    }
}

/// Streams the stored message of `e` with MAIL on `conn` and reads the reply.
async fn send(
    sh: &Shared,
    conn: &mut Connection,
    e: &OutboundEntry,
) -> Result<cmtp_proto::reply::Reply, ClientError> {
    let mail = conn.begin_mail().await?;
    let mut reader = BlobReader::new(sh.store.clone(), e.blob);
    loop {
        match reader.next_chunk().await {
            Ok(Some(chunk)) => conn.send_bytes(&chunk).await?,
            Ok(None) => break,
            Err(err) => {
                return Err(ClientError::Io(format!(
                    "reading the queued message: {err}"
                )));
            }
        }
    }
    conn.finish_mail(mail).await
}

/// Open connections to other domains' servers, kept between deliveries.
#[derive(Debug, Default)]
pub struct ConnectionPool {
    idle: std::sync::Mutex<HashMap<String, Vec<PooledConnection>>>,
}

/// An idle connection, the key it was opened with, and when it was last used.
type PooledConnection = (Connection, PublicKey, std::time::Instant);

/// How long an unused connection is kept.
const POOL_IDLE: Duration = Duration::from_secs(30);
/// Most idle connections kept per destination.
const POOL_PER_DOMAIN: usize = 8;

impl ConnectionPool {
    /// An idle connection to `domain` made with `key`, if one is fresh enough.
    fn take(&self, domain: &Domain, key: PublicKey) -> Option<Connection> {
        let mut g = self.idle.lock().expect("pool lock");
        let list = g.get_mut(domain.as_str())?;
        while let Some((c, k, at)) = list.pop() {
            if k == key && at.elapsed() < POOL_IDLE {
                return Some(c);
            }
        }
        None
    }

    /// Closes idle connections past [`POOL_IDLE`], for every domain.
    fn prune(&self) {
        let mut g = self.idle.lock().expect("pool lock");
        g.retain(|_, list| {
            list.retain(|(_, _, at)| at.elapsed() < POOL_IDLE);
            !list.is_empty()
        });
    }

    fn put(&self, domain: &Domain, key: PublicKey, conn: Connection) {
        let mut g = self.idle.lock().expect("pool lock");
        let list = g.entry(domain.as_str().to_owned()).or_default();
        list.retain(|(_, _, at)| at.elapsed() < POOL_IDLE);
        if list.len() < POOL_PER_DOMAIN {
            list.push((conn, key, std::time::Instant::now()));
        }
    }
}

/// The DELIVERYFAILURE notice for the sender of `e`: a message from this
/// server, sealed to the sender and signed by the server key.
fn notice(
    sh: &Shared,
    e: &OutboundEntry,
    user: &cmtp_store::User,
    reason: FailureReason,
    why: &str,
) -> anyhow::Result<NewDelivery> {
    let sender_key = PublicKey::from_bytes(&user.identity_pk)?;
    let to = Address::parse(&format!("{}@{}", e.sender, sh.domain))?;
    let t = now();
    let content = Content {
        subject: format!("Undeliverable: {}", e.destination),
        date: rfc3339(t),
        text: format!(
            "Reason: {reason}\nDestination: {}\nOriginal-Hash: {}\nAttempts: {}\nDetail: {why}\n\n\
             Your message to {} could not be delivered.\n",
            e.destination,
            hex::encode(e.hash),
            e.attempts + 1,
            e.destination
        ),
        ..Content::default()
    };
    let mut msg = content.seal_as(
        Source::server(sh.domain.clone()),
        &sh.key,
        &to,
        &sender_key,
        &mut rand_core::OsRng,
    )?;
    // The trailer stays zero: the notice never leaves the domain (§7.3).
    let hash = msg.hash();
    msg.log = format!(
        "{} {} delivery failure notice for {}\n",
        rfc3339(t),
        sh.domain,
        e.destination
    )
    .into_bytes();
    let bytes = msg.to_bytes();
    Ok(NewDelivery {
        account: e.sender.clone(),
        hash,
        source: Source::server(sh.domain.clone()).to_string(),
        received_at: t,
        version: msg.version,
        attachment_count: 0,
        size: bytes.len() as u64,
        body: MessageBody::Inline(bytes.into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permanent_dns_failures_bounce_and_transient_ones_retry() {
        use cmtp_client::discovery::DiscoveryError;
        let nx = RemoteError::Discovery(DiscoveryError::NoSuchDomain {
            domain: "x.test".into(),
        });
        assert!(matches!(
            classify(&nx),
            Outcome::Bounce(FailureReason::NoDestination, _)
        ));
        let tmp = RemoteError::Discovery(DiscoveryError::Temporary {
            name: "x.test".into(),
            record_type: "SRV".into(),
            reason: "timeout".into(),
        });
        assert!(matches!(classify(&tmp), Outcome::Retry(_)));
        let changed = RemoteError::KeyChanged {
            domain: "b.test".into(),
            pinned: "a".into(),
            got: "b".into(),
        };
        assert!(matches!(
            classify(&changed),
            Outcome::Bounce(FailureReason::KeyChanged, _)
        ));
    }
}
