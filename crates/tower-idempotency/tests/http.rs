//! The layer end to end: a real axum server over TCP, a real HTTP client.

mod common;

use std::{sync::Arc, time::Duration};

use common::{TestServer, assert_problem, layer};
use tokio::sync::Barrier;
use tower_idempotency::{
    InFlightPolicy, StoreFailurePolicy,
    store::{BoxStore, memory::MemoryStore},
};

const ORDER: &str = r#"{"sku":"A-1","quantity":2}"#;

#[tokio::test]
async fn a_retry_replays_the_original_response_byte_for_byte() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    let first = server.post("alice", "k-1", ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();

    let retry = server.post("alice", "\"k-1\"", ORDER).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    let h = retry.headers().clone();
    assert_eq!(h["idempotent-replayed"], "true");
    assert_eq!(h["location"], first_headers["location"]);
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(
        h["x-binary"].as_bytes(),
        b"caf\xe9",
        "non-UTF-8 values survive"
    );
    let multi: Vec<_> = h.get_all("x-multi").iter().collect();
    assert_eq!(multi, ["one", "two"], "repeated headers survive in order");
    assert!(h.get("set-cookie").is_none(), "cookies are never replayed");
    assert_eq!(retry.bytes().await.unwrap(), first_body);
    assert_eq!(server.executions.get(), 1);

    let json: serde_json::Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(
        json["key"], "k-1",
        "the handler sees the key as an extension"
    );
}

