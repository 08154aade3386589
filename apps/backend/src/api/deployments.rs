//! `/api/deployments`: create (idempotent), list, show.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::PathRejection},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use time::{UtcOffset, format_description::BorrowedFormatItem, macros::format_description};
use tower_idempotency::{IDEMPOTENT_REPLAYED, IdempotencyKey};
use utoipa::{IntoParams, ToSchema};

use super::JsonBody;
use crate::{
    app::AppState,
    auth::AuthUser,
    db::{
        self,
        deployments::{DeploymentRecord, Inserted, NewDeployment},
    },
    error::{AppError, FieldError, ProblemDetails},
    idempotency,
    telemetry::{self, GuardOutcome},
};

/// Default page size of the list endpoint.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size of the list endpoint.
pub const MAX_PAGE_SIZE: u32 = 100;

const SLUG_MAX: usize = 63;
const REF_MAX: usize = 255;
const DESCRIPTION_MAX: usize = 1000;

/// RFC 3339, UTC, milliseconds: one spelling per instant, so equal rows serialise equally.
const CREATED_AT_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// Lifecycle of a deployment. New deployments are `queued`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeploymentStatus {
    /// Accepted, waiting for a runner.
    Queued,
}

impl DeploymentStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
        }
    }
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "019ac9c4-3f2e-7b61-9d4a-8f6e2b1c0a57",
    "project": "billing-api",
    "environment": "production",
    "ref": "v2.14.0",
    "description": "Roll out the new invoice renderer",
    "status": "queued",
    "created_at": "2026-11-28T19:45:00.123Z"
}))]
pub struct Deployment {
    /// Opaque identifier.
    pub id: String,
    /// Project slug.
    pub project: String,
    /// Environment slug.
    pub environment: String,
    /// Git ref or container image that is deployed.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Free text; `null` when none was given.
    #[schema(required = true)]
    pub description: Option<String>,
    /// Lifecycle status.
    pub status: DeploymentStatus,
    /// Creation time, RFC 3339 in UTC with milliseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl Deployment {
    fn from_record(record: &DeploymentRecord) -> Result<Self, AppError> {
        let status = match record.status.as_str() {
            "queued" => DeploymentStatus::Queued,
            other => return Err(AppError::Internal(format!("unknown status `{other}`"))),
        };
        let created_at = record
            .created_at
            .to_offset(UtcOffset::UTC)
            .format(CREATED_AT_FORMAT)
            .map_err(|e| AppError::Internal(format!("cannot format a timestamp: {e}")))?;
        Ok(Self {
            id: record.id.clone(),
            project: record.project.clone(),
            environment: record.environment.clone(),
            git_ref: record.git_ref.clone(),
            description: record.description.clone(),
            status,
            created_at,
        })
    }
}

/// The body of `POST /api/deployments`. Unknown members are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
// The handler validates by hand (`from_json`); this makes the schema say what it enforces
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "project": "billing-api",
    "environment": "production",
    "ref": "v2.14.0",
    "description": "Roll out the new invoice renderer"
}))]
pub struct CreateDeployment {
    /// Project slug: 1-63 lowercase letters, digits or `-`, not starting or ending with `-`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub project: String,
    /// Environment slug, same rules as `project`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub environment: String,
    /// Git ref or image to deploy: 1-255 characters, no whitespace or control characters.
    #[serde(rename = "ref")]
    // The pattern: no Unicode whitespace (`char::is_whitespace`), no control character.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub git_ref: String,
    /// Optional free text, at most 1000 characters, no NUL.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub description: Option<String>,
}

