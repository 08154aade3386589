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
//!
//! Every refusal is `application/problem+json` (RFC 9457); see [`problem`] for the `type`s.
//!
//! Details that matter in production:
//! - Keys are scoped: the record id is SHA-256 over (scope, key), so users never see each
//!   other's responses, and the store holds neither keys nor user ids.
//! - JSON bodies are fingerprinted canonically: whitespace and object-key order do not make a
//!   retry "different". Other bodies compare byte for byte.
//! - A started handler always runs to completion: if the client disconnects, it moves to a
//!   task of its own, completes, and its
//!   response is stored, so the retry gets the result instead of a second execution.
//! - Claims carry a lease (renewed while the handler runs) and a fencing token: a crashed
//!   instance's claim expires, and a late owner can never overwrite a newer owner's record.
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
//! (`tower-idempotency-redis`) or PostgreSQL (`tower-idempotency-postgres`). Write your own by
//! implementing [`store::IdempotencyStore`] and running the [`testing`] conformance suite.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `test-suite` | [`testing`]: the store conformance suite |
//!
//! # Observability
//!
//! `tracing` events under an `idempotency` span, and [`metrics`](crate::metrics) counters per
//! outcome plus a store-latency histogram.

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

pub use self::{
    body::{RequestBody, ResponseBody},
    fingerprint::Fingerprint,
    flow::lease::Lease,
    future::ResponseFuture,
    key::{IDEMPOTENCY_KEY, IDEMPOTENT_REPLAYED, IdempotencyKey, KeyError, MAX_KEY_LEN},
    layer::{
        ConfigError, IdempotencyLayer, InFlightPolicy, MAX_LEASE, MAX_TTL, MAX_WAIT, MIN_LEASE,
        StoreFailurePolicy,
    },
    policy::store_success_and_redirects,
    scope::Scope,
    service::Idempotency,
    tasks::HandlerTasks,
};
