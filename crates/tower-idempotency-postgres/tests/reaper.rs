//! Expired records are deleted in bounded batches, by hand and by the background reaper, and
//! live records never are. Needs a real PostgreSQL server (see `tests/common`).

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, RecordId},
    testing::unique_id,
};
use tower_idempotency_postgres::PostgresStore;

const HOUR: Duration = Duration::from_secs(3600);
const SHORT: Duration = Duration::from_millis(500);
const EXPIRED: usize = 2_500;
const LIVE: usize = 20;
const FP: Fingerprint = Fingerprint::from_bytes([3; Fingerprint::LEN]);

async fn acquire(store: &PostgresStore, id: &RecordId, lease: Duration) -> Claim {
    let claim = store.claim(id, &FP, lease).await.unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    claim
}

async fn complete(store: &PostgresStore, id: &RecordId, claim: Claim, ttl: Duration) {
    let Claim::Acquired(token) = claim else {
        unreachable!()
    };
    store
        .complete(id, token, Bytes::from_static(b"response"), ttl)
        .await
        .unwrap();
}

/// `LIVE` completed and `LIVE` in-flight records that stay live for an hour.
struct Live {
    completed: Vec<RecordId>,
    in_flight: Vec<RecordId>,
}

async fn insert_live(store: &PostgresStore) -> Live {
    let mut live = Live {
        completed: Vec::new(),
        in_flight: Vec::new(),
    };
    for _ in 0..LIVE {
        let id = unique_id("live-completed");
        let claim = acquire(store, &id, HOUR).await;
        complete(store, &id, claim, HOUR).await;
        live.completed.push(id);
        let id = unique_id("live-in-flight");
        acquire(store, &id, HOUR).await;
        live.in_flight.push(id);
    }
    live
}

/// `n` records that expire after [`SHORT`]: half completed with a short TTL, half abandoned
/// in flight with a short lease. Returns once all of them have expired.
async fn insert_expiring(store: &PostgresStore, n: usize) {
    const TASKS: usize = 10;
    let store = Arc::new(store.clone());
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                for i in (task..n).step_by(TASKS) {
                    let id = unique_id("expiring");
                    if i % 2 == 0 {
                        let claim = acquire(&store, &id, HOUR).await;
                        complete(&store, &id, claim, SHORT).await;
                    } else {
                        acquire(&store, &id, SHORT).await;
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    tokio::time::sleep(SHORT + Duration::from_millis(300)).await;
}

async fn assert_live(store: &PostgresStore, live: &Live) {
    for id in &live.completed {
        let claim = store.claim(id, &FP, HOUR).await.unwrap();
        assert!(matches!(claim, Claim::Completed(_)), "{claim:?}");
    }
    for id in &live.in_flight {
        let claim = store.claim(id, &FP, HOUR).await.unwrap();
        assert!(matches!(claim, Claim::InFlight { .. }), "{claim:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_expired_deletes_bounded_batches_and_spares_live_records() {
    let store = common::fresh_store().await;
    let live = insert_live(&store).await;
    insert_expiring(&store, EXPIRED).await;
    assert_eq!(
        common::count_rows(&store).await,
        (EXPIRED + 2 * LIVE) as i64
    );

    let mut batches = Vec::new();
    loop {
        let deleted = store.delete_expired(1_000).await.unwrap();
        batches.push(deleted);
        if deleted < 1_000 {
            break;
        }
    }
    assert_eq!(batches, [1_000, 1_000, 500]);
    assert_eq!(store.delete_expired(1_000).await.unwrap(), 0);
    assert_eq!(store.delete_expired(0).await.unwrap(), 0);
    assert_eq!(common::count_rows(&store).await, (2 * LIVE) as i64);
    assert_live(&store, &live).await;
    common::drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawned_reaper_empties_the_table_and_stops_when_dropped() {
    let store = common::fresh_store().await;
    let live = insert_live(&store).await;
    insert_expiring(&store, EXPIRED).await;

    let reaper = store.spawn_reaper(Duration::from_millis(50), 1_000);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let rows = common::count_rows(&store).await;
        if rows == (2 * LIVE) as i64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reaper left {rows} rows"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!reaper.is_finished());
    assert_live(&store, &live).await;

    // Records that expire while the reaper runs go too.
    insert_expiring(&store, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::count_rows(&store).await, (2 * LIVE) as i64);

    // Once the handle is dropped, nothing is deleted any more.
    drop(reaper);
    insert_expiring(&store, 10).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(common::count_rows(&store).await, (2 * LIVE + 10) as i64);
    assert_eq!(store.delete_expired(1_000).await.unwrap(), 10);
    assert_live(&store, &live).await;
    common::drop_table(&store).await;
}
