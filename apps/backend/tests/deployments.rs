//! The deployments API over real TCP, against SQLite and PostgreSQL.

#[macro_use]
mod common;

use std::{collections::HashSet, sync::Arc};

use backend::Settings;
use common::{Backend, Executions, TestDb, TestServer, deployment, expect_problem, token};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::{sync::Barrier, task::JoinSet};

backend_tests!(
    same_key_replays_the_original_response,
    users_never_share_keys_or_deployments,
    concurrent_requests_with_one_key_create_one_deployment,
    same_key_with_another_body_is_refused,
    failed_validation_frees_the_key_for_the_corrected_request,
    restart_with_a_fresh_memory_store_creates_no_duplicate,
    requests_without_a_key_are_not_deduplicated,
    authentication_runs_before_the_idempotency_layer,
    other_users_deployments_are_not_found,
    pagination_walks_every_item_once,
    invalid_idempotency_key_is_a_bad_request,
    bodies_over_the_limit_are_refused,
    malformed_requests_are_problems,
    unknown_routes_and_methods_are_problems,
    probes_and_metrics,
);

async fn same_key_replays_the_original_response(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    // Exported from the start, at zero.
    assert_eq!(server.executions().await, Executions::exactly(0));

    let first = server
        .create(&alice, Some("order-1"), &deployment("billing"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()[header::LOCATION].clone();
    let first_body = first.bytes().await.unwrap();
    let created: Value = serde_json::from_slice(&first_body).unwrap();
    assert_eq!(
        location,
        format!("/api/deployments/{}", created["id"].as_str().unwrap()).as_str()
    );
    assert_eq!(created["project"], "billing");
    assert_eq!(created["environment"], "production");
    assert_eq!(created["ref"], "v1.2.3");
    assert_eq!(created["status"], "queued");
    let created_at = created["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == 24,
        "{created_at}"
    );

    // The structured-field spelling of the same key is the same key.
    for key in ["order-1", "\"order-1\""] {
        let retry = server
            .create(&alice, Some(key), &deployment("billing"))
            .await;
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.headers()[header::LOCATION], location);
        assert_eq!(
            retry.bytes().await.unwrap(),
            first_body,
            "byte-identical replay"
        );
    }

    let listed = server.list_all(&alice, 20).await;
    assert_eq!(listed, vec![created.clone()]);
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    // One row would also result from the database guard answering the retries: the
    // handler ran once, and the layer (not the guard) answered both retries.
    assert_eq!(server.executions().await, Executions::exactly(1));
    let metrics = common::Metrics::scrape(&server.client, &server.url("")).await;
    assert_eq!(
        metrics.counter("idempotency_requests_total", &[("outcome", "replayed")]),
        2
    );
    let row =
        t.db.deployments()
            .find_by_key("alice", "order-1")
            .await
            .unwrap()
            .expect("the row records its key");
    assert_eq!(row.id, created["id"].as_str().unwrap());

    // GET by Location returns the same document.
    let shown = server.get(&alice, location.to_str().unwrap()).await;
    assert_eq!(shown.status(), StatusCode::OK);
    assert_eq!(shown.json::<Value>().await.unwrap(), created);

    let other = server
        .create(&alice, Some("order-2"), &deployment("billing"))
        .await;
    assert_eq!(other.status(), StatusCode::CREATED);
    let other: Value = other.json().await.unwrap();
    assert_ne!(other["id"], created["id"]);
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 2);
    assert_eq!(server.list_all(&alice, 20).await.len(), 2);
    assert_eq!(server.executions().await, Executions::exactly(2));
    // The execution log names requests by their record (a hash), never by key or token.
    let log = server.execution_log();
    assert_eq!(log.per_record.len(), 2);
    assert!(log.per_record.values().all(|n| *n == 1));
    let text = log
        .lines
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        !text.contains("order-1") && !text.contains(&alice[3..]),
        "{text}"
    );
}

