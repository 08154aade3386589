//! [`IdempotencyMiddleware`]: attaches keys, retries transient failures with the same key,
//! and tells the caller how the answer came about.

use std::{fmt, sync::Arc, time::SystemTime};

use http::Extensions;
use reqwest::{Request, Response};
use reqwest_middleware::{Middleware, Next};
use tokio::time::Instant;

use crate::{
    error::{GaveUp, LastFailure},
    info::RetryInfo,
    key::{self, IDEMPOTENCY_KEY, KeyFormat},
    policy::{Decision, RetryPolicy, StopReason},
    report::{AttemptOutcome, AttemptReport, Observer},
    response::replayed,
    retry_after,
};

/// A [`reqwest_middleware`] middleware that makes requests safe to retry and retries them.
///
/// - A `POST` or `PATCH` without an `Idempotency-Key` gets one (a UUID v4, as a Structured
///   Field string unless [`key_format`](Self::key_format) says otherwise); every retry of
///   that request carries the same key. A key the caller set is sent as is.
/// - A request is retried only if it carries a key or its method is idempotent (GET, HEAD,
///   PUT, DELETE, OPTIONS, TRACE), and only if it can be cloned
///   ([`reqwest::Request::try_clone`]): a streaming body is sent once, never retried.
/// - Transient failures (connection errors, timeouts, and the statuses of
///   [`RetryPolicy::retries_status`]) are retried as the [`RetryPolicy`] says; any other
///   answer is returned at once.
/// - Every response it returns carries a [`RetryInfo`] in its extensions. When it gives up
///   on an answer (a 503 on the last attempt), it returns that answer; when it gives up on a
///   connection error or a timeout, it returns [`GaveUp`] as
///   `reqwest_middleware::Error::Middleware`.
///
/// A request can carry its own policy as an extension
/// (`client.post(url).with_extension(RetryPolicy::never())`).
///
/// Put it first in the chain (outermost), so that each retry runs the middlewares after it
/// (auth, tracing) again. Per-attempt timeouts are reqwest's own (`RequestBuilder::timeout`,
/// `ClientBuilder::timeout`); the policy's deadline bounds the whole logical request.
#[derive(Clone, Default)]
pub struct IdempotencyMiddleware {
    policy: RetryPolicy,
    key_format: KeyFormat,
    observer: Option<Arc<Observer>>,
}

impl IdempotencyMiddleware {
    /// The middleware with the default [`RetryPolicy`].
    pub fn new() -> Self {
        Self::default()
    }

