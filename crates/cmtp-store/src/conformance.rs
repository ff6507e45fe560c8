//! The conformance suite every [`Store`] backend must pass.
//!
//! Each public `async fn` here checks one behaviour on a fresh, empty store.
//! [`conformance_suite!`](crate::conformance_suite) turns all of them into
//! `#[tokio::test]`s for a backend, given a factory:
//!
//! ```ignore
//! async fn new_store() -> (cmtp_store::SqliteStore, tempfile::TempDir) { ... }
//! cmtp_store::conformance_suite!(new_store);
//! ```
//!
//! The factory returns the store and a guard dropped at the end of the test
//! (a temporary directory, a throwaway database cluster, ...). The suite
//! panics on the first failed check, like any test.
//!
//! A backend that may be missing on the machine (PostgreSQL) passes a
//! factory returning an `Option` instead, with the word `optional`; every
//! case then returns at once (passes) when the factory gives `None`, so the
//! factory decides whether a missing database skips or fails:
//!
//! ```ignore
//! async fn new_store() -> Option<(cmtp_store::PostgresStore, ())> { ... }
//! cmtp_store::conformance_suite!(optional new_store);
//! ```

use std::collections::HashSet;

mod kt;
pub use kt::*;

use bytes::Bytes;

use crate::{
    BlobReader, BlobRef, Credentials, MAX_CHUNK, MailboxUsage, MessageBody, NewDelivery,
    NewOutbound, NewUser, Retention, Store, StoreError,
};

/// Generates one `#[tokio::test]` per conformance case, each on a fresh store
/// from `$factory`, an `async fn() -> (impl Store, impl Sized)` (the second
/// value is a guard kept alive until the case ends). With
/// `conformance_suite!(optional $factory)`, the factory is an
/// `async fn() -> Option<(impl Store, impl Sized)>` and a case whose factory
/// returns `None` ends at once. The calling crate needs `tokio` (with the
/// `macros` and `rt-multi-thread` features).
#[macro_export]
macro_rules! conformance_suite {
    (optional $factory:path) => {
        $crate::conformance_suite!(@all [optional] $factory);
    };
    ($factory:path) => {
        $crate::conformance_suite!(@all [required] $factory);
    };
    (@all [$mode:ident] $factory:path) => {
        $crate::conformance_suite!(@cases [$mode] $factory;
            users_lifecycle,
            invites,
            credentials_update,
            secret_race,
            key_statements,
            inline_delivery,
            staged_delivery,
            staged_misuse,
            deduplication,
            dedup_retention,
            mailbox_isolation,
            delete_message,
            delete_user_takes_mail,
            queue_lease_cycle,
            queue_retry_later,
            queue_fail_with_notice,
            queue_list_stats_retry_all,
            queue_dedup,
            queue_concurrent_leases,
            pins,
            statement_cache,
            purge_staged,
            stage_abort_removes_the_bytes_at_once,
            ksf_histogram_counts_parameters,
            lease_per_domain_skips_busy_domains,
            defer_domain_postpones_only_that_domain,
            remote_caches_are_trimmed_to_their_bounds,
            size_is_reported,
            concurrent_deliveries,
            concurrent_duplicates,
            concurrent_failures_are_isolated,
            quotas_and_usage,
            aliases,
            unlocks,
            reset_tokens,
            queue_admin,
            held_entries_are_never_leased,
            per_user_ids,
            mailbox_pages_newest_first,
            changes_since_a_modseq,
            flags_are_metadata_with_modseqs,
            moves_between_folders_are_metadata_with_modseqs,
            deliver_into_a_folder,
            a_recreated_account_has_a_new_epoch,
            concurrent_deliveries_get_consecutive_ids,
            kt_nodes_round_trip,
            kt_value_states,
            kt_identity_keys_list_accounts,
            kt_heads_are_never_replaced,
            kt_cosignatures_and_witness_records,
            kt_publisher_lease,
        );
    };
    (@cases [$mode:ident] $factory:path; $($case:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let ::core::option::Option::Some((store, guard)) =
                    $crate::conformance_suite!(@make [$mode] $factory)
                else {
                    return;
                };
                $crate::conformance::$case(store).await;
                drop(guard);
            }
        )*
    };
    (@make [required] $factory:path) => {
        ::core::option::Option::Some($factory().await)
    };
    (@make [optional] $factory:path) => {
        $factory().await
    };
}

/// The first SQLite schema (version 1), to test migrations from it.
#[cfg(feature = "sqlite")]
pub const SQLITE_SCHEMA_V1: &str = crate::sqlite::schema::V1;

/// The first PostgreSQL schema (version 1), to test migrations from it.
#[cfg(feature = "postgres")]
pub const POSTGRES_SCHEMA_V1: &str = crate::postgres::schema::V1;

/// A fixed "now" for the cases (unix seconds).
pub const T0: u64 = 1_700_000_000;

/// A distinct de-duplication hash for `n`.
pub fn hash(n: u64) -> [u8; 32] {
    let mut h = [0x5a; 32];
    h[..8].copy_from_slice(&n.to_be_bytes());
    h
}

/// `len` deterministic pseudo-random bytes (xorshift), different per `seed`.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A new user `account` with recognisable credentials.
pub fn new_user(account: &str) -> NewUser {
    NewUser {
        account: account.to_owned(),
        identity_pk: [account.len() as u8; 32],
        credentials: Credentials {
            opaque_record: vec![0xA5; 192],
            ksf: [7; 12],
            xzibit: format!("xzibit of {account}").into_bytes(),
        },
    }
}

/// An inline delivery of `body` to `account`.
pub fn delivery(account: &str, hash: [u8; 32], body: &[u8], at: u64) -> NewDelivery {
    NewDelivery {
        account: account.to_owned(),
        hash,
        source: "carol@remote.example".to_owned(),
        received_at: at,
        version: 1,
        attachment_count: 2,
        size: body.len() as u64,
        body: MessageBody::Inline(Bytes::copy_from_slice(body)),
    }
}

/// An outbound message from `sender`, inline.
pub fn outbound(sender: &str, hash: [u8; 32], body: &[u8], at: u64) -> NewOutbound {
    NewOutbound {
        hash,
        sender: sender.to_owned(),
        destination: "dave@far.example".to_owned(),
        dest_domain: "far.example".to_owned(),
        size: body.len() as u64,
        created_at: at,
        expires_at: at + 5 * 86_400,
        body: MessageBody::Inline(Bytes::copy_from_slice(body)),
    }
}

/// Reads a whole blob through a [`BlobReader`].
pub async fn read_all<S: Store>(store: &S, blob: BlobRef) -> Vec<u8> {
    let mut reader = BlobReader::new(store.clone(), blob);
    let mut out = Vec::new();
    while let Some(chunk) = reader.next_chunk().await.expect("read chunk") {
        assert!(chunk.len() <= MAX_CHUNK);
        out.extend_from_slice(&chunk);
    }
    assert_eq!(out.len() as u64, blob.size, "blob size");
    out
}

async fn with_users<S: Store>(store: &S, accounts: &[&str]) {
    for a in accounts {
        store
            .create_user(new_user(a), None, T0)
            .await
            .expect("create user");
    }
}

/// Reads message `id` of `account` back in full.
async fn message_bytes<S: Store>(store: &S, account: &str, id: u64) -> Option<Vec<u8>> {
    let (_, blob) = store
        .mailbox_message(account, id)
        .await
        .expect("mailbox_message")?;
    Some(read_all(store, blob).await)
}

/// Users: create, get, list (with mailbox figures), refuse a second
/// creation, delete.
pub async fn users_lifecycle<S: Store>(store: S) {
    assert_eq!(store.user("alice").await.unwrap(), None);
    assert!(store.list_users().await.unwrap().is_empty());

    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    store
        .create_user(new_user("bob"), None, T0 + 1)
        .await
        .unwrap();
    assert_eq!(
        store.create_user(new_user("alice"), None, T0 + 2).await,
        Err(StoreError::AlreadyExists)
    );

    let alice = store.user("alice").await.unwrap().expect("alice exists");
    let expected = new_user("alice");
    assert_eq!(alice.account, "alice");
    assert_eq!(alice.identity_pk, expected.identity_pk);
    assert_eq!(alice.credentials, expected.credentials);
    assert_eq!((alice.created_at, alice.updated_at), (T0, T0));

    store
        .deliver(delivery("bob", hash(1), b"hello bob", T0))
        .await
        .unwrap();
    store
        .deliver(delivery("bob", hash(2), b"again", T0))
        .await
        .unwrap();
    let list = store.list_users().await.unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0].account, "alice");
    assert_eq!((list[0].messages, list[0].bytes), (0, 0));
    assert_eq!(list[1].account, "bob");
    assert_eq!(list[1].created_at, T0 + 1);
    assert_eq!((list[1].messages, list[1].bytes), (2, 14));

    assert!(store.delete_user("alice").await.unwrap());
    assert!(!store.delete_user("alice").await.unwrap());
    assert_eq!(store.user("alice").await.unwrap(), None);
    assert_eq!(store.list_users().await.unwrap().len(), 1);
    // The account can be created again.
    store
        .create_user(new_user("alice"), None, T0 + 5)
        .await
        .unwrap();
}

