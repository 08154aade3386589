//! Error kinds, configuration, and migrations. Needs a real PostgreSQL server (see
//! `tests/common`), except for the unreachable-server checks.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, StoreError, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{self, postgres::PgPoolOptions},
};
use tower_idempotency_testkit::Relay;

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([5; Fingerprint::LEN]);
/// Nothing listens on port 1.
const DEAD_URL: &str = "postgres://postgres@127.0.0.1:1/test";

#[track_caller]
fn assert_kind<T: std::fmt::Debug>(
    what: &str,
    result: Result<T, StoreError>,
    kind: StoreErrorKind,
) {
    match result {
        Err(e) if e.kind() == kind => {
            if kind == StoreErrorKind::Unavailable {
                assert!(
                    std::error::Error::source(&e).is_some(),
                    "{what}: the sqlx error is kept"
                );
            }
        }
        other => panic!("{what}: expected {kind:?}, got {other:?}"),
    }
}

async fn assert_all_unavailable(store: &PostgresStore) {
    let id = unique_id("unavailable");
    let token = FencingToken::new(1);
    let u = StoreErrorKind::Unavailable;
    assert_kind("claim", store.claim(&id, &FP, HOUR).await, u);
    assert_kind("renew", store.renew(&id, token, HOUR).await, u);
    assert_kind(
        "complete",
        store.complete(&id, token, Bytes::new(), HOUR).await,
        u,
    );
    assert_kind("release", store.release(&id, token).await, u);
    assert_kind("check", store.check().await, u);
    assert_kind("migrate", store.migrate().await, u);
    assert_kind("delete_expired", store.delete_expired(10).await, u);
}

#[tokio::test]
async fn connecting_to_a_dead_port_is_unavailable_quickly() {
    let started = Instant::now();
    let result = PostgresStore::builder()
        .acquire_timeout(Duration::from_secs(1))
        .connect(DEAD_URL)
        .await;
    assert_kind("connect", result, StoreErrorKind::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_lazy_store_on_a_dead_port_is_unavailable() {
    let store = PostgresStore::builder()
        .acquire_timeout(Duration::from_millis(300))
        .connect_lazy(DEAD_URL)
        .unwrap();
    let started = Instant::now();
    assert_all_unavailable(&store).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_closed_pool_is_unavailable_and_stops_the_reaper() {
    let store = common::fresh_store().await;
    store.check().await.unwrap();
    let reaper = store.spawn_reaper(Duration::from_millis(10), 100);
    let other = common::connect(store.table()).await;
    store.pool().close().await;
    assert_all_unavailable(&store).await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while !reaper.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the reaper ends when its pool is closed");
    common::drop_table(&other).await;
}

#[tokio::test]
async fn invalid_urls_and_table_names_are_rejected() {
    assert_kind(
        "url",
        PostgresStore::builder().connect_lazy("postgres://127.0.0.1:notaport/db"),
        StoreErrorKind::Backend,
    );
    for table in [
        "",
        "a b",
        "x;drop table y",
        "a.b.c",
        "\"q\"",
        "9t",
        &"t".repeat(52),
    ] {
        assert_kind(
            table,
            PostgresStore::builder().table(table).connect_lazy(DEAD_URL),
            StoreErrorKind::Backend,
        );
        let pool = PgPoolOptions::new().connect_lazy(DEAD_URL).unwrap();
        assert_kind(
            table,
            PostgresStore::from_pool(pool).with_table(table),
            StoreErrorKind::Backend,
        );
    }
    let pool = PgPoolOptions::new().connect_lazy(DEAD_URL).unwrap();
    let store = PostgresStore::from_pool(pool);
    assert_eq!(store.table(), "idempotency_records");
    assert_eq!(
        store.with_table("app.Records").unwrap().table(),
        "app.Records"
    );
}

#[tokio::test]
async fn a_missing_table_is_a_backend_error() {
    let store = common::connect(&common::unique_table()).await;
    assert_kind(
        "claim before migrate",
        store.claim(&unique_id("no-table"), &FP, HOUR).await,
        StoreErrorKind::Backend,
    );
}

#[tokio::test]
async fn undecodable_rows_are_corrupt() {
    let store = common::fresh_store().await;
    let id = unique_id("corrupt");
    sqlx::query(&format!(
        "INSERT INTO \"{}\" (id, fingerprint, token, response, expires_at) \
         VALUES ($1, '\\x0102', 7, NULL, now() + interval '1 hour')",
        store.table()
    ))
    .bind(&id.as_bytes()[..])
    .execute(store.pool())
    .await
    .unwrap();
    assert_kind(
        "claim",
        store.claim(&id, &FP, HOUR).await,
        StoreErrorKind::Corrupt,
    );
    common::drop_table(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schema_qualified_tables_and_concurrent_migrations() {
    let schema = common::unique_table().replace("tip_test_", "tip_schema_");
    let base = common::connect(&common::unique_table()).await;
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(base.pool())
        .await
        .unwrap();
    let store = PostgresStore::from_pool(base.pool().clone())
        .with_table(&format!("{schema}.Records"))
        .unwrap();

    // Many instances starting at once all migrate successfully.
    let migrations: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.migrate().await })
        })
        .collect();
    for migration in migrations {
        migration.await.unwrap().unwrap();
    }
    store.migrate().await.unwrap();
    let (tables, indexes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM pg_tables WHERE schemaname = $1 AND tablename = 'Records'), \
                (SELECT count(*) FROM pg_indexes WHERE schemaname = $1 AND tablename = 'Records')",
    )
    .bind(&schema)
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(
        (tables, indexes),
        (1, 2),
        "the table, its primary key and expires_at index"
    );

    let id = unique_id("schema");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("claim")
    };
    store
        .complete(&id, token, Bytes::from_static(b"ok"), HOUR)
        .await
        .unwrap();
    assert!(matches!(
        store.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Completed(r) if &r.response[..] == b"ok"
    ));

    sqlx::query(&format!("DROP SCHEMA \"{schema}\" CASCADE"))
        .execute(base.pool())
        .await
        .unwrap();
}

