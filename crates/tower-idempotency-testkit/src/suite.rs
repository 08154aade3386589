//! The HTTP-level layer suite: every scenario a real client can observe, generic over the
//! store, so that memory, Redis, Redis Cluster and PostgreSQL all run the same checks.
//!
//! Each scenario is a public async function taking a fresh store; [`layer_suite!`] turns them
//! all into `#[tokio::test]`s for one store. Every scenario
//! - serves the layer over that store through a [`TestServer`] (real TCP, real client);
//! - uses unique users and keys ([`unique`]), so stores shared by tests and processes are fine;
//! - holds requests "in flight" with [`Gate`](crate::Gate)s and waits for store states with a
//!   [`Probe`](crate::Probe), never with sleeps standing in for either;
//! - asserts how often the handler ran, not only what the client got.
//!
//! [`layer_suite!`]: crate::layer_suite

use std::{future::Future, sync::Arc, time::Duration};

use http::Method;
use tokio::{
    sync::{Barrier, mpsc},
    task::JoinHandle,
};
use tower_idempotency::{InFlightPolicy, store::IdempotencyStore};

use crate::{
    Probed, SIGNAL_TIMEOUT, TestServer, assert_problem,
    headers::{GATE, LARGE, NO_STORE, PANIC, STATUS, USER},
    layer, unique,
};

/// The request body most scenarios send.
pub const ORDER: &str = r#"{"sku":"A-1","quantity":2}"#;

const REPLAYED: &str = "idempotent-replayed";

/// The longest one scenario may take before it fails instead of hanging the test run.
const SCENARIO_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs one scenario under [`SCENARIO_TIMEOUT`]; used by [`layer_suite!`](crate::layer_suite).
#[doc(hidden)]
pub async fn run(name: &str, scenario: impl Future<Output = ()>) {
    if tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .is_err()
    {
        panic!("scenario {name} did not finish within {SCENARIO_TIMEOUT:?}");
    }
}

fn spawn_send(request: reqwest::RequestBuilder) -> JoinHandle<reqwest::Response> {
    tokio::spawn(async move { request.send().await.expect("the server answers") })
}

fn replayed(response: &reqwest::Response) -> bool {
    response
        .headers()
        .get(REPLAYED)
        .is_some_and(|v| v == "true")
}

/// The first response comes back to a retry byte for byte: status, body, every header but
/// `Set-Cookie` (repeated ones in order, non-UTF-8 values intact), plus
/// `Idempotent-Replayed: true`. The quoted and the bare form of a key are one key, and the
/// handler sees the key as an extension.
pub async fn a_retry_replays_the_original_response_byte_for_byte<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("k"));
    let first = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    assert_eq!(
        probe.calls().stored,
        1,
        "the response is stored before it is sent"
    );
    let first_headers = first.headers().clone();
    let first_body = first.bytes().await.unwrap();

    let retry = server
        .post(&user, &format!("\"{key}\""), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry), "the retry is a replay");
    let h = retry.headers().clone();
    assert_eq!(h["location"], first_headers["location"]);
    assert_eq!(h["x-execution"], "1");
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
    assert_eq!(server.executions(), 1);

    let json: serde_json::Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(json["key"], key, "the handler sees the key as an extension");
    assert_eq!(json["echo"]["sku"], "A-1", "the handler reads the body");
}

/// Each key executes once, and requests without a key always execute.
pub async fn different_keys_and_unkeyed_requests_each_execute<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store)).await;
    let user = unique("alice");
    let keys = [unique("k-1"), unique("k-2"), unique("k-3")];
    for key in &keys {
        let r = server.post(&user, key, ORDER).send().await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(!replayed(&r));
    }
    for _ in 0..2 {
        let r = server
            .client()
            .post(server.url("/orders"))
            .header(USER, &user)
            .header("content-type", "application/json")
            .body(ORDER)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(!replayed(&r));
    }
    assert_eq!(server.executions(), 5);
    for key in &keys {
        let r = server.post(&user, key, ORDER).send().await.unwrap();
        assert_eq!(r.status(), 201);
        assert!(replayed(&r), "a retry of each key is a replay");
    }
    assert_eq!(server.executions(), 5);
    let calls = probe.calls();
    assert_eq!(
        (calls.acquired, calls.stored, calls.completed),
        (3, 3, 3),
        "unkeyed requests never reach the store"
    );
}

