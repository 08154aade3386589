//! [`TestServer`]: the app on an ephemeral port, in this process or as a real `backend serve`
//! process (restartable, crashable), with request shorthands.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use backend::{AppState, Db, Settings, app};
use reqwest::{Response, StatusCode, header};
use serde_json::Value;
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tower_idempotency::store::{BoxStore, memory::MemoryStore};

use super::{
    BIN, TestDb,
    executions::{ExecutionLog, Executions, executions_at},
};

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
        /// What started it, to start it again.
        launch: Launch,
    },
}

/// Which `--idempotency-store` a spawned server gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Store {
    /// `memory`.
    Memory,
    /// `database`: the records in the deployments database.
    Database,
    /// No flag and no `IDEMPOTENCY_STORE`: the binary's default.
    Unset,
}

/// How a server process was started.
#[derive(Debug, Clone)]
struct Launch {
    database_url: String,
    settings: Settings,
    store: Store,
    extra: Vec<String>,
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
        Self::spawn_store(t, settings, Store::Memory, &[]).await
    }

    /// A real `backend serve` process over the test's database with `store` as its
    /// idempotency store, `settings` and `extra` flags.
    pub async fn spawn_store(t: &TestDb, settings: Settings, store: Store, extra: &[&str]) -> Self {
        Self::spawn_process(Launch {
            database_url: t.url.clone(),
            settings,
            store,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
    }

    /// Stops this server process like [`stop`](Self::stop) (SIGTERM, a clean exit) and starts
    /// it again, as it was started, on the same database: a restart. The new process has
    /// counters and a log of its own.
    pub async fn restart(mut self) -> Self {
        let Runner::Process { launch, .. } = &mut self.runner else {
            panic!("only a spawned server can be restarted");
        };
        let launch = launch.clone();
        self.stop().await;
        Self::spawn_process(launch).await
    }

    /// SIGKILLs this server process (no shutdown of any kind: what a crash or an OOM kill
    /// does) and starts it again, as it was started, on the same database.
    pub async fn crash_and_restart(mut self) -> Self {
        let Runner::Process { child, launch, .. } = &mut self.runner else {
            panic!("only a spawned server can crash");
        };
        let launch = launch.clone();
        if let Some(mut child) = child.take() {
            child.kill().expect("SIGKILL backend");
            child.wait().expect("reap backend");
        }
        Self::spawn_process(launch).await
    }

    /// `backend serve` on port 0 with JSON logs into a file of its own (INFO for the
    /// `backend` targets, which include the execution log); its address is read from its
    /// `listening` line, so no port is guessed.
    async fn spawn_process(launch: Launch) -> Self {
        let dir = tempfile::tempdir().expect("create a temporary directory");
        let log = dir.path().join("backend.log");
        let file = std::fs::File::create(&log).expect("create the log file");
        let millis = |d: Duration| format!("{}ms", d.as_millis());
        let settings = &launch.settings;
        let mut command = Command::new(BIN);
        command.arg("serve").args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &launch.database_url,
        ]);
        match launch.store {
            Store::Memory => command.args(["--idempotency-store", "memory"]),
            Store::Database => command.args(["--idempotency-store", "database"]),
            Store::Unset => &mut command,
        };
        let child = command
            .args(["--idempotency-ttl", &millis(settings.idempotency_ttl)])
            .args(["--idempotency-lease", &millis(settings.idempotency_lease)])
            .args(["--max-body-bytes", &settings.max_body_bytes.to_string()])
            .args(["--request-timeout", &millis(settings.request_timeout)])
            .args(&launch.extra)
            // Nothing of the caller's configuration leaks in.
            .env_clear()
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn,backend=info")
            // Tests stop servers often: no readiness delay unless a test asks (a flag wins).
            .env("BACKEND_SHUTDOWN_READINESS_DELAY", "0s")
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
                launch,
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

    /// Everything a spawned server has logged so far (JSON lines).
    pub fn log_text(&self) -> String {
        let Runner::Process { log, .. } = &self.runner else {
            panic!("only a spawned server writes a log of its own");
        };
        std::fs::read_to_string(log).expect("read the log")
    }

    /// The `listening` line a spawned server logged at startup.
    pub fn listening_line(&self) -> Value {
        let Runner::Process { log, .. } = &self.runner else {
            panic!("only a spawned server writes a log of its own");
        };
        std::fs::read_to_string(log)
            .expect("read the log")
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .find(|line| line["message"] == "listening")
            .expect("a listening line")
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

impl TestServer {
    /// Like [`spawn_store`](Self::spawn_store), on `database_url` instead of the test's own
    /// URL (the same database with a password in it, say).
    pub async fn spawn_on(
        database_url: &str,
        settings: Settings,
        store: Store,
        extra: &[&str],
    ) -> Self {
        Self::spawn_process(Launch {
            database_url: database_url.to_owned(),
            settings,
            store,
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        })
        .await
    }
}

impl TestServer {
    /// The process id of a spawned server (to signal it).
    pub fn pid(&self) -> u32 {
        let Runner::Process { child, .. } = &self.runner else {
            panic!("only a spawned server has a process");
        };
        child.as_ref().expect("a running server").id()
    }
}
