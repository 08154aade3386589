//! OpenAPI declarations of the answers many operations share, declared once (used as
//! `responses(..., Unauthenticated, ...)` in the `#[utoipa::path]`s).

use utoipa::IntoResponses;

use crate::error::ProblemDetails;

/// 401 `unauthenticated`.
#[derive(Debug, IntoResponses)]
#[response(
    status = 401,
    description = "No valid bearer token (`unauthenticated`).",
    content_type = "application/problem+json",
    headers(("WWW-Authenticate" = String, description = "`Bearer`")),
)]
pub struct Unauthenticated(pub ProblemDetails);

/// 404 `not-found` for a deployment id.
#[derive(Debug, IntoResponses)]
#[response(
    status = 404,
    description = "No such deployment, or it belongs to another user (`not-found`).",
    content_type = "application/problem+json"
)]
pub struct DeploymentNotFound(pub ProblemDetails);

/// 503 `database-unavailable` of a read.
#[derive(Debug, IntoResponses)]
#[response(
    status = 503,
    description = "The database is busy, locked or unreachable (`database-unavailable`): \
        retry after `Retry-After` seconds.",
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
)]
pub struct DatabaseUnavailable(pub ProblemDetails);

/// 429 of the rate limits (`--auth-failure-limit`, `--token-rate-limit`).
#[derive(Debug, IntoResponses)]
#[response(
    status = 429,
    description = "Too many invalid bearer tokens from this client address \
        (`too-many-auth-failures`, answered before any token lookup), or too many requests \
        with this token (`too-many-requests`): retry after `Retry-After` seconds.",
    content_type = "application/problem+json",
    headers(("Retry-After" = u32, description = "Seconds to wait before retrying.")),
)]
pub struct RateLimited(pub ProblemDetails);
