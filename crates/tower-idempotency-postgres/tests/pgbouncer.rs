//! Through a real PgBouncer in transaction pooling mode (`PGBOUNCER_URL`, default
//! `postgres://postgres@127.0.0.1:6432/test`, started by `scripts/test`: `pool_mode =
//! transaction`, four server connections per pool, no `ignore_startup_parameters`, no
//! `max_prepared_statements`; Debian 12 ships PgBouncer 1.18), and through a second one that
//! ignores the startup parameters `extra_float_digits` and `options`
//! (`PGBOUNCER_IGNORING_URL`, default `postgres://postgres@127.0.0.1:6433/test`).
//!
//! With [`transaction_pooling`](PostgresStoreBuilder::transaction_pooling) the store runs the
//! whole conformance suite through it; without, it refuses to start and says which option to
//! set. These tests fail, never skip, when PgBouncer cannot be reached.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_postgres::{
    PostgresStore, PostgresStoreBuilder,
    sqlx::{self, Row},
};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([6; Fingerprint::LEN]);

fn builder(table: &str) -> PostgresStoreBuilder {
    PostgresStore::builder()
        .table(table)
        .transaction_pooling(true)
        .max_connections(6)
}

/// A store through PgBouncer on `table` (migrated), or a panic saying how to get one.
async fn through_pgbouncer(table: &str) -> PostgresStore {
    through(&common::pgbouncer_url(), "PGBOUNCER_URL", table).await
}

async fn through(url: &str, variable: &str, table: &str) -> PostgresStore {
    let store = builder(table).connect(url).await.unwrap_or_else(|e| {
        panic!(
            "\n\nCannot reach PgBouncer at {variable}={url}: {e}\n\
             These tests need a real PgBouncer in transaction pooling mode in front of the test \
             PostgreSQL; they never skip.\n\
             Run the suite with `scripts/test`, which installs and starts one (see \
             `ensure_pgbouncer` in scripts/lib/services.sh), or point {variable} at one \
             (default: {}).\n\n",
            if variable == "PGBOUNCER_URL" {
                common::DEFAULT_PGBOUNCER_URL
            } else {
                common::DEFAULT_PGBOUNCER_IGNORING_URL
            }
        )
    });
    store.migrate().await.expect("migrate through PgBouncer");
    store
}

tower_idempotency::store_conformance_tests!(through_pgbouncer(common::process_table()));

#[tokio::test]
async fn without_transaction_pooling_the_store_refuses_to_start_and_says_why() {
    through_pgbouncer(&common::unique_table()).await; // PgBouncer is there
    let error = PostgresStore::connect(&common::pgbouncer_url())
        .await
        .expect_err("PgBouncer 1.18 refuses sqlx's startup parameters");
    let message = error.to_string();
    println!("{message}");
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{message}");
    assert!(
        message.contains("transaction_pooling(true)"),
        "the error says which option to set: {message}"
    );
}

/// The usual advice for sqlx behind PgBouncer, `ignore_startup_parameters =
/// extra_float_digits, options`, makes PgBouncer accept the store's startup parameters and
/// drop them: the store would run without its limits and isolation level. It notices when
/// it connects and refuses, saying which option to set; with that option it works there too.
#[tokio::test]
async fn a_pgbouncer_that_drops_the_startup_options_is_noticed() {
    let url = common::pgbouncer_ignoring_url();
    let table = common::unique_table();
    let store = through(&url, "PGBOUNCER_IGNORING_URL", &table).await;
    let error = PostgresStore::builder()
        .table(&table)
        .connect(&url)
        .await
        .expect_err("the session settings are not in effect");
    let message = error.to_string();
    println!("{message}");
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{message}");
    assert!(
        message.contains("not in effect") && message.contains("transaction_pooling(true)"),
        "{message}"
    );
    let id = unique_id("ignoring");
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
    common::drop_table(&common::connect(&table).await).await;
}

/// Consecutive transactions of one client connection really run on several server
/// connections (so nothing may live in a session), and claims, completions and replays
/// under contention stay exclusive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_complete_and_replay_across_server_connections() {
    let store = through_pgbouncer(&common::unique_table()).await;
    let mut backends = std::collections::HashSet::new();
    let pool = store.pool().clone();
    let pids: Vec<_> = (0..4)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut pids = Vec::new();
                for _ in 0..25 {
                    let row = sqlx::raw_sql("SELECT pg_backend_pid()")
                        .fetch_one(&pool)
                        .await
                        .unwrap();
                    pids.push(row.get::<i32, _>(0));
                }
                pids
            })
        })
        .collect();
    for task in pids {
        backends.extend(task.await.unwrap());
    }
    assert!(
        backends.len() > 1,
        "PgBouncer ran every transaction on one server connection: is it in transaction mode?"
    );

    let ids: Vec<_> = (0..5).map(|_| unique_id("pgbouncer")).collect();
    common::contention(&store, &ids, 40).await;
    assert_eq!(store.delete_expired(100).await.unwrap(), 0);
    store.check().await.unwrap();
    println!(
        "{} server connections behind one pool; {} records, each acquired once",
        backends.len(),
        ids.len()
    );
    common::drop_table(&common::connect(store.table()).await).await;
}

/// The store's limits travel with each transaction: a claim waiting for a row lock is ended
/// by its own `lock_timeout`, and nothing is left on the server connections for the
/// pooler's other clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_apply_per_transaction_and_do_not_leak() {
    let table = common::unique_table();
    let url = common::pgbouncer_url();
    through_pgbouncer(&table).await;
    let store = builder(&table)
        .operation_timeout(Duration::from_secs(5))
        .lock_timeout(Duration::from_millis(300))
        .connect(&url)
        .await
        .unwrap();
    let direct = common::connect(&table).await;
    let admin = common::admin_pool().await;
    let id = unique_id("locked");
    assert!(matches!(
        direct
            .claim(&id, &FP, Duration::from_millis(50))
            .await
            .unwrap(),
        Claim::Acquired(_)
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM \"{table}\" WHERE id = $1 FOR UPDATE"
    ))
    .bind(&id.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    let started = Instant::now();
    let result = store.claim(&id, &FP, HOUR).await;
    let took = started.elapsed();
    blocker.rollback().await.unwrap();
    println!("through PgBouncer, a claim waiting for a row lock ended after {took:?}");
    assert!(
        matches!(&result, Err(e) if e.kind() == StoreErrorKind::Unavailable),
        "{result:?}"
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    // Session state of the server connections is the server's own.
    for _ in 0..8 {
        let row = sqlx::raw_sql(
            "SELECT current_setting('lock_timeout'), current_setting('statement_timeout')",
        )
        .fetch_one(store.pool())
        .await
        .unwrap();
        assert_eq!(
            (row.get::<String, _>(0), row.get::<String, _>(1)),
            ("0".to_owned(), "0".to_owned())
        );
    }
    assert!(matches!(
        store.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
    common::drop_table(&direct).await;
}
