//! A domain's key directory: akd's `Directory` over a
//! [`cmtp_store::KtStore`] (SQLite or PostgreSQL), the VRF key, and the
//! encodings of the proofs it gives (PROTOCOL.md §20.4).
//!
//! akd keeps three kinds of records: the tree's own record (its latest
//! epoch and size), tree nodes (with their previous value, for audits), and
//! value states (each version of each label). [`StoreDb`] keeps the first
//! two as opaque rows in `kt_nodes` under akd's binary ids, encoded by
//! this module, and the third as rows of `kt_values`, so that "the newest
//! state of these labels" is one query.

use std::collections::HashMap;
use std::time::Duration;

use akd::append_only_zks::AzksParallelismConfig;
use akd::ecvrf::{VRFKeyStorage, VrfError};
use akd::errors::{AkdError, StorageError};
use akd::storage::types::{
    DbRecord, KeyData, StorageType, ValueState, ValueStateKey, ValueStateRetrievalFlag,
};
use akd::storage::{Database, DbSetState, Storable, StorageManager};
use akd::tree_node::TreeNode;
use akd::{AkdLabel, AkdValue, HistoryParams, NodeLabel};
use akd_core::proto::specs::types as pb;
use cmtp_store::{KtRecord, KtStore, KtValueState};
use protobuf::Message;

use crate::{Config, ProofError};

// ----- the records' encodings -----

const KIND_AZKS: u8 = 1;
const KIND_NODE: u8 = 2;

fn put_label(out: &mut Vec<u8>, l: &NodeLabel) {
    out.extend_from_slice(&l.label_val);
    out.extend_from_slice(&l.label_len.to_be_bytes());
}

fn put_opt_label(out: &mut Vec<u8>, l: &Option<NodeLabel>) {
    match l {
        None => out.push(0),
        Some(l) => {
            out.push(1);
            put_label(out, l);
        }
    }
}

fn put_node(out: &mut Vec<u8>, n: &TreeNode) {
    put_label(out, &n.label);
    out.extend_from_slice(&n.last_epoch.to_be_bytes());
    out.extend_from_slice(&n.min_descendant_epoch.to_be_bytes());
    put_label(out, &n.parent);
    out.push(n.node_type as u8);
    put_opt_label(out, &n.left_child);
    put_opt_label(out, &n.right_child);
    out.extend_from_slice(&n.hash.0);
}

/// akd's record as stored: the tree record or a tree node.
fn encode_record(r: &DbRecord) -> Option<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::with_capacity(256);
    match r {
        DbRecord::Azks(a) => {
            out.push(KIND_AZKS);
            out.extend_from_slice(&a.latest_epoch.to_be_bytes());
            out.extend_from_slice(&a.num_nodes.to_be_bytes());
        }
        DbRecord::TreeNode(n) => {
            out.push(KIND_NODE);
            put_node(&mut out, &n.latest_node);
            match &n.previous_node {
                None => out.push(0),
                Some(p) => {
                    out.push(1);
                    put_node(&mut out, p);
                }
            }
        }
        DbRecord::ValueState(_) => return None,
    }
    Some((r.get_full_binary_id(), out))
}

struct Cur<'a>(&'a [u8]);

impl Cur<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], StorageError> {
        if self.0.len() < N {
            return Err(StorageError::Other("truncated directory record".into()));
        }
        let (a, b) = self.0.split_at(N);
        self.0 = b;
        Ok(a.try_into().expect("length checked"))
    }
    fn u64(&mut self) -> Result<u64, StorageError> {
        Ok(u64::from_be_bytes(self.take()?))
    }
    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take::<1>()?[0])
    }
    fn label(&mut self) -> Result<NodeLabel, StorageError> {
        let val = self.take::<32>()?;
        let len = u32::from_be_bytes(self.take()?);
        Ok(NodeLabel::new(val, len))
    }
    fn opt_label(&mut self) -> Result<Option<NodeLabel>, StorageError> {
        match self.u8()? {
            0 => Ok(None),
            _ => Ok(Some(self.label()?)),
        }
    }
}

struct NodeFields {
    label: NodeLabel,
    last_epoch: u64,
    min_descendant_epoch: u64,
    parent: NodeLabel,
    node_type: u8,
    left: Option<NodeLabel>,
    right: Option<NodeLabel>,
    hash: [u8; 32],
}

fn read_node(c: &mut Cur<'_>) -> Result<NodeFields, StorageError> {
    Ok(NodeFields {
        label: c.label()?,
        last_epoch: c.u64()?,
        min_descendant_epoch: c.u64()?,
        parent: c.label()?,
        node_type: c.u8()?,
        left: c.opt_label()?,
        right: c.opt_label()?,
        hash: c.take()?,
    })
}

