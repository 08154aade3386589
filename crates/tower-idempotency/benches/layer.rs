//! The layer's own cost per request, with the memory store around a trivial handler, driven
//! in-process through `tower::Service` (no sockets): first requests, replays, 409s and 422s
//! beside the same handler without the layer; fingerprinting by body size; the key parser.
//!
//! `cargo bench -p tower-idempotency --bench layer`

use std::{
    convert::Infallible,
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use http_body_util::{BodyExt, Full};
use tower::{Service, ServiceExt};
use tower_idempotency::{
    Fingerprint, IdempotencyKey, IdempotencyLayer, RequestBody,
    store::{IdempotencyStore, RecordId, memory::MemoryStore},
};

const BODY: &str = r#"{"project":"api","environment":"production","ref":"v1.2.3"}"#;

async fn handler(
    _req: Request<RequestBody<Full<Bytes>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"id":"dep_1","status":"queued"}"#,
    )));
    *response.status_mut() = StatusCode::CREATED;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn request(key: &str, body: &'static str) -> Request<Full<Bytes>> {
    Request::post("/api/deployments")
        .header("idempotency-key", key)
        .header(CONTENT_TYPE, "application/json")
        .header("x-user", "bench")
        .body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

async fn drive<S>(service: &mut S, req: Request<Full<Bytes>>) -> StatusCode
where
    S: Service<
            Request<Full<Bytes>>,
            Response = Response<tower_idempotency::ResponseBody<Full<Bytes>>>,
        >,
    S::Error: std::fmt::Debug,
{
    let response = service.ready().await.unwrap().call(req).await.unwrap();
    let status = response.status();
    black_box(response.into_body().collect().await.unwrap());
    status
}

fn layer_benches(c: &mut Criterion) {
    // One thread: the handler task the layer spawns runs on the thread that drives the
    // request, as it does on a server's worker, instead of paying a cross-thread wake-up.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = Arc::new(MemoryStore::default());
    let layer = IdempotencyLayer::new(Arc::clone(&store)).scope(|parts| {
        Some(
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()?
                .to_owned()
                .into(),
        )
    });
    let mut service = tower::ServiceBuilder::new()
        .layer(layer)
        .service_fn(handler);

    let mut group = c.benchmark_group("layer");
    group.throughput(Throughput::Elements(1));

    group.bench_function("baseline (no layer)", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = tower::service_fn(handler_plain);
            async move {
                let response = service
                    .ready()
                    .await
                    .unwrap()
                    .call(request("k", BODY))
                    .await
                    .unwrap();
                black_box(response.into_body().collect().await.unwrap());
            }
        })
    });

    let counter = AtomicU64::new(0);
    group.bench_function("first request", |b| {
        b.to_async(&runtime).iter(|| {
            let key = format!("first-{}", counter.fetch_add(1, Ordering::Relaxed));
            let mut service = service.clone();
            async move {
                assert_eq!(
                    drive(&mut service, request(&key, BODY)).await,
                    StatusCode::CREATED
                )
            }
        })
    });

    runtime.block_on(drive(&mut service, request("replayed", BODY)));
    group.bench_function("replay", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move {
                assert_eq!(
                    drive(&mut service, request("replayed", BODY)).await,
                    StatusCode::CREATED
                )
            }
        })
    });

    // A record held in flight forever: every request with its key is a 409.
    let key = IdempotencyKey::parse(b"in-flight").unwrap();
    let id = RecordId::new(b"bench", &key);
    let headers = json_headers();
    let fingerprint = Fingerprint::of_request(
        &Method::POST,
        &"/api/deployments".parse().unwrap(),
        &headers,
        BODY.as_bytes(),
    );
    runtime
        .block_on(store.claim(&id, &fingerprint, Duration::from_secs(3600)))
        .unwrap();
    group.bench_function("409 in flight", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move {
                assert_eq!(
                    drive(&mut service, request("in-flight", BODY)).await,
                    StatusCode::CONFLICT
                )
            }
        })
    });

    group.bench_function("422 mismatch", |b| {
        b.to_async(&runtime).iter(|| {
            let mut service = service.clone();
            async move {
                let status =
                    drive(&mut service, request("replayed", r#"{"project":"other"}"#)).await;
                assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY)
            }
        })
    });
    group.finish();
}

async fn handler_plain(req: Request<Full<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    black_box(req);
    let mut response = Response::new(Full::new(Bytes::from_static(
        br#"{"id":"dep_1","status":"queued"}"#,
    )));
    *response.status_mut() = StatusCode::CREATED;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(response)
}

fn json_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers
}

fn fingerprint_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("fingerprint");
    let uri = "/api/deployments".parse().unwrap();
    let json = json_headers();
    let binary = HeaderMap::new();
    for size in [1024usize, 64 * 1024, 1024 * 1024] {
        let json_body = json_document(size);
        let binary_body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_with_input(BenchmarkId::new("json", size), &json_body, |b, body| {
            b.iter(|| Fingerprint::of_request(&Method::POST, &uri, &json, black_box(body)))
        });
        group.bench_with_input(BenchmarkId::new("binary", size), &binary_body, |b, body| {
            b.iter(|| Fingerprint::of_request(&Method::POST, &uri, &binary, black_box(body)))
        });
    }
    group.finish();
}

/// A JSON array of small objects, about `size` bytes long.
fn json_document(size: usize) -> Vec<u8> {
    let mut out = String::from("[");
    let mut i = 0;
    while out.len() < size.saturating_sub(64) {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&format!(
            r#"{{"name":"item-{i}","value":{i},"tags":["a","b"],"ok":true}}"#
        ));
        i += 1;
    }
    out.push(']');
    out.into_bytes()
}

fn key_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("key");
    let uuid = b"8e03978e-40d5-43e8-bc93-6894a57f9324";
    let quoted = br#""8e03978e-40d5-43e8-bc93-6894a57f9324""#;
    group.bench_function("bare uuid", |b| {
        b.iter(|| IdempotencyKey::parse(black_box(uuid)))
    });
    group.bench_function("sf-string uuid", |b| {
        b.iter(|| IdempotencyKey::parse(black_box(quoted)))
    });
    group.finish();
}

criterion_group!(benches, layer_benches, fingerprint_benches, key_benches);
criterion_main!(benches);