/// Invites: valid only for their account, before expiry, once; a failed
/// registration does not consume them; expired ones are purged.
pub async fn invites<S: Store>(store: S) {
    let (good, other, old) = ([1; 32], [2; 32], [3; 32]);
    store
        .create_invite("carol", good, T0 + 100, T0)
        .await
        .unwrap();
    store
        .create_invite("dave", other, T0 + 100, T0)
        .await
        .unwrap();
    store.create_invite("erin", old, T0 + 10, T0).await.unwrap();
    assert_eq!(
        store.create_invite("zed", good, T0 + 100, T0).await,
        Err(StoreError::AlreadyExists)
    );

    assert!(store.invite_valid("carol", good, T0 + 1).await.unwrap());
    assert!(
        !store.invite_valid("dave", good, T0 + 1).await.unwrap(),
        "wrong account"
    );
    assert!(
        !store.invite_valid("carol", [9; 32], T0 + 1).await.unwrap(),
        "unknown"
    );
    assert!(store.invite_valid("erin", old, T0 + 9).await.unwrap());
    assert!(
        !store.invite_valid("erin", old, T0 + 10).await.unwrap(),
        "expired"
    );

    // Wrong account, unknown token, expired: refused, nothing created.
    for (account, token, now) in [
        ("carol", other, T0 + 1),
        ("carol", [9; 32], T0 + 1),
        ("erin", old, T0 + 11),
    ] {
        assert_eq!(
            store.create_user(new_user(account), Some(token), now).await,
            Err(StoreError::InviteInvalid),
            "{account}"
        );
        assert_eq!(store.user(account).await.unwrap(), None);
    }
    assert!(
        store.invite_valid("dave", other, T0 + 1).await.unwrap(),
        "not consumed"
    );

    store
        .create_user(new_user("carol"), Some(good), T0 + 2)
        .await
        .unwrap();
    assert!(
        !store.invite_valid("carol", good, T0 + 3).await.unwrap(),
        "consumed"
    );
    // Reuse is refused, even once the account is gone again.
    assert!(store.delete_user("carol").await.unwrap());
    assert_eq!(
        store
            .create_user(new_user("carol"), Some(good), T0 + 4)
            .await,
        Err(StoreError::InviteInvalid)
    );

    // An existing account: AlreadyExists, and the invite stays usable.
    store.create_user(new_user("dave"), None, T0).await.unwrap();
    assert_eq!(
        store
            .create_user(new_user("dave"), Some(other), T0 + 1)
            .await,
        Err(StoreError::AlreadyExists)
    );
    assert!(store.invite_valid("dave", other, T0 + 1).await.unwrap());

    let report = store
        .purge_expired(T0 + 50, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.invites, 1, "erin's expired invite");
    assert!(
        !store.invite_valid("erin", old, T0).await.unwrap(),
        "purged"
    );
    assert!(store.invite_valid("dave", other, T0 + 50).await.unwrap());
}

/// A password change replaces the login material, keeps the identity key.
pub async fn credentials_update<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let fresh = Credentials {
        opaque_record: vec![0x11; 192],
        ksf: [9; 12],
        xzibit: b"new xzibit".to_vec(),
    };
    assert!(
        store
            .update_credentials("alice", fresh.clone(), T0 + 60)
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_credentials("nobody", fresh.clone(), T0 + 60)
            .await
            .unwrap()
    );
    let alice = store.user("alice").await.unwrap().unwrap();
    assert_eq!(alice.credentials, fresh);
    assert_eq!(alice.identity_pk, new_user("alice").identity_pk);
    assert_eq!((alice.created_at, alice.updated_at), (T0, T0 + 60));
}

/// Concurrent `secret_get_or_init` callers all get one value.
pub async fn secret_race<S: Store>(store: S) {
    let tasks: Vec<_> = (0..8u8)
        .map(|i| {
            let s = store.clone();
            tokio::spawn(async move { s.secret_get_or_init("opaque-setup", vec![i; 64]).await })
        })
        .collect();
    let mut values = HashSet::new();
    for t in tasks {
        values.insert(t.await.unwrap().unwrap());
    }
    assert_eq!(values.len(), 1, "racing callers disagree");
    let value = values.into_iter().next().unwrap();
    assert_eq!(value.len(), 64);
    assert_eq!(
        store
            .secret_get_or_init("opaque-setup", vec![0xFF; 3])
            .await
            .unwrap(),
        value
    );
    assert_eq!(
        store
            .secret_get_or_init("other", vec![1, 2, 3])
            .await
            .unwrap(),
        vec![1, 2, 3]
    );
}

/// Local key statements: stored per user, replaced, gone with the user.
pub async fn key_statements<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    assert_eq!(store.key_statement("alice").await.unwrap(), None);
    store
        .put_key_statement("alice", b"stmt-1".to_vec(), T0 + 10)
        .await
        .unwrap();
    store
        .put_key_statement("alice", b"stmt-2".to_vec(), T0 + 20)
        .await
        .unwrap();
    let ks = store.key_statement("alice").await.unwrap().unwrap();
    assert_eq!(
        (ks.statement.as_slice(), ks.expires_at),
        (&b"stmt-2"[..], T0 + 20)
    );
    // Expired statements are still returned: the caller renews them.
    assert!(store.key_statement("alice").await.unwrap().is_some());
    assert_eq!(
        store.put_key_statement("nobody", b"x".to_vec(), T0).await,
        Err(StoreError::UnknownAccount)
    );
}

/// An inline delivery is listed and reads back byte for byte (also the
/// largest inline body and an empty one).
pub async fn inline_delivery<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let body = pattern(3000, 1);
    let d = store
        .deliver(delivery("alice", hash(1), &body, T0))
        .await
        .unwrap();
    assert!(!d.duplicate);
    assert!(d.id > 0);

    let list = store.list_mailbox("alice").await.unwrap();
    assert_eq!(list.len(), 1);
    let e = &list[0];
    assert_eq!(
        (e.id, e.hash, e.size, e.received_at),
        (d.id, hash(1), 3000, T0)
    );
    assert_eq!(
        (e.source.as_str(), e.version, e.attachment_count),
        ("carol@remote.example", 1, 2)
    );

    let (entry, blob) = store.mailbox_message("alice", d.id).await.unwrap().unwrap();
    assert_eq!(&entry, e);
    assert_eq!((blob.size, blob.chunks), (3000, 1));
    assert_eq!(read_all(&store, blob).await, body);
    assert_eq!(store.read_chunk(blob, 1).await.unwrap(), None);

    let big = pattern(MAX_CHUNK, 2);
    let d2 = store
        .deliver(delivery("alice", hash(2), &big, T0))
        .await
        .unwrap();
    assert!(d2.id > d.id, "ids increase");
    assert_eq!(message_bytes(&store, "alice", d2.id).await.unwrap(), big);

    let d3 = store
        .deliver(delivery("alice", hash(3), b"", T0))
        .await
        .unwrap();
    let (_, blob) = store
        .mailbox_message("alice", d3.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((blob.size, blob.chunks), (0, 0));
    assert!(read_all(&store, blob).await.is_empty());
    let ids: Vec<u64> = store
        .list_mailbox("alice")
        .await
        .unwrap()
        .iter()
        .map(|e| e.id)
        .collect();
    assert_eq!(ids, vec![d.id, d2.id, d3.id]);
}

/// A staged 5 MiB message in 64 KiB chunks delivers and reads back byte for
/// byte, one chunk at a time.
pub async fn staged_delivery<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let body = pattern(5 << 20, 3);
    let staged = store.stage_begin(T0).await.unwrap();
    for chunk in body.chunks(64 << 10) {
        store
            .stage_append(&staged, Bytes::copy_from_slice(chunk))
            .await
            .unwrap();
    }
    let d = store
        .deliver(NewDelivery {
            size: body.len() as u64,
            body: MessageBody::Staged(staged),
            ..delivery("alice", hash(7), b"", T0)
        })
        .await
        .unwrap();
    assert!(!d.duplicate);
    let (entry, blob) = store.mailbox_message("alice", d.id).await.unwrap().unwrap();
    assert_eq!(entry.size, 5 << 20);
    assert_eq!((blob.size, blob.chunks), (5 << 20, 80));
    assert_eq!(
        store.read_chunk(blob, 3).await.unwrap().unwrap().len(),
        64 << 10
    );
    assert!(
        read_all(&store, blob).await == body,
        "staged message differs"
    );
    // A referenced blob is no longer staged: a purge long after leaves it.
    let report = store
        .purge_expired(T0 + 10 * 86_400, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.staged_blobs, 0);
    assert!(message_bytes(&store, "alice", d.id).await.unwrap() == body);

    // A staged body for the queue works the same way.
    let staged = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&staged, Bytes::from_static(b"part one, "))
        .await
        .unwrap();
    store
        .stage_append(&staged, Bytes::from_static(b"part two"))
        .await
        .unwrap();
    let q = store
        .enqueue(NewOutbound {
            size: 18,
            body: MessageBody::Staged(staged),
            ..outbound("alice", hash(8), b"", T0)
        })
        .await
        .unwrap();
    let entry = store
        .list_queue()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.id == q.id)
        .unwrap();
    assert_eq!(read_all(&store, entry.blob).await, b"part one, part two");
}

/// Misuse is refused and changes nothing: size mismatch, a staged blob
/// referenced twice, appending after the reference, empty or oversize
/// chunks, an unknown recipient.
pub async fn staged_misuse<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let staged = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&staged, Bytes::from_static(b"0123456789"))
        .await
        .unwrap();
    assert!(matches!(
        store.stage_append(&staged, Bytes::new()).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert!(matches!(
        store
            .stage_append(&staged, Bytes::from(vec![0; MAX_CHUNK + 1]))
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    let staged_delivery = |size: u64, h: u64| NewDelivery {
        size,
        body: MessageBody::Staged(staged.clone()),
        ..delivery("alice", hash(h), b"", T0)
    };
    let e = store.deliver(staged_delivery(11, 1)).await.unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput(_)), "{e:?}");
    assert!(!e.is_transient());
    assert!(store.list_mailbox("alice").await.unwrap().is_empty());
    // The failed attempt changed nothing: the blob is still staged, the
    // hash not recorded.
    let d = store.deliver(staged_delivery(10, 1)).await.unwrap();
    assert!(!d.duplicate);
    assert_eq!(
        message_bytes(&store, "alice", d.id).await.unwrap(),
        b"0123456789"
    );
    assert_eq!(
        store.deliver(staged_delivery(10, 2)).await,
        Err(StoreError::BlobNotFound)
    );
    assert_eq!(
        store
            .stage_append(&staged, Bytes::from_static(b"more"))
            .await,
        Err(StoreError::BlobNotFound)
    );
    assert_eq!(
        message_bytes(&store, "alice", d.id).await.unwrap(),
        b"0123456789"
    );

    let e = store
        .deliver(delivery("alice", hash(3), &vec![1; MAX_CHUNK + 1], T0))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::InvalidInput(_)), "{e:?}");
    let mut bad_size = delivery("alice", hash(3), b"abc", T0);
    bad_size.size = 4;
    assert!(matches!(
        store.deliver(bad_size).await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(
        store.deliver(delivery("nobody", hash(4), b"abc", T0)).await,
        Err(StoreError::UnknownAccount)
    );
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), 1);
    assert!(store.list_mailbox("nobody").await.unwrap().is_empty());
}

