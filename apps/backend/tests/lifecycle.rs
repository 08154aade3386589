//! Deployments with a lifecycle over real HTTP, against a real `backend` process on SQLite and
//! PostgreSQL: status reports (idempotent, transactional with the default `database` store),
//! their listing, and the ETag of a deployment.

#[macro_use]
mod common;

use backend::Settings;
use common::{
    Backend, Store, TestDb, TestServer, add_status, create_id, deployments_with_key,
    expect_problem, token,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::task::JoinSet;

backend_tests!(
    statuses_move_a_deployment_through_its_lifecycle,
    a_retried_report_is_added_once,
    invalid_reports_are_problems,
    etags_follow_the_status,
    concurrent_reports_move_a_deployment_once,
);

async fn count_statuses(t: &TestDb, id: &str) -> i64 {
    match &t.db {
        backend::Db::Sqlite(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM deployment_statuses WHERE deployment_id = ?")
                .bind(id)
                .fetch_one(pool)
                .await
        }
        backend::Db::Postgres(pool) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM deployment_statuses WHERE deployment_id = $1")
                .bind(id)
                .fetch_one(pool)
                .await
        }
    }
    .expect("count statuses")
}

async fn statuses_move_a_deployment_through_its_lifecycle(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let alice = token(&t.db, "alice").await;
    let id = create_id(&server, &alice, "api").await;
    let path = format!("/api/deployments/{id}/statuses");

    let empty: Value = server.get(&alice, &path).await.json().await.unwrap();
    assert_eq!(empty, json!([]));

    let started = add_status(
        &server,
        &alice,
        &id,
        Some("run-1-started"),
        &json!({"state": "in_progress", "log_url": "https://ci.example.com/runs/1"}),
    )
    .await;
    assert_eq!(started.status(), StatusCode::CREATED);
    let started: Value = started.json().await.unwrap();
    assert_eq!(started["state"], "in_progress");
    assert_eq!(started["deployment_id"], id.as_str());
    assert_eq!(started["log_url"], "https://ci.example.com/runs/1");
    assert!(started["description"].is_null());
    let shown: Value = server
        .get(&alice, &format!("/api/deployments/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "in_progress");

    let done = add_status(
        &server,
        &alice,
        &id,
        None,
        &json!({"state": "success", "description": "all hosts healthy"}),
    )
    .await;
    assert_eq!(done.status(), StatusCode::CREATED);

    // Final: nothing follows, not even another final state.
    for state in ["failure", "cancelled", "in_progress", "success"] {
        let late = add_status(&server, &alice, &id, None, &json!({"state": state})).await;
        let problem = expect_problem(late, 409, "deployment-finished").await;
        assert_eq!(problem["code"], "deployment-finished");
    }

    let listed: Value = server.get(&alice, &path).await.json().await.unwrap();
    let states: Vec<_> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["state"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(states, ["success", "in_progress"], "newest first");
    assert_eq!(listed[1], started);
    assert_eq!(count_statuses(&t, &id).await, 2);

    // Cancelled from queued.
    let other = create_id(&server, &alice, "web").await;
    let cancelled = add_status(
        &server,
        &alice,
        &other,
        None,
        &json!({"state": "cancelled"}),
    )
    .await;
    assert_eq!(cancelled.status(), StatusCode::CREATED);
    let shown: Value = server
        .get(&alice, &format!("/api/deployments/{other}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "cancelled");

    // Another user's deployment does not exist for bob, whatever he reports.
    let bob = token(&t.db, "bob").await;
    let foreign = add_status(
        &server,
        &bob,
        &other,
        None,
        &json!({"state": "in_progress"}),
    )
    .await;
    expect_problem(foreign, 404, "not-found").await;
    expect_problem(server.get(&bob, &path).await, 404, "not-found").await;
    expect_problem(
        server.get(&alice, "/api/deployments/nope/statuses").await,
        404,
        "not-found",
    )
    .await;
    server.stop().await;
}

async fn a_retried_report_is_added_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    for store in [Store::Database, Store::Memory] {
        let server = TestServer::spawn_store(&t, Settings::default(), store.clone(), &[]).await;
        let alice = token(&t.db, "alice").await;
        let id = create_id(&server, &alice, "api").await;
        let body = json!({"state": "in_progress", "description": "started"});
        let first = add_status(&server, &alice, &id, Some("report-1"), &body).await;
        assert_eq!(first.status(), StatusCode::CREATED, "{store:?}");
        assert!(first.headers().get("idempotent-replayed").is_none());
        let first = first.bytes().await.unwrap();
        let retry = add_status(&server, &alice, &id, Some("report-1"), &body).await;
        assert_eq!(retry.status(), StatusCode::CREATED, "{store:?}");
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.bytes().await.unwrap(), first, "the same bytes");
        assert_eq!(count_statuses(&t, &id).await, 1, "{store:?}");

        let reused = add_status(
            &server,
            &alice,
            &id,
            Some("report-1"),
            &json!({"state": "failure"}),
        )
        .await;
        expect_problem(reused, 422, "key-reused").await;
        // The key of a create and of a report are separate requests (different paths).
        assert_eq!(deployments_with_key(&t.db, "alice", "report-1").await, 0);
        server.stop().await;
    }
}

async fn invalid_reports_are_problems(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let alice = token(&t.db, "alice").await;
    let id = create_id(&server, &alice, "api").await;

    let skipped = add_status(
        &server,
        &alice,
        &id,
        Some("k1"),
        &json!({"state": "success"}),
    )
    .await;
    let problem = expect_problem(skipped, 409, "invalid-transition").await;
    assert_eq!(problem["code"], "invalid-transition");
    let again = add_status(&server, &alice, &id, None, &json!({"state": "queued"})).await;
    expect_problem(again, 409, "invalid-transition").await;

    for (body, field) in [
        (json!({}), "state"),
        (json!({"state": "done"}), "state"),
        (
            json!({"state": "error", "log_url": "javascript:alert(1)"}),
            "log_url",
        ),
        (
            json!({"state": "error", "description": "a\u{0}b"}),
            "description",
        ),
        (json!({"state": "error", "colour": "blue"}), "colour"),
    ] {
        let response = add_status(&server, &alice, &id, Some("k2"), &body).await;
        let problem = expect_problem(response, 422, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{body}");
    }
    let text = server
        .client
        .post(server.url(&format!("/api/deployments/{id}/statuses")))
        .bearer_auth(&alice)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(r#"{"state":"error"}"#)
        .send()
        .await
        .unwrap();
    expect_problem(text, 415, "unsupported-content-type").await;
    let unauthenticated = server
        .client
        .post(server.url(&format!("/api/deployments/{id}/statuses")))
        .json(&json!({"state": "error"}))
        .send()
        .await
        .unwrap();
    expect_problem(unauthenticated, 401, "unauthenticated").await;
    // Nothing of the above took effect, and no key stayed taken by a refusal.
    assert_eq!(count_statuses(&t, &id).await, 0);
    let fine = add_status(&server, &alice, &id, Some("k1"), &json!({"state": "error"})).await;
    assert_eq!(fine.status(), StatusCode::CREATED);
    server.stop().await;
}

async fn etags_follow_the_status(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let alice = token(&t.db, "alice").await;
    let id = create_id(&server, &alice, "api").await;
    let path = format!("/api/deployments/{id}");
    let get_with = |etag: Option<String>| {
        let mut request = server.client.get(server.url(&path)).bearer_auth(&alice);
        if let Some(etag) = etag {
            request = request.header(header::IF_NONE_MATCH, etag);
        }
        request.send()
    };

    let first = get_with(None).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let etag = first.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong: {etag}"
    );
    assert_eq!(first.headers()[header::CONTENT_TYPE], "application/json");
    let again = get_with(None).await.unwrap();
    assert_eq!(again.headers()[header::ETAG], etag.as_str(), "stable");

    let unchanged = get_with(Some(etag.clone())).await.unwrap();
    assert_eq!(unchanged.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(unchanged.headers()[header::ETAG], etag.as_str());
    assert!(unchanged.bytes().await.unwrap().is_empty());
    let listed = get_with(Some(format!("\"other\", {etag}"))).await.unwrap();
    assert_eq!(listed.status(), StatusCode::NOT_MODIFIED);
    let stale = get_with(Some("\"other\"".to_owned())).await.unwrap();
    assert_eq!(stale.status(), StatusCode::OK);

    let moved = add_status(&server, &alice, &id, None, &json!({"state": "in_progress"})).await;
    assert_eq!(moved.status(), StatusCode::CREATED);
    let changed = get_with(Some(etag.clone())).await.unwrap();
    assert_eq!(changed.status(), StatusCode::OK, "the status changed");
    let new_etag = changed.headers()[header::ETAG].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    let body: Value = changed.json().await.unwrap();
    assert_eq!(body["status"], "in_progress");
    server.stop().await;
}

async fn concurrent_reports_move_a_deployment_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    for store in [Store::Database, Store::Memory] {
        let server = TestServer::spawn_store(&t, Settings::default(), store.clone(), &[]).await;
        let alice = token(&t.db, "alice").await;
        let id = create_id(&server, &alice, "api").await;
        let started =
            add_status(&server, &alice, &id, None, &json!({"state": "in_progress"})).await;
        assert_eq!(started.status(), StatusCode::CREATED);
        // Twelve runners report a final state at once, each with a key of its own: one wins.
        let url = server.url(&format!("/api/deployments/{id}/statuses"));
        let states = ["success", "failure", "error", "cancelled"];
        let mut reports = JoinSet::new();
        for i in 0..12 {
            let request = server
                .client
                .post(&url)
                .bearer_auth(&alice)
                .header("idempotency-key", format!("race-{i}"))
                .json(&json!({"state": states[i % states.len()]}));
            reports.spawn(async move { request.send().await.expect("send") });
        }
        let mut won = 0;
        while let Some(response) = reports.join_next().await {
            let response = response.unwrap();
            if response.status() == StatusCode::CREATED {
                won += 1;
            } else {
                expect_problem(response, 409, "deployment-finished").await;
            }
        }
        assert_eq!(won, 1, "{store:?}");
        assert_eq!(count_statuses(&t, &id).await, 2, "{store:?}");
        server.stop().await;
    }
}
