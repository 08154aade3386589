//! The handler's view of its claim: [`Lease`].

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, time::Instant};

use crate::metrics::record_lease_lost;

/// The claim a running handler holds on its key, lent to it as a request extension
/// (`Extension<Lease>` in axum, `request.extensions().get::<Lease>()` in plain tower).
///
/// The layer renews the claim from a task of its own while the handler runs. If the store
/// refuses a renewal (the lease ran out, say after a long pause, and another request may
/// have taken the key over), or no renewal succeeds for a whole lease, the lease is *lost*:
/// check [`is_lost`](Self::is_lost) before an irreversible step (a payment, a webhook), or
/// race the work against [`lost`](Self::lost).
#[derive(Clone)]
pub struct Lease(Arc<State>);

struct State {
    /// Set once, never cleared; `lost_wake` wakes those waiting in [`Lease::lost`]. (A
    /// `CancellationToken` would do too, at the price of an allocation per request.)
    lost: AtomicBool,
    lost_wake: Notify,
    times: Mutex<Times>,
    /// The handler is done; its outcome is being recorded. A renewal that then finds the
    /// record completed is no loss.
    finished: AtomicBool,
}

/// By the layer's clock.
#[derive(Clone, Copy)]
struct Times {
    /// When the claim ends unless renewed.
    held_until: Instant,
    /// When the next renewal is due.
    renew_at: Instant,
}

impl Lease {
    /// A lease of `lease` that started no earlier than `start`.
    pub(crate) fn starting_at(start: Instant, lease: Duration) -> Self {
        let now = start;
        Self(Arc::new(State {
            lost: AtomicBool::new(false),
            lost_wake: Notify::new(),
            times: Mutex::new(Times {
                held_until: later(now, lease),
                renew_at: later(now, lease / 3),
            }),
            finished: AtomicBool::new(false),
        }))
    }

    /// The handler is done: from now on only `complete` speaks for the claim.
    pub(crate) fn finish(&self) {
        self.0.finished.store(true, Ordering::Release);
    }

    pub(super) fn is_finished(&self) -> bool {
        self.0.finished.load(Ordering::Acquire)
    }

    /// Whether the claim was lost: another request may be running with this key.
    pub fn is_lost(&self) -> bool {
        self.0.lost.load(Ordering::Acquire)
    }

    /// Resolves when the claim is lost (never, if the handler keeps it to the end).
    pub async fn lost(&self) {
        let notified = self.0.lost_wake.notified();
        let mut notified = std::pin::pin!(notified);
        // Registered before the check, so a loss between the two still wakes it.
        notified.as_mut().enable();
        if !self.is_lost() {
            notified.await;
        }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.0.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn held_until(&self) -> Instant {
        self.times().held_until
    }

    pub(super) fn renew_at(&self) -> Instant {
        self.times().renew_at
    }

    /// A renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant, lease: Duration) {
        *self.times() = Times {
            held_until: later(sent, lease),
            renew_at: later(sent, lease / 3),
        };
    }

    /// A renewal failed without an answer; try again at `at`.
    pub(super) fn retry_renewal_at(&self, at: Instant) {
        self.times().renew_at = at;
    }

    pub(crate) fn mark_lost(&self, why: &str) {
        if !self.0.lost.swap(true, Ordering::AcqRel) {
            self.0.lost_wake.notify_waiters();
            record_lease_lost();
            tracing::error!(why, "a running request lost its idempotency claim");
        }
    }
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lease")
            .field("lost", &self.is_lost())
            .finish_non_exhaustive()
    }
}

/// `from + by`, or a year from `from` where that does not fit the clock.
fn later(from: Instant, by: Duration) -> Instant {
    from.checked_add(by)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365))
}
