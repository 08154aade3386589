//! The OpenAPI description, generated from the handlers' annotations and the request and
//! response types, so it cannot drift from the code. `apps/backend/openapi.yaml` is this
//! output ([`yaml`]), committed; a test fails when the two differ.
//!
//! The committed file documents the default TTL of an idempotency key and says it is
//! configurable ([`DEFAULT_TTL_PHRASE`]); a running server serves [`served_yaml`], the same
//! document with that phrase replaced by the TTL it was started with ([`ttl_phrase`]), so what
//! it publishes is what it does.

use std::{
    sync::{Mutex, OnceLock, PoisonError},
    time::Duration,
};

use utoipa::{
    Modify, OpenApi,
    openapi::{
        RefOr,
        header::HeaderBuilder,
        path::Operation,
        schema::{ObjectBuilder, Type},
        security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
    },
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
            `method-not-allowed`, `malformed-body`, `unsupported-content-type` (415), \
            `invalid-parameter`, `request-timeout`, `request-too-large`, `validation-failed`, \
            `deployment-finished`, `invalid-transition`, `not-ready`, `database-unavailable` \
            (503 with `Retry-After`: the database is busy, locked or unreachable; retry), \
            `internal-error`, and those of idempotent requests: `key-invalid`, \
            `key-required` (with `--require-idempotency-key`), `key-in-use`, `key-reused`, \
            `scope-missing`, \
            `request-unreadable`, `response-not-kept`, `store-unavailable`, `store-full`, \
            `handler-failed`, `record-corrupt`, and, with the `database` idempotency store, \
            `transaction-failed`, `outcome-unknown`, `handler-timed-out`. Every problem also \
            carries that slug as `code`, beside `type`. Every response carries `x-request-id`.",
        license(name = "MIT OR Apache-2.0"),
    ),
    paths(
        deployments::create::create,
        deployments::read::list,
        deployments::read::show,
        deployments::statuses::add_status,
        deployments::statuses::list_statuses,
        health::healthz,
        health::readyz,
        health::metrics,
        health::openapi_yaml,
    ),
    modifiers(&BearerAuth, &RequestIdHeader),
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

/// `x-request-id` on every response of every operation: the server sets it on every answer
/// (propagated from the request, or generated), so it is declared once, here.
#[derive(Debug)]
struct RequestIdHeader;

impl Modify for RequestIdHeader {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let header = HeaderBuilder::new()
            .schema(Some(ObjectBuilder::new().schema_type(Type::String)))
            .description(Some(
                "The request's id: the client's `x-request-id` if it sent a valid one, \
                 generated otherwise; every log line of the request names it.",
            ))
            .build();
        for item in openapi.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ]
            .into_iter()
            .flatten()
            {
                for response in operation.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        response
                            .headers
                            .entry(REQUEST_ID_HEADER.to_owned())
                            .or_insert_with(|| RefOr::T(header.clone()));
                    }
                }
            }
        }
    }
}

/// The response header naming the request.
const REQUEST_ID_HEADER: &str = "x-request-id";

/// How the committed description states the TTL of an idempotency key. Every mention of it
/// in the annotations is exactly this text, which [`served_yaml`] replaces.
pub const DEFAULT_TTL_PHRASE: &str =
    "24 hours (the default; configurable with `--idempotency-ttl`)";

/// The description as YAML, with the default TTL: what `backend openapi` prints and
/// `apps/backend/openapi.yaml` holds.
pub fn yaml() -> Result<String, String> {
    static YAML: OnceLock<Result<String, String>> = OnceLock::new();
    YAML.get_or_init(|| ApiDoc::openapi().to_yaml().map_err(|e| e.to_string()))
        .clone()
}