#[tokio::test]
async fn different_keys_and_unkeyed_requests_each_execute() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    for key in ["k-1", "k-2", "k-3"] {
        let r = server.post("alice", key, ORDER).send().await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    for _ in 0..2 {
        let r = server
            .client
            .post(server.url("/orders"))
            .header("x-user", "alice")
            .body(ORDER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
    }
    assert_eq!(server.executions.get(), 5);
}

#[tokio::test]
async fn users_never_see_each_others_responses() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    let alice = server.post("alice", "shared", ORDER).send().await.unwrap();
    let alice_body = alice.bytes().await.unwrap();
    let bob = server.post("bob", "shared", ORDER).send().await.unwrap();
    assert!(bob.headers().get("idempotent-replayed").is_none());
    assert_ne!(bob.bytes().await.unwrap(), alice_body);
    assert_eq!(server.executions.get(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_duplicates_execute_the_handler_exactly_once() {
    let server = Arc::new(TestServer::start(layer(MemoryStore::default())).await);
    let barrier = Arc::new(Barrier::new(50));
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let (server, barrier) = (server.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let r = server
                    .post("alice", "burst", ORDER)
                    .header("x-delay-ms", "300")
                    .send()
                    .await
                    .unwrap();
                let status = r.status().as_u16();
                let retry_after = r.headers().get("retry-after").cloned();
                (status, retry_after, r.bytes().await.unwrap())
            })
        })
        .collect();
    let mut created = Vec::new();
    for task in tasks {
        let (status, retry_after, body) = task.await.unwrap();
        match status {
            201 => created.push(body),
            409 => assert_eq!(retry_after.unwrap(), "1"),
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(server.executions.get(), 1);
    assert!(!created.is_empty());
    // After the first finished, every retry gets its response.
    let replay = server.post("alice", "burst", ORDER).send().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(replay.bytes().await.unwrap(), created[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wait_mode_replays_to_concurrent_duplicates() {
    let layer = layer(MemoryStore::default()).in_flight(InFlightPolicy::Wait {
        timeout: Duration::from_secs(5),
        retry_after: Duration::from_secs(1),
    });
    let server = Arc::new(TestServer::start(layer).await);
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let server = server.clone();
            tokio::spawn(async move {
                let r = server
                    .post("alice", "wait", ORDER)
                    .header("x-delay-ms", "300")
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.bytes().await.unwrap())
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        let (status, body) = task.await.unwrap();
        assert_eq!(status, 201);
        bodies.push(body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(server.executions.get(), 1);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_rejected_in_every_state() {
    let server = Arc::new(TestServer::start(layer(MemoryStore::default())).await);
    // While the first is in flight.
    let slow = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .post("alice", "reuse", ORDER)
                .header("x-delay-ms", "400")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let r = server
        .post("alice", "reuse", r#"{"sku":"B-2"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(r, 422, "key-reused").await;
    assert_eq!(slow.await.unwrap(), 201);
    // After completion: other body, other path, other method.
    let r = server
        .post("alice", "reuse", r#"{"sku":"B-2"}"#)
        .send()
        .await
        .unwrap();
    assert_problem(r, 422, "key-reused").await;
    let r = server
        .client
        .post(server.url("/orders/7"))
        .header("x-user", "alice")
        .header("idempotency-key", "reuse")
        .header("content-type", "application/json")
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 422, "key-reused").await;
    let r = server
        .client
        .post(server.url("/orders?dry_run=1"))
        .header("x-user", "alice")
        .header("idempotency-key", "reuse")
        .header("content-type", "application/json")
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 422, "key-reused").await;
    assert_eq!(server.executions.get(), 1);
}

#[tokio::test]
async fn reformatted_json_is_the_same_request() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    server.post("alice", "json", ORDER).send().await.unwrap();
    let reformatted = "{\n  \"quantity\" : 2,\n  \"sku\" : \"A-1\"\n}";
    let r = server
        .post("alice", "json", reformatted)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions.get(), 1);
}

#[tokio::test]
async fn errors_release_the_key_so_a_corrected_request_can_run() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    for status in ["422", "500"] {
        let r = server
            .post("alice", "fix-me", ORDER)
            .header("x-status", status)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    let r = server
        .post("alice", "fix-me", r#"{"sku":"fixed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let r = server
        .post("alice", "fix-me", r#"{"sku":"fixed"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions.get(), 3);
}

#[tokio::test]
async fn no_store_responses_are_not_kept() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    for _ in 0..2 {
        let r = server
            .post("alice", "volatile", ORDER)
            .header("x-no-store", "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(server.executions.get(), 2);
}

#[tokio::test]
async fn a_disconnected_client_still_gets_the_result_on_retry() {
    let layer = layer(MemoryStore::default());
    let tasks = layer.handler_tasks();
    let server = TestServer::start(layer).await;
    let gave_up = server
        .post("alice", "hang-up", ORDER)
        .header("x-delay-ms", "500")
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    // The handler outlives its connection, and a shutdown can wait for it.
    assert_eq!(tasks.running(), 1);
    tokio::time::timeout(Duration::from_secs(5), tasks.wait_idle())
        .await
        .expect("the detached handler finishes");
    assert_eq!(server.executions.get(), 1);
    let retry = server
        .post("alice", "hang-up", ORDER)
        .header("x-delay-ms", "500")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions.get(), 1);
}

#[tokio::test]
async fn malformed_and_missing_keys_and_scopes() {
    let server = TestServer::start(layer(MemoryStore::default()).require_key(true)).await;
    let post = || {
        server
            .client
            .post(server.url("/orders"))
            .header("x-user", "alice")
            .body(ORDER)
    };
    assert_problem(post().send().await.unwrap(), 400, "key-required").await;
    let long = "k".repeat(256);
    for bad in ["", "a b", "\"a\", \"b\"", "\"open", long.as_str()] {
        let r = post().header("idempotency-key", bad).send().await.unwrap();
        assert_problem(r, 400, "key-invalid").await;
    }
    let r = post()
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .send()
        .await
        .unwrap();
    assert_problem(r, 400, "key-invalid").await;
    let r = server
        .client
        .post(server.url("/orders"))
        .header("idempotency-key", "k")
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 401, "scope-missing").await;
    // Methods the layer does not act on pass through, key or not.
    let r = server
        .client
        .get(server.url("/orders"))
        .header("idempotency-key", "a b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(server.executions.get(), 0);
}

#[tokio::test]
async fn oversized_requests_are_refused_unexecuted() {
    let server = TestServer::start(layer(MemoryStore::default()).max_request_body(1024)).await;
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2048));
    let r = server.post("alice", "big", &big).send().await.unwrap();
    assert_problem(r, 413, "request-too-large").await;
    // Without Content-Length (chunked), the limit is enforced while reading.
    let stream = futures_stream(big.into_bytes());
    let r = server
        .client
        .post(server.url("/orders"))
        .header("x-user", "alice")
        .header("idempotency-key", "big-chunked")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "request-too-large").await;
    assert_eq!(server.executions.get(), 0);
    // The key was never claimed: a request within the limit runs.
    let r = server.post("alice", "big", ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
}

fn futures_stream(
    bytes: Vec<u8>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter(
        bytes
            .chunks(512)
            .map(|c| Ok(c.to_vec()))
            .collect::<Vec<_>>(),
    )
}

#[tokio::test]
async fn oversized_responses_reach_the_caller_and_are_never_re_executed() {
    let server = TestServer::start(layer(MemoryStore::default()).max_response_body(4096)).await;
    let r = server
        .post("alice", "huge", ORDER)
        .header("x-large", "100000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    let retry = server
        .post("alice", "huge", ORDER)
        .header("x-large", "100000")
        .send()
        .await
        .unwrap();
    assert_eq!(retry.headers()["location"], "/orders/1");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_problem(retry, 410, "response-not-kept").await;
    assert_eq!(server.executions.get(), 1);
}

#[tokio::test]
async fn a_panicking_handler_gets_a_problem_and_frees_the_key() {
    let server = TestServer::start(layer(MemoryStore::default())).await;
    let r = server
        .post("alice", "boom", ORDER)
        .header("x-panic", "1")
        .send()
        .await
        .unwrap();
    assert_problem(r, 500, "handler-failed").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = server.post("alice", "boom", ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(server.executions.get(), 2);
}

#[tokio::test]
async fn the_lease_is_renewed_while_a_slow_handler_runs() {
    let layer = layer(MemoryStore::default()).lease(Duration::from_millis(90));
    let server = Arc::new(TestServer::start(layer).await);
    let slow = {
        let server = server.clone();
        tokio::spawn(async move {
            server
                .post("alice", "slow", ORDER)
                .header("x-delay-ms", "600")
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    // Several leases later, the claim is still held: the retry is refused, not re-executed.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let r = server.post("alice", "slow", ORDER).send().await.unwrap();
    assert_problem(r, 409, "key-in-use").await;
    assert_eq!(slow.await.unwrap(), 201);
    assert_eq!(server.executions.get(), 1);
}

/// A store whose backend is down: every call fails as unreachable.
struct DownStore;

impl tower_idempotency::store::IdempotencyStore for DownStore {
    async fn claim(
        &self,
        _: &tower_idempotency::store::RecordId,
        _: &tower_idempotency::Fingerprint,
        _: Duration,
    ) -> Result<tower_idempotency::store::Claim, tower_idempotency::store::StoreError> {
        Err(tower_idempotency::store::StoreError::unavailable(
            "connection refused",
        ))
    }
    async fn renew(
        &self,
        _: &tower_idempotency::store::RecordId,
        _: tower_idempotency::store::FencingToken,
        _: Duration,
    ) -> Result<(), tower_idempotency::store::StoreError> {
        Err(tower_idempotency::store::StoreError::unavailable("down"))
    }
    async fn complete(
        &self,
        _: &tower_idempotency::store::RecordId,
        _: tower_idempotency::store::FencingToken,
        _: bytes::Bytes,
        _: Duration,
    ) -> Result<(), tower_idempotency::store::StoreError> {
        Err(tower_idempotency::store::StoreError::unavailable("down"))
    }
    async fn release(
        &self,
        _: &tower_idempotency::store::RecordId,
        _: tower_idempotency::store::FencingToken,
    ) -> Result<(), tower_idempotency::store::StoreError> {
        Err(tower_idempotency::store::StoreError::unavailable("down"))
    }
}

#[tokio::test]
async fn an_unreachable_store_fails_closed_by_default_and_open_on_request() {
    let server = TestServer::start(layer(BoxStore::new(DownStore))).await;
    let r = server.post("alice", "k", ORDER).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], "5");
    assert_problem(r, 503, "store-unavailable").await;
    assert_eq!(server.executions.get(), 0);

    let open =
        TestServer::start(layer(DownStore).on_store_failure(StoreFailurePolicy::FailOpen)).await;
    let r = open.post("alice", "k", ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(open.executions.get(), 1);
}

#[tokio::test]
async fn a_full_memory_store_answers_503_instead_of_evicting_fresh_records() {
    let store = MemoryStore::builder().shards(1).max_entries(2).build();
    let server = TestServer::start(layer(store)).await;
    for key in ["a", "b"] {
        assert_eq!(
            server
                .post("alice", key, ORDER)
                .send()
                .await
                .unwrap()
                .status(),
            201
        );
    }
    let r = server.post("alice", "c", ORDER).send().await.unwrap();
    assert_problem(r, 503, "store-full").await;
    // The fresh records are still replayed.
    let r = server.post("alice", "a", ORDER).send().await.unwrap();
    assert_eq!(r.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions.get(), 2);
}

#[tokio::test]
async fn custom_problem_responses_replace_the_default() {
    let layer = layer(MemoryStore::default())
        .problem_type_base("https://api.example.com/problems/")
        .problem_responder(|problem| {
            let mut response =
                http::Response::new(bytes::Bytes::from(format!("custom {}", problem.type_uri())));
            *response.status_mut() = problem.status();
            response
        });
    let server = TestServer::start(layer).await;
    let r = server.post("alice", "a b", ORDER).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        "custom https://api.example.com/problems/key-invalid"
    );
}
