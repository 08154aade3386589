//! The `database` idempotency store (the default) over real HTTP, against real `backend`
//! processes on SQLite and PostgreSQL: records survive restarts, a failed request leaves
//! neither a deployment nor a record, and the TTL means what it says (with the `memory` store
//! too: the database guard no longer outlives it).
//!
//! Executions are counted from each process's `/metrics` and execution log, never from rows.

#[macro_use]
mod common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use backend::Settings;
use common::{
    Backend, Executions, Store, TestDb, TestServer, deployment, deployments_with_key, execute,
    expect_problem, idempotency_records, token,
};
use reqwest::{StatusCode, header};
use serde_json::Value;
use tokio::{sync::Barrier, task::JoinSet};

backend_tests!(
    a_restart_keeps_every_record,
    the_default_store_is_the_database,
    after_the_ttl_the_key_creates_a_new_deployment,
    after_the_ttl_the_key_creates_a_new_deployment_with_the_memory_store,
    failed_requests_leave_no_row_and_free_the_key,
    expired_records_are_deleted,
    concurrent_creates,
);

fn with_ttl(ttl: Duration) -> Settings {
    Settings {
        idempotency_ttl: ttl,
        ..Settings::default()
    }
}

/// `POST /api/deployments{query}` with `key` and `body`.
async fn create_at(
    server: &TestServer,
    query: &str,
    token: &str,
    key: &str,
    body: &Value,
) -> reqwest::Response {
    server
        .client
        .post(server.url(&format!("/api/deployments{query}")))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(body)
        .send()
        .await
        .expect("send")
}

