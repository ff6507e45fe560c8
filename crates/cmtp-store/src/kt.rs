//! What the key directory keeps (PROTOCOL.md §20): the directory's records
//! for akd (tree nodes and the value states of each label), the signed
//! epoch heads and the cosignatures collected for them, and — for the
//! domains this server witnesses — the head it cosigned last and any proof
//! of misbehaviour it holds.
//!
//! The store knows nothing of akd: tree nodes are opaque bytes under an
//! opaque id, value states are rows. `cmtp-kt` adapts this trait to akd's
//! `Database`. It is a trait of its own, beside [`Store`](crate::Store), so
//! that the directory's storage stays in one place; every backend
//! implements both, and the conformance suite covers both.

use std::future::Future;

use crate::error::StoreError;

/// One state of a label's value in the directory (akd's `ValueState`): the
/// value `value` became version `version` of `label` at epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KtValueState {
    /// The label (`account@domain`).
    pub label: Vec<u8>,
    /// The epoch it was published in.
    pub epoch: u64,
    /// The label's version (1 for the first value).
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
    /// The node label in the tree (the VRF output), 32 bytes.
    pub node_label: [u8; 32],
    /// The node label's length in bits.
    pub node_label_len: u32,
}

/// Pairs of byte strings: `(id, data)` of tree nodes, `(label, value)` of
/// labels.
pub type KtPairs = Vec<(Vec<u8>, Vec<u8>)>;

/// One record written to the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KtRecord {
    /// A tree node or the tree's own record, replacing any under `id`.
    Node {
        /// Its id (at most 64 bytes).
        id: Vec<u8>,
        /// Its encoding.
        data: Vec<u8>,
    },
    /// A value state, replacing any of the same label and epoch.
    Value(KtValueState),
}