fn decode_record(data: &[u8]) -> Result<DbRecord, StorageError> {
    let mut c = Cur(data);
    let record = match c.u8()? {
        KIND_AZKS => DbRecord::Azks(DbRecord::build_azks(c.u64()?, c.u64()?)),
        KIND_NODE => {
            let n = read_node(&mut c)?;
            let p = match c.u8()? {
                0 => None,
                _ => Some(read_node(&mut c)?),
            };
            DbRecord::TreeNode(DbRecord::build_tree_node_with_previous_value(
                n.label.label_val,
                n.label.label_len,
                n.last_epoch,
                n.min_descendant_epoch,
                n.parent.label_val,
                n.parent.label_len,
                n.node_type,
                n.left,
                n.right,
                n.hash,
                p.as_ref().map(|p| p.last_epoch),
                p.as_ref().map(|p| p.min_descendant_epoch),
                p.as_ref().map(|p| p.parent.label_val),
                p.as_ref().map(|p| p.parent.label_len),
                p.as_ref().map(|p| p.node_type),
                p.as_ref().and_then(|p| p.left),
                p.as_ref().and_then(|p| p.right),
                p.as_ref().map(|p| p.hash),
            ))
        }
        k => {
            return Err(StorageError::Other(format!(
                "unknown directory record kind {k}"
            )));
        }
    };
    if !c.0.is_empty() {
        return Err(StorageError::Other(
            "trailing bytes in a directory record".into(),
        ));
    }
    Ok(record)
}

fn to_state(s: KtValueState) -> ValueState {
    DbRecord::build_user_state(
        s.label,
        s.value,
        s.version,
        s.node_label_len,
        s.node_label,
        s.epoch,
    )
}

fn from_state(s: &ValueState) -> KtValueState {
    KtValueState {
        label: s.username.0.clone(),
        epoch: s.epoch,
        version: s.version,
        value: s.value.0.clone(),
        node_label: s.label.label_val,
        node_label_len: s.label.label_len,
    }
}

fn storage_err(e: cmtp_store::StoreError) -> StorageError {
    StorageError::Connection(e.to_string())
}

/// akd's `Database` over a [`KtStore`].
#[derive(Clone)]
pub struct StoreDb<S: KtStore> {
    store: S,
}

impl<S: KtStore> StoreDb<S> {
    /// Wraps `store`.
    pub fn new(store: S) -> Self {
        StoreDb { store }
    }

    fn pick(states: &[ValueState], flag: ValueStateRetrievalFlag) -> Option<ValueState> {
        use ValueStateRetrievalFlag as F;
        match flag {
            F::MaxEpoch => states.iter().max_by_key(|s| s.epoch).cloned(),
            F::MinEpoch => states.iter().min_by_key(|s| s.epoch).cloned(),
            F::SpecificVersion(v) => states.iter().find(|s| s.version == v).cloned(),
            F::SpecificEpoch(e) => states.iter().find(|s| s.epoch == e).cloned(),
            F::LeqEpoch(e) => states
                .iter()
                .filter(|s| s.epoch <= e)
                .max_by_key(|s| s.epoch)
                .cloned(),
        }
    }

    async fn states(&self, label: &AkdLabel) -> Result<Vec<ValueState>, StorageError> {
        Ok(self
            .store
            .kt_states(label.0.clone())
            .await
            .map_err(storage_err)?
            .into_iter()
            .map(to_state)
            .collect())
    }
}

#[async_trait::async_trait]
impl<S: KtStore> Database for StoreDb<S> {
    async fn set(&self, record: DbRecord) -> Result<(), StorageError> {
        self.batch_set(vec![record], DbSetState::General).await
    }

    async fn batch_set(
        &self,
        records: Vec<DbRecord>,
        _state: DbSetState,
    ) -> Result<(), StorageError> {
        let rows = records
            .iter()
            .map(|r| match r {
                DbRecord::ValueState(s) => KtRecord::Value(from_state(s)),
                other => {
                    let (id, data) = encode_record(other).expect("not a value state");
                    KtRecord::Node { id, data }
                }
            })
            .collect();
        self.store.kt_write(rows).await.map_err(storage_err)
    }

    async fn get<St: Storable>(&self, id: &St::StorageKey) -> Result<DbRecord, StorageError> {
        let bin = St::get_full_binary_key_id(id);
        if St::data_type() == StorageType::ValueState {
            let ValueStateKey(label, epoch) =
                ValueState::key_from_full_binary(&bin).map_err(StorageError::Other)?;
            let states = self.states(&AkdLabel(label)).await?;
            return Self::pick(&states, ValueStateRetrievalFlag::SpecificEpoch(epoch))
                .map(DbRecord::ValueState)
                .ok_or_else(|| StorageError::NotFound(format!("value state {epoch}")));
        }
        let mut rows = self.store.kt_nodes(vec![bin]).await.map_err(storage_err)?;
        match rows.pop() {
            Some((_, data)) => decode_record(&data),
            None => Err(StorageError::NotFound(format!(
                "{:?} {id:?}",
                St::data_type()
            ))),
        }
    }

