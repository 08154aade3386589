//! Slots, heap items and pages under traffic: the books stay exact.

use super::*;

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
