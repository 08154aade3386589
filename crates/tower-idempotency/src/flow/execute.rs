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
    metrics::{StoreCall, timed},
    problem::ProblemKind,
    store::{FencingToken, IdempotencyStore, RecordId},
};

/// The lease of a claim sent at `sent` that answered at `answered`. A claim that came back late (a slow store, a long
/// queue) may have little of its lease left: it is renewed before the handler starts, and if
/// that fails nothing runs (`None`; the key is released where that is still possible).
pub(super) async fn fresh_lease<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    sent: Instant,
    answered: Instant,
) -> Option<Lease> {
    let lease = Lease::starting_at(sent, config.lease);
    let left = lease.held_until().saturating_duration_since(answered);
    if left >= config.lease / 2 {
        return Some(lease);
    }
    // Boxed: rare, and a store's futures may be large (they would size every request's).
    Box::pin(renew_late(config, id, token, lease, left)).await
}

async fn renew_late<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    lease: Lease,
    left: std::time::Duration,
) -> Option<Lease> {
    let renewed_at = Instant::now();
    match timed(
        StoreCall::Renew,
        config.store.renew(id, token, config.lease),
    )
    .await
    {
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
///
/// The work is built (and the key handed over to it) at once, outside the `async` block: see
/// [`run`](super::run) for why.
pub(super) fn execute<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    inner: S,
    request: Request<RequestBody<ReqBody>>,
    key: IdempotencyKey,
    (id, token): (RecordId, FencingToken),
    lease: Lease,
    not_started: NotStarted<St>,
) -> impl Future<Output = Answer<ResBody, S::Error>> + Send + 'static
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let work = handler_work(&config, inner, request, key, (id, token), &lease);
    // From here on, the work runs to its end even if the caller leaves (dropped unpolled,
    // the work detaches too).
    not_started.disarm();
    async move {
        match work.await {
            Ok(answer) => answer,
            Err(Panicked) => {
                // Free the key before saying so: a client retrying at once must find it free.
                tracing::error!("the request handler panicked; releasing its idempotency key");
                lease.finish(); // a renewal refused after the release is no loss
                Box::pin(release(&config, &id, token)).await; // boxed: rare
                Ok(reject(&config, ProblemKind::HandlerFailed))
            }
        }
    }
}

/// The handler's run and its recording, boxed in a [`DetachOnDrop`]. Built outside any
/// `async` body on purpose: the unboxed work would otherwise take room in the caller's
/// future too, which the compiler keeps for moved-from locals.
fn handler_work<S, St, ReqBody, ResBody>(
    config: &Arc<Config<St>>,
    inner: S,
    mut request: Request<RequestBody<ReqBody>>,
    key: IdempotencyKey,
    (id, token): (RecordId, FencingToken),
    lease: &Lease,
) -> DetachOnDrop<
    impl Future<Output = Answer<ResBody, S::Error>> + Send + use<S, St, ReqBody, ResBody>,
>
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
    // It also holds what the work needs to know of its claim: one copy in the work.
    let guard = ReleaseIfDetachedPanic {
        config: Arc::clone(config),
        detached: Arc::clone(&detached),
        id,
        token,
        armed: true,
    };
    let running = config.tasks.start();
    // Boxed on its own: moved into the work, the request would take its room in it twice (as
    // captured and as awaited), and the work then outgrows the allocator's fast path for
    // small blocks (glibc's thread cache ends at 1 KiB), which costs more than a second box.
    let call = Box::pin(inner.oneshot(request));
    let lease = lease.clone();
    let task = async move {
        let _running = running;
        let (config, id, token) = (&guard.config, &guard.id, guard.token);
        // Before the first poll: a handler may block from its very start.
        let mut renewal = config.leases.register(config, *id, token, &lease);
        renewal.settle().await;
        // No `let` for what the handler returned: a binding would keep its room in this
        // future while `record` holds the value too.
        let answer = record(config, id, token, &lease, {
            let finished = match call.await {
                Ok(response) => Ok(finish_response(config, response).await),
                Err(error) => Err(error),
            };
            lease.finish();
            finished
        })
        .await;
        drop(renewal);
        guard.disarm();
        answer
    };
    DetachOnDrop::new(task, detached)
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
    /// The span the work runs in, in place or detached (kept here, out of the box).
    span: tracing::Span,
}

impl<F: Future + Send + 'static> DetachOnDrop<F> {
    /// `work`, polled in place in the current span; `detached` is set if it moves to a task
    /// of its own.
    pub(crate) fn new(work: F, detached: Arc<AtomicBool>) -> Self {
        Self {
            work: Some(Box::pin(work)),
            detached,
            span: tracing::Span::current(),
        }
    }
}

impl<F: Future + Send + 'static> Future for DetachOnDrop<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let Some(work) = this.work.as_mut() else {
            return Poll::Pending; // polled after completion: never resolves again
        };
        // A panicking handler must not take the connection down with it: catch it here, as
        // a task boundary would.
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                this.work = None;
                Poll::Ready(Ok(output))
            }
            Err(_) => {
                this.work = None; // drop the half-run work; the caller releases the key
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
            Ok(runtime) => {
                let work = async move { drop(work.await) };
                drop(runtime.spawn(work.instrument(self.span.clone())));
            }
            Err(_) => tracing::error!("no runtime to finish a detached request on"),
        }
    }
}

/// Frees the key if detached work unwinds (a panic in the handler after its client left),
/// so the next retry need not wait for the lease to run out. In the caller's task the panic
/// is answered by [`execute`], which releases first.
struct ReleaseIfDetachedPanic<St: IdempotencyStore> {
    config: Arc<Config<St>>,
    detached: Arc<AtomicBool>,
    id: RecordId,
    token: FencingToken,
    armed: bool,
}

impl<St: IdempotencyStore> ReleaseIfDetachedPanic<St> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl<St: IdempotencyStore> Drop for ReleaseIfDetachedPanic<St> {
    fn drop(&mut self) {
        if !self.armed || !self.detached.load(Ordering::Acquire) {
            return;
        }
        let (config, id, token) = (Arc::clone(&self.config), self.id, self.token);
        tracing::error!("a detached request handler panicked; releasing its idempotency key");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&config, &id, token).await });
        }
    }
}
