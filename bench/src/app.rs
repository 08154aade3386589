//! The measured server: one trivial JSON handler behind each middleware configuration.
//!
//! Every configuration serves the same routes, so the load generator never needs to know
//! which one it talks to:
//!
//! | route | what it does |
//! |---|---|
//! | `POST /api/deployments` | the handler under test: counts an execution, answers 201 + JSON (database-backed configurations also insert a row: [`crate::orders`]) |
//! | `POST /session` | establishes the caller (`x-user`); sets a session cookie where the middleware keys by session |
//! | `GET /stats` | `{"executions": n}` |
//! | `POST /stats/reset` | sets the count to zero |

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use serde_json::{Value, json};

use crate::config::{Backends, Config};

/// The identity header every configuration scopes keys by.
pub const USER_HEADER: &str = "x-user";

/// What every handler shares: the execution count `GET /stats` reports.
#[derive(Clone)]
pub struct AppState {
    executions: Arc<AtomicU64>,
    /// Simulated work in the handler, so that concurrent requests overlap (same-key-64).
    work: Duration,
}

impl AppState {
    /// Counts an execution of the handler; returns the count including it.
    pub fn executed(&self) -> u64 {
        self.executions.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// The simulated work.
    pub async fn work(&self) {
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
    }
}

/// The handler under test: what a real "create" endpoint does, minus the database.
async fn create_deployment(
    State(state): State<AppState>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = state.executed();
    state.work().await;
    let name = request.get("name").cloned().unwrap_or(Value::Null);
    (
        StatusCode::CREATED,
        Json(json!({ "id": id, "name": name, "status": "queued" })),
    )
}

async fn stats(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "executions": state.executions.load(Ordering::Relaxed) }))
}

async fn reset_stats(State(state): State<AppState>) -> StatusCode {
    state.executions.store(0, Ordering::Relaxed);
    StatusCode::NO_CONTENT
}

/// Where the middleware needs no session, establishing the caller is a no-op.
async fn no_session() -> StatusCode {
    StatusCode::NO_CONTENT
}

