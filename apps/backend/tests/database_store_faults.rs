//! The `database` store when the request's transaction is interrupted, on PostgreSQL, whose
//! lock manager lets a test hold a create inside its transaction: the test locks the
//! `deployments` table, so the handler's INSERT waits (after the claim, before the commit).
//!
//! - the client gives up: the handler runs on, commits, and the retry is a replay;
//! - the server is SIGKILLed: nothing was committed, and after a restart the key is free at
//!   once (no lease to wait out);
//! - the server gets SIGTERM: it finishes the handler and commits before it exits.
//!
//! (SQLite's claim is its write lock, which nothing outside the request can hold it out of,
//! so there is no such point to stop a SQLite request at from outside.)

mod common;

use std::time::{Duration, Instant};

use backend::Settings;
use common::{
    Backend, Executions, Store, TestDb, TestServer, deployment, deployments_with_key, token,
};
use reqwest::StatusCode;
use sqlx::{Connection as _, Executor as _, PgConnection};

/// Holds `deployments` locked against inserts until released.
struct TableLock(PgConnection);

impl TableLock {
    async fn take(t: &TestDb) -> Self {
        let mut conn = PgConnection::connect(&t.url).await.expect("connect");
        conn.execute("BEGIN; LOCK TABLE deployments IN SHARE ROW EXCLUSIVE MODE")
            .await
            .expect("lock deployments");
        Self(conn)
    }

    async fn release(mut self) {
        self.0.execute("ROLLBACK").await.expect("unlock");
        self.0.close().await.ok();
    }
}

/// Waits (bounded) until a create's INSERT waits for the table lock: the request has claimed
/// its key and is inside its transaction.
async fn wait_for_blocked_insert(t: &TestDb) {
    let mut conn = PgConnection::connect(&t.url).await.expect("connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let waiting: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND wait_event_type = 'Lock' AND query LIKE 'INSERT INTO deployments%'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        if waiting > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no create reached its INSERT");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    conn.close().await.ok();
}

async fn start() -> (TestDb, String, TestServer) {
    let t = TestDb::new(Backend::Postgres).await;
    let alice = token(&t.db, "alice").await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    (t, alice, server)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_finds_the_result_on_its_retry() {
    let (t, alice, server) = start().await;
    let lock = TableLock::take(&t).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let request = impatient
        .post(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .header("idempotency-key", "patience")
        .json(&deployment("api"));
    let gave_up = tokio::spawn(request.send());
    wait_for_blocked_insert(&t).await;
    assert!(gave_up.await.unwrap().is_err(), "the client timed out");
    // Meanwhile a retry learns that the first request still runs.
    let meanwhile = server
        .create(&alice, Some("patience"), &deployment("api"))
        .await;
    common::expect_problem(meanwhile, 409, "key-in-use").await;
    lock.release().await;

    // The handler runs on without its client, to its commit. Retry once that is visible: a
    // retry racing the commit itself can run the handler a second time (a claim of
    // PostgresTransactionalStore reads the record in the snapshot taken before it takes the
    // lock; the second run's writes roll back, but it ran), which is not what this checks.
    let deadline = Instant::now() + Duration::from_secs(20);
    while common::idempotency_records(&t.db).await == 0 {
        assert!(
            Instant::now() < deadline,
            "the detached handler never committed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replay = server
        .create(&alice, Some("patience"), &deployment("api"))
        .await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(deployments_with_key(&t.db, "alice", "patience").await, 1);
    assert_eq!(server.executions().await, Executions::exactly(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_transaction_leaves_nothing_and_frees_the_key_at_once() {
    let (t, alice, server) = start().await;
    let lock = TableLock::take(&t).await;
    let client = reqwest::Client::new();
    let request = client
        .post(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .header("idempotency-key", "crash")
        .json(&deployment("api"));
    let lost = tokio::spawn(request.send());
    wait_for_blocked_insert(&t).await;
    assert_eq!(server.execution_log().executions, 1, "the handler started");

    let server = server.crash_and_restart().await;
    assert!(lost.await.unwrap().is_err(), "the crash cut the answer");
    lock.release().await;
    // No lease to wait out: the crashed transaction took its claim with it.
    let retry = server
        .create(&alice, Some("crash"), &deployment("api"))
        .await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(deployments_with_key(&t.db, "alice", "crash").await, 1);
    assert_eq!(server.executions().await, Executions::exactly(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_running_create_commit() {
    let (t, alice, server) = start().await;
    let lock = TableLock::take(&t).await;
    let client = reqwest::Client::new();
    let request = client
        .post(server.url("/api/deployments"))
        .bearer_auth(&alice)
        .header("idempotency-key", "drain")
        .json(&deployment("api"));
    let running = tokio::spawn(request.send());
    wait_for_blocked_insert(&t).await;
    let stopping = tokio::spawn(server.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    lock.release().await;
    let answer = running.await.unwrap().expect("an answer before the exit");
    assert_eq!(answer.status(), StatusCode::CREATED);
    let body = answer.bytes().await.unwrap();
    stopping.await.expect("a clean exit after SIGTERM");

    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let retry = server
        .create(&alice, Some("drain"), &deployment("api"))
        .await;
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), body);
    assert_eq!(server.executions().await, Executions::exactly(0));
    assert_eq!(deployments_with_key(&t.db, "alice", "drain").await, 1);
    server.stop().await;
}
