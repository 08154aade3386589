//! The OpenAPI description, generated from the handlers' annotations and the request and
//! response types, so it cannot drift from the code. `apps/backend/openapi.yaml` is this
//! output, committed; a test fails when the two differ.

use std::sync::OnceLock;

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};

use crate::api::{deployments, health};

/// The API description.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "Deployments API",
        description = "Create and inspect deployments.\n\n\
            Every error is an RFC 9457 problem (`application/problem+json`) whose `type` is \
            `https://deployments.example.com/problems/<slug>`; match on `type`, not on \
            `title` or `detail`. Slugs: `unauthenticated`, `not-found`, \
            `method-not-allowed`, `malformed-body`, `unsupported-content-type`, \
            `invalid-parameter`, `request-timeout`, `request-too-large`, `validation-failed`, \
            `not-ready`, `database-unavailable`, `internal-error`, and those of idempotent \
            requests: `key-invalid`, `key-in-use`, `key-reused`, `scope-missing`, \
            `request-unreadable`, `response-not-kept`, `store-unavailable`, `store-full`, \
            `handler-failed`, `record-corrupt`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        deployments::create,
        deployments::list,
        deployments::show,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi_yaml,
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "deployments", description = "Deployments of the authenticated user."),
        (name = "operations", description = "Probes, metrics and this description; no authentication."),
    ),
)]
pub struct ApiDoc;

/// The `bearer` security scheme the deployment routes require.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("opaque")
                    .description(Some(
                        "An API token minted with `backend token create <user>`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The description as YAML (what `backend openapi` prints and `GET /openapi.yaml` serves).
pub fn yaml() -> Result<String, String> {
    static YAML: OnceLock<Result<String, String>> = OnceLock::new();
    YAML.get_or_init(|| ApiDoc::openapi().to_yaml().map_err(|e| e.to_string()))
        .clone()
}
