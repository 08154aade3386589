//! Recording what a handler did: its response, or that the key is free again.

use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

use super::{Answer, buffer::Finished, lease::Lease};
use crate::{
    layer::Config,
    metrics::{Outcome, record_outcome, timed},
    store::{FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

/// First pause between two attempts to store a response; it doubles up to a quarter lease.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Attempts to store a response before giving up: about 150 ms of pauses, enough for a
/// failover or a dropped connection, short enough not to hold the caller's answer long.
const COMPLETE_ATTEMPTS: u32 = 5;

/// Stores (or releases) the outcome of a handler that ran, then hands back its answer.
pub(super) async fn record<St, B, E>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    lease: &Lease,
    finished: Result<Finished<B>, E>,
) -> Answer<B, E>
where
    St: IdempotencyStore,
{
    record_outcome(Outcome::Executed);
    match finished {
        Ok(Finished::Store {
            record,
            fallback,
            response,
        }) => {
            complete(config, id, token, lease, record, fallback).await;
            Ok(response)
        }
        Ok(Finished::Release { response }) => {
            release(config, id, token).await;
            Ok(response)
        }
        Err(error) => {
            release(config, id, token).await;
            Err(error)
        }
    }
}

/// Completes the record, retrying a few times within the lease. The key is never released here:
/// the handler ran, and a freed key would let a retry run it again.
async fn complete<St: IdempotencyStore>(
    config: &Config<St>,
    id: &RecordId,
    token: FencingToken,
    lease: &Lease,
    mut record: Bytes,
    fallback: Bytes,
) {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1u32;
    loop {
        let result = timed(
            "complete",
            config.store.complete(id, token, record.clone(), config.ttl),
        )
        .await;
        let Err(error) = result else { return };
        match error.kind() {
            StoreErrorKind::CapacityExhausted if record.len() > fallback.len() => {
                tracing::warn!(%error, "no room for the response; recording that the request ran");
                record = fallback.clone();
                continue;
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
        tokio::time::sleep_until(retry_at).await;
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
    if let Err(error) = timed("release", config.store.release(id, token)).await {
        tracing::warn!(%error, "could not release the key; it is free once its lease ends");
    }
}
