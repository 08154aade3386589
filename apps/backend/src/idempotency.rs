//! The idempotency store (chosen by configuration) and the layer on `POST /api/deployments`.

use std::{fmt, str::FromStr};

use axum::http::{HeaderValue, Method, Response, header};
use bytes::Bytes;
use tower_idempotency::{
    IdempotencyLayer,
    problem::{Problem, ProblemKind},
    store::{BoxStore, memory::MemoryStore},
};

use crate::{
    app::AppState,
    auth::AuthUser,
    error::{PROBLEM_TYPE_BASE, ProblemDetails},
};

/// A parsed `--idempotency-store` value.
///
/// To add a backend (say Redis): add a variant, recognise its URL scheme in
/// [`StoreSpec::from_str`], and build it in [`build_store`]. Everything else takes a
/// [`BoxStore`] and needs no change.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// `memory`: in-process, lost on restart (the database's unique key still prevents
    /// duplicate deployments), one instance only.
    Memory,
}

impl FromStr for StoreSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let scheme = spec.split_once("://").map_or(spec, |(scheme, _)| scheme);
        match scheme {
            "memory" => Ok(Self::Memory),
            "redis" | "rediss" | "postgres" | "postgresql" => anyhow::bail!(
                "idempotency store `{scheme}://` is not supported by this build yet; \
                 use `memory`"
            ),
            _ => anyhow::bail!(
                "unknown idempotency store `{}`: expected `memory`",
                crate::db::redact(spec)
            ),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Future variants hold URLs with credentials: never print them.
        match self {
            Self::Memory => f.write_str("Memory"),
        }
    }
}

/// Builds the store `spec` names (`memory`). Async because network-backed stores connect
/// (and should fail at startup, not on the first request).
pub async fn build_store(spec: &str) -> anyhow::Result<BoxStore> {
    match spec.parse::<StoreSpec>()? {
        StoreSpec::Memory => Ok(BoxStore::new(MemoryStore::default())),
    }
}

/// The layer for `POST /api/deployments`: keys are per user (the auth layer runs first and
/// leaves an [`AuthUser`]), problems share the API's type base, and the body limit matches
/// the app's so both answer 413 alike.
pub fn layer(state: &AppState) -> IdempotencyLayer<BoxStore> {
    IdempotencyLayer::new(state.idempotency_store.clone())
        .scope(|parts| {
            parts
                .extensions
                .get::<AuthUser>()
                .map(|user| user.id.clone().into())
        })
        .methods([Method::POST])
        .ttl(state.settings.idempotency_ttl)
        .max_request_body(state.settings.max_body_bytes)
        .problem_type_base(PROBLEM_TYPE_BASE)
        .problem_responder(render_problem)
}

/// The layer's refusals in the app's own problem format (same members, same order), keeping
/// the layer's status and headers (`Retry-After`, `Cache-Control`).
fn render_problem(problem: &Problem) -> Response<Bytes> {
    let mut response = problem.to_response();
    let document = ProblemDetails {
        type_uri: problem.type_uri().to_owned(),
        title: problem.title().to_owned(),
        status: problem.status().as_u16(),
        detail: problem.detail().to_owned(),
        errors: None,
    };
    if let Ok(json) = serde_json::to_vec(&document) {
        *response.body_mut() = Bytes::from(json);
    }
    // A 401 must name the scheme (RFC 9110 §15.5.2). Unreachable while authentication runs
    // first, but the layer would otherwise send a bare 401.
    if problem.kind() == ProblemKind::ScopeMissing {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("memory".parse::<StoreSpec>().unwrap(), StoreSpec::Memory);
        assert_eq!("memory://".parse::<StoreSpec>().unwrap(), StoreSpec::Memory);
        let err = "redis://localhost".parse::<StoreSpec>().unwrap_err();
        assert!(err.to_string().contains("not supported"), "{err}");
        let err = "nonsense".parse::<StoreSpec>().unwrap_err();
        assert!(err.to_string().contains("expected `memory`"), "{err}");
    }
}
