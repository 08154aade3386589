//! Shared helpers: a database per test (a temporary SQLite file, or a fresh PostgreSQL
//! database), a real server over TCP (in this process, or a real `backend` process), what it
//! executed (its `/metrics` and its execution log), and request shorthands.

#![allow(dead_code, unreachable_pub, unused_macros)]

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    str::FromStr,
    time::{Duration, Instant},
};

use backend::{
    AppState, Db, Settings, app,
    auth::create_token,
    telemetry::{
        CREATE_EXECUTIONS_TOTAL, EXECUTION_LOG_TARGET, EXECUTION_MESSAGE, GUARD_HIT_MESSAGE,
        GUARD_HITS_TOTAL,
    },
};
use reqwest::{Response, StatusCode, header};
use serde_json::{Value, json};
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower_idempotency::{
    metrics::REQUESTS_TOTAL,
    store::{BoxStore, memory::MemoryStore},
};

/// The `backend` binary of this package.
pub const BIN: &str = env!("CARGO_BIN_EXE_backend");

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

/// A server on an ephemeral port until [`stop`](Self::stop)ped: [`app`] in this process
/// ([`start`](Self::start)), or a real `backend serve` process ([`spawn`](Self::spawn)).
///
/// Only a process of its own has counters of its own: the `metrics` recorder is global to a
/// process, and the tests of one binary run side by side in one process. So a test that
/// asserts what was executed ([`executions`](Self::executions)) spawns its server.
pub struct TestServer {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    runner: Runner,
}

enum Runner {
    InProcess {
        shutdown: Option<oneshot::Sender<()>>,
        task: Option<JoinHandle<()>>,
    },
    Process {
        child: Option<Child>,
        log: PathBuf,
        _dir: tempfile::TempDir,
    },
}

impl TestServer {
    /// A server in this process over `db` with a fresh in-memory idempotency store and
    /// default settings.
    pub async fn start(db: &Db) -> Self {
        Self::start_with(db, Settings::default()).await
    }

    /// Like [`start`](Self::start), with `settings`.
    pub async fn start_with(db: &Db, settings: Settings) -> Self {
        let state = AppState::new(db.clone(), BoxStore::new(MemoryStore::default()))
            .with_settings(settings);
        Self::serve(state).await
    }

