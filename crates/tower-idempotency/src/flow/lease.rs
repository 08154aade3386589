//! Keeping the claim while the handler runs, and telling the handler if it was lost.

use std::{
    fmt,
    sync::{Arc, Mutex},
    task::Poll,
    time::Duration,
};

use tokio::time::Instant;
use tokio_util::{sync::CancellationToken, task::AbortOnDropHandle};

use crate::{
    layer::Config,
    metrics::{record_lease_lost, timed},
    store::{FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

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
    lost: CancellationToken,
    /// When the claim ends unless renewed again, by the layer's clock.
    held_until: Mutex<Instant>,
}

impl Lease {
    pub(crate) fn new(lease: Duration) -> Self {
        Self(Arc::new(State {
            lost: CancellationToken::new(),
            held_until: Mutex::new(deadline(Instant::now(), lease)),
        }))
    }

    /// Whether the claim was lost: another request may be running with this key.
    pub fn is_lost(&self) -> bool {
        self.0.lost.is_cancelled()
    }

    /// Resolves when the claim is lost (never, if the handler keeps it to the end).
    pub async fn lost(&self) {
        self.0.lost.cancelled().await;
    }

    pub(crate) fn held_until(&self) -> Instant {
        *self.0.held_until.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn renewed(&self, until: Instant) {
        *self.0.held_until.lock().unwrap_or_else(|e| e.into_inner()) = until;
    }

    pub(crate) fn mark_lost(&self, why: &str) {
        if !self.0.lost.is_cancelled() {
            self.0.lost.cancel();
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

fn deadline(from: Instant, lease: Duration) -> Instant {
    from.checked_add(lease)
        .unwrap_or_else(|| from + Duration::from_secs(86_400 * 365))
}

/// Drives `work` while a task of its own renews the lease every third of its length, so a
/// handler that blocks its thread or hogs its task cannot starve the renewal (on a runtime
/// with more than one worker).
pub(super) async fn renew_while<St, T>(
    config: &Arc<Config<St>>,
    id: &RecordId,
    token: FencingToken,
    lease: &Lease,
    work: impl Future<Output = T>,
) -> T
where
    St: IdempotencyStore,
{
    let mut work = std::pin::pin!(work);
    // Many handlers finish on their first poll; they need no renewal task.
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if let Poll::Ready(output) = first_poll {
        return output;
    }
    let renewer = AbortOnDropHandle::new(tokio::spawn(renew(
        Arc::clone(config),
        *id,
        token,
        lease.clone(),
    )));
    let output = work.await;
    drop(renewer);
    output
}

async fn renew<St: IdempotencyStore>(
    config: Arc<Config<St>>,
    id: RecordId,
    token: FencingToken,
    lease: Lease,
) {
    let period = config.lease / 3;
    let mut next = Instant::now() + period;
    loop {
        tokio::time::sleep_until(next).await;
        let sent = Instant::now();
        match timed("renew", config.store.renew(&id, token, config.lease)).await {
            Ok(()) => {
                lease.renewed(deadline(sent, config.lease));
                next = sent + period;
            }
            Err(error) if error.kind() == StoreErrorKind::LeaseLost => {
                lease.mark_lost("the store refused to renew the claim");
                return;
            }
            Err(error) => {
                let now = Instant::now();
                if now >= lease.held_until() {
                    lease.mark_lost("no renewal succeeded for a whole lease");
                    return;
                }
                tracing::warn!(%error, "could not renew the lease of a running request; retrying");
                next = (now + period / 4).min(lease.held_until());
            }
        }
    }
}