/// The same hash twice: one entry, the second reports `duplicate` with the
/// original id; still a duplicate (id 0) after the entry is deleted; a staged
/// duplicate body is discarded.
pub async fn deduplication<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let first = store
        .deliver(delivery("alice", hash(1), b"one", T0))
        .await
        .unwrap();
    let again = store
        .deliver(delivery("alice", hash(1), b"one", T0 + 5))
        .await
        .unwrap();
    assert_eq!((again.id, again.duplicate), (first.id, true));
    // The hash is the message's identity, whoever it is addressed to.
    let other = store
        .deliver(delivery("bob", hash(1), b"one", T0))
        .await
        .unwrap();
    assert!(other.duplicate);
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), 1);
    assert!(store.list_mailbox("bob").await.unwrap().is_empty());

    let staged = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&staged, Bytes::from_static(b"one"))
        .await
        .unwrap();
    let dup = store
        .deliver(NewDelivery {
            size: 3,
            body: MessageBody::Staged(staged.clone()),
            ..delivery("alice", hash(1), b"", T0)
        })
        .await
        .unwrap();
    assert_eq!((dup.id, dup.duplicate), (first.id, true));
    assert_eq!(
        store.stage_append(&staged, Bytes::from_static(b"x")).await,
        Err(StoreError::BlobNotFound),
        "a duplicate's staged body is discarded"
    );

    assert!(store.delete_message("alice", first.id).await.unwrap());
    let after = store
        .deliver(delivery("alice", hash(1), b"one", T0 + 9))
        .await
        .unwrap();
    assert_eq!((after.id, after.duplicate), (0, true));
    assert!(store.list_mailbox("alice").await.unwrap().is_empty());
}

/// De-duplication entries are purged after the retention period, but never
/// while their message is still in a mailbox.
pub async fn dedup_retention<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let kept = store
        .deliver(delivery("alice", hash(1), b"kept", T0))
        .await
        .unwrap();
    let gone = store
        .deliver(delivery("alice", hash(2), b"gone", T0))
        .await
        .unwrap();
    let recent = store
        .deliver(delivery("alice", hash(3), b"recent", T0 + 900))
        .await
        .unwrap();
    assert!(store.delete_message("alice", gone.id).await.unwrap());
    assert!(store.delete_message("alice", recent.id).await.unwrap());

    let retention = Retention {
        dedup: 1000,
        staged_grace: 60,
        ..Retention::default()
    };
    let report = store.purge_expired(T0 + 1500, retention).await.unwrap();
    assert_eq!(report.dedup_entries, 1, "only the deleted, old entry");

    let again = store
        .deliver(delivery("alice", hash(1), b"kept", T0 + 1500))
        .await
        .unwrap();
    assert_eq!((again.id, again.duplicate), (kept.id, true));
    let again = store
        .deliver(delivery("alice", hash(3), b"recent", T0 + 1500))
        .await
        .unwrap();
    assert_eq!((again.id, again.duplicate), (0, true));
    let fresh = store
        .deliver(delivery("alice", hash(2), b"gone", T0 + 1500))
        .await
        .unwrap();
    assert!(!fresh.duplicate, "purged hash is accepted again");
    assert!(fresh.id > recent.id);
}

/// A user sees only its own messages.
pub async fn mailbox_isolation<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let a = store
        .deliver(delivery("alice", hash(1), b"for alice", T0))
        .await
        .unwrap();
    let b = store
        .deliver(delivery("bob", hash(2), b"for bob", T0))
        .await
        .unwrap();
    let a2 = store
        .deliver(delivery("alice", hash(3), b"alice's second", T0))
        .await
        .unwrap();
    // Ids are per user: bob has a message 1, but no message 2.
    assert_eq!(store.mailbox_message("bob", a2.id).await.unwrap(), None);
    assert!(!store.delete_message("bob", a2.id).await.unwrap());
    assert_eq!(
        message_bytes(&store, "alice", a.id).await.unwrap(),
        b"for alice"
    );
    assert_eq!(
        message_bytes(&store, "bob", b.id).await.unwrap(),
        b"for bob"
    );
    let ids = |l: Vec<crate::MailboxEntry>| l.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.list_mailbox("alice").await.unwrap()),
        vec![a.id, a2.id]
    );
    assert_eq!(ids(store.list_mailbox("bob").await.unwrap()), vec![b.id]);
}

/// Deleting a message removes it and its bytes.
pub async fn delete_message<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let d = store
        .deliver(delivery("alice", hash(1), b"bye", T0))
        .await
        .unwrap();
    let keep = store
        .deliver(delivery("alice", hash(2), b"stay", T0))
        .await
        .unwrap();
    let (_, blob) = store.mailbox_message("alice", d.id).await.unwrap().unwrap();
    assert!(store.delete_message("alice", d.id).await.unwrap());
    assert!(!store.delete_message("alice", d.id).await.unwrap());
    assert_eq!(store.mailbox_message("alice", d.id).await.unwrap(), None);
    assert_eq!(store.read_chunk(blob, 0).await.unwrap(), None, "bytes gone");
    let mut reader = BlobReader::new(store.clone(), blob);
    assert_eq!(reader.next_chunk().await, Err(StoreError::BlobNotFound));
    assert_eq!(
        message_bytes(&store, "alice", keep.id).await.unwrap(),
        b"stay"
    );
}

/// Deleting a user takes its mail, key statement and invites along.
pub async fn delete_user_takes_mail<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let a = store
        .deliver(delivery("alice", hash(1), b"a1", T0))
        .await
        .unwrap();
    let b = store
        .deliver(delivery("bob", hash(2), b"b1", T0))
        .await
        .unwrap();
    let (_, blob) = store.mailbox_message("alice", a.id).await.unwrap().unwrap();
    store
        .put_key_statement("alice", b"stmt".to_vec(), T0 + 99)
        .await
        .unwrap();
    store
        .create_invite("alice", [4; 32], T0 + 99, T0)
        .await
        .unwrap();

    assert!(store.delete_user("alice").await.unwrap());
    assert!(store.list_mailbox("alice").await.unwrap().is_empty());
    assert_eq!(store.read_chunk(blob, 0).await.unwrap(), None);
    assert_eq!(store.key_statement("alice").await.unwrap(), None);
    assert!(!store.invite_valid("alice", [4; 32], T0).await.unwrap());
    assert_eq!(message_bytes(&store, "bob", b.id).await.unwrap(), b"b1");

    // A recreated alice starts empty; her old messages stay de-duplicated.
    with_users(&store, &["alice"]).await;
    assert!(store.list_mailbox("alice").await.unwrap().is_empty());
    let d = store
        .deliver(delivery("alice", hash(1), b"a1", T0))
        .await
        .unwrap();
    assert!(d.duplicate);
}

/// Lease, a second lease while leased gets nothing, expiry lets another node
/// take over, the old holder can no longer complete, the new one can.
pub async fn queue_lease_cycle<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let q = store
        .enqueue(outbound("alice", hash(1), b"relay me", T0))
        .await
        .unwrap();
    assert!(!q.duplicate);

    let leased = store.lease_due(T0, "n1", T0 + 60, 10).await.unwrap();
    assert_eq!(leased.len(), 1);
    let e = &leased[0];
    assert_eq!((e.id, e.hash, e.size), (q.id, hash(1), 8));
    assert_eq!(
        (e.sender.as_str(), e.destination.as_str()),
        ("alice", "dave@far.example")
    );
    assert_eq!((e.dest_domain.as_str(), e.created_at), ("far.example", T0));
    assert_eq!(
        (e.expires_at, e.next_attempt_at, e.attempts),
        (T0 + 5 * 86_400, T0, 0)
    );
    assert_eq!(
        (e.lease_owner.as_deref(), e.lease_until),
        (Some("n1"), Some(T0 + 60))
    );
    assert_eq!(e.last_error, None);
    assert_eq!(read_all(&store, e.blob).await, b"relay me");

    assert!(
        store
            .lease_due(T0 + 1, "n2", T0 + 61, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        store
            .lease_due(T0 + 59, "n1", T0 + 99, 10)
            .await
            .unwrap()
            .is_empty()
    );

    // n1 dies; its lease expires; n2 takes over.
    let taken = store.lease_due(T0 + 60, "n2", T0 + 120, 10).await.unwrap();
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].lease_owner.as_deref(), Some("n2"));
    assert!(
        !store.complete(q.id, "n1").await.unwrap(),
        "n1 lost its lease"
    );
    assert!(!store.retry_later(q.id, "n1", T0 + 500, "x").await.unwrap());
    assert_eq!(store.list_queue().await.unwrap().len(), 1);

    assert!(store.complete(q.id, "n2").await.unwrap());
    assert!(!store.complete(q.id, "n2").await.unwrap());
    assert!(store.list_queue().await.unwrap().is_empty());
    assert_eq!(
        store.read_chunk(taken[0].blob, 0).await.unwrap(),
        None,
        "bytes gone"
    );
    assert!(
        store
            .lease_due(T0 + 1000, "n1", T0 + 2000, 10)
            .await
            .unwrap()
            .is_empty()
    );
}

