//! Building the configured store (connecting, creating its table) and what keeps it tidy.

use anyhow::Context as _;
use tower_idempotency::store::{BoxStore, memory::MemoryStore};
use tower_idempotency_postgres::{PostgresStore, PostgresTransactionalStore, ReaperHandle};
use tower_idempotency_redis::RedisStore;
use tower_idempotency_sqlite::SqliteTransactionalStore;

use super::{Records, StoreSpec, sweeper::Sweeper};
use crate::{config::StoreArgs, db::Db};

/// How many expired records one statement deletes (the reapers run statement after
/// statement until one comes back short).
pub const REAPER_BATCH: u32 = 1000;

/// The idempotency records of a running server, with what deletes the expired ones.
#[derive(Debug)]
pub struct IdempotencyBackend {
    /// Where the layer keeps its records (and what the readiness probe checks).
    pub records: Records,
    upkeep: Upkeep,
}

#[derive(Debug)]
enum Upkeep {
    /// Records expire by themselves (memory, Redis).
    None,
    /// A PostgreSQL table: the store's reaper.
    Reaper(ReaperHandle),
    /// The SQLite database: our sweeper.
    Sweeper(Sweeper),
}

impl IdempotencyBackend {
    /// Stops deleting expired records (call before closing the database).
    pub async fn shutdown(self) {
        match self.upkeep {
            Upkeep::None => {}
            Upkeep::Reaper(reaper) => reaper.abort(),
            Upkeep::Sweeper(sweeper) => sweeper.stop().await,
        }
    }
}

/// Builds the store `spec` names: connects (a wrong URL fails at startup, not on the first
/// request), creates its table, and starts the deletion of expired records. `db` is the
/// deployments database, where the `database` store keeps its records.
pub async fn build_store(
    spec: &str,
    args: &StoreArgs,
    db: &Db,
) -> anyhow::Result<IdempotencyBackend> {
    let period = args.idempotency_reaper_period;
    let (records, upkeep) = match spec.parse::<StoreSpec>()? {
        StoreSpec::Database => match db {
            Db::Sqlite(pool) => {
                let store = SqliteTransactionalStore::new(pool.clone());
                store
                    .migrate()
                    .await
                    .context("cannot create the idempotency table in the SQLite database")?;
                let sweeper = Sweeper::spawn(store.clone(), period, REAPER_BATCH);
                (Records::Sqlite(store), Upkeep::Sweeper(sweeper))
            }
            Db::Postgres(pool) => {
                let store = PostgresTransactionalStore::with_table(
                    pool.clone(),
                    &args.idempotency_postgres_table,
                )
                .context("invalid --idempotency-postgres-table")?;
                store
                    .migrate()
                    .await
                    .context("cannot create the idempotency table in the PostgreSQL database")?;
                let reaper = store.spawn_reaper(period, REAPER_BATCH);
                (Records::Postgres(store), Upkeep::Reaper(reaper))
            }
        },
        StoreSpec::Memory => {
            let store = MemoryStore::builder()
                .max_entries(args.idempotency_memory_max_entries)
                .max_bytes(args.idempotency_memory_max_bytes)
                .build();
            (Records::Separate(BoxStore::new(store)), Upkeep::None)
        }
        StoreSpec::Redis(url) => {
            let store = RedisStore::builder()
                .prefix(args.idempotency_redis_prefix.clone())
                .connect(&url)
                .await
                .context("cannot connect to the Redis idempotency store")?;
            (Records::Separate(BoxStore::new(store)), Upkeep::None)
        }
        StoreSpec::RedisCluster(urls) => {
            let store = RedisStore::builder()
                .prefix(args.idempotency_redis_prefix.clone())
                .connect_cluster(&urls)
                .await
                .context("cannot connect to the Redis Cluster idempotency store")?;
            (Records::Separate(BoxStore::new(store)), Upkeep::None)
        }
        StoreSpec::Postgres(url) => {
            let store = PostgresStore::builder()
                .table(&args.idempotency_postgres_table)
                .connect(&url)
                .await
                .context("cannot connect to the PostgreSQL idempotency store")?;
            store
                .migrate()
                .await
                .context("cannot create the PostgreSQL idempotency table")?;
            let reaper = store.spawn_reaper(period, REAPER_BATCH);
            (
                Records::Separate(BoxStore::new(store)),
                Upkeep::Reaper(reaper),
            )
        }
    };
    Ok(IdempotencyBackend { records, upkeep })
}
