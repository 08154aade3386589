//! [`TestServer`]: a real axum server over TCP around the layer under test, with a handler
//! that counts its executions and obeys request headers (see [`headers`]).

use std::{
    error::Error as StdError,
    fmt,
    hash::{BuildHasher, RandomState},
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime},
};

use axum::{
    Extension, Router,
    body::{Body, Bytes},
    extract::{Request, State},
    http::{HeaderMap, HeaderValue, Method, StatusCode, header},
    middleware::{self, Next},
    response::Response,
    routing::post,
};
use hyper_util::{rt::TokioIo, service::TowerToHyperService};
use tower_idempotency::{IdempotencyKey, IdempotencyLayer, store::IdempotencyStore};

use crate::gate::{Count, Gate, Gates};

/// The request headers the test handler obeys, and the one the test layer scopes by.
pub mod headers {
    /// The user the request is made by: the layer's scope (standing in for an auth layer).
    pub const USER: &str = "x-user";
    /// Stop at the named [`Gate`](crate::Gate) until the test opens it.
    pub const GATE: &str = "x-gate";
    /// Sleep this many milliseconds before answering.
    pub const DELAY_MS: &str = "x-delay-ms";
    /// Answer with this status (default 201).
    pub const STATUS: &str = "x-status";
    /// Mark the response `Cache-Control: no-store`.
    pub const NO_STORE: &str = "x-no-store";
    /// Panic instead of answering.
    pub const PANIC: &str = "x-panic";
    /// Answer this many bytes of `x` instead of the JSON body.
    pub const LARGE: &str = "x-large";
    /// The handler's answer: the number of the execution that produced it.
    pub const EXECUTION: &str = "x-execution";
}

/// A string no other test, test process or run uses: `label` plus a random suffix. Record
/// ids are per (user, key), so unique users or keys keep scenarios sharing a store apart.
pub fn unique(label: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let random = RandomState::new().hash_one((std::process::id(), n, nanos));
    format!("{label}-{random:016x}-{n}")
}

/// The layer the tests use: scoped by the [`headers::USER`] header.
pub fn layer<St: IdempotencyStore>(store: St) -> IdempotencyLayer<St> {
    IdempotencyLayer::new(store).scope(|parts| {
        let user = parts.headers.get(headers::USER)?.to_str().ok()?;
        Some(user.to_owned().into())
    })
}

