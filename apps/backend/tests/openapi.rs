//! `openapi.yaml` is generated from the code; these tests keep the committed copy, the
//! served copy and the code in step.

mod common;

use backend::openapi::{ApiDoc, yaml};
use common::{Backend, TestDb, TestServer};
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
    assert!(
        served == committed,
        "the served description differs from apps/backend/openapi.yaml: {REGENERATE}"
    );
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
        ("get", "/healthz"),
        ("get", "/metrics"),
        ("get", "/openapi.yaml"),
        ("get", "/readyz"),
        ("post", "/api/deployments"),
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
        "24 hours",
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