/// One key used by two users names two records: neither sees the other's response.
pub async fn users_never_see_each_others_responses<St: IdempotencyStore>(store: St) {
    let server = TestServer::start(layer(store)).await;
    let (alice, bob, key) = (unique("alice"), unique("bob"), unique("shared"));
    let first = server.post(&alice, &key, ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let alices = first.bytes().await.unwrap();
    let r = server.post(&bob, &key, ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(!replayed(&r), "bob's first request executes");
    let bobs = r.bytes().await.unwrap();
    assert_ne!(bobs, alices);
    assert_eq!(server.executions(), 2);
    for (user, expected) in [(&alice, &alices), (&bob, &bobs)] {
        let r = server.post(user, &key, ORDER).send().await.unwrap();
        assert!(replayed(&r));
        assert_eq!(
            &r.bytes().await.unwrap(),
            expected,
            "each user gets their own"
        );
    }
    assert_eq!(server.executions(), 2);
}

/// Of 50 identical requests released at once, one executes; while it runs (held at a gate),
/// every other one gets 409 `key-in-use` with `Retry-After: 1`; afterwards retries replay it.
pub async fn concurrent_duplicates_execute_the_handler_exactly_once<St: IdempotencyStore>(
    store: St,
) {
    const REQUESTS: usize = 50;
    let (store, probe) = Probed::new(store);
    let server = Arc::new(TestServer::start(layer(store)).await);
    let (user, key) = (unique("alice"), unique("burst"));
    let gate = server.gate("burst");
    let barrier = Arc::new(Barrier::new(REQUESTS));
    let (tx, mut rx) = mpsc::unbounded_channel();
    for _ in 0..REQUESTS {
        let (server, barrier, tx) = (server.clone(), barrier.clone(), tx.clone());
        let request = server.post(&user, &key, ORDER).header(GATE, gate.name());
        tokio::spawn(async move {
            barrier.wait().await;
            let r = request.send().await.expect("the server answers");
            let status = r.status().as_u16();
            let retry_after = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            let _ = tx.send((status, retry_after, r.bytes().await.unwrap()));
            drop(server);
        });
    }
    drop(tx);
    gate.started().await;
    // The one executing request is held at the gate: every other one must be refused now.
    for n in 0..REQUESTS - 1 {
        let answer = tokio::select! {
            answer = rx.recv() => answer,
            () = gate.arrivals(2) => panic!(
                "a duplicate executed while the first was in flight ({n} refused before it)"
            ),
            () = tokio::time::sleep(SIGNAL_TIMEOUT) => panic!(
                "only {n} of {} duplicates answered while the first was in flight \
                 (executions: {})",
                REQUESTS - 1,
                server.executions(),
            ),
        };
        let (status, retry_after, body) = answer.expect("every request answers");
        assert_eq!(
            status,
            409,
            "a duplicate of a request in flight is refused: {}",
            String::from_utf8_lossy(&body)
        );
        assert_eq!(retry_after.as_deref(), Some("1"));
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert!(problem["type"].as_str().unwrap().ends_with("key-in-use"));
    }
    assert_eq!(gate.arrived(), 1, "exactly one request reached the handler");
    assert_eq!(server.executions(), 1);
    gate.open();
    let (status, _, created) = rx.recv().await.expect("the first request answers");
    assert_eq!(status, 201);
    assert!(rx.recv().await.is_none());
    assert_eq!(server.executions(), 1);
    assert_eq!(probe.calls().acquired, 1);

    let replay = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(replay.status(), 201);
    assert!(replayed(&replay));
    assert_eq!(replay.bytes().await.unwrap(), created);
    assert_eq!(server.executions(), 1);
}

/// With [`InFlightPolicy::Wait`], duplicates that find the first request in flight wait for
/// it and all get its response; the handler runs once.
pub async fn wait_mode_replays_to_concurrent_duplicates<St: IdempotencyStore>(store: St) {
    const WAITERS: usize = 19;
    let (store, probe) = Probed::new(store);
    let layer = layer(store).in_flight(InFlightPolicy::Wait {
        timeout: Duration::from_secs(60),
        retry_after: Duration::from_secs(1),
    });
    let server = TestServer::start(layer).await;
    let (user, key) = (unique("alice"), unique("wait"));
    let gate = server.gate("first");
    let first = spawn_send(server.post(&user, &key, ORDER).header(GATE, gate.name()));
    gate.started().await;
    let waiters: Vec<_> = (0..WAITERS)
        .map(|_| spawn_send(server.post(&user, &key, ORDER)))
        .collect();
    // The waiters found the claim in flight, and wait instead of being refused.
    tokio::select! {
        () = probe.wait_until("the waiters find the claim in flight", |c| {
            c.in_flight >= WAITERS
        }) => {}
        () = server.execution_count().reached(2) => {
            panic!("a duplicate executed while the first was in flight")
        }
    }
    assert_eq!(server.executions(), 1);
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    assert!(!replayed(&first));
    let body = first.bytes().await.unwrap();
    for waiter in waiters {
        let r = waiter.await.unwrap();
        assert_eq!(r.status(), 201, "a waiter gets the first response");
        assert!(replayed(&r));
        assert_eq!(r.bytes().await.unwrap(), body);
    }
    assert_eq!(server.executions(), 1);
}

/// A key used again for a different request (body, path, query or method) gets 422
/// `key-reused`, while the first request runs and after it completed; the first request's
/// own retry still replays.
pub async fn a_key_reused_for_another_request_is_rejected_in_every_state<St: IdempotencyStore>(
    store: St,
) {
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("reuse"));
    let original = || server.keyed(Method::POST, "/orders/7", &user, &key, ORDER);
    let variants = || {
        [
            (
                "another body",
                server.keyed(Method::POST, "/orders/7", &user, &key, r#"{"sku":"B-2"}"#),
            ),
            (
                "another path",
                server.keyed(Method::POST, "/orders/8", &user, &key, ORDER),
            ),
            (
                "another query",
                server.keyed(Method::POST, "/orders/7?dry_run=1", &user, &key, ORDER),
            ),
            (
                "another method",
                server.keyed(Method::PATCH, "/orders/7", &user, &key, ORDER),
            ),
        ]
    };
    let gate = server.gate("first");
    let first = spawn_send(original().header(GATE, gate.name()));
    gate.started().await;
    for (what, request) in variants() {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 422, "while in flight, {what}");
        assert_problem(r, 422, "key-reused").await;
    }
    gate.open();
    assert_eq!(first.await.unwrap().status(), 201);
    for (what, request) in variants() {
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), 422, "after completion, {what}");
        assert_problem(r, 422, "key-reused").await;
    }
    let r = original().send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(replayed(&r), "the original request still replays");
    assert_eq!(server.executions(), 1);
}