/// axum-idempotent caches only for a request that already has a session: create one.
async fn start_session(
    session: ruts::Session<ruts::store::moka::MokaStore>,
    headers: HeaderMap,
) -> StatusCode {
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("anonymous")
        .to_owned();
    let ttl = ruts::store::Ttl::new(24 * 3600).expect("a day is a valid TTL");
    match session.set("user", &user, ttl, None).await {
        Ok(()) => StatusCode::NO_CONTENT,
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn user_of(parts: &http::request::Parts) -> Option<&str> {
    parts.headers.get(USER_HEADER)?.to_str().ok()
}

/// Builds the app for `config`, connecting its store.
pub async fn build(config: Config, backends: &Backends, work: Duration) -> anyhow::Result<Router> {
    let state = AppState {
        executions: Arc::new(AtomicU64::new(0)),
        work,
    };
    let stats_routes = Router::new()
        .route("/stats", get(stats))
        .route("/stats/reset", post(reset_stats))
        .with_state(state.clone());
    let plain = || {
        Router::new()
            .route("/api/deployments", post(create_deployment))
            .with_state(state.clone())
    };
    let with_session_noop = |api: Router| api.route("/session", post(no_session));

    let api = match config {
        Config::Baseline => with_session_noop(plain()),
        Config::OursMemory => {
            // A budget far above what a run writes: the run measures the store, not eviction.
            let store = tower_idempotency::store::memory::MemoryStore::builder()
                .max_entries(8_000_000)
                .max_bytes(4 << 30)
                .build();
            with_session_noop(plain().layer(ours(store)))
        }
        Config::OursRedis => {
            let store = tower_idempotency_redis::RedisStore::builder()
                .prefix(format!("{}:", backends.namespace))
                .connect(&backends.redis_url)
                .await
                .context("connecting RedisStore")?;
            with_session_noop(plain().layer(ours(store)))
        }
        Config::OursPostgres => {
            // The pool as shipped (sqlx's 10 connections, ping before use): the default a user
            // gets.
            let store = tower_idempotency_postgres::PostgresStore::builder()
                .table(backends.table())
                .connect(&backends.database_url)
                .await
                .context("connecting PostgresStore")?;
            store.migrate().await.context("creating the table")?;
            // The handler's insert shares the store's pool: the same 10 connections as the
            // transactional configuration has for everything.
            let orders = backends.orders_table();
            crate::orders::create_postgres_table(store.pool(), &orders).await?;
            let route = crate::orders::postgres_route(state.clone(), store.pool().clone(), &orders);
            with_session_noop(route.layer(ours(store)))
        }
        Config::OursPostgresTx => {
            // A pool as the crate's example opens it (`PgPool::connect`: sqlx's defaults, 10
            // connections, ping before use), shared by the store and the handler.
            let pool = tower_idempotency_postgres::sqlx::PgPool::connect(&backends.database_url)
                .await
                .context("connecting to PostgreSQL")?;
            let store = tower_idempotency_postgres::PostgresTransactionalStore::with_table(
                pool.clone(),
                &backends.table(),
            )?;
            store.migrate().await.context("creating the table")?;
            let orders = backends.orders_table();
            crate::orders::create_postgres_table(&pool, &orders).await?;
            let route = crate::orders::postgres_lent_route(state.clone(), &orders);
            with_session_noop(route.layer(ours_transactional(store)))
        }
        Config::OursSqlite => {
            // As shipped: `SqliteStore::connect` (WAL, synchronous = NORMAL, busy_timeout 5 s,
            // 8 connections); the handler's insert shares the store's pool.
            let store = tower_idempotency_sqlite::SqliteStore::connect(sqlite_file(backends)?)
                .await
                .context("opening SqliteStore")?;
            store.migrate().await.context("creating the table")?;
            crate::orders::create_sqlite_table(store.pool()).await?;
            let route = crate::orders::sqlite_route(state.clone(), store.pool().clone());
            with_session_noop(route.layer(ours(store)))
        }
        Config::OursSqliteTx => {
            // The crate's recommended pool (`pool_options`, `connect_options`): the same
            // settings as `SqliteStore::connect`.
            let pool = tower_idempotency_sqlite::pool_options()
                .connect_with(tower_idempotency_sqlite::connect_options(sqlite_file(
                    backends,
                )?))
                .await
                .context("opening the SQLite database")?;
            let store = tower_idempotency_sqlite::SqliteTransactionalStore::new(pool.clone());
            store.migrate().await.context("creating the table")?;
            crate::orders::create_sqlite_table(&pool).await?;
            let route = crate::orders::sqlite_lent_route(state.clone());
            with_session_noop(route.layer(ours_transactional(store)))
        }
        Config::IdempotentMemory => {
            let store = idempotent::memory::MemoryStore::builder().try_build()?;
            with_session_noop(plain().layer(peer_idempotent(store)))
        }
        Config::IdempotentRedis => {
            let store = idempotent::valkey::ValkeyStore::with_url(backends.redis_url.clone())
                .prefix(backends.namespace.clone())
                .try_build()
                .await
                .context("connecting ValkeyStore")?;
            with_session_noop(plain().layer(peer_idempotent(store)))
        }
        Config::AxumIdempotent => {
            use ruts::{CookieOptions, SessionLayer, store::moka::MokaStore};
            // Direct-key mode: the same contract as the others (the client's Idempotency-Key),
            // cached for a day like theirs; the session is the scope.
            let options = axum_idempotent::IdempotentOptions::default()
                .use_idempotency_key_header(Some("idempotency-key"), false)
                .expire_after(24 * 3600);
            let sessions = Arc::new(MokaStore::builder().max_capacity(100_000).build());
            plain()
                .route("/session", post(start_session))
                .layer(axum_idempotent::IdempotentLayer::<MokaStore>::new(options))
                .layer(
                    SessionLayer::new(sessions).with_cookie_options(
                        CookieOptions::build()
                            .name("session")
                            .path("/")
                            .max_age(24 * 3600),
                    ),
                )
                .layer(tower_cookies::CookieManagerLayer::new())
        }
    };
    Ok(api.merge(stats_routes))
}

/// Our layer, configured as the README shows.
fn ours<St: tower_idempotency::store::IdempotencyStore>(
    store: St,
) -> tower_idempotency::IdempotencyLayer<St> {
    tower_idempotency::IdempotencyLayer::new(store)
        .scope(|parts| Some(user_of(parts)?.to_owned().into()))
}

/// Our layer in transactional mode, scoped the same way.
fn ours_transactional<St: tower_idempotency::transactional::TransactionalStore>(
    store: St,
) -> tower_idempotency::IdempotencyLayer<tower_idempotency::transactional::Transactional<St>> {
    tower_idempotency::IdempotencyLayer::transactional(store)
        .scope(|parts| Some(user_of(parts)?.to_owned().into()))
}

/// The SQLite configurations' database file, in a fresh directory of the server's own.
fn sqlite_file(backends: &Backends) -> anyhow::Result<std::path::PathBuf> {
    let dir = backends.sqlite_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join("app.db"))
}

/// `idempotent`'s layer, scoped by the same header.
fn peer_idempotent<St>(store: St) -> idempotent::middleware::IdempotencyLayer<St> {
    idempotent::middleware::IdempotencyLayer::new(store)
        .scope(|parts| user_of(parts).map(str::to_owned))
}

/// `serve`: binds `127.0.0.1:port` and serves `config` until killed.
pub fn serve(config: Config, port: u16, backends: Backends, work: Duration) -> anyhow::Result<()> {
    // One worker thread: the load generator gets the other core (see docs/benchmarks.md).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = build(config, &backends, work).await?;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{port}"))?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
