//! Key transparency, the client's side (PROTOCOL.md §20.9): every key of
//! another user comes with a proof from the user's domain's key directory,
//! and the client checks it; at every login the client checks its own
//! key's history.
//!
//! - [`check_answer`] verifies a `KEYPROOF` answer: the statement under the
//!   domain's key, the epoch head's signature, that the head is not older
//!   than one seen before for that domain (no rollback) and does not
//!   contradict one (no fork, no broken chain: the client then keeps the
//!   proof of misbehaviour), akd's lookup proof against the head, and that
//!   the value it proves is the key the statement states. It counts the
//!   distinct domains whose cosignature verifies under the key this client
//!   trusts for them. A key without a proof (changed after the last epoch)
//!   is accepted only for an address with no proven key before, and said so.
//! - [`self_check`] asks for the logged-in account's history (`KTHISTORY`)
//!   and reports every key published for it that this device does not hold
//!   (the current identity key or one kept as `identity.key.old-*`).
//! - [`verify_evidence`] checks a proof of misbehaviour any witness gives
//!   (`KTEVIDENCE`); a client that holds one refuses the domain's proofs.
//!
//! What the client remembers lives in `kt.json` in the home (mode 0600):
//! the newest head seen per domain, the proven keys per address, the proofs
//! of misbehaviour, and the last self-check.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cmtp_proto::command::Command;
use cmtp_proto::crypto::{IdentityKey, PublicKey};
use cmtp_proto::kt::{
    HeadRefused, HeadTracker, KeyHistory, Misbehaviour, ProvenKey, SignedHead, key_value,
};
use cmtp_proto::names::{Address, Domain};
use cmtp_proto::reply::Status;
use cmtp_proto::statements::KeyStatement;
use serde::{Deserialize, Serialize};

use crate::failure::{Error, Result};
use crate::home::{Home, write_private};
use crate::session::Session;
use crate::trust::verify_statement;

/// The file, in the home directory.
pub const STATE_FILE: &str = "kt.json";

/// The extension token a server announces in OHAI when it keeps a key
/// directory.
pub const EXTENSION: &str = "KT";

/// What the directory says about a key the client was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Transparency {
    /// The key is the one the domain's directory holds at `epoch`.
    Proven {
        /// The epoch of the head the proof was checked against.
        epoch: u64,
        /// The epoch since which the key has been in the directory.
        since_epoch: u64,
        /// The domains whose cosignature of that head verified.
        witnesses: Vec<String>,
    },
    /// The domain keeps a directory, but this key is not in it (yet): it
    /// changed after the last epoch, or the account is new.
    NoProof,
    /// The server does not keep a key directory (an older server).
    NotOffered,
}

impl std::fmt::Display for Transparency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Transparency::Proven {
                epoch, witnesses, ..
            } => {
                write!(f, "proven in the key directory (epoch {epoch}), ")?;
                match witnesses.len() {
                    0 => f.write_str("witnessed by no other domain"),
                    1 => write!(f, "witnessed by 1 domain ({})", witnesses[0]),
                    n => write!(f, "witnessed by {n} domains ({})", witnesses.join(", ")),
                }
            }
            Transparency::NoProof => f.write_str(
                "NOT proven yet: the key is not in its domain's key directory (a change newer than the last epoch)",
            ),
            Transparency::NotOffered => {
                f.write_str("not proven: the domain's server keeps no key directory")
            }
        }
    }
}

/// What the client last learned about an address's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The key's fingerprint.
    pub fingerprint: String,
    /// What the directory said.
    pub transparency: Transparency,
    /// When (unix seconds).
    pub checked_at: u64,
}

/// One entry of the own key's history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The epoch it was published in.
    pub epoch: u64,
    /// The version (1 for the first key).
    pub version: u64,
    /// The value (hex).
    pub value: String,
    /// Whose key it is, as far as this device knows: `"this device's key"`,
    /// `"an earlier key of yours (...)"`, or `None`: not a key this
    /// device holds.
    pub known_as: Option<String>,
}

/// The result of the self-check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SelfReport {
    /// The address checked.
    pub address: String,
    /// When.
    pub checked_at: u64,
    /// The epoch of the head the history was checked against (`None`: the
    /// key is not in the directory yet).
    pub epoch: Option<u64>,
    /// How many domains witnessed that head.
    pub witnesses: Vec<String>,
    /// Every key published for the address, newest first.
    pub history: Vec<HistoryEntry>,
}

