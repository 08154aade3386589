//! One keyed request's journey through the layer.
//!
//! ```text
//! read body (limit → 413) → fingerprint → id = H(scope, key) → store.claim
//!   Acquired  → run the inner service to completion, detached from the caller if it
//!               disconnects (lease renewed), then
//!               store the response (complete) or free the key (release), then answer
//!   InFlight  → other fingerprint ? 422 : wait-and-retry the claim, or 409
//!   Completed → other fingerprint ? 422 : replay with Idempotent-Replayed: true
//!   error     → fail closed (503) or open (run without deduplication)
//! ```
//! The store is always updated *before* the caller gets its answer, so a retry that follows
//! a response always finds the record.

use std::{
    collections::VecDeque,
    panic::AssertUnwindSafe,
    pin::Pin,
    sync::Arc,
    task::Poll,
    time::{Duration, Instant},
};

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Request, Response, header, request::Parts};
use http_body::Body;
use http_body_util::BodyExt;
use tower::Service;
use tracing::Instrument;

use crate::{
    Fingerprint, IdempotencyKey, Scope,
    body::{RequestBody, ResponseBody},
    key::IDEMPOTENT_REPLAYED,
    layer::{Config, InFlightPolicy, StoreFailurePolicy},
    metrics::{Outcome, record_outcome, timed},
    policy::{forbids_storing, replayable_headers},
    problem::{Problem, ProblemKind},
    record::{BodyKept, StoredResponse},
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// The answer to a refused request: the configured responder's, or problem+json.
pub(crate) fn reject<St, B>(config: &Config<St>, kind: ProblemKind) -> Response<ResponseBody<B>> {
    record_outcome(outcome_of(kind));
    problem_response(config, kind)
}

fn problem_response<St, B>(config: &Config<St>, kind: ProblemKind) -> Response<ResponseBody<B>> {
    let retry_after = match kind {
        ProblemKind::KeyInUse => Some(match config.in_flight {
            InFlightPolicy::Reject { retry_after } | InFlightPolicy::Wait { retry_after, .. } => {
                retry_after
            }
        }),
        ProblemKind::StoreUnavailable | ProblemKind::StoreFull => {
            Some(match config.on_store_failure {
                StoreFailurePolicy::FailClosed { retry_after } => retry_after,
                StoreFailurePolicy::FailOpen => Duration::from_secs(1),
            })
        }
        _ => None,
    };
    let problem = Problem::new(kind, &config.problem_type_base, retry_after);
    let response = match &config.responder {
        Some(responder) => responder(&problem),
        None => problem.to_response(),
    };
    response.map(ResponseBody::full)
}

fn outcome_of(kind: ProblemKind) -> Outcome {
    match kind {
        ProblemKind::KeyInUse => Outcome::Conflict,
        ProblemKind::KeyReused => Outcome::Mismatch,
        ProblemKind::StoreUnavailable | ProblemKind::StoreFull => Outcome::StoreError,
        ProblemKind::ResponseNotKept | ProblemKind::RecordCorrupt => Outcome::Replayed,
        _ => Outcome::Rejected,
    }
}

pub(crate) async fn run<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    inner: S,
    parts: Parts,
    body: ReqBody,
    key: IdempotencyKey,
    scope: Scope,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let body = match read_limited(body, config.max_request_body).await {
        Ok(body) => body,
        Err(ReadError::TooLarge) => return Ok(reject(&config, ProblemKind::RequestTooLarge)),
        Err(ReadError::Unreadable) => return Ok(reject(&config, ProblemKind::RequestUnreadable)),
    };
    let fingerprint = Fingerprint::of_request(&parts.method, &parts.uri, &parts.headers, &body);
    let id = RecordId::new(scope.as_bytes(), &key);
    let span = tracing::debug_span!("idempotency", record = ?id);
    async move {
        let wait_until = match config.in_flight {
            InFlightPolicy::Wait { timeout, .. } => Some(Instant::now() + timeout),
            InFlightPolicy::Reject { .. } => None,
        };
        let mut poll_interval = Duration::from_millis(10);
        loop {
            let claim = timed("claim", config.store.claim(&id, &fingerprint, config.lease)).await;
            match claim {
                Ok(Claim::Acquired(token)) => {
                    tracing::debug!("claimed; executing");
                    let request = Request::from_parts(parts, RequestBody::buffered(body));
                    return execute(config, inner, request, key, id, token).await;
                }
                Ok(Claim::Completed(record)) => {
                    if record.fingerprint != fingerprint {
                        tracing::debug!("key reused for a different request");
                        return Ok(reject(&config, ProblemKind::KeyReused));
                    }
                    tracing::debug!("replaying the stored response");
                    return Ok(replay(&config, &record.response));
                }
                Ok(Claim::InFlight { fingerprint: other }) => {
                    if other != fingerprint {
                        tracing::debug!("key reused for a different request");
                        return Ok(reject(&config, ProblemKind::KeyReused));
                    }
                    match wait_until {
                        Some(deadline) if Instant::now() + poll_interval < deadline => {
                            tokio::time::sleep(poll_interval).await;
                            poll_interval = (poll_interval * 2).min(Duration::from_millis(250));
                        }
                        _ => return Ok(reject(&config, ProblemKind::KeyInUse)),
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "idempotency store failed");
                    let kind = match error.kind() {
                        StoreErrorKind::CapacityExhausted => ProblemKind::StoreFull,
                        _ => ProblemKind::StoreUnavailable,
                    };
                    return match config.on_store_failure {
                        StoreFailurePolicy::FailClosed { .. } => Ok(reject(&config, kind)),
                        StoreFailurePolicy::FailOpen => {
                            record_outcome(Outcome::StoreError);
                            let mut request =
                                Request::from_parts(parts, RequestBody::buffered(body));
                            request.extensions_mut().insert(key);
                            let mut inner = inner;
                            let response = inner.call(request).await?;
                            Ok(response.map(ResponseBody::inner))
                        }
                    };
                }
            }
        }
    }
    .instrument(span)
    .await
}

