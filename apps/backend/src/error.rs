//! Every error answer is RFC 9457 `application/problem+json` with a stable `type` under
//! [`PROBLEM_TYPE_BASE`], which the idempotency layer shares, so clients match on one
//! namespace whichever component refused the request.

use std::{fmt, time::Duration};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use tower_idempotency::problem::ProblemKind;
use utoipa::ToSchema;

/// The prefix of every problem `type`; the slug follows (`.../problems/not-found`).
pub const PROBLEM_TYPE_BASE: &str = "https://deployments.example.com/problems/";

/// The media type of error responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, as every error response carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "https://deployments.example.com/problems/validation-failed",
    "title": "Invalid deployment",
    "status": 422,
    "detail": "The request body has 1 invalid field.",
    "errors": [{"field": "project", "message": "must not start or end with '-'"}]
}))]
pub struct ProblemDetails {
    /// URI identifying the problem type; stable, match on it.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence.
    pub detail: String,
    /// The invalid fields (`validation-failed` and `invalid-parameter` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field (body member or query parameter).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Why a request was refused, one variant per problem type.
#[derive(Debug)]
pub enum AppError {
    /// 401: no bearer token.
    MissingToken,
    /// 401: a token that is malformed or unknown.
    InvalidToken,
    /// 404: the resource does not exist or belongs to someone else.
    NotFound(&'static str),
    /// 404: no route matches the path.
    RouteNotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 400: the body is not JSON, or not a JSON object.
    MalformedBody(String),
    /// 400: the body is not declared as JSON.
    UnsupportedContentType,
    /// 400: a query parameter is invalid.
    InvalidParameter(Vec<FieldError>),
    /// 408: the body did not arrive within the configured time.
    RequestTimeout,
    /// 413: the body exceeds the configured limit.
    PayloadTooLarge,
    /// 422: one or more body fields are invalid.
    Validation(Vec<FieldError>),
    /// 422: the idempotency key was already used for a different request.
    KeyReused,
    /// 503: a dependency (database, idempotency store) is unreachable.
    NotReady(String),
    /// 503: the database did not answer in time.
    DatabaseUnavailable(sqlx::Error),
    /// 500: a bug or an unexpected database error. Logged, never shown.
    Internal(String),
}

impl AppError {
    /// The stable slug appended to [`PROBLEM_TYPE_BASE`].
    pub fn slug(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::InvalidToken => "unauthenticated",
            Self::NotFound(_) | Self::RouteNotFound => "not-found",
            Self::MethodNotAllowed => "method-not-allowed",
            Self::MalformedBody(_) => "malformed-body",
            Self::UnsupportedContentType => "unsupported-content-type",
            Self::InvalidParameter(_) => "invalid-parameter",
            // The idempotency layer's slug for the same condition.
            Self::PayloadTooLarge => "request-too-large",
            Self::RequestTimeout => "request-timeout",
            Self::Validation(_) => "validation-failed",
            // Must equal the layer's slug: the database guard reports the same condition.
            Self::KeyReused => "key-reused",
            Self::NotReady(_) => "not-ready",
            Self::DatabaseUnavailable(_) => "database-unavailable",
            Self::Internal(_) => "internal-error",
        }
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) | Self::RouteNotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::MalformedBody(_) | Self::UnsupportedContentType | Self::InvalidParameter(_) => {
                StatusCode::BAD_REQUEST
            }
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::Validation(_) | Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::NotReady(_) | Self::DatabaseUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn title(&self) -> &'static str {
        match self {
            Self::MissingToken | Self::InvalidToken => "Authentication required",
            Self::NotFound(_) | Self::RouteNotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::MalformedBody(_) => "Malformed request body",
            Self::UnsupportedContentType => "Unsupported content type",
            Self::InvalidParameter(_) => "Invalid query parameter",
            Self::PayloadTooLarge => ProblemKind::RequestTooLarge.title(),
            Self::RequestTimeout => "Request body timeout",
            Self::Validation(_) => "Invalid deployment",
            Self::KeyReused => ProblemKind::KeyReused.title(),
            Self::NotReady(_) => "Service not ready",
            Self::DatabaseUnavailable(_) => "Database unavailable",
            Self::Internal(_) => "Internal server error",
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::MissingToken => {
                "Send an API token as `Authorization: Bearer <token>`.".to_owned()
            }
            Self::InvalidToken => "The bearer token is malformed or unknown.".to_owned(),
            Self::NotFound(what) => format!("No such {what}."),
            Self::RouteNotFound => "No resource exists at this path.".to_owned(),
            Self::MethodNotAllowed => {
                "This resource does not support the method; see the Allow header.".to_owned()
            }
            Self::MalformedBody(why) => why.clone(),
            Self::UnsupportedContentType => {
                "The request body must be JSON, sent with `Content-Type: application/json`."
                    .to_owned()
            }
            Self::InvalidParameter(errors) => {
                format!("{} query parameter(s) are invalid.", errors.len())
            }
            Self::PayloadTooLarge => {
                "The request body exceeds the size limit; the request was not executed.".to_owned()
            }
            Self::RequestTimeout => "The request body did not arrive in time; the request was \
                                     not executed. Retry it (with the same Idempotency-Key)."
                .to_owned(),
            Self::Validation(errors) => match errors.len() {
                1 => "The request body has 1 invalid field.".to_owned(),
                n => format!("The request body has {n} invalid fields."),
            },
            Self::KeyReused => "This Idempotency-Key was already used for a request with a \
                                different method, path, query or body. Use a new key for a new \
                                request."
                .to_owned(),
            Self::NotReady(why) => why.clone(),
            Self::DatabaseUnavailable(_) => {
                "The database did not answer in time; nothing was changed. Retry later.".to_owned()
            }
            Self::Internal(_) => "The request failed unexpectedly.".to_owned(),
        }
    }

