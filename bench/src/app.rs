//! The measured server: one trivial JSON handler behind each middleware configuration.
//!
//! Every configuration serves the same routes, so the load generator never needs to know
//! which one it talks to:
//!
//! | route | what it does |
//! |---|---|
//! | `POST /api/deployments` | the handler under test: counts an execution, answers 201 + JSON |
//! | `POST /session` | establishes the caller (`x-user`); sets a session cookie where the middleware keys by session |
//! | `GET /stats` | `{"executions": n}` |
//! | `POST /stats/reset` | sets the count to zero |

use std::{
    fmt,
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
use clap::ValueEnum;
use serde_json::{Value, json};

/// The identity header every configuration scopes keys by.
pub const USER_HEADER: &str = "x-user";

/// One way of serving the app.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// No idempotency layer: the cost of the app itself.
    Baseline,
    /// tower-idempotency with its `MemoryStore`.
    OursMemory,
    /// tower-idempotency with `RedisStore`.
    OursRedis,
    /// tower-idempotency with `PostgresStore`.
    OursPostgres,
    /// `idempotent` 2.0.0 with its memory store.
    IdempotentMemory,
    /// `idempotent` 2.0.0 with its Valkey/Redis store.
    IdempotentRedis,
    /// `axum-idempotent` 0.6.0 over a `ruts` session in a `MokaStore`.
    AxumIdempotent,
}

impl Config {
    pub const ALL: [Self; 7] = [
        Self::Baseline,
        Self::OursMemory,
        Self::OursRedis,
        Self::OursPostgres,
        Self::IdempotentMemory,
        Self::IdempotentRedis,
        Self::AxumIdempotent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::OursMemory => "ours-memory",
            Self::OursRedis => "ours-redis",
            Self::OursPostgres => "ours-postgres",
            Self::IdempotentMemory => "idempotent-memory",
            Self::IdempotentRedis => "idempotent-redis",
            Self::AxumIdempotent => "axum-idempotent",
        }
    }

    /// Whether this is tower-idempotency: its correctness failures fail the run.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Self::OursMemory | Self::OursRedis | Self::OursPostgres
        )
    }

    /// Whether a layer deduplicates at all (the baseline executes every request).
    pub fn deduplicates(self) -> bool {
        self != Self::Baseline
    }

    pub fn needs_redis(self) -> bool {
        matches!(self, Self::OursRedis | Self::IdempotentRedis)
    }

    pub fn needs_postgres(self) -> bool {
        self == Self::OursPostgres
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the shared stores live, and the namespace that keeps one run's records apart.
#[derive(Debug, Clone)]
pub struct Backends {
    pub redis_url: String,
    pub database_url: String,
    /// `[a-z0-9_]`, unique per server process: the Redis key prefix and the table suffix.
    pub namespace: String,
}

impl Backends {
    /// Redis keys of this namespace, for both stores (`idempotent` adds the `:` itself).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }

    pub fn table(&self) -> String {
        format!("loadbench_{}", self.namespace)
    }
}

#[derive(Clone)]
struct AppState {
    executions: Arc<AtomicU64>,
    /// Simulated work in the handler, so that concurrent requests overlap (same-key-64).
    work: Duration,
}

/// The handler under test: what a real "create" endpoint does, minus the database.
async fn create_deployment(
    State(state): State<AppState>,
    Json(request): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let id = state.executions.fetch_add(1, Ordering::Relaxed) + 1;
    if !state.work.is_zero() {
        tokio::time::sleep(state.work).await;
    }
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
    let api = Router::new()
        .route("/api/deployments", post(create_deployment))
        .with_state(state);
    let with_session_noop = |api: Router| api.route("/session", post(no_session));

    let api = match config {
        Config::Baseline => with_session_noop(api),
        Config::OursMemory => {
            // A budget far above what a run writes: the run measures the store, not eviction.
            let store = tower_idempotency::store::memory::MemoryStore::builder()
                .max_entries(8_000_000)
                .max_bytes(4 << 30)
                .build();
            with_session_noop(api.layer(ours(store)))
        }
        Config::OursRedis => {
            let store = tower_idempotency_redis::RedisStore::builder()
                .prefix(format!("{}:", backends.namespace))
                .connect(&backends.redis_url)
                .await
                .context("connecting RedisStore")?;
            with_session_noop(api.layer(ours(store)))
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
            with_session_noop(api.layer(ours(store)))
        }
        Config::IdempotentMemory => {
            let store = idempotent::memory::MemoryStore::builder().try_build()?;
            with_session_noop(api.layer(peer_idempotent(store)))
        }
        Config::IdempotentRedis => {
            let store = idempotent::valkey::ValkeyStore::with_url(backends.redis_url.clone())
                .prefix(backends.namespace.clone())
                .try_build()
                .await
                .context("connecting ValkeyStore")?;
            with_session_noop(api.layer(peer_idempotent(store)))
        }
        Config::AxumIdempotent => {
            use ruts::{CookieOptions, SessionLayer, store::moka::MokaStore};
            // Direct-key mode: the same contract as the others (the client's Idempotency-Key),
            // cached for a day like theirs; the session is the scope.
            let options = axum_idempotent::IdempotentOptions::default()
                .use_idempotency_key_header(Some("idempotency-key"), false)
                .expire_after(24 * 3600);
            let sessions = Arc::new(MokaStore::builder().max_capacity(100_000).build());
            api.route("/session", post(start_session))
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
