//! Probes, metrics and the API description: unauthenticated, for infrastructure.

use std::{future::Future, time::Duration};

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    app::AppState,
    error::{AppError, ProblemDetails},
    openapi,
};

/// A probe must answer quickly even when a dependency hangs.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The answer of a successful probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Status {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

fn ok() -> Json<Status> {
    Json(Status {
        status: "ok".to_owned(),
    })
}

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "operations",
    operation_id = "healthz",
    summary = "Liveness probe",
    responses((status = 200, description = "The process is up.", body = Status)),
)]
pub async fn healthz() -> Json<Status> {
    ok()
}

/// Readiness: the database and the idempotency store answer.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    operation_id = "readyz",
    summary = "Readiness probe",
    responses(
        (status = 200, description = "The database and the idempotency store are reachable.", body = Status),
        (
            status = 503,
            description = "A dependency is unreachable (`not-ready`); `detail` says which.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before probing again.")),
        ),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Status>, AppError> {
    let (database, store) = tokio::join!(probe(state.db.ping()), probe(state.records.check()),);
    let failures: Vec<String> = [("database", database), ("idempotency store", store)]
        .into_iter()
        .filter_map(|(name, result)| result.err().map(|why| format!("{name}: {why}")))
        .collect();
    if failures.is_empty() {
        Ok(ok())
    } else {
        // Operators read probe output; it names the dependency, not credentials.
        Err(AppError::NotReady(format!(
            "Not ready: {}.",
            failures.join("; ")
        )))
    }
}

async fn probe<E: std::fmt::Display>(
    check: impl Future<Output = Result<(), E>>,
) -> Result<(), String> {
    match tokio::time::timeout(CHECK_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
    }
}

/// Prometheus metrics, including the idempotency layer's counters.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "operations",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    description = "Prometheus text exposition format. Includes \
        `deployments_create_executions_total` (executions of the create handler for requests \
        with an `Idempotency-Key`), `deployments_idempotency_guard_hits_total{outcome}` \
        (keyed creates answered by the database guard, a deployment created with the same \
        key within the TTL, instead of inserting: `replayed` or `key_reused`), and the \
        idempotency layer's \
        `idempotency_requests_total{outcome}`, `idempotency_store_duration_seconds{operation}` \
        and `idempotency_store_errors_total{operation}`. Counters are exported from startup, \
        at zero.",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain; version=0.0.4")),
)]
pub async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// This API's OpenAPI description.
#[utoipa::path(
    get,
    path = "/openapi.yaml",
    tag = "operations",
    operation_id = "openapi",
    summary = "OpenAPI description of this API",
    responses((
        status = 200,
        description = "This document: an OpenAPI 3.1 object, as YAML, stating this server's \
            `--idempotency-ttl`.",
        body = Object,
        content_type = "application/yaml"
    )),
)]
pub async fn openapi_yaml(State(state): State<AppState>) -> Result<Response, AppError> {
    let yaml = openapi::served_yaml(state.settings.idempotency_ttl).map_err(AppError::Internal)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/yaml"),
        )],
        yaml,
    )
        .into_response())
}