/// Runs the inner service to completion and stores (or releases) its outcome, even if the
/// caller goes away: the work is polled in the caller's task, and moved to a task of its own
/// only if the caller's future is dropped first (the client disconnected).
async fn execute<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    mut inner: S,
    mut request: Request<RequestBody<ReqBody>>,
    key: IdempotencyKey,
    id: RecordId,
    token: FencingToken,
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
    let task_config = Arc::clone(&config);
    let running = config.tasks.start();
    let task = async move {
        let _running = running;
        let config = task_config;
        let guard = ReleaseOnDrop {
            config: Some(Arc::clone(&config)),
            id,
            token,
        };
        let work = async {
            let response = inner.call(request).await?;
            Ok(finish_response(&config, response).await)
        };
        let outcome = renew_while(&config, &id, token, work).await;
        let answer = match outcome {
            Ok(Finished::Store { record, response }) => {
                let result = timed(
                    "complete",
                    config.store.complete(&id, token, record, config.ttl),
                )
                .await;
                if let Err(error) = result {
                    tracing::warn!(%error, "could not store the response; releasing the key");
                    let _ = timed("release", config.store.release(&id, token)).await;
                }
                Ok(response)
            }
            Ok(Finished::Release { response }) => {
                if let Err(error) = timed("release", config.store.release(&id, token)).await {
                    tracing::warn!(%error, "could not release the key");
                }
                Ok(response)
            }
            Err(error) => {
                if let Err(error) = timed("release", config.store.release(&id, token)).await {
                    tracing::warn!(%error, "could not release the key");
                }
                Err(error)
            }
        };
        guard.disarm();
        record_outcome(Outcome::Executed);
        answer
    };
    match DetachOnDrop::new(task.in_current_span()).await {
        Ok(answer) => answer,
        // The handler panicked; dropping its future released the key.
        Err(Panicked) => Ok(reject(&config, ProblemKind::HandlerFailed)),
    }
}

/// The work panicked while polled in the caller's task.
struct Panicked;

/// Polls `work` in place, and spawns it to run to completion if dropped before it finishes.
///
/// Running in place spares a task spawn and a channel per request; detaching on drop keeps
/// the guarantee that a started request always finishes and stores its outcome.
struct DetachOnDrop<F: Future + Send + 'static> {
    work: Option<Pin<Box<F>>>,
}

impl<F: Future + Send + 'static> DetachOnDrop<F> {
    fn new(work: F) -> Self {
        Self {
            work: Some(Box::pin(work)),
        }
    }
}

impl<F: Future + Send + 'static> Future for DetachOnDrop<F> {
    type Output = Result<F::Output, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        let Some(work) = self.work.as_mut() else {
            return Poll::Pending; // polled after completion: never resolves again
        };
        // A panicking handler must not take the connection down with it: catch it here, as
        // the task boundary did when the handler ran on a task of its own.
        match std::panic::catch_unwind(AssertUnwindSafe(|| work.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(output)) => {
                self.work = None;
                Poll::Ready(Ok(output))
            }
            Err(_) => {
                // Dropping the half-run work runs its guards: the key is released.
                self.work = None;
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
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                // Nobody is left to hear the answer; what matters is that it is stored. A panic
                // there ends the task, and the work's guards release the key.
                runtime.spawn(async move {
                    drop(work.await);
                });
            }
            Err(_) => tracing::error!("no runtime to finish a detached request on"),
        }
    }
}

/// What to do with the store once the handler's response is in.
enum Finished<B> {
    Store {
        record: Bytes,
        response: Response<ResponseBody<B>>,
    },
    Release {
        response: Response<ResponseBody<B>>,
    },
}

