//! `metrics` counters and histograms. With no recorder installed they cost next to nothing.
//!
//! - `idempotency_requests_total{outcome}`: one per keyed request, by [`Outcome`].
//! - `idempotency_store_duration_seconds{operation}`: latency of each store call
//!   (`claim`, `renew`, `complete`, `release`).
//! - `idempotency_store_errors_total{operation}`: failed store calls.
//! - `idempotency_lease_lost_total`: running handlers whose claim was lost (renewal refused,
//!   or no renewal succeeded for a whole lease): another request may run the key meanwhile.

use std::future::Future;

use tokio::time::Instant;

/// Name of the per-outcome counter.
pub const REQUESTS_TOTAL: &str = "idempotency_requests_total";
/// Name of the store latency histogram.
pub const STORE_DURATION_SECONDS: &str = "idempotency_store_duration_seconds";
/// Name of the store error counter.
pub const STORE_ERRORS_TOTAL: &str = "idempotency_store_errors_total";
/// Name of the lost-lease counter.
pub const LEASE_LOST_TOTAL: &str = "idempotency_lease_lost_total";

/// How a keyed request ended, as the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The handler ran (first request with its key).
    Executed,
    /// A stored response was replayed (or its absence reported).
    Replayed,
    /// 409: the first request was still running.
    Conflict,
    /// 422: the key was reused for a different request.
    Mismatch,
    /// 400, 401, 413 or a handler failure.
    Rejected,
    /// The store failed (503, or executed without deduplication when failing open).
    StoreError,
    /// The handler ran, but neither its response nor the fact that it ran could be stored
    /// (the store stayed unreachable, or the lease was lost). Counted beside `executed`. The
    /// claim is kept: retries get 409 until its lease ends, then the key is free again.
    Unrecorded,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Executed => "executed",
            Self::Replayed => "replayed",
            Self::Conflict => "conflict",
            Self::Mismatch => "mismatch",
            Self::Rejected => "rejected",
            Self::StoreError => "store_error",
            Self::Unrecorded => "unrecorded",
        }
    }
}

pub(crate) fn record_outcome(outcome: Outcome) {
    // One literal per label value: the macro then builds a static key instead of allocating
    // one per call, which matters on a path taken by every keyed request.
    macro_rules! count {
        ($label:literal) => {
            metrics::counter!(REQUESTS_TOTAL, "outcome" => $label).increment(1)
        };
    }
    match outcome {
        Outcome::Executed => count!("executed"),
        Outcome::Replayed => count!("replayed"),
        Outcome::Conflict => count!("conflict"),
        Outcome::Mismatch => count!("mismatch"),
        Outcome::Rejected => count!("rejected"),
        Outcome::StoreError => count!("store_error"),
        Outcome::Unrecorded => count!("unrecorded"),
    }
}

pub(crate) fn record_lease_lost() {
    metrics::counter!(LEASE_LOST_TOTAL).increment(1);
}

/// A store call, as the `operation` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StoreCall {
    Claim,
    Renew,
    Complete,
    Release,
    Lookup,
    Commit,
}

impl StoreCall {
    fn record(self, seconds: f64, failed: bool) {
        macro_rules! observe {
            ($label:literal) => {{
                metrics::histogram!(STORE_DURATION_SECONDS, "operation" => $label).record(seconds);
                if failed {
                    metrics::counter!(STORE_ERRORS_TOTAL, "operation" => $label).increment(1);
                }
            }};
        }
        match self {
            Self::Claim => observe!("claim"),
            Self::Renew => observe!("renew"),
            Self::Complete => observe!("complete"),
            Self::Release => observe!("release"),
            Self::Lookup => observe!("lookup"),
            Self::Commit => observe!("commit"),
        }
    }
}

/// Awaits a store call, recording its latency and failure.
pub(crate) async fn timed<T, E>(
    operation: StoreCall,
    call: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    timed_from(operation, Instant::now(), call).await.0
}

/// As [`timed`], for a call sent at `sent`, a clock reading the caller needs too; returns the
/// moment the call answered as well (reading the clock is a tenth of a store call's cost in
/// memory, so a request shares its readings).
pub(crate) async fn timed_from<T, E>(
    operation: StoreCall,
    sent: Instant,
    call: impl Future<Output = Result<T, E>>,
) -> (Result<T, E>, Instant) {
    let result = call.await;
    let answered = Instant::now();
    operation.record(
        answered.saturating_duration_since(sent).as_secs_f64(),
        result.is_err(),
    );
    (result, answered)
}
