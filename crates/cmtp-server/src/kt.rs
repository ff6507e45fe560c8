//! Key transparency, the server's side (PROTOCOL.md §20): this domain's key
//! directory, its epochs and heads, the witnesses it asks, the domains it
//! witnesses, and the commands `KEYPROOF`, `KTHEAD`, `KTAUDIT`,
//! `KTWITNESS`, `KTEVIDENCE` and `KTHISTORY`.
//!
//! - **The directory** ([`cmtp_kt::directory::KtDirectory`] on the store)
//!   maps `account@domain` to [`key_value`] of the account's identity key.
//!   Its VRF key is a store secret, so the nodes of a cluster share it.
//! - **Epochs** ([`run`], [`publish_epoch`]): every `[transparency]
//!   epoch_secs` the node holding the publisher's lease compares every
//!   account's key with the directory and publishes what changed (a new
//!   account, a reset, a key an administrator or anyone else wrote into the
//!   store; a deleted account gets the value of no key). The new head is
//!   signed and chained to the one before, then offered to each witness.
//! - **Witnessing** ([`witness`]): for the domains in `witness_for`, this
//!   server fetches the newest head from the domain's own server, checks it
//!   extends the head it cosigned before (the heads in between and akd's
//!   append-only proof), and cosigns — or keeps the proof of misbehaviour.
//!
//! What strangers can make this cost is bounded: `KTAUDIT` (a proof over up
//! to 16 epochs), remote `KEYPROOF`s and `KTWITNESS` (which makes this
//! server dial the domain) spend the peer's remote-request tokens (§15);
//! `KTWITNESS` is answered only for the domains in `witness_for`, one check
//! at a time.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use cmtp_client::Connection;
use cmtp_kt::directory::{KtDirectory, VrfKey};
use cmtp_proto::command::Command;
use cmtp_proto::crypto::PublicKey;
use cmtp_proto::kt::{
    AuditAnswer, Cosignature, EpochHead, HeadRefused, KeyHistory, Misbehaviour, ProvenKey,
    SignedHead, WitnessVerdict, WitnessedHead, check_chain, key_value, label,
};
use cmtp_proto::names::{Account, Address, Domain};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::KeyStatement;
use cmtp_store::{AnyStore, KtStore, Store};
use tokio::sync::{mpsc, watch};

use crate::session::Session;
use crate::state::Shared;

/// The store secret holding the directory's VRF key.
pub const VRF_SECRET: &str = "kt-vrf-v1";
/// Largest reply body accepted from a `KTAUDIT`.
pub const MAX_AUDIT_REPLY: u64 = cmtp_proto::kt::MAX_AUDIT_PROOF as u64 + 64 * 1024;
/// Bytes of tree nodes the serving directory keeps in memory.
const NODE_CACHE: usize = 512 << 20;
/// Lookup proofs kept for the current epoch: at most this many accounts...
pub const PROOF_CACHE_ENTRIES: usize = 100_000;
/// ...and this many bytes (proofs, values and names, with a fixed
/// allowance per entry). A full cache keeps what it has: later proofs of
/// the epoch are made for each request.
pub const PROOF_CACHE_BYTES: usize = 256 << 20;
/// Per-entry allowance for the map and its allocations.
const PROOF_ENTRY_OVERHEAD: usize = 128;
/// Labels per akd batch lookup while precomputing: what one pause of the
/// precomputation (to let a publication through) can be behind.
const PRECOMPUTE_BATCH: usize = 256;
/// How long the cached head of the current epoch (with its cosignatures)
/// is used before the cosignatures are read again: those another node of a
/// cluster added are seen within this time (this node's, at once).
const HEAD_TTL: Duration = Duration::from_secs(5);
/// The value of a deleted account's label: no key.
pub const NO_KEY: [u8; 32] = [0; 32];

type Directory = KtDirectory<AnyStore>;

/// A cached `KTAUDIT` answer: `(from, to)` and the answer's body.
type CachedAudit = ((u64, u64), Arc<Vec<u8>>);

/// A cached lookup: the value and its proof.
type CachedProof = (Vec<u8>, Arc<Vec<u8>>);

/// Lookup proofs and the witnessed head of the epoch served, and the
/// accounts asked for in it (whose proofs are made after the next epoch).
struct ProofCache {
    /// The epoch of the serving directory.
    epoch: u64,
    /// Which opening of the serving directory this cache belongs to.
    generation: u64,
    entries: HashMap<Account, CachedProof>,
    /// What `entries` holds, counted as [`entry_bytes`].
    bytes: usize,
    /// Accounts whose proof was asked for in this epoch (at most
    /// [`PROOF_CACHE_ENTRIES`]).
    asked: HashSet<Account>,
    /// The epoch's signed head and its cosignatures, and when they were read.
    head: Option<(Instant, WitnessedHead)>,
}

impl ProofCache {
    fn new(epoch: u64, generation: u64) -> Self {
        ProofCache {
            epoch,
            generation,
            entries: HashMap::new(),
            bytes: 0,
            asked: HashSet::new(),
            head: None,
        }
    }

    /// Keeps `entry` for `user` if it is of this epoch and fits.
    fn insert(&mut self, epoch: u64, user: &Account, entry: CachedProof) -> bool {
        let size = entry_bytes(user, &entry);
        if epoch != self.epoch
            || self.entries.len() >= PROOF_CACHE_ENTRIES
            || self.bytes + size > PROOF_CACHE_BYTES
            || self.entries.contains_key(user)
        {
            return false;
        }
        self.bytes += size;
        self.entries.insert(user.clone(), entry);
        true
    }