impl SelfReport {
    /// The warnings: one per published key this device does not hold.
    pub fn alarms(&self) -> Vec<String> {
        self.history
            .iter()
            .filter(|e| e.known_as.is_none())
            .map(|e| {
                format!(
                    "WARNING: a key this device does not hold was published for {} at epoch {} (version {}). \
                     If you did not register it (a reset, another device), your server published a key that is not yours: \
                     mail sealed to it can be read by whoever holds it.",
                    self.address, e.epoch, e.version
                )
            })
            .collect()
    }
}

/// What the client remembers (`kt.json`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    /// The newest signed head seen per domain (hex).
    #[serde(default)]
    pub heads: BTreeMap<String, String>,
    /// The last verdict per address.
    #[serde(default)]
    pub keys: BTreeMap<String, KeyRecord>,
    /// Proofs of misbehaviour per domain (hex).
    #[serde(default)]
    pub evidence: BTreeMap<String, String>,
    /// The last self-check.
    #[serde(default)]
    pub own: Option<SelfReport>,
    /// Why the last self-check could not be done, when the own server's
    /// answer did not verify.
    #[serde(default)]
    pub own_error: Option<String>,
}

impl State {
    fn path(home: &Path) -> PathBuf {
        home.join(STATE_FILE)
    }

    /// Reads the state of the home at `home` (absent: empty).
    pub fn load(home: &Path) -> Result<State> {
        let path = Self::path(home);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::BadFile {
                path,
                detail: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
            Err(e) => Err(Error::file(&path, e)),
        }
    }

    /// Writes it (mode 0600, atomically).
    pub fn save(&self, home: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).expect("state serialises");
        write_private(&Self::path(home), &bytes)
    }

    fn tracker(&self, domain: &Domain) -> HeadTracker {
        let latest = self
            .heads
            .get(domain.as_str())
            .and_then(|h| hex::decode(h).ok())
            .and_then(|b| SignedHead::decode(&b).ok());
        HeadTracker { latest }
    }

    /// Checks `head` (verified) against the newest seen for its domain and
    /// keeps it when newer; a contradiction becomes kept evidence.
    pub fn observe(&mut self, head: &SignedHead) -> Result<()> {
        let domain = head.head.domain.clone();
        let mut t = self.tracker(&domain);
        match t.observe(head) {
            Ok(_) => {
                if let Some(latest) = t.latest {
                    self.heads
                        .insert(domain.to_string(), hex::encode(latest.to_bytes()));
                }
                Ok(())
            }
            Err(HeadRefused::Rollback { seen, got }) => Err(Error::Verification(format!(
                "{domain} answered with its key directory at epoch {got}, older than epoch {seen} this client has seen: refused (a rollback)"
            ))),
            Err(HeadRefused::Misbehaviour(m)) => {
                self.evidence
                    .entry(domain.to_string())
                    .or_insert_with(|| hex::encode(m.to_bytes()));
                Err(Error::Verification(format!(
                    "{domain} signed {} (epoch {}): its server shows different directories to different people; refusing its keys",
                    m.kind, m.b.head.epoch
                )))
            }
            Err(e) => Err(Error::Verification(e.to_string())),
        }
    }
}

/// Verifies a `KEYPROOF` answer for `address` (see the module docs).
/// `trusted` says whether a cosignature's key is the key this client
/// trusts for the witness domain.
pub fn check_answer(
    state: &mut State,
    body: &[u8],
    address: &Address,
    domain_key: &PublicKey,
    now: u64,
    trusted: impl Fn(&Domain, &PublicKey) -> bool,
) -> Result<(KeyStatement, Transparency)> {
    let answer = ProvenKey::decode(body)
        .map_err(|e| Error::Verification(format!("the key proof of {address}: {e}")))?;
    let statement = verify_statement(
        &answer.statement,
        domain_key,
        Some(&address.account),
        &address.domain,
        now,
    )?;
    if let Some(e) = state.evidence.get(address.domain.as_str()) {
        return Err(Error::Verification(format!(
            "this client holds proof that {} signed contradictory key directories ({} bytes of evidence in {STATE_FILE}); its keys are refused",
            address.domain,
            e.len() / 2
        )));
    }
    let fingerprint = statement.key.fingerprint_hex();
    let verdict = match answer.proof {
        None => {
            if let Some(before) = state.keys.get(&address.to_string())
                && matches!(before.transparency, Transparency::Proven { .. })
                && before.fingerprint != fingerprint
            {
                return Err(Error::Verification(format!(
                    "the key of {address} changed (was {}, now {fingerprint}) and the change is not in {}'s key directory yet; \
                     refusing it until it is (at the next epoch, within minutes)",
                    before.fingerprint, address.domain
                )));
            }
            Transparency::NoProof
        }
        Some((head, proof)) => {
            head.head
                .verify_for(domain_key, &address.domain)
                .map_err(|e| {
                    Error::Verification(format!(
                        "the key directory head of {}: {e}",
                        address.domain
                    ))
                })?;
            state.observe(&head.head)?;
            let proven = cmtp_kt::verify_lookup(&head.head.head, address, &proof).map_err(|e| {
                Error::Verification(format!("the key directory proof of {address}: {e}"))
            })?;
            if proven.value[..] != key_value(address, &statement.key)[..] {
                return Err(Error::Verification(format!(
                    "{}'s server states a key for {address} ({fingerprint}) that is NOT the one its key directory holds: \
                     the server is lying about this key; refusing it",
                    address.domain
                )));
            }
            Transparency::Proven {
                epoch: head.head.head.epoch,
                since_epoch: proven.since_epoch,
                witnesses: head
                    .witnesses(trusted)
                    .into_iter()
                    .map(|d| d.to_string())
                    .collect(),
            }
        }
    };
    state.keys.insert(
        address.to_string(),
        KeyRecord {
            fingerprint,
            transparency: verdict.clone(),
            checked_at: now,
        },
    );
    Ok((statement, verdict))
}