async fn a_restart_keeps_every_record(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let first = server
        .create(&alice, Some("kept"), &deployment("api"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let location = first.headers()[header::LOCATION].clone();
    let first_body = first.bytes().await.unwrap();
    assert_eq!(server.executions().await, Executions::exactly(1));
    assert_eq!(idempotency_records(&t.db).await, 1);

    // SIGTERM, a clean exit, a new process on the same database.
    let server = server.restart().await;
    let retry = server
        .create(&alice, Some("kept"), &deployment("api"))
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.headers()[header::LOCATION], location);
    assert_eq!(retry.bytes().await.unwrap(), first_body, "byte for byte");
    // Replayed by the layer from the record: the handler did not run, the guard did not hit.
    assert_eq!(server.executions().await, Executions::exactly(0));

    // Another body, or another query, under the key: refused after the restart too.
    let other_body = server
        .create(&alice, Some("kept"), &deployment("web"))
        .await;
    expect_problem(other_body, 422, "key-reused").await;
    let other_query = create_at(&server, "?dry-run=1", &alice, "kept", &deployment("api")).await;
    expect_problem(other_query, 422, "key-reused").await;
    assert_eq!(server.executions().await, Executions::exactly(0));
    let metrics = common::Metrics::scrape(&server.client, &server.url("")).await;
    assert_eq!(
        metrics.counter("idempotency_requests_total", &[("outcome", "mismatch")]),
        2
    );
    assert_eq!(
        metrics.counter("idempotency_requests_total", &[("outcome", "replayed")]),
        1
    );
    assert_eq!(deployments_with_key(&t.db, "alice", "kept").await, 1);
    assert_eq!(server.list_all(&alice, 20).await.len(), 1);
    server.stop().await;
}

async fn the_default_store_is_the_database(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    // No --idempotency-store, no IDEMPOTENCY_STORE.
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Unset, &[]).await;
    assert_eq!(server.listening_line()["idempotency_store"], "database");
    let first = server
        .create(&alice, Some("default"), &deployment("api"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();
    // The record is in the deployments database.
    assert_eq!(idempotency_records(&t.db).await, 1);

    let server = server.restart().await;
    let retry = server
        .create(&alice, Some("default"), &deployment("api"))
        .await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), first_body);
    assert_eq!(server.executions().await, Executions::exactly(0));
    server.stop().await;

    let help = std::process::Command::new(common::BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    assert!(help.contains("[default: database]"), "{help}");
}

async fn after_the_ttl_the_key_creates_a_new_deployment(backend: Backend) {
    ttl_frees_the_key(backend, Store::Database).await;
}

async fn after_the_ttl_the_key_creates_a_new_deployment_with_the_memory_store(backend: Backend) {
    ttl_frees_the_key(backend, Store::Memory).await;
}

/// With a 2 s TTL: a replay (and a 422 for another body) at first, then, once the TTL has
/// passed, a second execution and a new deployment for the same key, which is replayed in
/// turn. The database guard does not answer for the expired key (no guard hit).
async fn ttl_frees_the_key(backend: Backend, store: Store) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let ttl = Duration::from_secs(2);
    let server = TestServer::spawn_store(&t, with_ttl(ttl), store, &[]).await;
    let started = Instant::now();
    let first = server.create(&alice, Some("ttl"), &deployment("api")).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();
    let first_id = serde_json::from_slice::<Value>(&first_body).unwrap()["id"].clone();

    let replay = server.create(&alice, Some("ttl"), &deployment("api")).await;
    let replay_body = replay.bytes().await.unwrap();
    let reused = server.create(&alice, Some("ttl"), &deployment("web")).await;
    assert!(
        started.elapsed() < ttl,
        "the machine is too slow for a 2 s TTL: the checks before it ran late"
    );
    assert_eq!(replay_body, first_body, "a replay within the TTL");
    expect_problem(reused, 422, "key-reused").await;
    assert_eq!(server.executions().await, Executions::exactly(1));

    // Retry until the answer is no longer a replay (bounded): the key expired.
    let deadline = Instant::now() + Duration::from_secs(20);
    let second = loop {
        let retry = server.create(&alice, Some("ttl"), &deployment("api")).await;
        assert_eq!(retry.status(), StatusCode::CREATED);
        if retry.headers().get("idempotent-replayed").is_none() {
            break retry;
        }
        assert_eq!(retry.bytes().await.unwrap(), first_body);
        assert!(
            Instant::now() < deadline,
            "still replayed 20 s after a 2 s TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        started.elapsed() >= ttl,
        "a new execution before the TTL passed"
    );
    let second_body = second.bytes().await.unwrap();
    let second_id = serde_json::from_slice::<Value>(&second_body).unwrap()["id"].clone();
    assert_ne!(second_id, first_id, "a new deployment");
    // The handler ran a second time, let through by the layer; the guard did not answer.
    assert_eq!(server.executions().await, Executions::exactly(2));
    assert_eq!(deployments_with_key(&t.db, "alice", "ttl").await, 2);
    assert_eq!(server.list_all(&alice, 20).await.len(), 2);

    // And the new deployment is what the key replays now.
    let again = server.create(&alice, Some("ttl"), &deployment("api")).await;
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    assert_eq!(again.bytes().await.unwrap(), second_body);
    assert_eq!(server.executions().await, Executions::exactly(2));
    server.stop().await;
}

/// SQL that makes the insert of a deployment of project `explode` fail at once (the handler
/// answers 500), and one of project `at-commit` fail at COMMIT (after the handler inserted it
/// and answered 201).
fn faults(backend: Backend) -> (&'static str, &'static str) {
    match backend {
        Backend::Sqlite => (
            "CREATE TABLE fault_parent (id INTEGER PRIMARY KEY);
             CREATE TABLE fault_child (parent INTEGER REFERENCES fault_parent (id)
                 DEFERRABLE INITIALLY DEFERRED);
             CREATE TRIGGER explode BEFORE INSERT ON deployments
                 WHEN NEW.project = 'explode'
                 BEGIN SELECT RAISE(ABORT, 'explode'); END;
             CREATE TRIGGER fail_at_commit AFTER INSERT ON deployments
                 WHEN NEW.project = 'at-commit'
                 BEGIN INSERT INTO fault_child (parent) VALUES (1); END;",
            "DROP TRIGGER explode; DROP TRIGGER fail_at_commit;",
        ),
        Backend::Postgres => (
            "CREATE FUNCTION explode() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'explode'; END $$;
             CREATE TRIGGER explode BEFORE INSERT ON deployments FOR EACH ROW
                 WHEN (NEW.project = 'explode') EXECUTE FUNCTION explode();
             CREATE CONSTRAINT TRIGGER fail_at_commit AFTER INSERT ON deployments
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                 WHEN (NEW.project = 'at-commit') EXECUTE FUNCTION explode();",
            "DROP TRIGGER explode ON deployments; DROP TRIGGER fail_at_commit ON deployments;",
        ),
    }
}

async fn failed_requests_leave_no_row_and_free_the_key(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let (install, remove) = faults(backend);
    execute(&t.db, install).await;

    // 4xx from the handler: refused, nothing written, the key free for the corrected body.
    let mut invalid = deployment("Not_A_Slug");
    invalid["ref"] = Value::from("has space");
    expect_problem(
        server.create(&alice, Some("fix-me"), &invalid).await,
        422,
        "validation-failed",
    )
    .await;
    assert_eq!(deployments_with_key(&t.db, "alice", "fix-me").await, 0);
    let corrected = server
        .create(&alice, Some("fix-me"), &deployment("fixed"))
        .await;
    assert_eq!(corrected.status(), StatusCode::CREATED);
    assert!(corrected.headers().get("idempotent-replayed").is_none());

    // 5xx from the handler (its insert fails): rolled back, the key free.
    expect_problem(
        server
            .create(&alice, Some("boom"), &deployment("explode"))
            .await,
        500,
        "internal-error",
    )
    .await;
    // The transaction commits after the handler answered 201, or not at all: here the
    // database refuses the COMMIT, and the deployment the handler inserted vanishes with
    // the record.
    let refused = server
        .create(&alice, Some("late"), &deployment("at-commit"))
        .await;
    assert!(refused.headers().get(header::RETRY_AFTER).is_some());
    expect_problem(refused, 503, "transaction-failed").await;
    // Without a key: the same transaction, the same refusal.
    let unkeyed = server.create(&alice, None, &deployment("at-commit")).await;
    expect_problem(unkeyed, 503, "transaction-failed").await;
    for key in ["boom", "late"] {
        assert_eq!(deployments_with_key(&t.db, "alice", key).await, 0, "{key}");
    }
    assert_eq!(server.list_all(&alice, 20).await.len(), 1);
    // One record: the corrected request's.
    assert_eq!(idempotency_records(&t.db).await, 1);

    // The faults gone, the same keys and bodies execute (they are not replays of anything).
    execute(&t.db, remove).await;
    for (key, project) in [("boom", "explode"), ("late", "at-commit")] {
        let retry = server.create(&alice, Some(key), &deployment(project)).await;
        assert_eq!(retry.status(), StatusCode::CREATED, "{key}");
        assert!(
            retry.headers().get("idempotent-replayed").is_none(),
            "{key}"
        );
        assert_eq!(deployments_with_key(&t.db, "alice", key).await, 1, "{key}");
    }
    // Six runs of the handler, each let through by the layer: the invalid body, the
    // corrected one, both failures and both retries.
    assert_eq!(server.executions().await, Executions::exactly(6));
    server.stop().await;
}

async fn expired_records_are_deleted(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let server = TestServer::spawn_store(
        &t,
        with_ttl(Duration::from_secs(1)),
        Store::Database,
        &["--idempotency-reaper-period", "200ms"],
    )
    .await;
    for i in 0..3 {
        let key = format!("reaped-{i}");
        let created = server.create(&alice, Some(&key), &deployment("api")).await;
        assert_eq!(created.status(), StatusCode::CREATED);
    }
    assert!(idempotency_records(&t.db).await > 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    while idempotency_records(&t.db).await > 0 {
        assert!(
            Instant::now() < deadline,
            "expired records still there after 20 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The deployments stay; only the records go.
    assert_eq!(server.list_all(&alice, 20).await.len(), 3);
    server.stop().await;
}

async fn concurrent_creates(backend: Backend) {
    let t = TestDb::new(backend).await;
    let alice = token(&t.db, "alice").await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;

    // 30 requests with one key, released at once: one runs, the rest get 409 or the replay.
    // 20 with keys of their own and 5 without a key, at the same time: each creates one.
    let barrier = Arc::new(Barrier::new(55));
    let mut tasks = JoinSet::new();
    for i in 0..55 {
        let key = match i {
            0..30 => Some("race".to_owned()),
            30..50 => Some(format!("own-{i}")),
            _ => None,
        };
        let mut request = reqwest::Client::new()
            .post(server.url("/api/deployments"))
            .bearer_auth(&alice)
            .json(&deployment("race"));
        if let Some(key) = &key {
            request = request.header("idempotency-key", key);
        }
        let barrier = Arc::clone(&barrier);
        tasks.spawn(async move {
            barrier.wait().await;
            let response = request.send().await.unwrap();
            let status = response.status();
            let replayed = response.headers().contains_key("idempotent-replayed");
            (key, status, replayed, response.text().await.unwrap())
        });
    }
    let answers = tasks.join_all().await;
    let mut race_bodies = Vec::new();
    for (key, status, replayed, body) in &answers {
        match (key.as_deref(), *status) {
            (Some("race"), StatusCode::CREATED) => race_bodies.push((replayed, body)),
            (Some("race"), StatusCode::CONFLICT) => {}
            (_, StatusCode::CREATED) => assert!(!replayed),
            (key, status) => panic!("{key:?}: unexpected {status}: {body}"),
        }
    }
    assert_eq!(
        race_bodies
            .iter()
            .filter(|(replayed, _)| !**replayed)
            .count(),
        1,
        "exactly one request with the shared key executes"
    );
    assert!(race_bodies.windows(2).all(|w| w[0].1 == w[1].1));
    assert_eq!(deployments_with_key(&t.db, "alice", "race").await, 1);
    assert_eq!(server.list_all(&alice, 100).await.len(), 1 + 20 + 5);
    assert_eq!(server.executions().await, Executions::exactly(21));
    server.stop().await;
}
