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

use std::collections::HashMap;
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
/// Lookup answers kept (per account, for the current epoch).
const PROOF_CACHE: usize = 200_000;
/// The value of a deleted account's label: no key.
pub const NO_KEY: [u8; 32] = [0; 32];

type Directory = KtDirectory<AnyStore>;

/// A cached `KTAUDIT` answer: `(from, to)` and the answer's body.
type CachedAudit = ((u64, u64), Arc<Vec<u8>>);

/// A cached lookup: the epoch, the value, the proof.
type CachedProof = (u64, Vec<u8>, Arc<Vec<u8>>);

/// The directory's state in this process.
pub struct Transparency {
    vrf: VrfKey,
    /// The directory lookups and audits are served from (replaced after
    /// each epoch, so its node cache is never stale).
    serving: ArcSwapOption<Directory>,
    /// Lookup proofs of the current epoch, by account.
    proofs: Mutex<HashMap<Account, CachedProof>>,
    /// One publication at a time in this process.
    publishing: tokio::sync::Mutex<()>,
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
            proofs: Mutex::new(HashMap::new()),
            publishing: tokio::sync::Mutex::new(()),
            witnessing: tokio::sync::Mutex::new(()),
            audits: Mutex::new(None),
        };
        t.reopen(store).await?;
        Ok(t)
    }

    async fn reopen(&self, store: &AnyStore) -> anyhow::Result<Arc<Directory>> {
        let d = Arc::new(
            KtDirectory::open(store.clone(), self.vrf.clone(), Some(NODE_CACHE))
                .await
                .map_err(err)?,
        );
        self.serving.store(Some(d.clone()));
        self.proofs.lock().expect("proof cache").clear();
        *self.audits.lock().expect("audit cache") = None;
        Ok(d)
    }

    fn directory(&self) -> anyhow::Result<Arc<Directory>> {
        self.serving
            .load_full()
            .ok_or_else(|| anyhow::anyhow!("the key directory is not open"))
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
        t.reopen(&sh.store).await?;
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
            && let Err(e) = kt(&sh).reopen(&sh.store).await
        {
            tracing::warn!(error = %e, "key directory not reopened");
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5).min(period)) => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
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
    let address = Address::new(user.clone(), sh.domain.clone());
    let want = key_value(&address, &stated.key);
    let dir = kt(sh).directory()?;
    let (epoch, _) = dir.current().await.map_err(err)?;
    let cached = kt(sh)
        .proofs
        .lock()
        .expect("proof cache")
        .get(user)
        .filter(|(e, _, _)| *e == epoch)
        .cloned();
    let (epoch, value, proof) = match cached {
        Some(c) => c,
        None => {
            let Some(l) = dir.lookup(&label(&address)).await.map_err(err)? else {
                return Ok(None);
            };
            let entry = (l.epoch, l.value, Arc::new(l.proof));
            let mut cache = kt(sh).proofs.lock().expect("proof cache");
            if cache.len() >= PROOF_CACHE {
                cache.clear();
            }
            cache.insert(user.clone(), entry.clone());
            entry
        }
    };
    if value[..] != want[..] {
        // The key changed after the last epoch (or is an alias's).
        return Ok(None);
    }
    let Some(head) = signed_head(sh, epoch).await? else {
        return Ok(None);
    };
    Ok(Some((witnessed_head(sh, head).await?, proof.to_vec())))
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
