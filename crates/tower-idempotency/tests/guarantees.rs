//! The layer's promise under the faults it can see: once a handler has run, its key is never
//! handed to a second execution, and no caller mistakes a broken answer for a good one.
//!
//! Store faults are injected by [`Faults`] around a real store; every test counts handler
//! executions, not answers.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Extension, Router, body::Body, routing::post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use tokio::sync::Notify;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{
    IdempotencyLayer, InFlightPolicy, Lease, RequestBody, StoreFailurePolicy,
    store::{StoreErrorKind, memory::MemoryStore},
};
use tower_idempotency_testkit::{
    Faults, Operation, Probed, SIGNAL_TIMEOUT, TestServer, assert_problem, layer, serve, unique,
};

const ORDER: &str = r#"{"sku":"A-1","quantity":2}"#;

/// Waits for `what`, failing the test after [`SIGNAL_TIMEOUT`] instead of hanging.
async fn signal<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(SIGNAL_TIMEOUT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

// 1. After the handler has run, the key is never released because its response could not be
//    stored.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_that_fails_for_a_while_is_retried_and_the_response_replays() {
    let faults = Faults::new();
    faults.fail(Operation::Complete, 3, StoreErrorKind::Unavailable);
    let server = TestServer::start(layer(faults.wrap(MemoryStore::default()))).await;
    let (user, key) = (unique("user"), unique("key"));
    let first = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let body = first.bytes().await.unwrap();
    assert_eq!(faults.injected(Operation::Complete), 3);
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), body);
    assert_eq!(server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_that_stays_unreachable_keeps_the_claim_instead_of_releasing_it() {
    let faults = Faults::new();
    faults.fail(Operation::Complete, usize::MAX, StoreErrorKind::Unavailable);
    let layer = layer(faults.wrap(MemoryStore::default())).lease(Duration::from_secs(60));
    let server = TestServer::start(layer).await;
    let (user, key) = (unique("user"), unique("key"));
    let first = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(
        first.status(),
        201,
        "the caller still gets the handler's answer"
    );
    assert!(
        faults.calls(Operation::Complete) > 1,
        "complete was retried"
    );
    assert_eq!(
        faults.calls(Operation::Release),
        0,
        "the key was never released"
    );
    // The store came back, but the record was never completed: the claim holds until its
    // lease ends, so the retry is told to wait instead of running the handler again.
    faults.heal();
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_problem(retry, 409, "key-in-use").await;
    assert_eq!(server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_without_room_in_the_store_is_recorded_as_ran_not_kept() {
    let faults = Faults::new();
    faults.fail(Operation::Complete, 1, StoreErrorKind::CapacityExhausted);
    let server = TestServer::start(layer(faults.wrap(MemoryStore::default()))).await;
    let (user, key) = (unique("user"), unique("key"));
    let first = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(retry.headers()["location"], "/orders/1");
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_problem(retry, 410, "response-not-kept").await;
    assert_eq!(server.executions(), 1);
}

// 2. The memory store can always complete what it let claim.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_memory_store_never_makes_a_key_run_twice() {
    // Room for about three 300 KiB responses; min_retention keeps every record fresh.
    let store = MemoryStore::builder()
        .max_bytes(1024 * 1024)
        .min_retention(Duration::from_secs(3600))
        .build();
    let server = TestServer::start(layer(store).max_response_body(512 * 1024)).await;
    let user = unique("user");
    let keys: Vec<_> = (0..6).map(|n| unique(&format!("key-{n}"))).collect();
    for key in &keys {
        let r = server
            .post(&user, key, ORDER)
            .header("x-large", "300000")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 => assert_eq!(r.bytes().await.unwrap().len(), 300_000),
            503 => {
                assert_problem(r, 503, "store-full").await;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    let executed = server.executions();
    assert!(executed >= 3, "a 1 MiB store holds three 300 KiB responses");
    // Every key that ran replays (its response, or the note that it ran); none runs again.
    for key in &keys {
        let r = server
            .post(&user, key, ORDER)
            .header("x-large", "300000")
            .send()
            .await
            .unwrap();
        match r.status().as_u16() {
            201 | 410 => assert_eq!(r.headers()["idempotent-replayed"], "true"),
            503 => {}
            other => panic!("unexpected status {other}"),
        }
    }
    assert_eq!(server.executions(), executed, "no key ran twice");
}

#[tokio::test]
async fn a_response_limit_the_store_can_never_hold_is_refused_when_the_layer_is_built() {
    let store = MemoryStore::builder().max_bytes(64 * 1024).build();
    let layer = IdempotencyLayer::new(store).max_response_body(1024 * 1024);
    let error = layer.validate().unwrap_err();
    assert!(error.to_string().contains("max_response_body"), "{error}");
    let fine = IdempotencyLayer::new(MemoryStore::builder().max_bytes(64 * 1024).build())
        .max_response_body(16 * 1024);
    fine.validate().unwrap();
}

#[test]
#[should_panic(expected = "max_response_body")]
fn wrapping_a_service_with_an_impossible_response_limit_fails_at_start_up() {
    let store = MemoryStore::builder().max_bytes(64 * 1024).build();
    let layer = IdempotencyLayer::new(store).max_response_body(1024 * 1024);
    let handler = tower::service_fn(|_: Request<RequestBody<Body>>| async {
        Ok::<_, Infallible>(Response::new(Body::empty()))
    });
    let _ = tower::Layer::layer(&layer, handler);
}

// 3. Lease renewal is not starved by the handler.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The test holds the lock the handler blocks on while it sends the retry: that is the point.
#[allow(clippy::await_holding_lock)]
async fn a_handler_that_blocks_its_thread_keeps_its_lease() {
    let (store, probe) = Probed::new(MemoryStore::default());
    let started = Arc::new(Notify::new());
    let executions = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(std::sync::Mutex::new(()));
    let held = release.lock().unwrap();
    let app = {
        let (started, executions, release) = (started.clone(), executions.clone(), release.clone());
        Router::new()
            .route(
                "/block",
                post(move || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    started.notify_one();
                    // Blocks this worker thread (a CPU-bound or blocking handler).
                    drop(release.lock().unwrap_or_else(|e| e.into_inner()));
                    StatusCode::CREATED
                }),
            )
            .layer(
                IdempotencyLayer::new(store)
                    .allow_unscoped(true)
                    .lease(Duration::from_millis(300)),
            )
    };
    let served = serve(app).await;
    let client = reqwest::Client::new();
    let key = unique("block");
    let first = {
        let (client, url, key) = (client.clone(), served.url("/block"), key.clone());
        tokio::spawn(async move {
            client
                .post(url)
                .header("idempotency-key", key)
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    signal("the handler to start", started.notified()).await;
    // Several leases pass while the handler's thread is blocked; the lease is renewed.
    probe.wait_until("three renewals", |c| c.renewed >= 3).await;
    let retry = client
        .post(served.url("/block"))
        .header("idempotency-key", &key)
        .send()
        .await
        .unwrap();
    assert_problem(retry, 409, "key-in-use").await;
    drop(held);
    assert_eq!(first.await.unwrap(), 201);
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_learns_that_it_lost_its_lease() {
    let faults = Faults::new();
    faults.fail(Operation::Renew, usize::MAX, StoreErrorKind::LeaseLost);
    let app = Router::new()
        .route(
            "/pay",
            post(|Extension(lease): Extension<Lease>| async move {
                assert!(!lease.is_lost(), "a fresh claim is held");
                // An irreversible step checks the lease first; here: wait until it is gone.
                lease.lost().await;
                (StatusCode::CREATED, format!("lost={}", lease.is_lost()))
            }),
        )
        .layer(
            IdempotencyLayer::new(faults.wrap(MemoryStore::default()))
                .allow_unscoped(true)
                .lease(Duration::from_millis(90)),
        );
    let served = serve(app).await;
    let response = signal(
        "the handler to see its lease lost",
        reqwest::Client::new()
            .post(served.url("/pay"))
            .header("idempotency-key", unique("pay"))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(response.text().await.unwrap(), "lost=true");
    assert_eq!(
        faults.injected(Operation::Renew),
        1,
        "no renewal after the refusal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_that_came_back_late_is_renewed_before_the_handler_runs() {
    let faults = Faults::new();
    // The claim's answer takes two thirds of the lease: too little may be left to run on.
    faults.delay(Operation::Claim, Duration::from_millis(400));
    let (store, probe) = Probed::new(faults.wrap(MemoryStore::default()));
    let server = TestServer::start(layer(store).lease(Duration::from_millis(600))).await;
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert!(probe.calls().renewed >= 1, "renewed before running");
    // If that renewal is refused, nothing runs and the caller may retry.
    faults.fail(Operation::Renew, usize::MAX, StoreErrorKind::LeaseLost);
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 503, "store-unavailable").await;
    assert_eq!(server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_open_never_covers_a_misconfigured_store() {
    let faults = Faults::new();
    let layer =
        layer(faults.wrap(MemoryStore::default())).on_store_failure(StoreFailurePolicy::FailOpen);
    let server = TestServer::start(layer).await;
    faults.fail(Operation::Claim, 1, StoreErrorKind::Backend);
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_problem(r, 503, "store-unavailable").await;
    assert_eq!(server.executions(), 0, "a misconfigured store runs nothing");
    faults.fail(Operation::Claim, 1, StoreErrorKind::Unavailable);
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        201,
        "an unreachable one fails open, as configured"
    );
    assert_eq!(server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_arrives_after_the_record_completed_is_no_loss() {
    let faults = Faults::new();
    // The renewal reaches the store only after the handler finished and its record completed.
    faults.delay(Operation::Renew, Duration::from_millis(300));
    let (store, probe) = Probed::new(faults.wrap(MemoryStore::default()));
    let seen: Arc<std::sync::Mutex<Option<Lease>>> = Arc::default();
    let app = {
        let (faults, seen) = (faults.clone(), seen.clone());
        Router::new()
            .route(
                "/finish",
                post(move |Extension(lease): Extension<Lease>| async move {
                    *seen.lock().unwrap() = Some(lease);
                    while faults.calls(Operation::Renew) == 0 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    StatusCode::CREATED // while the renewal is on its way
                }),
            )
            .layer(
                IdempotencyLayer::new(store)
                    .allow_unscoped(true)
                    .lease(Duration::from_millis(120)),
            )
    };
    let served = serve(app).await;
    let r = reqwest::Client::new()
        .post(served.url("/finish"))
        .header("idempotency-key", unique("finish"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    probe
        .wait_until("the late renewal refused", |c| c.errors >= 1)
        .await;
    let lease = seen
        .lock()
        .unwrap()
        .clone()
        .expect("the handler saw its lease");
    assert!(
        !lease.is_lost(),
        "a finished request did not lose its claim"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_while_its_claim_is_answered_leaves_no_claim_behind() {
    let faults = Faults::new();
    faults.delay(Operation::Claim, Duration::from_millis(500));
    let (store, probe) = Probed::new(faults.wrap(MemoryStore::default()));
    // A lease long enough that an orphaned claim would surely block the retry.
    let server = TestServer::start(layer(store).lease(Duration::from_secs(60))).await;
    let (user, key) = (unique("user"), unique("key"));
    let gave_up = server
        .post(&user, &key, ORDER)
        .timeout(Duration::from_millis(100))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    // The claim still reached its answer, and the key it took was given back.
    probe
        .wait_until("the abandoned claim released", |c| {
            c.acquired == 1 && c.released == 1
        })
        .await;
    faults.heal();
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(
        retry.status(),
        201,
        "the retry runs at once, not 409 for a lease"
    );
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(server.executions(), 1, "only the retry executed");
}

// 4. A body that fails mid-stream reaches the client as a failure.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_breaks_off_is_a_failure_and_the_key_stays_taken() {
    let executions = Arc::new(AtomicUsize::new(0));
    let app = {
        let executions = executions.clone();
        Router::new()
            .route(
                "/items",
                post(move || async move {
                    executions.fetch_add(1, Ordering::SeqCst);
                    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
                        Ok(Bytes::from_static(b"{\"items\":[1,2,")),
                        Err(std::io::Error::other("the database cursor died")),
                    ];
                    let mut response =
                        Response::new(Body::from_stream(futures_util::stream::iter(chunks)));
                    response
                        .headers_mut()
                        .insert("location", HeaderValue::from_static("/items/9"));
                    response
                }),
            )
            .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true))
    };
    let served = serve(app).await;
    let client = reqwest::Client::new();
    let key = unique("items");
    let send = || {
        client
            .post(served.url("/items"))
            .header("idempotency-key", &key)
            .send()
    };
    let first = send().await.unwrap();
    assert_problem(first, 500, "response-failed").await;
    let retry = send().await.unwrap();
    assert_eq!(retry.headers()["location"], "/items/9");
    assert_problem(retry, 410, "response-not-kept").await;
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}

// 7. No configuration panics.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_durations_are_clamped_not_panicked_on() {
    let layer = layer(MemoryStore::default())
        .lease(Duration::MAX)
        .ttl(Duration::MAX)
        .in_flight(InFlightPolicy::Wait {
            timeout: Duration::MAX,
            retry_after: Duration::MAX,
        })
        .on_store_failure(StoreFailurePolicy::FailClosed {
            retry_after: Duration::MAX,
        });
    let server = Arc::new(TestServer::start(layer).await);
    let (user, key) = (unique("user"), unique("key"));
    let gate = unique("gate");
    let first = {
        let (server, user, key, gate) = (server.clone(), user.clone(), key.clone(), gate.clone());
        tokio::spawn(async move {
            let r = server
                .post(&user, &key, ORDER)
                .header("x-gate", gate)
                .send()
                .await
                .unwrap();
            (r.status(), r.bytes().await.unwrap())
        })
    };
    server.gate(&gate).started().await;
    // A duplicate waits (the wait deadline is far away, not an overflow) and gets the replay.
    let waiting = {
        let (server, user, key) = (server.clone(), user.clone(), key.clone());
        tokio::spawn(async move {
            let r = server.post(&user, &key, ORDER).send().await.unwrap();
            (r.status(), r.bytes().await.unwrap())
        })
    };
    server.gate(&gate).open();
    let (status, body) = first.await.unwrap();
    assert_eq!(status, 201);
    let (replay_status, replay_body) = signal("the waiting duplicate", waiting).await.unwrap();
    assert_eq!(replay_status, 201);
    assert_eq!(replay_body, body);
    assert_eq!(server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extreme_durations_reach_the_store_and_the_client_clamped() {
    use tower_idempotency::{MAX_LEASE, MAX_TTL, MAX_WAIT, MIN_LEASE};
    let faults = Faults::new();
    let layer_of = |faults: &Faults| layer(faults.wrap(MemoryStore::default()));
    let server = TestServer::start(layer_of(&faults).lease(Duration::MAX).ttl(Duration::MAX)).await;
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(faults.last_duration(Operation::Claim), Some(MAX_LEASE));
    assert_eq!(faults.last_duration(Operation::Complete), Some(MAX_TTL));

    let faults = Faults::new();
    let server = TestServer::start(layer_of(&faults).lease(Duration::ZERO)).await;
    server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(faults.last_duration(Operation::Claim), Some(MIN_LEASE));

    // What the client is told to wait.
    let max_wait = MAX_WAIT.as_secs().to_string();
    let faults = Faults::new();
    faults.fail(Operation::Claim, 1, StoreErrorKind::Unavailable);
    let server = TestServer::start(layer_of(&faults).on_store_failure(
        StoreFailurePolicy::FailClosed {
            retry_after: Duration::MAX,
        },
    ))
    .await;
    let r = server
        .post(&unique("user"), &unique("key"), ORDER)
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], max_wait.as_str());
    assert_problem(r, 503, "store-unavailable").await;

    let server = TestServer::start(layer_of(&Faults::new()).in_flight(InFlightPolicy::Reject {
        retry_after: Duration::MAX,
    }))
    .await;
    let (user, key, gate) = (unique("user"), unique("key"), unique("gate"));
    let held = server
        .post(&user, &key, ORDER)
        .header("x-gate", &gate)
        .send();
    let held = tokio::spawn(held);
    server.gate(&gate).started().await;
    let r = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(r.headers()["retry-after"], max_wait.as_str());
    assert_problem(r, 409, "key-in-use").await;
    server.gate(&gate).open();
    assert_eq!(held.await.unwrap().unwrap().status(), 201);
}

// 8. A panicking handler's key is released before its 500 is sent.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_releases_its_key_before_answering() {
    let (store, probe) = Probed::new(MemoryStore::default());
    let server = TestServer::start(layer(store)).await;
    let (user, key) = (unique("user"), unique("key"));
    let r = server
        .post(&user, &key, ORDER)
        .header("x-panic", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(probe.calls().released, 1, "released before the answer left");
    assert_problem(r, 500, "handler-failed").await;
    let retry = server.post(&user, &key, ORDER).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(server.executions(), 2);
}

// 9. Waiting duplicates hold nothing of the inner service.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_duplicates_do_not_hold_the_inner_services_capacity() {
    let (store, probe) = Probed::new(MemoryStore::default());
    let started = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let handler = {
        let (started, go) = (started.clone(), go.clone());
        tower::service_fn(
            move |request: Request<RequestBody<hyper::body::Incoming>>| {
                let (started, go) = (started.clone(), go.clone());
                async move {
                    if request.headers().contains_key("x-hold") {
                        started.notify_one();
                        go.notified().await;
                    }
                    let mut response =
                        Response::new(http_body_util::Full::new(Bytes::from("done")));
                    *response.status_mut() = StatusCode::CREATED;
                    Ok::<_, Infallible>(response)
                }
            },
        )
    };
    // Two requests may be inside the handler at once.
    let service =
        ServiceBuilder::new()
            .layer(IdempotencyLayer::new(store).allow_unscoped(true).in_flight(
                InFlightPolicy::Wait {
                    timeout: Duration::from_secs(60),
                    retry_after: Duration::from_secs(1),
                },
            ))
            .concurrency_limit(2)
            .service(handler);
    let served = serve(service).await;
    let client = reqwest::Client::new();
    let url = served.url("/");
    let held_key = unique("held");
    let post = |key: String, hold: bool| {
        let mut request = client.post(&url).header("idempotency-key", key);
        if hold {
            request = request.header("x-hold", "1");
        }
        tokio::spawn(request.send())
    };
    let first = post(held_key.clone(), true);
    signal("the first request to start", started.notified()).await;
    let duplicates: Vec<_> = (0..3).map(|_| post(held_key.clone(), true)).collect();
    probe
        .wait_until("every duplicate waiting", |c| c.in_flight >= 3)
        .await;
    // One slot is taken by the first request; the waiting duplicates hold none.
    let other = signal("an unrelated request to pass", post(unique("other"), false))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(other.status(), 201);
    go.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), 201);
    for duplicate in duplicates {
        let r = duplicate.await.unwrap().unwrap();
        assert_eq!(r.headers()["idempotent-replayed"], "true");
    }
    assert_eq!(
        probe.calls().acquired,
        2,
        "two executions: the held key and the other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_answered_while_the_inner_service_is_full() {
    let (started_tx, mut started) = tokio::sync::mpsc::unbounded_channel::<()>();
    let go = Arc::new(tokio::sync::Semaphore::new(0));
    let handler = {
        let go = go.clone();
        tower::service_fn(
            move |request: Request<RequestBody<hyper::body::Incoming>>| {
                let (started_tx, go) = (started_tx.clone(), go.clone());
                async move {
                    if request.headers().contains_key("x-hold") {
                        let _ = started_tx.send(());
                        go.acquire().await.map(|permit| permit.forget()).ok();
                    }
                    let mut response =
                        Response::new(http_body_util::Full::new(Bytes::from("done")));
                    *response.status_mut() = StatusCode::CREATED;
                    Ok::<_, Infallible>(response)
                }
            },
        )
    };
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true))
        .concurrency_limit(2)
        .service(handler);
    let served = serve(service).await;
    let client = reqwest::Client::new();
    let url = served.url("/");
    let post = |key: &str, hold: bool| {
        let mut request = client.post(&url).header("idempotency-key", key);
        if hold {
            request = request.header("x-hold", "1");
        }
        tokio::spawn(request.send())
    };
    let done = unique("done");
    assert_eq!(post(&done, false).await.unwrap().unwrap().status(), 201);
    // Both slots of the inner service are taken by running handlers...
    let held: Vec<_> = (0..2)
        .map(|n| post(&unique(&format!("held-{n}")), true))
        .collect();
    for _ in 0..2 {
        signal("a held handler to start", started.recv()).await;
    }
    // ... and a retry of a finished key is still answered, from the store.
    let replay = signal(
        "the replay while the inner service is full",
        post(&done, false),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    go.add_permits(2);
    for request in held {
        assert_eq!(request.await.unwrap().unwrap().status(), 201);
    }
}

// 10. Trailers reach the first caller, and are stored with the response.

#[tokio::test]
async fn trailers_reach_the_caller_and_every_replay() {
    let executions = Arc::new(AtomicUsize::new(0));
    let handler = {
        let executions = executions.clone();
        tower::service_fn(move |_: Request<RequestBody<Body>>| {
            executions.fetch_add(1, Ordering::SeqCst);
            async move {
                let mut trailers = HeaderMap::new();
                trailers.insert("x-checksum", HeaderValue::from_static("c0ffee"));
                let frames: Vec<Result<http_body::Frame<Bytes>, Infallible>> = vec![
                    Ok(http_body::Frame::data(Bytes::from_static(b"payload"))),
                    Ok(http_body::Frame::trailers(trailers)),
                ];
                let body = StreamBody::new(futures_util::stream::iter(frames));
                let mut response = Response::new(body);
                *response.status_mut() = StatusCode::CREATED;
                Ok::<_, Infallible>(response)
            }
        })
    };
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true))
        .service(handler);
    let request = || {
        Request::post("/")
            .header("idempotency-key", "trailers")
            .body(Body::empty())
            .unwrap()
    };
    for attempt in 0..2 {
        let response = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(response.status(), 201);
        assert_eq!(
            response.headers().contains_key("idempotent-replayed"),
            attempt == 1
        );
        let collected = response.into_body().collect().await.unwrap();
        let trailers = collected.trailers();
        assert_eq!(
            trailers.map(|t| &t["x-checksum"]),
            Some(&HeaderValue::from_static("c0ffee")),
            "trailers of attempt {attempt}"
        );
        assert_eq!(&collected.to_bytes()[..], b"payload");
    }
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}
