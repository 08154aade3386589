//! Shared helpers: every test runs against a real PostgreSQL server, each on its own table.

#![allow(dead_code)] // each test binary uses a subset

use std::{
    hash::{BuildHasher, RandomState},
    net::{SocketAddr, ToSocketAddrs},
    str::FromStr,
    sync::{
        OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{
        self, Row,
        postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode},
    },
};

pub(crate) const DEFAULT_PGBOUNCER_URL: &str = "postgres://postgres@127.0.0.1:6432/test";
pub(crate) const DEFAULT_PGBOUNCER_IGNORING_URL: &str = "postgres://postgres@127.0.0.1:6433/test";

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

/// The test server's TCP address, for a relay in front of it.
pub(crate) fn server_addr() -> SocketAddr {
    let options = connect_options();
    (options.get_host(), options.get_port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| {
            panic!(
                "DATABASE_URL must name a TCP host for tests that relay its traffic, not {:?}",
                options.get_host()
            )
        })
}

/// The test server's options, through a relay listening on `port`.
pub(crate) fn through(port: u16) -> PgConnectOptions {
    connect_options()
        .host("127.0.0.1")
        .port(port)
        .ssl_mode(PgSslMode::Disable)
}

/// A unique `application_name`, so a test can find its store's backends in
/// `pg_stat_activity`.
pub(crate) fn unique_app(label: &str) -> String {
    let table = unique_table();
    format!("tip-{label}-{}", table.trim_start_matches(PREFIX))
}

/// A direct pool of the test's own (not the store's), for looking at and interfering with
/// the server.
pub(crate) async fn admin_pool() -> PgPool {
    PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(connect_options())
        .await
        .unwrap_or_else(|e| panic!("cannot reach PostgreSQL at DATABASE_URL: {e}"))
}

/// Backends of `app` that wait for a lock now.
pub(crate) async fn waiting_for_locks(admin: &PgPool, app: &str) -> i64 {
    sqlx::query(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
         AND wait_event_type = 'Lock'",
    )
    .bind(app)
    .fetch_one(admin)
    .await
    .expect("read pg_stat_activity")
    .get(0)
}

/// Waits (polling the server, at most `within`) until `ready` holds for the number of
/// backends of `app` waiting for a lock; returns how long it took.
pub(crate) async fn until_lock_waiters(
    admin: &PgPool,
    app: &str,
    within: Duration,
    ready: impl Fn(i64) -> bool,
) -> Result<Duration, i64> {
    let started = std::time::Instant::now();
    loop {
        let n = waiting_for_locks(admin, app).await;
        if ready(n) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > within {
            return Err(n);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `PGBOUNCER_URL`, or the PgBouncer `scripts/test` starts.
pub(crate) fn pgbouncer_url() -> String {
    std::env::var("PGBOUNCER_URL").unwrap_or_else(|_| DEFAULT_PGBOUNCER_URL.to_owned())
}

/// `PGBOUNCER_IGNORING_URL`, or the PgBouncer with `ignore_startup_parameters =
/// extra_float_digits, options` that `scripts/test` starts.
pub(crate) fn pgbouncer_ignoring_url() -> String {
    std::env::var("PGBOUNCER_IGNORING_URL")
        .unwrap_or_else(|_| DEFAULT_PGBOUNCER_IGNORING_URL.to_owned())
}

/// A scratch database with `settings` (`ALTER DATABASE ... SET`), dropped with
/// [`drop_database`].
pub(crate) async fn scratch_database(admin: &PgPool, settings: &[(&str, &str)]) -> String {
    let name = unique_table().replace(PREFIX, "tip_db_");
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(admin)
        .await
        .unwrap_or_else(|e| panic!("CREATE DATABASE (the test user must be allowed to): {e}"));
    for (setting, value) in settings {
        sqlx::query(&format!(
            "ALTER DATABASE \"{name}\" SET {setting} = '{value}'"
        ))
        .execute(admin)
        .await
        .expect("ALTER DATABASE SET");
    }
    name
}

pub(crate) async fn drop_database(admin: &PgPool, name: &str) {
    sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .execute(admin)
        .await
        .expect("drop the scratch database");
}

/// Eight tasks at once claim, renew and complete `ids` (`rounds` claims each): every record
/// is acquired exactly once, a completed record holds its own id, and an in-flight one the
/// claimer's fingerprint.
pub(crate) async fn contention(
    store: &PostgresStore,
    ids: &[tower_idempotency::store::RecordId],
    rounds: usize,
) {
    use bytes::Bytes;
    use tower_idempotency::{
        Fingerprint,
        store::{Claim, IdempotencyStore},
    };
    const FP: Fingerprint = Fingerprint::from_bytes([0x5c; Fingerprint::LEN]);
    const HOUR: Duration = Duration::from_secs(3600);
    let tasks: Vec<_> = (0..8)
        .map(|n| {
            let (store, ids) = (store.clone(), ids.to_vec());
            tokio::spawn(async move {
                let mut acquired = Vec::new();
                for i in 0..rounds {
                    let id = ids[(i + n) % ids.len()];
                    match store.claim(&id, &FP, HOUR).await.unwrap() {
                        Claim::Acquired(token) => {
                            store.renew(&id, token, HOUR).await.unwrap();
                            let body = Bytes::from(id.to_hex().into_bytes());
                            store.complete(&id, token, body, HOUR).await.unwrap();
                            acquired.push(id);
                        }
                        Claim::Completed(record) => {
                            assert_eq!(record.response, id.to_hex().as_bytes());
                            assert_eq!(record.fingerprint, FP);
                        }
                        Claim::InFlight { fingerprint } => assert_eq!(fingerprint, FP),
                    }
                }
                acquired
            })
        })
        .collect();
    let mut acquired = Vec::new();
    for task in tasks {
        acquired.extend(task.await.unwrap());
    }
    acquired.sort();
    let before = acquired.len();
    acquired.dedup();
    assert_eq!(before, acquired.len(), "a record was acquired twice");
    assert_eq!(
        acquired.len(),
        ids.len(),
        "each record acquired exactly once"
    );
}
