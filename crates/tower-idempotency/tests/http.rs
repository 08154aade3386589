//! The layer end to end over the in-memory store: a real axum server over TCP, a real HTTP
//! client. The scenarios every store runs live in `tower-idempotency-testkit` (the Redis and
//! PostgreSQL crates run them too); this file adds the ones that need a particular store.

use std::time::Duration;

use tower_idempotency::{
    Fingerprint, StoreFailurePolicy,
    store::{
        BoxStore, Claim, FencingToken, IdempotencyStore, RecordId, StoreError, memory::MemoryStore,
    },
};
use tower_idempotency_testkit::{TestServer, assert_problem, layer, suite::ORDER, unique};

tower_idempotency_testkit::layer_suite!(async { MemoryStore::default() });

/// A store whose backend is down: every call fails as unreachable.
struct DownStore;

impl IdempotencyStore for DownStore {
    async fn claim(&self, _: &RecordId, _: &Fingerprint, _: Duration) -> Result<Claim, StoreError> {
        Err(StoreError::unavailable("connection refused"))
    }
    async fn renew(&self, _: &RecordId, _: FencingToken, _: Duration) -> Result<(), StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn complete(
        &self,
        _: &RecordId,
        _: FencingToken,
        _: bytes::Bytes,
        _: Duration,
    ) -> Result<(), StoreError> {
        Err(StoreError::unavailable("down"))
    }
    async fn release(&self, _: &RecordId, _: FencingToken) -> Result<(), StoreError> {
        Err(StoreError::unavailable("down"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_store_fails_closed_by_default_and_open_on_request() {
    let (user, key) = (unique("alice"), unique("k"));
    let server = TestServer::start(layer(BoxStore::new(DownStore))).await;
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    assert_problem(r, 503, "store-unavailable").await;
    assert_eq!(server.executions(), 0);

    let open =
        TestServer::start(layer(DownStore).on_store_failure(StoreFailurePolicy::FailOpen)).await;
    for _ in 0..2 {
        let r = open.post(&user, &key, ORDER).send().await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(open.executions(), 2, "without a store, every request runs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_store_answers_503_instead_of_evicting_fresh_records() {
    let store = MemoryStore::builder().shards(1).max_entries(2).build();
    let server = TestServer::start(layer(store)).await;
    let user = unique("alice");
    for key in ["a", "b"] {
        let r = server.post(&user, key, ORDER).send().await.unwrap();
        assert_eq!(r.status(), 201);
    }
    let r = server.post(&user, "c", ORDER).send().await.unwrap();
    assert_problem(r, 503, "store-full").await;
    assert_eq!(server.executions(), 2, "the refused request did not run");
    // The fresh records are still replayed.
    let r = server.post(&user, "a", ORDER).send().await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions(), 2);
}
