//! The in-process app `roundtrips` sends its requests to: one handler that (where the store
//! is a database) inserts an `orders` row and can be held inside, behind each layer.

use std::sync::Arc;

use anyhow::Context as _;
use axum::{
    Router,
    body::Body,
    extract::{Request as AxumRequest, State},
    http::{Request, StatusCode},
    routing::post,
};
use tokio::sync::Notify;
use tower_idempotency::transactional::Lent;
use tower_idempotency_postgres::{
    PostgresTransaction,
    sqlx::{self, PgPool},
};
use tower_idempotency_sqlite::{SqliteTransaction, sqlx::SqlitePool};

/// Lets a test hold a request inside the handler, to observe what a concurrent retry costs.
#[derive(Default)]
pub struct Gate {
    pub entered: Notify,
    pub release: Notify,
}

/// The handler's one-row insert, where the store is a database.
#[derive(Clone)]
pub enum Write {
    None,
    PostgresPool(PgPool, Arc<str>),
    PostgresLent(Arc<str>),
    SqlitePool(SqlitePool, Arc<str>),
    SqliteLent(Arc<str>),
}

impl Write {
    async fn run(&self, extensions: &http::Extensions) -> anyhow::Result<()> {
        let (customer, name) = ("user-1", "web");
        let lent = |what| format!("no lent {what} transaction");
        let _id: i64 = match self {
            Self::None => return Ok(()),
            Self::PostgresPool(pool, sql) => {
                sqlx::query_scalar(sql)
                    .bind(customer)
                    .bind(name)
                    .fetch_one(pool)
                    .await?
            }
            Self::SqlitePool(pool, sql) => {
                sqlx::query_scalar(sql)
                    .bind(customer)
                    .bind(name)
                    .fetch_one(pool)
                    .await?
            }
            Self::PostgresLent(sql) => {
                let lent = (extensions.get::<Lent<PostgresTransaction>>())
                    .with_context(|| lent("PostgreSQL"))?;
                let mut tx = lent.lock().await?;
                sqlx::query_scalar(sql)
                    .bind(customer)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?
            }
            Self::SqliteLent(sql) => {
                let lent = (extensions.get::<Lent<SqliteTransaction>>())
                    .with_context(|| lent("SQLite"))?;
                let mut tx = lent.lock().await?;
                sqlx::query_scalar(sql)
                    .bind(customer)
                    .bind(name)
                    .fetch_one(&mut *tx)
                    .await?
            }
        };
        Ok(())
    }
}

#[derive(Clone)]
struct Handler {
    gate: Arc<Gate>,
    write: Write,
}

async fn handler(State(h): State<Handler>, request: AxumRequest) -> (StatusCode, &'static str) {
    // The parts only: the body is not `Sync`, and nothing here reads it.
    let (parts, _) = request.into_parts();
    if let Err(error) = h.write.run(&parts.extensions).await {
        eprintln!("roundtrips: the handler's insert failed: {error:#}");
        return (StatusCode::INTERNAL_SERVER_ERROR, "insert failed");
    }
    if parts.headers.contains_key("x-hold") {
        h.gate.entered.notify_one();
        h.gate.release.notified().await;
    }
    (StatusCode::CREATED, r#"{"id":1,"status":"queued"}"#)
}

pub fn app<L>(layer: L, gate: Arc<Gate>, write: Write) -> Router
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Request<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Body>>>::Response: axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    Router::new()
        .route("/api/deployments", post(handler))
        .with_state(Handler { gate, write })
        .layer(layer)
}

pub fn request(key: &str, body: &'static str, hold: bool) -> Request<Body> {
    let mut builder = Request::post("/api/deployments")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("x-user", "user-1");
    if hold {
        builder = builder.header("x-hold", "1");
    }
    builder.body(Body::from(body)).expect("a valid request")
}

pub const BODY: &str = r#"{"name":"web","replicas":3}"#;
pub const OTHER_BODY: &str = r#"{"name":"web","replicas":4}"#;

fn scope_of(parts: &http::request::Parts) -> Option<tower_idempotency::Scope> {
    Some(
        parts
            .headers
            .get("x-user")?
            .to_str()
            .ok()?
            .to_owned()
            .into(),
    )
}

pub fn ours<St: tower_idempotency::store::IdempotencyStore>(
    store: St,
) -> tower_idempotency::IdempotencyLayer<St> {
    tower_idempotency::IdempotencyLayer::new(store).scope(scope_of)
}

pub fn ours_transactional<St: tower_idempotency::transactional::TransactionalStore>(
    store: St,
) -> tower_idempotency::IdempotencyLayer<tower_idempotency::transactional::Transactional<St>> {
    tower_idempotency::IdempotencyLayer::transactional(store).scope(scope_of)
}

pub fn peer<St>(store: St) -> idempotent::middleware::IdempotencyLayer<St> {
    idempotent::middleware::IdempotencyLayer::new(store).scope(|parts| {
        parts
            .headers
            .get("x-user")?
            .to_str()
            .ok()
            .map(str::to_owned)
    })
}
