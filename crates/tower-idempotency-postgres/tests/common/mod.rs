//! Shared helpers: every test runs against a real PostgreSQL server, each on its own table.

#![allow(dead_code)] // each test binary uses a subset

use std::{
    hash::{BuildHasher, RandomState},
    str::FromStr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{self, Row, postgres::PgConnectOptions},
};

pub(crate) const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Test tables are named `tip_test_<unix seconds>_<random>`; ones older than this, left by
/// runs that failed or by the conformance suite, are dropped by later runs.
const STALE_AFTER: Duration = Duration::from_secs(3600);
const PREFIX: &str = "tip_test_";

/// `DATABASE_URL`, or the default local server.
pub(crate) fn database_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_URL.to_owned())
}

pub(crate) fn connect_options() -> PgConnectOptions {
    let url = database_url();
    PgConnectOptions::from_str(&url)
        .unwrap_or_else(|e| panic!("DATABASE_URL is not a valid PostgreSQL URL: {e}"))
}

/// A fresh, unused table name.
pub(crate) fn unique_table() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let random = RandomState::new().hash_one((std::process::id(), n)) as u32;
    format!("{PREFIX}{secs}_{random:08x}_{n}")
}

/// One table for the whole test binary (its checks use random ids, so they can share it).
pub(crate) fn process_table() -> &'static str {
    static TABLE: OnceLock<String> = OnceLock::new();
    TABLE.get_or_init(unique_table)
}

/// Connects to the test server (small pool) or panics saying how to provide one.
pub(crate) async fn connect(table: &str) -> PostgresStore {
    let options = connect_options();
    let result = PostgresStore::builder()
        .table(table)
        .max_connections(5)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options.clone())
        .await;
    let store = match result {
        Ok(store) => store,
        Err(e) => panic!(
            "\n\nCannot reach PostgreSQL at {}:{} (database {:?}): {e}\n\
             These tests need a real PostgreSQL server (13 or later); they never skip.\n\
             Run the suite with `scripts/test`, which starts (or installs) a local server,\n\
             or point DATABASE_URL at one: DATABASE_URL=postgres://USER[:PASSWORD]@HOST:PORT/DB \
             (default {DEFAULT_URL}).\n\n",
            options.get_host(),
            options.get_port(),
            options.get_database().unwrap_or("<default>"),
        ),
    };
    drop_stale_tables(&store).await;
    store
}

/// A store on `table`, migrated.
pub(crate) async fn store_on(table: &str) -> PostgresStore {
    let store = connect(table).await;
    store.migrate().await.expect("migrate");
    store
}

/// A store on a table of its own, migrated.
pub(crate) async fn fresh_store() -> PostgresStore {
    store_on(&unique_table()).await
}

/// Rows in the store's table.
pub(crate) async fn count_rows(store: &PostgresStore) -> i64 {
    sqlx::query(&format!("SELECT count(*) FROM \"{}\"", store.table()))
        .fetch_one(store.pool())
        .await
        .expect("count rows")
        .get(0)
}

pub(crate) async fn drop_table(store: &PostgresStore) {
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{}\"", store.table()))
        .execute(store.pool())
        .await
        .expect("drop the test table");
}

/// Once per process: drops test tables of runs older than [`STALE_AFTER`]. Best effort.
async fn drop_stale_tables(store: &PostgresStore) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("the clock is after 1970")
        .as_secs();
    let rows = sqlx::query(
        "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() \
         AND starts_with(tablename, $1)",
    )
    .bind(PREFIX)
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    for row in rows {
        let name: String = row.get(0);
        let created = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + STALE_AFTER.as_secs() < now)
            && let Err(e) = sqlx::query(&format!("DROP TABLE IF EXISTS \"{name}\""))
                .execute(store.pool())
                .await
        {
            eprintln!("could not drop stale test table {name}: {e}");
        }
    }
}