/// Fetches `address`'s statement with its proof (`KEYPROOF`) through the
/// session's server and checks it ([`check_answer`]), fetching (and
/// pinning) the witnesses' keys as needed. Servers that do not announce a
/// directory are asked with `KEYREQUEST` by the caller.
pub async fn fetch(
    session: &mut Session,
    address: &Address,
    domain_key: &PublicKey,
    now: u64,
) -> Result<(KeyStatement, Transparency)> {
    let reply = session
        .command(&Command::KeyProof {
            user: address.account.clone(),
            domain: Some(address.domain.clone()),
        })
        .await?;
    if reply.status == Status::KeyNotAvailable {
        return Err(Error::NotFound(format!(
            "no key for {address}: {}",
            reply.text()
        )));
    }
    if reply.status != Status::Success {
        return Err(Error::from_reply(&reply, "KEYPROOF"));
    }
    // The witnesses' keys, as this client trusts them (pinned on first use).
    let mut witness_keys: BTreeMap<Domain, PublicKey> = BTreeMap::new();
    if let Ok(ProvenKey {
        proof: Some((head, _)),
        ..
    }) = ProvenKey::decode(&reply.body)
    {
        for c in &head.cosignatures {
            if c.witness == address.domain || witness_keys.contains_key(&c.witness) {
                continue;
            }
            match session.domain_key(&c.witness).await {
                Ok((k, _)) => {
                    witness_keys.insert(c.witness.clone(), k);
                }
                Err(e) => {
                    tracing::info!(witness = %c.witness, error = %e, "witness key not checked")
                }
            }
        }
    }
    let home = home_of(session);
    let mut state = State::load(&home)?;
    let result = check_answer(&mut state, &reply.body, address, domain_key, now, |d, k| {
        witness_keys.get(d) == Some(k)
    });
    // Heads and evidence are kept whatever the verdict.
    state.save(&home)?;
    result
}

/// The home directory a session belongs to (where `known_domains` lives).
fn home_of(session: &Session) -> PathBuf {
    session
        .known_domains()
        .path()
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The keys this device holds for its account: the identity key and those
/// kept as `identity.key.old-*`, by the name to show.
fn own_keys(home: &Home, identity: &IdentityKey) -> Vec<(PublicKey, String)> {
    let mut keys = vec![(identity.public(), "this device's key".to_owned())];
    let prefix = format!("{}.old-", crate::home::IDENTITY_FILE);
    if let Ok(dir) = std::fs::read_dir(home.root()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with(&prefix) {
                continue;
            }
            let Ok(text) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let line = text
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or("");
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            if hex::decode_to_slice(line, &mut seed[..]).is_ok() {
                let k = IdentityKey::from_seed(&seed).public();
                keys.push((k, format!("an earlier key of yours ({name})")));
            }
        }
    }
    keys
}