/// JSON bodies are compared canonically: whitespace and member order do not make a retry
/// another request.
pub async fn reformatted_json_is_the_same_request<St: IdempotencyStore>(store: St) {
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("json"));
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let reformatted = "{\n  \"quantity\" : 2,\n  \"sku\" : \"A-1\"\n}";
    let r = server.post(&user, &key, reformatted).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(replayed(&r));
    assert_eq!(server.executions(), 1);
}

/// 4xx and 5xx answers are not kept: the key is free again (before the answer is sent), so a
/// corrected request runs, and that one is kept.
pub async fn errors_release_the_key_so_a_corrected_request_can_run<St: IdempotencyStore>(
    store: St,
) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("fix-me"));
    for (n, status) in ["422", "500"].into_iter().enumerate() {
        let r = server
            .post(&user, &key, ORDER)
            .header(STATUS, status)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_str(), status);
        assert!(!replayed(&r));
        assert_eq!(
            probe.calls().released,
            n + 1,
            "the key is released before the {status} is sent"
        );
    }
    let corrected = r#"{"sku":"fixed"}"#;
    let r = server.post(&user, &key, corrected).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(!replayed(&r));
    let r = server.post(&user, &key, corrected).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(replayed(&r));
    assert_eq!(server.executions(), 3);
    assert_eq!(probe.calls().stored, 1);
}

/// A response marked `Cache-Control: no-store` is never kept: every retry executes.
pub async fn no_store_responses_are_not_kept<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("volatile"));
    for n in 1..=2 {
        let r = server
            .post(&user, &key, ORDER)
            .header(NO_STORE, "1")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        assert!(!replayed(&r));
        assert_eq!(probe.calls().released, n);
    }
    assert_eq!(server.executions(), 2);
    assert_eq!(probe.calls().stored, 0);
}

