//! One keyed request's journey through the layer.
//!
//! ```text
//! read body (limit → 413) → fingerprint → id = H(scope, key) → store.claim
//!   Acquired  → execute: run the inner service (lease renewed from a task of its own,
//!               detached from the caller if it disconnects), then record the outcome:
//!               complete (retried; a small "ran, not kept" record when the response does
//!               not fit) or release, and only then answer
//!   InFlight  → other fingerprint ? 422 : wait-and-retry the claim, or 409
//!   Completed → other fingerprint ? 422 : replay with Idempotent-Replayed: true
//!   error     → fail closed (503) or open (run without deduplication)
//! ```
//! The store is always updated *before* the caller gets its answer, so a retry that follows
//! a response always finds the record; and once the handler has run, its key is never freed
//! because its response could not be stored.
//!
//! Files by role: `answer` (the answers the layer gives itself: problems, replays), `claim`
//! (a claim whose caller leaves is finished, and its key released),
//! `execute` (running the handler, detaching, panics), `keeper` (the task renewing running
//! claims), `lease` (the handler's [`Lease`](crate::Lease)), `buffer` (reading the response
//! to store it), `gather` (a body's frames in one buffer), `outcome` (complete / release
//! with retries).

pub(crate) mod answer;
pub(crate) mod buffer;
mod claim;
pub(crate) mod execute;
mod gather;
mod keeper;
pub(crate) mod lease;
mod outcome;
pub(crate) mod wait;

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tokio::time::Instant;
use tower::{Service, ServiceExt};

pub(crate) use self::{answer::reject, keeper::LeaseKeeper};
use self::{
    claim::{ClaimToAnswer, NotStarted},
    gather::Gathered,
    wait::InFlightWait,
};
use crate::{
    Fingerprint,
    body::{RequestBody, ResponseBody},
    layer::{Config, StoreFailurePolicy},
    metrics::{Outcome, StoreCall, record_outcome, timed_from},
    problem::ProblemKind,
    service::Keyed,
    store::{Claim, IdempotencyStore, RecordId, StoreErrorKind},
};

pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// One keyed request's future. A plain function returning an `async` block, as are the
/// other large steps here: an `async fn` keeps a second copy of its arguments in its future,
/// and this future is allocated once per request; values are moved, where they can be, in
/// the expression that uses them, never through a binding that stays in the future.
// Not an `async fn` on purpose (see the docs above).
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    inner: S,
    Keyed {
        parts,
        body,
        key,
        scope,
    }: Keyed<ReqBody>,
) -> impl Future<Output = Answer<ResBody, S::Error>> + Send + 'static
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    async move {
        let body = match read_body(body, config.max_request_body).await {
            Ok(body) => body,
            Err(kind) => return Ok(reject(&config, kind)),
        };
        let fingerprint = Fingerprint::of_parts(&parts, &body);
        let id = RecordId::new(scope.as_bytes(), &key);
        tracing::Span::current().record("record", tracing::field::debug(&id));
        let mut wait = InFlightWait::new(config.in_flight);
        loop {
            // The store starts the lease when it writes the claim, after this: timing it from
            // here never overestimates what is left.
            let sent = Instant::now();
            let (claimed, answered) = timed_from(
                StoreCall::Claim,
                sent,
                ClaimToAnswer::new(&config, id, fingerprint),
            )
            .await;
            match claimed {
                Ok(Claim::Acquired(token)) => {
                    tracing::debug!("claimed; executing");
                    let not_started = NotStarted::new(&config, id, token);
                    let Some(lease) =
                        execute::fresh_lease(&config, &id, token, sent, answered).await
                    else {
                        not_started.disarm(); // released already
                        return Ok(reject(&config, ProblemKind::StoreUnavailable));
                    };
                    return execute::execute(
                        config,
                        inner,
                        Request::from_parts(parts, RequestBody::buffered(body)),
                        key,
                        (id, token),
                        lease,
                        not_started,
                    )
                    .await;
                }
                Ok(Claim::Completed(record)) => {
                    if record.fingerprint != fingerprint {
                        tracing::debug!("key reused for a different request");
                        return Ok(reject(&config, ProblemKind::KeyReused));
                    }
                    tracing::debug!("replaying the stored response");
                    return Ok(answer::replay(&config, &record.response));
                }
                Ok(Claim::InFlight { fingerprint: other }) => {
                    if other != fingerprint {
                        tracing::debug!("key reused for a different request");
                        return Ok(reject(&config, ProblemKind::KeyReused));
                    }
                    if !wait.pause().await {
                        return Ok(reject(&config, ProblemKind::KeyInUse));
                    }
                }
                Err(error) => {
                    let kind = match error.kind() {
                        StoreErrorKind::CapacityExhausted => ProblemKind::StoreFull,
                        _ => ProblemKind::StoreUnavailable,
                    };
                    // Failing open is for a store that is down or full, never for one that is
                    // misconfigured or holds records it cannot read: those are refused.
                    let transient = matches!(
                        error.kind(),
                        StoreErrorKind::Unavailable | StoreErrorKind::CapacityExhausted
                    );
                    if transient {
                        tracing::warn!(%error, "idempotency store failed");
                    } else {
                        tracing::error!(%error, "idempotency store misconfigured or corrupt; refusing the request");
                    }
                    return match config.on_store_failure {
                        StoreFailurePolicy::FailOpen if transient => {
                            record_outcome(Outcome::StoreError);
                            let mut request =
                                Request::from_parts(parts, RequestBody::buffered(body));
                            request.extensions_mut().insert(key);
                            // Boxed: this rare path would otherwise size every request's future.
                            let response = Box::pin(inner.oneshot(request)).await?;
                            Ok(response.map(ResponseBody::inner))
                        }
                        _ => Ok(reject(&config, kind)),
                    };
                }
            }
        }
    }
}

/// The span every keyed request runs in; `record` (its id) is filled in once known.
pub(crate) fn span() -> tracing::Span {
    tracing::debug_span!("idempotency", record = tracing::field::Empty)
}

/// Reads the whole request body, up to `limit` bytes, to fingerprint it.
pub(crate) async fn read_body<B>(body: B, limit: usize) -> Result<Bytes, ProblemKind>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if body.size_hint().lower() > limit as u64 {
        return Err(ProblemKind::RequestTooLarge);
    }
    let mut body = std::pin::pin!(Limited::new(body, limit));
    let mut gathered = Gathered::default();
    while let Some(frame) = body.frame().await {
        match frame {
            // Trailers of a request do not count: they are not fingerprinted.
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    gathered.push(data);
                }
            }
            Err(error) if error.is::<LengthLimitError>() => {
                return Err(ProblemKind::RequestTooLarge);
            }
            Err(_) => return Err(ProblemKind::RequestUnreadable),
        }
    }
    Ok(gathered.into_bytes())
}