    /// The middleware with `policy`.
    pub fn with_policy(policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..Self::default()
        }
    }

    /// How generated keys are written (default [`KeyFormat::Quoted`]).
    pub fn key_format(mut self, format: KeyFormat) -> Self {
        self.key_format = format;
        self
    }

    /// Calls `observer` after every attempt, before the middleware waits or returns: for
    /// logs, metrics or journals. It runs on the request's task; keep it short.
    pub fn on_attempt(
        mut self,
        observer: impl Fn(&AttemptReport<'_>) + Send + Sync + 'static,
    ) -> Self {
        self.observer = Some(Arc::new(observer));
        self
    }

    /// The policy for requests that carry none.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl fmt::Debug for IdempotencyMiddleware {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyMiddleware")
            .field("policy", &self.policy)
            .field("key_format", &self.key_format)
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

/// Whether an error is a transient transport failure: the request may not have reached the
/// server, or its answer may have been lost.
fn is_transient(error: &reqwest_middleware::Error) -> bool {
    match error {
        reqwest_middleware::Error::Reqwest(e) => e.is_connect() || e.is_timeout() || e.is_request(),
        reqwest_middleware::Error::Middleware(_) => false,
    }
}

/// How one attempt ended, before it is judged.
enum Attempt {
    Answer(Response),
    Error(reqwest_middleware::Error),
    DeadlineElapsed,
}

#[async_trait::async_trait]
impl Middleware for IdempotencyMiddleware {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let policy = extensions
            .get::<RetryPolicy>()
            .cloned()
            .unwrap_or_else(|| self.policy.clone());
        if key::wants_key(request.method()) && !request.headers().contains_key(&IDEMPOTENCY_KEY) {
            request
                .headers_mut()
                .insert(IDEMPOTENCY_KEY.clone(), self.key_format.generate());
        }
        let key = request.headers().get(&IDEMPOTENCY_KEY).map(key::key_text);
        let idempotent = key.is_some() || key::is_idempotent(request.method());
        let method = request.method().clone();
        let url = request.url().clone();
        let started = Instant::now();
        let deadline = policy.deadline().map(|d| started + d);

        let mut request = Some(request);
        let mut attempts = 0;
        loop {
            let this = request.take().expect("a request for every attempt");
            // The copy for the next attempt, made before this one consumes the request.
            let spare = if idempotent { this.try_clone() } else { None };
            attempts += 1;
            let sent_at = started.elapsed();
            let sent = next.clone().run(this, extensions);
            let attempt = match deadline {
                None => into_attempt(sent.await),
                Some(deadline) => match tokio::time::timeout_at(deadline, sent).await {
                    Ok(result) => into_attempt(result),
                    Err(_) => Attempt::DeadlineElapsed,
                },
            };
            let elapsed = started.elapsed();

            let transient = match &attempt {
                Attempt::Answer(response) => RetryPolicy::retries_status(response.status()),
                Attempt::Error(error) => is_transient(error),
                Attempt::DeadlineElapsed => true,
            };
            let decision = match &attempt {
                _ if !transient => None,
                Attempt::DeadlineElapsed => Some(Decision::Stop(StopReason::Deadline)),
                _ if !idempotent => Some(Decision::Stop(StopReason::NotIdempotent)),
                _ if spare.is_none() => Some(Decision::Stop(StopReason::BodyNotCloneable)),
                Attempt::Answer(response) => {
                    let asked = retry_after::from_headers(response.headers(), SystemTime::now());
                    Some(policy.decide(attempts, elapsed, asked))
                }
                Attempt::Error(_) => Some(policy.decide(attempts, elapsed, None)),
            };

            if let Some(observer) = &self.observer {
                observer(&AttemptReport {
                    attempt: attempts,
                    method: &method,
                    url: &url,
                    key: key.as_deref(),
                    outcome: match &attempt {
                        Attempt::Answer(response) => AttemptOutcome::Answer {
                            status: response.status(),
                            replayed: replayed(response.headers()),
                            headers: response.headers(),
                        },
                        Attempt::Error(error) => AttemptOutcome::Error(error),
                        Attempt::DeadlineElapsed => AttemptOutcome::DeadlineElapsed,
                    },
                    sent: sent_at,
                    elapsed,
                    decision,
                });
            }

            let gave_up = match decision {
                Some(Decision::Retry(wait)) => {
                    tracing::debug!(
                        attempt = attempts,
                        %method,
                        key = key.as_deref(),
                        wait_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        outcome = %describe(&attempt),
                        "transient failure, retrying"
                    );
                    drop(attempt);
                    tokio::time::sleep(wait).await;
                    request = spare;
                    continue;
                }
                Some(Decision::Stop(reason)) => {
                    tracing::debug!(
                        attempt = attempts,
                        %method,
                        key = key.as_deref(),
                        %reason,
                        outcome = %describe(&attempt),
                        "transient failure, giving up"
                    );
                    Some(reason)
                }
                None => None,
            };
            return match attempt {
                Attempt::Answer(mut response) => {
                    let info = RetryInfo::new(attempts, replayed(response.headers()), key, gave_up);
                    response.extensions_mut().insert(info);
                    Ok(response)
                }
                Attempt::Error(error) if gave_up.is_none() => Err(error),
                Attempt::Error(error) => {
                    let info = RetryInfo::new(attempts, false, key, gave_up);
                    let last = match error {
                        reqwest_middleware::Error::Reqwest(error) => LastFailure::Transport(error),
                        // Not transient, so never here: hand it over untouched.
                        error @ reqwest_middleware::Error::Middleware(_) => return Err(error),
                    };
                    Err(reqwest_middleware::Error::middleware(GaveUp::new(
                        info, last,
                    )))
                }
                Attempt::DeadlineElapsed => {
                    let info = RetryInfo::new(attempts, false, key, gave_up);
                    Err(reqwest_middleware::Error::middleware(GaveUp::new(
                        info,
                        LastFailure::DeadlineElapsed,
                    )))
                }
            };
        }
    }
}

fn into_attempt(result: reqwest_middleware::Result<Response>) -> Attempt {
    match result {
        Ok(response) => Attempt::Answer(response),
        Err(error) => Attempt::Error(error),
    }
}

fn describe(attempt: &Attempt) -> String {
    match attempt {
        Attempt::Answer(response) => response.status().to_string(),
        Attempt::Error(error) => error.to_string(),
        Attempt::DeadlineElapsed => "deadline elapsed".to_owned(),
    }
}