    /// Notes that `user`'s proof of `epoch` was asked for.
    fn ask(&mut self, epoch: u64, user: &Account) {
        if epoch == self.epoch
            && self.asked.len() < PROOF_CACHE_ENTRIES
            && !self.asked.contains(user)
        {
            self.asked.insert(user.clone());
        }
    }
}

fn entry_bytes(user: &Account, (value, proof): &CachedProof) -> usize {
    user.as_str().len() + value.len() + proof.len() + PROOF_ENTRY_OVERHEAD
}

/// How `KEYPROOF`s of local accounts were answered since the start.
#[derive(Debug, Default)]
pub struct ProofStats {
    /// From the cache.
    pub cached: AtomicU64,
    /// Made for the request (not cached).
    pub computed: AtomicU64,
    /// Proofs made ahead, after an epoch.
    pub precomputed: AtomicU64,
    /// Precomputations finished (or stopped).
    pub precomputations: AtomicU64,
}

/// The part of the state a precomputation shares with the requests.
struct ProofState {
    cache: Mutex<ProofCache>,
    stats: ProofStats,
    /// The server is shutting down: no more precomputation.
    closing: AtomicBool,
}

/// The directory's state in this process.
pub struct Transparency {
    vrf: VrfKey,
    /// The directory lookups and audits are served from (replaced after
    /// each epoch, so its node cache is never stale).
    serving: ArcSwapOption<Directory>,
    /// Lookup proofs of the current epoch, by account.
    proofs: Arc<ProofState>,
    /// One publication at a time in this process (a precomputation waits
    /// for the one in progress).
    publishing: Arc<tokio::sync::Mutex<()>>,
    /// One catch-up with a newer epoch at a time ([`catch_up`]).
    reopening: tokio::sync::Mutex<()>,
    /// The newest head's epoch as last read by [`catch_up`], and when that
    /// read began; one read at a time.
    newest_head: tokio::sync::Mutex<Option<(Instant, u64)>>,
    /// As a witness: one check at a time.
    witnessing: tokio::sync::Mutex<()>,
    /// The last `KTAUDIT` answer (witnesses of one domain ask alike).
    audits: Mutex<Option<CachedAudit>>,
}

fn err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl Transparency {
    /// Loads (or creates) the VRF key and opens the directory.
    pub async fn open(store: &AnyStore) -> anyhow::Result<Transparency> {
        let mut seed = [0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut seed);
        let stored = store.secret_get_or_init(VRF_SECRET, seed.to_vec()).await?;
        let seed: [u8; 32] = stored
            .as_slice()
            .try_into()
            .map_err(|_| anyhow::anyhow!("stored directory VRF key is not 32 bytes"))?;
        let vrf = VrfKey::from_seed(seed);
        let t = Transparency {
            vrf,
            serving: ArcSwapOption::empty(),
            proofs: Arc::new(ProofState {
                cache: Mutex::new(ProofCache::new(0, 0)),
                stats: ProofStats::default(),
                closing: AtomicBool::new(false),
            }),
            publishing: Arc::new(tokio::sync::Mutex::new(())),
            reopening: tokio::sync::Mutex::new(()),
            newest_head: tokio::sync::Mutex::new(None),
            witnessing: tokio::sync::Mutex::new(()),
            audits: Mutex::new(None),
        };
        t.reopen(store, None).await?;
        Ok(t)
    }

    /// Serves from a new directory (at the store's newest epoch) with an
    /// empty proof cache; with `precompute` (this domain, `[transparency]
    /// precompute_all`), then makes in the background the
    /// proofs of the accounts asked for in the epoch served before (or of
    /// all, in a small directory).
    async fn reopen(
        &self,
        store: &AnyStore,
        precompute: Option<(Domain, usize)>,
    ) -> anyhow::Result<()> {
        let d = Arc::new(
            KtDirectory::open(store.clone(), self.vrf.clone(), Some(NODE_CACHE))
                .await
                .map_err(err)?,
        );
        let (epoch, _) = d.current().await.map_err(err)?;
        let (asked, generation) = {
            let mut cache = self.proofs.cache.lock().expect("proof cache");
            if cache.epoch == epoch && self.serving.load().is_some() {
                // Already served (the publisher and the watch for other
                // nodes' epochs both saw it): keep the cache and the
                // precomputation under way.
                return Ok(());
            }
            let asked = std::mem::take(&mut cache.asked);
            *cache = ProofCache::new(epoch, cache.generation + 1);
            // In the same critical section: a request sees the new cache
            // only with the new directory.
            self.serving.store(Some(d.clone()));
            (asked, cache.generation)
        };
        *self.audits.lock().expect("audit cache") = None;
        if let Some((domain, all_up_to)) = precompute {
            let job = Precompute {
                dir: d,
                generation,
                epoch,
                state: self.proofs.clone(),
                publishing: self.publishing.clone(),
                store: store.clone(),
                domain,
                asked,
                all_up_to,
            };
            let runtime = tokio::runtime::Handle::current();
            // On the blocking pool: the runtime's workers stay free for
            // the requests (and the publisher).
            tokio::task::spawn_blocking(move || runtime.block_on(job.run()));
        }
        Ok(())
    }

    /// How `KEYPROOF`s were answered since the start.
    pub fn stats(&self) -> &ProofStats {
        &self.proofs.stats
    }

    /// Proofs cached for the epoch served: (epoch, entries, bytes).
    pub fn cached(&self) -> (u64, usize, usize) {
        let c = self.proofs.cache.lock().expect("proof cache");
        (c.epoch, c.entries.len(), c.bytes)
    }

    /// Whether `account`'s proof is cached for the epoch served.
    pub fn is_cached(&self, account: &Account) -> bool {
        self.proofs
            .cache
            .lock()
            .expect("proof cache")
            .entries
            .contains_key(account)
    }

    fn directory(&self) -> anyhow::Result<Arc<Directory>> {
        self.serving
            .load_full()
            .ok_or_else(|| anyhow::anyhow!("the key directory is not open"))
    }
}

