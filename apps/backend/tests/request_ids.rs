//! `x-request-id` on every response (the client's when valid, generated otherwise) and on
//! every log line of the request, against a real `backend serve` process.

mod common;

use backend::Settings;
use common::{Backend, Store, TestDb, TestServer};
use serde_json::Value;

fn id_of(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-request-id")
        .expect("an x-request-id header")
        .to_str()
        .expect("ASCII")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_and_log_line_carries_the_request_id() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Memory, &[]).await;
    let token = common::token(&t.db, "alice").await;

    // Generated when absent: a UUID, a new one each time.
    let first = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    let second = server
        .client
        .get(server.url("/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(second.status(), 404);
    let (a, b) = (id_of(&first), id_of(&second));
    assert_ne!(a, b);
    assert!(uuid::Uuid::parse_str(&a).is_ok(), "{a}");

    // Propagated when valid, on success and on refusals alike.
    for (path, bearer) in [
        ("/api/deployments", token.as_str()),
        ("/api/deployments", "bk_nope"),
    ] {
        let response = server
            .client
            .get(server.url(path))
            .bearer_auth(bearer)
            .header("x-request-id", "client-id-42")
            .send()
            .await
            .unwrap();
        assert_eq!(id_of(&response), "client-id-42");
    }

    // Replaced when invalid.
    for invalid in ["has space", &"x".repeat(200), "semi;colon"] {
        let response = server
            .client
            .get(server.url("/healthz"))
            .header("x-request-id", invalid)
            .send()
            .await
            .unwrap();
        let id = id_of(&response);
        assert_ne!(id, invalid);
        assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    }

    // The execution log line of a create carries the id of its request.
    let created = server
        .client
        .post(server.url("/api/deployments"))
        .bearer_auth(&token)
        .header("idempotency-key", "rid-key-1")
        .header("x-request-id", "create-request-7")
        .json(&common::deployment("api"))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(id_of(&created), "create-request-7");
    let log = server.log_text();
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|line: &Value| line["message"] == backend::telemetry::EXECUTION_MESSAGE)
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    assert_eq!(lines[0]["span"]["request_id"], "create-request-7", "{log}");
    server.stop().await;
}