/// The directory's storage: implemented by every backend.
pub trait KtStore: Clone + Send + Sync + 'static {
    /// Writes `records` in one transaction (all or nothing, durable on `Ok`).
    fn kt_write(
        &self,
        records: Vec<KtRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The nodes among `ids` that exist, as `(id, data)` in no order.
    fn kt_nodes(
        &self,
        ids: Vec<Vec<u8>>,
    ) -> impl Future<Output = Result<KtPairs, StoreError>> + Send;

    /// Every state of `label`, oldest epoch first.
    fn kt_states(
        &self,
        label: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<KtValueState>, StoreError>> + Send;

    /// For each of `labels` that has one, its newest state at or before
    /// `max_epoch`.
    fn kt_latest_states(
        &self,
        labels: Vec<Vec<u8>>,
        max_epoch: u64,
    ) -> impl Future<Output = Result<Vec<KtValueState>, StoreError>> + Send;

    /// Every label with its newest value, by label.
    fn kt_all_latest(&self) -> impl Future<Output = Result<KtPairs, StoreError>> + Send;

    /// Every account with its identity key, by account: what the directory
    /// should say.
    fn kt_identity_keys(
        &self,
    ) -> impl Future<Output = Result<Vec<(String, [u8; 32])>, StoreError>> + Send;

    /// Keeps the signed head of `epoch` unless one is kept already; returns
    /// the head kept (a second, different head for an epoch never replaces
    /// the first).
    fn kt_put_head(
        &self,
        epoch: u64,
        head: Vec<u8>,
    ) -> impl Future<Output = Result<Vec<u8>, StoreError>> + Send;

    /// The signed head of `epoch`.
    fn kt_head(
        &self,
        epoch: u64,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// The newest signed head and its epoch.
    fn kt_latest_head(
        &self,
    ) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;

    /// The signed heads of epochs `from` to `to` inclusive that exist,
    /// oldest first.
    fn kt_heads(
        &self,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<(u64, Vec<u8>)>, StoreError>> + Send;

    /// Keeps `witness`'s cosignature of the head of `epoch` (replacing an
    /// earlier one of the same witness for that epoch).
    fn kt_add_cosignature(
        &self,
        epoch: u64,
        witness: &str,
        cosignature: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The cosignatures of the head of `epoch`, by witness.
    fn kt_cosignatures(
        &self,
        epoch: u64,
    ) -> impl Future<Output = Result<Vec<Vec<u8>>, StoreError>> + Send;

    /// As a witness: the head of `domain` cosigned last, and its epoch.
    fn kt_witnessed(
        &self,
        domain: &str,
    ) -> impl Future<Output = Result<Option<(u64, Vec<u8>)>, StoreError>> + Send;

    /// As a witness: records that the head of `domain` at `epoch` was
    /// cosigned. Refused with [`StoreError::Constraint`] when it would move
    /// `domain` back to an older epoch.
    fn kt_set_witnessed(
        &self,
        domain: &str,
        epoch: u64,
        head: Vec<u8>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// As a witness: keeps a proof of `domain`'s misbehaviour (the first
    /// one found stays).
    fn kt_put_evidence(
        &self,
        domain: &str,
        evidence: Vec<u8>,
        now: u64,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// The proof of misbehaviour held against `domain`.
    fn kt_evidence(
        &self,
        domain: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, StoreError>> + Send;

    /// Takes (or renews) the publisher's lease until `until` for `node` if
    /// it is free, expired at `now`, or already `node`'s: one node of a
    /// cluster publishes epochs. `true` if `node` holds it.
    fn kt_claim_publisher(
        &self,
        node: &str,
        now: u64,
        until: u64,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send;
}

/// Validates a node id before it reaches SQL.
pub(crate) fn check_ids(ids: &[Vec<u8>]) -> Result<(), StoreError> {
    if ids.iter().any(|id| id.is_empty() || id.len() > 64) {
        return Err(StoreError::InvalidInput(
            "a directory node id is 1 to 64 bytes".into(),
        ));
    }
    Ok(())
}

impl KtStore for crate::AnyStore {
    async fn kt_write(&self, records: Vec<KtRecord>) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_write(records).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_write(records).await,
        }
    }
    async fn kt_nodes(&self, ids: Vec<Vec<u8>>) -> Result<KtPairs, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_nodes(ids).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_nodes(ids).await,
        }
    }
    async fn kt_states(&self, label: Vec<u8>) -> Result<Vec<KtValueState>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_states(label).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_states(label).await,
        }
    }
    async fn kt_latest_states(
        &self,
        labels: Vec<Vec<u8>>,
        max_epoch: u64,
    ) -> Result<Vec<KtValueState>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_latest_states(labels, max_epoch).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_latest_states(labels, max_epoch).await,
        }
    }
    async fn kt_all_latest(&self) -> Result<KtPairs, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_all_latest().await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_all_latest().await,
        }
    }
    async fn kt_identity_keys(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_identity_keys().await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_identity_keys().await,
        }
    }
    async fn kt_put_head(&self, epoch: u64, head: Vec<u8>) -> Result<Vec<u8>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_put_head(epoch, head).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_put_head(epoch, head).await,
        }
    }
    async fn kt_head(&self, epoch: u64) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_head(epoch).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_head(epoch).await,
        }
    }
    async fn kt_latest_head(&self) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_latest_head().await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_latest_head().await,
        }
    }
    async fn kt_heads(&self, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_heads(from, to).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_heads(from, to).await,
        }
    }
    async fn kt_add_cosignature(
        &self,
        epoch: u64,
        witness: &str,
        cosignature: Vec<u8>,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_add_cosignature(epoch, witness, cosignature).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_add_cosignature(epoch, witness, cosignature).await,
        }
    }
    async fn kt_cosignatures(&self, epoch: u64) -> Result<Vec<Vec<u8>>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_cosignatures(epoch).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_cosignatures(epoch).await,
        }
    }
    async fn kt_witnessed(&self, domain: &str) -> Result<Option<(u64, Vec<u8>)>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_witnessed(domain).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_witnessed(domain).await,
        }
    }
    async fn kt_set_witnessed(
        &self,
        domain: &str,
        epoch: u64,
        head: Vec<u8>,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_set_witnessed(domain, epoch, head).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_set_witnessed(domain, epoch, head).await,
        }
    }
    async fn kt_put_evidence(
        &self,
        domain: &str,
        evidence: Vec<u8>,
        now: u64,
    ) -> Result<(), StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_put_evidence(domain, evidence, now).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_put_evidence(domain, evidence, now).await,
        }
    }
    async fn kt_evidence(&self, domain: &str) -> Result<Option<Vec<u8>>, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_evidence(domain).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_evidence(domain).await,
        }
    }
    async fn kt_claim_publisher(
        &self,
        node: &str,
        now: u64,
        until: u64,
    ) -> Result<bool, StoreError> {
        match self {
            #[cfg(feature = "sqlite")]
            crate::AnyStore::Sqlite(s) => s.kt_claim_publisher(node, now, until).await,
            #[cfg(feature = "postgres")]
            crate::AnyStore::Postgres(s) => s.kt_claim_publisher(node, now, until).await,
        }
    }
}