/// A tower service served over TCP on `127.0.0.1:<free port>` with hyper's HTTP/1 server,
/// one task per connection. Dropping it stops accepting connections.
pub struct Served {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Served {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl fmt::Debug for Served {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Served").field("addr", &self.addr).finish()
    }
}

type BoxError = Box<dyn StdError + Send + Sync>;

/// Serves `service` (any tower HTTP service: an axum `Router`, a `ServiceBuilder` stack around
/// a plain hyper handler) over TCP.
///
/// When a client disconnects while its request is pending, hyper drops the request's future,
/// as it does in production.
pub async fn serve<S, B>(service: S) -> Served
where
    S: tower::Service<http::Request<hyper::body::Incoming>, Response = http::Response<B>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a free loopback port");
    let addr = listener
        .local_addr()
        .expect("a bound listener has an address");
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                // Out of file descriptors, say: the client will see it; keep serving.
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let service = TowerToHyperService::new(service.clone());
            tokio::spawn(async move {
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Served { addr, task }
}

/// What the handler and the abandonment tracker share with the test.
#[derive(Clone)]
struct Shared {
    executions: Count,
    abandoned: Count,
    gates: Gates,
}

/// A real axum server over TCP: routes `POST /orders` (and `GET /orders`, answering
/// `listing` without executing), `POST` and `PATCH /orders/{id}`, all through the layer under
/// test. The handler answers 201 with a JSON body naming the execution, the request body and
/// the key it saw, plus headers that exercise replay (`Location`, `Set-Cookie`, a repeated
/// header, a non-UTF-8 value), unless [`headers`] say otherwise.
///
/// Dropping the server stops it and opens all its gates.
pub struct TestServer {
    served: Served,
    client: reqwest::Client,
    shared: Shared,
}

impl TestServer {
    /// Serves the test routes through `layer`.
    pub async fn start<St: IdempotencyStore>(layer: IdempotencyLayer<St>) -> Self {
        let shared = Shared {
            executions: Count::new("handler executions"),
            abandoned: Count::new("abandoned requests"),
            gates: Gates::default(),
        };
        let app = Router::new()
            .route("/orders", post(handler).get(|| async { "listing" }))
            .route("/orders/{id}", post(handler).patch(handler))
            .with_state(shared.clone())
            .layer(layer)
            // Outermost: sees the layer's future dropped when a client hangs up.
            .layer(middleware::from_fn_with_state(
                shared.clone(),
                track_abandoned,
            ));
        Self {
            served: serve(app).await,
            client: reqwest::Client::new(),
            shared,
        }
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.served.addr()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        self.served.url(path)
    }

    /// The server's HTTP client (connection pool shared by the test's requests).
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// A keyed JSON request as `user`.
    pub fn keyed(
        &self,
        method: Method,
        path: &str,
        user: &str,
        key: &str,
        body: &str,
    ) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .header(headers::USER, user)
            .header("idempotency-key", key)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    }

    /// A keyed JSON `POST /orders` as `user`.
    pub fn post(&self, user: &str, key: &str, body: &str) -> reqwest::RequestBuilder {
        self.keyed(Method::POST, "/orders", user, key, body)
    }

    /// How many times the handler has started executing.
    pub fn executions(&self) -> usize {
        self.shared.executions.get()
    }

    /// The handler's executions, to wait on.
    pub fn execution_count(&self) -> &Count {
        &self.shared.executions
    }

    /// Requests whose client hung up before the layer answered (hyper dropped their future).
    pub fn abandoned(&self) -> &Count {
        &self.shared.abandoned
    }

    /// The gate named `name` (created closed on first mention).
    pub fn gate(&self, name: &str) -> Gate {
        self.shared.gates.get(name)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shared.gates.open_all();
    }
}

impl fmt::Debug for TestServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestServer")
            .field("addr", &self.addr())
            .field("executions", &self.executions())
            .field("abandoned", &self.shared.abandoned.get())
            .field("gates", &self.shared.gates)
            .finish_non_exhaustive()
    }
}

/// Counts the request as abandoned if its future is dropped before the answer.
async fn track_abandoned(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    struct Pending(Option<Count>);
    impl Drop for Pending {
        fn drop(&mut self) {
            if let Some(count) = self.0.take() {
                count.increment();
            }
        }
    }
    let mut pending = Pending(Some(shared.abandoned));
    let response = next.run(request).await;
    pending.0 = None;
    response
}

async fn handler(
    State(shared): State<Shared>,
    key: Option<Extension<IdempotencyKey>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let n = shared.executions.increment();
    let text = |name: &str| headers.get(name)?.to_str().ok();
    let number = |name: &str| -> Option<u64> { text(name)?.parse().ok() };
    if let Some(gate) = text(headers::GATE) {
        shared.gates.get(gate).pass().await;
    }
    if let Some(ms) = number(headers::DELAY_MS) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if headers.contains_key(headers::PANIC) {
        panic!("handler told to panic");
    }
    let status = number(headers::STATUS)
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::CREATED);
    let body = match number(headers::LARGE) {
        Some(size) => Body::from(vec![b'x'; size as usize]),
        None => Body::from(
            serde_json::json!({
                "execution": n,
                "echo": serde_json::from_slice::<serde_json::Value>(&body)
                    .unwrap_or(serde_json::Value::Null),
                "key": key.map(|Extension(key)| key.as_str().to_owned()),
            })
            .to_string(),
        ),
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
        HeaderValue::from_str(&format!("/orders/{n}")).expect("a valid header value"),
    );
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static("session=secret"),
    );
    h.append("x-multi", HeaderValue::from_static("one"));
    h.append("x-multi", HeaderValue::from_static("two"));
    h.insert(
        "x-binary",
        HeaderValue::from_bytes(b"caf\xe9").expect("obs-text is a valid header value"),
    );
    h.insert(headers::EXECUTION, HeaderValue::from(n));
    if headers.contains_key(headers::NO_STORE) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
