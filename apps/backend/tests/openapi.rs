//! `openapi.yaml` is generated from the code; these tests keep the committed copy, the
//! served copy and the code in step.

mod common;

use std::time::Duration;

use backend::{
    Settings,
    openapi::{ApiDoc, DEFAULT_TTL_PHRASE, ttl_phrase, yaml},
};
use common::{Backend, Store, TestDb, TestServer};
use reqwest::{StatusCode, header};
use serde_json::Value;
use utoipa::OpenApi as _;

const COMMITTED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi.yaml");
const REGENERATE: &str = "regenerate it with `cargo run -p backend -- openapi > apps/backend/openapi.yaml` \
     (or `UPDATE_OPENAPI=1 cargo test -p backend --test openapi`) and commit the result";

fn generated() -> String {
    yaml().expect("the description serialises")
}

#[test]
fn committed_file_matches_the_code() {
    let generated = generated();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(COMMITTED, &generated).expect("write openapi.yaml");
    }
    let committed = std::fs::read_to_string(COMMITTED)
        .unwrap_or_else(|e| panic!("cannot read {COMMITTED}: {e}; {REGENERATE}"));
    assert!(
        committed == generated,
        "apps/backend/openapi.yaml is out of date: {REGENERATE}"
    );
}

/// A server on the default TTL serves the committed file, the default TTL stated as its own
/// (`served_description_states_the_configured_ttl` checks other TTLs).
#[tokio::test]
async fn served_description_is_the_committed_file() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::start(&t.db).await;
    let response = server
        .client
        .get(server.url("/openapi.yaml"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/yaml");
    let served = response.text().await.unwrap();
    let committed = std::fs::read_to_string(COMMITTED).unwrap();
    let phrase = ttl_phrase(backend::config::DEFAULT_IDEMPOTENCY_TTL);
    assert!(
        phrase.starts_with("24 hours (as configured on this server"),
        "{phrase}"
    );
    assert!(
        served == committed.replace(DEFAULT_TTL_PHRASE, &phrase),
        "the served description differs from apps/backend/openapi.yaml (but for the TTL \
         phrase): {REGENERATE}"
    );
}

/// Real processes with other TTLs state theirs (and only theirs), on either database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_description_states_the_configured_ttl() {
    for backend in [Backend::Sqlite, Backend::Postgres] {
        served_ttl(backend).await;
    }
}

async fn served_ttl(backend: Backend) {
    let t = TestDb::new(backend).await;
    for (ttl, words) in [
        (Duration::from_secs(90 * 60), "90 minutes"),
        (Duration::from_secs(24 * 3600), "24 hours"),
    ] {
        let server = TestServer::spawn_store(
            &t,
            Settings {
                idempotency_ttl: ttl,
                ..Settings::default()
            },
            Store::Database,
            &[],
        )
        .await;
        let response = server
            .client
            .get(server.url("/openapi.yaml"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let served = response.text().await.unwrap();
        assert_eq!(served, backend::openapi::served_yaml(ttl).unwrap());
        let phrase = format!("{words} (as configured on this server with `--idempotency-ttl`)");
        // The create operation's description and its Idempotency-Key header both say it.
        assert_eq!(served.matches(&phrase).count(), 2, "{served}");
        assert!(!served.contains("(the default; configurable"), "{served}");
        if words != "24 hours" {
            assert!(!served.contains("24 hours"), "{served}");
        }
        server.stop().await;
    }
}

#[test]
fn openapi_subcommand_prints_the_description() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_backend"))
        .arg("openapi")
        .output()
        .expect("run backend openapi");
    assert!(output.status.success());
    assert_eq!(String::from_utf8(output.stdout).unwrap(), generated());
}

fn spec() -> Value {
    serde_json::to_value(ApiDoc::openapi()).expect("the description is JSON")
}

#[test]
fn every_route_is_described() {
    let spec = spec();
    let mut paths: Vec<(String, String)> = spec["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .map(move |method| (method.clone(), path.clone()))
        })
        .collect();
    paths.sort();
    let expected = [
        ("get", "/api/deployments"),
        ("get", "/api/deployments/{id}"),
        ("get", "/api/deployments/{id}/statuses"),
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.yaml"),
        ("get", "/readyz"),
        ("post", "/api/deployments"),
        ("post", "/api/deployments/{id}/statuses"),
    ];
    let expected: Vec<_> = expected
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(paths, expected);
    assert_eq!(
        spec["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

#[test]
fn create_documents_idempotency_and_every_answer() {
    let spec = spec();
    let create = &spec["paths"]["/api/deployments"]["post"];
    assert_eq!(create["security"][0]["bearer"], serde_json::json!([]));

    let key = create["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("the Idempotency-Key header is documented");
    assert_eq!(key["in"], "header");
    assert_eq!(key["required"], false);
    let text = key["description"].as_str().unwrap();
    for needle in [
        "Structured-Field",
        "bare token",
        "1-255",
        "per user",
        DEFAULT_TTL_PHRASE,
        "free for a new deployment",
    ] {
        assert!(
            text.contains(needle),
            "Idempotency-Key description lacks {needle:?}"
        );
    }

    let responses = &create["responses"];
    let created = &responses["201"];
    assert!(created["headers"]["Idempotent-Replayed"].is_object());
    assert!(created["headers"]["Location"].is_object());
    assert!(created["description"].as_str().unwrap().contains("replay"));
    for status in ["400", "401", "409", "413", "422", "500", "503"] {
        let schema = &responses[status]["content"]["application/problem+json"]["schema"]["$ref"];
        assert_eq!(
            schema, "#/components/schemas/ProblemDetails",
            "{status} is a problem"
        );
    }
    let unavailable = responses["503"]["description"].as_str().unwrap();
    for slug in ["transaction-failed", "outcome-unknown", "handler-timed-out"] {
        assert!(unavailable.contains(slug), "503 lacks {slug}");
        assert_eq!(
            responses["503"]["content"]["application/problem+json"]["examples"][slug]["value"]["type"],
            format!("{}{slug}", backend::PROBLEM_TYPE_BASE)
        );
        assert!(
            spec["info"]["description"].as_str().unwrap().contains(slug),
            "the slug list lacks {slug}"
        );
    }
    let description = create["description"].as_str().unwrap();
    assert!(description.contains(DEFAULT_TTL_PHRASE), "{description}");
    assert!(
        description.contains("creates a new deployment"),
        "{description}"
    );
    for status in ["409", "503"] {
        assert!(
            responses[status]["headers"]["Retry-After"].is_object(),
            "{status} documents Retry-After"
        );
    }
    assert!(responses["401"]["headers"]["WWW-Authenticate"].is_object());
}

#[test]
fn documented_problem_types_share_the_base() {
    let text = generated();
    let types: Vec<&str> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("type: https://"))
        .collect();
    assert!(!types.is_empty(), "the examples show problem types");
    for rest in types {
        let uri = format!("https://{rest}");
        assert!(uri.starts_with(backend::PROBLEM_TYPE_BASE), "{uri}");
    }
}