async fn users_never_share_keys_or_deployments(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let bob = token(&t.db, "bob").await;

    let a = server
        .create(&alice, Some("shared-key"), &deployment("alpha"))
        .await;
    assert_eq!(a.status(), StatusCode::CREATED);
    let a: Value = a.json().await.unwrap();
    // Same key, same body: bob still gets his own deployment, not a replay of alice's.
    let b = server
        .create(&bob, Some("shared-key"), &deployment("alpha"))
        .await;
    assert_eq!(b.status(), StatusCode::CREATED);
    assert!(b.headers().get("idempotent-replayed").is_none());
    let b: Value = b.json().await.unwrap();
    assert_ne!(a["id"], b["id"]);
    // Same key, other body: not a key reuse across users.
    let b2 = server
        .create(&bob, Some("shared-key-2"), &deployment("beta"))
        .await;
    assert_eq!(b2.status(), StatusCode::CREATED);
    let a2 = server
        .create(&alice, Some("shared-key-2"), &deployment("gamma"))
        .await;
    assert_eq!(a2.status(), StatusCode::CREATED);
    let a2: Value = a2.json().await.unwrap();
    assert_eq!(a2["project"], "gamma");

    let alice_ids: HashSet<_> = server
        .list_all(&alice, 20)
        .await
        .into_iter()
        .map(|d| d["id"].clone())
        .collect();
    let bob_ids: HashSet<_> = server
        .list_all(&bob, 20)
        .await
        .into_iter()
        .map(|d| d["id"].clone())
        .collect();
    assert_eq!(alice_ids.len(), 2);
    assert_eq!(bob_ids.len(), 2);
    assert!(alice_ids.is_disjoint(&bob_ids));
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 2);
    assert_eq!(t.db.deployments().count_for_user("bob").await.unwrap(), 2);
    // Four executions, none a second run of another user's key.
    assert_eq!(server.executions().await, Executions::exactly(4));
}

async fn concurrent_requests_with_one_key_create_one_deployment(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let body = deployment("race");

    // 50 tasks released at once by a barrier, each with its own connection.
    let barrier = Arc::new(Barrier::new(50));
    let mut tasks = JoinSet::new();
    for _ in 0..50 {
        let request = reqwest::Client::new()
            .post(server.url("/api/deployments"))
            .bearer_auth(&alice)
            .header("idempotency-key", "race-key")
            .json(&body);
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            let response = request.send().await.unwrap();
            let status = response.status();
            let replayed = response.headers().get("idempotent-replayed").cloned();
            let retry_after = response.headers().get(header::RETRY_AFTER).cloned();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            (
                status,
                replayed,
                retry_after,
                content_type,
                response.bytes().await.unwrap(),
            )
        });
    }
    let answers = tasks.join_all().await;

    let originals: Vec<_> = answers
        .iter()
        .filter(|(status, replayed, ..)| *status == StatusCode::CREATED && replayed.is_none())
        .collect();
    assert_eq!(originals.len(), 1, "exactly one request executes");
    let conflicts = answers
        .iter()
        .filter(|(status, ..)| *status == StatusCode::CONFLICT)
        .count();
    eprintln!(
        "1 executed, {conflicts} got 409, {} replayed",
        49 - conflicts
    );
    let original_body = &originals[0].4;
    for (status, replayed, retry_after, content_type, body) in &answers {
        match *status {
            StatusCode::CREATED => assert_eq!(body, original_body, "replays are byte-identical"),
            StatusCode::CONFLICT => {
                assert!(replayed.is_none());
                assert!(retry_after.is_some(), "409 carries Retry-After");
                assert_eq!(content_type.as_ref().unwrap(), "application/problem+json");
                let problem: Value = serde_json::from_slice(body).unwrap();
                assert_eq!(problem["type"], format!("{}key-in-use", common::TYPE_BASE));
            }
            other => panic!("unexpected {other}: {}", String::from_utf8_lossy(body)),
        }
    }
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    assert_eq!(server.list_all(&alice, 100).await.len(), 1);
    // One original 201 and one row would also result if every request ran and the unique
    // key answered 49 of them (its answers are marked as replays too): count the runs.
    assert_eq!(server.executions().await, Executions::exactly(1));
}

