//! `GET /api/deployments` filters and cursors over real HTTP against a real `backend`
//! process, on SQLite and PostgreSQL; and `POST` without a key on a server that requires one.

#[macro_use]
mod common;

use backend::Settings;
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{Backend, Store, TestDb, TestServer, add_status, create_id, expect_problem, token};
use serde_json::{Value, json};

backend_tests!(
    filters_select_exact_matches,
    bad_query_parameters_are_named,
    cursors_reveal_nothing_across_users,
    posts_without_a_key_are_refused_when_keys_are_required,
);

async fn ids(server: &TestServer, token: &str, query: &str) -> Vec<String> {
    let response = server
        .get(token, &format!("/api/deployments?{query}"))
        .await;
    assert_eq!(response.status(), 200, "{query}");
    let page: Value = response.json().await.unwrap();
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn create(
    server: &TestServer,
    token: &str,
    project: &str,
    env: &str,
    git_ref: &str,
) -> String {
    let body = json!({"project": project, "environment": env, "ref": git_ref});
    let response = server.create(token, None, &body).await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    created["id"].as_str().unwrap().to_owned()
}

async fn filters_select_exact_matches(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let bob = token(&t.db, "bob").await;
    let a1 = create(&server, &alice, "api", "production", "v1").await;
    let a2 = create(&server, &alice, "api", "staging", "v2").await;
    let w1 = create(&server, &alice, "web", "production", "v1").await;
    let _bobs = create(&server, &bob, "api", "production", "v1").await;
    let moved = add_status(&server, &alice, &a2, None, &json!({"state": "in_progress"})).await;
    assert_eq!(moved.status(), 201);

    assert_eq!(
        ids(&server, &alice, "project=api").await,
        [a2.clone(), a1.clone()]
    );
    assert_eq!(
        ids(&server, &alice, "environment=production").await,
        [w1.clone(), a1.clone()]
    );
    assert_eq!(
        ids(&server, &alice, "ref=v1").await,
        [w1.clone(), a1.clone()]
    );
    assert_eq!(
        ids(&server, &alice, "status=in_progress").await,
        std::slice::from_ref(&a2)
    );
    assert_eq!(
        ids(&server, &alice, "status=queued&project=api").await,
        std::slice::from_ref(&a1)
    );
    assert_eq!(
        ids(
            &server,
            &alice,
            "project=api&environment=production&ref=v1&status=queued"
        )
        .await,
        std::slice::from_ref(&a1)
    );
    assert!(ids(&server, &alice, "project=nope").await.is_empty());
    // Filters and pages combine: every page keeps the filter.
    let first = server
        .get(&alice, "/api/deployments?environment=production&limit=1")
        .await;
    let first: Value = first.json().await.unwrap();
    assert_eq!(first["items"][0]["id"], w1.as_str());
    let cursor = first["next_cursor"].as_str().unwrap();
    assert_eq!(
        ids(
            &server,
            &alice,
            &format!("environment=production&limit=1&cursor={cursor}")
        )
        .await,
        [a1]
    );
    server.stop().await;
}

async fn bad_query_parameters_are_named(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    for (query, field) in [
        ("colour=blue", "colour"),
        ("status=done", "status"),
        ("status=QUEUED", "status"),
        ("project=API", "project"),
        ("environment=-x", "environment"),
        ("ref=a%20b", "ref"),
        ("limit=0", "limit"),
        ("limit=5&limit=6", "limit"),
        ("cursor=djE6MQ", "cursor"), // a v1 cursor (a global row number) is no longer valid
        ("project=", "project"),
    ] {
        let response = server
            .get(&alice, &format!("/api/deployments?{query}"))
            .await;
        let problem = expect_problem(response, 400, "invalid-parameter").await;
        assert_eq!(problem["code"], "invalid-parameter");
        assert_eq!(problem["errors"][0]["field"], field, "{query}: {problem}");
    }
    server.stop().await;
}

async fn cursors_reveal_nothing_across_users(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let bob = token(&t.db, "bob").await;
    let first = create_id(&server, &alice, "api").await;
    let last = create_id(&server, &alice, "api").await;
    let page: Value = server
        .get(&alice, "/api/deployments?limit=1")
        .await
        .json()
        .await
        .unwrap();
    let cursor = page["next_cursor"].as_str().unwrap();
    // It names alice's last deployment on the page, nothing global.
    let decoded = String::from_utf8(URL_SAFE_NO_PAD.decode(cursor).unwrap()).unwrap();
    assert_eq!(decoded, format!("v2:{last}"));
    // Bob's deployments in between change nothing about alice's cursors.
    for _ in 0..3 {
        create_id(&server, &bob, "api").await;
    }
    let again: Value = server
        .get(&alice, "/api/deployments?limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["next_cursor"], cursor);
    assert_eq!(
        ids(&server, &alice, &format!("limit=1&cursor={cursor}")).await,
        [first]
    );
    // Alice's cursor means nothing to bob.
    assert!(
        ids(&server, &bob, &format!("cursor={cursor}"))
            .await
            .is_empty()
    );
    server.stop().await;
}

async fn posts_without_a_key_are_refused_when_keys_are_required(backend: Backend) {
    let t = TestDb::new(backend).await;
    // The real binary with the flag (and the default store): what an operator runs.
    let server = TestServer::spawn_store(
        &t,
        Settings::default(),
        Store::Database,
        &["--require-idempotency-key"],
    )
    .await;
    let alice = token(&t.db, "alice").await;
    let refused = server
        .create(&alice, None, &common::deployment("api"))
        .await;
    let problem = expect_problem(refused, 400, "key-required").await;
    assert_eq!(problem["code"], "key-required");
    let created = server
        .create(&alice, Some("k-1"), &common::deployment("api"))
        .await;
    assert_eq!(created.status(), 201);
    let id = created.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let report = add_status(&server, &alice, &id, None, &json!({"state": "in_progress"})).await;
    expect_problem(report, 400, "key-required").await;
    let keyed = add_status(
        &server,
        &alice,
        &id,
        Some("r-1"),
        &json!({"state": "in_progress"}),
    )
    .await;
    assert_eq!(keyed.status(), 201);
    server.stop().await;
}
