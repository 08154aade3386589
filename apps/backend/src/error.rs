//! Every error answer is RFC 9457 `application/problem+json` with a stable `type` under
//! [`PROBLEM_TYPE_BASE`], which the idempotency layer shares, so clients match on one
//! namespace whichever component refused the request.

use std::{fmt, time::Duration};

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use tower_idempotency::problem::ProblemKind;

pub use self::{
    document::{FieldError, ProblemDetails},
    transient::is_transient,
};

mod document;
mod transient;

/// The prefix of every problem `type`; the slug follows (`.../problems/not-found`).
pub const PROBLEM_TYPE_BASE: &str = "https://deployments.example.com/problems/";

/// The media type of error responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Why a request was refused, one variant per problem type.
#[derive(Debug)]
pub enum AppError {
    /// 401: no bearer token.
    MissingToken,
    /// 401: a token that is malformed, unknown, revoked or expired.
    InvalidToken,
    /// 404: the resource does not exist or belongs to someone else.
    NotFound(&'static str),
    /// 404: no route matches the path.
    RouteNotFound,
    /// 405: the route exists, the method does not.
    MethodNotAllowed,
    /// 400: the body is not JSON, or not a JSON object.
    MalformedBody(String),
    /// 415: the body is not declared as JSON.
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
    /// 409: the deployment reached a final state; it takes no more statuses.
    DeploymentFinished(&'static str),
    /// 409: the deployment cannot move from its state to the requested one.
    InvalidTransition {
        /// The deployment's state.
        from: &'static str,
        /// The requested state.
        to: &'static str,
    },
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
            Self::DeploymentFinished(_) => "deployment-finished",
            Self::InvalidTransition { .. } => "invalid-transition",
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
            Self::MalformedBody(_) | Self::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            Self::UnsupportedContentType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::DeploymentFinished(_) | Self::InvalidTransition { .. } => StatusCode::CONFLICT,
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
            Self::DeploymentFinished(_) => "Deployment finished",
            Self::InvalidTransition { .. } => "Invalid status transition",
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
            Self::InvalidToken => {
                "The bearer token is malformed, unknown, revoked or expired.".to_owned()
            }
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
            Self::DeploymentFinished(state) => {
                format!("The deployment is `{state}`, a final state: it takes no more statuses.")
            }
            Self::InvalidTransition { from, to } => format!(
                "A `{from}` deployment cannot become `{to}`. Allowed: queued -> in_progress, \
                 error or cancelled; in_progress -> success, failure, error or cancelled."
            ),
            Self::NotReady(why) => why.clone(),
            Self::DatabaseUnavailable(_) => "The database is busy or unreachable; nothing was \
                                             changed. Retry after `Retry-After` seconds."
                .to_owned(),
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
            errors,
            ..ProblemDetails::new(
                self.slug(),
                self.title(),
                self.status().as_u16(),
                self.detail(),
            )
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
        if is_transient(&error) {
            Self::DatabaseUnavailable(error)
        } else {
            Self::Internal(format!("database error: {error}"))
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
        assert_eq!(json["code"], "validation-failed");
        let text = serde_json::to_string(&AppError::KeyReused.to_problem()).unwrap();
        assert!(
            text.starts_with(
                r#"{"type":"https://deployments.example.com/problems/key-reused","code":"key-reused","title":"#
            ),
            "{text}"
        );
        assert!(!text.contains("errors"), "{text}");
    }
}