    /// Serves `state` over TCP, in this process.
    pub async fn serve(state: AppState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local address");
        let (shutdown, stopped) = oneshot::channel::<()>();
        let router = app(state);
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
            runner: Runner::InProcess {
                shutdown: Some(shutdown),
                task: Some(task),
            },
        }
    }

    /// A real `backend serve` process over the test's database, with an in-memory
    /// idempotency store and default settings.
    pub async fn spawn(t: &TestDb) -> Self {
        Self::spawn_with(t, Settings::default()).await
    }

    /// Like [`spawn`](Self::spawn), with `settings` (passed as the binary's flags).
    pub async fn spawn_with(t: &TestDb, settings: Settings) -> Self {
        Self::spawn_process(&t.url, &settings).await
    }

    /// `backend serve` on port 0 with JSON logs into a file of its own (INFO for the
    /// `backend` targets, which include the execution log); its address is read from its
    /// `listening` line, so no port is guessed.
    async fn spawn_process(database_url: &str, settings: &Settings) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let log = dir.path().join("backend.log");
        let file = std::fs::File::create(&log).expect("create the log file");
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let child = Command::new(BIN)
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--database-url", database_url])
            .args(["--idempotency-store", "memory"])
            .args(["--idempotency-ttl", &millis(settings.idempotency_ttl)])
            .args(["--idempotency-lease", &millis(settings.idempotency_lease)])
            .args(["--max-body-bytes", &settings.max_body_bytes.to_string()])
            .args(["--request-timeout", &millis(settings.request_timeout)])
            // Nothing of the caller's configuration leaks in.
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,backend=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("start backend serve");
        let mut server = Self {
            addr: ([127, 0, 0, 1], 0).into(),
            client: reqwest::Client::new(),
            runner: Runner::Process {
                child: Some(child),
                log,
                _dir: dir,
            },
        };
        server.addr = server.wait_listening().await;
        server.wait_ready().await;
        server
    }

    async fn wait_listening(&mut self) -> SocketAddr {
        let Runner::Process { child, log, .. } = &mut self.runner else {
            unreachable!("only processes log");
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let text = std::fs::read_to_string(&*log).unwrap_or_default();
            let address = text
                .lines()
                .filter_map(|line| serde_json::from_str::<Value>(line).ok())
                .find(|line| line["message"] == "listening")
                .and_then(|line| line["address"].as_str()?.parse().ok());
            if let Some(address) = address {
                return address;
            }
            if let Some(status) = child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                panic!("backend serve exited during startup ({status}): {text}");
            }
            assert!(
                Instant::now() < deadline,
                "backend serve did not start within 30 s: {text}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = self.client.get(self.url("/readyz")).send().await
                && response.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend on {} not ready within 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops accepting requests and waits for in-flight ones, like SIGTERM does (for a
    /// process: SIGTERM, and it must exit successfully).
    pub async fn stop(mut self) {
        // Idle keep-alive connections would otherwise hold the graceful shutdown open.
        self.client = reqwest::Client::new();
        match &mut self.runner {
            Runner::InProcess { shutdown, task } => {
                if let Some(shutdown) = shutdown.take() {
                    let _ = shutdown.send(());
                }
                if let Some(task) = task.take() {
                    tokio::time::timeout(Duration::from_secs(10), task)
                        .await
                        .expect("the server stops within 10 s")
                        .expect("the server task ends cleanly");
                }
            }
            Runner::Process { child, log, .. } => {
                let Some(mut child) = child.take() else {
                    return;
                };
                let signalled = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status()
                    .expect("run kill");
                assert!(signalled.success(), "kill -TERM failed");
                let deadline = Instant::now() + Duration::from_secs(10);
                let status = loop {
                    if let Some(status) = child.try_wait().expect("wait for backend") {
                        break status;
                    }
                    if Instant::now() > deadline {
                        let _ = child.kill();
                        panic!("backend ignored SIGTERM for 10 s");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                };
                assert!(
                    status.success(),
                    "backend exited with {status}: {}",
                    std::fs::read_to_string(&*log).unwrap_or_default()
                );
            }
        }
    }

    /// What this server executed: its `/metrics`, checked against its execution log (one
    /// line per execution and per guard hit). Only for a spawned server.
    pub async fn executions(&self) -> Executions {
        let Runner::Process { log, .. } = &self.runner else {
            panic!(
                "an in-process server shares the process-wide metrics recorder with every other \
                 test: spawn the server (TestServer::spawn) to count its executions"
            );
        };
        let counted = executions_at(&self.client, &self.url("")).await;
        let logged = ExecutionLog::read(log);
        assert_eq!(
            (logged.executions, logged.guard_hits),
            (counted.handler, counted.guard_hits),
            "the execution log (executions, guard hits) disagrees with /metrics"
        );
        counted
    }

    /// The execution log of a spawned server.
    pub fn execution_log(&self) -> ExecutionLog {
        let Runner::Process { log, .. } = &self.runner else {
            panic!("only a spawned server writes a log of its own");
        };
        ExecutionLog::read(log)
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
        match &mut self.runner {
            Runner::InProcess { task, .. } => {
                if let Some(task) = task.take() {
                    task.abort();
                }
            }
            Runner::Process { child, .. } => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }
}

/// What a server executed, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Executions {
    /// `deployments_create_executions_total`: the create handler ran for a keyed request.
    pub handler: u64,
    /// `idempotency_requests_total{outcome="executed"}`: the layer let a keyed request run
    /// its inner service (the handler, or an extractor that refused the request first).
    pub layer: u64,
    /// `deployments_idempotency_guard_hits_total`, all outcomes: the unique (user, key)
    /// answered instead of an insert.
    pub guard_hits: u64,
}

impl Executions {
    /// `n` executions, each let through by the layer and none of them caught by the
    /// database guard: the layer alone made every retry a replay.
    pub fn exactly(n: u64) -> Self {
        Self {
            handler: n,
            layer: n,
            guard_hits: 0,
        }
    }
}

impl std::ops::Add for Executions {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            handler: self.handler + other.handler,
            layer: self.layer + other.layer,
            guard_hits: self.guard_hits + other.guard_hits,
        }
    }
}

/// The execution counters of the server at `base_url` (`http://host:port`). Every series is
/// exported from startup; a missing one fails the test rather than reading as zero.
pub async fn executions_at(client: &reqwest::Client, base_url: &str) -> Executions {
    let metrics = Metrics::scrape(client, base_url).await;
    Executions {
        handler: metrics.counter(CREATE_EXECUTIONS_TOTAL, &[]),
        layer: metrics.counter(REQUESTS_TOTAL, &[("outcome", "executed")]),
        guard_hits: metrics.sum(GUARD_HITS_TOTAL),
    }
}

/// One sample of a scrape: name, labels, value.
type Sample = (String, Vec<(String, String)>, f64);

/// A scrape of `/metrics` (Prometheus text format).
#[derive(Debug, Clone)]
pub struct Metrics {
    samples: Vec<Sample>,
    text: String,
}

impl Metrics {
    /// `GET {base_url}/metrics`, parsed.
    pub async fn scrape(client: &reqwest::Client, base_url: &str) -> Self {
        let response = client
            .get(format!("{base_url}/metrics"))
            .send()
            .await
            .expect("scrape /metrics");
        assert_eq!(response.status(), StatusCode::OK, "GET /metrics");
        Self::parse(&response.text().await.expect("read /metrics"))
    }

    /// Parses the text exposition format (samples only; comments are skipped).
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .unwrap_or_else(|| panic!("not a sample line: {line}"));
            let value: f64 = value
                .parse()
                .unwrap_or_else(|_| panic!("not a sample value: {line}"));
            let (name, labels) = match series.split_once('{') {
                None => (series.to_owned(), Vec::new()),
                Some((name, rest)) => {
                    let inner = rest
                        .strip_suffix('}')
                        .unwrap_or_else(|| panic!("unterminated labels: {line}"));
                    let labels = inner
                        .split(',')
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair
                                .split_once('=')
                                .unwrap_or_else(|| panic!("bad label `{pair}`: {line}"));
                            (key.to_owned(), value.trim_matches('"').to_owned())
                        })
                        .collect();
                    (name.to_owned(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Self {
            samples,
            text: text.to_owned(),
        }
    }

    /// The counter `name` with exactly `labels`; fails the test if it is not exported.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut wanted: Vec<(&str, &str)> = labels.to_vec();
        wanted.sort_unstable();
        self.samples
            .iter()
            .find(|(n, l, _)| {
                let mut have: Vec<(&str, &str)> =
                    l.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                have.sort_unstable();
                n == name && have == wanted
            })
            .map(|(_, _, v)| *v as u64)
            .unwrap_or_else(|| panic!("{name}{labels:?} is not exported:\n{}", self.text))
    }

    /// The sum of every series of the counter `name`; fails the test if none is exported.
    pub fn sum(&self, name: &str) -> u64 {
        let values: Vec<f64> = self
            .samples
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(.., v)| *v)
            .collect();
        assert!(!values.is_empty(), "{name} is not exported:\n{}", self.text);
        values.iter().sum::<f64>() as u64
    }

    /// The raw text.
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// What a spawned server's execution log says (`backend::executions` lines).
#[derive(Debug, Clone, Default)]
pub struct ExecutionLog {
    /// Lines for an execution of the create handler.
    pub executions: u64,
    /// Lines for a hit of the database guard.
    pub guard_hits: u64,
    /// Executions per idempotency record (hex SHA-256 of user and key).
    pub per_record: HashMap<String, u64>,
    /// Every execution-log line, as JSON.
    pub lines: Vec<Value>,
}

impl ExecutionLog {
    /// Reads `path` (JSON lines); other lines are ignored.
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        let mut log = Self::default();
        for line in text.lines() {
            let Ok(line) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if line["target"] != EXECUTION_LOG_TARGET {
                continue;
            }
            let record = line["record"]
                .as_str()
                .unwrap_or_else(|| panic!("execution log line without a record: {line}"))
                .to_owned();
            assert!(
                record.len() == 64 && record.bytes().all(|b| b.is_ascii_hexdigit()),
                "the record is a hash: {line}"
            );
            if line["message"] == EXECUTION_MESSAGE {
                log.executions += 1;
                *log.per_record.entry(record).or_default() += 1;
            } else if line["message"] == GUARD_HIT_MESSAGE {
                log.guard_hits += 1;
            } else {
                panic!("unknown execution log line: {line}");
            }
            log.lines.push(line);
        }
        log
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
