//! The store conformance suite: every [`IdempotencyStore`] must pass it.
//!
//! Each check is a public async function taking a fresh store; [`store_conformance_tests!`]
//! turns them all into `#[tokio::test]`s for one store:
//!
//! ```ignore
//! tower_idempotency::store_conformance_tests!(async { MyStore::connect("...").await.unwrap() });
//! ```
//!
//! Checks use random record ids, so several may share one backend (one Redis, one database)
//! concurrently. Timing checks use leases and TTLs of a few hundred milliseconds with generous
//! margins; they need a store whose clock has millisecond precision.
//!
//! [`store_conformance_tests!`]: crate::store_conformance_tests

use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::sync::Barrier;

use crate::{
    Fingerprint, IdempotencyKey,
    store::{Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

/// Generates one `#[tokio::test]` per conformance check. `$make` is an expression evaluating
/// to a future of a fresh store; it is evaluated once per test.
#[macro_export]
macro_rules! store_conformance_tests {
    ($make:expr) => {
        $crate::__conformance_tests!($make;
            claim_acquires_then_reports_in_flight,
            exclusive_claim_under_contention,
            completed_record_replays_exact_bytes,
            fencing_rejects_foreign_tokens,
            stale_owner_cannot_overwrite_new_owner,
            renew_extends_the_lease,
            lease_expiry_frees_the_key,
            ttl_expiry_frees_the_key,
            release_frees_the_key,
            scopes_are_isolated,
            tokens_are_never_reused,
            check_reports_reachable,
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_tests {
    ($make:expr; $($check:ident),* $(,)?) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $check() {
                let store = $make.await;
                $crate::testing::$check(store).await;
            }
        )*
    };
}

const HOUR: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(300);
/// Comfortably past [`SHORT`], even on a loaded machine.
const PAST_SHORT: Duration = Duration::from_millis(900);

/// A record id no other check (or process) uses.
pub fn unique_id(label: &str) -> RecordId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let random = RandomState::new().hash_one((std::process::id(), n));
    let key = IdempotencyKey::parse(format!("{label}-{random:016x}-{n}").as_bytes())
        .expect("generated keys are valid");
    RecordId::new(b"conformance", &key)
}

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; Fingerprint::LEN])
}

async fn acquire<S: IdempotencyStore>(store: &S, id: &RecordId, lease: Duration) -> FencingToken {
    match store.claim(id, &fingerprint(1), lease).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("expected Claim::Acquired, got {other:?}"),
    }
}

async fn assert_lease_lost<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, crate::store::StoreError>,
) {
    match result {
        Err(e) if e.kind() == StoreErrorKind::LeaseLost => {}
        other => panic!("{what}: expected LeaseLost, got {other:?}"),
    }
}

/// A claim acquires a free id; later claims see it in flight, with the first fingerprint.
pub async fn claim_acquires_then_reports_in_flight<S: IdempotencyStore>(store: S) {
    let id = unique_id("in-flight");
    acquire(&store, &id, HOUR).await;
    for other in [fingerprint(1), fingerprint(2)] {
        assert_eq!(
            store.claim(&id, &other, HOUR).await.unwrap(),
            Claim::InFlight {
                fingerprint: fingerprint(1)
            }
        );
    }
}

