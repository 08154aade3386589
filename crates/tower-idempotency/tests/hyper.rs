//! The layer around a plain hyper 1 service (no axum), served over TCP.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tower::ServiceBuilder;
use tower_idempotency::{IdempotencyLayer, RequestBody, store::memory::MemoryStore};

#[tokio::test]
async fn works_around_a_plain_hyper_service() {
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let handler = tower::service_fn(move |req: Request<RequestBody<Incoming>>| {
        let counter = counter.clone();
        async move {
            let body = req.into_body().collect().await.unwrap().to_bytes();
            let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
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

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });

    let client = reqwest::Client::new();
    let send = || {
        client
            .post(format!("http://{addr}/anything"))
            .header("idempotency-key", "plain-hyper")
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
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}
