//! Running the handler once: in the caller's task, detached if the caller goes away, and
//! with panics turned into answers.

use std::{
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tokio::time::Instant;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::{
    Answer,
    answer::reject,
    buffer::finish_response,
    claim::NotStarted,
    lease::Lease,
    outcome::{record, release},
};
use crate::{
    IdempotencyKey,
    body::RequestBody,
    layer::Config,
    metrics::timed,
    problem::ProblemKind,
    store::{FencingToken, IdempotencyStore, RecordId},
};

/// The lease of a claim sent at `sent`. A claim that came back late (a slow store, a long
/// queue) may have little of its lease left: it is renewed before the handler starts, and if
/// that fails nothing runs (`None`; the key is released where that is still possible).
pub(super) async fn fresh_lease<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    sent: Instant,
) -> Option<Lease> {
    let lease = Lease::starting_at(sent, config.lease);
    let left = lease.held_until().saturating_duration_since(Instant::now());
    if left >= config.lease / 2 {
        return Some(lease);
    }
    let renewed_at = Instant::now();
    match timed("renew", config.store.renew(id, token, config.lease)).await {
        Ok(()) => {
            lease.renewed(renewed_at, config.lease);
            Some(lease)
        }
        Err(error) => {
            tracing::warn!(%error, ?left, "a late claim could not be renewed; running nothing");
            release(config, id, token).await;
            None
        }
    }
}

/// Runs the inner service to completion and records its outcome before answering, even if
/// the caller goes away: the work is polled in the caller's task, and moved to a task of its
/// own only if the caller's future is dropped first (the client disconnected).
pub(super) async fn execute<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    inner: S,
    mut request: Request<RequestBody<ReqBody>>,
    key: IdempotencyKey,
    (id, token): (RecordId, FencingToken),
    lease: Lease,
    not_started: NotStarted<St>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    request.extensions_mut().insert(key);
    request.extensions_mut().insert(lease.clone());
    let detached = Arc::new(AtomicBool::new(false));
    let guard = ReleaseIfDetachedPanic {
        config: Some(Arc::clone(&config)),
        detached: Arc::clone(&detached),
        id,
        token,
    };
    let running = config.tasks.start();
    let task_config = Arc::clone(&config);
    let task_lease = lease.clone();
    let task = async move {
        let _running = running;
        let config = task_config;
        // Before the first poll: a handler may block from its very start.
        let lease = task_lease;
        let mut renewal = config.leases.register(&config, id, token, &lease);
        renewal.settle().await;
        let finished = async {
            let response = inner.oneshot(request).await?;
            Ok(finish_response(&config, response).await)
        }
        .await;
        lease.finish();
        let answer = record(&config, &id, token, &lease, finished).await;
        drop(renewal);
        guard.disarm();
        answer
    };
    // From here on, the work runs to its end even if the caller leaves.
    not_started.disarm();
    match DetachOnDrop::new(task.in_current_span(), detached).await {
        Ok(answer) => answer,
        Err(Panicked) => {
            // Free the key before saying so: a client retrying at once must find it free.
            tracing::error!("the request handler panicked; releasing its idempotency key");
            lease.finish(); // a renewal refused after the release is no loss
            release(&config, &id, token).await;
            Ok(reject(&config, ProblemKind::HandlerFailed))
        }
    }
}

/// The work panicked while polled in the caller's task.
pub(crate) struct Panicked;

/// Polls `work` in place, and spawns it to run to completion if dropped before it finishes.
///
/// Running in place spares a task spawn and a channel per request; detaching on drop keeps
/// the guarantee that a started request always finishes and records its outcome.
pub(crate) struct DetachOnDrop<F: Future + Send + 'static> {
    work: Option<Pin<Box<F>>>,
    /// Set once the work runs on a task of its own: a panic there is nobody's to answer.
    detached: Arc<AtomicBool>,
}

impl<F: Future + Send + 'static> DetachOnDrop<F> {
    /// `work`, polled in place; `detached` is set if it moves to a task of its own.
    pub(crate) fn new(work: F, detached: Arc<AtomicBool>) -> Self {
        Self {
            work: Some(Box::pin(work)),
            detached,
        }
    }
}

impl<F: Future + Send + 'static> Future for DetachOnDrop<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Pending; // polled after completion: never resolves again
        };
        // A panicking handler must not take the connection down with it: catch it here, as
        // a task boundary would.
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.work = None;
                Poll::Ready(Ok(output))
            }
            Err(_) => {
                self.work = None; // drop the half-run work; the caller releases the key
                Poll::Ready(Err(Panicked))
            }
        }
    }
}

impl<F: Future + Send + 'static> Drop for DetachOnDrop<F> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        self.detached.store(true, Ordering::Release);
        match tokio::runtime::Handle::try_current() {
            // Nobody is left to hear the answer; what matters is that it is recorded.
            Ok(runtime) => drop(runtime.spawn(async move { drop(work.await) })),
            Err(_) => tracing::error!("no runtime to finish a detached request on"),
        }
    }
}

/// Frees the key if detached work unwinds (a panic in the handler after its client left),
/// so the next retry need not wait for the lease to run out. In the caller's task the panic
/// is answered by [`execute`], which releases first.
struct ReleaseIfDetachedPanic<St: IdempotencyStore> {
    config: Option<Arc<Config<St>>>,
    detached: Arc<AtomicBool>,
    id: RecordId,
    token: FencingToken,
}

impl<St: IdempotencyStore> ReleaseIfDetachedPanic<St> {
    fn disarm(mut self) {
        self.config = None;
    }
}

impl<St: IdempotencyStore> Drop for ReleaseIfDetachedPanic<St> {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else {
            return;
        };
        if !self.detached.load(Ordering::Acquire) {
            return;
        }
        let (id, token) = (self.id, self.token);
        tracing::error!("a detached request handler panicked; releasing its idempotency key");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&config, &id, token).await });
        }
    }
}
