//! `roundtrips`: what each kind of request costs the store, on private servers.
//!
//! The app runs in-process (no HTTP: only store traffic matters) against a `redis-server` and
//! a PostgreSQL cluster of our own, so no one else's commands enter the counts, and against a
//! SQLite file. Per request kind ([`count`] says how each is measured):
//! - commands or statements the server executed;
//! - commits: transactions that wrote and were made durable (PostgreSQL, SQLite);
//! - round trips: writes the client sent, through a counting TCP proxy. They include what is
//!   not a statement, such as sqlx's connection pings. SQLite has no wire: none.
//!
//! Where the store is a database, the handler inserts one `orders` row, as in the load runs
//! ([`crate::orders`]): on the store's pool for the separate stores, through the lent
//! transaction in transactional mode.
//!
//! Statements are prepared and scripts loaded by a warm-up pass first, as in a running service.

mod app;
mod count;

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use axum::{Router, body::Body, http::Request};
use tower::ServiceExt;
use tower_idempotency_postgres::{
    PostgresTransactionalStore,
    sqlx::{self, PgPool},
};
use tower_idempotency_sqlite::{SqliteStore, SqliteTransactionalStore};

use self::{
    app::{BODY, Gate, OTHER_BODY, Write, app, ours, ours_transactional, peer, request},
    count::{Counter, SqliteCounts},
};
use crate::{
    orders,
    results::{self, RoundTripResults, RoundTrips},
    services::{self, CountingProxy, PrivatePostgres, PrivateRedis},
};

/// Long enough for what a store does after the answer (sqlx returning the connection to its
/// pool, with a ping) to land in the counts.
const SETTLE: Duration = Duration::from_millis(150);

struct Probe<'a> {
    store: &'a str,
    app: Router,
    gate: Arc<Gate>,
    counter: Counter,
    /// `None`: in-process, no wire (SQLite).
    proxy: Option<&'a CountingProxy>,
}

impl Probe<'_> {
    fn writes(&self) -> Option<(u64, u64)> {
        self.proxy.map(|p| (p.writes(), p.pings()))
    }

    /// One request, and the store traffic it caused.
    async fn measure(&mut self, label: &str, request: Request<Body>) -> anyhow::Result<RoundTrips> {
        let before = self.counter.snapshot().await?;
        let writes = self.writes();
        let response = self.app.clone().oneshot(request).await?;
        tokio::time::sleep(SETTLE).await;
        let after = self.counter.snapshot().await?;
        let delta = self.counter.delta(&before, &after).await?;
        Ok(RoundTrips {
            store: self.store.to_owned(),
            request: label.to_owned(),
            status: response.status().as_u16(),
            commands: delta.commands,
            client_writes: self.writes().zip(writes).map(|(b, a)| b.0 - a.0),
            pings: match (self.counter.is_postgres(), self.writes().zip(writes)) {
                (true, Some((b, a))) => Some(b.1 - a.1),
                _ => None,
            },
            commits: delta.commits,
            wal: delta.wal,
        })
    }

    /// First request, replay, conflicting request (409) and reused key (422 / 400).
    async fn sequence(&mut self, run: &str) -> anyhow::Result<Vec<RoundTrips>> {
        let (key, held_key) = (format!("{run}-k1"), format!("{run}-k2"));
        let mut rows = vec![
            self.measure(FIRST, request(&key, BODY, false)).await?,
            self.measure(REPLAY, request(&key, BODY, false)).await?,
            self.measure(
                "same key, other body (422; idempotent: 400)",
                request(&key, OTHER_BODY, false),
            )
            .await?,
        ];
        let held = tokio::spawn(self.app.clone().oneshot(request(&held_key, BODY, true)));
        tokio::time::timeout(Duration::from_secs(5), self.gate.entered.notified())
            .await
            .context("the held request never reached the handler")?;
        tokio::time::sleep(SETTLE).await;
        rows.push(
            self.measure(IN_FLIGHT, request(&held_key, BODY, false))
                .await?,
        );
        self.gate.release.notify_one();
        held.await??;
        tokio::time::sleep(SETTLE).await;
        Ok(rows)
    }

    /// Warm-up passes (connections, prepared statements, scripts), then the measured one:
    /// passes run until one costs what the one before did. (sqlx prepares a statement once
    /// per connection, at the cost of a round trip, and the pool hands its connections out in
    /// turn: a single warm-up pass can leave one unprepared.)
    async fn run(mut self) -> anyhow::Result<Vec<RoundTrips>> {
        const MAX_PASSES: usize = 6;
        let cost = |rows: &[RoundTrips]| {
            rows.iter()
                .map(|r| (r.client_writes, r.commits, r.commands.clone()))
                .collect::<Vec<_>>()
        };
        let mut rows = self.sequence("pass0").await?;
        for pass in 1..MAX_PASSES {
            let next = self.sequence(&format!("pass{pass}")).await?;
            let stable = cost(&next) == cost(&rows);
            rows = next;
            if stable {
                break;
            }
        }
        for row in &rows {
            eprintln!(
                "roundtrips: {:<32} {:<45} {} -> {:?}, commits {:?}, WAL {:?}, round trips {:?}",
                row.store,
                row.request,
                row.status,
                row.commands,
                row.commits,
                row.wal,
                row.client_writes
            );
        }
        Ok(rows)
    }
}