/// Checks the logged-in account's key history in its directory
/// (`KTHISTORY`) and keeps the report in the home's state. `Ok(None)` when
/// the server keeps no directory.
pub async fn self_check(
    session: &mut Session,
    home: &Home,
    now: u64,
) -> Result<Option<SelfReport>> {
    if !session.greeting().extensions.iter().any(|e| e == EXTENSION) {
        return Ok(None);
    }
    let (address, identity) = {
        let (a, i) = session.account()?;
        (a.clone(), i.clone())
    };
    let server_key = session.server_key();
    let reply = session.command(&Command::KtHistory).await?;
    let mut report = SelfReport {
        address: address.to_string(),
        checked_at: now,
        epoch: None,
        witnesses: Vec::new(),
        history: Vec::new(),
    };
    let mut state = State::load(home.root())?;
    match reply.status {
        Status::Success => {
            let h = KeyHistory::decode(&reply.body)
                .map_err(|e| Error::Verification(format!("the key history of {address}: {e}")))?;
            h.head
                .head
                .verify_for(&server_key, &address.domain)
                .map_err(|e| {
                    Error::Verification(format!(
                        "the key directory head of {}: {e}",
                        address.domain
                    ))
                })?;
            let observed = state.observe(&h.head.head);
            if observed.is_err() {
                state.save(home.root())?;
            }
            observed?;
            let entries = cmtp_kt::verify_history(&h.head.head.head, &address, &h.proof)
                .map_err(|e| Error::Verification(format!("the key history of {address}: {e}")))?;
            let known = own_keys(home, &identity);
            report.epoch = Some(h.head.head.head.epoch);
            let mut witness_keys: BTreeMap<Domain, PublicKey> = BTreeMap::new();
            for c in &h.head.cosignatures {
                if let Ok((k, _)) = session.domain_key(&c.witness).await {
                    witness_keys.insert(c.witness.clone(), k);
                }
            }
            report.witnesses = h
                .head
                .witnesses(|d, k| witness_keys.get(d) == Some(k))
                .into_iter()
                .map(|d| d.to_string())
                .collect();
            report.history = entries
                .into_iter()
                .map(|e| HistoryEntry {
                    epoch: e.since_epoch,
                    version: e.version,
                    known_as: known
                        .iter()
                        .find(|(k, _)| key_value(&address, k)[..] == e.value[..])
                        .map(|(_, name)| name.clone()),
                    value: hex::encode(&e.value),
                })
                .collect();
        }
        // The account's key is not published yet (a new account).
        Status::Failure => {}
        _ => return Err(Error::from_reply(&reply, "KTHISTORY")),
    }
    for alarm in report.alarms() {
        tracing::warn!("{alarm}");
    }
    state.own = Some(report.clone());
    state.save(home.root())?;
    Ok(Some(report))
}

/// The self-check run at every login ([`self_check`]): never fails the
/// login. A history that does not verify is kept as a warning; a server
/// that cannot answer now is only logged.
pub async fn login_check(session: &mut Session, home: &Home, now: u64) {
    let result = self_check(session, home, now).await;
    let own_error = match &result {
        Ok(_) => None,
        Err(e @ Error::Verification(_)) => Some(format!(
            "WARNING: the key history of your account could not be verified: {e}"
        )),
        Err(e) => {
            tracing::info!(error = %e, "key history not checked");
            return;
        }
    };
    if let Ok(mut state) = State::load(home.root()) {
        state.own_error = own_error;
        if let Err(e) = state.save(home.root()) {
            tracing::warn!(error = %e, "cannot keep the key transparency state");
        }
    }
}

/// What a client does when its server refuses this device's key login
/// (`KEYLOGIN` answered `AUTHFAILED`): the server holds another key for the
/// account. Without a login there is no `KTHISTORY`, so the client asks for
/// its own address's key with its proof (`KEYPROOF`, open to anyone) and
/// keeps a warning when the key the server states is not one this device
/// holds: a key published in the directory shows as an entry of the
/// self-check's history (`cmtp key history`), one not published yet as a
/// warning of its own. Never fails: the caller reports the refused login.
pub async fn refused_login_check(
    session: &mut Session,
    home: &Home,
    address: &Address,
    identity: &IdentityKey,
    now: u64,
) {
    if !session.greeting().extensions.iter().any(|e| e == EXTENSION) {
        return;
    }
    let result = refused_login_lookup(session, home, address, identity, now).await;
    let Ok(mut state) = State::load(home.root()) else {
        return;
    };
    match result {
        Ok(None) => {}
        Ok(Some(report)) => {
            for alarm in report.alarms() {
                tracing::warn!("{alarm}");
            }
            state.own_error = None;
            state.own = Some(report);
        }
        Err(e @ Error::Verification(_)) => {
            state.own_error = Some(format!(
                "WARNING: your server refused this device's key for {address}, and its key directory could not confirm the key it holds: {e}"
            ));
        }
        Err(e) => {
            tracing::info!(error = %e, "own key not checked in the key directory");
            return;
        }
    }
    if let Err(e) = state.save(home.root()) {
        tracing::warn!(error = %e, "cannot keep the key transparency state");
    }
}