/// Serves from a directory at least as new as the newest head in the
/// store. On PostgreSQL the store is shared by the nodes of a cluster: the
/// newest head may be another node's publication (or this node's, between
/// writing the head and reopening), and answering from the epoch before
/// would show a client that saw the new head from the other node an older
/// epoch — a rollback it must refuse (§20.5) — or no proof for a key that
/// has one. So every request that answers from the directory learns the
/// newest head's epoch from a read of the store that began after the
/// request arrived (a head the client could have seen was written before),
/// and reopens when it is newer than the epoch served. One read runs at a
/// time and answers every request that arrived before it began: under load
/// a read per round trip to the database, not one per request. On SQLite
/// only this process publishes, and reopens before it returns from the
/// publication.
async fn catch_up(sh: &Shared) -> anyhow::Result<()> {
    if sh.cfg().store.backend != crate::config::StoreBackend::Postgres {
        return Ok(());
    }
    let t = kt(sh);
    let arrived = Instant::now();
    let newest = {
        let mut last = t.newest_head.lock().await;
        match *last {
            Some((began, epoch)) if began >= arrived => epoch,
            _ => {
                let began = Instant::now();
                let Some((epoch, _)) = sh.store.kt_latest_head().await? else {
                    return Ok(());
                };
                *last = Some((began, epoch));
                epoch
            }
        }
    };
    let served = || t.proofs.cache.lock().expect("proof cache").epoch;
    if served() >= newest {
        return Ok(());
    }
    // The requests that see the new head together reopen once.
    let _one = t.reopening.lock().await;
    if served() >= newest {
        return Ok(());
    }
    t.reopen(&sh.store, precompute(sh)).await
}

/// What [`Transparency::reopen`] precomputes for this server.
fn precompute(sh: &Shared) -> Option<(Domain, usize)> {
    let cfg = sh.cfg();
    let t = &cfg.transparency;
    t.precompute.then(|| (sh.domain.clone(), t.precompute_all))
}

/// The proofs made after an epoch: of the accounts asked for in the epoch
/// before, or of every account of a directory of at most `[transparency]
/// precompute_all` labels. It runs on one thread of the blocking pool,
/// by akd batch lookups of [`PRECOMPUTE_BATCH`] labels, waits for a
/// publication in progress between batches, and stops when a newer
/// directory is served, the cache is full or the server shuts down.
struct Precompute {
    dir: Arc<Directory>,
    generation: u64,
    epoch: u64,
    state: Arc<ProofState>,
    publishing: Arc<tokio::sync::Mutex<()>>,
    store: AnyStore,
    domain: Domain,
    asked: HashSet<Account>,
    /// Every account's proof when the directory holds at most this many.
    all_up_to: usize,
}

