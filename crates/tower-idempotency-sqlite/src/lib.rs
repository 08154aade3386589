//! SQLite stores for [`tower_idempotency`], on [sqlx] 0.8: the durable embedded default.
//!
//! - [`SqliteStore`]: an [`IdempotencyStore`](tower_idempotency::store::IdempotencyStore)
//!   in a SQLite file: records survive restarts, for any app on one machine (several
//!   processes may share the file).
//! - [`SqliteTransactionalStore`]: **transactional mode**
//!   ([`IdempotencyLayer::transactional`](tower_idempotency::IdempotencyLayer::transactional)):
//!   the record lives in the application's own database file and commits in the handler's
//!   transaction, so a request's writes and its record are both there or neither.
//!
//! Both keep their records in one table (default `idempotency_records`), created by
//! `migrate()`, and share its format.
//!
//! # Transactional mode
//!
//! ```
//! use axum::{Router, body::Body, http::{Request, StatusCode}, routing::post};
//! use tower::ServiceExt;
//! use tower_idempotency::{IdempotencyLayer, transactional::{Lent, LentGone}};
//! use tower_idempotency_sqlite::{SqliteTransaction, SqliteTransactionalStore, sqlx};
//!
//! async fn create(tx: Lent<SqliteTransaction>) -> Result<StatusCode, StatusCode> {
//!     let mut tx = tx.lock().await.map_err(|_: LentGone| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     sqlx::query("INSERT INTO orders (sku) VALUES ('A-1')")
//!         .execute(&mut *tx) // the transaction the idempotency record commits in
//!         .await
//!         .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
//!     Ok(StatusCode::CREATED)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let dir = std::env::temp_dir().join(format!("tower-idempotency-sqlite-doc-{}", std::process::id()));
//! # std::fs::create_dir_all(&dir)?;
//! let pool = tower_idempotency_sqlite::pool_options()
//!     .connect_with(tower_idempotency_sqlite::connect_options(dir.join("app.db")))
//!     .await?;
//! sqlx::query("CREATE TABLE orders (sku TEXT NOT NULL)").execute(&pool).await?;
//! let store = SqliteTransactionalStore::new(pool.clone());
//! store.migrate().await?;
//!
//! let app = Router::new().route("/orders", post(create)).layer(
//!     IdempotencyLayer::transactional(store)
//!         // In a real API: the authenticated user an auth layer put in the extensions.
//!         .scope(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned().into())),
//! );
//! let request = || {
//!     Request::post("/orders")
//!         .header("x-user", "alice")
//!         .header("idempotency-key", "order-7")
//!         .body(Body::empty())
//!         .unwrap()
//! };
//! assert_eq!(app.clone().oneshot(request()).await?.status(), StatusCode::CREATED);
//! let retry = app.oneshot(request()).await?;
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//!
//! // The order and its record committed together, once.
//! let orders: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM orders").fetch_one(&pool).await?;
//! assert_eq!(orders, 1);
//! # pool.close().await; std::fs::remove_dir_all(&dir)?;
//! # Ok(()) }
//! ```
//!
//! Keyed requests hold SQLite's write lock (`BEGIN IMMEDIATE`) from claim to commit, so they
//! run one at a time; readers proceed under WAL. Duplicates of a running request in the same
//! process get 409 at once without touching the database.
//!
//! # The database file
//!
//! Open the pool with WAL (`journal_mode(Wal)`: readers never wait for the writer) and a
//! `busy_timeout` (how long a writer waits for the write lock before SQLITE_BUSY; the stores
//! map BUSY and LOCKED to [`StoreErrorKind::Unavailable`], answered 503 + `Retry-After`,
//! never 500). [`pool_options`] and [`connect_options`] give the settings the stores are
//! tested with.
//!
//! [`StoreErrorKind::Unavailable`]: tower_idempotency::store::StoreErrorKind::Unavailable

mod error;
mod reaper;
mod schema;
mod store;
mod transactional;

use std::{path::Path, time::Duration};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

pub use self::{
    reaper::ReaperHandle,
    store::{SqliteStore, SqliteStoreBuilder},
    transactional::{SqliteTransaction, SqliteTransactionalStore},
};
/// The sqlx version this crate is built on.
pub use sqlx;

/// How long a writer waits for SQLite's write lock, in the options of [`connect_options`].
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connection options for a database file at `path` as the stores expect it: created if
/// missing, WAL, `synchronous = NORMAL` (durable across process crashes; a power loss may lose
/// the last transactions, never corrupt the file), [`DEFAULT_BUSY_TIMEOUT`].
pub fn connect_options(path: impl AsRef<Path>) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(DEFAULT_BUSY_TIMEOUT)
}

/// Pool options to go with [`connect_options`]: 8 connections (one writes at a time; the
/// others read), a 5 s acquire timeout (then the stores answer 503 rather than hang).
pub fn pool_options() -> SqlitePoolOptions {
    SqlitePoolOptions::new()
        .max_connections(8)
        .acquire_timeout(Duration::from_secs(5))
}