    async fn batch_get<St: Storable>(
        &self,
        ids: &[St::StorageKey],
    ) -> Result<Vec<DbRecord>, StorageError> {
        if St::data_type() == StorageType::ValueState {
            let mut out = Vec::new();
            for id in ids {
                if let Ok(r) = self.get::<St>(id).await {
                    out.push(r);
                }
            }
            return Ok(out);
        }
        let bins: Vec<Vec<u8>> = ids
            .iter()
            .map(|id| St::get_full_binary_key_id(id))
            .collect();
        let rows = self.store.kt_nodes(bins).await.map_err(storage_err)?;
        rows.iter().map(|(_, data)| decode_record(data)).collect()
    }

    async fn get_user_data(&self, username: &AkdLabel) -> Result<KeyData, StorageError> {
        let states = self.states(username).await?;
        if states.is_empty() {
            return Err(StorageError::NotFound(format!(
                "value states of {username:?}"
            )));
        }
        Ok(KeyData { states })
    }

    async fn get_user_state(
        &self,
        username: &AkdLabel,
        flag: ValueStateRetrievalFlag,
    ) -> Result<ValueState, StorageError> {
        let states = self.states(username).await?;
        Self::pick(&states, flag)
            .ok_or_else(|| StorageError::NotFound(format!("value state of {username:?}")))
    }

    async fn get_user_state_versions(
        &self,
        usernames: &[AkdLabel],
        flag: ValueStateRetrievalFlag,
    ) -> Result<HashMap<AkdLabel, (u64, AkdValue)>, StorageError> {
        let mut map = HashMap::new();
        if let ValueStateRetrievalFlag::LeqEpoch(epoch) = flag {
            // The one publish needs: one query for all the labels.
            let labels = usernames.iter().map(|l| l.0.clone()).collect();
            for s in self
                .store
                .kt_latest_states(labels, epoch)
                .await
                .map_err(storage_err)?
            {
                map.insert(AkdLabel(s.label), (s.version, AkdValue(s.value)));
            }
            return Ok(map);
        }
        for u in usernames {
            if let Ok(s) = self.get_user_state(u, flag).await {
                map.insert(u.clone(), (s.version, s.value));
            }
        }
        Ok(map)
    }
}

// ----- the VRF key -----

/// The directory's VRF private key (an Ed25519 seed, kept by the server as
/// a store secret so that every node of a cluster has the same).
#[derive(Clone)]
pub struct VrfKey([u8; 32]);

impl VrfKey {
    /// The key from its 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        VrfKey(seed)
    }
}

#[async_trait::async_trait]
impl VRFKeyStorage for VrfKey {
    async fn retrieve(&self) -> Result<Vec<u8>, VrfError> {
        Ok(self.0.to_vec())
    }
}

// ----- the directory -----

fn akd_err(e: AkdError) -> ProofError {
    ProofError::Directory(e.to_string())
}

/// A lookup proof of a label at the directory's current epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lookup {
    /// The epoch the proof is relative to.
    pub epoch: u64,
    /// The root hash at that epoch.
    pub root: [u8; 32],
    /// The label's current value.
    pub value: Vec<u8>,
    /// akd's lookup proof (protobuf).
    pub proof: Vec<u8>,
}

/// A domain's key directory.
pub struct KtDirectory<S: KtStore> {
    dir: akd::Directory<Config, StoreDb<S>, VrfKey>,
    vrf_public: [u8; 32],
}

impl<S: KtStore> KtDirectory<S> {
    /// Opens the directory kept in `store` (creating the empty epoch 0 if
    /// there is none), with the VRF key `vrf`. With `cache`, tree nodes are
    /// kept in memory (up to that many bytes) between proofs.
    pub async fn open(store: S, vrf: VrfKey, cache: Option<usize>) -> Result<Self, ProofError> {
        let db = StoreDb::new(store);
        let storage = match cache {
            Some(bytes) => StorageManager::new(
                db,
                Some(Duration::from_secs(600)),
                Some(bytes),
                Some(Duration::from_secs(60)),
            ),
            None => StorageManager::new_no_cache(db),
        };
        let dir =
            akd::Directory::<Config, _, _>::new(storage, vrf, AzksParallelismConfig::default())
                .await
                .map_err(akd_err)?;
        let vrf_public = dir.get_public_key().await.map_err(akd_err)?.to_bytes();
        Ok(KtDirectory { dir, vrf_public })
    }

