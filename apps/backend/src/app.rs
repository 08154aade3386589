//! The router: routes, middleware order, fallbacks.

use std::{any::Any, sync::Arc, time::Duration};

use axum::{
    Router,
    body::{Body, Bytes, HttpBody as _},
    extract::{DefaultBodyLimit, Request, State},
    http::header,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{MethodRouter, get, post},
};
use http_body_util::{BodyExt as _, LengthLimitError, Limited};
use metrics_exporter_prometheus::PrometheusHandle;
use tower_http::{
    catch_panic::CatchPanicLayer,
    request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tower_idempotency::HandlerTasks;
use tracing::Level;

use crate::{
    api::{deployments, health},
    auth,
    config::{
        DEFAULT_IDEMPOTENCY_LEASE, DEFAULT_IDEMPOTENCY_TTL, DEFAULT_MAX_BODY_BYTES,
        DEFAULT_REQUEST_TIMEOUT,
    },
    db::Db,
    error::AppError,
    http_metrics,
    idempotency::{self, Records},
    request_id, telemetry,
};

/// Tunables of the app (the CLI fills them from flags and environment).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long an idempotency key's response is replayed.
    pub idempotency_ttl: Duration,
    /// How long a claim on a key survives its instance (renewed while the request runs).
    pub idempotency_lease: Duration,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Longest time to receive a request body; slower uploads get 408.
    pub request_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            idempotency_ttl: DEFAULT_IDEMPOTENCY_TTL,
            idempotency_lease: DEFAULT_IDEMPOTENCY_LEASE,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// Deployments and API tokens.
    pub db: Db,
    /// Where the idempotency layer keeps its records (and what the readiness probe checks).
    pub records: Records,
    /// Tunables.
    pub settings: Arc<Settings>,
    /// Create handlers still running after their client left; shutdown waits for them.
    pub handler_tasks: HandlerTasks,
    pub(crate) metrics: PrometheusHandle,
    /// Authentication's own state (when each token's last use was written).
    pub(crate) auth: Arc<auth::AuthState>,
    /// `--require-idempotency-key`: a `POST` without a key is 400 `key-required`.
    pub require_idempotency_key: bool,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("db", &self.db.kind())
            .field("records", &self.records)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// State with default [`Settings`], records in `records` (a
    /// [`BoxStore`](tower_idempotency::store::BoxStore) converts into a store of its own; the
    /// `database` store is built by [`idempotency::build_store`]). Installs the process-wide
    /// metrics recorder on first use.
    pub fn new(db: Db, records: impl Into<Records>) -> Self {
        Self {
            db,
            records: records.into(),
            settings: Arc::new(Settings::default()),
            handler_tasks: HandlerTasks::default(),
            metrics: telemetry::metrics_handle(),
            auth: Arc::default(),
            require_idempotency_key: false,
        }
    }

    /// Whether every `POST` must carry an `Idempotency-Key` (400 `key-required` if not).
    pub fn with_require_idempotency_key(mut self, required: bool) -> Self {
        self.require_idempotency_key = required;
        self
    }

    /// Replaces the settings.
    pub fn with_settings(mut self, settings: Settings) -> Self {
        self.settings = Arc::new(settings);
        self
    }
}

/// The whole HTTP API.
///
/// Middleware, outermost first: request ids (an invalid one dropped, one set, echoed on the
/// response), HTTP metrics, panic catcher, request tracing, body limit; then per route:
/// authentication, then (only on `POST /api/deployments`) the body reader (time and size
/// limits) and the idempotency layer, so a key is always scoped to an authenticated user,
/// unauthenticated requests never touch the store (nor begin a transaction), and a stalled
/// upload never claims a key.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .route(
            "/api/deployments",
            idempotent(&state, post(deployments::create)).get(deployments::list),
        )
        .route("/api/deployments/{id}", get(deployments::show))
        .route(
            "/api/deployments/{id}/statuses",
            idempotent(&state, post(deployments::add_status)).get(deployments::list_statuses),
        )
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_auth,
        ));

    let max_body_bytes = state.settings.max_body_bytes;
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.yaml", get(health::openapi_yaml))
        .merge(api)
        .fallback(not_found)
        // After every route is added: it only reaches routes that exist by now.
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_id::make_span::<Body>)
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(catch_panic_layer())
        // Outside the panic catcher, so a panic's 500 is counted too.
        .layer(middleware::from_fn_with_state(
            state.clone(),
            http_metrics::track,
        ))
        // Outermost, so every answer (a panic's too) carries the id and the span has it.
        .layer(PropagateRequestIdLayer::new(request_id::REQUEST_ID))
        .layer(SetRequestIdLayer::new(
            request_id::REQUEST_ID,
            MakeRequestUuid,
        ))
        .layer(middleware::from_fn(request_id::drop_invalid))
        .with_state(state)
}