/// A client that hangs up while its handler runs does not stop the handler: it runs on
/// (counted by [`HandlerTasks`](tower_idempotency::HandlerTasks)), stores its response, and
/// the retry gets it instead of a second execution.
pub async fn a_disconnected_client_still_gets_the_result_on_retry<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let layer = layer(store);
    let tasks = layer.handler_tasks();
    let server = TestServer::start(layer).await;
    let (user, key) = (unique("alice"), unique("hang-up"));
    let gate = server.gate("hang-up");
    // A client of its own: dropping its request closes its connection.
    let client = reqwest::Client::new();
    let request = client
        .post(server.url("/orders"))
        .header(USER, &user)
        .header("idempotency-key", &key)
        .header("content-type", "application/json")
        .header(GATE, gate.name())
        .body(ORDER);
    let hung_up = tokio::spawn(request.send());
    gate.started().await;
    hung_up.abort();
    drop(client);
    // The server noticed: it dropped the request's future.
    server.abandoned().reached(1).await;
    // The handler outlives its connection, and a shutdown can wait for it.
    assert_eq!(tasks.running(), 1, "the handler runs on, detached");
    assert_eq!(probe.calls().stored, 0);
    gate.open();
    tokio::time::timeout(SIGNAL_TIMEOUT, tasks.wait_idle())
        .await
        .expect("the detached handler finishes");
    assert_eq!(
        probe.calls().stored,
        1,
        "the detached handler stored its response"
    );
    assert_eq!(server.executions(), 1);
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert!(replayed(&retry));
    assert_eq!(server.executions(), 1);
}

/// Missing (when required) and malformed keys get 400, keyed requests without a user 401;
/// methods the layer does not act on pass through whatever their key.
pub async fn malformed_and_missing_keys_and_scopes<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store).require_key(true)).await;
    let user = unique("alice");
    let post = || {
        server
            .client()
            .post(server.url("/orders"))
            .header(USER, &user)
            .header("content-type", "application/json")
            .body(ORDER)
    };
    assert_problem(post().send().await.unwrap(), 400, "key-required").await;
    let long = "k".repeat(256);
    for bad in ["", "a b", "\"a\", \"b\"", "\"open", long.as_str()] {
        let r = post().header("idempotency-key", bad).send().await.unwrap();
        assert_eq!(r.status(), 400, "key {bad:?}");
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
        .client()
        .post(server.url("/orders"))
        .header("idempotency-key", unique("k"))
        .body(ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 401, "scope-missing").await;
    // Methods the layer does not act on pass through, key or not.
    let r = server
        .client()
        .get(server.url("/orders"))
        .header("idempotency-key", "a b")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "listing");
    assert_eq!(server.executions(), 0);
    assert_eq!(
        probe.calls(),
        Default::default(),
        "refused requests never reach the store"
    );
}

/// Bodies over the request limit get 413 without executing or claiming the key, whether
/// announced by `Content-Length` or found while reading a chunked body.
pub async fn oversized_requests_are_refused_unexecuted<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store).max_request_body(1024)).await;
    let (user, key) = (unique("alice"), unique("big"));
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2048));
    // The server answers without reading the whole body, then closes the connection: a
    // pooled client could reuse it for the next request just as it closes. No pooling here.
    let unpooled = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let r = unpooled
        .post(server.url("/orders"))
        .header(USER, &user)
        .header("idempotency-key", &key)
        .header("content-type", "application/json")
        .body(big.clone())
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "request-too-large").await;
    // Without Content-Length (chunked), the limit is enforced while reading.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        big.as_bytes().chunks(512).map(|c| Ok(c.to_vec())).collect();
    let r = unpooled
        .post(server.url("/orders"))
        .header(USER, &user)
        .header("idempotency-key", &key)
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    assert_problem(r, 413, "request-too-large").await;
    assert_eq!(server.executions(), 0);
    assert_eq!(probe.calls(), Default::default(), "nothing was claimed");
    // The key was never claimed: a request within the limit runs.
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert!(!replayed(&r));
    assert_eq!(server.executions(), 1);
}

