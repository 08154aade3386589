//! [`HandlerTasks`]: waiting for detached handlers on shutdown.

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// The handlers the layer has started and not finished, including those detached from a
/// client that disconnected (they run on to store their outcome). A server's graceful
/// shutdown waits for them after the connections have drained, so that no claim is left to
/// expire by its lease.
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
pub struct HandlerTasks(Arc<Inner>);

#[derive(Default)]
struct Inner {
    running: AtomicUsize,
    idle: Notify,
}

impl HandlerTasks {
    /// Handlers running now.
    pub fn running(&self) -> usize {
        self.0.running.load(Ordering::Acquire)
    }

    /// Resolves once no handler is running.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.0.idle.notified();
            let mut notified = std::pin::pin!(notified);
            // Register before checking, so a task ending in between still wakes us.
            notified.as_mut().enable();
            if self.running() == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Counts a handler as running until the guard drops (also when it unwinds).
    pub(crate) fn start(&self) -> RunningGuard {
        self.0.running.fetch_add(1, Ordering::AcqRel);
        RunningGuard(self.clone())
    }
}

impl fmt::Debug for HandlerTasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerTasks")
            .field("running", &self.running())
            .finish()
    }
}

pub(crate) struct RunningGuard(HandlerTasks);

impl Drop for RunningGuard {
    fn drop(&mut self) {
        if self.0.0.running.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.0.idle.notify_waiters();
        }
    }
}