/// `retry_later` counts the attempt, records the error, clears the lease and
/// defers the entry.
pub async fn queue_retry_later<S: Store>(store: S) {
    let q = store
        .enqueue(outbound("alice", hash(1), b"m", T0))
        .await
        .unwrap();
    store.lease_due(T0, "n1", T0 + 60, 10).await.unwrap();
    assert!(
        store
            .retry_later(q.id, "n1", T0 + 300, "connection refused")
            .await
            .unwrap()
    );
    assert!(
        !store
            .retry_later(q.id, "n1", T0 + 300, "again")
            .await
            .unwrap(),
        "lease cleared"
    );

    let e = store.list_queue().await.unwrap().remove(0);
    assert_eq!((e.attempts, e.next_attempt_at), (1, T0 + 300));
    assert_eq!(e.last_error.as_deref(), Some("connection refused"));
    assert_eq!((e.lease_owner, e.lease_until), (None, None));

    assert!(
        store
            .lease_due(T0 + 299, "n1", T0 + 400, 10)
            .await
            .unwrap()
            .is_empty()
    );
    let again = store.lease_due(T0 + 300, "n2", T0 + 400, 10).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].attempts, 1);
    assert!(
        store
            .retry_later(q.id, "n2", T0 + 900, "timeout")
            .await
            .unwrap()
    );
    let e = store.list_queue().await.unwrap().remove(0);
    assert_eq!((e.attempts, e.last_error.as_deref()), (2, Some("timeout")));
}

/// `fail_with_notice` removes the entry and puts exactly one notice into the
/// sender's mailbox, even when repeated.
pub async fn queue_fail_with_notice<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let q = store
        .enqueue(outbound("alice", hash(1), b"doomed", T0))
        .await
        .unwrap();
    let notice = || NewDelivery {
        source: "@local.example".to_owned(),
        ..delivery(
            "alice",
            hash(1000),
            b"DELIVERYFAILURE: no such user",
            T0 + 7,
        )
    };
    // Not leased: refused, nothing delivered.
    assert!(
        !store
            .fail_with_notice(q.id, "n1", "no such user", notice())
            .await
            .unwrap()
    );
    assert!(store.list_mailbox("alice").await.unwrap().is_empty());

    store.lease_due(T0, "n1", T0 + 60, 10).await.unwrap();
    // A notice for someone else is refused and changes nothing.
    let wrong = NewDelivery {
        account: "bob".to_owned(),
        ..notice()
    };
    assert!(matches!(
        store
            .fail_with_notice(q.id, "n1", "no such user", wrong)
            .await,
        Err(StoreError::InvalidInput(_))
    ));
    assert_eq!(store.list_queue().await.unwrap().len(), 1);

    assert!(
        store
            .fail_with_notice(q.id, "n1", "no such user", notice())
            .await
            .unwrap()
    );
    assert!(
        !store
            .fail_with_notice(q.id, "n1", "no such user", notice())
            .await
            .unwrap()
    );
    assert!(store.list_queue().await.unwrap().is_empty());
    let mailbox = store.list_mailbox("alice").await.unwrap();
    assert_eq!(mailbox.len(), 1, "exactly one notice");
    assert_eq!(mailbox[0].source, "@local.example");
    assert_eq!(
        message_bytes(&store, "alice", mailbox[0].id).await.unwrap(),
        b"DELIVERYFAILURE: no such user"
    );

    // A sender deleted meanwhile: the entry goes, the notice is dropped.
    with_users(&store, &["gone"]).await;
    let q = store
        .enqueue(outbound("gone", hash(2), b"x", T0))
        .await
        .unwrap();
    assert!(store.delete_user("gone").await.unwrap());
    store.lease_due(T0, "n1", T0 + 60, 10).await.unwrap();
    let n = NewDelivery {
        account: "gone".to_owned(),
        ..notice()
    };
    assert!(
        store
            .fail_with_notice(q.id, "n1", "expired", n)
            .await
            .unwrap()
    );
    assert!(store.list_queue().await.unwrap().is_empty());
}

/// The queue listing, its statistics and `retry_all_now`.
pub async fn queue_list_stats_retry_all<S: Store>(store: S) {
    let stats = store.queue_stats(T0).await.unwrap();
    assert_eq!((stats.total, stats.oldest_age), (0, None));

    let a = store
        .enqueue(outbound("alice", hash(1), b"aaaa", T0))
        .await
        .unwrap();
    let b = store
        .enqueue(outbound("alice", hash(2), b"bb", T0 + 10))
        .await
        .unwrap();
    let c = store
        .enqueue(outbound("bob", hash(3), b"c", T0 + 20))
        .await
        .unwrap();
    let list = store.list_queue().await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![a.id, b.id, c.id]
    );

    // a: leased; b: deferred; c: due.
    let leased = store.lease_due(T0 + 30, "n1", T0 + 90, 2).await.unwrap();
    assert_eq!(
        leased.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![a.id, b.id],
        "oldest first"
    );
    assert!(
        store
            .retry_later(b.id, "n1", T0 + 3600, "later")
            .await
            .unwrap()
    );

    let stats = store.queue_stats(T0 + 40).await.unwrap();
    assert_eq!(
        (
            stats.total,
            stats.leased,
            stats.deferred,
            stats.due,
            stats.bytes
        ),
        (3, 1, 1, 1, 7)
    );
    assert_eq!(stats.oldest_age, Some(40));

    assert_eq!(
        store.retry_all_now(T0 + 40).await.unwrap(),
        1,
        "only b was deferred"
    );
    let stats = store.queue_stats(T0 + 40).await.unwrap();
    assert_eq!((stats.leased, stats.deferred, stats.due), (1, 0, 2));
    let due = store.lease_due(T0 + 40, "n2", T0 + 100, 10).await.unwrap();
    assert_eq!(
        due.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![c.id, b.id],
        "by next attempt"
    );
    assert_eq!(store.retry_all_now(T0 + 40).await.unwrap(), 0);
}

/// Re-submitting a queued hash returns the existing entry.
pub async fn queue_dedup<S: Store>(store: S) {
    let first = store
        .enqueue(outbound("alice", hash(1), b"once", T0))
        .await
        .unwrap();
    let second = store
        .enqueue(outbound("alice", hash(1), b"once", T0 + 1))
        .await
        .unwrap();
    assert_eq!((second.id, second.duplicate), (first.id, true));
    let staged = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&staged, Bytes::from_static(b"once"))
        .await
        .unwrap();
    let third = store
        .enqueue(NewOutbound {
            size: 4,
            body: MessageBody::Staged(staged.clone()),
            ..outbound("alice", hash(1), b"", T0 + 2)
        })
        .await
        .unwrap();
    assert_eq!((third.id, third.duplicate), (first.id, true));
    assert_eq!(
        store.stage_append(&staged, Bytes::from_static(b"x")).await,
        Err(StoreError::BlobNotFound)
    );
    assert_eq!(store.list_queue().await.unwrap().len(), 1);
}

/// Nodes leasing concurrently never get the same entry.
pub async fn queue_concurrent_leases<S: Store>(store: S) {
    for i in 0..100 {
        store
            .enqueue(outbound("alice", hash(i), b"m", T0))
            .await
            .unwrap();
    }
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let s = store.clone();
            tokio::spawn(async move {
                let node = format!("node{n}");
                let mut got = Vec::new();
                loop {
                    let batch = s.lease_due(T0, &node, T0 + 60, 7).await.unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    for e in batch {
                        assert_eq!(e.lease_owner.as_deref(), Some(node.as_str()));
                        got.push(e.id);
                    }
                }
                got
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 100, "every entry leased exactly once");
    assert_eq!(distinct.len(), 100);
}

/// Quotas are set, shown and removed; usage counts the mailbox; a "mailbox
/// full" notice is claimed at most once per interval.
pub async fn quotas_and_usage<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    assert_eq!(store.user("alice").await.unwrap().unwrap().quota, None);
    assert_eq!(store.quota("alice").await.unwrap(), Some(None));
    assert!(store.set_quota("alice", Some(1000)).await.unwrap());
    assert!(!store.set_quota("nobody", Some(1)).await.unwrap());
    assert_eq!(
        store.user("alice").await.unwrap().unwrap().quota,
        Some(1000)
    );
    assert_eq!(store.quota("alice").await.unwrap(), Some(Some(1000)));
    assert_eq!(store.quota("bob").await.unwrap(), Some(None));
    assert_eq!(store.quota("nobody").await.unwrap(), None);
    assert_eq!(
        store.mailbox_usage("alice").await.unwrap(),
        MailboxUsage::default()
    );
    store
        .deliver(delivery("alice", hash(1), &[1; 300], T0))
        .await
        .unwrap();
    store
        .deliver(delivery("alice", hash(2), &[2; 200], T0))
        .await
        .unwrap();
    store
        .deliver(delivery("bob", hash(3), &[3; 50], T0))
        .await
        .unwrap();
    assert_eq!(
        store.mailbox_usage("alice").await.unwrap(),
        MailboxUsage {
            messages: 2,
            bytes: 500
        }
    );
    assert_eq!(
        store.mailbox_usage("nobody").await.unwrap(),
        MailboxUsage::default()
    );
    let list = store.list_users().await.unwrap();
    assert_eq!(
        list.iter()
            .map(|u| (u.account.as_str(), u.quota))
            .collect::<Vec<_>>(),
        vec![("alice", Some(1000)), ("bob", None)]
    );
    assert!(store.claim_quota_notice("alice", T0, 3600).await.unwrap());
    assert!(
        !store
            .claim_quota_notice("alice", T0 + 10, 3600)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_quota_notice("bob", T0 + 10, 3600)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_quota_notice("alice", T0 + 3600, 3600)
            .await
            .unwrap()
    );
    assert!(!store.claim_quota_notice("nobody", T0, 3600).await.unwrap());
    assert!(store.set_quota("alice", None).await.unwrap());
    assert_eq!(store.user("alice").await.unwrap().unwrap().quota, None);
}