/// The request labels the report looks rows up by.
pub const FIRST: &str = "first request (executes, stores)";
pub const REPLAY: &str = "replay";
pub const IN_FLIGHT: &str = "retry while in flight (409)";

/// The stores the report compares, as the rows name them.
pub const POSTGRES: &str = "ours: PostgresStore";
pub const POSTGRES_TX: &str = "ours: PostgresTransactionalStore";
pub const SQLITE: &str = "ours: SqliteStore";
pub const SQLITE_TX: &str = "ours: SqliteTransactionalStore";

async fn redis_rows() -> anyhow::Result<Vec<RoundTrips>> {
    let server = PrivateRedis::start().await?;
    let proxy = CountingProxy::start(services::socket_of(&server.url)?).await?;
    let via_proxy = format!("redis://{}", proxy.addr);
    let mut rows = Vec::new();

    let gate = Arc::new(Gate::default());
    let store = tower_idempotency_redis::RedisStore::connect(&via_proxy).await?;
    rows.extend(
        Probe {
            store: "ours: RedisStore",
            app: app(ours(store), Arc::clone(&gate), Write::None),
            gate,
            counter: Counter::Redis(services::redis(&server.url).await?),
            proxy: Some(&proxy),
        }
        .run()
        .await?,
    );

    let gate = Arc::new(Gate::default());
    let store = idempotent::valkey::ValkeyStore::with_url(via_proxy.clone())
        .prefix("peer")
        .try_build()
        .await?;
    rows.extend(
        Probe {
            store: "idempotent: Valkey store",
            app: app(peer(store), Arc::clone(&gate), Write::None),
            gate,
            counter: Counter::Redis(services::redis(&server.url).await?),
            proxy: Some(&proxy),
        }
        .run()
        .await?,
    );
    Ok(rows)
}

