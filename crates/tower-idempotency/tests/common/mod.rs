//! A real axum server over TCP for the integration tests, with a handler that counts its
//! executions and can be told (through request headers) how to answer.

#![allow(dead_code, unreachable_pub)]

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::Response,
    routing::post,
};
use tower_idempotency::{IdempotencyKey, IdempotencyLayer, store::IdempotencyStore};

/// Executions of the handler, by the test server.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicUsize>);

impl Counter {
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

pub struct TestServer {
    pub addr: SocketAddr,
    pub executions: Counter,
    pub client: reqwest::Client,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestServer {
    pub async fn start<St: IdempotencyStore>(layer: IdempotencyLayer<St>) -> Self {
        let executions = Counter::default();
        let app = Router::new()
            .route("/orders", post(handler).get(|| async { "listing" }))
            .route("/orders/{id}", post(handler).patch(handler))
            .with_state(executions.clone())
            .layer(layer);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self {
            addr,
            executions,
            client: reqwest::Client::new(),
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// A keyed JSON POST as user `user`.
    pub fn post(&self, user: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/orders"))
            .header("x-user", user)
            .header("idempotency-key", key)
            .header("content-type", "application/json")
            .body(body.to_owned())
    }
}

/// The layer the tests use: scope from the `x-user` header (standing in for an auth layer).
pub fn layer<St: IdempotencyStore>(store: St) -> IdempotencyLayer<St> {
    IdempotencyLayer::new(store).scope(|parts| {
        let user = parts.headers.get("x-user")?.to_str().ok()?;
        Some(user.to_owned().into())
    })
}

/// Answers 201 with a body naming the execution, unless told otherwise:
/// `x-delay-ms` sleeps first, `x-status` picks the status, `x-no-store` marks the response
/// `Cache-Control: no-store`, `x-panic` panics, `x-large` answers that many bytes.
async fn handler(
    State(executions): State<Counter>,
    key: Option<Extension<IdempotencyKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = executions.0.fetch_add(1, Ordering::SeqCst) + 1;
    let header_num = |name: &str| -> Option<u64> { headers.get(name)?.to_str().ok()?.parse().ok() };
    if let Some(ms) = header_num("x-delay-ms") {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if headers.contains_key("x-panic") {
        panic!("handler told to panic");
    }
    let status = header_num("x-status")
        .and_then(|s| StatusCode::from_u16(s as u16).ok())
        .unwrap_or(StatusCode::CREATED);
    let body = match header_num("x-large") {
        Some(size) => Body::from(vec![b'x'; size as usize]),
        None => Body::from(format!(
            r#"{{"execution":{n},"echo":{},"key":{}}}"#,
            String::from_utf8_lossy(&body)
                .parse::<serde_json::Value>()
                .unwrap_or(serde_json::Value::Null),
            serde_json::to_string(&key.map(|Extension(key)| key.as_str().to_owned())).unwrap()
        )),
    };
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&format!("/orders/{n}")).unwrap(),
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=secret"),
    );
    h.append("x-multi", HeaderValue::from_static("one"));
    h.append("x-multi", HeaderValue::from_static("two"));
    h.insert("x-binary", HeaderValue::from_bytes(b"caf\xe9").unwrap());
    h.insert("x-execution", HeaderValue::from(n));
    if headers.contains_key("x-no-store") {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

/// Asserts an `application/problem+json` answer with `status` and a `type` ending in `slug`.
pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of a `{slug}` problem"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "content type of a `{slug}` problem"
    );
    let json: serde_json::Value = response.json().await.unwrap();
    let ty = json["type"].as_str().unwrap_or_default();
    assert!(
        ty.ends_with(slug),
        "problem type {ty:?} should end with {slug:?}"
    );
    assert_eq!(json["status"], status);
    assert!(json["title"].is_string() && json["detail"].is_string());
    json
}