/// Aliases: another name of an account, never of another alias, never the
/// name of an account; removed with their account.
pub async fn aliases<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    store.add_alias("ally", "alice", T0).await.unwrap();
    assert_eq!(
        store.resolve_account("ally").await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(
        store.resolve_account("alice").await.unwrap().as_deref(),
        Some("alice")
    );
    assert_eq!(store.resolve_account("nobody").await.unwrap(), None);
    assert_eq!(
        store.add_alias("ally", "bob", T0).await,
        Err(StoreError::AlreadyExists)
    );
    assert_eq!(
        store.add_alias("bob", "alice", T0).await,
        Err(StoreError::AlreadyExists),
        "the name of an account"
    );
    assert_eq!(
        store.add_alias("x", "nobody", T0).await,
        Err(StoreError::UnknownAccount)
    );
    assert_eq!(
        store.add_alias("y", "ally", T0).await,
        Err(StoreError::UnknownAccount),
        "an alias of an alias"
    );
    assert_eq!(
        store.create_user(new_user("ally"), None, T0).await,
        Err(StoreError::AlreadyExists),
        "an account named like an alias"
    );
    store.add_alias("robert", "bob", T0 + 1).await.unwrap();
    let list = store.list_aliases().await.unwrap();
    assert_eq!(
        list.iter()
            .map(|a| (a.alias.as_str(), a.account.as_str(), a.created_at))
            .collect::<Vec<_>>(),
        vec![("ally", "alice", T0), ("robert", "bob", T0 + 1)]
    );
    assert!(store.remove_alias("robert").await.unwrap());
    assert!(!store.remove_alias("robert").await.unwrap());
    assert!(store.delete_user("alice").await.unwrap());
    assert!(store.list_aliases().await.unwrap().is_empty());
    assert_eq!(store.resolve_account("ally").await.unwrap(), None);
    // The name is free again.
    store.create_user(new_user("ally"), None, T0).await.unwrap();
}

/// Unlock records: for existing accounts only, read in order after a
/// cursor, purged after a day.
pub async fn unlocks<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    assert!(!store.unlock_user("nobody", T0).await.unwrap());
    assert!(store.unlocks_after(0).await.unwrap().is_empty());
    assert!(store.unlock_user("alice", T0).await.unwrap());
    assert!(store.unlock_user("bob", T0 + 5).await.unwrap());
    let all = store.unlocks_after(0).await.unwrap();
    assert_eq!(
        all.iter()
            .map(|u| (u.account.as_str(), u.at))
            .collect::<Vec<_>>(),
        vec![("alice", T0), ("bob", T0 + 5)]
    );
    assert!(all[0].id < all[1].id);
    let rest = store.unlocks_after(all[0].id).await.unwrap();
    assert_eq!(rest, vec![all[1].clone()]);
    assert!(store.unlocks_after(all[1].id).await.unwrap().is_empty());
    let report = store
        .purge_expired(T0 + 2 * 86_400, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.unlocks, 2);
    assert!(store.unlocks_after(0).await.unwrap().is_empty());
}

/// Reset tokens: checked, then consumed in the transaction that replaces
/// the identity key and the credentials; an invalid token changes nothing.
pub async fn reset_tokens<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let (t1, t2, t3) = ([1u8; 32], [2u8; 32], [3u8; 32]);
    assert_eq!(
        store.create_reset("nobody", t1, T0 + 100, T0).await,
        Err(StoreError::UnknownAccount)
    );
    store.create_reset("alice", t1, T0 + 100, T0).await.unwrap();
    store.create_reset("alice", t2, T0 + 100, T0).await.unwrap();
    store.create_reset("bob", t3, T0 + 10, T0).await.unwrap();
    assert_eq!(
        store.create_reset("alice", t1, T0 + 100, T0).await,
        Err(StoreError::AlreadyExists)
    );
    assert!(store.reset_valid("alice", t1, T0).await.unwrap());
    assert!(
        !store.reset_valid("bob", t1, T0).await.unwrap(),
        "another account"
    );
    assert!(
        !store.reset_valid("alice", t1, T0 + 100).await.unwrap(),
        "expired"
    );
    store
        .put_key_statement("alice", b"old statement".to_vec(), T0 + 1000)
        .await
        .unwrap();
    let new_cred = Credentials {
        opaque_record: vec![0x5A; 192],
        ksf: [9; 12],
        xzibit: b"new xzibit".to_vec(),
    };
    let before = store.user("alice").await.unwrap().unwrap();
    assert_eq!(
        store
            .reset_user("alice", t3, [0xEE; 32], new_cred.clone(), T0 + 1)
            .await,
        Err(StoreError::ResetTokenInvalid),
        "bob's token"
    );
    assert_eq!(
        store
            .reset_user("alice", t1, [0xEE; 32], new_cred.clone(), T0 + 100)
            .await,
        Err(StoreError::ResetTokenInvalid),
        "expired"
    );
    assert_eq!(store.user("alice").await.unwrap().unwrap(), before);
    store
        .reset_user("alice", t1, [0xEE; 32], new_cred.clone(), T0 + 2)
        .await
        .unwrap();
    let after = store.user("alice").await.unwrap().unwrap();
    assert_eq!(after.identity_pk, [0xEE; 32]);
    assert_eq!(after.credentials, new_cred);
    assert_eq!((after.created_at, after.updated_at), (T0, T0 + 2));
    assert_eq!(store.key_statement("alice").await.unwrap(), None);
    // Used up, and the account's other tokens with it.
    for t in [t1, t2] {
        assert!(!store.reset_valid("alice", t, T0 + 3).await.unwrap());
        assert_eq!(
            store
                .reset_user("alice", t, [0xEF; 32], new_cred.clone(), T0 + 3)
                .await,
            Err(StoreError::ResetTokenInvalid)
        );
    }
    assert!(store.reset_valid("bob", t3, T0).await.unwrap());
    let report = store
        .purge_expired(T0 + 10, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.reset_tokens, 1);
    assert!(!store.reset_valid("bob", t3, T0).await.unwrap());
    // Deleting an account takes its tokens.
    store.create_reset("bob", t3, T0 + 100, T0).await.unwrap();
    assert!(store.delete_user("bob").await.unwrap());
    store.create_user(new_user("bob"), None, T0).await.unwrap();
    assert!(!store.reset_valid("bob", t3, T0).await.unwrap());
}

/// One entry at a time: shown, made due, held and released, deleted.
pub async fn queue_admin<S: Store>(store: S) {
    let a = store
        .enqueue(outbound("alice", hash(1), b"aaaa", T0))
        .await
        .unwrap();
    let b = store
        .enqueue(outbound("alice", hash(2), b"bb", T0))
        .await
        .unwrap();
    let e = store.queue_entry(a.id).await.unwrap().unwrap();
    assert_eq!((e.id, e.hash, e.size, e.held), (a.id, hash(1), 4, false));
    assert_eq!(store.queue_entry(a.id + b.id + 100).await.unwrap(), None);

    // b: deferred; retry_now makes it due.
    let leased = store.lease_due(T0, "n1", T0 + 60, 10).await.unwrap();
    assert_eq!(leased.len(), 2);
    assert!(
        store
            .retry_later(b.id, "n1", T0 + 3600, "later")
            .await
            .unwrap()
    );
    assert!(
        !store.retry_now(a.id, T0 + 10).await.unwrap(),
        "a is leased"
    );
    assert!(store.retry_now(b.id, T0 + 10).await.unwrap());
    assert_eq!(
        store
            .queue_entry(b.id)
            .await
            .unwrap()
            .unwrap()
            .next_attempt_at,
        T0 + 10
    );

    // Held: not made due, not counted as due, shown as held.
    assert!(store.set_held(b.id, true).await.unwrap());
    assert!(store.queue_entry(b.id).await.unwrap().unwrap().held);
    assert!(!store.retry_now(b.id, T0 + 20).await.unwrap());
    let stats = store.queue_stats(T0 + 20).await.unwrap();
    assert_eq!((stats.held, stats.due, stats.leased), (1, 0, 1));
    assert!(store.set_held(b.id, false).await.unwrap());
    let stats = store.queue_stats(T0 + 20).await.unwrap();
    assert_eq!((stats.held, stats.due), (0, 1));
    assert_eq!(stats.oldest_due_age, Some(10));
    assert!(!store.set_held(a.id + b.id + 100, true).await.unwrap());

    // Deleted, even while leased: the holder's later calls change nothing.
    let blob = store.queue_entry(a.id).await.unwrap().unwrap().blob;
    assert!(store.delete_queued(a.id).await.unwrap());
    assert!(!store.delete_queued(a.id).await.unwrap());
    assert_eq!(store.queue_entry(a.id).await.unwrap(), None);
    assert_eq!(store.read_chunk(blob, 0).await.unwrap(), None);
    assert!(!store.complete(a.id, "n1").await.unwrap());
    assert!(!store.retry_later(a.id, "n1", T0, "x").await.unwrap());
    assert_eq!(store.list_queue().await.unwrap().len(), 1);
}

/// A held entry is never leased, nor made due by `retry_all_now`, until it
/// is released; then it is leased as usual.
pub async fn held_entries_are_never_leased<S: Store>(store: S) {
    let a = store
        .enqueue(outbound("alice", hash(1), b"a", T0))
        .await
        .unwrap();
    let b = store
        .enqueue(outbound("alice", hash(2), b"b", T0))
        .await
        .unwrap();
    assert!(store.set_held(a.id, true).await.unwrap());
    let leased = store.lease_due(T0 + 1, "n1", T0 + 60, 10).await.unwrap();
    assert_eq!(leased.iter().map(|e| e.id).collect::<Vec<_>>(), vec![b.id]);
    assert!(store.retry_later(b.id, "n1", T0 + 5000, "x").await.unwrap());
    // Far in the future, past its expiry: still never handed out.
    assert!(
        store
            .lease_due(T0 + 10 * 86_400, "n2", T0 + 10 * 86_400 + 60, 10)
            .await
            .unwrap()
            .iter()
            .all(|e| e.id != a.id)
    );
    assert_eq!(store.retry_all_now(T0 + 2).await.unwrap(), 0);
    assert!(store.set_held(a.id, false).await.unwrap());
    let leased = store.lease_due(T0 + 2, "n3", T0 + 60, 10).await.unwrap();
    assert_eq!(leased.iter().map(|e| e.id).collect::<Vec<_>>(), vec![a.id]);
}

