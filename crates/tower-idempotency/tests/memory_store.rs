//! The conformance suite against the in-memory store, then the memory store's own promises:
//! every acquired claim can be completed (guarantee 7), its byte budget is one budget however
//! many shards it has, and it keeps time by tokio's clock.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint, IdempotencyKey,
    store::{
        Claim, FencingToken, IdempotencyStore, RESERVED_RECORD_BYTES, RecordId, StoreErrorKind,
        memory::MemoryStore,
    },
};

tower_idempotency::store_conformance_tests!(async { MemoryStore::default() });

const FP: Fingerprint = Fingerprint::from_bytes([7; Fingerprint::LEN]);
const HOUR: Duration = Duration::from_secs(3600);
const KIB: usize = 1024;
const MIB: usize = 1024 * KIB;

fn id(n: usize) -> RecordId {
    let key = IdempotencyKey::parse(format!("key-{n}").as_bytes()).unwrap();
    RecordId::new(b"memory-store", &key)
}

fn body(len: usize, seed: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (i.wrapping_mul(31).wrapping_add(seed)) as u8)
            .collect::<Vec<_>>(),
    )
}

/// The fixed charge per record: what the budget holds beyond the largest response.
fn overhead(store: &MemoryStore, max_bytes: usize) -> usize {
    max_bytes
        - store
            .max_record_bytes()
            .expect("the memory store has a byte limit")
}

async fn acquire(store: &MemoryStore, id: &RecordId) -> FencingToken {
    match store.claim(id, &FP, HOUR).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn assert_replays(store: &MemoryStore, id: &RecordId, expected: &Bytes) {
    match store.claim(id, &FP, HOUR).await.unwrap() {
        Claim::Completed(record) => assert!(record.response == *expected, "bytes differ"),
        other => panic!("expected Completed, got {other:?}"),
    }
}

async fn assert_acquires(store: &MemoryStore, id: &RecordId) {
    assert!(
        matches!(store.claim(id, &FP, HOUR).await, Ok(Claim::Acquired(_))),
        "expected Acquired"
    );
}

/// Claims fresh ids (from `first`) and leaves them in flight until the store refuses one.
async fn claim_until_full(store: &MemoryStore, first: usize) -> Vec<(RecordId, FencingToken)> {
    let mut claims = Vec::new();
    for n in first.. {
        match store.claim(&id(n), &FP, HOUR).await {
            Ok(Claim::Acquired(token)) => claims.push((id(n), token)),
            Ok(other) => panic!("expected Acquired, got {other:?}"),
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                return claims;
            }
        }
        assert!(n < first + 100_000, "the store never filled up");
    }
    unreachable!()
}

// --- The byte budget is one budget, however many shards ------------------------------------

#[tokio::test]
async fn a_16_mib_store_with_64_shards_holds_300_kib_responses() {
    let store = MemoryStore::builder()
        .max_bytes(16 * MIB)
        .shards(64)
        .build();
    assert!(format!("{store:?}").contains("shards: 64"), "{store:?}");
    let responses: Vec<_> = (0..40).map(|n| (id(n), body(300 * KIB, n))).collect();
    for (id, response) in &responses {
        let token = acquire(&store, id).await;
        store
            .complete(id, token, response.clone(), HOUR)
            .await
            .unwrap();
    }
    for (id, response) in &responses {
        assert_replays(&store, id, response).await;
    }
    assert!(store.bytes() <= 16 * MIB);
}

#[tokio::test]
async fn a_1_mib_store_with_many_shards_holds_a_900_kib_response() {
    let store = MemoryStore::builder().max_bytes(MIB).shards(64).build();
    assert!(format!("{store:?}").contains("shards: 64"), "{store:?}");
    let response = body(900 * KIB, 1);
    let token = acquire(&store, &id(0)).await;
    store
        .complete(&id(0), token, response.clone(), HOUR)
        .await
        .unwrap();
    assert_replays(&store, &id(0), &response).await;
}

#[tokio::test]
async fn a_large_completion_evicts_old_records_of_other_shards() {
    let store = MemoryStore::builder()
        .max_bytes(MIB)
        .shards(64)
        .min_retention(Duration::ZERO)
        .build();
    // Nine records of 100 KiB, spread over the shards, fill the budget but for ~120 KiB.
    for n in 0..9 {
        let token = acquire(&store, &id(n)).await;
        store
            .complete(&id(n), token, body(100 * KIB, n), HOUR)
            .await
            .unwrap();
    }
    assert_eq!(store.len(), 9);
    let response = body(900 * KIB, 99);
    let token = acquire(&store, &id(99)).await;
    store
        .complete(&id(99), token, response.clone(), HOUR)
        .await
        .unwrap();
    assert_replays(&store, &id(99), &response).await;
    assert!(store.bytes() <= MIB);
    assert!(store.len() < 10, "old records were evicted to make room");
}

