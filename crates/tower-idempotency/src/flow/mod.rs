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
//! to store it), `outcome` (complete / release with retries).

pub(crate) mod answer;
pub(crate) mod buffer;
mod claim;
pub(crate) mod execute;
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
use tracing::Instrument;

pub(crate) use self::{answer::reject, keeper::LeaseKeeper};
use self::{
    claim::{ClaimToAnswer, NotStarted},
    wait::InFlightWait,
};
use crate::{
    Fingerprint,
    body::{RequestBody, ResponseBody},
    layer::{Config, StoreFailurePolicy},
    metrics::{Outcome, record_outcome, timed},
    problem::ProblemKind,
    service::Keyed,
    store::{Claim, IdempotencyStore, RecordId, StoreErrorKind},
};

pub(crate) type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

pub(crate) async fn run<S, St, ReqBody, ResBody>(
    config: Arc<Config<St>>,
    inner: S,
    Keyed {
        parts,
        body,
        key,
        scope,
    }: Keyed<ReqBody>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let body = match read_body(body, config.max_request_body).await {
        Ok(body) => body,
        Err(kind) => return Ok(reject(&config, kind)),
    };
    let fingerprint = Fingerprint::of_parts(&parts, &body);
    let id = RecordId::new(scope.as_bytes(), &key);
    let span = tracing::debug_span!("idempotency", record = ?id);
    async move {
        let mut wait = InFlightWait::new(config.in_flight);
        loop {
            // The store starts the lease when it writes the claim, after this: timing it from
            // here never overestimates what is left.
            let sent = Instant::now();
            let claim = timed("claim", ClaimToAnswer::new(&config, id, fingerprint)).await;
            match claim {
                Ok(Claim::Acquired(token)) => {
                    tracing::debug!("claimed; executing");
                    let not_started = NotStarted::new(&config, id, token);
                    let Some(lease) = execute::fresh_lease(&config, &id, token, sent).await else {
                        not_started.disarm(); // released already
                        return Ok(reject(&config, ProblemKind::StoreUnavailable));
                    };
                    let request = Request::from_parts(parts, RequestBody::buffered(body));
                    return execute::execute(config, inner, request, key, (id, token), lease, not_started)
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
                            let response = inner.oneshot(request).await?;
                            Ok(response.map(ResponseBody::inner))
                        }
                        _ => Ok(reject(&config, kind)),
                    };
                }
            }
        }
    }
    .instrument(span)
    .await
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
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(ProblemKind::RequestTooLarge),
        Err(_) => Err(ProblemKind::RequestUnreadable),
    }
}
