//! [`AttemptReport`]: what the middleware tells an observer after every attempt, for logs,
//! metrics or a test that acts between attempts.

use std::time::Duration;

use reqwest::{Method, StatusCode, Url, header::HeaderMap};

use crate::policy::Decision;

/// One attempt of a logical request, handed to the
/// [`on_attempt`](crate::IdempotencyMiddleware::on_attempt) observer when it has ended.
#[derive(Debug)]
#[non_exhaustive]
pub struct AttemptReport<'a> {
    /// Which attempt this was (1 for the first).
    pub attempt: u32,
    /// The request's method.
    pub method: &'a Method,
    /// The request's URL.
    pub url: &'a Url,
    /// The idempotency key it carried, unquoted.
    pub key: Option<&'a str>,
    /// How it ended.
    pub outcome: AttemptOutcome<'a>,
    /// When this attempt was sent: time since the first attempt started (zero for the first).
    pub sent: Duration,
    /// When this attempt ended: time since the first attempt started.
    pub elapsed: Duration,
    /// What the middleware does next: `None` when the outcome is final (a success, or an
    /// answer or error not worth retrying), otherwise retry after a wait or give up.
    pub decision: Option<Decision>,
}

/// How one attempt ended.
#[derive(Debug)]
#[non_exhaustive]
pub enum AttemptOutcome<'a> {
    /// An answer arrived (its headers; the body is the caller's to read).
    Answer {
        /// Its status.
        status: StatusCode,
        /// Whether it was marked `Idempotent-Replayed: true`.
        replayed: bool,
        /// Its headers (`Retry-After`, a request id...).
        headers: &'a HeaderMap,
    },
    /// The attempt failed without an answer.
    Error(&'a reqwest_middleware::Error),
    /// The policy's deadline passed while the attempt waited for its answer.
    DeadlineElapsed,
}

/// The observer's type.
pub(crate) type Observer = dyn Fn(&AttemptReport<'_>) + Send + Sync;
