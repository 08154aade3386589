//! `/metrics` has HTTP metrics by route template (never a raw path) and status, a latency
//! histogram and the database pool's gauges, on SQLite and PostgreSQL (each has a pool of its
//! own kind), from a real `backend serve` process (the recorder is process-wide).

#[macro_use]
mod common;

use backend::Settings;
use common::{Backend, Store, TestDb, TestServer};

/// The value of the first sample whose line starts with `name{` (or is `name `) and contains
/// every one of `labels`.
fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{")) || line.starts_with(&format!("{name} "))
        })
        .find(|line| labels.iter().all(|label| line.contains(label)))
        .and_then(|line| line.rsplit(' ').next()?.parse().ok())
}

async fn requests_are_counted_by_route_and_status(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Memory, &[]).await;
    let token = common::token(&t.db, "alice").await;
    for id in [
        "0199a3c2-0000-7000-8000-000000000001",
        "0199a3c2-0000-7000-8000-000000000002",
    ] {
        let response = server.get(&token, &format!("/api/deployments/{id}")).await;
        assert_eq!(response.status(), 404);
    }
    assert_eq!(server.get(&token, "/api/deployments").await.status(), 200);
    assert_eq!(
        server.get(&token, "/no/such/secret-path").await.status(),
        404
    );
    let text = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let route = r#"route="/api/deployments/{id}""#;
    assert_eq!(
        sample(
            &text,
            "http_requests_total",
            &[route, r#"status="404""#, r#"method="GET""#]
        ),
        Some(2.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "http_requests_total",
            &[r#"route="/api/deployments""#, r#"status="200""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            "http_requests_total",
            &[r#"route="unmatched""#, r#"status="404""#]
        ),
        Some(1.0),
        "{text}"
    );
    assert!(
        !text.contains("0199a3c2") && !text.contains("secret-path"),
        "{text}"
    );
    assert_eq!(
        sample(&text, "http_request_duration_seconds_count", &[route]),
        Some(2.0),
        "{text}"
    );
    assert!(
        sample(
            &text,
            "http_request_duration_seconds_bucket",
            &[route, r#"le="+Inf""#]
        )
        .is_some(),
        "a histogram, not a summary: {text}"
    );
    let size = sample(&text, "db_pool_connections", &[]).expect("pool size");
    let idle = sample(&text, "db_pool_idle_connections", &[]).expect("pool idle");
    assert!(size >= 1.0 && idle <= size, "{text}");
    server.stop().await;
}

backend_tests!(requests_are_counted_by_route_and_status);
