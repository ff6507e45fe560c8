//! Conformance cases of the key directory's storage ([`KtStore`]).

use crate::conformance::{T0, new_user};
use crate::{KtRecord, KtStore, KtValueState, Store, StoreError};

fn node(id: &[u8], data: &[u8]) -> KtRecord {
    KtRecord::Node {
        id: id.to_vec(),
        data: data.to_vec(),
    }
}

fn state(label: &str, epoch: u64, version: u64, value: &[u8]) -> KtValueState {
    KtValueState {
        label: label.as_bytes().to_vec(),
        epoch,
        version,
        value: value.to_vec(),
        node_label: [epoch as u8; 32],
        node_label_len: 256,
    }
}

/// Nodes are written in one batch, read back by id (missing ids are left
/// out), replaced under the same id; ids are bounded.
pub async fn kt_nodes_round_trip<S: Store + KtStore>(store: S) {
    let mut records: Vec<KtRecord> = (0..1200u32)
        .map(|i| node(&i.to_be_bytes(), &[i as u8; 40]))
        .collect();
    records.push(node(b"azks", b"root record"));
    store.kt_write(records).await.unwrap();
    let mut want: Vec<Vec<u8>> = (0..1200u32)
        .step_by(3)
        .map(|i| i.to_be_bytes().to_vec())
        .collect();
    want.push(b"missing".to_vec());
    let got = store.kt_nodes(want.clone()).await.unwrap();
    assert_eq!(got.len(), 400);
    for (id, data) in &got {
        let i = u32::from_be_bytes(id.as_slice().try_into().unwrap());
        assert_eq!(data, &vec![i as u8; 40]);
    }
    store
        .kt_write(vec![node(b"azks", b"epoch 2")])
        .await
        .unwrap();
    assert_eq!(
        store.kt_nodes(vec![b"azks".to_vec()]).await.unwrap(),
        vec![(b"azks".to_vec(), b"epoch 2".to_vec())]
    );
    assert!(store.kt_nodes(vec![]).await.unwrap().is_empty());
    let too_long = store.kt_nodes(vec![vec![1; 65]]).await;
    assert!(matches!(too_long, Err(StoreError::InvalidInput(_))));
    let too_long = store.kt_write(vec![node(&[1; 65], b"x")]).await;
    assert!(matches!(too_long, Err(StoreError::InvalidInput(_))));
}

/// Value states: all of a label in epoch order, the newest at or before an
/// epoch for many labels, the newest of every label.
pub async fn kt_value_states<S: Store + KtStore>(store: S) {
    store
        .kt_write(vec![
            KtRecord::Value(state("bob@a.test", 3, 2, b"v2")),
            KtRecord::Value(state("bob@a.test", 1, 1, b"v1")),
            KtRecord::Value(state("alice@a.test", 2, 1, b"a1")),
            KtRecord::Value(state("bob@a.test", 7, 3, b"v3")),
        ])
        .await
        .unwrap();
    let all = store.kt_states(b"bob@a.test".to_vec()).await.unwrap();
    assert_eq!(
        all.iter().map(|s| (s.epoch, s.version)).collect::<Vec<_>>(),
        [(1, 1), (3, 2), (7, 3)]
    );
    assert_eq!(all[1], state("bob@a.test", 3, 2, b"v2"));
    assert!(
        store
            .kt_states(b"nobody@a.test".to_vec())
            .await
            .unwrap()
            .is_empty()
    );
    let labels = vec![
        b"bob@a.test".to_vec(),
        b"alice@a.test".to_vec(),
        b"nobody@a.test".to_vec(),
    ];
    let mut at5 = store.kt_latest_states(labels.clone(), 5).await.unwrap();
    at5.sort_by(|a, b| a.label.cmp(&b.label));
    assert_eq!(
        at5.iter()
            .map(|s| (s.label.clone(), s.epoch))
            .collect::<Vec<_>>(),
        [(b"alice@a.test".to_vec(), 2), (b"bob@a.test".to_vec(), 3)]
    );
    let at1 = store.kt_latest_states(labels, 1).await.unwrap();
    assert_eq!(at1, vec![state("bob@a.test", 1, 1, b"v1")]);
    assert_eq!(
        store.kt_all_latest().await.unwrap(),
        vec![
            (b"alice@a.test".to_vec(), b"a1".to_vec()),
            (b"bob@a.test".to_vec(), b"v3".to_vec())
        ]
    );
    // the same label and epoch written again replaces the state
    store
        .kt_write(vec![KtRecord::Value(state("alice@a.test", 2, 1, b"a1'"))])
        .await
        .unwrap();
    assert_eq!(
        store.kt_states(b"alice@a.test".to_vec()).await.unwrap()[0].value,
        b"a1'"
    );
}