#[tokio::test]
async fn max_record_bytes_is_the_largest_response_kept() {
    let store = MemoryStore::builder().max_bytes(MIB).build();
    let largest = store.max_record_bytes().unwrap();
    assert!(largest < MIB && largest > MIB - KIB, "{largest}");
    let token = acquire(&store, &id(0)).await;
    let err = store
        .complete(&id(0), token, body(largest + 1, 0), HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    store
        .complete(&id(0), token, body(largest, 0), HOUR)
        .await
        .unwrap();
    assert_eq!(store.bytes(), MIB, "the whole budget is used");
}

// --- Guarantee 7: an acquired claim can always be completed --------------------------------

#[tokio::test]
async fn claims_are_refused_before_a_full_store_could_not_complete_them() {
    // Fresh records are never evicted: once the budget is full, claims must be refused
    // rather than acquired and then fail to complete.
    let store = MemoryStore::builder().max_bytes(64 * KIB).build();
    let mut completed = 0;
    for n in 0.. {
        assert!(n < 10_000, "the store never filled up");
        match store.claim(&id(n), &FP, HOUR).await {
            Ok(Claim::Acquired(token)) => {
                store
                    .complete(&id(n), token, body(RESERVED_RECORD_BYTES, n), HOUR)
                    .await
                    .expect("an acquired claim completes with a reserved-size record");
                completed += 1;
            }
            Ok(other) => panic!("expected Acquired, got {other:?}"),
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                break;
            }
        }
        assert!(store.bytes() <= 64 * KIB);
    }
    let per_record = overhead(&store, 64 * KIB) + RESERVED_RECORD_BYTES;
    assert_eq!(
        completed,
        64 * KIB / per_record,
        "the whole budget was used"
    );
    assert_replays(&store, &id(0), &body(RESERVED_RECORD_BYTES, 0)).await;
}

