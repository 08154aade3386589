use std::sync::Arc;

use super::*;

fn id(n: u32) -> RecordId {
    let key = crate::IdempotencyKey::parse(format!("key-{n}").as_bytes()).unwrap();
    RecordId::new(b"scope", &key)
}

/// Ids (from `n` on) whose records live in shard `index` of `store`, or in any other.
fn ids_where(
    store: &MemoryStore,
    mut keep: impl FnMut(usize) -> bool,
) -> impl Iterator<Item = RecordId> {
    (0..).map(id).filter(move |id| keep(store.index(id)))
}

const FP: Fingerprint = Fingerprint::from_bytes([7; 16]);
const HOUR: Duration = Duration::from_secs(3600);

async fn acquire(store: &MemoryStore, id: &RecordId) -> FencingToken {
    acquire_for(store, id, HOUR).await
}

async fn acquire_for(store: &MemoryStore, id: &RecordId, lease: Duration) -> FencingToken {
    match store.claim(id, &FP, lease).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

async fn store_response(store: &MemoryStore, id: &RecordId, len: usize) {
    let token = acquire(store, id).await;
    store
        .complete(id, token, Bytes::from(vec![1; len]), HOUR)
        .await
        .unwrap();
}

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

/// Claims, renewals, completions of every size and releases from many threads, into a budget
/// that is always full: the books balance afterwards and no reserved completion ever fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_traffic_keeps_the_books() {
    let store = Arc::new(
        MemoryStore::builder()
            .max_bytes(2 << 20)
            .max_entries(4096)
            .shards(16)
            .min_retention(Duration::ZERO)
            .build(),
    );
    let sizes = [
        0,
        100,
        RESERVED_RECORD_BYTES,
        5000,
        100 << 10,
        700 << 10,
        3 << 20,
    ];
    let tasks: Vec<_> = (0..8u32)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in 0..300u32 {
                    // Ids repeat across tasks, so claims also meet claims in flight.
                    let id = id((task * 7 + i) % 500);
                    let token = match store.claim(&id, &FP, HOUR).await {
                        Ok(Claim::Acquired(token)) => token,
                        Ok(_) => continue,
                        Err(e) => {
                            assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                            continue;
                        }
                    };
                    store.renew(&id, token, HOUR).await.unwrap();
                    if i % 5 == 0 {
                        store.release(&id, token).await.unwrap();
                        continue;
                    }
                    let len = sizes[(task + i) as usize % sizes.len()];
                    if let Err(e) = store
                        .complete(&id, token, Bytes::from(vec![1; len]), HOUR)
                        .await
                    {
                        assert_eq!(e.kind(), StoreErrorKind::CapacityExhausted);
                        store
                            .complete(
                                &id,
                                token,
                                Bytes::from(vec![1; RESERVED_RECORD_BYTES]),
                                HOUR,
                            )
                            .await
                            .expect("a reserved completion never fails");
                    }
                    assert!(store.bytes() <= 2 << 20);
                    if i % 16 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("no deadlock")
            .unwrap();
    }
    store.check_books();
}

/// The slot of `id`'s record in the store's only shard.
fn slot_of(store: &MemoryStore, id: &RecordId) -> Option<u32> {
    store.lock(store.index(id)).slot_of(id)
}