impl Precompute {
    async fn run(self) {
        let started = Instant::now();
        let epoch = self.epoch;
        let state = self.state.clone();
        match self.make().await {
            Ok((made, wanted)) => tracing::info!(
                epoch,
                wanted,
                made,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "key directory proofs made ahead"
            ),
            Err(e) => tracing::warn!(epoch, error = %e, "key directory proofs not made ahead"),
        }
        state.stats.precomputations.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the cache is still this directory's and has room.
    fn wanted(&self) -> bool {
        if self.state.closing.load(Ordering::Relaxed) {
            return false;
        }
        let c = self.state.cache.lock().expect("proof cache");
        c.generation == self.generation
            && c.entries.len() < PROOF_CACHE_ENTRIES
            && c.bytes < PROOF_CACHE_BYTES
    }

    /// The proofs made, and how many were wanted.
    async fn make(mut self) -> anyhow::Result<(u64, usize)> {
        let mut accounts: Vec<Account> = self.asked.drain().collect();
        accounts.sort();
        let published = self.store.kt_all_latest().await?;
        if published.len() <= self.all_up_to {
            let mut seen: HashSet<Account> = accounts.iter().cloned().collect();
            for (l, v) in &published {
                if v[..] == NO_KEY {
                    continue;
                }
                let Some(a) = std::str::from_utf8(l)
                    .ok()
                    .and_then(|l| Address::parse(l).ok())
                    .filter(|a| a.domain == self.domain)
                else {
                    continue;
                };
                if seen.insert(a.account.clone()) {
                    accounts.push(a.account);
                }
            }
        }
        drop(published);
        let mut made = 0u64;
        for chunk in accounts.chunks(PRECOMPUTE_BATCH) {
            // A publication in progress goes first.
            drop(self.publishing.lock().await);
            if !self.wanted() {
                break;
            }
            let todo: Vec<&Account> = {
                let c = self.state.cache.lock().expect("proof cache");
                chunk
                    .iter()
                    .filter(|a| !c.entries.contains_key(*a))
                    .collect()
            };
            let labels: Vec<Vec<u8>> = todo
                .iter()
                .map(|a| label(&Address::new((*a).clone(), self.domain.clone())))
                .collect();
            let lookups = match self.dir.batch_lookup(&labels).await {
                Ok(l) => l.into_iter().map(Some).collect(),
                Err(e) => {
                    // A label not published (a directory edited under us?):
                    // one by one, leaving that one out.
                    tracing::debug!(error = %e, "batch lookup failed; one by one");
                    let mut one = Vec::with_capacity(labels.len());
                    for l in &labels {
                        one.push(self.dir.lookup(l).await.ok().flatten());
                    }
                    one
                }
            };
            let mut c = self.state.cache.lock().expect("proof cache");
            if c.generation != self.generation {
                break;
            }
            for (a, l) in todo.into_iter().zip(lookups) {
                let Some(l) = l else { continue };
                // Not counted as asked for in this epoch: only requests are.
                if c.insert(l.epoch, a, (l.value, Arc::new(l.proof))) {
                    made += 1;
                }
            }
        }
        self.state
            .stats
            .precomputed
            .fetch_add(made, Ordering::Relaxed);
        metrics::counter!("cmtp_kt_proofs_precomputed_total").increment(made);
        Ok((made, accounts.len()))
    }
}

/// `(st)` shortcut to the transparency state.
fn kt(sh: &Shared) -> &Transparency {
    &sh.kt
}

async fn signed_head(sh: &Shared, epoch: u64) -> anyhow::Result<Option<SignedHead>> {
    match sh.store.kt_head(epoch).await? {
        Some(b) => Ok(Some(SignedHead::decode(&b).map_err(err)?)),
        None => Ok(None),
    }
}

async fn witnessed_head(sh: &Shared, head: SignedHead) -> anyhow::Result<WitnessedHead> {
    let cosignatures = sh
        .store
        .kt_cosignatures(head.head.epoch)
        .await?
        .iter()
        .filter_map(|b| Cosignature::decode(b).ok())
        .collect();
    Ok(WitnessedHead { head, cosignatures })
}

/// Makes sure a head exists for the directory's current epoch (epoch 0 at
/// the first start; after a crash between a publication and its head, the
/// missing head), chained to the newest head kept.
async fn ensure_head(sh: &Shared, dir: &Directory, now: u64) -> anyhow::Result<SignedHead> {
    let (epoch, root) = dir.current().await.map_err(err)?;
    if let Some(h) = signed_head(sh, epoch).await? {
        return Ok(h);
    }
    let previous = match sh.store.kt_latest_head().await? {
        Some((e, bytes)) if e < epoch => {
            if e + 1 != epoch {
                tracing::error!(
                    have = e,
                    directory = epoch,
                    "key directory heads are missing; witnesses will refuse the gap"
                );
            }
            SignedHead::decode(&bytes).map_err(err)?.head.hash()
        }
        Some((e, _)) => {
            anyhow::bail!("a head for epoch {e} exists beyond the directory's epoch {epoch}")
        }
        None => [0; 32],
    };
    let head = EpochHead {
        domain: sh.domain.clone(),
        epoch,
        root,
        vrf_key: dir.vrf_public_key(),
        previous,
        time: now,
    };
    let signed = SignedHead::sign(&sh.key, head);
    let kept = sh.store.kt_put_head(epoch, signed.to_bytes()).await?;
    SignedHead::decode(&kept).map_err(err)
}

/// Starts the directory: the head of its current epoch exists afterwards.
pub async fn start(sh: &Shared, now: u64) -> anyhow::Result<()> {
    let dir = kt(sh).directory()?;
    ensure_head(sh, &dir, now).await?;
    Ok(())
}

/// What the directory should say for each account, against what it says.
async fn pending_changes(sh: &Shared) -> anyhow::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let published: HashMap<Vec<u8>, Vec<u8>> =
        sh.store.kt_all_latest().await?.into_iter().collect();
    let mut wanted: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
    for (account, pk) in sh.store.kt_identity_keys().await? {
        let (Ok(account), Ok(key)) = (
            Account::parse_canonical(&account),
            PublicKey::from_bytes(&pk),
        ) else {
            tracing::warn!(%account, "account with an invalid name or key left out of the key directory");
            continue;
        };
        let address = Address::new(account, sh.domain.clone());
        wanted.insert(label(&address), key_value(&address, &key).to_vec());
    }
    let mut changes: Vec<(Vec<u8>, Vec<u8>)> = wanted
        .iter()
        .filter(|(l, v)| published.get(*l) != Some(*v))
        .map(|(l, v)| (l.clone(), v.clone()))
        .collect();
    for (l, v) in &published {
        if !wanted.contains_key(l) && v[..] != NO_KEY {
            changes.push((l.clone(), NO_KEY.to_vec()));
        }
    }
    changes.sort();
    Ok(changes)
}

/// Publishes the pending key changes as a new epoch, signs and keeps its
/// head, and asks the witnesses to cosign it. The new epoch, or `None`
/// when nothing changed (the witnesses are still asked about the newest
/// head if some have not cosigned it).
pub async fn publish_epoch(sh: &Arc<Shared>, now: u64) -> anyhow::Result<Option<u64>> {
    let published = publish_epoch_without_witnesses(sh, now).await?;
    ask_witnesses(sh, now).await;
    Ok(published)
}

