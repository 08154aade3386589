//! [`HandlerTasks`]: waiting for detached handlers on shutdown.

use std::fmt;

use tokio_util::task::{TaskTracker, task_tracker::TaskTrackerToken};

/// The handlers the layer has started and not finished, including those detached from a
/// client that disconnected (they run on to store their outcome). A server's graceful
/// shutdown waits for them after the connections have drained, so that no claim is left to
/// expire by its lease.
///
/// A thin wrapper over tokio-util's [`TaskTracker`], kept out of the public API so that its
/// versions can change under us.
///
/// ```
/// use tower_idempotency::{IdempotencyLayer, store::memory::MemoryStore};
///
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let layer = IdempotencyLayer::new(MemoryStore::default());
/// let tasks = layer.handler_tasks();
/// // ... serve with `layer` until a shutdown signal, then:
/// tasks.wait_idle().await;
/// assert_eq!(tasks.running(), 0);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct HandlerTasks(TaskTracker);

impl HandlerTasks {
    /// Handlers running now.
    pub fn running(&self) -> usize {
        self.0.len()
    }

    /// Resolves once no handler is running. Handlers may still start meanwhile (a draining
    /// server finishes the requests it has); it resolves at the first moment none runs.
    pub async fn wait_idle(&self) {
        // TaskTracker::wait resolves only once closed and empty; closing stops nothing from
        // being tracked, so close for the wait and reopen after it.
        self.0.close();
        self.0.wait().await;
        self.0.reopen();
    }

    /// Counts a handler as running until the guard drops (also when it unwinds).
    pub(crate) fn start(&self) -> RunningGuard {
        RunningGuard(self.0.token())
    }
}

impl fmt::Debug for HandlerTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerTasks")
            .field("running", &self.running())
            .finish()
    }
}

/// Held while one handler runs.
#[derive(Debug)]
pub(crate) struct RunningGuard(#[allow(dead_code)] TaskTrackerToken);