async fn finish_response<St, B>(config: &Config<St>, response: Response<B>) -> Finished<B>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = response.into_parts();
    if !(config.store_status)(parts.status) || forbids_storing(&parts.headers) {
        return Finished::Release {
            response: Response::from_parts(parts, ResponseBody::inner(body)),
        };
    }
    let stored = |body: Bytes, kept: BodyKept| {
        StoredResponse {
            status: parts.status,
            headers: replayable_headers(&parts.headers),
            body,
            kept,
        }
        .encode()
    };
    match buffer_response(body, config.max_response_body).await {
        Buffered::Complete(bytes) => Finished::Store {
            record: stored(bytes.clone(), BodyKept::Yes),
            response: Response::from_parts(parts, ResponseBody::full(bytes)),
        },
        Buffered::TooLarge { prefix, rest } => Finished::Store {
            record: stored(Bytes::new(), BodyKept::TooLarge),
            response: Response::from_parts(parts, ResponseBody::prefixed(prefix, rest)),
        },
        // The body broke off: the caller cannot have a complete response, so neither can a
        // retry; free the key so that the request can be made again.
        Buffered::Failed { prefix } => Finished::Release {
            response: Response::from_parts(parts, ResponseBody::full(concat(prefix))),
        },
    }
}

enum Buffered<B> {
    Complete(Bytes),
    TooLarge {
        prefix: VecDeque<Bytes>,
        rest: Pin<Box<B>>,
    },
    Failed {
        prefix: VecDeque<Bytes>,
    },
}

async fn buffer_response<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    loop {
        match body.frame().await {
            None => return Buffered::Complete(concat(chunks)),
            Some(Err(_)) => return Buffered::Failed { prefix: chunks },
            Some(Ok(frame)) => {
                // Trailers are not kept; JSON APIs do not send them.
                if let Ok(data) = frame.into_data() {
                    total += data.len();
                    chunks.push_back(data);
                    if total > limit {
                        return Buffered::TooLarge {
                            prefix: chunks,
                            rest: body,
                        };
                    }
                }
            }
        }
    }
}

fn concat(mut chunks: VecDeque<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                out.extend_from_slice(&chunk);
            }
            out.freeze()
        }
    }
}

/// Drives `work` while renewing the lease every third of its length.
async fn renew_while<St, T>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    work: impl Future<Output = T>,
) -> T
where
    St: IdempotencyStore,
{
    let mut work = std::pin::pin!(work);
    // Many handlers finish on their first poll; they need no timer (registering one costs
    // more than the rest of a replay).
    let first_poll = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if let Poll::Ready(output) = first_poll {
        return output;
    }
    let period = config.lease / 3;
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                if let Err(error) = timed("renew", config.store.renew(id, token, config.lease)).await {
                    tracing::warn!(%error, "could not renew the lease of a running request");
                }
            }
        }
    }
}

/// Frees the key if the task running the handler unwinds (a panic in the handler), so the
/// client can retry instead of waiting for the lease to run out.
struct ReleaseOnDrop<St: IdempotencyStore> {
    config: Option<Arc<Config<St>>>,
    id: RecordId,
    token: FencingToken,
}

impl<St: IdempotencyStore> ReleaseOnDrop<St> {
    fn disarm(mut self) {
        self.config = None;
    }
}

impl<St: IdempotencyStore> Drop for ReleaseOnDrop<St> {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else {
            return;
        };
        let (id, token) = (self.id, self.token);
        tracing::error!("the request handler panicked; releasing its idempotency key");
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = config.store.release(&id, token).await;
            });
        }
    }
}

fn replay<St, B>(config: &Config<St>, record: &Bytes) -> Response<ResponseBody<B>> {
    let Ok(stored) = StoredResponse::decode(record) else {
        tracing::error!("a stored response could not be decoded");
        return reject(config, ProblemKind::RecordCorrupt);
    };
    let mut response = match stored.kept {
        BodyKept::Yes => {
            record_outcome(Outcome::Replayed);
            let mut response = Response::new(ResponseBody::full(stored.body));
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers;
            response
        }
        BodyKept::TooLarge => {
            let mut response = reject(config, ProblemKind::ResponseNotKept);
            // Where the first request created something, say where it is.
            if let Some(location) = stored.headers.get(header::LOCATION) {
                response
                    .headers_mut()
                    .insert(header::LOCATION, location.clone());
            }
            response
        }
    };
    response.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}

enum ReadError {
    TooLarge,
    Unreadable,
}

async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: Body<Data = Bytes>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ReadError::TooLarge);
    }
    let mut body = std::pin::pin!(body);
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > limit {
                return Err(ReadError::TooLarge);
            }
            chunks.push_back(data);
        }
    }
    Ok(concat(chunks))
}