/// Pins: absent, set, confirmed (keeps `first_seen`), replaced (restarts it).
pub async fn pins<S: Store>(store: S) {
    assert_eq!(store.pin("far.example").await.unwrap(), None);
    store.set_pin("far.example", [1; 32], T0).await.unwrap();
    store.set_pin("near.example", [2; 32], T0).await.unwrap();
    let p = store.pin("far.example").await.unwrap().unwrap();
    assert_eq!((p.key, p.first_seen, p.updated_at), ([1; 32], T0, T0));
    store
        .set_pin("far.example", [1; 32], T0 + 10)
        .await
        .unwrap();
    let p = store.pin("far.example").await.unwrap().unwrap();
    assert_eq!((p.key, p.first_seen, p.updated_at), ([1; 32], T0, T0 + 10));
    store
        .set_pin("far.example", [3; 32], T0 + 20)
        .await
        .unwrap();
    let p = store.pin("far.example").await.unwrap().unwrap();
    assert_eq!(
        (p.key, p.first_seen, p.updated_at),
        ([3; 32], T0 + 20, T0 + 20)
    );
    assert_eq!(
        store.pin("near.example").await.unwrap().unwrap().key,
        [2; 32]
    );
}

/// The remote statement cache hides expired entries and purges them.
pub async fn statement_cache<S: Store>(store: S) {
    assert_eq!(
        store
            .cached_statement("dave", "far.example", T0)
            .await
            .unwrap(),
        None
    );
    store
        .cache_statement("dave", "far.example", b"s1".to_vec(), T0 + 100)
        .await
        .unwrap();
    store
        .cache_statement("dave", "other.example", b"s2".to_vec(), T0 + 10)
        .await
        .unwrap();
    assert_eq!(
        store
            .cached_statement("dave", "far.example", T0 + 99)
            .await
            .unwrap(),
        Some(b"s1".to_vec())
    );
    assert_eq!(
        store
            .cached_statement("dave", "far.example", T0 + 100)
            .await
            .unwrap(),
        None
    );
    assert_eq!(
        store
            .cached_statement("erin", "far.example", T0)
            .await
            .unwrap(),
        None
    );
    store
        .cache_statement("dave", "far.example", b"s3".to_vec(), T0 + 200)
        .await
        .unwrap();
    assert_eq!(
        store
            .cached_statement("dave", "far.example", T0 + 150)
            .await
            .unwrap(),
        Some(b"s3".to_vec())
    );
    let report = store
        .purge_expired(T0 + 50, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.cached_statements, 1);
    assert_eq!(
        store
            .cached_statement("dave", "other.example", T0)
            .await
            .unwrap(),
        None
    );
    assert!(
        store
            .cached_statement("dave", "far.example", T0)
            .await
            .unwrap()
            .is_some()
    );
}

/// Abandoned staged blobs are purged after their grace period; young ones
/// stay.
pub async fn purge_staged<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let old = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&old, Bytes::from_static(b"abandoned"))
        .await
        .unwrap();
    let young = store.stage_begin(T0 + 3000).await.unwrap();
    store
        .stage_append(&young, Bytes::from_static(b"in progress"))
        .await
        .unwrap();
    let retention = Retention {
        dedup: 86_400,
        staged_grace: 3600,
        ..Retention::default()
    };
    let report = store.purge_expired(T0 + 3601, retention).await.unwrap();
    assert_eq!(report.staged_blobs, 1);
    assert_eq!(
        store.stage_append(&old, Bytes::from_static(b"late")).await,
        Err(StoreError::BlobNotFound)
    );
    let staged_delivery = |staged, h| NewDelivery {
        size: 9,
        body: MessageBody::Staged(staged),
        ..delivery("alice", hash(h), b"", T0)
    };
    assert_eq!(
        store.deliver(staged_delivery(old, 1)).await,
        Err(StoreError::BlobNotFound)
    );
    store
        .stage_append(&young, Bytes::from_static(b"!"))
        .await
        .unwrap();
    let d = NewDelivery {
        size: 12,
        ..staged_delivery(young, 2)
    };
    let d = store.deliver(d).await.unwrap();
    assert_eq!(
        message_bytes(&store, "alice", d.id).await.unwrap(),
        b"in progress!"
    );
}

/// A refused or abandoned upload is removed at once: its chunks are gone,
/// it can no longer be appended to or referenced, and aborting a blob that
/// a message already owns changes nothing.
pub async fn stage_abort_removes_the_bytes_at_once<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let staged = store.stage_begin(T0).await.unwrap();
    for n in 0..3 {
        store
            .stage_append(&staged, Bytes::from(pattern(1000, n)))
            .await
            .unwrap();
    }
    let blob = BlobRef {
        id: staged.id(),
        size: 3000,
        chunks: 3,
    };
    assert!(store.read_chunk(blob, 2).await.unwrap().is_some());
    assert!(store.stage_abort(&staged).await.unwrap());
    for seq in 0..3 {
        assert_eq!(
            store.read_chunk(blob, seq).await.unwrap(),
            None,
            "chunk {seq}"
        );
    }
    assert!(!store.stage_abort(&staged).await.unwrap(), "already gone");
    assert_eq!(
        store
            .stage_append(&staged, Bytes::from_static(b"late"))
            .await,
        Err(StoreError::BlobNotFound)
    );
    assert_eq!(
        store
            .deliver(NewDelivery {
                size: 3000,
                body: MessageBody::Staged(staged),
                ..delivery("alice", hash(1), b"", T0)
            })
            .await,
        Err(StoreError::BlobNotFound)
    );
    // Nothing is left for maintenance.
    let report = store
        .purge_expired(T0 + 100_000, Retention::default())
        .await
        .unwrap();
    assert_eq!(report.staged_blobs, 0);

    // A delivered blob is not staged any more: abort leaves it alone.
    let kept = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&kept, Bytes::from_static(b"delivered"))
        .await
        .unwrap();
    let d = store
        .deliver(NewDelivery {
            size: 9,
            body: MessageBody::Staged(kept.clone()),
            ..delivery("alice", hash(2), b"", T0)
        })
        .await
        .unwrap();
    assert!(!store.stage_abort(&kept).await.unwrap());
    assert_eq!(
        message_bytes(&store, "alice", d.id).await.unwrap(),
        b"delivered"
    );
}

/// The histogram of key-stretching parameters counts users per encoding,
/// ordered by the encoding's bytes, and follows password changes.
pub async fn ksf_histogram_counts_parameters<S: Store>(store: S) {
    assert!(store.ksf_histogram().await.unwrap().is_empty());
    let with_ksf = |name: &str, ksf: [u8; 12]| {
        let mut u = new_user(name);
        u.credentials.ksf = ksf;
        u
    };
    for (name, ksf) in [
        ("a", [9; 12]),
        ("b", [1; 12]),
        ("c", [9; 12]),
        ("d", [9; 12]),
    ] {
        store
            .create_user(with_ksf(name, ksf), None, T0)
            .await
            .unwrap();
    }
    assert_eq!(
        store.ksf_histogram().await.unwrap(),
        vec![([1; 12], 1), ([9; 12], 3)]
    );
    let mut credentials = new_user("a").credentials;
    credentials.ksf = [5; 12];
    assert!(
        store
            .update_credentials("a", credentials, T0 + 1)
            .await
            .unwrap()
    );
    assert!(store.delete_user("b").await.unwrap());
    assert_eq!(
        store.ksf_histogram().await.unwrap(),
        vec![([5; 12], 1), ([9; 12], 2)]
    );
}

fn to(domain: &str, n: u64, at: u64) -> NewOutbound {
    NewOutbound {
        destination: format!("dave@{domain}"),
        dest_domain: domain.to_owned(),
        ..outbound("alice", hash(n), b"m", at)
    }
}

/// Leasing per domain: a domain at its limit (counting what is in flight)
/// is skipped, so the mail queued behind it for other domains is leased.
pub async fn lease_per_domain_skips_busy_domains<S: Store>(store: S) {
    for n in 0..10 {
        store.enqueue(to("slow.example", n, T0)).await.unwrap();
    }
    for n in 10..12 {
        store.enqueue(to("fast.example", n, T0 + 1)).await.unwrap();
    }
    let busy = [("slow.example".to_owned(), 2)];
    let got = store
        .lease_due_per_domain(T0 + 1, "n1", T0 + 60, 5, 2, &busy)
        .await
        .unwrap();
    let domains: Vec<&str> = got.iter().map(|e| e.dest_domain.as_str()).collect();
    assert_eq!(domains, ["fast.example", "fast.example"]);
    assert!(got.iter().all(|e| e.lease_owner.as_deref() == Some("n1")));
    // With one slot free for slow.example: one more, the oldest.
    let busy = [("slow.example".to_owned(), 1)];
    let got = store
        .lease_due_per_domain(T0 + 1, "n1", T0 + 60, 5, 2, &busy)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(
        (got[0].dest_domain.as_str(), got[0].hash),
        ("slow.example", hash(0))
    );
    // Nothing in flight: up to the limit per domain, and never more than asked.
    let got = store
        .lease_due_per_domain(T0 + 1, "n2", T0 + 60, 5, 3, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 3);
    assert!(got.iter().all(|e| e.dest_domain == "slow.example"));
    let got = store
        .lease_due_per_domain(T0 + 1, "n2", T0 + 60, 1, 3, &[])
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert!(
        store
            .lease_due_per_domain(T0 + 1, "n2", T0 + 60, 0, 3, &[])
            .await
            .unwrap()
            .is_empty()
    );
    // Leased entries are not leased again.
    assert_eq!(store.queue_stats(T0 + 1).await.unwrap().leased, 7);
}

/// Deferring a domain moves its unleased due entries (not past their
/// expiry, never earlier), leaves leased ones and other domains alone, and
/// counts no attempt.
pub async fn defer_domain_postpones_only_that_domain<S: Store>(store: S) {
    for n in 0..3 {
        store.enqueue(to("dead.example", n, T0)).await.unwrap();
    }
    let mut short = to("dead.example", 3, T0);
    short.expires_at = T0 + 100;
    store.enqueue(short).await.unwrap();
    store.enqueue(to("live.example", 4, T0)).await.unwrap();
    let leased = store.lease_due(T0, "n1", T0 + 60, 1).await.unwrap();
    assert_eq!(leased[0].hash, hash(0));
    assert_eq!(
        store
            .defer_domain("dead.example", T0 + 1, T0 + 600)
            .await
            .unwrap(),
        3
    );
    let queue = store.list_queue().await.unwrap();
    let next = |h: u64| {
        queue
            .iter()
            .find(|e| e.hash == hash(h))
            .map(|e| (e.next_attempt_at, e.attempts))
            .unwrap()
    };
    assert_eq!(next(0), (T0, 0), "the leased entry is its holder's");
    assert_eq!(next(1), (T0 + 600, 0));
    assert_eq!(next(2), (T0 + 600, 0));
    assert_eq!(next(3), (T0 + 100, 0), "not past its expiry");
    assert_eq!(next(4), (T0, 0), "another domain");
    // Entries already due later are not brought forward.
    assert_eq!(
        store
            .defer_domain("dead.example", T0 + 2, T0 + 300)
            .await
            .unwrap(),
        0
    );
    let due = store.lease_due(T0 + 10, "n2", T0 + 70, 10).await.unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].hash, hash(4));
}

