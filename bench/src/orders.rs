//! The handler that writes: what the database-backed configurations serve at
//! `POST /api/deployments`. Each execution counts itself, then inserts one `orders` row into
//! the database the configuration's store lives in, so that the separate store and
//! transactional mode are compared doing the same work:
//!
//! | configuration | the handler's insert |
//! |---|---|
//! | `ours-postgres`, `ours-sqlite` | its own autocommit statement, on the store's pool (a commit of its own, between the claim's and the completion's) |
//! | `ours-postgres-tx`, `ours-sqlite-tx` | through the lent transaction ([`Lent`]): it commits with the idempotency record |
//!
//! The row's id is the answer's `id`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use serde_json::{Value, json};
use tower_idempotency::transactional::Lent;
use tower_idempotency_postgres::{
    PostgresTransaction,
    sqlx::{self, PgPool},
};
use tower_idempotency_sqlite::{SqliteTransaction, sqlx::SqlitePool};

use crate::app::{AppState, USER_HEADER};

/// The table of the SQLite configurations (each has a database file of its own).
pub const SQLITE_TABLE: &str = "orders";

/// Creates the `orders` table `table` in PostgreSQL.
pub async fn create_postgres_table(pool: &PgPool, table: &str) -> anyhow::Result<()> {
    // `table` is ours: `loadbench_`, a `[a-z0-9_]` namespace and `_orders`.
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (id bigserial PRIMARY KEY, \
         customer text NOT NULL, name text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// Creates the `orders` table in a SQLite database.
pub async fn create_sqlite_table(pool: &SqlitePool) -> anyhow::Result<()> {
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS \"{SQLITE_TABLE}\" (id INTEGER PRIMARY KEY, \
         customer TEXT NOT NULL, name TEXT NOT NULL, \
         created_at INTEGER NOT NULL DEFAULT (strftime('%s', 'now')))"
    ))
    .execute(pool)
    .await?;
    Ok(())
}

/// The insert into PostgreSQL's `table`, `$1` customer, `$2` name; returns the row's id.
pub fn postgres_insert(table: &str) -> Arc<str> {
    format!("INSERT INTO \"{table}\" (customer, name) VALUES ($1, $2) RETURNING id").into()
}

/// The same for SQLite.
pub fn sqlite_insert() -> Arc<str> {
    format!("INSERT INTO \"{SQLITE_TABLE}\" (customer, name) VALUES (?1, ?2) RETURNING id").into()
}

/// The handler's state: the execution count, the database handle (the pool for an
/// autocommit insert, `()` where the transaction is lent) and the insert.
#[derive(Clone)]
struct Orders<Db> {
    app: AppState,
    db: Db,
    sql: Arc<str>,
}

/// What every variant does before its insert: count, work, read the request.
async fn start<Db>(state: &Orders<Db>, headers: &HeaderMap, request: &Value) -> (String, String) {
    state.app.executed();
    state.app.work().await;
    let customer = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let name = request
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("unnamed")
        .to_owned();
    (customer, name)
}

type Answer = Result<(StatusCode, Json<Value>), (StatusCode, String)>;

fn created(id: i64, name: String) -> Answer {
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "status": "queued" })),
    ))
}

/// A failed insert is a 500: counted as a wrong answer by the harness.
fn failed(error: impl std::fmt::Display) -> (StatusCode, String) {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        format!("insert failed: {error}"),
    )
}

async fn postgres_autocommit(
    State(state): State<Orders<PgPool>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Answer {
    let (customer, name) = start(&state, &headers, &request).await;
    let id: i64 = sqlx::query_scalar(&state.sql)
        .bind(customer)
        .bind(&name)
        .fetch_one(&state.db)
        .await
        .map_err(failed)?;
    created(id, name)
}

async fn postgres_lent(
    State(state): State<Orders<()>>,
    lent: Lent<PostgresTransaction>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Answer {
    let (customer, name) = start(&state, &headers, &request).await;
    let mut tx = lent.lock().await.map_err(failed)?;
    let id: i64 = sqlx::query_scalar(&state.sql)
        .bind(customer)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    created(id, name)
}

async fn sqlite_autocommit(
    State(state): State<Orders<SqlitePool>>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Answer {
    let (customer, name) = start(&state, &headers, &request).await;
    let id: i64 = sqlx::query_scalar(&state.sql)
        .bind(customer)
        .bind(&name)
        .fetch_one(&state.db)
        .await
        .map_err(failed)?;
    created(id, name)
}

async fn sqlite_lent(
    State(state): State<Orders<()>>,
    lent: Lent<SqliteTransaction>,
    headers: HeaderMap,
    Json(request): Json<Value>,
) -> Answer {
    let (customer, name) = start(&state, &headers, &request).await;
    let mut tx = lent.lock().await.map_err(failed)?;
    let id: i64 = sqlx::query_scalar(&state.sql)
        .bind(customer)
        .bind(&name)
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    created(id, name)
}

/// The route for the separate PostgreSQL store: the insert autocommits on `pool`.
pub fn postgres_route(app: AppState, pool: PgPool, table: &str) -> Router {
    let state = Orders {
        app,
        db: pool,
        sql: postgres_insert(table),
    };
    Router::new()
        .route("/api/deployments", post(postgres_autocommit))
        .with_state(state)
}

/// The route for PostgreSQL's transactional mode: the insert goes through the lent
/// transaction.
pub fn postgres_lent_route(app: AppState, table: &str) -> Router {
    let state = Orders {
        app,
        db: (),
        sql: postgres_insert(table),
    };
    Router::new()
        .route("/api/deployments", post(postgres_lent))
        .with_state(state)
}

/// The route for the separate SQLite store: the insert autocommits on `pool`.
pub fn sqlite_route(app: AppState, pool: SqlitePool) -> Router {
    let state = Orders {
        app,
        db: pool,
        sql: sqlite_insert(),
    };
    Router::new()
        .route("/api/deployments", post(sqlite_autocommit))
        .with_state(state)
}

/// The route for SQLite's transactional mode.
pub fn sqlite_lent_route(app: AppState) -> Router {
    let state = Orders {
        app,
        db: (),
        sql: sqlite_insert(),
    };
    Router::new()
        .route("/api/deployments", post(sqlite_lent))
        .with_state(state)
}
