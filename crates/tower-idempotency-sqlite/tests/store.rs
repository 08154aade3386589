//! What the conformance suite cannot see: the file (records outlive the pool, pools share
//! them), SQLite's write lock, the table format, and the error kinds.

mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use sqlx::SqlitePool;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_sqlite::SqliteStore;

const HOUR: Duration = Duration::from_secs(3600);

fn fingerprint(n: u8) -> Fingerprint {
    Fingerprint::from_bytes([n; Fingerprint::LEN])
}

async fn migrated(pool: SqlitePool) -> SqliteStore {
    let store = SqliteStore::new(pool);
    store.migrate().await.expect("migrate");
    store
}

async fn acquire(store: &SqliteStore, id: &RecordId) -> FencingToken {
    match store.claim(id, &fingerprint(1), HOUR).await.expect("claim") {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

fn completed(response: &'static [u8]) -> Claim {
    Claim::Completed(CompletedRecord {
        fingerprint: fingerprint(1),
        response: Bytes::from_static(response),
    })
}

/// Runs `sql` (with `id` as `?1`) on the store's table, named `t` in `sql`.
async fn run_sql(store: &SqliteStore, sql: &str, id: &RecordId) -> u64 {
    let sql = sql.replace(" t ", &format!(" \"{}\" ", store.table()));
    sqlx::query(&sql)
        .bind(&id.as_bytes()[..])
        .execute(store.pool())
        .await
        .expect("run SQL on the table")
        .rows_affected()
}

#[tokio::test]
async fn records_and_tokens_survive_reopening_the_file() {
    let (pool, db) = common::temp_pool().await;
    let store = migrated(pool).await;
    let (done, running) = (unique_id("done"), unique_id("running"));
    let token = acquire(&store, &done).await;
    store
        .complete(&done, token, Bytes::from_static(b"kept"), HOUR)
        .await
        .unwrap();
    let running_token = acquire(&store, &running).await;
    store.pool().close().await;

    let store = SqliteStore::connect(&db.path).await.expect("reopen");
    store.migrate().await.expect("migrating again is a no-op");
    let claim = store.claim(&done, &fingerprint(2), HOUR).await.unwrap();
    assert_eq!(claim, completed(b"kept"));
    let claim = store.claim(&running, &fingerprint(2), HOUR).await.unwrap();
    assert_eq!(
        claim,
        Claim::InFlight {
            fingerprint: fingerprint(1)
        }
    );
    store
        .complete(&running, running_token, Bytes::from_static(b"late"), HOUR)
        .await
        .expect("the owner's token still completes its record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_pools_on_one_file_agree() {
    let (pool, db) = common::temp_pool().await;
    let first = Arc::new(migrated(pool).await);
    let second = Arc::new(SqliteStore::connect(&db.path).await.expect("second pool"));
    let id = unique_id("shared");
    let barrier = Arc::new(tokio::sync::Barrier::new(64));
    let tasks: Vec<_> = (0..64)
        .map(|i| {
            let store = Arc::clone(if i % 2 == 0 { &first } else { &second });
            let barrier = Arc::clone(&barrier);
            tokio::spawn(async move {
                barrier.wait().await;
                store.claim(&id, &fingerprint(1), HOUR).await.unwrap()
            })
        })
        .collect();
    let mut tokens = Vec::new();
    for task in tasks {
        if let Claim::Acquired(token) = task.await.unwrap() {
            tokens.push(token);
        }
    }
    assert_eq!(
        tokens.len(),
        1,
        "exactly one claimer acquires, whatever its pool"
    );

    // Whichever pool acquired, the token is the record's, not the pool's.
    second.renew(&id, tokens[0], HOUR).await.unwrap();
    first
        .complete(&id, tokens[0], Bytes::from_static(b"one"), HOUR)
        .await
        .unwrap();
    assert_eq!(
        second.claim(&id, &fingerprint(1), HOUR).await.unwrap(),
        completed(b"one")
    );
}

#[tokio::test]
async fn a_held_write_lock_is_unavailable_not_lease_lost() {
    let (pool, db) = common::temp_pool().await;
    let holder = migrated(pool).await;
    let options = tower_idempotency_sqlite::connect_options(&db.path)
        .busy_timeout(Duration::from_millis(200));
    let pool = tower_idempotency_sqlite::pool_options()
        .connect_with(options)
        .await
        .unwrap();
    let store = SqliteStore::new(pool);
    let running = unique_id("running");
    let token = acquire(&store, &running).await;

    let lock = holder.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    let started = Instant::now();
    let error = store
        .claim(&unique_id("new"), &fingerprint(1), HOUR)
        .await
        .expect_err("a claim needs the write lock");
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    let waited = started.elapsed();
    assert!(
        (Duration::from_millis(150)..Duration::from_secs(4)).contains(&waited),
        "waited {waited:?}, about busy_timeout"
    );
    let error = store
        .complete(&running, token, Bytes::from_static(b"x"), HOUR)
        .await
        .expect_err("a completion needs the write lock");
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    let error = store.release(&running, token).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    // Readers never wait under WAL: duplicates are answered while the lock is held.
    let claim = store.claim(&running, &fingerprint(2), HOUR).await.unwrap();
    assert_eq!(
        claim,
        Claim::InFlight {
            fingerprint: fingerprint(1)
        }
    );

    lock.rollback().await.unwrap();
    store
        .complete(&running, token, Bytes::from_static(b"x"), HOUR)
        .await
        .expect("the owner completes once the lock is free");
}

#[tokio::test]
async fn table_names_are_validated_and_tables_kept_apart() {
    let (pool, db) = common::temp_pool().await;
    for bad in [
        "",
        "1st",
        "has space",
        "quo\"te",
        "a-b",
        "x;DROP TABLE y",
        &"a".repeat(65),
    ] {
        let built = SqliteStore::builder().table(bad).build(pool.clone());
        assert_eq!(
            built.unwrap_err().kind(),
            StoreErrorKind::Backend,
            "{bad:?}"
        );
        let connected = SqliteStore::builder().table(bad).connect(&db.path).await;
        assert_eq!(
            connected.unwrap_err().kind(),
            StoreErrorKind::Backend,
            "{bad:?}"
        );
    }

    let default = migrated(pool.clone()).await;
    let custom = SqliteStore::builder()
        .table("Custom_2")
        .build(pool)
        .unwrap();
    assert_eq!(
        (default.table(), custom.table()),
        ("idempotency_records", "Custom_2")
    );
    custom.migrate().await.unwrap();
    let id = unique_id("two-tables");
    let token = acquire(&custom, &id).await;
    acquire(&default, &id).await;
    custom
        .complete(&id, token, Bytes::from_static(b"custom"), HOUR)
        .await
        .unwrap();
    let claim = default.claim(&id, &fingerprint(1), HOUR).await.unwrap();
    assert_eq!(
        claim,
        Claim::InFlight {
            fingerprint: fingerprint(1)
        }
    );
    assert_eq!(
        custom.claim(&id, &fingerprint(1), HOUR).await.unwrap(),
        completed(b"custom")
    );
}

/// `expires_at` is in milliseconds since the epoch (the format transactional mode shares):
/// a row the clock has passed is gone, whoever wrote it.
#[tokio::test]
async fn expiry_is_the_expires_at_column_in_epoch_milliseconds() {
    let (pool, _db) = common::temp_pool().await;
    let store = migrated(pool).await;
    let id = unique_id("clock");
    let stale = acquire(&store, &id).await;

    let sql = format!("SELECT expires_at FROM \"{}\" WHERE id = ?1", store.table());
    let expires_at: i64 = sqlx::query_scalar(&sql)
        .bind(&id.as_bytes()[..])
        .fetch_one(store.pool())
        .await
        .unwrap();
    let now_ms = i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap();
    let lease_ms = expires_at - now_ms;
    assert!(
        (3_595_000..=3_605_000).contains(&lease_ms),
        "lease of {lease_ms} ms"
    );

    assert_eq!(
        run_sql(&store, "UPDATE t SET expires_at = 1 WHERE id = ?1", &id).await,
        1
    );
    let current = acquire(&store, &id).await;
    assert_ne!(current, stale);
    let error = store.renew(&id, stale, HOUR).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::LeaseLost);
    store.renew(&id, current, HOUR).await.unwrap();
}

#[tokio::test]
async fn delete_expired_deletes_only_expired_records_in_batches() {
    let (pool, _db) = common::temp_pool().await;
    let store = migrated(pool).await;
    let live = unique_id("live");
    acquire(&store, &live).await;
    for label in ["expired-1", "expired-2", "expired-3"] {
        let id = unique_id(label);
        let token = acquire(&store, &id).await;
        store
            .complete(&id, token, Bytes::from_static(b"old"), HOUR)
            .await
            .unwrap();
        run_sql(&store, "UPDATE t SET expires_at = 1 WHERE id = ?1", &id).await;
    }

    assert_eq!(store.delete_expired(2).await.unwrap(), 2);
    assert_eq!(store.delete_expired(2).await.unwrap(), 1);
    assert_eq!(store.delete_expired(2).await.unwrap(), 0);
    let claim = store.claim(&live, &fingerprint(2), HOUR).await.unwrap();
    assert_eq!(
        claim,
        Claim::InFlight {
            fingerprint: fingerprint(1)
        }
    );
}

#[tokio::test]
async fn a_fingerprint_of_the_wrong_size_is_corrupt() {
    let (pool, _db) = common::temp_pool().await;
    let store = migrated(pool).await;
    let id = unique_id("corrupt");
    acquire(&store, &id).await;
    run_sql(
        &store,
        "UPDATE t SET fingerprint = x'00' WHERE id = ?1",
        &id,
    )
    .await;
    let error = store.claim(&id, &fingerprint(1), HOUR).await.unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Corrupt, "{error}");
}

#[tokio::test]
async fn errors_are_unavailable_only_when_a_retry_may_succeed() {
    let (pool, db) = common::temp_pool().await;
    let unmigrated = SqliteStore::new(pool);
    let error = unmigrated
        .claim(&unique_id("no-table"), &fingerprint(1), HOUR)
        .await
        .unwrap_err();
    assert_eq!(
        error.kind(),
        StoreErrorKind::Backend,
        "a missing table: {error}"
    );

    // A directory that is a file: SQLITE_CANTOPEN.
    let error = SqliteStore::connect(db.path.join("below-a-file.db"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");

    unmigrated.check().await.unwrap();
    unmigrated.pool().close().await;
    let error = unmigrated.check().await.unwrap_err();
    assert_eq!(
        error.kind(),
        StoreErrorKind::Unavailable,
        "a closed pool: {error}"
    );
}
