//! Shared helpers: a database per test (a temporary SQLite file, or a fresh PostgreSQL
//! database), a real server over TCP, and request shorthands.

#![allow(dead_code, unreachable_pub, unused_macros)]

use std::{net::SocketAddr, str::FromStr, time::Duration};

use backend::{AppState, Db, Settings, app, auth::create_token};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower_idempotency::store::{BoxStore, memory::MemoryStore};

/// The problem `type` base of the API.
pub const TYPE_BASE: &str = "https://deployments.example.com/problems/";

/// Where the PostgreSQL tests connect when `DATABASE_URL` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

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

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("backend.db").display());
                let db = Db::connect(&url).await.expect("open the SQLite database");
                Self {
                    url,
                    db,
                    _cleanup: Cleanup::Sqlite(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("backend_test_{}", uuid::Uuid::now_v7().simple());
                let mut admin = connect_admin(&admin_url).await;
                admin
                    .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot create a test database: {e}. The role in DATABASE_URL needs \
                             the CREATEDB privilege."
                        )
                    });
                admin.close().await.ok();
                let url = with_database(&admin_url, &name);
                let cleanup = Cleanup::Postgres {
                    admin_url,
                    name: name.clone(),
                };
                let db = Db::connect(&url)
                    .await
                    .expect("connect to the test database");
                Self {
                    url,
                    db,
                    _cleanup: cleanup,
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Self::Postgres { admin_url, name } = self else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which must not be blocked on: use a thread
        // with its own runtime. WITH (FORCE) ends connections a pool may still hold.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("warning: could not drop a test database: {error}");
        }
    }
}

/// `DATABASE_URL` (a `postgres://` URL) or the local default.
pub fn postgres_admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
        Ok(other) if !other.is_empty() => panic!(
            "DATABASE_URL is set to `{other}`, but the PostgreSQL tests need a postgres:// URL \
             (e.g. DATABASE_URL={DEFAULT_POSTGRES_URL}); unset it to use that default"
        ),
        _ => DEFAULT_POSTGRES_URL.to_owned(),
    }
}

async fn connect_admin(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url).unwrap_or_else(|e| {
        panic!("DATABASE_URL is not a valid PostgreSQL URL: {e}");
    });
    match tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("{}", postgres_help(&e.to_string())),
        Err(_) => panic!("{}", postgres_help("no answer within 10 s")),
    }
}

fn postgres_help(error: &str) -> String {
    format!(
        "the PostgreSQL tests cannot reach PostgreSQL at {} ({error}). Start PostgreSQL, or \
         point DATABASE_URL at a server where the role may CREATE DATABASE, e.g. \
         DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p backend. Each \
         test creates and drops its own database `backend_test_<id>`.",
        redact(&postgres_admin_url())
    )
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_and_path = &base[scheme_end..];
    let authority = authority_and_path
        .split_once('/')
        .map_or(authority_and_path, |(authority, _)| authority);
    let mut out = format!("{}{authority}/{name}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A server on an ephemeral port, serving [`app`] until [`stop`](Self::stop)ped.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server over `db` with a fresh in-memory idempotency store and default settings.
    pub async fn start(db: &Db) -> Self {
        Self::start_with(db, Settings::default()).await
    }

    /// Like [`start`](Self::start), with `settings`.
    pub async fn start_with(db: &Db, settings: Settings) -> Self {
        let state = AppState::new(db.clone(), BoxStore::new(MemoryStore::default()))
            .with_settings(settings);
        Self::serve(state).await
    }

    /// Serves `state` over TCP.
    pub async fn serve(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = app(state.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
                .expect("serve");
        });
        Self {
            addr,
            client: reqwest::Client::new(),
            state,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Stops accepting requests and waits for in-flight ones, like SIGTERM does.
    pub async fn stop(mut self) {
        // Idle keep-alive connections would otherwise hold the graceful shutdown open.
        self.client = reqwest::Client::new();
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("the server stops within 10 s")
                .expect("the server task ends cleanly");
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// `POST /api/deployments` with `body` as JSON.
    pub async fn create(&self, token: &str, key: Option<&str>, body: &Value) -> Response {
        self.create_raw(token, key, serde_json::to_vec(body).expect("serialise"))
            .await
    }

    /// `POST /api/deployments` with raw bytes declared as JSON.
    pub async fn create_raw(&self, token: &str, key: Option<&str>, body: Vec<u8>) -> Response {
        let mut request = self
            .client
            .post(self.url("/api/deployments"))
            .bearer_auth(token)
            .header(header::CONTENT_TYPE, "application/json")
            .body(body);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        request.send().await.expect("send")
    }

    /// `GET path` with `token`.
    pub async fn get(&self, token: &str, path: &str) -> Response {
        self.client
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("send")
    }

    /// Every deployment of the token's user, walking all pages.
    pub async fn list_all(&self, token: &str, limit: u32) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        for _ in 0..1000 {
            let path = match &cursor {
                None => format!("/api/deployments?limit={limit}"),
                Some(cursor) => format!("/api/deployments?limit={limit}&cursor={cursor}"),
            };
            let response = self.get(token, &path).await;
            assert_eq!(response.status(), StatusCode::OK);
            let page: Value = response.json().await.expect("a JSON page");
            let page_items = page["items"].as_array().expect("items").clone();
            assert!(page_items.len() <= limit as usize);
            items.extend(page_items);
            match page["next_cursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => {
                    assert!(page["next_cursor"].is_null());
                    return items;
                }
            }
        }
        panic!("pagination did not end");
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
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

#[test]
fn replaces_the_database_name() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
}
