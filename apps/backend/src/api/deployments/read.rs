//! `GET /api/deployments` (one page, newest first) and `GET /api/deployments/{id}`.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::PathRejection},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use utoipa::ToSchema;

use super::{
    Deployment, ListParams,
    list_query::{self, encode_cursor},
    statuses::deployment_id,
};
use crate::{
    api::responses::{DatabaseUnavailable, DeploymentNotFound, RateLimited, Unauthenticated},
    app::AppState,
    auth::AuthUser,
    error::{AppError, FieldError, ProblemDetails},
};

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
    description = "One page of your deployments, newest first, optionally only those matching \
        every given filter (`project`, `environment`, `status`, `ref`: exact matches). Pass \
        `next_cursor` as `cursor`, with the same filters, for the next page. An unknown, \
        repeated or invalid parameter is 400 `invalid-parameter`, naming it in `errors`.",
    params(ListParams),
    responses(
        (status = 200, description = "A page of deployments.", body = DeploymentPage),
        (
            status = 400,
            description = "An unknown, repeated or invalid query parameter \
                (`invalid-parameter`, naming each in `errors`).",
            body = ProblemDetails,
            content_type = "application/problem+json",
        ),
        Unauthenticated,
        RateLimited,
        DatabaseUnavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    pairs: Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<DeploymentPage>, AppError> {
    let Query(pairs) = pairs.map_err(|rejection| {
        AppError::InvalidParameter(vec![FieldError::new("query", rejection.body_text())])
    })?;
    let query = list_query::parse(&pairs).map_err(AppError::InvalidParameter)?;
    let limit = query.limit as usize;
    // One extra row tells whether another page follows.
    let mut records = state
        .db
        .deployments()
        .list_matching(
            &user.id,
            &query.filter,
            query.after.as_deref(),
            i64::from(query.limit) + 1,
        )
        .await?;
    let next_cursor = if records.len() > limit {
        records.truncate(limit);
        records.last().map(|last| encode_cursor(&last.id))
    } else {
        None
    };
    let items = records
        .iter()
        .map(Deployment::from_record)
        .collect::<Result<_, _>>()?;
    Ok(Json(DeploymentPage { items, next_cursor }))
}

/// Shows one of the caller's deployments.
#[utoipa::path(
    get,
    path = "/api/deployments/{id}",
    tag = "deployments",
    operation_id = "getDeployment",
    summary = "Get one of your deployments",
    description = "The deployment, with a strong `ETag` that changes whenever it does (its \
        status, say). Send it back as `If-None-Match` to get 304 without a body while it is \
        unchanged.",
    params(
        ("id" = String, Path, description = "The deployment's id."),
        (
            "If-None-Match" = Option<String>,
            Header,
            nullable = false,
            description = "`ETag`s of copies you hold (or `*`): 304 if one is current."
        ),
    ),
    responses(
        (status = 200, description = "The deployment.", body = Deployment,
            headers(("ETag" = String, description = "Strong validator of this representation."))),
        (status = 304, description = "Not modified: `If-None-Match` names the current `ETag`.",
            headers(("ETag" = String, description = "The current validator."))),
        Unauthenticated,
        RateLimited,
        DeploymentNotFound,
        DatabaseUnavailable,
    ),
    security(("bearer" = [])),
)]
pub async fn show(
    State(state): State<AppState>,
    Extension(user): Extension<AuthUser>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let id = deployment_id(id)?;
    // Another user's deployment is indistinguishable from a missing one: ids leak nothing.
    let record = state
        .db
        .deployments()
        .get(&user.id, &id)
        .await?
        .ok_or(AppError::NotFound("deployment"))?;
    let body = serde_json::to_vec(&Deployment::from_record(&record)?)
        .map_err(|e| AppError::Internal(format!("cannot serialise a deployment: {e}")))?;
    let etag = etag_of(&body);
    let value = HeaderValue::try_from(etag.as_str())
        .map_err(|e| AppError::Internal(format!("invalid ETag: {e}")))?;
    if none_match(&headers, &etag) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, value)]).into_response());
    }
    Ok((
        [
            (header::ETAG, value),
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

/// A strong validator of `body`: the same bytes, the same tag.
fn etag_of(body: &[u8]) -> String {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

/// Whether `If-None-Match` names `etag` (weak comparison, RFC 9110 §13.1.2) or is `*`.
fn none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_and_if_none_match() {
        let etag = etag_of(b"{}");
        assert!(etag.starts_with('"') && etag.ends_with('"') && etag.len() == 34);
        assert_ne!(etag, etag_of(b"{ }"));
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::IF_NONE_MATCH, HeaderValue::try_from(value).unwrap());
            none_match(&headers, &etag)
        };
        assert!(with(&etag));
        assert!(with(&format!("\"x\", W/{etag}")));
        assert!(with("*"));
        assert!(!with("\"x\""));
        assert!(!none_match(&HeaderMap::new(), &etag));
    }
}
