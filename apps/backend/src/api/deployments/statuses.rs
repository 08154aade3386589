//! `POST /api/deployments/{id}/statuses` (behind the idempotency layer, written through the
//! request's [`Writer`]) and `GET /api/deployments/{id}/statuses`.

use axum::{
    Extension, Json,
    extract::{Path, State, rejection::PathRejection},
    http::StatusCode,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{DeploymentStatus, NewStatusInput, Writer, format_time};
use crate::{
    api::{
        JsonBody,
        responses::{DatabaseUnavailable, DeploymentNotFound, RateLimited, Unauthenticated},
    },
    app::AppState,
    auth::AuthUser,
    db::{
        self,
        deployments::statuses::{self, NewStatus, StatusRecord},
    },
    error::{AppError, ProblemDetails},
};

/// One status report of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "019ac9c5-0b1d-7f00-8c1e-2a3b4c5d6e7f",
    "deployment_id": "019ac9c4-3f2e-7b61-9d4a-8f6e2b1c0a57",
    "state": "in_progress",
    "description": "Rolling out to 3 of 12 hosts",
    "log_url": "https://ci.example.com/runs/4711",
    "created_at": "2026-11-28T19:46:00.000Z"
}))]
pub struct StatusReport {
    /// Opaque identifier.
    pub id: String,
    /// The deployment it belongs to.
    pub deployment_id: String,
    /// The state the deployment moved to.
    pub state: DeploymentStatus,
    /// Free text; `null` when none was given.
    #[schema(required = true)]
    pub description: Option<String>,
    /// Link to the runner's log; `null` when none was given.
    #[schema(required = true)]
    pub log_url: Option<String>,
    /// When it was reported, RFC 3339 in UTC with milliseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl StatusReport {
    fn from_record(record: &StatusRecord) -> Result<Self, AppError> {
        let state = DeploymentStatus::parse(&record.state)
            .ok_or_else(|| AppError::Internal(format!("unknown state `{}`", record.state)))?;
        Ok(Self {
            id: record.id.clone(),
            deployment_id: record.deployment_id.clone(),
            state,
            description: record.description.clone(),
            log_url: record.log_url.clone(),
            created_at: format_time(record.created_at)?,
        })
    }
}

/// The path's deployment id, or 404 for one that cannot exist (undecodable, or with a NUL,
/// which PostgreSQL would refuse as a query parameter).
pub(super) fn deployment_id(id: Result<Path<String>, PathRejection>) -> Result<String, AppError> {
    match id {
        Ok(Path(id)) if !id.contains('\0') => Ok(id),
        _ => Err(AppError::NotFound("deployment")),
    }
}