/// A `POST` route (`POST /api/deployments`, `POST .../statuses`) behind the body reader and
/// the idempotency layer of the configured store: a store of its own, or transactional mode
/// on the deployments database (the handler then finds the request's transaction lent to it;
/// see [`deployments::Writer`]).
fn idempotent(state: &AppState, create: MethodRouter<AppState>) -> MethodRouter<AppState> {
    let create = match &state.records {
        Records::Separate(store) => create.layer(idempotency::layer(state, store.clone())),
        Records::Sqlite(store) => {
            create.layer(idempotency::transactional_layer(state, store.clone()))
        }
        Records::Postgres(store) => {
            create.layer(idempotency::transactional_layer(state, store.clone()))
        }
    };
    create.layer(middleware::from_fn_with_state(state.clone(), read_body))
}

/// Receives the whole request body before the idempotency layer and the handler see it:
/// within [`Settings::request_timeout`] (a slow or stalled client gets 408 instead of holding
/// a connection and a task forever) and within [`Settings::max_body_bytes`] (413). Either
/// way nothing was executed and no idempotency key was claimed.
async fn read_body(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let (parts, mut body) = request.into_parts();
    let limit = state.settings.max_body_bytes;
    let deadline = tokio::time::Instant::now() + state.settings.request_timeout;
    match tokio::time::timeout_at(deadline, read_limited(&mut body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(AppError::PayloadTooLarge)) => {
            // Closing a socket with unread data resets it, and a client still sending then
            // sees a broken connection instead of the 413 (and retries). Read and discard a
            // moderate excess first, within the deadline, as servers do with a "lingering
            // close"; not for a client that waits for `100 Continue` before sending.
            let expects_continue = parts
                .headers
                .get(header::EXPECT)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
            if !expects_continue {
                let cap = limit.saturating_mul(DRAIN_FACTOR);
                let _ = tokio::time::timeout_at(deadline, drain(&mut body, cap)).await;
            }
            AppError::PayloadTooLarge.into_response()
        }
        Ok(Err(error)) => error.into_response(),
        Err(_elapsed) => AppError::RequestTimeout.into_response(),
    }
}

/// An oversized body is drained (discarded) up to this many times the limit before the 413.
const DRAIN_FACTOR: usize = 16;

async fn read_limited(body: &mut Body, limit: usize) -> Result<Bytes, AppError> {
    // A declared length over the limit is refused before reading a byte; `Limited` alone
    // would only notice once that much data had arrived.
    if body.size_hint().lower() > limit as u64 {
        return Err(AppError::PayloadTooLarge);
    }
    // Borrowed, not moved: after a 413 the caller drains what is left of the same body.
    match Limited::new(&mut *body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<LengthLimitError>() => Err(AppError::PayloadTooLarge),
        Err(_) => Err(AppError::MalformedBody(
            "The request body could not be read.".to_owned(),
        )),
    }
}

/// Reads and discards the rest of `body`, unless it is (or is declared) longer than `cap`.
async fn drain(body: &mut Body, cap: usize) {
    if body.size_hint().lower() > cap as u64 {
        return;
    }
    let mut drained = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        drained += frame.data_ref().map_or(0, Bytes::len);
        if drained > cap {
            return;
        }
    }
}

async fn not_found() -> AppError {
    AppError::RouteNotFound
}

// axum adds the `Allow` header to whatever this returns.
async fn method_not_allowed() -> AppError {
    AppError::MethodNotAllowed
}

type PanicHandler = fn(Box<dyn Any + Send + 'static>) -> Response;

/// Turns a panicking handler into a 500 problem (the connection survives, the client gets a
/// well-formed answer, the panic message goes to the log only).
pub(crate) fn catch_panic_layer() -> CatchPanicLayer<PanicHandler> {
    CatchPanicLayer::custom(panic_response as PanicHandler)
}

fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("non-string panic payload");
    AppError::Internal(format!("handler panicked: {message}")).into_response()
}

#[cfg(test)]
mod tests {
    use axum::{body::Body, http::Request};
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn panics_become_problems() {
        let router: Router = Router::new()
            .route(
                "/boom",
                get(|| async {
                    if true {
                        panic!("kaboom");
                    }
                }),
            )
            .layer(catch_panic_layer());
        let response = router
            .oneshot(Request::get("/boom").body(Body::empty()).unwrap())
            .await
            .unwrap();
        assert_eq!(response.status(), 500);
        assert_eq!(
            response.headers()["content-type"],
            crate::error::PROBLEM_JSON
        );
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            problem["type"],
            "https://deployments.example.com/problems/internal-error"
        );
        assert!(!String::from_utf8_lossy(&body).contains("kaboom"));
    }
}