#[tokio::test]
async fn every_claim_in_flight_can_complete_with_a_reserved_record() {
    let store = MemoryStore::builder().max_bytes(64 * KIB).build();
    let claims = claim_until_full(&store, 0).await;
    assert!(!claims.is_empty());
    assert!(store.bytes() <= 64 * KIB);
    // The last claim's full response does not fit a store full of claims in flight...
    let (last, last_token) = claims[claims.len() - 1];
    let err = store
        .complete(&last, last_token, body(16 * KIB, 0), HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    // ...but every claim can still record that it ran.
    for (n, (id, token)) in claims.iter().enumerate() {
        store
            .complete(id, *token, body(RESERVED_RECORD_BYTES, n), HOUR)
            .await
            .unwrap();
    }
    assert_eq!(store.len(), claims.len());
    assert!(store.bytes() <= 64 * KIB);
    for (n, (id, _)) in claims.iter().enumerate() {
        assert_replays(&store, id, &body(RESERVED_RECORD_BYTES, n)).await;
    }
}

#[tokio::test]
async fn a_small_completion_gives_the_rest_of_the_reservation_back() {
    let store = MemoryStore::builder().max_bytes(64 * KIB).build();
    let overhead = overhead(&store, 64 * KIB);
    let token = acquire(&store, &id(0)).await;
    assert_eq!(store.bytes(), overhead + RESERVED_RECORD_BYTES);
    store
        .complete(&id(0), token, body(10, 0), HOUR)
        .await
        .unwrap();
    assert_eq!(store.bytes(), overhead + 10);
}

#[tokio::test]
async fn releasing_a_claim_gives_its_reservation_back() {
    let store = MemoryStore::builder().max_bytes(64 * KIB).build();
    let claims = claim_until_full(&store, 0).await;
    let (id0, token) = claims[0];
    store.release(&id0, token).await.unwrap();
    assert_acquires(&store, &id(1_000_000)).await;
    let err = store.claim(&id(1_000_001), &FP, HOUR).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
}

#[tokio::test]
async fn evicting_old_records_makes_room_for_claims() {
    let store = MemoryStore::builder()
        .max_bytes(64 * KIB)
        .min_retention(Duration::ZERO)
        .build();
    let claims = claim_until_full(&store, 0).await;
    for (n, (id, token)) in claims.iter().enumerate() {
        store
            .complete(id, *token, body(RESERVED_RECORD_BYTES, n), HOUR)
            .await
            .unwrap();
    }
    // The store is full of completed records past their (zero) retention: new claims evict
    // them, wherever their shard, and can still complete.
    for n in 0..claims.len() {
        let id = id(1000 + n);
        let token = acquire(&store, &id).await;
        store
            .complete(&id, token, body(RESERVED_RECORD_BYTES, n), HOUR)
            .await
            .unwrap();
        assert!(store.bytes() <= 64 * KIB);
    }
}

// --- Tokio's clock -------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn leases_and_ttls_follow_tokio_paused_clock() {
    let store = MemoryStore::default();
    let token = acquire(&store, &id(0)).await;
    store
        .renew(&id(0), token, Duration::from_secs(10))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(9)).await;
    assert!(matches!(
        store.claim(&id(0), &FP, HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    tokio::time::advance(Duration::from_secs(2)).await;
    let token = acquire(&store, &id(0)).await;
    store
        .complete(&id(0), token, body(5, 0), Duration::from_secs(60))
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(59)).await;
    assert_replays(&store, &id(0), &body(5, 0)).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_acquires(&store, &id(0)).await;
}

#[tokio::test(start_paused = true)]
async fn expired_claims_give_their_reservation_back() {
    let store = MemoryStore::builder().max_bytes(64 * KIB).build();
    let mut claims = 0;
    for n in 0.. {
        match store.claim(&id(n), &FP, Duration::from_secs(30)).await {
            Ok(Claim::Acquired(_)) => claims += 1,
            Ok(other) => panic!("expected Acquired, got {other:?}"),
            Err(e) => {
                assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                break;
            }
        }
    }
    tokio::time::advance(Duration::from_secs(31)).await;
    for n in 0..claims {
        let id = id(10_000 + n);
        let token = acquire(&store, &id).await;
        store
            .complete(&id, token, body(RESERVED_RECORD_BYTES, n), HOUR)
            .await
            .unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn min_retention_follows_tokio_paused_clock() {
    let store = MemoryStore::builder()
        .max_bytes(64 * KIB)
        .min_retention(Duration::from_secs(60))
        .build();
    let claims = claim_until_full(&store, 0).await;
    for (n, (id, token)) in claims.iter().enumerate() {
        store
            .complete(id, *token, body(RESERVED_RECORD_BYTES, n), HOUR)
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_secs(59)).await;
    let err = store.claim(&id(1_000_000), &FP, HOUR).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_acquires(&store, &id(1_000_000)).await;
}

// --- Concurrency ---------------------------------------------------------------------------

/// Many tasks complete responses of all sizes into a tight budget: cross-shard eviction
/// never deadlocks, the budget is never exceeded, and a claim that was acquired can always
/// be completed, with its full response or else a reserved-size one. Once with every old
/// record evictable, once with none (the store fills with fresh records and refuses).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_large_completions_never_deadlock_or_break_the_budget() {
    let (full, fallback, refused) = hammer(Duration::ZERO).await;
    assert!(full > 0, "{full} {fallback} {refused}");
    let (full, fallback, refused) = hammer(HOUR).await;
    assert!(
        full > 0 && fallback > 0 && refused > 0,
        "{full} {fallback} {refused}"
    );
}

/// Runs 8 tasks of 150 claims each; returns how many completed in full, how many fell back
/// to a reserved-size record, and how many claims were refused.
async fn hammer(min_retention: Duration) -> (usize, usize, usize) {
    const BUDGET: usize = 4 * MIB;
    let store = Arc::new(
        MemoryStore::builder()
            .max_bytes(BUDGET)
            .shards(64)
            .min_retention(min_retention)
            .build(),
    );
    let sizes = [0, 10, KIB, 40 * KIB, 300 * KIB, 900 * KIB, 2 * MIB];
    let tasks: Vec<_> = (0..8)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let (mut full, mut fallback, mut refused) = (0, 0, 0);
                for i in 0..150 {
                    let n = task * 1_000_000 + i;
                    let id = id(n);
                    let token = match store.claim(&id, &FP, HOUR).await {
                        Ok(Claim::Acquired(token)) => token,
                        Ok(other) => panic!("expected Acquired, got {other:?}"),
                        Err(e) => {
                            assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                            refused += 1;
                            continue;
                        }
                    };
                    let size = sizes[(n * 7 + i / 3) % sizes.len()];
                    match store.complete(&id, token, body(size, n), HOUR).await {
                        Ok(()) => full += 1,
                        Err(e) => {
                            assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                            store
                                .complete(&id, token, body(RESERVED_RECORD_BYTES, n), HOUR)
                                .await
                                .expect("a reserved-size completion never fails");
                            fallback += 1;
                        }
                    }
                    assert!(store.bytes() <= BUDGET);
                    tokio::task::yield_now().await;
                }
                (full, fallback, refused)
            })
        })
        .collect();
    let run = async {
        let mut totals = (0, 0, 0);
        for task in tasks {
            let (full, fallback, refused) = task.await.unwrap();
            totals = (totals.0 + full, totals.1 + fallback, totals.2 + refused);
        }
        totals
    };
    let totals = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("no deadlock");
    assert!(store.bytes() <= BUDGET);
    totals
}