/// The description a server whose keys live for `ttl` serves at `GET /openapi.yaml`: [`yaml`]
/// with [`DEFAULT_TTL_PHRASE`] replaced by [`ttl_phrase`]`(ttl)` wherever it appears.
pub fn served_yaml(ttl: Duration) -> Result<String, String> {
    static SERVED: Mutex<Option<(Duration, String)>> = Mutex::new(None);
    let mut cached = SERVED.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((for_ttl, yaml)) = cached.as_ref()
        && *for_ttl == ttl
    {
        return Ok(yaml.clone());
    }
    let mut doc = ApiDoc::openapi();
    let phrase = ttl_phrase(ttl);
    let mut replaced = 0;
    let mut replace = |text: &mut String| {
        if text.contains(DEFAULT_TTL_PHRASE) {
            *text = text.replace(DEFAULT_TTL_PHRASE, &phrase);
            replaced += 1;
        }
    };
    if let Some(description) = doc.info.description.as_mut() {
        replace(description);
    }
    for item in doc.paths.paths.values_mut() {
        for operation in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            replace_in_operation(operation, &mut replace);
        }
    }
    if replaced == 0 {
        return Err("the OpenAPI description no longer states the idempotency TTL".to_owned());
    }
    let yaml = doc.to_yaml().map_err(|e| e.to_string())?;
    *cached = Some((ttl, yaml.clone()));
    Ok(yaml)
}

fn replace_in_operation(operation: &mut Operation, replace: &mut impl FnMut(&mut String)) {
    operation.summary.iter_mut().for_each(&mut *replace);
    operation.description.iter_mut().for_each(&mut *replace);
    for parameter in operation.parameters.iter_mut().flatten() {
        if let RefOr::T(parameter) = parameter {
            parameter.description.iter_mut().for_each(&mut *replace);
        }
    }
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            replace(&mut response.description);
        }
    }
}

/// How a server with keys living for `ttl` states it: `2 seconds (as configured on this
/// server with `--idempotency-ttl`)`.
pub fn ttl_phrase(ttl: Duration) -> String {
    format!(
        "{} (as configured on this server with `--idempotency-ttl`)",
        human_duration(ttl)
    )
}

/// `ttl` in words, in the largest unit that divides it: `24 hours`, `90 minutes`, `1 second`,
/// `1500 milliseconds`.
pub fn human_duration(ttl: Duration) -> String {
    let ms = ttl.as_millis();
    let (count, unit) = [(3_600_000, "hour"), (60_000, "minute"), (1000, "second")]
        .into_iter()
        .find(|(size, _)| ms > 0 && ms.is_multiple_of(*size))
        .map_or((ms, "millisecond"), |(size, unit)| (ms / size, unit));
    let plural = if count == 1 { "" } else { "s" };
    format!("{count} {unit}{plural}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_words() {
        assert_eq!(human_duration(Duration::from_secs(24 * 3600)), "24 hours");
        assert_eq!(human_duration(Duration::from_secs(3600)), "1 hour");
        assert_eq!(human_duration(Duration::from_secs(90 * 60)), "90 minutes");
        assert_eq!(human_duration(Duration::from_secs(2)), "2 seconds");
        assert_eq!(human_duration(Duration::from_secs(1)), "1 second");
        assert_eq!(
            human_duration(Duration::from_millis(1500)),
            "1500 milliseconds"
        );
    }

    #[test]
    fn the_default_phrase_is_the_default_ttl() {
        assert!(
            DEFAULT_TTL_PHRASE.starts_with(&human_duration(crate::config::DEFAULT_IDEMPOTENCY_TTL))
        );
    }

    #[test]
    fn served_descriptions_state_the_configured_ttl() {
        let committed = yaml().unwrap();
        assert!(committed.contains(DEFAULT_TTL_PHRASE));
        let served = served_yaml(Duration::from_secs(2)).unwrap();
        assert!(!served.contains("24 hours"), "{served}");
        assert!(served.contains(&ttl_phrase(Duration::from_secs(2))));
        // Nothing else differs (the phrases need no YAML quoting of their own).
        assert_eq!(
            served,
            committed.replace(DEFAULT_TTL_PHRASE, &ttl_phrase(Duration::from_secs(2)))
        );
        let served = served_yaml(crate::config::DEFAULT_IDEMPOTENCY_TTL).unwrap();
        assert!(served.contains("24 hours (as configured on this server"));
    }
}
