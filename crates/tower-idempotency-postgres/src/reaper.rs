//! The background task that deletes expired records.

use std::time::Duration;

use tokio::task::JoinHandle;

use crate::PostgresStore;

/// Shortest period between two reaping rounds.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The reaper started by [`PostgresStore::spawn_reaper`]. Dropping it stops the task.
#[derive(Debug)]
#[must_use = "dropping the handle stops the reaper"]
pub struct ReaperHandle {
    task: JoinHandle<()>,
}

impl ReaperHandle {
    /// Stops the task (a batch in progress is cancelled; its transaction rolls back).
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

pub(crate) fn spawn(store: PostgresStore, period: Duration, batch: u32) -> ReaperHandle {
    let period = period.max(MIN_PERIOD);
    let batch = batch.max(1);
    let task = tokio::spawn(async move {
        while !store.pool().is_closed() {
            reap(&store, batch).await;
            tokio::time::sleep(period).await;
        }
    });
    ReaperHandle { task }
}

/// Deletes batches of expired records until one comes back short.
async fn reap(store: &PostgresStore, batch: u32) {
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
                tracing::warn!(
                    table = store.table(),
                    %error,
                    "deleting expired idempotency records failed; retrying next period"
                );
                break;
            }
        }
    }
    if total > 0 {
        tracing::debug!(
            table = store.table(),
            deleted = total,
            "deleted expired idempotency records"
        );
    }
}