/// Of 128 concurrent claimers, exactly one acquires; after completion all 128 see the record.
pub async fn exclusive_claim_under_contention<S: IdempotencyStore>(store: S) {
    const CLAIMERS: usize = 128;
    let store = Arc::new(store);
    for round in 0..5 {
        let id = unique_id("contention");
        let barrier = Arc::new(Barrier::new(CLAIMERS));
        let tasks: Vec<_> = (0..CLAIMERS)
            .map(|_| {
                let (store, barrier) = (Arc::clone(&store), Arc::clone(&barrier));
                tokio::spawn(async move {
                    barrier.wait().await;
                    store.claim(&id, &fingerprint(1), HOUR).await.unwrap()
                })
            })
            .collect();
        let mut tokens = Vec::new();
        for task in tasks {
            match task.await.unwrap() {
                Claim::Acquired(token) => tokens.push(token),
                Claim::InFlight { fingerprint: fp } => assert_eq!(fp, fingerprint(1)),
                Claim::Completed(_) => panic!("nothing was completed yet"),
            }
        }
        assert_eq!(
            tokens.len(),
            1,
            "round {round}: exactly one claimer acquires"
        );

        let response = Bytes::from(format!("response of round {round}"));
        store
            .complete(&id, tokens[0], response.clone(), HOUR)
            .await
            .unwrap();
        let tasks: Vec<_> = (0..CLAIMERS)
            .map(|_| {
                let store = Arc::clone(&store);
                tokio::spawn(async move { store.claim(&id, &fingerprint(1), HOUR).await.unwrap() })
            })
            .collect();
        for task in tasks {
            assert_eq!(
                task.await.unwrap(),
                Claim::Completed(CompletedRecord {
                    fingerprint: fingerprint(1),
                    response: response.clone()
                })
            );
        }
    }
}