/// A response over the response limit still reaches its caller in full; retries get 410
/// `response-not-kept` (with the first `Location`), never a second execution.
pub async fn oversized_responses_reach_the_caller_and_are_never_re_executed<
    St: IdempotencyStore,
>(
    store: St,
) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store).max_response_body(4096)).await;
    let (user, key) = (unique("alice"), unique("huge"));
    let r = server
        .post(&user, &key, ORDER)
        .header(LARGE, "100000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let location = r.headers()["location"].clone();
    assert_eq!(r.bytes().await.unwrap().len(), 100_000);
    assert_eq!(probe.calls().stored, 1, "that it ran is recorded");
    for _ in 0..2 {
        let retry = server
            .post(&user, &key, ORDER)
            .header(LARGE, "100000")
            .send()
            .await
            .unwrap();
        assert_eq!(retry.headers()["location"], location);
        assert!(replayed(&retry));
        assert_problem(retry, 410, "response-not-kept").await;
    }
    assert_eq!(server.executions(), 1);
}

/// A panicking handler gets 500 `handler-failed`, and the key is released before that answer
/// is sent: an immediate retry (no pause) executes.
pub async fn a_panicking_handler_gets_a_problem_and_frees_the_key<St: IdempotencyStore>(store: St) {
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("alice"), unique("boom"));
    let r = server
        .post(&user, &key, ORDER)
        .header(PANIC, "1")
        .send()
        .await
        .unwrap();
    assert_problem(r, 500, "handler-failed").await;
    let released_at_answer = probe.calls().released;
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(
        r.status(),
        201,
        "an immediate retry executes (releases the store had seen when the 500 arrived: \
         {released_at_answer})"
    );
    assert!(!replayed(&r));
    assert_eq!(
        released_at_answer, 1,
        "the key is released before the 500 is sent"
    );
    assert_eq!(server.executions(), 2);
}

/// While a handler runs longer than the lease, the layer renews the claim: a retry two
/// leases later is refused with 409, not executed a second time.
pub async fn the_lease_is_renewed_while_a_slow_handler_runs<St: IdempotencyStore>(store: St) {
    // Renewed every third of the lease: 400 ms of slack per renewal on a loaded machine.
    const LEASE: Duration = Duration::from_millis(600);
    const RENEWALS: usize = 6; // two leases' worth
    let (store, probe) = Probed::new(store);
    let server = TestServer::start(layer(store).lease(LEASE)).await;
    let (user, key) = (unique("alice"), unique("slow"));
    let gate = server.gate("slow");
    let first = spawn_send(server.post(&user, &key, ORDER).header(GATE, gate.name()));
    gate.started().await;
    probe
        .wait_until("six lease renewals (or a failed one)", |c| {
            c.renewed >= RENEWALS || c.errors > 0
        })
        .await;
    assert_eq!(
        probe.calls().errors,
        0,
        "every renewal succeeds: {:?}",
        probe.calls()
    );
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_problem(r, 409, "key-in-use").await;
    gate.open();
    let first = first.await.unwrap();
    assert_eq!(first.status(), 201);
    assert_eq!(server.executions(), 1);
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert!(replayed(&r));
    assert_eq!(server.executions(), 1);
    assert_eq!(probe.calls().errors, 0);
}

/// A problem responder and a type base replace the default problem responses, for refusals
/// made before the store (a malformed key) and after it (a reused key).
pub async fn custom_problem_responses_replace_the_default<St: IdempotencyStore>(store: St) {
    let layer = layer(store)
        .problem_type_base("https://api.example.com/problems/")
        .problem_responder(|problem| {
            let mut response =
                http::Response::new(bytes::Bytes::from(format!("custom {}", problem.type_uri())));
            *response.status_mut() = problem.status();
            response
        });
    let server = TestServer::start(layer).await;
    let (user, key) = (unique("alice"), unique("custom"));
    let r = server.post(&user, "a b", ORDER).send().await.unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.text().await.unwrap(),
        "custom https://api.example.com/problems/key-invalid"
    );
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(r.status(), 201);
    let r = server
        .post(&user, &key, r#"{"sku":"B-2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.text().await.unwrap(),
        "custom https://api.example.com/problems/key-reused"
    );
    assert_eq!(server.executions(), 1);
}
