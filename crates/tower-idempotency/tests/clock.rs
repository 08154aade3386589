//! The layer on tokio's paused clock: TTLs and waits measured in virtual time, so these
//! tests take no real time and cannot race a loaded machine.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::body::Body;
use http::{Request, Response, StatusCode};
use tokio::sync::Notify;
use tower::{Service, ServiceBuilder, ServiceExt};
use tower_idempotency::{
    IdempotencyLayer, InFlightPolicy, RequestBody, ResponseBody, store::memory::MemoryStore,
};

type Handler = tower::util::BoxCloneSyncService<
    Request<RequestBody<Body>>,
    Response<http_body_util::Full<bytes::Bytes>>,
    Infallible,
>;

/// A handler counting its runs; requests with `x-hold` wait for `release`.
fn handler(runs: Arc<AtomicUsize>, release: Arc<Notify>) -> Handler {
    Handler::new(tower::service_fn(
        move |request: Request<RequestBody<Body>>| {
            let (runs, release) = (runs.clone(), release.clone());
            async move {
                let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if request.headers().contains_key("x-hold") {
                    release.notified().await;
                }
                let mut response = Response::new(http_body_util::Full::from(format!("run {n}")));
                *response.status_mut() = StatusCode::CREATED;
                Ok::<_, Infallible>(response)
            }
        },
    ))
}

fn keyed(key: &str, hold: bool) -> Request<Body> {
    let mut request = Request::post("/").header("idempotency-key", key);
    if hold {
        request = request.header("x-hold", "1");
    }
    request.body(Body::empty()).unwrap()
}

async fn send<S>(service: &S, request: Request<Body>) -> (StatusCode, String)
where
    S: Service<
            Request<Body>,
            Response = Response<ResponseBody<http_body_util::Full<bytes::Bytes>>>,
            Error = Infallible,
        > + Clone,
{
    let response = service.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let body = axum::body::to_bytes(Body::new(response.into_body()), usize::MAX)
        .await
        .unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(start_paused = true)]
async fn a_record_replays_for_its_ttl_and_the_key_is_free_after_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let service = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(MemoryStore::default())
                .allow_unscoped(true)
                .ttl(Duration::from_secs(3600)),
        )
        .service(handler(runs.clone(), Arc::new(Notify::new())));
    assert_eq!(send(&service, keyed("k", false)).await.1, "run 1");
    tokio::time::advance(Duration::from_secs(3599)).await;
    assert_eq!(
        send(&service, keyed("k", false)).await.1,
        "run 1",
        "still replayed"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(
        send(&service, keyed("k", false)).await.1,
        "run 2",
        "free after the TTL"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_waiting_duplicate_gives_up_after_its_timeout_and_replays_before_it() {
    let runs = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(Notify::new());
    let service = ServiceBuilder::new()
        .layer(
            IdempotencyLayer::new(MemoryStore::default())
                .allow_unscoped(true)
                .in_flight(InFlightPolicy::Wait {
                    timeout: Duration::from_secs(10),
                    retry_after: Duration::from_secs(2),
                }),
        )
        .service(handler(runs.clone(), release.clone()));
    let first = tokio::spawn({
        let service = service.clone();
        async move { send(&service, keyed("slow", true)).await }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await; // until the first request's handler has started
    }
    // The first request holds the key: the duplicate waits ten seconds, then is told to come
    // back.
    let started = tokio::time::Instant::now();
    let (status, _) = send(&service, keyed("slow", false)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let waited = started.elapsed();
    assert!(
        (Duration::from_secs(9)..=Duration::from_secs(10)).contains(&waited),
        "waited {waited:?}"
    );
    // A duplicate that arrives while the first finishes gets its answer instead.
    let waiting = tokio::spawn({
        let service = service.clone();
        async move { send(&service, keyed("slow", false)).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    release.notify_one();
    assert_eq!(first.await.unwrap(), (StatusCode::CREATED, "run 1".into()));
    assert_eq!(
        waiting.await.unwrap(),
        (StatusCode::CREATED, "run 1".into())
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