/// Over their bounds, the remote statement cache loses the statements that
/// expire soonest and the pins lose the domains first seen last.
pub async fn remote_caches_are_trimmed_to_their_bounds<S: Store>(store: S) {
    for n in 0..5u64 {
        let domain = format!("d{n}.example");
        store
            .cache_statement("dave", &domain, vec![n as u8], T0 + 1000 - n)
            .await
            .unwrap();
        store.set_pin(&domain, [n as u8; 32], T0 + n).await.unwrap();
    }
    let retention = Retention {
        max_cached_statements: 3,
        max_pins: 2,
        ..Retention::default()
    };
    let report = store.purge_expired(T0 + 10, retention).await.unwrap();
    assert_eq!((report.cached_statements, report.pins), (2, 3));
    for n in 0..5u64 {
        let domain = format!("d{n}.example");
        let cached = store
            .cached_statement("dave", &domain, T0 + 10)
            .await
            .unwrap();
        assert_eq!(cached.is_some(), n < 3, "statement of {domain}");
        let pin = store.pin(&domain).await.unwrap();
        assert_eq!(pin.is_some(), n < 2, "pin of {domain}");
    }
    // Within the bounds nothing more goes.
    let report = store.purge_expired(T0 + 10, retention).await.unwrap();
    assert_eq!((report.cached_statements, report.pins), (0, 0));
}

/// The store reports the space it occupies.
pub async fn size_is_reported<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    store
        .deliver(delivery("alice", hash(1), &pattern(100_000, 1), T0))
        .await
        .unwrap();
    let size = store.size().await.unwrap();
    assert!(size >= 100_000, "{size} bytes");
}

/// 32 tasks × 50 deliveries at once: exactly 1600 distinct entries.
pub async fn concurrent_deliveries<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let tasks: Vec<_> = (0..32u64)
        .map(|t| {
            let s = store.clone();
            tokio::spawn(async move {
                let account = if t % 2 == 0 { "alice" } else { "bob" };
                let mut ids = Vec::new();
                for i in 0..50u64 {
                    let n = t * 1000 + i;
                    let body = format!("message {n}");
                    let d = s
                        .deliver(delivery(account, hash(n), body.as_bytes(), T0))
                        .await
                        .unwrap();
                    assert!(!d.duplicate);
                    ids.push((account, d.id, n));
                }
                ids
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let distinct: HashSet<(&str, u64)> = all.iter().map(|(a, id, _)| (*a, *id)).collect();
    assert_eq!(distinct.len(), 1600, "ids must be distinct per account");
    let alice = store.list_mailbox("alice").await.unwrap();
    let bob = store.list_mailbox("bob").await.unwrap();
    assert_eq!((alice.len(), bob.len()), (800, 800));
    let listed: HashSet<(&str, u64)> = alice
        .iter()
        .map(|e| ("alice", e.id))
        .chain(bob.iter().map(|e| ("bob", e.id)))
        .collect();
    assert_eq!(listed, distinct);
    for (account, id, n) in all.iter().step_by(97) {
        let bytes = message_bytes(&store, account, *id).await.unwrap();
        assert_eq!(bytes, format!("message {n}").into_bytes());
    }
}

/// Per-user ids: each account's first message is 1, the next 2, whatever
/// other accounts receive; ids name messages of their account only.
pub async fn per_user_ids<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    let a1 = store
        .deliver(delivery("alice", hash(1), b"a1", T0))
        .await
        .unwrap();
    let b1 = store
        .deliver(delivery("bob", hash(2), b"b1", T0))
        .await
        .unwrap();
    let b2 = store
        .deliver(delivery("bob", hash(3), b"b2", T0))
        .await
        .unwrap();
    let a2 = store
        .deliver(delivery("alice", hash(4), b"a2", T0))
        .await
        .unwrap();
    assert_eq!((a1.id, a2.id, b1.id, b2.id), (1, 2, 1, 2));
    assert_eq!(message_bytes(&store, "bob", 1).await.unwrap(), b"b1");
    assert_eq!(message_bytes(&store, "alice", 2).await.unwrap(), b"a2");
    // A duplicate names the original id; deleted ids are not reused.
    let dup = store
        .deliver(delivery("bob", hash(3), b"b2", T0))
        .await
        .unwrap();
    assert_eq!((dup.id, dup.duplicate), (2, true));
    assert!(store.delete_message("alice", 2).await.unwrap());
    let a3 = store
        .deliver(delivery("alice", hash(5), b"a3", T0))
        .await
        .unwrap();
    assert_eq!(a3.id, 3);
    let e = store.list_mailbox("alice").await.unwrap();
    assert_eq!(e.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(e[0].folder, crate::INBOX);
    assert_eq!(e[0].flags, 0);
    assert!(matches!(
        store.deliver(delivery("nobody", hash(9), b"x", T0)).await,
        Err(StoreError::UnknownAccount)
    ));
}

/// Pages newest first, below an id, with the state read before them.
pub async fn mailbox_pages_newest_first<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    for n in 1..=25u64 {
        store
            .deliver(delivery(
                "alice",
                hash(n),
                format!("m{n}").as_bytes(),
                T0 + n,
            ))
            .await
            .unwrap();
    }
    store
        .deliver(delivery("bob", hash(100), b"bob's", T0))
        .await
        .unwrap();
    let p = store.mailbox_page("alice", 0, 10).await.unwrap();
    assert_eq!(p.state.modseq, 25);
    let ids: Vec<u64> = p.entries.iter().map(|e| e.id).collect();
    assert_eq!(ids, (16..=25).rev().collect::<Vec<_>>());
    assert_eq!(p.entries[0].received_at, T0 + 25);
    assert_eq!(p.entries[0].modseq, 25);
    let p2 = store.mailbox_page("alice", 16, 10).await.unwrap();
    assert_eq!(p2.entries.first().unwrap().id, 15);
    assert_eq!(p2.state, p.state);
    let last = store.mailbox_page("alice", 6, 10).await.unwrap();
    assert_eq!(
        last.entries.iter().map(|e| e.id).collect::<Vec<_>>(),
        [5, 4, 3, 2, 1]
    );
    let bob = store.mailbox_page("bob", 0, 10).await.unwrap();
    assert_eq!(bob.entries.len(), 1);
    assert_ne!(bob.state.epoch, p.state.epoch, "each mailbox its own epoch");
    assert!(matches!(
        store.mailbox_page("nobody", 0, 10).await,
        Err(StoreError::UnknownAccount)
    ));
}

/// Changes after a modseq: arrivals, flag changes and removals, each once
/// in its latest state, oldest first, paged with `more`.
pub async fn changes_since_a_modseq<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    for n in 1..=5u64 {
        store
            .deliver(delivery("alice", hash(n), b"x", T0))
            .await
            .unwrap();
    }
    let all = store.mailbox_changes("alice", 0, 100).await.unwrap();
    assert_eq!(all.changes.len(), 5);
    assert!(!all.more);
    assert_eq!(all.state.modseq, 5);
    let none = store.mailbox_changes("alice", 5, 100).await.unwrap();
    assert!(none.changes.is_empty() && !none.more);
    // Since 5: one flag change, one removal, one arrival.
    store
        .set_flags("alice", vec![2], 1, 0)
        .await
        .map(|f| assert_eq!((f.modseq, f.changed), (6, 1)))
        .unwrap();
    assert!(store.delete_message("alice", 4).await.unwrap());
    store
        .deliver(delivery("alice", hash(6), b"y", T0))
        .await
        .unwrap();
    store
        .deliver(delivery("bob", hash(7), b"z", T0))
        .await
        .unwrap();
    let c = store.mailbox_changes("alice", 5, 100).await.unwrap();
    assert_eq!(c.state.modseq, 8);
    assert_eq!(
        c.changes,
        {
            let mut e2 = store.mailbox_message("alice", 2).await.unwrap().unwrap().0;
            e2.flags = 1;
            let e6 = store.mailbox_message("alice", 6).await.unwrap().unwrap().0;
            vec![
                crate::MailboxChange::Entry(e2),
                crate::MailboxChange::Removed { id: 4, modseq: 7 },
                crate::MailboxChange::Entry(e6),
            ]
        },
        "{:?}",
        c.changes
    );
    // Paging: two at a time.
    let p1 = store.mailbox_changes("alice", 5, 2).await.unwrap();
    assert!(p1.more);
    assert_eq!(p1.changes.len(), 2);
    let after = p1.changes.last().unwrap().modseq();
    let p2 = store.mailbox_changes("alice", after, 2).await.unwrap();
    assert!(!p2.more);
    assert_eq!(p2.changes.len(), 1);
    assert_eq!(p2.changes[0].modseq(), 8);
    // A message changed twice appears once, with its latest modseq.
    store.set_flags("alice", vec![1], 4, 0).await.unwrap();
    store.set_flags("alice", vec![1], 0, 4).await.unwrap();
    let c = store.mailbox_changes("alice", 8, 100).await.unwrap();
    assert_eq!(c.changes.len(), 1);
    assert_eq!(c.changes[0].modseq(), 10);
}

/// Flags: set and clear bits, only real changes raise the modseq, unknown
/// ids are ignored, other accounts are untouched.
pub async fn flags_are_metadata_with_modseqs<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    for n in 1..=3u64 {
        store
            .deliver(delivery("alice", hash(n), b"x", T0))
            .await
            .unwrap();
    }
    store
        .deliver(delivery("bob", hash(10), b"x", T0))
        .await
        .unwrap();
    let f = store
        .set_flags("alice", vec![1, 3, 99], 1 | 4, 0)
        .await
        .unwrap();
    assert_eq!((f.changed, f.modseq), (2, 5));
    // Setting what is set changes nothing.
    let f = store.set_flags("alice", vec![1], 1, 0).await.unwrap();
    assert_eq!((f.changed, f.modseq), (0, 5));
    let f = store
        .set_flags("alice", vec![1], 0x8000_0000, 4)
        .await
        .unwrap();
    assert_eq!((f.changed, f.modseq), (1, 6));
    let list = store.list_mailbox("alice").await.unwrap();
    let flags: Vec<(u64, u32, u64)> = list.iter().map(|e| (e.id, e.flags, e.modseq)).collect();
    assert_eq!(flags, [(1, 0x8000_0001, 6), (2, 0, 2), (3, 5, 5)]);
    // bob's message 1 is not alice's.
    let bob = store.list_mailbox("bob").await.unwrap();
    assert_eq!(bob[0].flags, 0);
    assert!(matches!(
        store.set_flags("nobody", vec![1], 1, 0).await,
        Err(StoreError::UnknownAccount)
    ));
}