impl CreateDeployment {
    /// Reads and validates a request body, collecting every invalid field.
    pub fn from_json(body: Value) -> Result<Self, AppError> {
        let Value::Object(mut members) = body else {
            return Err(AppError::MalformedBody(
                "The request body must be a JSON object.".to_owned(),
            ));
        };
        let mut errors = Vec::new();
        let project = required_string(&mut members, "project", &mut errors)
            .filter(|v| check(v, "project", validate_slug, &mut errors));
        let environment = required_string(&mut members, "environment", &mut errors)
            .filter(|v| check(v, "environment", validate_slug, &mut errors));
        let git_ref = required_string(&mut members, "ref", &mut errors)
            .filter(|v| check(v, "ref", validate_ref, &mut errors));
        let description = match members.remove("description") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(text)) => match validate_description(&text) {
                Ok(()) => Some(Some(text)),
                Err(message) => {
                    errors.push(FieldError::new("description", message));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new("description", "must be a string or null"));
                None
            }
        };
        // What is left is unknown; rejecting it beats silently ignoring a misspelt field.
        errors.extend(
            members
                .keys()
                .map(|name| FieldError::new(name.as_str(), "unknown field")),
        );
        match (project, environment, git_ref, description) {
            (Some(project), Some(environment), Some(git_ref), Some(description))
                if errors.is_empty() =>
            {
                Ok(Self {
                    project,
                    environment,
                    git_ref,
                    description,
                })
            }
            _ => Err(AppError::Validation(errors)),
        }
    }

    /// Whether `record` was created from an equal request (for the database-level guard).
    fn matches(&self, record: &DeploymentRecord) -> bool {
        self.project == record.project
            && self.environment == record.environment
            && self.git_ref == record.git_ref
            && self.description == record.description
    }
}

