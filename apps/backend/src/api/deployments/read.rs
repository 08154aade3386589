//! `GET /api/deployments` (one page, newest first) and `GET /api/deployments/{id}`.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::PathRejection},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{DEFAULT_PAGE_SIZE, Deployment, MAX_PAGE_SIZE};
use crate::{
    app::AppState,
    auth::AuthUser,
    error::{AppError, FieldError, ProblemDetails},
};

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
    use super::*;

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