/// Reports a status of a deployment.
#[utoipa::path(
    post,
    path = "/api/deployments/{id}/statuses",
    tag = "deployments",
    operation_id = "addDeploymentStatus",
    summary = "Report a status of one of your deployments",
    description = "Moves the deployment to `state` and records the report. The lifecycle: \
        `queued -> in_progress | error | cancelled`, `in_progress -> success | failure | \
        error | cancelled`; `success`, `failure`, `error` and `cancelled` are final. No state \
        is entered twice.\n\n\
        Send an `Idempotency-Key` to make retries safe, as for creating a deployment: a retry \
        with the same key and body gets the first response again, marked \
        `Idempotent-Replayed: true`, and adds nothing. With the default `database` store the \
        report, the deployment's new state and the key's record commit in one transaction.",
    params(
        ("id" = String, Path, description = "The deployment's id."),
        (
            "Idempotency-Key" = Option<String>,
            Header,
            nullable = false,
            max_length = 512,
            pattern = r#"^([\x21\x23-\x2b\x2d-\x7e]{1,255}|"([\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255}")$"#,
            description = "Makes the request safe to retry, as on `POST /api/deployments`.",
            example = "\"3b0c8d52-status-in-progress\""
        ),
    ),
    request_body(content = NewStatusInput, content_type = "application/json"),
    responses(
        (
            status = 201,
            description = "Added; or, with `Idempotent-Replayed: true`, the replay of the first \
                response to a request with the same Idempotency-Key.",
            body = StatusReport,
            headers(
                (
                    "Idempotent-Replayed" = String,
                    description = "`true` when this is a replay; absent on the first execution."
                ),
            ),
        ),
        (status = 400, description = "Malformed body (`malformed-body`) or Idempotency-Key \
            (`key-invalid`, `key-required` with `--require-idempotency-key`).",
            body = ProblemDetails, content_type = "application/problem+json"),
        Unauthenticated,
        RateLimited,
        DeploymentNotFound,
        (status = 408, description = "The body did not arrive in time (`request-timeout`).",
            body = ProblemDetails, content_type = "application/problem+json"),
        (status = 409, description = "The deployment is in a final state \
            (`deployment-finished`), the lifecycle has no move from its state to `state` \
            (`invalid-transition`), or a request with this Idempotency-Key is still running \
            (`key-in-use`, with `Retry-After`).",
            body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait (`key-in-use` only)."))),
        (status = 413, description = "The body exceeds the size limit (`request-too-large`).",
            body = ProblemDetails, content_type = "application/problem+json"),
        (status = 415, description = "The body is not sent as `application/json` \
            (`unsupported-content-type`).", body = ProblemDetails,
            content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`validation-failed`, listed in `errors`), \
            or the Idempotency-Key was used with a different request (`key-reused`).",
            body = ProblemDetails, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (`internal-error`, `handler-failed`).",
            body = ProblemDetails, content_type = "application/problem+json"),
        (status = 503, description = "The database or the idempotency store is busy or \
            unavailable (`database-unavailable`, `store-unavailable`, `transaction-failed`, \
            `outcome-unknown`, `handler-timed-out`): retry with the same key after \
            `Retry-After` seconds.",
            body = ProblemDetails, content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying."))),
    ),
    security(("bearer" = [])),
)]
pub async fn add_status(
    Extension(user): Extension<AuthUser>,
    id: Result<Path<String>, PathRejection>,
    writer: Writer,
    JsonBody(body): JsonBody,
) -> Result<(StatusCode, Json<StatusReport>), AppError> {
    let deployment_id = deployment_id(id)?;
    let input = NewStatusInput::from_json(body)?;
    let id = uuid::Uuid::now_v7().to_string();
    let new = NewStatus {
        id: &id,
        deployment_id: &deployment_id,
        state: input.state.as_str(),
        description: input.description.as_deref(),
        log_url: input.log_url.as_deref(),
        created_at: db::now(),
    };
    let record = writer
        .add_status(&user.id, &new, |current| {
            let current = DeploymentStatus::parse(current)
                .ok_or_else(|| AppError::Internal(format!("unknown status `{current}`")))?;
            current.check_transition(input.state)
        })
        .await?;
    tracing::info!(deployment = %deployment_id, state = %record.state, user = %user.id, "status added");
    Ok((
        StatusCode::CREATED,
        Json(StatusReport::from_record(&record)?),
    ))
}

/// Lists the status reports of a deployment.
#[utoipa::path(
    get,
    path = "/api/deployments/{id}/statuses",
    tag = "deployments",
    operation_id = "listDeploymentStatuses",
    summary = "List the statuses of one of your deployments, newest first",
    description = "Every status reported for the deployment, newest first (at most one per \
        state, so no pagination). Empty while the deployment is `queued`.",
    params(("id" = String, Path, description = "The deployment's id.")),
    responses(
        (status = 200, description = "The deployment's statuses, newest first.",
            body = Vec<StatusReport>),
        Unauthenticated,
        RateLimited,
        DeploymentNotFound,
        DatabaseUnavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn list_statuses(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Vec<StatusReport>>, AppError> {
    let deployment_id = deployment_id(id)?;
    let records = statuses::list(&state.db, &user.id, &deployment_id)
        .await?
        .ok_or(AppError::NotFound("deployment"))?;
    let reports = records
        .iter()
        .map(StatusReport::from_record)
        .collect::<Result<_, _>>()?;
    Ok(Json(reports))
}
