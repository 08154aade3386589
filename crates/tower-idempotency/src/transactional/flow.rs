//! One request's journey in transactional mode.
//!
//! ```text
//! keyed:   read body (limit → 413) → fingerprint → lookup (read only)
//!            Completed → other fingerprint ? 422 : replay
//!            none      → BEGIN + claim
//!              InFlight  → wait (no connection held) and look again, or 409
//!              Completed → as above
//!              Claimed   → run the handler with the transaction lent, then
//!                            kept response → write the record, COMMIT, answer
//!                                            (conflict → answer as a retry would)
//!                            otherwise     → ROLLBACK, answer
//! unkeyed: BEGIN → run the handler → 2xx/3xx ? COMMIT : ROLLBACK → answer
//! ```
//! Nothing outlives the transaction: a crash anywhere leaves no claim behind.

use std::sync::{Arc, atomic::AtomicBool};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Service, ServiceExt};
use tracing::Instrument;

use super::{
    Lent, Transactional,
    store::{Begun, CommitError, NewRecord, TransactionalStore},
};
use crate::{
    Fingerprint,
    body::{RequestBody, ResponseBody},
    flow::{
        Answer,
        answer::{problem_response, reject, replay},
        buffer::{Finished, finish_response},
        execute::{DetachOnDrop, Panicked},
        read_body,
        wait::InFlightWait,
    },
    layer::Config,
    metrics::{Outcome, StoreCall, record_outcome, timed},
    problem::ProblemKind,
    service::Keyed,
    store::{CompletedRecord, RecordId, StoreError, StoreErrorKind},
};

type TxConfig<T> = Config<Transactional<T>>;

/// A keyed request: executed in a transaction that commits its record, or replayed.
pub(crate) async fn run_keyed<S, T, ReqBody, ResBody>(
    config: Arc<TxConfig<T>>,
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
    T: TransactionalStore,
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
    let span = tracing::debug_span!("idempotency", record = ?id, mode = "transactional");
    async move {
        let store = &config.store.0;
        let mut wait = InFlightWait::new(config.in_flight);
        loop {
            match timed(StoreCall::Lookup, store.lookup(&id)).await {
                Ok(Some(record)) => return Ok(answer_completed(&config, &record, &fingerprint)),
                Ok(None) => {}
                Err(error) => return Ok(store_failed(&config, &error)),
            }
            match timed(
                StoreCall::Claim,
                store.claim(&id, config.transaction_timeout),
            )
            .await
            {
                Ok(Begun::Claimed(transaction)) => {
                    tracing::debug!("claimed in a transaction; executing");
                    let mut request = Request::from_parts(parts, RequestBody::buffered(body));
                    request.extensions_mut().insert(key);
                    let record = Some((id, fingerprint));
                    return execute(config, inner, request, transaction, record).await;
                }
                Ok(Begun::Completed(record)) => {
                    return Ok(answer_completed(&config, &record, &fingerprint));
                }
                Ok(Begun::InFlight) => {
                    if !wait.pause().await {
                        return Ok(reject(&config, ProblemKind::KeyInUse));
                    }
                }
                Err(error) => return Ok(store_failed(&config, &error)),
            }
        }
    }
    .instrument(span)
    .await
}

/// A request without a key: run in a transaction of its own, committed for a 2xx or 3xx.
pub(crate) async fn run_unkeyed<S, T, ReqBody, ResBody>(
    config: Arc<TxConfig<T>>,
    inner: S,
    request: Request<ReqBody>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: TransactionalStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    match config.store.0.begin(config.transaction_timeout).await {
        Ok(transaction) => {
            let request = request.map(RequestBody::streaming);
            execute(config, inner, request, transaction, None).await
        }
        Err(error) => {
            tracing::warn!(%error, "cannot begin the request's transaction");
            Ok(problem_response(&config, ProblemKind::StoreUnavailable))
        }
    }
}

