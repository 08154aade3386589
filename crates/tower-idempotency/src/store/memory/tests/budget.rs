//! The byte budget: what records cost, what is evicted and when.

use super::*;

#[tokio::test(start_paused = true)]
async fn evicts_oldest_completed_records_past_min_retention() {
    let store = MemoryStore::builder()
        .shards(1)
        .max_entries(3)
        .min_retention(Duration::ZERO)
        .build();
    for n in 0..3 {
        store_response(&store, &id(n), 1).await;
        // Deadlines have millisecond resolution: make the completion order unambiguous.
        tokio::time::advance(Duration::from_millis(3)).await;
    }
    acquire(&store, &id(3)).await;
    assert_eq!(store.len(), 3);
    // The oldest completed record went; the newer ones are still replayable.
    assert!(matches!(
        store.claim(&id(0), &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        store.claim(&id(2), &FP, HOUR).await.unwrap(),
        Claim::Completed(_)
    ));
    store.check_books();
}

#[tokio::test]
async fn never_evicts_in_flight_or_fresh_records() {
    let store = MemoryStore::builder().shards(1).max_entries(2).build();
    store_response(&store, &id(0), 5).await;
    acquire(&store, &id(1)).await;
    let err = store.claim(&id(2), &FP, HOUR).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    assert!(matches!(
        store.claim(&id(0), &FP, HOUR).await.unwrap(),
        Claim::Completed(_)
    ));
    assert!(matches!(
        store.claim(&id(1), &FP, HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    store.check_books();
}

#[tokio::test]
async fn byte_budget_counts_responses_and_reservations() {
    // Room for one 900-byte record and one claim beside it.
    let max = RECORD_OVERHEAD + 900 + CLAIM_CHARGE;
    let store = MemoryStore::builder()
        .shards(1)
        .max_bytes(max)
        .min_retention(Duration::ZERO)
        .build();
    store_response(&store, &id(0), 900).await;
    assert_eq!(store.bytes(), RECORD_OVERHEAD + 900);
    let token = acquire(&store, &id(1)).await;
    assert_eq!(store.bytes(), max, "the claim holds its reservation");
    // 2000 bytes do not fit beside the first record: it is evicted.
    store
        .complete(&id(1), token, Bytes::from(vec![1; 2000]), HOUR)
        .await
        .unwrap();
    assert_eq!(store.len(), 1);
    assert_eq!(store.bytes(), RECORD_OVERHEAD + 2000);
    store.check_books();
    // The claim's reservation does not fit beside that record: it is evicted too.
    let token = acquire(&store, &id(2)).await;
    assert_eq!(store.bytes(), CLAIM_CHARGE);
    // A response larger than the whole budget is refused outright; the largest one fits.
    let largest = store.max_record_bytes().unwrap();
    assert_eq!(largest, max - RECORD_OVERHEAD);
    let err = store
        .complete(&id(2), token, Bytes::from(vec![2; largest + 1]), HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    store
        .complete(&id(2), token, Bytes::from(vec![2; largest]), HOUR)
        .await
        .unwrap();
    assert_eq!(store.bytes(), max);
    store.check_books();
}

#[test]
fn a_byte_budget_holds_at_least_one_claim() {
    let store = MemoryStore::builder().max_bytes(10).build();
    assert_eq!(store.budget.max(), CLAIM_CHARGE);
    assert_eq!(store.max_record_bytes(), Some(RESERVED_RECORD_BYTES));
}

#[test]
fn small_budgets_get_fewer_shards() {
    assert_eq!(
        MemoryStore::builder()
            .max_entries(2000)
            .build()
            .shards
            .len(),
        8
    );
    assert_eq!(
        MemoryStore::builder().max_entries(100).build().shards.len(),
        1
    );
    assert_eq!(MemoryStore::default().shards.len(), 64);
}

#[tokio::test(start_paused = true)]
async fn expired_records_are_reclaimed_by_later_traffic() {
    let store = MemoryStore::builder().shards(1).build();
    for n in 0..10 {
        let token = acquire(&store, &id(n)).await;
        store
            .complete(
                &id(n),
                token,
                Bytes::from_static(b"r"),
                Duration::from_millis(1),
            )
            .await
            .unwrap();
    }
    tokio::time::advance(Duration::from_millis(20)).await;
    acquire(&store, &id(100)).await;
    assert_eq!(store.len(), 1, "the ten expired records were reclaimed");
    assert_eq!(store.bytes(), CLAIM_CHARGE);
    store.check_books();
}

#[tokio::test]
async fn one_shard_holds_a_response_of_almost_the_whole_budget() {
    let store = MemoryStore::builder().max_bytes(1 << 20).shards(64).build();
    assert_eq!(store.shards.len(), 64);
    let target = id(0);
    store_response(&store, &target, 900 << 10).await;
    store.check_books();
    let own = store.index(&target);
    for (index, shard) in store.shards.iter().enumerate() {
        let expected = if index == own {
            RECORD_OVERHEAD + (900 << 10)
        } else {
            0
        };
        assert_eq!(lock(shard).bytes(), expected);
    }
}

#[tokio::test]
async fn a_completion_evicts_from_other_shards_when_its_own_has_nothing_to_give() {
    let store = MemoryStore::builder()
        .max_bytes(1 << 20)
        .shards(64)
        .min_retention(Duration::ZERO)
        .build();
    let target = id(0);
    let own = store.index(&target);
    // Eight records of 100 KiB, none in the target's shard.
    let others: Vec<_> = ids_where(&store, |i| i != own).take(8).collect();
    for other in &others {
        store_response(&store, other, 100 << 10).await;
    }
    let token = acquire(&store, &target).await;
    store
        .complete(&target, token, Bytes::from(vec![3; 900 << 10]), HOUR)
        .await
        .unwrap();
    store.check_books();
    assert_eq!(
        lock(&store.shards[own]).bytes(),
        RECORD_OVERHEAD + (900 << 10)
    );
    let kept = store.len() - 1;
    assert!(kept < 8, "records of other shards were evicted");
    assert_eq!(
        store.bytes(),
        RECORD_OVERHEAD + (900 << 10) + kept * (RECORD_OVERHEAD + (100 << 10))
    );
    // Those kept still replay; those evicted can be claimed afresh.
    let mut replayed = 0;
    for other in &others {
        if let Claim::Completed(_) = store.claim(other, &FP, HOUR).await.unwrap() {
            replayed += 1;
        }
    }
    assert_eq!(replayed, kept);
}

#[tokio::test(start_paused = true)]
async fn a_claim_takes_the_room_of_expired_claims_in_other_shards() {
    let store = MemoryStore::builder()
        .max_bytes(16 * CLAIM_CHARGE)
        .shards(64)
        .build();
    let target = id(0);
    let own = store.index(&target);
    for other in ids_where(&store, |i| i != own).take(16) {
        acquire_for(&store, &other, Duration::from_secs(1)).await;
    }
    let err = store.claim(&target, &FP, HOUR).await.unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    tokio::time::advance(Duration::from_secs(2)).await;
    let token = acquire(&store, &target).await;
    store.check_books();
    store
        .complete(
            &target,
            token,
            Bytes::from(vec![1; RESERVED_RECORD_BYTES]),
            HOUR,
        )
        .await
        .unwrap();
    store.check_books();
}

#[tokio::test]
async fn a_refused_completion_keeps_the_reservation() {
    let store = MemoryStore::builder().max_bytes(8 * CLAIM_CHARGE).build();
    let mut claims = Vec::new();
    for n in 0..8 {
        claims.push((id(n), acquire(&store, &id(n)).await));
    }
    let before = store.bytes();
    let (first, token) = claims[0];
    let err = store
        .complete(&first, token, Bytes::from(vec![1; 4096]), HOUR)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    assert_eq!(store.bytes(), before, "nothing was charged or given back");
    store.check_books();
    for (n, (id, token)) in claims.into_iter().enumerate() {
        store
            .complete(&id, token, Bytes::from(vec![1; n * 100]), HOUR)
            .await
            .unwrap();
    }
    store.check_books();
}

#[tokio::test]
async fn a_lost_lease_leaves_the_budget_as_it_was() {
    let store = MemoryStore::builder().max_bytes(4 * CLAIM_CHARGE).build();
    let token = acquire(&store, &id(0)).await;
    let foreign = FencingToken::new(token.get() + 100);
    let before = store.bytes();
    for len in [0, 10, 4000, 1 << 20] {
        let err = store
            .complete(&id(0), foreign, Bytes::from(vec![1; len]), HOUR)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::LeaseLost, "{len} bytes");
        assert_eq!(store.bytes(), before);
    }
    store.release(&id(0), token).await.unwrap();
    assert_eq!(store.bytes(), 0);
    store.check_books();
}

#[tokio::test(start_paused = true)]
async fn renewals_keep_the_books() {
    let store = MemoryStore::builder().shards(1).build();
    let token = acquire_for(&store, &id(0), Duration::from_secs(1)).await;
    for _ in 0..10 {
        store
            .renew(&id(0), token, Duration::from_secs(1))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_millis(500)).await;
        store.check_books();
    }
    // Stale lease items from the renewals never take the live claim with them.
    assert!(matches!(
        store.claim(&id(0), &FP, HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    store
        .complete(&id(0), token, Bytes::from_static(b"done"), HOUR)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_secs(5)).await;
    acquire(&store, &id(1)).await;
    store.check_books();
    assert!(matches!(
        store.claim(&id(0), &FP, HOUR).await.unwrap(),
        Claim::Completed(_)
    ));
}
