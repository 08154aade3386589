//! `POST /api/deployments`: validates the body, then inserts the deployment behind the
//! database guard, through the request's [`Writer`]: one code path whichever store keeps the
//! idempotency records.

use axum::{
    Extension, Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower_idempotency::{IDEMPOTENT_REPLAYED, IdempotencyKey};

use super::{CreateDeployment, Deployment, DeploymentStatus, Writer};
use crate::{
    api::JsonBody,
    app::AppState,
    auth::AuthUser,
    db::{
        self,
        deployments::{DeploymentRecord, Inserted, NewDeployment},
    },
    error::{AppError, ProblemDetails},
    idempotency,
    telemetry::{self, GuardOutcome},
};

/// 201 with the deployment and its `Location`. `replayed` marks an answer that the
/// database guard produced for a repeated key.
fn created(record: &DeploymentRecord, replayed: bool) -> Result<Response, AppError> {
    let deployment = Deployment::from_record(record)?;
    let location = HeaderValue::try_from(format!("/api/deployments/{}", deployment.id))
        .map_err(|e| AppError::Internal(format!("invalid Location: {e}")))?;
    let mut response = (
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(deployment),
    )
        .into_response();
    if replayed {
        response.headers_mut().insert(
            IDEMPOTENT_REPLAYED.clone(),
            HeaderValue::from_static("true"),
        );
    }
    Ok(response)
}

/// Creates a deployment.
#[utoipa::path(
    post,
    path = "/api/deployments",
    tag = "deployments",
    operation_id = "createDeployment",
    summary = "Create a deployment",
    description = "Queues a deployment for the authenticated user.\n\n\
        Send an `Idempotency-Key` to make retries safe: the first request with a key runs, \
        and every retry with the same key and the same request (body and query) for \
        24 hours (the default; configurable with `--idempotency-ttl`) after it gets the \
        first response again (same status, same body byte for byte, same `Location`), \
        marked `Idempotent-Replayed: true`, and creates nothing; another request with the \
        key gets 422 `key-reused`. Keys are scoped per user. Once that time has passed the \
        key is free again: a request with it creates a new deployment.\n\n\
        With the default `database` idempotency store, a key's record commits in the same \
        database transaction as its deployment: records survive restarts and are shared by \
        every instance on the database, and a request that fails before its commit (a 4xx \
        or 5xx, a crash) leaves neither a deployment nor a record. With a store of its own \
        that loses a record within that time (the `memory` store on a restart, say), the \
        database still answers a retry with the deployment created with the key (201, \
        `Idempotent-Replayed: true`), or 422 `key-reused` for a different body.\n\n\
        Only successful answers are kept: after a 4xx or 5xx the key is free again, so a \
        corrected request may reuse it.",
    params(
        (
            "Idempotency-Key" = Option<String>,
            Header,
            nullable = false,
            max_length = 512,
            // A bare token (visible ASCII but `"` and `,`) or a Structured-Field string.
            pattern = r#"^([\x21\x23-\x2b\x2d-\x7e]{1,255}|"([\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){1,255}")$"#,
            description = "Makes the request safe to retry. A Structured-Field string \
                (`\"8e03978e-40d5-43e8-bc93-6894a57f9324\"`, RFC 8941) or the bare token \
                (`8e03978e-40d5-43e8-bc93-6894a57f9324`); both name the same key. 1-255 \
                printable ASCII characters, one header field, no list. Scoped per user: two \
                users never share a key. Replayed for 24 hours (the default; configurable with \
                `--idempotency-ttl`), then free for a new deployment. Reusing a key for a \
                different body or query meanwhile answers 422 `key-reused`; a retry while the first \
                request still runs answers 409 `key-in-use` with `Retry-After`. Use a fresh \
                random value (a UUID) per logical operation.",
            example = "\"8e03978e-40d5-43e8-bc93-6894a57f9324\""
        ),
    ),
    request_body(content = CreateDeployment, content_type = "application/json"),
    responses(
        (
            status = 201,
            description = "Created; or, with `Idempotent-Replayed: true`, the replay of the \
                first response to a request with the same Idempotency-Key (same status, \
                body and `Location`; nothing new created).",
            body = Deployment,
            headers(
                ("Location" = String, description = "`/api/deployments/{id}` of the deployment."),
                (
                    "Idempotent-Replayed" = String,
                    description = "`true` when this is a replay of an earlier response to the \
                        same Idempotency-Key; absent on the first execution."
                ),
            ),
        ),
        (
            status = 400,
            description = "The body is not a JSON object (`malformed-body`), or the \
                Idempotency-Key header is malformed (`key-invalid`) or, on a server started \
                with `--require-idempotency-key`, missing (`key-required`). Nothing was \
                executed.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            examples(
                ("key-invalid" = (value = json!({
                    "type": "https://deployments.example.com/problems/key-invalid",
                    "code": "key-invalid",
                    "title": "Invalid Idempotency-Key",
                    "status": 400,
                    "detail": "The Idempotency-Key is longer than 255 characters."
                }))),
                ("malformed-body" = (value = json!({
                    "type": "https://deployments.example.com/problems/malformed-body",
                    "code": "malformed-body",
                    "title": "Malformed request body",
                    "status": 400,
                    "detail": "The request body is not valid JSON: EOF while parsing an object at line 1 column 1."
                }))),
            ),
        ),
        (
            status = 401,
            description = "No valid bearer token (`unauthenticated`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`")),
        ),
        crate::api::responses::RateLimited,
        (
            status = 409,
            description = "A request with this Idempotency-Key is still running \
                (`key-in-use`). Retry after `Retry-After` seconds to get its response.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
        ),
        (
            status = 408,
            description = "The body did not arrive within the time limit (`request-timeout`, \
                default 30 s). Nothing was executed and the Idempotency-Key stays free: retry \
                with the same key.",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 415,
            description = "The body is not sent as `application/json` \
                (`unsupported-content-type`). Nothing was executed.",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 413,
            description = "The body exceeds the size limit (`request-too-large`, default 1 MiB). \
                Nothing was executed.",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 422,
            description = "Invalid fields (`validation-failed`, listed in `errors`; the key stays \
                free, so the corrected request may reuse it), or the Idempotency-Key was \
                already used with a different body (`key-reused`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            examples(
                ("validation-failed" = (value = json!({
                    "type": "https://deployments.example.com/problems/validation-failed",
                    "code": "validation-failed",
                    "title": "Invalid deployment",
                    "status": 422,
                    "detail": "The request body has 1 invalid field.",
                    "errors": [{"field": "project", "message": "must not start or end with '-'"}]
                }))),
                ("key-reused" = (value = json!({
                    "type": "https://deployments.example.com/problems/key-reused",
                    "code": "key-reused",
                    "title": "Idempotency-Key reused with a different request",
                    "status": 422,
                    "detail": "This Idempotency-Key was already used for a request with a different method, path, query or body. Use a new key for a new request."
                }))),
            ),
        ),
        (
            status = 500,
            description = "Unexpected failure (`internal-error`, `handler-failed`); the key was \
                released, retry with the same key.",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 503,
            description = "The idempotency store or the database is unavailable \
                (`store-unavailable`, `store-full`, `database-unavailable`), or, with the \
                `database` idempotency store, the request's transaction did not commit \
                (`transaction-failed`) or ran past its time limit (`handler-timed-out`): \
                nothing took effect. `outcome-unknown`: the connection to the database broke \
                during the commit, so the deployment may or may not exist. In every case \
                retry with the same key after `Retry-After` seconds: the retry replays the \
                response if the request took effect, and executes it if not.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
            examples(
                ("transaction-failed" = (value = json!({
                    "type": "https://deployments.example.com/problems/transaction-failed",
                    "code": "transaction-failed",
                    "title": "Request rolled back",
                    "status": 503,
                    "detail": "The request's changes could not be committed and were rolled back: nothing took effect. Retry later with the same key."
                }))),
                ("outcome-unknown" = (value = json!({
                    "type": "https://deployments.example.com/problems/outcome-unknown",
                    "code": "outcome-unknown",
                    "title": "Request outcome unknown",
                    "status": 503,
                    "detail": "The connection to the database broke while the request's changes were being committed, so they may or may not have taken effect. Retry with the same key: the retry replays the response if they did, and executes the request if they did not."
                }))),
                ("handler-timed-out" = (value = json!({
                    "type": "https://deployments.example.com/problems/handler-timed-out",
                    "code": "handler-timed-out",
                    "title": "Request took too long and was rolled back",
                    "status": 503,
                    "detail": "The request ran longer than allowed and was rolled back: nothing took effect. Retry later with the same key."
                }))),
            ),
        ),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    key: Option<Extension<IdempotencyKey>>,
    writer: Writer,
    JsonBody(body): JsonBody,
) -> Result<Response, AppError> {
    let key = key.map(|Extension(key)| key);
    // The layer let a keyed request run: an execution, counted (and logged) before anything
    // can fail or be killed half-way. Requests without a key are not deduplicated by
    // anything, so they are not counted as executions.
    let record = key.as_ref().map(|key| idempotency::record_of(&user, key));
    if let Some(record) = &record {
        telemetry::create_executing(record);
    }
    let input = CreateDeployment::from_json(body)?;
    let id = uuid::Uuid::now_v7().to_string();
    let new = NewDeployment {
        id: &id,
        user_id: &user.id,
        idempotency_key: key.as_ref().map(IdempotencyKey::as_str),
        project: &input.project,
        environment: &input.environment,
        git_ref: &input.git_ref,
        description: input.description.as_deref(),
        status: DeploymentStatus::Queued.as_str(),
        created_at: db::now(),
    };
    // The guard's window is the records' lifetime: after the TTL a key is free for a new
    // deployment, whichever store keeps the records.
    match writer.insert(&new, state.settings.idempotency_ttl).await? {
        Inserted::Created(record) => {
            tracing::info!(deployment = %record.id, user = %user.id, "deployment queued");
            created(&record, false)
        }
        // The idempotency store forgot this key within its TTL (a restart of the memory
        // store, a Redis failover), the database did not: answer as the first request was
        // answered, create nothing. This handler ran a second time for the key all the same;
        // the guard hit says so.
        Inserted::Existing(existing) if input.matches(&existing) => {
            guard_hit(record.as_deref(), &existing, GuardOutcome::Replayed);
            created(&existing, true)
        }
        Inserted::Existing(existing) => {
            guard_hit(record.as_deref(), &existing, GuardOutcome::KeyReused);
            Err(AppError::KeyReused)
        }
    }
}

/// Counts and logs a hit of the database guard. Only keyed inserts can hit it, so a hit
/// always has a record.
fn guard_hit(record: Option<&str>, existing: &DeploymentRecord, outcome: GuardOutcome) {
    if let Some(record) = record {
        telemetry::guard_hit(record, &existing.id, outcome);
    }
}
