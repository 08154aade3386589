//! Idempotency-Key middleware for [tower]: a retried `POST` executes once, and every retry
//! gets the first response back, marked `Idempotent-Replayed: true`.
//!
//! It follows `draft-ietf-httpapi-idempotency-key-header` and Stripe's semantics, and works
//! with axum 0.8 and plain hyper 1 (any [`http_body::Body`]).
//!
//! # Example
//!
//! ```
//! use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
//! use axum::{Router, body::Body, http::{Request, StatusCode}, routing::post};
//! use tower::ServiceExt;
//! use tower_idempotency::{IdempotencyLayer, store::memory::MemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let executions = Arc::new(AtomicUsize::new(0));
//! let counter = executions.clone();
//! let app = Router::new()
//!     .route("/orders", post(move || async move {
//!         let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
//!         (StatusCode::CREATED, format!("order {n}"))
//!     }))
//!     .layer(
//!         IdempotencyLayer::new(MemoryStore::default())
//!             // In a real API: the authenticated user an auth layer put in the extensions.
//!             .scope(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned().into())),
//!     );
//!
//! let request = || {
//!     Request::post("/orders")
//!         .header("x-user", "alice")
//!         .header("idempotency-key", "\"9c1f7a52\"")
//!         .body(Body::from(r#"{"sku":"A-1"}"#))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//!
//! let retry = app.clone().oneshot(request()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! let body = axum::body::to_bytes(retry.into_body(), usize::MAX).await.unwrap();
//! assert_eq!(&body[..], b"order 1");
//! assert_eq!(executions.load(Ordering::SeqCst), 1);
//! # }
//! ```
//!
//! # Behaviour
//!
//! | request | answer |
//! |---|---|
//! | method not configured (default: only POST and PATCH act), or no key and key optional | passed through untouched |
//! | no key, key required | 400 `key-required` |
//! | malformed key (empty, > 255 chars, control chars, a list, repeated header) | 400 `key-invalid` |
//! | keyed, but no scope (user) | 401 `scope-missing` |
//! | body over the request limit (default 1 MiB) | 413 `request-too-large`, nothing executed |
//! | first request with the key | executed once; 2xx/3xx stored for the TTL (default 24 h), others free the key |
//! | retry after completion | the stored response, byte for byte, plus `Idempotent-Replayed: true` |
//! | retry while the first runs | 409 `key-in-use` + `Retry-After` (or wait and replay: [`InFlightPolicy::Wait`]) |
//! | same key, different method, path, query or body | 422 `key-reused`, in every state |
//! | store unreachable | 503 `store-unavailable` + `Retry-After` (or run anyway: [`StoreFailurePolicy::FailOpen`]) |
//! | store full (no room it may free) | 503 `store-full` + `Retry-After`, nothing executed |
//! | retry after a response that could not be kept (too large, no room left, or its body failed mid-stream) | 410 `response-not-kept` with the original `Location`; never executed again |
//! | first request whose response body fails mid-stream | 500 `response-failed` (never a truncated 2xx) |
//! | handler panicked | 500 `handler-failed`; the key is free again before the answer is sent |
//!
//! Every refusal is `application/problem+json` (RFC 9457); see [`problem`] for the `type`s.
//!
//! Details that matter in production:
//! - Keys are scoped: the record id is SHA-256 over (scope, key), so users never see each
//!   other's responses, and the store holds neither keys nor user ids.
//! - JSON bodies are fingerprinted canonically: whitespace and object-key order do not make a
//!   retry "different". Other bodies compare byte for byte.
//! - A started handler always runs to completion: if the client disconnects, it moves to a
//!   task of its own, completes, and its response is stored, so the retry gets the result
//!   instead of a second execution.
//! - **Once a handler has run, its key is never freed because its response could not be
//!   stored.** `complete` is retried a few times; if the store has no room for the response,
//!   a small "ran, not kept" record (status and `Location`) is stored instead, for which
//!   every claim reserves room. If the store stays unreachable, the claim is kept (never
//!   released): retries get 409 until its lease ends, the failure is logged at error level and
//!   counted as `outcome="unrecorded"`. Only then, with the record never written, is the key
//!   free again: the one case where the layer cannot know, without its store, that the
//!   request ran. A handler whose effects must never repeat should also keep the key it
//!   saw (a unique column) or use the store's transaction.
//! - Claims carry a lease, renewed from a task of its own while the handler runs (a handler
//!   that blocks its thread does not starve it on a multi-threaded runtime), and a fencing
//!   token: a crashed instance's claim expires, and a late owner can never overwrite a newer
//!   owner's record. The handler can read its [`Lease`] from the request extensions and check
//!   [`Lease::is_lost`] before an irreversible step.
//! - Requests are fingerprinted by their original target: under axum's `Router::nest` (feature
//!   `axum`, on by default) the full path, not the one with the prefix stripped; plain tower
//!   services that rewrite paths insert a [`fingerprint::OriginalTarget`] first.
//! - The inner service is driven to readiness only when the layer runs it: retries that are
//!   replayed, refused or waiting hold none of its capacity.
//! - Replays never carry `Set-Cookie`, `Date` or hop-by-hop headers; everything else (repeated
//!   headers, non-UTF-8 values) is replayed exactly. `Cache-Control: no-store` on a response
//!   keeps it out of the store.
//! - The handler can read the [`IdempotencyKey`] from the request extensions, to persist it as
//!   a second line of defence (a unique column).
//!
//! # Stores
//!
//! [`store::memory::MemoryStore`] (bounded, TTL, sharded) is the default for one instance.
//! For several instances behind a load balancer use a shared store: Redis
//! (`tower-idempotency-redis`) or PostgreSQL (`tower-idempotency-postgres`); for records that
//! survive restarts on one machine, SQLite (`tower-idempotency-sqlite`). Write your own by
//! implementing [`store::IdempotencyStore`] and running the conformance suite in `testing`
//! (feature `test-suite`).
//!
//! # Transactional mode
//!
//! When the handler's effects are rows in PostgreSQL or SQLite, the record can commit **in
//! the handler's own transaction** ([`IdempotencyLayer::transactional`], see
//! [`transactional`]): a crash then leaves both or neither, with no lease to wait out, and
//! retries are correct by construction.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `axum` (default) | fingerprints by axum's `OriginalUri`, so nested routers never share records |
//! | `test-suite` | `testing`: the store conformance suite (`store_conformance_tests!`) |
//!
//! # Observability
//!
//! `tracing` events under an `idempotency` span, and [`metrics`] counters per
//! outcome (`unrecorded` among them), lost leases, and a store-latency histogram.

#![cfg_attr(docsrs, feature(doc_cfg))]

mod body;
pub mod fingerprint;
mod flow;
mod future;
mod key;
mod layer;
pub mod metrics;
mod policy;
pub mod problem;
mod record;
mod scope;
mod service;
pub mod store;
mod tasks;
#[cfg(feature = "test-suite")]
pub mod testing;
pub mod transactional;

pub use self::{
    body::{RequestBody, ResponseBody},
    fingerprint::Fingerprint,
    flow::lease::Lease,
    future::ResponseFuture,
    key::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyKey, KeyError, MAX_KEY_LEN},
    layer::{
        ConfigError, DEFAULT_TRANSACTION_TIMEOUT, IdempotencyLayer, InFlightPolicy, MAX_LEASE,
        MAX_TTL, MAX_WAIT, MIN_LEASE, StoreFailurePolicy,
    },
    policy::store_success_and_redirects,
    scope::Scope,
    service::Idempotency,
    tasks::HandlerTasks,
};