    /// The VRF public key (what epoch heads carry).
    pub fn vrf_public_key(&self) -> [u8; 32] {
        self.vrf_public
    }

    /// The current epoch and its root hash.
    pub async fn current(&self) -> Result<(u64, [u8; 32]), ProofError> {
        let e = self.dir.get_epoch_hash().await.map_err(akd_err)?;
        Ok((e.0, e.1))
    }

    /// Publishes `updates` (label, value) as a new epoch; the new epoch and
    /// root. Labels whose value did not change are skipped by akd (an
    /// update list with nothing new leaves the epoch as it was).
    pub async fn publish(
        &self,
        updates: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(u64, [u8; 32]), ProofError> {
        let updates = updates
            .into_iter()
            .map(|(l, v)| (AkdLabel(l), AkdValue(v)))
            .collect();
        let e = self.dir.publish(updates).await.map_err(akd_err)?;
        Ok((e.0, e.1))
    }

    /// The lookup proof of `label` at the current epoch; `None` if the
    /// label was never published.
    pub async fn lookup(&self, label: &[u8]) -> Result<Option<Lookup>, ProofError> {
        match self.dir.lookup(AkdLabel(label.to_vec())).await {
            Ok((proof, epoch)) => Ok(Some(Lookup {
                epoch: epoch.0,
                root: epoch.1,
                value: proof.value.0.clone(),
                proof: crate::encode_lookup(&proof),
            })),
            Err(AkdError::Storage(StorageError::NotFound(_))) => Ok(None),
            Err(e) => Err(akd_err(e)),
        }
    }

    /// The lookup proofs of `labels` at the current epoch, in their order,
    /// made with akd's batch lookup: the tree nodes all the proofs need are
    /// loaded into the node cache level by level (a few store reads for the
    /// whole batch instead of some for each proof; without a node cache,
    /// each proof reads its own). Every label must have been published:
    /// one that was not fails the whole batch.
    pub async fn batch_lookup(&self, labels: &[Vec<u8>]) -> Result<Vec<Lookup>, ProofError> {
        if labels.is_empty() {
            return Ok(Vec::new());
        }
        let labels: Vec<AkdLabel> = labels.iter().map(|l| AkdLabel(l.clone())).collect();
        let (proofs, epoch) = self.dir.batch_lookup(&labels).await.map_err(akd_err)?;
        Ok(proofs
            .iter()
            .map(|proof| Lookup {
                epoch: epoch.0,
                root: epoch.1,
                value: proof.value.0.clone(),
                proof: crate::encode_lookup(proof),
            })
            .collect())
    }

    /// The complete history proof of `label` at the current epoch (epoch,
    /// root, proof); `None` if the label was never published.
    pub async fn history(
        &self,
        label: &[u8],
    ) -> Result<Option<(u64, [u8; 32], Vec<u8>)>, ProofError> {
        match self
            .dir
            .key_history(&AkdLabel(label.to_vec()), HistoryParams::Complete)
            .await
        {
            Ok((proof, epoch)) => Ok(Some((epoch.0, epoch.1, crate::encode_history(&proof)))),
            Err(AkdError::Storage(StorageError::NotFound(_))) => Ok(None),
            Err(e) => Err(akd_err(e)),
        }
    }

    /// The append-only proof from epoch `from` to `to` (protobuf).
    pub async fn audit(&self, from: u64, to: u64) -> Result<Vec<u8>, ProofError> {
        let proof = self.dir.audit(from, to).await.map_err(akd_err)?;
        Ok(pb::AppendOnlyProof::from(&proof)
            .write_to_bytes()
            .expect("protobuf encoding of an append-only proof"))
    }
}

/// A witness's check: `proof` (from a `KTAUDIT` answer) shows that the
/// directory went from `roots[0]` to the last of `roots` through each of
/// them, only adding.
pub async fn verify_audit(roots: Vec<[u8; 32]>, proof: &[u8]) -> Result<(), ProofError> {
    if proof.len() > cmtp_proto::kt::MAX_AUDIT_PROOF {
        return Err(ProofError::Malformed("proof over its size limit".into()));
    }
    let p = pb::AppendOnlyProof::parse_from_bytes(proof)
        .map_err(|e| ProofError::Malformed(e.to_string()))?;
    let p = akd::AppendOnlyProof::try_from(&p).map_err(|e| ProofError::Malformed(e.to_string()))?;
    akd::auditor::audit_verify::<Config>(roots, p)
        .await
        .map_err(|e| ProofError::Invalid(e.to_string()))
}