#[tokio::test(start_paused = true)]
async fn a_reused_slot_belongs_to_its_new_record_alone() {
    let store = MemoryStore::builder().shards(1).build();
    let (old, new) = (id(0), id(1));
    // The old record leaves a lease item (deadline 1 s) behind when it completes, and a TTL
    // item (500 ms) that reclaims it.
    let token = acquire_for(&store, &old, Duration::from_secs(1)).await;
    store
        .complete(
            &old,
            token,
            Bytes::from_static(b"old"),
            Duration::from_millis(500),
        )
        .await
        .unwrap();
    let slot = slot_of(&store, &old).unwrap();
    tokio::time::advance(Duration::from_millis(600)).await;
    acquire(&store, &new).await;
    assert_eq!(
        slot_of(&store, &new),
        Some(slot),
        "the new claim reuses the slot"
    );
    assert_eq!(slot_of(&store, &old), None);
    store.check_books();
    // The old record's lease item comes up: stale, it must not expire the new claim.
    tokio::time::advance(Duration::from_millis(500)).await;
    acquire(&store, &id(2)).await;
    assert!(matches!(
        store.claim(&new, &FP, HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    // Nor does the old record come back through the slot.
    let token = acquire(&store, &old).await;
    store.release(&old, token).await.unwrap();
    store.check_books();
    // The same for a reused slot that completes: it replays its own response.
    let token = acquire_for(&store, &id(3), Duration::from_millis(10)).await;
    let slot = slot_of(&store, &id(3)).unwrap();
    store.release(&id(3), token).await.unwrap();
    let token = acquire(&store, &id(4)).await;
    assert_eq!(slot_of(&store, &id(4)), Some(slot));
    store
        .complete(&id(4), token, Bytes::from_static(b"four"), HOUR)
        .await
        .unwrap();
    tokio::time::advance(Duration::from_millis(20)).await;
    acquire(&store, &id(5)).await;
    match store.claim(&id(4), &FP, HOUR).await.unwrap() {
        Claim::Completed(record) => assert_eq!(&record.response[..], b"four"),
        other => panic!("expected Completed, got {other:?}"),
    }
    assert!(matches!(
        store.claim(&id(3), &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
    store.check_books();
}

#[tokio::test]
async fn completed_records_leave_no_lease_items_behind() {
    let store = MemoryStore::builder().shards(1).build();
    // Claims that stay in flight throughout, and many that complete (with leases that never
    // run out, so no stale item is reclaimed by its deadline).
    for n in 0..100 {
        acquire(&store, &id(n)).await;
    }
    for n in 100..5100 {
        store_response(&store, &id(n), 10).await;
        let items = lock(&store.shards[0]).lease_items();
        assert!(
            items <= 2 * 100 + 64,
            "{items} lease items after {n} records"
        );
    }
    store.check_books();
    // Renewals leave stale items too.
    let token = acquire(&store, &id(9999)).await;
    for n in 0..1000 {
        store
            .renew(&id(9999), token, HOUR + Duration::from_millis(n))
            .await
            .unwrap();
    }
    assert!(lock(&store.shards[0]).lease_items() <= 2 * 101 + 64);
    store.check_books();
}

#[tokio::test(start_paused = true)]
async fn records_beyond_one_page_keep_their_slots() {
    let store = MemoryStore::builder().shards(1).build();
    let records = 3 * slab::PAGE + 10;
    for n in 0..records as u32 {
        let token = acquire(&store, &id(n)).await;
        let response = Bytes::from(n.to_le_bytes().repeat(3));
        let ttl = if n % 2 == 0 {
            HOUR
        } else {
            Duration::from_secs(1)
        };
        store.complete(&id(n), token, response, ttl).await.unwrap();
    }
    assert_eq!(lock(&store.shards[0]).slots(), records);
    store.check_books();
    for n in 0..records as u32 {
        match store.claim(&id(n), &FP, HOUR).await.unwrap() {
            Claim::Completed(record) => assert_eq!(record.response, n.to_le_bytes().repeat(3)),
            other => panic!("expected Completed for {n}, got {other:?}"),
        }
    }
    // Half of them expire; new records take their slots instead of new ones.
    tokio::time::advance(Duration::from_secs(2)).await;
    for n in records as u32..(records + records / 2) as u32 {
        store_response(&store, &id(n), 4).await;
    }
    assert_eq!(store.len(), records);
    assert_eq!(lock(&store.shards[0]).slots(), records);
    store.check_books();
    for n in (0..records as u32).step_by(2) {
        match store.claim(&id(n), &FP, HOUR).await.unwrap() {
            Claim::Completed(record) => assert_eq!(record.response, n.to_le_bytes().repeat(3)),
            other => panic!("expected Completed for {n}, got {other:?}"),
        }
    }
}

#[cfg(target_pointer_width = "64")]
#[test]
fn a_slot_takes_80_bytes() {
    // Id (32), fingerprint (16), deadline, token or completion time, response (16): the
    // module docs and `RECORD_OVERHEAD` count on it.
    assert_eq!(std::mem::size_of::<slab::Slot>(), 80);
}

#[test]
fn a_heap_item_takes_12_bytes_and_orders_as_its_deadline_and_slot() {
    use std::cmp::Reverse;

    use shard::Item;

    assert_eq!(std::mem::size_of::<Reverse<Item>>(), 12);
    let pairs = [
        (0, 0),
        (0, 1),
        (1, 0),
        (u64::from(u32::MAX), 7),
        (u64::from(u32::MAX) + 1, 0),
        (u64::MAX, u32::MAX),
    ];
    for a in pairs {
        assert_eq!(Item::new(a.0, a.1).0.get(), a);
        for b in pairs {
            assert_eq!(Item::new(a.0, a.1).cmp(&Item::new(b.0, b.1)), b.cmp(&a));
        }
    }
}
