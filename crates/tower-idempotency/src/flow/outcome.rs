//! Recording what a handler did: its response, or that the key is free again.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use tokio::time::Instant;

use super::{Answer, buffer::Finished, lease::Lease};
use crate::record::StoredResponse;
use crate::{
    layer::Config,
    metrics::{Outcome, StoreCall, record_outcome, timed},
    store::{FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

/// First pause between two attempts to store a response; it doubles up to a quarter lease.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Attempts to store a response before giving up: about 150 ms of pauses, enough for a
/// failover or a dropped connection, short enough not to hold the caller's answer long.
const COMPLETE_ATTEMPTS: u32 = 5;

/// Stores (or releases) the outcome of a handler that ran, then hands back its answer.
///
/// A plain function returning an `async` block rather than an `async fn`, whose arguments
/// the compiler keeps twice: `finished` is large. It is only borrowed until the store has
/// answered and moved out after, for the same reason.
// Not an `async fn` on purpose (see the docs above).
#[allow(clippy::manual_async_fn)]
pub(super) fn record<'a, St, B, E>(
    config: &'a Config<St>,
    id: &'a RecordId,
    token: FencingToken,
    lease: &'a Lease,
    finished: Result<Finished<B>, E>,
) -> impl Future<Output = Answer<B, E>> + Send + 'a
where
    St: IdempotencyStore,
    B: Send + 'a,
    E: Send + 'a,
{
    async move {
        record_outcome(Outcome::Executed);
        // Only the status and headers are lent across the store call: the body need not be `Sync`.
        let store = match &finished {
            Ok(Finished::Store {
                record,
                small,
                response,
            }) => Some((
                record,
                (!small).then(|| (response.status(), response.headers())),
            )),
            _ => None,
        };
        match store {
            Some((record, fallback)) => complete(config, id, token, lease, record, fallback).await,
            None => release(config, id, token).await,
        }
        match finished {
            Ok(Finished::Store { response, .. } | Finished::Release { response }) => Ok(response),
            Err(error) => Err(error),
        }
    }
}

/// Completes the record, retrying a few times within the lease. Should the store have no room
/// for it, it records instead that the request ran, from `fallback`'s status and `Location`
/// (`None`: `record` is that small record already). The key is never released here: the
/// handler ran, and a freed key would let a retry run it again.
async fn complete<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    lease: &Lease,
    record: &Bytes,
    mut fallback: Option<(StatusCode, &HeaderMap)>,
) {
    let mut smaller: Option<Bytes> = None;
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        let bytes = smaller.clone().unwrap_or_else(|| record.clone());
        let result = timed(
            StoreCall::Complete,
            config.store.complete(id, token, bytes, config.ttl),
        )
        .await;
        let Err(error) = result else { return };
        match error.kind() {
            StoreErrorKind::CapacityExhausted => {
                let small = fallback
                    .take()
                    .map(|(status, headers)| StoredResponse::not_kept(status, headers))
                    .filter(|small| small.len() < record.len());
                if let Some(small) = small {
                    tracing::warn!(%error, "no room for the response; recording that the request ran");
                    smaller = Some(small);
                    continue;
                }
            }
            StoreErrorKind::LeaseLost => {
                lease.mark_lost("the store refused to complete the record");
                record_outcome(Outcome::Unrecorded);
                return;
            }
            _ => {}
        }
        let retry_at = Instant::now() + backoff;
        if attempt >= COMPLETE_ATTEMPTS || retry_at >= lease.held_until() {
            tracing::error!(
                %error,
                attempts = attempt,
                "the handler ran but its outcome could not be stored; the claim is kept until \
                 its lease ends (retries get 409), after which the key is free again"
            );
            record_outcome(Outcome::Unrecorded);
            return;
        }
        tracing::warn!(%error, attempt, "could not store the response; retrying");
        // Boxed: a timer takes room in the future, and retries are rare.
        Box::pin(tokio::time::sleep_until(retry_at)).await;
        backoff = (backoff * 2).min(config.lease / 4);
        attempt += 1;
    }
}

/// Frees the key of a request whose response is not kept. If that fails the claim simply
/// runs out with its lease.
pub(super) async fn release<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
) {
    if let Err(error) = timed(StoreCall::Release, config.store.release(id, token)).await {
        tracing::warn!(%error, "could not release the key; it is free once its lease ends");
    }
}