/// Runs the handler with `transaction` lent to it, then commits (with the record, for a
/// keyed request whose response is kept) or rolls back, and only then answers. If the caller
/// goes away, the work moves to a task of its own and still ends in a commit or a rollback:
/// a client that gives up on a slow request finds its result on the retry.
async fn execute<S, T, ReqBody, ResBody>(
    config: Arc<TxConfig<T>>,
    inner: S,
    mut request: Request<RequestBody<ReqBody>>,
    transaction: T::Transaction,
    record: Option<(RecordId, Fingerprint)>,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: TransactionalStore,
    ReqBody: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    let lent = Lent::new(transaction);
    request.extensions_mut().insert(lent.clone());
    let running = config.tasks.start();
    let work_config = Arc::clone(&config);
    let work = async move {
        let _running = running;
        let config = work_config;
        let store = &config.store.0;
        let handled = tokio::time::timeout(config.transaction_timeout, inner.oneshot(request));
        let response = match handled.await {
            Ok(Ok(response)) => response,
            Ok(Err(error)) => {
                roll_back(store, &lent).await;
                return Err(error);
            }
            Err(_) => {
                tracing::warn!(timeout = ?config.transaction_timeout, "the handler ran past its transaction's time limit; rolling back");
                roll_back(store, &lent).await;
                return Ok(reject(&config, ProblemKind::HandlerTimedOut));
            }
        };
        let Some(transaction) = lent.reclaim() else {
            tracing::error!(
                "the handler still holds its transaction after returning; it will roll back"
            );
            return Ok(reject(&config, ProblemKind::HandlerFailed));
        };
        let Some((id, fingerprint)) = record else {
            return Ok(finish_unkeyed(&config, transaction, response).await);
        };
        record_outcome(Outcome::Executed);
        let (record, response) = match finish_response(&config, response).await {
            Finished::Store {
                record, response, ..
            } => (record, response),
            Finished::Release { response } => {
                store.rollback(transaction).await;
                return Ok(response);
            }
        };
        let new = NewRecord {
            id: &id,
            fingerprint: &fingerprint,
            response: record,
            ttl: config.ttl,
        };
        match timed(StoreCall::Commit, store.commit(transaction, Some(new))).await {
            Ok(()) => Ok(response),
            Err(CommitError::Conflict) => {
                // Another transaction committed this key first: ours rolled back. Answer as
                // the retry this request now is.
                tracing::warn!(
                    "another request committed this key first; answering from its record"
                );
                Ok(match store.lookup(&id).await {
                    Ok(Some(record)) => answer_completed(&config, &record, &fingerprint),
                    _ => reject(&config, ProblemKind::TransactionFailed),
                })
            }
            Err(CommitError::Failed(error)) => {
                tracing::warn!(%error, "the request's transaction did not commit");
                Ok(reject(&config, ProblemKind::TransactionFailed))
            }
            Err(CommitError::Unknown(error)) => {
                tracing::error!(%error, "the connection broke during COMMIT; outcome unknown");
                Ok(reject(&config, ProblemKind::OutcomeUnknown))
            }
        }
    };
    let detached = Arc::new(AtomicBool::new(false));
    match DetachOnDrop::new(work, detached).await {
        Ok(answer) => answer,
        // The work, and the transaction with it, is dropped: rolled back.
        Err(Panicked) => {
            tracing::error!("the request handler panicked; its transaction rolls back");
            Ok(reject(&config, ProblemKind::HandlerFailed))
        }
    }
}

async fn finish_unkeyed<T, B>(
    config: &TxConfig<T>,
    transaction: T::Transaction,
    response: Response<B>,
) -> Response<ResponseBody<B>>
where
    T: TransactionalStore,
{
    let store = &config.store.0;
    if !(config.store_status)(response.status()) {
        store.rollback(transaction).await;
        return response.map(ResponseBody::inner);
    }
    match store.commit(transaction, None).await {
        Ok(()) => response.map(ResponseBody::inner),
        Err(CommitError::Unknown(error)) => {
            tracing::error!(%error, "the connection broke during COMMIT; outcome unknown");
            problem_response(config, ProblemKind::OutcomeUnknown)
        }
        Err(error) => {
            tracing::warn!(%error, "the request's transaction did not commit");
            problem_response(config, ProblemKind::TransactionFailed)
        }
    }
}

async fn roll_back<T: TransactionalStore>(store: &T, lent: &Lent<T::Transaction>) {
    if let Some(transaction) = lent.reclaim() {
        store.rollback(transaction).await;
    }
}

fn answer_completed<T, B>(
    config: &TxConfig<T>,
    record: &CompletedRecord,
    fingerprint: &Fingerprint,
) -> Response<ResponseBody<B>> {
    if record.fingerprint != *fingerprint {
        tracing::debug!("key reused for a different request");
        return reject(config, ProblemKind::KeyReused);
    }
    tracing::debug!("replaying the stored response");
    replay(config, &record.response)
}

fn store_failed<T, B>(config: &TxConfig<T>, error: &StoreError) -> Response<ResponseBody<B>> {
    if error.kind() == StoreErrorKind::Unavailable {
        tracing::warn!(%error, "the database failed");
    } else {
        tracing::error!(%error, "the database refused the idempotency statements");
    }
    reject(config, ProblemKind::StoreUnavailable)
}