/// [`publish_epoch`] without asking the witnesses (they are asked by the
/// next call of [`ask_witnesses`]).
pub async fn publish_epoch_without_witnesses(sh: &Shared, now: u64) -> anyhow::Result<Option<u64>> {
    let t = kt(sh);
    let _one = t.publishing.lock().await;
    let changes = pending_changes(sh).await?;
    let mut published = None;
    if !changes.is_empty() {
        let started = Instant::now();
        let n = changes.len();
        // A directory of its own for the publication: the serving one's
        // cache must not see the transaction in progress.
        let writer = KtDirectory::open(sh.store.clone(), t.vrf.clone(), None)
            .await
            .map_err(err)?;
        ensure_head(sh, &writer, now).await?;
        writer.publish(changes).await.map_err(err)?;
        let head = ensure_head(sh, &writer, now).await?;
        t.reopen(&sh.store, precompute(sh)).await?;
        metrics::counter!("cmtp_kt_epochs_total").increment(1);
        metrics::gauge!("cmtp_kt_epoch").set(head.head.epoch as f64);
        tracing::info!(
            epoch = head.head.epoch,
            changes = n,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "key directory epoch published"
        );
        published = Some(head.head.epoch);
    }
    Ok(published)
}

/// Asks every configured witness that has not cosigned the newest head.
pub async fn ask_witnesses(sh: &Arc<Shared>, now: u64) {
    let witnesses = sh.cfg().transparency.witnesses.clone();
    if witnesses.is_empty() {
        return;
    }
    let Ok(Some((epoch, bytes))) = sh.store.kt_latest_head().await else {
        return;
    };
    let Ok(head) = SignedHead::decode(&bytes) else {
        return;
    };
    let have: Vec<Domain> = sh
        .store
        .kt_cosignatures(epoch)
        .await
        .unwrap_or_default()
        .iter()
        .filter_map(|b| Cosignature::decode(b).ok())
        .map(|c| c.witness)
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    for w in witnesses {
        let Ok(w) = Domain::parse(&w) else { continue };
        if have.contains(&w) || w == sh.domain {
            continue;
        }
        let sh = sh.clone();
        let head = head.clone();
        tasks.spawn(async move {
            match ask_witness(&sh, &w, &head, now).await {
                Ok(()) => tracing::info!(witness = %w, epoch = head.head.epoch, "epoch head cosigned"),
                Err(e) => tracing::warn!(witness = %w, epoch = head.head.epoch, error = %e, "witness did not cosign"),
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

async fn ask_witness(sh: &Shared, w: &Domain, head: &SignedHead, now: u64) -> anyhow::Result<()> {
    let key = sh.remote.server_key(w, now).await?;
    let mut conn = sh.remote.connect(w, Some(key)).await?;
    let reply = conn
        .command(
            &Command::KtWitness {
                domain: sh.domain.clone(),
            },
            64 * 1024,
        )
        .await?;
    conn.close().await;
    if reply.status != Status::Success {
        anyhow::bail!("{}: {}", reply.status, reply.text());
    }
    match WitnessVerdict::decode(&reply.body).map_err(err)? {
        WitnessVerdict::Cosigned(c) => {
            if c.witness != *w || c.key != key {
                anyhow::bail!("the cosignature is not {w}'s");
            }
            if c.verify(&head.head).is_err() {
                // It cosigned another head of this epoch, or a later one.
                anyhow::bail!("the cosignature is not of epoch {}'s head", head.head.epoch);
            }
            sh.store
                .kt_add_cosignature(head.head.epoch, w.as_str(), c.to_bytes())
                .await?;
            // The cached head is read again with this cosignature.
            kt(sh).proofs.cache.lock().expect("proof cache").head = None;
            metrics::counter!("cmtp_kt_cosignatures_total").increment(1);
            Ok(())
        }
        WitnessVerdict::Misbehaved(m) => {
            metrics::counter!("cmtp_kt_misbehaviour_total").increment(1);
            tracing::error!(witness = %w, kind = %m.kind, epoch = m.b.head.epoch,
                "a witness holds proof that this server signed contradictory directory heads");
            anyhow::bail!("refused: {}", m.kind)
        }
    }
}

/// The publisher: once the newest head is `epoch_secs` old, the node
/// holding the lease publishes the changes (if any) and asks the witnesses
/// again; the others reopen their directory when a new head appears.
pub async fn run(sh: Arc<Shared>, mut shutdown: watch::Receiver<bool>, _alive: mpsc::Sender<()>) {
    let mut last_publish: Option<Instant> = None;
    loop {
        let period = Duration::from_secs(sh.cfg().transparency.epoch_secs.max(1));
        let now = crate::state::now();
        // An epoch is due `epoch_secs` after the newest head (kept in the
        // store, so a restart or another node's publication counts), and
        // this node looks for changes at most once a period.
        let head_due = match sh.store.kt_latest_head().await {
            Ok(Some((_, b))) => SignedHead::decode(&b)
                .map(|h| now >= h.head.time.saturating_add(period.as_secs()))
                .unwrap_or(true),
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "key directory: newest head not read");
                false
            }
        };
        let due = head_due && last_publish.is_none_or(|t| t.elapsed() >= period);
        if due {
            let lease = (period.as_secs() * 3).max(30);
            match sh
                .store
                .kt_claim_publisher(&sh.node, now, now + lease)
                .await
            {
                Ok(true) => {
                    if let Err(e) = publish_epoch(&sh, now).await {
                        tracing::warn!(error = %e, "key directory epoch not published");
                    }
                    last_publish = Some(Instant::now());
                }
                Ok(false) => last_publish = Some(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "key directory publisher lease"),
            }
        }
        // Another node may have published.
        if let (Ok(Some((epoch, _))), Ok(dir)) =
            (sh.store.kt_latest_head().await, kt(&sh).directory())
            && dir.current().await.is_ok_and(|(e, _)| e < epoch)
            && let Err(e) = kt(&sh).reopen(&sh.store, precompute(&sh)).await
        {
            tracing::warn!(error = %e, "key directory not reopened");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5).min(period)) => {}
            _ = shutdown.changed() => {
                // A precomputation under way stops after its batch.
                kt(&sh).proofs.closing.store(true, Ordering::Relaxed);
                return;
            }
        }
        if *shutdown.borrow() {
            kt(&sh).proofs.closing.store(true, Ordering::Relaxed);
            return;
        }
    }
}

// ----- the commands -----

/// Runs a transparency command (PROTOCOL.md §20) for the session.
pub(crate) async fn serve(s: &mut Session, cmd: Command, now: u64) {
    let result = match cmd {
        Command::KeyProof { user, domain } => key_proof(s, user, domain, now).await,
        Command::KtHead { epoch } => kt_head(s, epoch).await,
        Command::KtAudit { from, to } => kt_audit(s, from, to).await,
        Command::KtWitness { domain } => kt_witness(s, domain, now).await,
        Command::KtEvidence { domain } => kt_evidence(s, domain).await,
        Command::KtHistory => kt_history(s).await,
        other => {
            let text = format!("{} is not a key transparency command", other.word());
            s.conn.reply(Status::BadCommand, text.as_bytes());
            Ok(())
        }
    };
    if let Err(e) = result {
        s.temp_failure(&e);
    }
}

async fn key_proof(
    s: &mut Session,
    user: Account,
    domain: Option<Domain>,
    now: u64,
) -> anyhow::Result<()> {
    let sh = s.sh.clone();
    let domain = domain.unwrap_or_else(|| sh.domain.clone());
    if domain != sh.domain {
        return remote_key_proof(s, user, domain, now).await;
    }
    let Some(statement) = sh.local_statement(&user, now).await? else {
        let text = format!("no user {user} at {domain}");
        s.conn.reply(Status::KeyNotAvailable, text.as_bytes());
        return Ok(());
    };
    let answer = ProvenKey {
        proof: local_proof(&sh, &user, &statement).await?,
        statement,
    };
    s.conn.reply(Status::Success, &answer.to_bytes());
    Ok(())
}

/// The head and lookup proof of `user`'s key as `statement` states it, or
/// `None` when the directory does not (yet) hold that key.
pub async fn local_proof(
    sh: &Shared,
    user: &Account,
    statement: &[u8],
) -> anyhow::Result<Option<(WitnessedHead, Vec<u8>)>> {
    let stated = KeyStatement::decode(statement).map_err(err)?;
    catch_up(sh).await?;
    let address = Address::new(user.clone(), sh.domain.clone());
    let want = key_value(&address, &stated.key);
    let t = kt(sh);
    // One look at the cache: the proof and the head of the epoch served.
    let (cached, mut head, served) = {
        let mut c = t.proofs.cache.lock().expect("proof cache");
        let cached = c.entries.get(user).cloned();
        let epoch = c.epoch;
        if cached.is_some() {
            c.ask(epoch, user);
        }
        let head = c
            .head
            .as_ref()
            .filter(|(at, _)| at.elapsed() < HEAD_TTL)
            .map(|(_, h)| h.clone());
        (cached, head, epoch)
    };
    let (epoch, value, proof) = match cached {
        Some((value, proof)) => {
            t.proofs.stats.cached.fetch_add(1, Ordering::Relaxed);
            (served, value, proof)
        }
        None => {
            let dir = t.directory()?;
            let Some(l) = dir.lookup(&label(&address)).await.map_err(err)? else {
                return Ok(None);
            };
            t.proofs.stats.computed.fetch_add(1, Ordering::Relaxed);
            metrics::counter!("cmtp_kt_proofs_computed_total").increment(1);
            let entry = (l.value, Arc::new(l.proof));
            let mut c = t.proofs.cache.lock().expect("proof cache");
            c.ask(l.epoch, user);
            c.insert(l.epoch, user, entry.clone());
            if l.epoch != served {
                // A newer directory was opened meanwhile.
                head = None;
            }
            (l.epoch, entry.0, entry.1)
        }
    };
    if value[..] != want[..] {
        // The key changed after the last epoch (or is an alias's).
        return Ok(None);
    }
    let head = match head {
        Some(h) => h,
        None => {
            let Some(signed) = signed_head(sh, epoch).await? else {
                return Ok(None);
            };
            let w = witnessed_head(sh, signed).await?;
            let mut c = t.proofs.cache.lock().expect("proof cache");
            if c.epoch == epoch {
                c.head = Some((Instant::now(), w.clone()));
            }
            w
        }
    };
    Ok(Some((head, proof.to_vec())))
}

async fn remote_key_proof(
    s: &mut Session,
    user: Account,
    domain: Domain,
    now: u64,
) -> anyhow::Result<()> {
    let logged_in = s.conn.logged_in().is_some();
    if let Err(text) = s.sh.check_remote_key_request(s.peer.ip(), logged_in) {
        s.conn.reply(Status::RateLimited, text.as_bytes());
        return Ok(());
    }
    let sh = s.sh.clone();
    let result: anyhow::Result<(Status, Vec<u8>)> = async {
        let key = sh.remote.server_key(&domain, now).await?;
        let mut conn = sh.remote.connect(&domain, Some(key)).await?;
        let reply = conn
            .command(
                &Command::KeyProof {
                    user: user.clone(),
                    domain: Some(domain.clone()),
                },
                cmtp_client::conn::MAX_REPLY_BODY,
            )
            .await?;
        conn.close().await;
        if reply.status == Status::Success {
            // Passed on unchanged, once its statement is the domain's.
            let p = ProvenKey::decode(&reply.body).map_err(err)?;
            let st = KeyStatement::decode(&p.statement).map_err(err)?;
            st.verify(&key, Some(&user), &domain, now).map_err(err)?;
        }
        Ok((reply.status, reply.body))
    }
    .await;
    match result {
        Ok((status, body)) => s.conn.reply(status, &body),
        Err(e) => {
            tracing::info!(peer = %s.peer, %domain, error = %e, "remote KEYPROOF failed");
            s.conn
                .reply(Status::TempFailure, format!("{domain}: {e}").as_bytes());
        }
    }
    Ok(())
}

async fn kt_head(s: &mut Session, epoch: Option<u64>) -> anyhow::Result<()> {
    let sh = s.sh.clone();
    let head = match epoch {
        Some(e) => signed_head(&sh, e).await?,
        None => match sh.store.kt_latest_head().await? {
            Some((_, b)) => Some(SignedHead::decode(&b).map_err(err)?),
            None => None,
        },
    };
    match head {
        Some(h) => {
            let w = witnessed_head(&sh, h).await?;
            s.conn.reply(Status::Success, &w.to_bytes());
        }
        None => s.conn.reply(Status::Failure, b"no head for that epoch"),
    }
    Ok(())
}

async fn kt_audit(s: &mut Session, from: u64, to: u64) -> anyhow::Result<()> {
    let logged_in = s.conn.logged_in().is_some();
    if let Err(text) = s.sh.check_remote_key_request(s.peer.ip(), logged_in) {
        s.conn.reply(Status::RateLimited, text.as_bytes());
        return Ok(());
    }
    let sh = s.sh.clone();
    let cached = kt(&sh)
        .audits
        .lock()
        .expect("audit cache")
        .as_ref()
        .filter(|(k, _)| *k == (from, to))
        .map(|(_, b)| b.clone());
    if let Some(body) = cached {
        s.conn.reply(Status::Success, &body);
        return Ok(());
    }
    catch_up(&sh).await?;
    let heads = sh.store.kt_heads(from + 1, to).await?;
    if heads.len() as u64 != to - from {
        s.conn
            .reply(Status::Failure, b"this directory has no such epochs");
        return Ok(());
    }
    let heads = heads
        .iter()
        .map(|(_, b)| SignedHead::decode(b))
        .collect::<Result<Vec<_>, _>>()
        .map_err(err)?;
    let proof = kt(&sh).directory()?.audit(from, to).await.map_err(err)?;
    let body = Arc::new(AuditAnswer { heads, proof }.to_bytes());
    *kt(&sh).audits.lock().expect("audit cache") = Some(((from, to), body.clone()));
    s.conn.reply(Status::Success, &body);
    Ok(())
}

async fn kt_evidence(s: &mut Session, domain: Domain) -> anyhow::Result<()> {
    match s.sh.store.kt_evidence(domain.as_str()).await? {
        Some(proof) => s.conn.reply(Status::Success, &proof),
        None => {
            let text = format!("no evidence against {domain}");
            s.conn.reply(Status::Failure, text.as_bytes());
        }
    }
    Ok(())
}

async fn kt_history(s: &mut Session) -> anyhow::Result<()> {
    let Some(account) = s.conn.logged_in().cloned() else {
        s.conn
            .reply(Status::AuthRequired, b"KTHISTORY needs a logged-in session");
        return Ok(());
    };
    let sh = s.sh.clone();
    let address = Address::new(account, sh.domain.clone());
    catch_up(&sh).await?;
    let dir = kt(&sh).directory()?;
    let Some((epoch, _, proof)) = dir.history(&label(&address)).await.map_err(err)? else {
        s.conn.reply(
            Status::Failure,
            b"your key is not in the key directory yet (it is published at the next epoch)",
        );
        return Ok(());
    };
    let Some(head) = signed_head(&sh, epoch).await? else {
        s.conn.reply(
            Status::TempFailure,
            b"the head of this epoch is not signed yet; try again",
        );
        return Ok(());
    };
    let answer = KeyHistory {
        head: witnessed_head(&sh, head).await?,
        proof,
    };
    s.conn.reply(Status::Success, &answer.to_bytes());
    Ok(())
}

// ----- witnessing -----

async fn kt_witness(s: &mut Session, domain: Domain, now: u64) -> anyhow::Result<()> {
    let sh = s.sh.clone();
    let ours = sh
        .cfg()
        .transparency
        .witness_for
        .iter()
        .any(|d| Domain::parse(d).is_ok_and(|d| d == domain));
    if !ours {
        let text = format!("{} does not witness {domain}", sh.domain);
        s.conn.reply(Status::Failure, text.as_bytes());
        return Ok(());
    }
    // Each request makes this server dial the domain: it spends the
    // peer's remote-request tokens (§15).
    let logged_in = s.conn.logged_in().is_some();
    if let Err(text) = sh.check_remote_key_request(s.peer.ip(), logged_in) {
        s.conn.reply(Status::RateLimited, text.as_bytes());
        return Ok(());
    }
    // One check of a domain at a time.
    let _one = kt(&sh).witnessing.lock().await;
    match witness(&sh, &domain, now).await {
        Ok(v) => s.conn.reply(Status::Success, &v.to_bytes()),
        Err(e) => {
            tracing::warn!(%domain, error = %e, "did not cosign");
            s.conn
                .reply(Status::Failure, format!("not cosigned: {e}").as_bytes());
        }
    }
    Ok(())
}

async fn fetch_head(
    conn: &mut Connection,
    key: &PublicKey,
    domain: &Domain,
) -> anyhow::Result<SignedHead> {
    let reply = conn
        .command(
            &Command::KtHead { epoch: None },
            cmtp_client::conn::MAX_REPLY_BODY,
        )
        .await?;
    if reply.status != Status::Success {
        anyhow::bail!("KTHEAD: {}: {}", reply.status, reply.text());
    }
    let head = WitnessedHead::decode(&reply.body).map_err(err)?.head;
    head.verify_for(key, domain).map_err(err)?;
    Ok(head)
}

/// Fetches `domain`'s newest head from its own server and cosigns it if it
/// extends the head cosigned before; keeps and returns the proof when the
/// domain signed a head that contradicts one seen before.
pub async fn witness(sh: &Shared, domain: &Domain, now: u64) -> anyhow::Result<WitnessVerdict> {
    let key = sh.remote.server_key(domain, now).await?;
    let mut conn = sh.remote.connect(domain, Some(key)).await?;
    let new = fetch_head(&mut conn, &key, domain).await?;
    let before = match sh.store.kt_witnessed(domain.as_str()).await? {
        Some((_, b)) => Some(SignedHead::decode(&b).map_err(err)?),
        None => None,
    };
    if let Some(prev) = &before {
        if let Some(m) = Misbehaviour::between(prev, &new) {
            return misbehaved(sh, domain, m, now).await;
        }
        if new.head.epoch < prev.head.epoch {
            anyhow::bail!(
                "{domain} shows epoch {}, older than epoch {} cosigned before",
                new.head.epoch,
                prev.head.epoch
            );
        }
        // Every head in between, and the append-only proof, 16 epochs at a time.
        let mut from = prev.clone();
        while from.head.epoch < new.head.epoch {
            let to = new
                .head
                .epoch
                .min(from.head.epoch + cmtp_proto::kt::MAX_AUDIT_SPAN);
            let reply = conn
                .command(
                    &Command::KtAudit {
                        from: from.head.epoch,
                        to,
                    },
                    MAX_AUDIT_REPLY,
                )
                .await?;
            if reply.status != Status::Success {
                anyhow::bail!("KTAUDIT: {}: {}", reply.status, reply.text());
            }
            let audit = AuditAnswer::decode(&reply.body).map_err(err)?;
            for h in &audit.heads {
                h.verify_for(&key, domain).map_err(err)?;
            }
            match check_chain(&from, &audit.heads) {
                Ok(()) => {}
                Err(HeadRefused::Misbehaviour(m)) => return misbehaved(sh, domain, *m, now).await,
                Err(e) => anyhow::bail!("{e}"),
            }
            let last = audit
                .heads
                .last()
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no heads"))?;
            if last.head.epoch != to {
                anyhow::bail!("KTAUDIT ended at epoch {}, not {to}", last.head.epoch);
            }
            let mut roots = vec![from.head.root];
            roots.extend(audit.heads.iter().map(|h| h.head.root));
            cmtp_kt::directory::verify_audit(roots, &audit.proof)
                .await
                .map_err(|e| {
                    anyhow::anyhow!("the append-only proof of {domain} does not verify: {e}")
                })?;
            from = last;
        }
        // The newest head is the one the audit ended on.
        if let Some(m) = Misbehaviour::between(&from, &new) {
            return misbehaved(sh, domain, m, now).await;
        }
    }
    conn.close().await;
    let cosignature = Cosignature::issue(&sh.key, sh.domain.clone(), &new.head, now);
    sh.store
        .kt_set_witnessed(domain.as_str(), new.head.epoch, new.to_bytes())
        .await?;
    Ok(WitnessVerdict::Cosigned(cosignature))
}

async fn misbehaved(
    sh: &Shared,
    domain: &Domain,
    m: Misbehaviour,
    now: u64,
) -> anyhow::Result<WitnessVerdict> {
    tracing::error!(%domain, kind = %m.kind, epoch = m.b.head.epoch,
        "a witnessed domain signed contradictory key directory heads; keeping the proof");
    metrics::counter!("cmtp_kt_evidence_total").increment(1);
    sh.store
        .kt_put_evidence(domain.as_str(), m.to_bytes(), now)
        .await?;
    // The first proof kept is the one given.
    let kept = sh
        .store
        .kt_evidence(domain.as_str())
        .await?
        .unwrap_or_else(|| m.to_bytes());
    Ok(WitnessVerdict::Misbehaved(
        Misbehaviour::decode(&kept).map_err(err)?,
    ))
}