async fn same_key_with_another_body_is_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    let first = server.create(&alice, Some("k"), &deployment("one")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let refused = server.create(&alice, Some("k"), &deployment("two")).await;
    expect_problem(refused, 422, "key-reused").await;
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    let listed = server.list_all(&alice, 20).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["project"], "one");
    // The layer refused the reuse; the handler never saw it.
    assert_eq!(server.executions().await, Executions::exactly(1));
    let metrics = common::Metrics::scrape(&server.client, &server.url("")).await;
    assert_eq!(
        metrics.counter("idempotency_requests_total", &[("outcome", "mismatch")]),
        1
    );
}

async fn failed_validation_frees_the_key_for_the_corrected_request(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    let mut invalid = deployment("Billing_API");
    invalid["ref"] = json!("has whitespace");
    let refused = server.create(&alice, Some("fix-me"), &invalid).await;
    let problem = expect_problem(refused, 422, "validation-failed").await;
    let fields: Vec<_> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["project", "ref"]);
    assert!(problem["errors"][0]["message"].is_string());
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 0);

    let corrected = server
        .create(&alice, Some("fix-me"), &deployment("billing-api"))
        .await;
    assert_eq!(corrected.status(), StatusCode::CREATED);
    assert!(corrected.headers().get("idempotent-replayed").is_none());
    let retry = server
        .create(&alice, Some("fix-me"), &deployment("billing-api"))
        .await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    // Two runs: the invalid request (refused by the handler's validation, which freed the
    // key) and the corrected one; the retry was the layer's replay.
    assert_eq!(server.executions().await, Executions::exactly(2));
}

async fn restart_with_a_fresh_memory_store_creates_no_duplicate(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;

    let before = TestServer::spawn(&t).await;
    let first = before
        .create(&alice, Some("survives"), &deployment("api"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let location = first.headers()[header::LOCATION].clone();
    let first_body = first.bytes().await.unwrap();
    assert_eq!(before.executions().await, Executions::exactly(1));
    let before_log = before.execution_log();
    before.stop().await;

    // A new process with an empty in-memory idempotency store, on the same database.
    let after = TestServer::spawn(&t).await;
    let retry = after
        .create(&alice, Some("survives"), &deployment("api"))
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()[header::LOCATION], location);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(
        retry.bytes().await.unwrap(),
        first_body,
        "the same deployment, byte for byte"
    );
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    // Here the layer could not know the key: the handler ran again, and the database guard
    // (the second line of defence) answered. Counted as such, not hidden behind the row count.
    assert_eq!(
        after.executions().await,
        Executions {
            handler: 1,
            layer: 1,
            guard_hits: 1,
        }
    );

    // A different request under the old key: the new store now holds the guard's 201 for
    // it (a 2xx, so the layer kept it), and the layer itself refuses the reuse.
    let reused = after
        .create(&alice, Some("survives"), &deployment("other"))
        .await;
    expect_problem(reused, 422, "key-reused").await;

    // And from then on the (new) store replays: no further execution.
    let again = after
        .create(&alice, Some("survives"), &deployment("api"))
        .await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.bytes().await.unwrap(), first_body);
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 1);
    assert_eq!(
        after.executions().await,
        Executions {
            handler: 1,
            layer: 1,
            guard_hits: 1,
        }
    );
    let metrics = common::Metrics::scrape(&after.client, &after.url("")).await;
    for (name, labels, value) in [
        (
            "deployments_idempotency_guard_hits_total",
            ("outcome", "replayed"),
            1,
        ),
        (
            "deployments_idempotency_guard_hits_total",
            ("outcome", "key_reused"),
            0,
        ),
        ("idempotency_requests_total", ("outcome", "mismatch"), 1),
        ("idempotency_requests_total", ("outcome", "replayed"), 1),
    ] {
        assert_eq!(metrics.counter(name, &[labels]), value, "{name} {labels:?}");
    }
    let log = after.execution_log();
    let guard: Vec<&Value> = log
        .lines
        .iter()
        .filter(|l| l["message"] == "idempotency guard hit")
        .collect();
    assert_eq!(guard.len(), 1);
    let id = location.to_str().unwrap().rsplit('/').next().unwrap();
    assert_eq!(guard[0]["deployment"], id, "{guard:?}");
    assert_eq!(guard[0]["outcome"], "replayed", "{guard:?}");
    // The guard hit is the key's second execution overall: one per process.
    let first_log = before_log;
    assert_eq!(first_log.per_record, log.per_record);
    assert_eq!(log.per_record.values().copied().collect::<Vec<_>>(), [1]);
    assert_eq!(guard[0]["record"], *log.per_record.keys().next().unwrap());
    after.stop().await;
}

