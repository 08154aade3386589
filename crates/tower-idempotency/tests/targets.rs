//! Requests that only differ in the part of their target a router stripped before the layer
//! ran (axum's `Router::nest`, a path-rewriting middleware) are different requests: a key
//! reused across them gets 422, never the other request's response.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use axum::{
    Router,
    body::Body,
    http::{Request, Response, StatusCode, Uri},
    routing::post,
};
use http_body_util::BodyExt;
use tower::{ServiceBuilder, ServiceExt};
use tower_idempotency::{
    IdempotencyLayer, RequestBody, fingerprint::OriginalTarget, store::memory::MemoryStore,
};

const ORDER: &str = r#"{"sku":"A-1","quantity":2}"#;

fn keyed(path: &str, key: &str) -> Request<Body> {
    Request::post(path)
        .header("idempotency-key", key)
        .header("content-type", "application/json")
        .body(Body::from(ORDER))
        .unwrap()
}

/// A router with the layer on an inner router that axum nests under `prefixes`, and a
/// handler that counts its executions and echoes the path it saw.
fn nested_app(prefixes: &[&str]) -> (Router, Arc<AtomicUsize>) {
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let inner = Router::new()
        .route(
            "/orders",
            post(move |uri: Uri| async move {
                let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
                (StatusCode::CREATED, format!("order {n} at {uri}"))
            }),
        )
        .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true));
    // Every nest shares the one layer (and store): the inner router is cloned, not rebuilt.
    let app = prefixes
        .iter()
        .fold(Router::new(), |app, prefix| app.nest(prefix, inner.clone()));
    (app, executions)
}

async fn body_text(response: Response<Body>) -> String {
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

async fn assert_key_reused(response: Response<Body>) {
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let body = body_text(response).await;
    let problem: serde_json::Value = serde_json::from_str(&body).unwrap();
    let kind = problem["type"].as_str().unwrap();
    assert!(kind.ends_with("key-reused"), "{kind}");
}

#[tokio::test]
async fn a_key_reused_across_a_nest_path_parameter_is_rejected() {
    let (app, executions) = nested_app(&["/tenants/{tenant}"]);

    let first = app
        .clone()
        .oneshot(keyed("/tenants/a/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first = body_text(first).await;
    assert_eq!(
        first, "order 1 at /orders",
        "the handler sees the stripped path"
    );

    // The layer works under the nest at all: the same request replays.
    let retry = app
        .clone()
        .oneshot(keyed("/tenants/a/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(body_text(retry).await, first);

    // Another tenant's route is another request, though the layer sees `/orders` again.
    let other = app
        .clone()
        .oneshot(keyed("/tenants/b/orders", "k-1"))
        .await
        .unwrap();
    assert_key_reused(other).await;
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_key_reused_across_static_nests_is_rejected() {
    let (app, executions) = nested_app(&["/tenants/a", "/tenants/b"]);
    let first = app
        .clone()
        .oneshot(keyed("/tenants/a/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let other = app
        .clone()
        .oneshot(keyed("/tenants/b/orders", "k-1"))
        .await
        .unwrap();
    assert_key_reused(other).await;
    assert_eq!(executions.load(Ordering::SeqCst), 1);

    // A fresh key on the other tenant executes.
    let fresh = app
        .clone()
        .oneshot(keyed("/tenants/b/orders", "k-2"))
        .await
        .unwrap();
    assert_eq!(fresh.status(), StatusCode::CREATED);
    assert_eq!(executions.load(Ordering::SeqCst), 2);
}

/// Plain tower: a middleware strips the tenant prefix before the layer, but first records
/// the target as received in [`OriginalTarget`].
#[tokio::test]
async fn a_path_rewriting_middleware_keeps_requests_apart_with_original_target() {
    let executions = Arc::new(AtomicUsize::new(0));
    let counter = executions.clone();
    let handler = tower::service_fn(move |_: Request<RequestBody<Body>>| {
        let n = counter.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            let mut response = Response::new(Body::from(format!("order {n}")));
            *response.status_mut() = StatusCode::CREATED;
            Ok::<_, Infallible>(response)
        }
    });
    let strip_tenant = |mut request: Request<Body>| {
        let original = request.uri().clone();
        let path = original.path();
        let rest = path
            .strip_prefix("/tenants/")
            .and_then(|p| p.find('/').map(|at| &p[at..]))
            .unwrap_or(path);
        *request.uri_mut() = rest.parse().unwrap();
        request.extensions_mut().insert(OriginalTarget(original));
        request
    };
    let service = ServiceBuilder::new()
        .map_request(strip_tenant)
        .layer(IdempotencyLayer::new(MemoryStore::default()).allow_unscoped(true))
        .service(handler);

    let first = service
        .clone()
        .oneshot(keyed("/tenants/a/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let retry = service
        .clone()
        .oneshot(keyed("/tenants/a/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    let other = service
        .clone()
        .oneshot(keyed("/tenants/b/orders", "k-1"))
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body = other.into_body().collect().await.unwrap().to_bytes();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        problem["type"].as_str().unwrap().ends_with("key-reused"),
        "{problem}"
    );
    assert_eq!(executions.load(Ordering::SeqCst), 1);
}