/// The server (or the network to it) stops answering without closing anything: every
/// connection, open or new, goes silent. Every operation fails with `Unavailable` after the
/// operation timeout (without it, one would hang). When the path comes back, the store
/// works again within about twice the operation timeout: the silent connections were closed,
/// not returned to the pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_answering_is_unavailable_after_the_operation_timeout() {
    const T: Duration = Duration::from_millis(500);
    let direct = common::fresh_store().await;
    let relay = Relay::start(common::server_addr()).await;
    let store = PostgresStore::builder()
        .table(direct.table())
        .operation_timeout(T)
        .connect_with(common::through(relay.port()))
        .await
        .expect("connect through the relay");
    let id = unique_id("frozen");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("claim")
    };

    relay.silence_all();
    let started = Instant::now();
    assert_kind(
        "complete",
        store
            .complete(&id, token, Bytes::from_static(b"lost"), HOUR)
            .await,
        StoreErrorKind::Unavailable,
    );
    assert_kind(
        "claim",
        store.claim(&id, &FP, HOUR).await,
        StoreErrorKind::Unavailable,
    );
    assert_kind("check", store.check().await, StoreErrorKind::Unavailable);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );

    // Without the timeout, the same call would hang.
    let unbounded = store.clone().with_operation_timeout(None);
    assert!(
        tokio::time::timeout(Duration::from_secs(1), unbounded.check())
            .await
            .is_err()
    );

    // The path comes back: the same store works again.
    relay.restore();
    let restored = Instant::now();
    loop {
        match store.check().await {
            Ok(()) => break,
            Err(e) => assert!(
                restored.elapsed() < 2 * T,
                "still failing {:?} after the path came back: {e}",
                restored.elapsed()
            ),
        }
    }
    println!(
        "working again {:?} after the path came back",
        restored.elapsed()
    );
    store
        .complete(&id, token, Bytes::from_static(b"kept"), HOUR)
        .await
        .unwrap();
    common::drop_table(&direct).await;
}

/// A table without the store's columns, or a database that does not exist: misconfiguration,
/// `Backend` (the layer refuses to fail open on it), never `Unavailable`.
#[tokio::test]
async fn misconfiguration_is_a_backend_error() {
    let base = common::connect(&common::unique_table()).await;
    let table = common::unique_table();
    sqlx::query(&format!("CREATE TABLE \"{table}\" (id BYTEA PRIMARY KEY)"))
        .execute(base.pool())
        .await
        .unwrap();
    let store = PostgresStore::from_pool(base.pool().clone())
        .with_table(&table)
        .unwrap();
    assert_kind(
        "claim on a table without the store's columns",
        store.claim(&unique_id("wrong-table"), &FP, HOUR).await,
        StoreErrorKind::Backend,
    );
    common::drop_table(&store).await;
    assert_kind(
        "connect to a database that does not exist",
        PostgresStore::builder()
            .connect_with(common::connect_options().database("tip_no_such_database"))
            .await,
        StoreErrorKind::Backend,
    );
}
