//! Transactional mode under test: [`TxServer`], a real server whose handler writes an
//! *effect* row through the transaction the layer lends it, and the [`EffectsDb`] each
//! database's tests implement, so [`transactional_suite!`](crate::transactional_suite) can
//! count both executions (the handler ran) and committed effects (what the database kept).

pub mod suite;

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use tower_idempotency::{
    IdempotencyLayer,
    transactional::{Lent, Transactional, TransactionalStore},
};

use crate::{
    Served,
    gate::{Count, Gate, Gates},
    headers, serve,
};

/// The connection a store's transactions dereference to.
pub type Connection<D> =
    <<<D as EffectsDb>::Store as TransactionalStore>::Transaction as std::ops::Deref>::Target;

/// A boxed future, for the methods of [`EffectsDb`].
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A database the suite writes effects to: a table `(tag TEXT)` the implementation creates.
pub trait EffectsDb: Send + Sync + 'static {
    /// The store under test, on this database.
    type Store: TransactionalStore + Clone;

    /// The store (sharing its pool with [`committed`](Self::committed)).
    fn store(&self) -> Self::Store;

    /// Inserts one effect row tagged `tag` through the request's transaction (its
    /// connection, what the lent guard dereferences to).
    fn write<'a>(
        &'a self,
        connection: &'a mut Connection<Self>,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// How many committed effect rows carry `tag` (read outside any request).
    fn committed<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, usize>;
}

/// The request header naming the effect the handler writes (default: no effect).
pub const TAG: &str = "x-tag";

struct Shared<D: EffectsDb> {
    executions: Count,
    gates: Gates,
    db: Arc<D>,
}

impl<D: EffectsDb> Clone for Shared<D> {
    fn clone(&self) -> Self {
        Self {
            executions: self.executions.clone(),
            gates: self.gates.clone(),
            db: Arc::clone(&self.db),
        }
    }
}

/// A real axum server over TCP: `POST /orders` through the transactional layer under test.
/// The handler counts its execution, writes one effect tagged [`TAG`] through the lent
/// transaction, waits at the [`headers::GATE`] gate if asked, then obeys [`headers::STATUS`],
/// [`headers::NO_STORE`] and [`headers::PANIC`], answering JSON naming its execution.
pub struct TxServer<D: EffectsDb> {
    served: Served,
    client: reqwest::Client,
    shared: Shared<D>,
    db: Arc<D>,
}

/// The transactional layer the suite uses: scoped by [`headers::USER`].
pub fn tx_layer<T: TransactionalStore>(store: T) -> IdempotencyLayer<Transactional<T>> {
    IdempotencyLayer::transactional(store).scope(|parts| {
        let user = parts.headers.get(headers::USER)?.to_str().ok()?;
        Some(user.to_owned().into())
    })
}

impl<D: EffectsDb> TxServer<D> {
    /// Serves the handler through `layer`, writing to `db`.
    pub async fn start(db: Arc<D>, layer: IdempotencyLayer<Transactional<D::Store>>) -> Self {
        let shared = Shared::<D> {
            executions: Count::new("handler executions"),
            gates: Gates::default(),
            db: Arc::clone(&db),
        };
        let app = Router::new()
            .route("/orders", post(handler::<D>))
            .with_state(shared.clone())
            .layer(layer);
        Self {
            served: serve(app).await,
            client: reqwest::Client::new(),
            shared,
            db,
        }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        self.served.url(path)
    }

    /// A keyed `POST /orders` as `user` writing the effect `tag`.
    pub fn post(&self, user: &str, key: &str, tag: &str, body: &str) -> reqwest::RequestBuilder {
        self.unkeyed(user, tag, body).header("idempotency-key", key)
    }

    /// The same without a key.
    pub fn unkeyed(&self, user: &str, tag: &str, body: &str) -> reqwest::RequestBuilder {
        self.client
            .post(self.url("/orders"))
            .header(headers::USER, user)
            .header(TAG, tag)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    }

    /// How many times the handler started.
    pub fn executions(&self) -> usize {
        self.shared.executions.get()
    }

    /// Committed effects tagged `tag`.
    pub async fn committed(&self, tag: &str) -> usize {
        self.db.committed(tag).await
    }

    /// The gate named `name`.
    pub fn gate(&self, name: &str) -> Gate {
        self.shared.gates.get(name)
    }
}

impl<D: EffectsDb> Drop for TxServer<D> {
    fn drop(&mut self) {
        self.shared.gates.open_all();
    }
}

impl<D: EffectsDb> fmt::Debug for TxServer<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TxServer")
            .field("addr", &self.served.addr())
            .field("executions", &self.executions())
            .finish_non_exhaustive()
    }
}

async fn handler<D: EffectsDb>(
    State(shared): State<Shared<D>>,
    lent: Lent<<D::Store as TransactionalStore>::Transaction>,
    headers: HeaderMap,
) -> Response {
    let n = shared.executions.increment();
    let text = |name: &str| headers.get(name)?.to_str().ok();
    if let Some(tag) = text(TAG) {
        let mut transaction = match lent.lock().await {
            Ok(transaction) => transaction,
            Err(gone) => return gone.into_response(),
        };
        if let Err(error) = shared.db.write(&mut *transaction, tag).await {
            return (StatusCode::INTERNAL_SERVER_ERROR, error).into_response();
        }
    }
    // After the write: a request held here is in flight with uncommitted changes.
    if let Some(gate) = text(headers::GATE) {
        shared.gates.get(gate).pass().await;
    }
    if let Some(ms) = text(headers::DELAY_MS).and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if headers.contains_key(headers::PANIC) {
        panic!("handler told to panic");
    }
    let status = text(headers::STATUS)
        .and_then(|s| s.parse().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::CREATED);
    let mut response = (status, serde_json::json!({ "execution": n }).to_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(headers::EXECUTION, HeaderValue::from(n));
    if headers.contains_key(headers::NO_STORE) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
