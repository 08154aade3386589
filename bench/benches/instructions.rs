//! Instructions per request through `IdempotencyLayer` over `MemoryStore`, under callgrind
//! (gungraun). Run by `scripts/bench`, which installs valgrind and the matching
//! `gungraun-runner`; read by `loadbench instructions`.
//!
//! Each case measures one `oneshot` of a prepared request on a current-thread runtime, the
//! response body read to the end. Everything else is set-up, outside the count: the runtime,
//! the store and layer, the request, the state the case needs (a completed key, a key still
//! running) and one warm-up request of the same kind, so that one-time work (the lease keeper's
//! task, lazy statics, the allocator's first pages) is not counted. The teardown checks the
//! answer: a case that took the wrong path fails instead of measuring it.

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use axum::{
    Json, Router,
    body::Body,
    extract::State,
    http::{Request, StatusCode, header},
    routing::post,
};
use bytes::Bytes;
use gungraun::{library_benchmark, library_benchmark_group, main};
use http_body_util::BodyExt as _;
use serde_json::{Value, json};
use tokio::{runtime::Runtime, sync::Notify, task::JoinHandle};
use tower::ServiceExt as _;
use tower_idempotency::{IdempotencyLayer, InFlightPolicy, store::memory::MemoryStore};

/// The load harness's request body (64 bytes).
const BODY: &[u8] = br#"{"name":"web","image":"registry.example/web:1.4.2","replicas":3}"#;

/// Holds a handler until released: the first request of `conflict_409`.
#[derive(Default)]
struct Gate {
    started: Notify,
    release: Notify,
}

#[derive(Clone)]
struct AppState {
    executions: Arc<AtomicU64>,
    gate: Option<Arc<Gate>>,
}

/// The load harness's handler (`bench/src/app.rs`): parse, count, answer 201 + JSON.
async fn create_deployment(
    State(state): State<AppState>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = state.executions.fetch_add(1, Ordering::Relaxed) + 1;
    if let Some(gate) = &state.gate {
        gate.started.notify_one();
        gate.release.notified().await;
    }
    let name = request.get("name").cloned().unwrap_or(Value::Null);
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "status": "queued" })),
    )
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime")
}

fn router(gate: Option<Arc<Gate>>) -> Router {
    let state = AppState {
        executions: Arc::new(AtomicU64::new(0)),
        gate,
    };
    Router::new()
        .route("/api/deployments", post(create_deployment))
        .with_state(state)
}

/// Our layer as the load harness configures it (scoped by `x-user`), over a fresh store.
fn layered(gate: Option<Arc<Gate>>) -> Router {
    let layer = IdempotencyLayer::new(MemoryStore::default())
        .scope(|parts| {
            Some(
                parts
                    .headers
                    .get("x-user")?
                    .to_str()
                    .ok()?
                    .to_owned()
                    .into(),
            )
        })
        .in_flight(InFlightPolicy::Reject {
            retry_after: std::time::Duration::from_secs(1),
        });
    router(gate).layer(layer)
}

fn request(key: Option<&str>) -> Request<Body> {
    let mut request = Request::post("/api/deployments")
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-user", "alice");
    if let Some(key) = key {
        request = request.header("idempotency-key", format!("\"{key}\""));
    }
    request
        .body(Body::from(Bytes::from_static(BODY)))
        .expect("a valid request")
}

/// The first request of `conflict_409`, parked in its handler.
type Held = Option<(Arc<Gate>, JoinHandle<()>)>;

/// What a measured request needs, prepared.
struct Case {
    runtime: Runtime,
    /// Consumed by the measured `oneshot`: a clone, as a server hands each connection.
    app: Router,
    /// The app itself, so that the store and layer are dropped in the teardown, not counted.
    kept: Router,
    request: Request<Body>,
    held: Held,
}

/// The measured request's answer, checked (and everything dropped) in the teardown.
struct Answer {
    status: StatusCode,
    replayed: bool,
    body: Bytes,
    _case: (Runtime, Router, Held),
}