/// The accounts and their identity keys are what the directory publishes.
pub async fn kt_identity_keys_list_accounts<S: Store + KtStore>(store: S) {
    assert!(store.kt_identity_keys().await.unwrap().is_empty());
    for a in ["zed", "al"] {
        store.create_user(new_user(a), None, T0).await.unwrap();
    }
    assert_eq!(
        store.kt_identity_keys().await.unwrap(),
        vec![("al".to_owned(), [2; 32]), ("zed".to_owned(), [3; 32])]
    );
}

/// A head once kept for an epoch is never replaced by another.
pub async fn kt_heads_are_never_replaced<S: Store + KtStore>(store: S) {
    assert_eq!(store.kt_latest_head().await.unwrap(), None);
    assert_eq!(store.kt_put_head(0, b"h0".to_vec()).await.unwrap(), b"h0");
    assert_eq!(store.kt_put_head(1, b"h1".to_vec()).await.unwrap(), b"h1");
    assert_eq!(
        store.kt_put_head(1, b"other".to_vec()).await.unwrap(),
        b"h1"
    );
    assert_eq!(store.kt_put_head(2, b"h2".to_vec()).await.unwrap(), b"h2");
    assert_eq!(store.kt_head(1).await.unwrap(), Some(b"h1".to_vec()));
    assert_eq!(store.kt_head(9).await.unwrap(), None);
    assert_eq!(
        store.kt_latest_head().await.unwrap(),
        Some((2, b"h2".to_vec()))
    );
    assert_eq!(
        store.kt_heads(1, 5).await.unwrap(),
        vec![(1, b"h1".to_vec()), (2, b"h2".to_vec())]
    );
}

/// Cosignatures per epoch and witness; the witness's own record never
/// goes back to an older epoch; the first proof of misbehaviour stays.
pub async fn kt_cosignatures_and_witness_records<S: Store + KtStore>(store: S) {
    store
        .kt_add_cosignature(4, "c.test", b"c".to_vec())
        .await
        .unwrap();
    store
        .kt_add_cosignature(4, "b.test", b"b".to_vec())
        .await
        .unwrap();
    store
        .kt_add_cosignature(4, "b.test", b"b'".to_vec())
        .await
        .unwrap();
    store
        .kt_add_cosignature(5, "b.test", b"b5".to_vec())
        .await
        .unwrap();
    assert_eq!(
        store.kt_cosignatures(4).await.unwrap(),
        vec![b"b'".to_vec(), b"c".to_vec()]
    );
    assert!(store.kt_cosignatures(3).await.unwrap().is_empty());

    assert_eq!(store.kt_witnessed("a.test").await.unwrap(), None);
    store
        .kt_set_witnessed("a.test", 3, b"h3".to_vec())
        .await
        .unwrap();
    store
        .kt_set_witnessed("a.test", 3, b"h3".to_vec())
        .await
        .unwrap();
    store
        .kt_set_witnessed("a.test", 5, b"h5".to_vec())
        .await
        .unwrap();
    let back = store.kt_set_witnessed("a.test", 4, b"h4".to_vec()).await;
    assert!(matches!(back, Err(StoreError::Constraint(_))), "{back:?}");
    assert_eq!(
        store.kt_witnessed("a.test").await.unwrap(),
        Some((5, b"h5".to_vec()))
    );

    assert_eq!(store.kt_evidence("a.test").await.unwrap(), None);
    store
        .kt_put_evidence("a.test", b"proof 1".to_vec(), T0)
        .await
        .unwrap();
    store
        .kt_put_evidence("a.test", b"proof 2".to_vec(), T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store.kt_evidence("a.test").await.unwrap(),
        Some(b"proof 1".to_vec())
    );
}

/// One node at a time holds the publisher's lease; it renews it, and
/// another takes it over once it has expired.
pub async fn kt_publisher_lease<S: Store + KtStore>(store: S) {
    assert!(store.kt_claim_publisher("n1", T0, T0 + 60).await.unwrap());
    assert!(
        !store
            .kt_claim_publisher("n2", T0 + 10, T0 + 70)
            .await
            .unwrap()
    );
    assert!(
        store
            .kt_claim_publisher("n1", T0 + 30, T0 + 90)
            .await
            .unwrap()
    );
    assert!(
        !store
            .kt_claim_publisher("n2", T0 + 89, T0 + 149)
            .await
            .unwrap()
    );
    assert!(
        store
            .kt_claim_publisher("n2", T0 + 90, T0 + 150)
            .await
            .unwrap()
    );
    assert!(
        !store
            .kt_claim_publisher("n1", T0 + 100, T0 + 160)
            .await
            .unwrap()
    );
}