/// The lookup of [`refused_login_check`]: `None` when the server states a
/// key this device holds (the refusal has another cause).
async fn refused_login_lookup(
    session: &mut Session,
    home: &Home,
    address: &Address,
    identity: &IdentityKey,
    now: u64,
) -> Result<Option<SelfReport>> {
    let reply = session
        .command(&Command::KeyProof {
            user: address.account.clone(),
            domain: Some(address.domain.clone()),
        })
        .await?;
    if reply.status != Status::Success {
        return Err(Error::from_reply(&reply, "KEYPROOF"));
    }
    let server_key = session.server_key();
    let mut witness_keys: BTreeMap<Domain, PublicKey> = BTreeMap::new();
    if let Ok(ProvenKey {
        proof: Some((head, _)),
        ..
    }) = ProvenKey::decode(&reply.body)
    {
        for c in &head.cosignatures {
            if c.witness != address.domain
                && !witness_keys.contains_key(&c.witness)
                && let Ok((k, _)) = session.domain_key(&c.witness).await
            {
                witness_keys.insert(c.witness.clone(), k);
            }
        }
    }
    let mut state = State::load(home.root())?;
    let checked = check_answer(
        &mut state,
        &reply.body,
        address,
        &server_key,
        now,
        |d, k| witness_keys.get(d) == Some(k),
    );
    state.save(home.root())?;
    let (statement, verdict) = checked?;
    let known = own_keys(home, identity);
    if known.iter().any(|(k, _)| *k == statement.key) {
        return Ok(None);
    }
    match verdict {
        Transparency::Proven {
            epoch,
            since_epoch,
            witnesses,
        } => {
            let proof = ProvenKey::decode(&reply.body)
                .ok()
                .and_then(|p| p.proof)
                .and_then(|(h, proof)| cmtp_kt::verify_lookup(&h.head.head, address, &proof).ok());
            Ok(Some(SelfReport {
                address: address.to_string(),
                checked_at: now,
                epoch: Some(epoch),
                witnesses,
                history: vec![HistoryEntry {
                    epoch: since_epoch,
                    version: proof.as_ref().map_or(0, |p| p.version),
                    value: hex::encode(key_value(address, &statement.key)),
                    known_as: None,
                }],
            }))
        }
        _ => Err(Error::Verification(format!(
            "it states the key {} for {address}, which this device does not hold and which is not in its key directory yet",
            statement.key.fingerprint_hex()
        ))),
    }
}

/// The last self-check's warnings kept in `home` (printed by the client
/// after every command until the history is clean).
pub fn alarms(home: &Home) -> Vec<String> {
    let Ok(state) = State::load(home.root()) else {
        return Vec::new();
    };
    let mut out: Vec<String> = state.own_error.into_iter().collect();
    out.extend(state.own.map(|r| r.alarms()).unwrap_or_default());
    out
}

/// What the client last learned about `address`'s key from its directory.
pub fn describe(home: &Home, address: &Address) -> Option<KeyRecord> {
    State::load(home.root())
        .ok()?
        .keys
        .remove(&address.to_string())
}

/// Checks a proof of misbehaviour against the key this client trusts for
/// its domain, and keeps it: afterwards this client refuses the domain's
/// key proofs. Returns the domain and the epoch it concerns.
pub fn verify_evidence(home: &Home, proof: &[u8], domain_key: &PublicKey) -> Result<(Domain, u64)> {
    let m = Misbehaviour::decode(proof)
        .map_err(|e| Error::Verification(format!("proof of misbehaviour: {e}")))?;
    let (domain, epoch) = m
        .verify(domain_key)
        .map_err(|e| Error::Verification(format!("proof of misbehaviour: {e}")))?;
    let domain = domain.clone();
    let mut state = State::load(home.root())?;
    state
        .evidence
        .entry(domain.to_string())
        .or_insert_with(|| hex::encode(proof));
    state.save(home.root())?;
    Ok((domain, epoch))
}

/// Asks the session's server for the proof of misbehaviour it holds
/// against `domain` (`KTEVIDENCE`), checks it under the key this client
/// trusts for `domain` and keeps it. `Ok(None)`: the server holds none.
pub async fn fetch_evidence(
    session: &mut Session,
    home: &Home,
    domain: &Domain,
) -> Result<Option<(Domain, u64)>> {
    let reply = session
        .command(&Command::KtEvidence {
            domain: domain.clone(),
        })
        .await?;
    match reply.status {
        Status::Success => {
            let (key, _) = session.domain_key(domain).await?;
            verify_evidence(home, &reply.body, &key).map(Some)
        }
        Status::Failure => Ok(None),
        _ => Err(Error::from_reply(&reply, "KTEVIDENCE")),
    }
}
