//! The client half of `Idempotency-Key`: a [`reqwest_middleware`] middleware that gives every
//! `POST` and `PATCH` a key, keeps it across that request's retries, and retries the way
//! Stripe's SDKs do — connection errors, timeouts, 409 and 5xx, `Retry-After` honoured up to
//! a cap, exponential backoff with jitter, a bounded number of attempts.
//!
//! It works with any server that follows `draft-ietf-httpapi-idempotency-key-header`
//! (`tower-idempotency` is one): when an answer is lost, the retry with the same key gets
//! the stored response (`Idempotent-Replayed: true`) instead of executing the request twice.
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, Mutex};
//! use axum::{http::{HeaderMap, StatusCode}, response::IntoResponse, routing::post};
//! use reqwest_middleware::ClientBuilder;
//! use reqwest_idempotency::{IdempotencyMiddleware, ResponseExt};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // A server that is busy the first time, and records the keys it sees.
//! let keys = Arc::new(Mutex::new(Vec::<String>::new()));
//! let seen = keys.clone();
//! let app = axum::Router::new().route("/orders", post(move |headers: HeaderMap| async move {
//!     let mut seen = seen.lock().unwrap();
//!     seen.push(headers["idempotency-key"].to_str().unwrap().to_owned());
//!     if seen.len() == 1 {
//!         (StatusCode::SERVICE_UNAVAILABLE, [("retry-after", "0")], "busy").into_response()
//!     } else {
//!         (StatusCode::CREATED, "order 1").into_response()
//!     }
//! }));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let url = format!("http://{}/orders", listener.local_addr()?);
//! tokio::spawn(async move { axum::serve(listener, app).await });
//!
//! let client = ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyMiddleware::new())
//!     .build();
//! let response = client.post(&url).body(r#"{"sku":"A-1"}"#).send().await?;
//!
//! assert_eq!(response.status(), 201);
//! let info = response.retry_info().expect("set by the middleware").clone();
//! assert_eq!(info.attempts(), 2);
//! assert!(!info.replayed());
//! let keys = keys.lock().unwrap().clone();
//! assert_eq!(keys.len(), 2);
//! assert_eq!(keys[0], keys[1], "both attempts carried the same key");
//! assert_eq!(info.key(), Some(keys[0].trim_matches('"')), "a UUID, quoted as the draft says");
//! assert_eq!(response.text().await?, "order 1");
//! # Ok(()) }
//! ```
//!
//! # What is retried
//!
//! | the attempt ended with | retried? |
//! |---|---|
//! | a connection error, a timeout, a connection closed before the answer | yes |
//! | 408, 409 (the key is in use by a request still running), 425, 429, 500, 502, 503, 504 | yes |
//! | 400, 401, 403, 404, 410, 413, 415, 422, any other 4xx or 5xx, any success or redirect | no: returned at once |
//!
//! and only when the request
//! - carries an `Idempotency-Key` (every `POST` and `PATCH` does: the middleware adds one
//!   to those that lack it), or has an idempotent method (GET, HEAD, PUT, DELETE, OPTIONS,
//!   TRACE) — a `CONNECT` or an extension method without a key is sent once;
//! - can be cloned: **a request whose body is a stream (`reqwest::Body::wrap_stream`)
//!   cannot be sent twice, so it is sent once and never retried**, key or not. Send bytes,
//!   a string or JSON to get retries.
//!
//! The wait before a retry is the server's `Retry-After` (delay-seconds or an HTTP-date),
//! capped at [`RetryPolicy::max_retry_after`] (30 s by default); without one, an
//! exponential backoff with full jitter: uniform in `[0, min(max_delay, base_delay ×
//! 2^(retry-1))]` (200 ms doubling up to 10 s by default). At most
//! [`RetryPolicy::max_attempts`] attempts (5 by default), and none after the optional
//! [`RetryPolicy::deadline`]. See [`RetryPolicy`].
//!
//! # What the caller learns
//!
//! - Every response the middleware returns carries a [`RetryInfo`] —
//!   [`ResponseExt::retry_info`]: attempts made, whether the answer was a replay, the key,
//!   and whether the middleware gave up on a transient answer.
//! - [`ResponseExt::into_result`] turns error answers into an [`Error`]:
//!   [`Error::GaveUp`] (transient failures until the policy stopped: retry later with the
//!   same [key](GaveUp::key)) or [`Error::Rejected`] (a final refusal, with the server's RFC
//!   9457 [`Problem`] — `type`, `title`, `status`, `detail`, `code`).
//! - When the last attempt failed without an answer (connection error, timeout), the client
//!   returns `reqwest_middleware::Error::Middleware` holding a [`GaveUp`]; `Error::from`
//!   or [`GaveUp::find`] gets it back.
//!
//! ```no_run
//! use reqwest_idempotency::{Error, IdempotencyMiddleware, ResponseExt, RetryPolicy};
//! use std::time::Duration;
//!
//! # async fn run() -> Result<(), Error> {
//! let policy = RetryPolicy::builder()
//!     .max_attempts(8)
//!     .deadline(Duration::from_secs(60))
//!     .build()
//!     .expect("a consistent policy");
//! let client = reqwest_middleware::ClientBuilder::new(reqwest::Client::new())
//!     .with(IdempotencyMiddleware::with_policy(policy))
//!     .build();
//! let result = client
//!     .post("https://api.example.com/deployments")
//!     .header("idempotency-key", "deploy-2024-06-01-web") // kept as is
//!     .body(r#"{"project":"web"}"#)
//!     .timeout(Duration::from_secs(10)) // per attempt
//!     .send()
//!     .await
//!     .map_err(Error::from);
//! match async { result?.into_result().await }.await {
//!     Ok(response) => println!("{} (replayed: {})", response.status(), response.is_replayed()),
//!     Err(Error::Rejected(rejected)) => match rejected.problem() {
//!         Some(problem) if problem.slug() == "key-reused" => eprintln!("use a new key"),
//!         _ => eprintln!("{rejected}"),
//!     },
//!     Err(Error::GaveUp(gave_up)) => eprintln!("try again later with key {:?}", gave_up.key()),
//!     Err(other) => return Err(other),
//! }
//! # Ok(()) }
//! ```
//!
//! # Limits
//!
//! - The middleware returns an answer once its headers have arrived; a body that breaks off
//!   afterwards fails when the caller reads it, and is not retried. Send the request again
//!   with [`RetryInfo::key`] to get the stored response.
//! - Every attempt goes to the same URL; spreading retries over several servers is a load
//!   balancer's job.
//! - Per-attempt timeouts are reqwest's (`RequestBuilder::timeout`); the policy's deadline
//!   abandons an attempt still running when it passes.
//! - [`AttemptReport`]s ([`IdempotencyMiddleware::on_attempt`]) and `tracing` debug events
//!   tell about each attempt.

mod error;
mod info;
mod key;
mod middleware;
mod policy;
mod problem;
mod report;
mod response;
pub mod retry_after;

pub use reqwest_middleware;

pub use self::{
    error::{Error, GaveUp, LastFailure, Rejected},
    info::RetryInfo,
    key::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, KeyFormat},
    middleware::IdempotencyMiddleware,
    policy::{
        DEFAULT_BASE_DELAY, DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_DELAY, DEFAULT_MAX_RETRY_AFTER,
        Decision, PolicyError, RetryPolicy, RetryPolicyBuilder, StopReason,
    },
    problem::{PROBLEM_JSON, Problem},
    report::{AttemptOutcome, AttemptReport},
    response::ResponseExt,
};
