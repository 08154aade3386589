//! [`Sweeper`]: deletes expired idempotency records from the SQLite database, in bounded
//! batches, every period, until it is stopped. (PostgreSQL has the store's own reaper.)

use std::time::Duration;

use tokio::{sync::oneshot, task::JoinHandle};
use tower_idempotency_sqlite::SqliteTransactionalStore;

/// The running sweeper. [`stop`](Self::stop) ends it between two statements; dropping it
/// asks it to stop too (it ends after the statement it may be running).
#[derive(Debug)]
pub struct Sweeper {
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl Sweeper {
    /// Deletes up to `batch` expired records per statement, statement after statement until
    /// one comes back short, then again after `period`. The first round runs at once.
    pub fn spawn(store: SqliteTransactionalStore, period: Duration, batch: u32) -> Self {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let batch = batch.max(1);
        let task = tokio::spawn(async move {
            loop {
                // Never cancelled half-way: a stop request waits for the running statement.
                sweep(&store, batch, &mut stopped).await;
                if store.pool().is_closed() {
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(period) => {}
                    // Stopped, or the handle was dropped.
                    _ = &mut stopped => return,
                }
            }
        });
        Self {
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the sweeper and waits for it to end (at most the statement it is running).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::warn!(%error, "the idempotency record sweeper ended abnormally");
        }
    }
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// One round: batches until one comes back short, a statement fails, or a stop is asked for.
async fn sweep(store: &SqliteTransactionalStore, batch: u32, stopped: &mut oneshot::Receiver<()>) {
    let mut total = 0;
    loop {
        match store.delete_expired(batch).await {
            Ok(deleted) => {
                total += deleted;
                if deleted < u64::from(batch) {
                    break;
                }
            }
            Err(error) => {
                tracing::warn!(%error, "deleting expired idempotency records failed; retrying next period");
                break;
            }
        }
        // Let the requests waiting for the write lock have it between two batches.
        tokio::task::yield_now().await;
        if !matches!(stopped.try_recv(), Err(oneshot::error::TryRecvError::Empty)) {
            break;
        }
    }
    if total > 0 {
        tracing::debug!(deleted = total, "deleted expired idempotency records");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deletes_expired_records_in_batches_and_stops() {
        let dir = tempfile::tempdir().unwrap();
        let options = tower_idempotency_sqlite::connect_options(dir.path().join("s.db"));
        let pool = tower_idempotency_sqlite::pool_options()
            .connect_with(options)
            .await
            .unwrap();
        let store = SqliteTransactionalStore::new(pool.clone());
        store.migrate().await.unwrap();
        // 25 expired records and one live one, written as the store writes them.
        for i in 0..26u8 {
            let expires = if i == 25 { "+ 3600000" } else { "- 1" };
            sqlx::query(&format!(
                "INSERT INTO idempotency_records (id, fingerprint, token, response, expires_at) \
                 VALUES (?, ?, 0, x'00', CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) {expires})"
            ))
            .bind(vec![i; 32])
            .bind(vec![0u8; 16])
            .execute(&pool)
            .await
            .unwrap();
        }
        let sweeper = Sweeper::spawn(store, Duration::from_secs(3600), 10);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM idempotency_records")
                .fetch_one(&pool)
                .await
                .unwrap();
            if left == 1 {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{left} records left"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::timeout(Duration::from_secs(5), sweeper.stop())
            .await
            .expect("the sweeper stops at once");
        pool.close().await;
    }
}
