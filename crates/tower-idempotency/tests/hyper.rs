//! The layer around a plain hyper 1 service (no axum), served over TCP.

use std::convert::Infallible;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use tower::ServiceBuilder;
use tower_idempotency::{IdempotencyLayer, RequestBody, store::memory::MemoryStore};
use tower_idempotency_testkit::{Count, serve, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn works_around_a_plain_hyper_service() {
    let executions = Count::new("handler executions");
    let counter = executions.clone();
    let handler = tower::service_fn(move |req: Request<RequestBody<Incoming>>| {
        let counter = counter.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = counter.increment();
            let mut response = Response::new(Full::new(Bytes::from(format!(
                "run {n} of {} bytes",
                body.len()
            ))));
            *response.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    });
    let service = ServiceBuilder::new()
        .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true))
        .service(handler);
    let server = serve(service).await;

    let client = reqwest::Client::new();
    let key = unique("plain-hyper");
    let send = || {
        client
            .post(server.url("/anything"))
            .header("idempotency-key", &key)
            .body(vec![0u8, 255, 1, 254])
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 201);
    let first = first.bytes().await.unwrap();
    assert_eq!(&first[..], b"run 1 of 4 bytes");
    let retry = send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), first);
    assert_eq!(executions.get(), 1);
}