async fn requests_without_a_key_are_not_deduplicated(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::start(&t.db).await;
    let alice = token(&t.db, "alice").await;
    for _ in 0..2 {
        let response = server.create(&alice, None, &deployment("nokey")).await;
        assert_eq!(response.status(), StatusCode::CREATED);
    }
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 2);
}

async fn authentication_runs_before_the_idempotency_layer(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    let anonymous = server
        .client
        .post(server.url("/api/deployments"))
        .header("idempotency-key", "k")
        .json(&deployment("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.headers()[header::WWW_AUTHENTICATE], "Bearer");
    // Our 401, not the layer's `scope-missing`: auth ran first.
    expect_problem(anonymous, 401, "unauthenticated").await;

    let forged = server
        .create("bk_not-a-real-token", Some("k"), &deployment("x"))
        .await;
    assert!(
        forged.headers()[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Bearer")
    );
    expect_problem(forged, 401, "unauthenticated").await;

    let basic = server
        .client
        .get(server.url("/api/deployments"))
        .basic_auth("alice", Some("pw"))
        .send()
        .await
        .unwrap();
    expect_problem(basic, 401, "unauthenticated").await;
    for path in ["/api/deployments", "/api/deployments/some-id"] {
        let response = server.client.get(server.url(path)).send().await.unwrap();
        expect_problem(response, 401, "unauthenticated").await;
    }
    // A token of the right shape but another user's hash fails too.
    let tampered = format!("{}x", &alice[..alice.len() - 1]);
    expect_problem(
        server.get(&tampered, "/api/deployments").await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 0);
    assert_eq!(server.executions().await, Executions::exactly(0));

    // The key was never claimed: alice may use it.
    let ok = server.create(&alice, Some("k"), &deployment("x")).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(ok.headers().get("idempotent-replayed").is_none());
    assert_eq!(server.executions().await, Executions::exactly(1));
}

async fn other_users_deployments_are_not_found(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::start(&t.db).await;
    let alice = token(&t.db, "alice").await;
    let bob = token(&t.db, "bob").await;

    let created: Value = server
        .create(&alice, None, &deployment("private"))
        .await
        .json()
        .await
        .unwrap();
    let path = format!("/api/deployments/{}", created["id"].as_str().unwrap());
    assert_eq!(server.get(&alice, &path).await.status(), StatusCode::OK);
    let foreign = expect_problem(server.get(&bob, &path).await, 404, "not-found").await;
    let unknown = expect_problem(
        server
            .get(
                &bob,
                "/api/deployments/00000000-0000-7000-8000-000000000000",
            )
            .await,
        404,
        "not-found",
    )
    .await;
    // Indistinguishable: a 404 does not reveal that the id exists.
    assert_eq!(foreign, unknown);
    assert!(server.list_all(&bob, 20).await.is_empty());
}

async fn pagination_walks_every_item_once(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::start(&t.db).await;
    let alice = token(&t.db, "alice").await;
    let bob = token(&t.db, "bob").await;

    let mut created = Vec::new();
    for i in 0..7 {
        let response = server
            .create(
                &alice,
                Some(&format!("page-{i}")),
                &deployment(&format!("p{i}")),
            )
            .await;
        assert_eq!(response.status(), StatusCode::CREATED);
        created.push(response.json::<Value>().await.unwrap());
        // Noise from another user must not show up in alice's pages.
        server.create(&bob, None, &deployment("noise")).await;
    }
    created.reverse(); // newest first

    for limit in [1, 3, 7, 100] {
        let walked = server.list_all(&alice, limit).await;
        assert_eq!(walked, created, "limit {limit}");
    }

    let first: Value = server
        .get(&alice, "/api/deployments?limit=3")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    assert!(first["next_cursor"].is_string());
    let default_page: Value = server
        .get(&alice, "/api/deployments")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(default_page["items"].as_array().unwrap().len(), 7);
    assert!(default_page["next_cursor"].is_null());

    for bad in [
        "limit=0",
        "limit=101",
        "limit=abc",
        "cursor=not-a-cursor",
        "limit=-1",
    ] {
        let response = server.get(&alice, &format!("/api/deployments?{bad}")).await;
        let problem = expect_problem(response, 400, "invalid-parameter").await;
        let field = bad.split('=').next().unwrap();
        assert_eq!(problem["errors"][0]["field"], field, "{bad}");
    }
}

async fn invalid_idempotency_key_is_a_bad_request(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    let too_long = "k".repeat(256);
    for key in ["has space", "a,b", "\"unterminated", too_long.as_str(), ""] {
        let response = server.create(&alice, Some(key), &deployment("x")).await;
        expect_problem(response, 400, "key-invalid").await;
    }
    let twice = server
        .client
        .post(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .json(&deployment("x"))
        .send()
        .await
        .unwrap();
    expect_problem(twice, 400, "key-invalid").await;
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 0);
    assert_eq!(server.executions().await, Executions::exactly(0));
    // The longest valid key works.
    let longest = "k".repeat(255);
    let ok = server
        .create(&alice, Some(&longest), &deployment("x"))
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(server.executions().await, Executions::exactly(1));
}

async fn bodies_over_the_limit_are_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    let limit = 2048;
    let server = TestServer::spawn_with(
        &t,
        Settings {
            max_body_bytes: limit,
            ..Settings::default()
        },
    )
    .await;
    let alice = token(&t.db, "alice").await;

    let mut big = deployment("big");
    big["description"] = json!("x".repeat(limit));
    let body = serde_json::to_vec(&big).unwrap();
    assert!(body.len() > limit);
    // With a key the idempotency layer refuses it, without one the handler does: same problem.
    for key in [Some("big-key"), None] {
        let response = server.create_raw(&alice, key, body.clone()).await;
        expect_problem(response, 413, "request-too-large").await;
    }
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 0);
    assert_eq!(server.executions().await, Executions::exactly(0));

    // The default limit is 1 MiB.
    let default = TestServer::start(&t.db).await;
    let huge = format!(
        r#"{{"project":"x","environment":"y","ref":"z","description":"{}"}}"#,
        "x".repeat(1024 * 1024)
    );
    let response = default
        .create_raw(&alice, Some("huge"), huge.into_bytes())
        .await;
    expect_problem(response, 413, "request-too-large").await;
}

async fn malformed_requests_are_problems(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    for key in [Some("malformed"), None] {
        let response = server
            .create_raw(&alice, key, b"{\"project\": ".to_vec())
            .await;
        expect_problem(response, 400, "malformed-body").await;
        let response = server.create_raw(&alice, key, b"[1, 2]".to_vec()).await;
        expect_problem(response, 400, "malformed-body").await;
    }
    let text = server
        .client
        .post(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .header(header::CONTENT_TYPE, "text/plain")
        .body(serde_json::to_vec(&deployment("x")).unwrap())
        .send()
        .await
        .unwrap();
    expect_problem(text, 415, "unsupported-content-type").await;
    let missing = server.create(&alice, None, &json!({})).await;
    let problem = expect_problem(missing, 422, "validation-failed").await;
    assert_eq!(problem["errors"].as_array().unwrap().len(), 3);
    let wrong_types = server
        .create(
            &alice,
            None,
            &json!({"project": 1, "environment": "e", "ref": "r", "description": 5, "extra": true}),
        )
        .await;
    let problem = expect_problem(wrong_types, 422, "validation-failed").await;
    let fields: Vec<_> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["project", "description", "extra"]);
    assert_eq!(t.db.deployments().count_for_user("alice").await.unwrap(), 0);

    // Whitespace and member order do not make a retry "different".
    let compact = br#"{"project":"same","environment":"e","ref":"r"}"#.to_vec();
    let spaced = b"{ \"ref\" : \"r\",\n  \"environment\": \"e\", \"project\": \"same\" }".to_vec();
    let first = server.create_raw(&alice, Some("canonical"), compact).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let retry = server.create_raw(&alice, Some("canonical"), spaced).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    // The layer ran its inner service for the two keyed malformed bodies too: the JSON
    // extractor refused the truncated one before the handler's body, the handler refused
    // `[1, 2]` (valid JSON, not an object). The handler ran for that one and `canonical`.
    assert_eq!(
        server.executions().await,
        Executions {
            handler: 2,
            layer: 3,
            guard_hits: 0,
        }
    );
}

async fn unknown_routes_and_methods_are_problems(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::start(&t.db).await;
    let alice = token(&t.db, "alice").await;

    expect_problem(server.get(&alice, "/nope").await, 404, "not-found").await;
    expect_problem(
        server.get(&alice, "/api/deployments/a/b").await,
        404,
        "not-found",
    )
    .await;
    let delete = server
        .client
        .delete(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    let allow = delete.headers()[header::ALLOW].to_str().unwrap().to_owned();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    expect_problem(delete, 405, "method-not-allowed").await;
    let put = server
        .client
        .put(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    expect_problem(put, 405, "method-not-allowed").await;
}

async fn probes_and_metrics(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::start(&t.db).await;
    let alice = token(&t.db, "alice").await;

    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        health.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    assert_eq!(
        ready.json::<Value>().await.unwrap(),
        json!({"status": "ok"})
    );

    let created = server
        .create(&alice, Some("metered"), &deployment("m"))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    let metrics = server
        .client
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert!(
        metrics.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains("idempotency_requests_total{outcome=\"executed\"}"),
        "{text}"
    );
    assert!(
        text.contains("idempotency_store_duration_seconds"),
        "{text}"
    );
    // The app's execution counters, described and exported (this server shares the
    // process-wide recorder, so only their presence is checked here).
    for name in [
        "deployments_create_executions_total",
        "deployments_idempotency_guard_hits_total",
    ] {
        assert!(text.contains(&format!("# TYPE {name} counter")), "{text}");
        assert!(text.contains(&format!("# HELP {name} ")), "{text}");
    }
    for outcome in ["replayed", "key_reused"] {
        assert!(
            text.contains(&format!(
                "deployments_idempotency_guard_hits_total{{outcome=\"{outcome}\"}}"
            )),
            "{text}"
        );
    }

    // Without its database the server is alive but not ready.
    t.db.close().await;
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let ready = server
        .client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert!(ready.headers().get(header::RETRY_AFTER).is_some());
    let problem = expect_problem(ready, 503, "not-ready").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("database"),
        "{problem}"
    );
}
