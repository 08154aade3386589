//! The session settings of the store's connections: server-side statement and lock timeouts,
//! visible with `SHOW`, and the isolation level pinned to read committed, so that a database
//! or role defaulting to `serializable` or `repeatable read` does not fail completions.
//! Needs a real PostgreSQL server (see `tests/common`); creates scratch databases.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{
        self, Row,
        postgres::{PgConnectOptions, PgPool, PgPoolOptions},
    },
};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([4; Fingerprint::LEN]);

/// `SHOW name` on a connection of `pool`.
async fn show(pool: &PgPool, name: &str) -> String {
    sqlx::query(&format!("SHOW {name}"))
        .fetch_one(pool)
        .await
        .unwrap_or_else(|e| panic!("SHOW {name}: {e}"))
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_connections_carry_statement_and_lock_timeouts() {
    common::connect(&common::unique_table()).await; // a clear message if there is no server
    let cases = [
        // The defaults: four fifths and half of the 5 s operation timeout.
        (
            PostgresStore::builder(),
            ["4s", "2500ms", "4s", "read committed"],
        ),
        (
            PostgresStore::builder().operation_timeout(Duration::from_secs(2)),
            ["1600ms", "1s", "1600ms", "read committed"],
        ),
        (
            PostgresStore::builder()
                .statement_timeout(Duration::from_millis(1500))
                .lock_timeout(Duration::from_millis(300)),
            ["1500ms", "300ms", "1500ms", "read committed"],
        ),
        // No limits of the store's own: the server's (here: none).
        (
            PostgresStore::builder()
                .statement_timeout(None)
                .lock_timeout(None),
            ["0", "0", "0", "read committed"],
        ),
    ];
    for (builder, expected) in cases {
        let store = builder
            .max_connections(3)
            .connect_with(common::connect_options())
            .await
            .unwrap();
        // Every connection of the pool, not only the first.
        let conns: Vec<_> = open_connections(store.pool(), 3).await;
        drop(conns);
        for _ in 0..3 {
            let found = [
                show(store.pool(), "statement_timeout").await,
                show(store.pool(), "lock_timeout").await,
                show(store.pool(), "idle_in_transaction_session_timeout").await,
                show(store.pool(), "transaction_isolation").await,
            ];
            assert_eq!(found, expected.map(str::to_owned), "{store:?}");
        }
        store.pool().close().await;
    }
}

/// Opens `n` connections of `pool` at once.
async fn open_connections(
    pool: &PgPool,
    n: usize,
) -> Vec<sqlx::pool::PoolConnection<sqlx::Postgres>> {
    let mut conns = Vec::new();
    for _ in 0..n {
        conns.push(pool.acquire().await.unwrap());
    }
    conns
}

/// A statement that runs longer than the statement timeout is cancelled by the server,
/// and reported as `Unavailable`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_cancels_statements_that_outlive_the_statement_timeout() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let app = common::unique_app("statement-timeout");
    let store = PostgresStore::builder()
        .table(direct.table())
        .operation_timeout(Duration::from_secs(10))
        .statement_timeout(Duration::from_millis(300))
        .lock_timeout(None)
        .connect_with(common::connect_options().application_name(&app))
        .await
        .unwrap();
    let id = unique_id("slow");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("claim")
    };
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM \"{}\" WHERE id = $1 FOR UPDATE",
        direct.table()
    ))
    .bind(&id.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    let started = Instant::now();
    let result = store
        .complete(&id, token, Bytes::from_static(b"x"), HOUR)
        .await;
    let took = started.elapsed();
    blocker.rollback().await.unwrap();
    println!("a completion blocked by a row lock was cancelled by the server after {took:?}");
    assert!(
        matches!(&result, Err(e) if e.kind() == StoreErrorKind::Unavailable),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(3), "{took:?}");
    // The record is intact, still in flight under its token.
    store
        .complete(&id, token, Bytes::from_static(b"x"), HOUR)
        .await
        .unwrap();
    common::drop_table(&direct).await;
}

/// A record in flight, a transaction of the test's own (in `pool`, so at the database's
/// default isolation) that updates its row and commits while `store` completes it: under
/// `repeatable read` or `serializable`, that completion fails with a serialization failure
/// (40001) unless it runs in read committed or is run again.
async fn complete_across_a_concurrent_update(
    store: &PostgresStore,
    pool: &PgPool,
    admin: &PgPool,
    app: &str,
) {
    let id = unique_id("contended");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("claim")
    };
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query(&format!(
        "UPDATE \"{}\" SET expires_at = expires_at WHERE id = $1",
        store.table()
    ))
    .bind(&id.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    let completion = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .complete(&id, token, Bytes::from_static(b"stored"), HOUR)
                .await
        }
    });
    common::until_lock_waiters(admin, app, Duration::from_secs(10), |n| n == 1)
        .await
        .expect("the completion waits for the row");
    blocker.commit().await.unwrap();
    completion
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{store:?}: the completion failed: {e:?}"));
    assert!(matches!(
        store.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Completed(r) if &r.response[..] == b"stored"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stricter_default_isolation_does_not_fail_completions() {
    let admin = common::admin_pool().await;
    for level in ["serializable", "repeatable read"] {
        let db =
            common::scratch_database(&admin, &[("default_transaction_isolation", level)]).await;
        let options: PgConnectOptions = common::connect_options().database(&db);
        let (own_app, plain_app) = (common::unique_app("own"), common::unique_app("plain"));
        let plain = PgPoolOptions::new()
            .max_connections(6)
            .connect_with(options.clone().application_name(&plain_app))
            .await
            .unwrap();
        assert_eq!(show(&plain, "transaction_isolation").await, level);

        // The store's own pool pins read committed.
        let table = common::unique_table();
        let own = PostgresStore::builder()
            .table(&table)
            .connect_with(options.clone().application_name(&own_app))
            .await
            .unwrap();
        own.migrate().await.unwrap();
        assert_eq!(
            show(own.pool(), "transaction_isolation").await,
            "read committed"
        );
        complete_across_a_concurrent_update(&own, &plain, &admin, &own_app).await;
        common::contention(&own, &three_ids(), 30).await;

        // A pool of the caller's at the stricter level: the failed statement is run again.
        let from_pool = PostgresStore::from_pool(plain.clone())
            .with_table(&table)
            .unwrap();
        complete_across_a_concurrent_update(&from_pool, &plain, &admin, &plain_app).await;
        common::contention(&from_pool, &three_ids(), 30).await;
        println!("{level}: completions across concurrent updates and contention succeed");

        own.pool().close().await;
        plain.close().await;
        common::drop_database(&admin, &db).await;
    }
}

fn three_ids() -> Vec<tower_idempotency::store::RecordId> {
    (0..3).map(|_| unique_id("busy")).collect()
}