/// Sends one request and reads its body to the end.
async fn send(app: Router, request: Request<Body>) -> (StatusCode, bool, Bytes) {
    let response = app.oneshot(request).await.expect("Router is infallible");
    let status = response.status();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .is_some_and(|v| v == "true");
    let body = response
        .into_body()
        .collect()
        .await
        .expect("an in-memory body")
        .to_bytes();
    (status, replayed, body)
}

impl Case {
    /// Sends `warm_up` (not measured) and prepares `request` against `app`.
    fn new(app: Router, warm_up: Vec<Request<Body>>, request: Request<Body>) -> Self {
        let runtime = runtime();
        for r in warm_up {
            runtime.block_on(send(app.clone(), r));
        }
        Self {
            runtime,
            app: app.clone(),
            kept: app,
            request,
            held: None,
        }
    }
}

fn setup_baseline() -> Case {
    Case::new(router(None), vec![request(None)], request(None))
}

fn setup_keyed_first() -> Case {
    Case::new(
        layered(None),
        vec![request(Some("warm-up"))],
        request(Some("k-1")),
    )
}

fn setup_replay() -> Case {
    // Completes k-1, then replays it once as the warm-up.
    Case::new(
        layered(None),
        vec![request(Some("k-1")), request(Some("k-1"))],
        request(Some("k-1")),
    )
}

fn setup_conflict_409() -> Case {
    let gate = Arc::new(Gate::default());
    let app = layered(Some(Arc::clone(&gate)));
    let runtime = runtime();
    // The first request with k-1, parked in its handler until the case is dropped.
    let running = runtime.spawn({
        let app = app.clone();
        async move {
            send(app, request(Some("k-1"))).await;
        }
    });
    runtime.block_on(gate.started.notified());
    // One 409 as the warm-up of the measured path.
    let (status, _, _) = runtime.block_on(send(app.clone(), request(Some("k-1"))));
    assert_eq!(status, StatusCode::CONFLICT, "the warm-up of conflict_409");
    Case {
        runtime,
        app: app.clone(),
        kept: app,
        request: request(Some("k-1")),
        held: Some((gate, running)),
    }
}

fn setup_passthrough() -> Case {
    Case::new(layered(None), vec![request(None)], request(None))
}

// The measured function: one request, body read to the end.
#[library_benchmark]
#[bench::baseline(setup = setup_baseline, teardown = expect_created)]
#[bench::keyed_first(setup = setup_keyed_first, teardown = expect_created)]
#[bench::replay(setup = setup_replay, teardown = expect_replayed)]
#[bench::conflict_409(setup = setup_conflict_409, teardown = expect_conflict)]
#[bench::passthrough(setup = setup_passthrough, teardown = expect_created)]
fn one_request(case: Case) -> Answer {
    let Case {
        runtime,
        app,
        kept,
        request,
        held,
    } = case;
    let (status, replayed, body) = runtime.block_on(send(app, black_box(request)));
    Answer {
        status,
        replayed,
        body,
        _case: (runtime, kept, held),
    }
}

fn expect(answer: &Answer, status: StatusCode, replayed: bool) {
    assert_eq!(answer.status, status, "status of the measured request");
    assert_eq!(
        answer.replayed, replayed,
        "Idempotent-Replayed of the measured request"
    );
}

fn expect_created(answer: Answer) {
    expect(&answer, StatusCode::CREATED, false);
    assert!(
        answer.body.ends_with(br#""status":"queued"}"#),
        "the handler's body, got {:?}",
        answer.body
    );
}

fn expect_replayed(answer: Answer) {
    expect(&answer, StatusCode::CREATED, true);
    assert!(answer.body.ends_with(br#""status":"queued"}"#));
}

fn expect_conflict(answer: Answer) {
    expect(&answer, StatusCode::CONFLICT, false);
    assert!(
        answer.body.windows(10).any(|w| w == b"key-in-use"),
        "a key-in-use problem, got {:?}",
        answer.body
    );
}

library_benchmark_group!(name = layer, benchmarks = one_request);

main!(library_benchmark_groups = layer);
