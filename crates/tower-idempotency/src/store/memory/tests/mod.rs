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

mod budget;
mod slots;

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