/// A completed record comes back byte for byte, binary and large bodies included.
pub async fn completed_record_replays_exact_bytes<S: IdempotencyStore>(store: S) {
    let every_byte: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let large: Vec<u8> = (0..256 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for body in [Vec::new(), vec![0u8], every_byte, large] {
        let id = unique_id("bytes");
        let token = acquire(&store, &id, HOUR).await;
        let body = Bytes::from(body);
        store
            .complete(&id, token, body.clone(), HOUR)
            .await
            .unwrap();
        match store.claim(&id, &fingerprint(9), HOUR).await.unwrap() {
            Claim::Completed(record) => {
                assert_eq!(record.fingerprint, fingerprint(1));
                assert!(record.response == body, "{} bytes differ", body.len());
            }
            other => panic!("expected Completed, got {other:?}"),
        }
    }
}

/// Only the current token may renew, complete or release; a completed record is final.
pub async fn fencing_rejects_foreign_tokens<S: IdempotencyStore>(store: S) {
    let id = unique_id("fencing");
    let token = acquire(&store, &id, HOUR).await;
    let foreign = FencingToken::new(token.get().wrapping_add(1));
    assert_lease_lost("renew", store.renew(&id, foreign, HOUR).await).await;
    assert_lease_lost(
        "complete",
        store
            .complete(&id, foreign, Bytes::from_static(b"forged"), HOUR)
            .await,
    )
    .await;
    assert_lease_lost("release", store.release(&id, foreign).await).await;
    assert!(matches!(
        store.claim(&id, &fingerprint(1), HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));

    store.renew(&id, token, HOUR).await.unwrap();
    store
        .complete(&id, token, Bytes::from_static(b"real"), HOUR)
        .await
        .unwrap();
    assert_lease_lost(
        "second complete",
        store
            .complete(&id, token, Bytes::from_static(b"again"), HOUR)
            .await,
    )
    .await;
    assert_lease_lost("release after complete", store.release(&id, token).await).await;
    assert_lease_lost("renew after complete", store.renew(&id, token, HOUR).await).await;
    match store.claim(&id, &fingerprint(1), HOUR).await.unwrap() {
        Claim::Completed(record) => assert_eq!(&record.response[..], b"real"),
        other => panic!("expected Completed, got {other:?}"),
    }

    let unknown = unique_id("fencing-unknown");
    assert_lease_lost(
        "complete of an unknown id",
        store
            .complete(&unknown, token, Bytes::from_static(b"x"), HOUR)
            .await,
    )
    .await;
}

/// An owner whose lease expired cannot touch the record of the owner that took over.
pub async fn stale_owner_cannot_overwrite_new_owner<S: IdempotencyStore>(store: S) {
    let id = unique_id("stale-owner");
    let stale = acquire(&store, &id, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    let current = acquire(&store, &id, HOUR).await;
    assert_ne!(stale, current, "a re-acquisition hands out a new token");

    assert_lease_lost(
        "stale complete",
        store
            .complete(&id, stale, Bytes::from_static(b"stale"), HOUR)
            .await,
    )
    .await;
    assert_lease_lost("stale release", store.release(&id, stale).await).await;
    assert_lease_lost("stale renew", store.renew(&id, stale, HOUR).await).await;

    store
        .complete(&id, current, Bytes::from_static(b"current"), HOUR)
        .await
        .unwrap();
    match store.claim(&id, &fingerprint(1), HOUR).await.unwrap() {
        Claim::Completed(record) => assert_eq!(&record.response[..], b"current"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

/// Renewing keeps a claim alive past its original lease.
pub async fn renew_extends_the_lease<S: IdempotencyStore>(store: S) {
    let id = unique_id("renew");
    let token = acquire(&store, &id, SHORT).await;
    store.renew(&id, token, HOUR).await.unwrap();
    tokio::time::sleep(PAST_SHORT).await;
    assert!(matches!(
        store.claim(&id, &fingerprint(1), HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    store
        .complete(&id, token, Bytes::from_static(b"done"), HOUR)
        .await
        .unwrap();
}

/// An unrenewed claim expires: the id can be claimed again, and the old token is dead.
pub async fn lease_expiry_frees_the_key<S: IdempotencyStore>(store: S) {
    let id = unique_id("lease");
    let token = acquire(&store, &id, SHORT).await;
    tokio::time::sleep(PAST_SHORT).await;
    assert_lease_lost("renew after expiry", store.renew(&id, token, HOUR).await).await;
    acquire(&store, &id, HOUR).await;
}

/// A completed record expires after its TTL.
pub async fn ttl_expiry_frees_the_key<S: IdempotencyStore>(store: S) {
    let id = unique_id("ttl");
    let token = acquire(&store, &id, HOUR).await;
    store
        .complete(&id, token, Bytes::from_static(b"short-lived"), SHORT)
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&id, &fingerprint(1), HOUR).await.unwrap(),
        Claim::Completed(_)
    ));
    tokio::time::sleep(PAST_SHORT).await;
    acquire(&store, &id, HOUR).await;
}

/// Releasing frees the id at once, and the next owner gets a new token.
pub async fn release_frees_the_key<S: IdempotencyStore>(store: S) {
    let id = unique_id("release");
    let first = acquire(&store, &id, HOUR).await;
    store.release(&id, first).await.unwrap();
    let second = acquire(&store, &id, HOUR).await;
    assert_ne!(first, second);
    assert_lease_lost("released token", store.release(&id, first).await).await;
}

/// The same key in two scopes addresses two records.
pub async fn scopes_are_isolated<S: IdempotencyStore>(store: S) {
    let key = IdempotencyKey::parse(format!("shared-{:?}", unique_id("key")).as_bytes())
        .expect("valid key");
    let alice = RecordId::new(b"alice", &key);
    let bob = RecordId::new(b"bob", &key);
    let token = acquire(&store, &alice, HOUR).await;
    store
        .complete(&alice, token, Bytes::from_static(b"alice's"), HOUR)
        .await
        .unwrap();
    let bobs = acquire(&store, &bob, HOUR).await;
    store
        .complete(&bob, bobs, Bytes::from_static(b"bob's"), HOUR)
        .await
        .unwrap();
    for (id, expected) in [(alice, &b"alice's"[..]), (bob, &b"bob's"[..])] {
        match store.claim(&id, &fingerprint(1), HOUR).await.unwrap() {
            Claim::Completed(record) => assert_eq!(&record.response[..], expected),
            other => panic!("expected Completed, got {other:?}"),
        }
    }
}

/// Tokens handed out for one id never repeat.
pub async fn tokens_are_never_reused<S: IdempotencyStore>(store: S) {
    let id = unique_id("tokens");
    let mut seen = HashSet::new();
    for _ in 0..50 {
        let token = acquire(&store, &id, HOUR).await;
        assert!(seen.insert(token), "token {token:?} handed out twice");
        store.release(&id, token).await.unwrap();
    }
}

/// A reachable store says so.
pub async fn check_reports_reachable<S: IdempotencyStore>(store: S) {
    store.check().await.unwrap();
}