async fn postgres_rows() -> anyhow::Result<(Vec<RoundTrips>, Vec<String>)> {
    let server = PrivatePostgres::start().await?;
    let admin = services::postgres(&server.url).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await?;
    let mut skipped = Vec::new();
    let wal = count::enable_wal_counts(&admin).await;
    if !wal {
        skipped.push("PostgreSQL commits: no pg_walinspect (PostgreSQL 15+)".to_owned());
    }
    let proxy = CountingProxy::start(services::socket_of(&server.url)?).await?;
    let via_proxy = format!("postgres://postgres@{}/postgres", proxy.addr);
    let mut rows = Vec::new();

    // The separate store as shipped (sqlx's pool defaults, ping before use included); the
    // handler's insert shares its pool, as in `ours-postgres`.
    let store = tower_idempotency_postgres::PostgresStore::connect(&via_proxy).await?;
    store.migrate().await?;
    orders::create_postgres_table(store.pool(), "separate_orders").await?;
    let write = Write::PostgresPool(
        store.pool().clone(),
        orders::postgres_insert("separate_orders"),
    );
    let gate = Arc::new(Gate::default());
    rows.extend(
        Probe {
            store: POSTGRES,
            app: app(ours(store), Arc::clone(&gate), write),
            gate,
            counter: Counter::Postgres {
                pool: admin.clone(),
                wal,
            },
            proxy: Some(&proxy),
        }
        .run()
        .await?,
    );

    // Transactional mode on a pool as `PgPool::connect` opens it (as in `ours-postgres-tx`),
    // on a table of its own.
    let pool = PgPool::connect(&via_proxy).await?;
    let store = PostgresTransactionalStore::with_table(pool.clone(), "tx_records")?;
    store.migrate().await?;
    orders::create_postgres_table(&pool, "tx_orders").await?;
    let gate = Arc::new(Gate::default());
    rows.extend(
        Probe {
            store: POSTGRES_TX,
            app: app(
                ours_transactional(store),
                Arc::clone(&gate),
                Write::PostgresLent(orders::postgres_insert("tx_orders")),
            ),
            gate,
            counter: Counter::Postgres { pool: admin, wal },
            proxy: Some(&proxy),
        }
        .run()
        .await?,
    );
    if rows.is_empty() {
        bail!("no rows measured");
    }
    Ok((rows, skipped))
}

/// A SQLite database file in a directory of its own, removed on drop.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn sqlite_rows() -> anyhow::Result<Vec<RoundTrips>> {
    let dir = TempFile(std::env::temp_dir().join(format!(
        "loadbench-roundtrips-sqlite-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0)?;
    let mut rows = Vec::new();
    for transactional in [false, true] {
        let counts = Arc::new(SqliteCounts::default());
        let file = dir.0.join(if transactional {
            "tx.db"
        } else {
            "separate.db"
        });
        // The crate's settings (what `SqliteStore::connect` opens), plus the commit hook.
        let pool = counts
            .pool_options(tower_idempotency_sqlite::pool_options())
            .connect_with(tower_idempotency_sqlite::connect_options(&file))
            .await?;
        orders::create_sqlite_table(&pool).await?;
        let gate = Arc::new(Gate::default());
        let counter = Counter::Sqlite(Arc::clone(&counts));
        let probe = if transactional {
            let store = SqliteTransactionalStore::new(pool.clone());
            store.migrate().await?;
            Probe {
                store: SQLITE_TX,
                app: app(
                    ours_transactional(store),
                    Arc::clone(&gate),
                    Write::SqliteLent(orders::sqlite_insert()),
                ),
                gate,
                counter,
                proxy: None,
            }
        } else {
            let store = SqliteStore::new(pool.clone());
            store.migrate().await?;
            Probe {
                store: SQLITE,
                app: app(
                    ours(store),
                    Arc::clone(&gate),
                    Write::SqlitePool(pool.clone(), orders::sqlite_insert()),
                ),
                gate,
                counter,
                proxy: None,
            }
        };
        rows.extend(probe.run().await?);
        pool.close().await;
    }
    Ok(rows)
}

/// `roundtrips`.
pub fn run(results_dir: &Path) -> anyhow::Result<()> {
    count::install_query_log();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (rows, skipped) = runtime.block_on(async {
        let mut rows = Vec::new();
        let mut skipped = Vec::new();
        match redis_rows().await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => skipped.push(format!("Redis: {e:#}")),
        }
        match postgres_rows().await {
            Ok((mut r, mut s)) => {
                rows.append(&mut r);
                skipped.append(&mut s);
            }
            Err(e) => skipped.push(format!("PostgreSQL: {e:#}")),
        }
        match sqlite_rows().await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => skipped.push(format!("SQLite: {e:#}")),
        }
        (rows, skipped)
    });
    for s in &skipped {
        eprintln!("roundtrips: skipped {s}");
    }
    results::save(
        &results_dir.join("roundtrips.json"),
        &RoundTripResults {
            command: results::command_line(),
            rows,
            skipped,
        },
    )
}