fn required_string(
    members: &mut Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match members.remove(field) {
        Some(Value::String(value)) => Some(value),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn check(
    value: &str,
    field: &str,
    validate: fn(&str) -> Result<(), String>,
    errors: &mut Vec<FieldError>,
) -> bool {
    match validate(value) {
        Ok(()) => true,
        Err(message) => {
            errors.push(FieldError::new(field, message));
            false
        }
    }
}

/// DNS-label-like: safe in URLs, hostnames and metric labels.
fn validate_slug(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > SLUG_MAX {
        return Err(format!("must be 1-{SLUG_MAX} characters long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lowercase letters, digits and '-'".to_owned());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

fn validate_ref(value: &str) -> Result<(), String> {
    let length = value.chars().count();
    if length == 0 || length > REF_MAX {
        return Err(format!("must be 1-{REF_MAX} characters long"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

fn validate_description(value: &str) -> Result<(), String> {
    if value.chars().count() > DESCRIPTION_MAX {
        return Err(format!("must be at most {DESCRIPTION_MAX} characters"));
    }
    // Valid JSON (`\u0000`), but PostgreSQL text cannot store it: refuse it on every
    // database alike instead of failing the insert.
    if value.contains('\0') {
        return Err("must not contain NUL characters".to_owned());
    }
    Ok(())
}

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
        every retry with the same key and the same body within 24 hours gets the first \
        response again (same status, same body byte for byte, same `Location`), marked \
        `Idempotent-Replayed: true`, and creates nothing. Keys are scoped per user. \
        Independently of that window, a user has at most one deployment per key: a retry \
        after the window, or after the server lost its idempotency records, gets the \
        original deployment back (201, `Idempotent-Replayed: true`), and a different body \
        gets 422 `key-reused`.\n\n\
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
                users never share a key. Replayed for 24 hours (configurable). Reusing a key \
                for a different body answers 422 `key-reused`; a retry while the first \
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
            description = "The body is not a JSON object or not sent as `application/json` \
                (`malformed-body`, `unsupported-content-type`), or the Idempotency-Key \
                header is malformed (`key-invalid`). Nothing was executed.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            examples(
                ("key-invalid" = (value = json!({
                    "type": "https://deployments.example.com/problems/key-invalid",
                    "title": "Invalid Idempotency-Key",
                    "status": 400,
                    "detail": "The Idempotency-Key is longer than 255 characters."
                }))),
                ("malformed-body" = (value = json!({
                    "type": "https://deployments.example.com/problems/malformed-body",
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
                    "title": "Invalid deployment",
                    "status": 422,
                    "detail": "The request body has 1 invalid field.",
                    "errors": [{"field": "project", "message": "must not start or end with '-'"}]
                }))),
                ("key-reused" = (value = json!({
                    "type": "https://deployments.example.com/problems/key-reused",
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
                (`store-unavailable`, `store-full`, `database-unavailable`). Nothing was \
                executed; retry with the same key after `Retry-After` seconds.",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
        ),
    ),
    security(("bearer" = [])),
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    key: Option<Extension<IdempotencyKey>>,
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
    match state.db.deployments().insert(&new).await? {
        Inserted::Created(record) => {
            tracing::info!(deployment = %record.id, user = %user.id, "deployment queued");
            created(&record, false)
        }
        // The idempotency store forgot this key (restart, expiry, another instance), the
        // database did not: answer as the first request was answered, create nothing. This
        // handler ran a second time for the key all the same; the guard hit says so.
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

/// Counts and logs a hit of the database guard. Only keyed inserts can conflict, so a hit
/// always has a record.
fn guard_hit(record: Option<&str>, existing: &DeploymentRecord, outcome: GuardOutcome) {
    if let Some(record) = record {
        telemetry::guard_hit(record, &existing.id, outcome);
    }
}

/// Query parameters of `GET /api/deployments`, as sent (validated by the handler so that
/// errors are problems naming the parameter).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1-100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page; omit for the first page.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
}

/// One page of deployments, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeploymentPage {
    /// The deployments on this page.
    pub items: Vec<Deployment>,
    /// Pass as `cursor` to get the next page; `null` on the last page.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// Lists the caller's deployments.
#[utoipa::path(
    get,
    path = "/api/deployments",
    tag = "deployments",
    operation_id = "listDeployments",
    summary = "List your deployments, newest first",
    params(ListParams),
    responses(
        (status = 200, description = "A page of deployments.", body = DeploymentPage),
        (
            status = 400,
            description = "Invalid `limit` or `cursor` (`invalid-parameter`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 401,
            description = "No valid bearer token (`unauthenticated`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`")),
        ),
        (
            status = 503,
            description = "The database is unavailable (`database-unavailable`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
        ),
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeploymentPage>, AppError> {
    let Query(params) = params.map_err(|rejection| {
        AppError::InvalidParameter(vec![FieldError::new("query", rejection.body_text())])
    })?;
    let (limit, before) = parse_list_params(&params)?;
    // One extra row tells whether another page follows.
    let mut records = state
        .db
        .deployments()
        .list(&user.id, before, i64::from(limit) + 1)
        .await?;
    let next_cursor = if records.len() > limit as usize {
        records.truncate(limit as usize);
        records.last().map(|last| encode_cursor(last.seq))
    } else {
        None
    };
    let items = records
        .iter()
        .map(Deployment::from_record)
        .collect::<Result<_, _>>()?;
    Ok(Json(DeploymentPage { items, next_cursor }))
}

fn parse_list_params(params: &ListParams) -> Result<(u32, Option<i64>), AppError> {
    let mut errors = Vec::new();
    let limit = match params.limit.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(raw) => match raw.parse::<u32>() {
            Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => limit,
            _ => {
                errors.push(FieldError::new(
                    "limit",
                    format!("must be an integer from 1 to {MAX_PAGE_SIZE}"),
                ));
                DEFAULT_PAGE_SIZE
            }
        },
    };
    let before = match params.cursor.as_deref() {
        None => None,
        Some(raw) => {
            let decoded = decode_cursor(raw);
            if decoded.is_none() {
                errors.push(FieldError::new(
                    "cursor",
                    "is not a cursor this API returned",
                ));
            }
            decoded
        }
    };
    if errors.is_empty() {
        Ok((limit, before))
    } else {
        Err(AppError::InvalidParameter(errors))
    }
}

/// Cursors are opaque to clients (base64url), so their format can change.
fn encode_cursor(seq: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("v1:{seq}"))
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = std::str::from_utf8(&bytes).ok()?;
    let seq: i64 = text.strip_prefix("v1:")?.parse().ok()?;
    (seq > 0).then_some(seq)
}

/// Shows one of the caller's deployments.
#[utoipa::path(
    get,
    path = "/api/deployments/{id}",
    tag = "deployments",
    operation_id = "getDeployment",
    summary = "Get one of your deployments",
    params(("id" = String, Path, description = "The deployment's id.")),
    responses(
        (status = 200, description = "The deployment.", body = Deployment),
        (
            status = 401,
            description = "No valid bearer token (`unauthenticated`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`")),
        ),
        (
            status = 404,
            description = "No such deployment, or it belongs to another user (`not-found`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        (
            status = 503,
            description = "The database is unavailable (`database-unavailable`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
            headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
        ),
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Deployment>, AppError> {
    // An id that does not even decode cannot exist, nor can one with a NUL (which
    // PostgreSQL would refuse as a query parameter).
    let Ok(Path(id)) = id else {
        return Err(AppError::NotFound("deployment"));
    };
    if id.contains('\0') {
        return Err(AppError::NotFound("deployment"));
    }
    // Another user's deployment is indistinguishable from a missing one: ids leak nothing.
    let record = state
        .db
        .deployments()
        .get(&user.id, &id)
        .await?
        .ok_or(AppError::NotFound("deployment"))?;
    Ok(Json(Deployment::from_record(&record)?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors_of(body: Value) -> Vec<(String, String)> {
        match CreateDeployment::from_json(body) {
            Err(AppError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_valid_body() {
        let input = CreateDeployment::from_json(json!({
            "project": "billing-api", "environment": "prod-eu1", "ref": "refs/tags/v1.2.3",
            "description": null
        }))
        .unwrap();
        assert_eq!(input.git_ref, "refs/tags/v1.2.3");
        assert_eq!(input.description, None);
        let input = CreateDeployment::from_json(json!({
            "project": "a", "environment": "0", "ref": "ghcr.io/acme/api@sha256:abc",
            "description": "x".repeat(1000)
        }))
        .unwrap();
        assert_eq!(input.project, "a");
    }

    #[test]
    fn names_every_invalid_field() {
        let errors = errors_of(json!({
            "project": "-billing", "environment": 5, "ref": "has space",
            "description": "x".repeat(1001), "colour": "blue"
        }));
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["project", "environment", "ref", "description", "colour"]
        );
        let errors = errors_of(json!({}));
        assert!(errors.iter().all(|(_, m)| m == "is required"));
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn slug_rules() {
        assert!(validate_slug("a-b-1").is_ok());
        assert!(validate_slug(&"a".repeat(63)).is_ok());
        for bad in ["", "A", "a_b", "a-", "-a", "é", &"a".repeat(64)] {
            assert!(validate_slug(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn description_rules() {
        assert!(validate_description("").is_ok());
        assert!(validate_description("two\nlines\tand a tab").is_ok());
        assert!(validate_description(&"é".repeat(1000)).is_ok());
        for bad in ["a\0b", "\0", &"x".repeat(1001)] {
            assert!(validate_description(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ref_rules() {
        assert!(validate_ref("main").is_ok());
        assert!(validate_ref(&"é".repeat(255)).is_ok());
        for bad in ["", "a b", "a\tb", "a\u{7f}", &"a".repeat(256)] {
            assert!(validate_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_objects_are_malformed() {
        assert!(matches!(
            CreateDeployment::from_json(json!([1])),
            Err(AppError::MalformedBody(_))
        ));
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        assert_eq!(decode_cursor(&encode_cursor(42)), Some(42));
        for bad in ["", "!!", "djE6", "djE6LTE", "eHh4"] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_size_bounds() {
        let params = |limit: &str| ListParams {
            limit: Some(limit.to_owned()),
            cursor: None,
        };
        assert_eq!(parse_list_params(&params("1")).unwrap().0, 1);
        assert_eq!(parse_list_params(&params("100")).unwrap().0, 100);
        assert!(parse_list_params(&params("0")).is_err());
        assert!(parse_list_params(&params("101")).is_err());
        assert!(parse_list_params(&params("ten")).is_err());
        assert_eq!(
            parse_list_params(&ListParams::default()).unwrap().0,
            DEFAULT_PAGE_SIZE
        );
    }
}
