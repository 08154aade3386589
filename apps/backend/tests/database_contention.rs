//! Contention as the database means it: a write lock held past SQLite's busy timeout, a row
//! lock held past PostgreSQL's `lock_timeout`, are 503 `database-unavailable` with
//! `Retry-After` (retry later), never 500. Real `backend` processes over real HTTP.

mod common;

use std::time::{Duration, Instant};

use backend::{Db, Settings};
use common::{
    Backend, Store, TestDb, TestServer, add_status, create_id, deployment, expect_problem, token,
};
use reqwest::header;
use serde_json::json;
use sqlx::Connection as _;

/// The problem, and that it says when to retry.
async fn expect_unavailable(response: reqwest::Response, slug: &str) {
    let retry_after = response
        .headers()
        .get(header::RETRY_AFTER)
        .map(|v| v.to_str().unwrap().to_owned());
    let problem = expect_problem(response, 503, slug).await;
    assert_eq!(problem["code"], slug);
    let seconds: u64 = retry_after.expect("Retry-After").parse().expect("seconds");
    assert!(seconds > 0);
}

/// No request failed as a bug (500 `internal-error` logs "request failed" at ERROR).
fn assert_no_internal_error(server: &TestServer) {
    let log = server.log_text();
    assert!(!log.contains("\"message\":\"request failed\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_busy_is_503_database_unavailable() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn(&t).await; // memory store: the handler's own transaction
    let alice = token(&t.db, "alice").await;
    let id = create_id(&server, &alice, "api").await;
    // With the `database` store the layer's own BEGIN IMMEDIATE meets the lock first.
    let transactional =
        TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;

    // Another process' writer: the write lock, held past the server's busy timeout (5 s).
    let Db::Sqlite(pool) = &t.db else {
        unreachable!()
    };
    let mut holder = pool.acquire().await.unwrap();
    let mut lock = holder.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("UPDATE api_tokens SET user_id = user_id")
        .execute(&mut *lock)
        .await
        .unwrap();

    let started = Instant::now();
    let (body, report_body) = (deployment("web"), json!({"state": "in_progress"}));
    let (create, report, in_transaction) = tokio::join!(
        server.create(&alice, Some("busy-1"), &body),
        add_status(&server, &alice, &id, Some("busy-2"), &report_body),
        add_status(&transactional, &alice, &id, Some("busy-3"), &report_body),
    );
    assert!(started.elapsed() < Duration::from_secs(30));
    expect_unavailable(create, "database-unavailable").await;
    expect_unavailable(report, "database-unavailable").await;
    expect_unavailable(in_transaction, "store-unavailable").await;
    assert_no_internal_error(&transactional);
    transactional.stop().await;
    lock.rollback().await.unwrap();
    drop(holder);

    // Nothing took effect and the keys are free: the retries succeed.
    let create = server
        .create(&alice, Some("busy-1"), &deployment("web"))
        .await;
    assert_eq!(create.status(), 201);
    assert!(create.headers().get("idempotent-replayed").is_none());
    let report = add_status(
        &server,
        &alice,
        &id,
        Some("busy-2"),
        &json!({"state": "in_progress"}),
    )
    .await;
    assert_eq!(report.status(), 201);
    assert_no_internal_error(&server);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_lock_timeout_is_503_database_unavailable() {
    let t = TestDb::new(Backend::Postgres).await;
    // Every new session of the server gets a short lock_timeout.
    common::execute(
        &t.db,
        "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET lock_timeout = %L', \
         current_database(), '300ms'); END $$",
    )
    .await;
    // The default `database` store: the report goes through the request's transaction.
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let alice = token(&t.db, "alice").await;
    let id = create_id(&server, &alice, "api").await;

    let Db::Postgres(pool) = &t.db else {
        unreachable!()
    };
    let mut holder = pool.acquire().await.unwrap();
    let mut lock = holder.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM deployments WHERE id = $1 FOR UPDATE")
        .bind(&id)
        .execute(&mut *lock)
        .await
        .unwrap();

    let report = add_status(
        &server,
        &alice,
        &id,
        Some("locked-1"),
        &json!({"state": "in_progress"}),
    )
    .await;
    expect_unavailable(report, "database-unavailable").await;
    lock.rollback().await.unwrap();
    drop(holder);

    // Rolled back with its record: the retry executes.
    let report = add_status(
        &server,
        &alice,
        &id,
        Some("locked-1"),
        &json!({"state": "in_progress"}),
    )
    .await;
    assert_eq!(report.status(), 201);
    assert!(report.headers().get("idempotent-replayed").is_none());
    assert_no_internal_error(&server);
    server.stop().await;
}
