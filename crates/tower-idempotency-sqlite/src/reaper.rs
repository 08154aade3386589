//! The background task that deletes expired records.

use std::{sync::Arc, time::Duration};

use sqlx::SqlitePool;
use tokio::task::JoinHandle;

use crate::{SqliteStore, schema};

/// Shortest period between two reaping rounds.
const MIN_PERIOD: Duration = Duration::from_millis(10);

impl SqliteStore {
    /// Starts a background task that, every `period` (at least 10 ms), deletes expired
    /// records, `batch` per statement (at least 1; each statement holds the write lock
    /// while it runs), until a batch comes back short. Failures are logged (`tracing`,
    /// level WARN) and retried at the next period; the task ends when the pool is closed.
    ///
    /// Dropping or [aborting](ReaperHandle::abort) the handle stops the task. Several
    /// reapers on one file (one per process) are fine.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// use std::time::Duration;
    /// use tower_idempotency_sqlite::{SqliteStore, sqlx::SqlitePool};
    ///
    /// # let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
    /// let store = SqliteStore::new(pool);
    /// // Every minute, 1,000 records per statement, for as long as `reaper` is held.
    /// let reaper = store.spawn_reaper(Duration::from_secs(60), 1_000);
    /// # assert!(!reaper.is_finished());
    /// # }
    /// ```
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_reaper(&self, period: Duration, batch: u32) -> ReaperHandle {
        spawn(self.pool().clone(), self.table().into(), period, batch)
    }
}

/// The reaper started by [`SqliteStore::spawn_reaper`]. Dropping it stops the task.
#[derive(Debug)]
#[must_use = "dropping the handle stops the reaper"]
pub struct ReaperHandle {
    task: JoinHandle<()>,
}

impl ReaperHandle {
    /// Stops the task (a statement in progress still completes or rolls back on its own).
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Whether the task has ended (aborted, or its pool was closed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Drop for ReaperHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reaps `table` of `pool` every `period`: a pool and a table rather than a store, so any
/// store on the shared table format can use it.
pub(crate) fn spawn(
    pool: SqlitePool,
    table: Arc<str>,
    period: Duration,
    batch: u32,
) -> ReaperHandle {
    let period = period.max(MIN_PERIOD);
    let batch = batch.max(1);
    let task = tokio::spawn(async move {
        while !pool.is_closed() {
            reap(&pool, &table, batch).await;
            tokio::time::sleep(period).await;
        }
    });
    ReaperHandle { task }
}

/// Deletes batches of expired records until one comes back short.
async fn reap(pool: &SqlitePool, table: &str, batch: u32) {
    let mut total = 0;
    loop {
        match schema::delete_expired(pool, table, batch).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < u64::from(batch) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(
                    table,
                    %error,
                    "deleting expired idempotency records failed; retrying next period"
                );
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(
            table,
            deleted = total,
            "deleted expired idempotency records"
        );
    }
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::SqlitePoolOptions;

    use super::*;

    /// One connection, kept forever: an in-memory database lives as long as its connection.
    async fn memory_store() -> SqliteStore {
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect("sqlite::memory:")
            .await
            .expect("open an in-memory database");
        let store = SqliteStore::new(pool);
        store.migrate().await.expect("migrate");
        store
    }

    /// Inserts `n` records expiring `offset_ms` from now (negative: already expired).
    async fn insert(store: &SqliteStore, first: u8, n: u8, offset_ms: i64) {
        for i in first..first + n {
            let sql = format!(
                "INSERT INTO \"{}\" VALUES (?1, zeroblob(16), 1, NULL, {} + ?2)",
                store.table(),
                schema::NOW_MS
            );
            sqlx::query(&sql)
                .bind(vec![i; 32])
                .bind(offset_ms)
                .execute(store.pool())
                .await
                .expect("insert a record");
        }
    }

    async fn count(store: &SqliteStore) -> i64 {
        let sql = format!("SELECT count(*) FROM \"{}\"", store.table());
        sqlx::query_scalar(&sql)
            .fetch_one(store.pool())
            .await
            .expect("count records")
    }

    async fn wait_for_count(store: &SqliteStore, expected: i64) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while count(store).await != expected {
            assert!(
                tokio::time::Instant::now() < deadline,
                "still {} records, expected {expected}",
                count(store).await
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn deletes_every_expired_record_in_batches_and_stops_when_dropped() {
        let store = memory_store().await;
        insert(&store, 0, 7, -1).await;
        insert(&store, 100, 2, 3_600_000).await;

        // A period far longer than the test: all 7 go in the first round, 3 batches of 3.
        let reaper = store.spawn_reaper(Duration::from_secs(3600), 3);
        wait_for_count(&store, 2).await;
        assert!(!reaper.is_finished());

        reaper.abort();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(reaper.is_finished());
        drop(reaper);

        let reaper = store.spawn_reaper(Duration::ZERO, 0); // clamped: 10 ms, 1 per batch
        insert(&store, 10, 2, -1).await;
        wait_for_count(&store, 2).await;
        drop(reaper);
        tokio::time::sleep(Duration::from_millis(50)).await;
        insert(&store, 20, 1, -1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(count(&store).await, 3, "a dropped reaper deletes nothing");
    }

    #[tokio::test]
    async fn ends_when_the_pool_is_closed() {
        let store = memory_store().await;
        let reaper = store.spawn_reaper(Duration::from_millis(10), 100);
        store.pool().close().await;
        tokio::time::timeout(Duration::from_secs(10), async {
            while !reaper.is_finished() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the reaper ends once its pool is closed");
    }
}