/// Moves (PROTOCOL.md §13.7): only real changes raise the modseq, unknown
/// ids are ignored, the flags stay, other accounts are untouched, and
/// CHANGES reports each moved message once with its new folder.
pub async fn moves_between_folders_are_metadata_with_modseqs<S: Store>(store: S) {
    with_users(&store, &["alice", "bob"]).await;
    for n in 1..=3u64 {
        store
            .deliver(delivery("alice", hash(n), b"x", T0))
            .await
            .unwrap();
    }
    store
        .deliver(delivery("bob", hash(10), b"x", T0))
        .await
        .unwrap();
    store.set_flags("alice", vec![2], 1, 0).await.unwrap();
    let f = store
        .move_messages("alice", vec![2, 3, 99], "Archive")
        .await
        .unwrap();
    assert_eq!((f.changed, f.modseq), (2, 6));
    // Moving where it already is changes nothing.
    let f = store
        .move_messages("alice", vec![2], "Archive")
        .await
        .unwrap();
    assert_eq!((f.changed, f.modseq), (0, 6));
    let f = store
        .move_messages("alice", vec![3], "Trash")
        .await
        .unwrap();
    assert_eq!((f.changed, f.modseq), (1, 7));
    let list = store.list_mailbox("alice").await.unwrap();
    let got: Vec<(u64, &str, u32, u64)> = list
        .iter()
        .map(|e| (e.id, e.folder.as_str(), e.flags, e.modseq))
        .collect();
    assert_eq!(
        got,
        [(1, "Inbox", 0, 1), (2, "Archive", 1, 5), (3, "Trash", 0, 7)]
    );
    let c = store.mailbox_changes("alice", 4, 100).await.unwrap();
    let moved: Vec<(u64, String)> = c
        .changes
        .iter()
        .map(|c| match c {
            crate::MailboxChange::Entry(e) => (e.id, e.folder.clone()),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(moved, [(2, "Archive".into()), (3, "Trash".into())]);
    let bob = store.list_mailbox("bob").await.unwrap();
    assert_eq!(bob[0].folder, "Inbox");
    assert!(matches!(
        store.move_messages("nobody", vec![1], "Trash").await,
        Err(StoreError::UnknownAccount)
    ));
}

/// A message filed into a folder with flags (APPEND), de-duplicated like a
/// delivery.
pub async fn deliver_into_a_folder<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let d = store
        .deliver_into(delivery("alice", hash(1), b"sent copy", T0), "Sent", 1)
        .await
        .unwrap();
    assert_eq!((d.id, d.duplicate), (1, false));
    let again = store
        .deliver_into(delivery("alice", hash(1), b"sent copy", T0), "Sent", 1)
        .await
        .unwrap();
    assert_eq!((again.id, again.duplicate), (1, true));
    let (e, _) = store.mailbox_message("alice", 1).await.unwrap().unwrap();
    assert_eq!((e.folder.as_str(), e.flags), ("Sent", 1));
    let big = pattern(MAX_CHUNK + 10, 3);
    let staged = store.stage_begin(T0).await.unwrap();
    store
        .stage_append(&staged, Bytes::copy_from_slice(&big[..MAX_CHUNK]))
        .await
        .unwrap();
    store
        .stage_append(&staged, Bytes::copy_from_slice(&big[MAX_CHUNK..]))
        .await
        .unwrap();
    let mut d2 = delivery("alice", hash(2), b"", T0);
    d2.size = big.len() as u64;
    d2.body = MessageBody::Staged(staged);
    let d2 = store.deliver_into(d2, "Reisen ✈", 0).await.unwrap();
    assert_eq!(d2.id, 2);
    assert_eq!(message_bytes(&store, "alice", 2).await.unwrap(), big);
    let page = store.mailbox_page("alice", 0, 10).await.unwrap();
    assert_eq!(page.entries[0].folder, "Reisen ✈");
}

/// An account deleted and created again starts at id 1 in a new epoch, with
/// no tombstones of the old one.
pub async fn a_recreated_account_has_a_new_epoch<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    store
        .deliver(delivery("alice", hash(1), b"x", T0))
        .await
        .unwrap();
    store
        .deliver(delivery("alice", hash(2), b"y", T0))
        .await
        .unwrap();
    assert!(store.delete_message("alice", 1).await.unwrap());
    let before = store.mailbox_page("alice", 0, 10).await.unwrap().state;
    assert!(store.delete_user("alice").await.unwrap());
    with_users(&store, &["alice"]).await;
    let after = store.mailbox_page("alice", 0, 10).await.unwrap();
    assert_ne!(after.state.epoch, before.epoch);
    assert_eq!(after.state.modseq, 0);
    assert!(after.entries.is_empty());
    assert!(
        store
            .mailbox_changes("alice", 0, 10)
            .await
            .unwrap()
            .changes
            .is_empty()
    );
    let d = store
        .deliver(delivery("alice", hash(3), b"z", T0))
        .await
        .unwrap();
    assert_eq!(d.id, 1);
}

/// 8 tasks × 25 deliveries to one mailbox at once: ids 1..=200 without a
/// gap, modseqs likewise, every message listed once.
pub async fn concurrent_deliveries_get_consecutive_ids<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let s = store.clone();
            tokio::spawn(async move {
                for i in 0..25u64 {
                    let n = t * 100 + i;
                    s.deliver(delivery("alice", hash(n), b"m", T0))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let list = store.list_mailbox("alice").await.unwrap();
    assert_eq!(
        list.iter().map(|e| e.id).collect::<Vec<_>>(),
        (1..=200).collect::<Vec<_>>()
    );
    let mut modseqs: Vec<u64> = list.iter().map(|e| e.modseq).collect();
    modseqs.sort_unstable();
    assert_eq!(modseqs, (1..=200).collect::<Vec<_>>());
    let c = store.mailbox_changes("alice", 0, 1000).await.unwrap();
    assert_eq!(c.state.modseq, 200);
    assert_eq!(c.changes.len(), 200);
}

/// Concurrent deliveries of the same hash: exactly one entry, one
/// non-duplicate answer, and every duplicate names it.
pub async fn concurrent_duplicates<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let s = store.clone();
            tokio::spawn(async move {
                s.deliver(delivery("alice", hash(42), b"same", T0))
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let originals: Vec<_> = results.iter().filter(|d| !d.duplicate).collect();
    assert_eq!(originals.len(), 1, "exactly one delivery stored");
    let id = originals[0].id;
    assert!(results.iter().all(|d| d.id == id));
    let list = store.list_mailbox("alice").await.unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].id, id);
}

/// Requests that fail (unknown recipient, size mismatch) while others run
/// at the same time fail alone: every valid delivery is stored.
pub async fn concurrent_failures_are_isolated<S: Store>(store: S) {
    with_users(&store, &["alice"]).await;
    let tasks: Vec<_> = (0..96u64)
        .map(|n| {
            let s = store.clone();
            tokio::spawn(async move {
                let mut d = delivery("alice", hash(n), format!("m{n}").as_bytes(), T0);
                match n % 3 {
                    1 => d.account = "nobody".to_owned(),
                    2 => d.size += 1,
                    _ => {}
                }
                (n, s.deliver(d).await)
            })
        })
        .collect();
    let mut stored = 0;
    for t in tasks {
        match t.await.unwrap() {
            (n, Ok(d)) => {
                assert_eq!(n % 3, 0, "invalid delivery {n} accepted");
                assert!(!d.duplicate);
                stored += 1;
            }
            (n, Err(StoreError::UnknownAccount)) => assert_eq!(n % 3, 1),
            (n, Err(StoreError::InvalidInput(_))) => assert_eq!(n % 3, 2),
            (n, Err(e)) => panic!("delivery {n}: unexpected {e:?}"),
        }
    }
    assert_eq!(stored, 32);
    assert_eq!(store.list_mailbox("alice").await.unwrap().len(), 32);
    // The refused hashes were not recorded.
    let d = store
        .deliver(delivery("alice", hash(2), b"m2", T0))
        .await
        .unwrap();
    assert!(!d.duplicate);
}

/// Measures inline deliveries per second of 1 KiB messages with
/// `concurrency` callers (the ignored throughput tests of both backends).
pub async fn delivery_throughput<S: Store>(store: &S, concurrency: u64) -> (u64, f64) {
    store
        .create_user(new_user("alice"), None, T0)
        .await
        .unwrap();
    let total = if concurrency == 1 { 1000 } else { 8000 };
    let per_task = total / concurrency;
    let body = pattern(1024, 1);
    let start = std::time::Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let s = store.clone();
            let body = body.clone();
            tokio::spawn(async move {
                for i in 0..per_task {
                    let n = t * 1_000_000 + i;
                    s.deliver(delivery("alice", hash(n), &body, T0))
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let done = per_task * concurrency;
    (done, done as f64 / start.elapsed().as_secs_f64())
}
