//! Shared helpers: a database per test (a temporary SQLite file, or a fresh PostgreSQL
//! database: [`db`]), a real server over TCP (in this process, or a real `backend` process:
//! [`server`]), what it executed (its `/metrics` and its execution log: [`executions`]), and
//! request and SQL shorthands.

#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

mod db;
mod executions;
mod server;

use backend::{Db, auth::create_token};
use reqwest::{Response, header};
use serde_json::{Value, json};

pub use self::{
    db::{Backend, BlankDb, DEFAULT_POSTGRES_URL, TestDb, postgres_admin_url},
    executions::{ExecutionLog, Executions, Metrics, executions_at},
    server::{Store, TestServer},
};

/// The `backend` binary of this package.
pub const BIN: &str = env!("CARGO_BIN_EXE_backend");

/// The problem `type` base of the API.
pub const TYPE_BASE: &str = "https://deployments.example.com/problems/";

/// Runs each listed `async fn name(backend: Backend)` against SQLite and PostgreSQL, as
/// `sqlite::name` and `postgres::name`. A PostgreSQL test fails (never skips) when
/// PostgreSQL is unreachable.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Sqlite).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::common::Backend::Postgres).await;
                }
            )*
        }
    };
}

/// How many deployments `user` created with `key` (a key may create one per TTL).
pub async fn deployments_with_key(db: &Db, user: &str, key: &str) -> i64 {
    match db {
        Db::Sqlite(pool) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM deployments WHERE user_id = ? AND idempotency_key = ?",
            )
            .bind(user)
            .bind(key)
            .fetch_one(pool)
            .await
        }
        Db::Postgres(pool) => {
            sqlx::query_scalar(
                "SELECT COUNT(*) FROM deployments WHERE user_id = $1 AND idempotency_key = $2",
            )
            .bind(user)
            .bind(key)
            .fetch_one(pool)
            .await
        }
    }
    .expect("count deployments")
}

/// How many idempotency records the `database` store holds (expired ones included).
pub async fn idempotency_records(db: &Db) -> i64 {
    let sql = "SELECT COUNT(*) FROM idempotency_records";
    match db {
        Db::Sqlite(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
        Db::Postgres(pool) => sqlx::query_scalar(sql).fetch_one(pool).await,
    }
    .expect("count idempotency records")
}

/// Runs `sql` (one or more statements) on the test's database.
pub async fn execute(db: &Db, sql: &str) {
    match db {
        Db::Sqlite(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
        Db::Postgres(pool) => sqlx::raw_sql(sql).execute(pool).await.map(drop),
    }
    .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// A token for `user`, minted like `backend token create` does.
pub async fn token(db: &Db, user: &str) -> String {
    create_token(db, user).await.expect("create a token")
}

/// A valid creation body.
pub fn deployment(project: &str) -> Value {
    json!({
        "project": project,
        "environment": "production",
        "ref": "v1.2.3",
        "description": "Roll out the new invoice renderer",
    })
}

/// Asserts that `response` is a problem of type `slug` and `status`, and returns its body.
pub async fn expect_problem(response: Response, status: u16, slug: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.text().await.expect("body");
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    // One format for the app's and the idempotency layer's problems alike.
    assert!(body.starts_with("{\"type\":"), "body: {body}");
    let problem: Value = serde_json::from_str(&body).expect("problem JSON");
    assert_eq!(
        problem["type"],
        format!("{TYPE_BASE}{slug}"),
        "problem: {problem}"
    );
    assert_eq!(problem["status"], status, "problem: {problem}");
    assert!(problem["title"].is_string(), "problem: {problem}");
    assert!(problem["detail"].is_string(), "problem: {problem}");
    problem
}

/// `POST /api/deployments/{id}/statuses` with `body` as JSON (and `key`, if any).
pub async fn add_status(
    server: &TestServer,
    token: &str,
    id: &str,
    key: Option<&str>,
    body: &Value,
) -> Response {
    let mut request = server
        .client
        .post(server.url(&format!("/api/deployments/{id}/statuses")))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("send")
}

/// Creates a deployment of `project` and returns its id.
pub async fn create_id(server: &TestServer, token: &str, project: &str) -> String {
    let response = server.create(token, None, &deployment(project)).await;
    assert_eq!(response.status().as_u16(), 201, "create {project}");
    let created: Value = response.json().await.expect("a deployment");
    created["id"].as_str().expect("an id").to_owned()
}