    /// The problem document of this error.
    pub fn to_problem(&self) -> ProblemDetails {
        let errors = match self {
            Self::Validation(errors) | Self::InvalidParameter(errors) => Some(errors.clone()),
            _ => None,
        };
        ProblemDetails {
            type_uri: format!("{PROBLEM_TYPE_BASE}{}", self.slug()),
            title: self.title().to_owned(),
            status: self.status().as_u16(),
            detail: self.detail(),
            errors,
        }
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title(), self.status())
    }
}

impl std::error::Error for AppError {}

impl From<sqlx::Error> for AppError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            // Pool exhausted or the server unreachable: transient, worth a retry.
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                Self::DatabaseUnavailable(error)
            }
            other => Self::Internal(format!("database error: {other}")),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(cause) => tracing::error!(%cause, "request failed"),
            Self::DatabaseUnavailable(cause) => tracing::warn!(%cause, "database unavailable"),
            Self::NotReady(why) => tracing::warn!(%why, "not ready"),
            _ => {}
        }
        let mut response = problem_response(&self.to_problem());
        let headers = response.headers_mut();
        match self {
            Self::MissingToken => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Self::InvalidToken => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            // RFC 9110 §15.5.9: the server closes the connection after a 408.
            Self::RequestTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            Self::NotReady(_) | Self::DatabaseUnavailable(_) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(RETRY_AFTER.as_secs()),
                );
            }
            _ => {}
        }
        response
    }
}

/// What a client should wait before retrying after a 503 of ours.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// `problem` as a response: its status, `application/problem+json`, never cached.
pub fn problem_response(problem: &ProblemDetails) -> Response {
    let status = StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(problem)).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_reused_matches_the_layer() {
        // The database guard and the idempotency layer must report key reuse identically.
        assert_eq!(
            AppError::KeyReused.slug(),
            tower_idempotency::problem::ProblemKind::KeyReused.slug()
        );
        assert_eq!(
            AppError::PayloadTooLarge.slug(),
            tower_idempotency::problem::ProblemKind::RequestTooLarge.slug()
        );
        assert_eq!(
            AppError::KeyReused.status(),
            tower_idempotency::problem::ProblemKind::KeyReused.status()
        );
    }

    #[test]
    fn validation_problems_list_fields() {
        let problem =
            AppError::Validation(vec![FieldError::new("project", "is required")]).to_problem();
        let json = serde_json::to_value(&problem).unwrap();
        assert_eq!(
            json["type"],
            "https://deployments.example.com/problems/validation-failed"
        );
        assert_eq!(json["status"], 422);
        assert_eq!(json["errors"][0]["field"], "project");
    }
}
