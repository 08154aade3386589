//! A fleet: two real `backend` processes sharing one idempotency store (Redis, Redis Cluster,
//! PostgreSQL in turn) and one PostgreSQL database for deployments. A retry that lands on the
//! other instance must still create nothing.
//!
//! Servers: `REDIS_URL` (default `redis://127.0.0.1:6379`), `REDIS_CLUSTER_URLS` (default
//! ports 7001-7003 on loopback, started by `scripts/redis-cluster`) and `DATABASE_URL` (a
//! PostgreSQL URL; default `postgres://postgres@127.0.0.1:5432/test`). `scripts/test` provides
//! all three. A test that cannot reach one fails; none is skipped.

mod common;

use std::{
    net::{SocketAddr, TcpListener as StdListener},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use common::{Backend, Executions, TestDb, deployment, executions_at};
use reqwest::StatusCode;
use tokio::sync::Barrier;

const BIN: &str = common::BIN;

/// A `backend serve` process; killed when dropped.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

impl Instance {
    /// Starts `backend serve` with `store` as its idempotency store, on a free port, and
    /// waits until it is ready.
    async fn start(database_url: &str, store: &Store, port: Option<u16>) -> Self {
        let port = port.unwrap_or_else(free_port);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut command = Command::new(BIN);
        command
            .arg("serve")
            .env("BACKEND_LISTEN", addr.to_string())
            .env("DATABASE_URL", database_url)
            .env("IDEMPOTENCY_STORE", &store.spec)
            .env("IDEMPOTENCY_REDIS_PREFIX", &store.namespace)
            .env(
                "IDEMPOTENCY_POSTGRES_TABLE",
                store.namespace.replace(':', "_"),
            )
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let child = command.spawn().expect("start backend");
        let instance = Self { child, addr };
        instance.wait_ready().await;
        instance
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status() == StatusCode::OK
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "backend on {} did not become ready within 30 s",
                self.addr
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// This instance's execution counters (its own process, so its own).
    async fn executions(&self) -> Executions {
        executions_at(&reqwest::Client::new(), &self.url("")).await
    }
}

/// The execution counters summed over `instances`.
async fn fleet_executions(instances: &[Instance]) -> Executions {
    let mut total = Executions::default();
    for instance in instances {
        total = total + instance.executions().await;
    }
    total
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

/// An idempotency store spec plus a namespace (Redis key prefix or PostgreSQL table) that no
/// other test uses.
struct Store {
    spec: String,
    namespace: String,
}

impl Store {
    fn new(kind: StoreKind) -> Self {
        let id = uuid::Uuid::now_v7().simple().to_string();
        let spec = match kind {
            StoreKind::Redis => {
                std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
            }
            StoreKind::RedisCluster => std::env::var("REDIS_CLUSTER_URLS").unwrap_or_else(|_| {
                "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".into()
            }),
            StoreKind::Postgres => common::postgres_admin_url(),
        };
        Self {
            spec,
            namespace: format!("fleet_{id}:"),
        }
    }
}

#[derive(Clone, Copy)]
enum StoreKind {
    Redis,
    RedisCluster,
    Postgres,
}

/// Mints a token with the real CLI against the fleet's database.
fn mint_token(database_url: &str, user: &str) -> String {
    let output = Command::new(BIN)
        .args(["token", "create", user])
        .env("DATABASE_URL", database_url)
        .output()
        .expect("run backend token create");
    assert!(
        output.status.success(),
        "token create failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

struct Answer {
    status: StatusCode,
    replayed: bool,
    location: Option<String>,
    body: Bytes,
}

async fn create(client: &reqwest::Client, instance: &Instance, token: &str, key: &str) -> Answer {
    let response = client
        .post(instance.url("/api/deployments"))
        .bearer_auth(token)
        .header("idempotency-key", key)
        .json(&deployment("fleet"))
        .send()
        .await
        .expect("send a create");
    Answer {
        status: response.status(),
        replayed: response.headers().contains_key("idempotent-replayed"),
        location: response
            .headers()
            .get("location")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: response.bytes().await.unwrap(),
    }
}

async fn deployments_with_key(db: &backend::Db, key: &str) -> i64 {
    let backend::Db::Postgres(pool) = db else {
        panic!("the fleet shares a PostgreSQL database");
    };
    sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE idempotency_key = $1")
        .bind(key)
        .fetch_one(pool)
        .await
        .expect("count deployments")
}

/// 100 concurrent creates with one key, alternating between two instances: exactly one
/// deployment; every other answer is 409 or the byte-identical replay.
async fn concurrent_creates_across_instances(kind: StoreKind) {
    let db = TestDb::new(Backend::Postgres).await;
    let store = Store::new(kind);
    let fleet = Arc::new([
        Instance::start(&db.url, &store, None).await,
        Instance::start(&db.url, &store, None).await,
    ]);
    let token = Arc::new(mint_token(&db.url, "alice"));
    let client = reqwest::Client::new();
    let barrier = Arc::new(Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|i| {
            let (fleet, token, client, barrier) = (
                fleet.clone(),
                token.clone(),
                client.clone(),
                barrier.clone(),
            );
            tokio::spawn(async move {
                barrier.wait().await;
                create(&client, &fleet[i % 2], &token, "fleet-key").await
            })
        })
        .collect();
    let mut answers = Vec::new();
    for task in tasks {
        answers.push(task.await.unwrap());
    }
    let created: Vec<&Answer> = answers
        .iter()
        .filter(|a| a.status == StatusCode::CREATED)
        .collect();
    let originals: Vec<&&Answer> = created.iter().filter(|a| !a.replayed).collect();
    assert_eq!(originals.len(), 1, "exactly one request executed");
    let original = originals[0];
    for answer in &answers {
        match answer.status {
            StatusCode::CREATED => {
                assert_eq!(answer.body, original.body, "replays are byte-identical");
                assert_eq!(answer.location, original.location);
            }
            StatusCode::CONFLICT => {}
            other => panic!(
                "unexpected {other}: {}",
                String::from_utf8_lossy(&answer.body)
            ),
        }
    }
    assert_eq!(deployments_with_key(&db.db, "fleet-key").await, 1);
    // One run in the whole fleet: the shared store, not the database guard, answered the
    // other 99 (whose answers would look the same either way).
    assert_eq!(fleet_executions(&fleet[..]).await, Executions::exactly(1));

    // Every later retry, on either instance, gets the replay.
    for instance in fleet.iter() {
        let again = create(&client, instance, &token, "fleet-key").await;
        assert_eq!(again.status, StatusCode::CREATED);
        assert!(again.replayed);
        assert_eq!(again.body, original.body);
    }
    assert_eq!(deployments_with_key(&db.db, "fleet-key").await, 1);
    assert_eq!(fleet_executions(&fleet[..]).await, Executions::exactly(1));
}

/// The first request completes on one instance; the retry lands on the other.
async fn retry_on_the_other_instance_replays(kind: StoreKind) {
    let db = TestDb::new(Backend::Postgres).await;
    let store = Store::new(kind);
    let a = Instance::start(&db.url, &store, None).await;
    let b = Instance::start(&db.url, &store, None).await;
    let token = mint_token(&db.url, "alice");
    let client = reqwest::Client::new();
    for n in 0..10 {
        let key = format!("hop-{n}");
        let first = create(&client, &a, &token, &key).await;
        assert_eq!(first.status, StatusCode::CREATED);
        assert!(!first.replayed);
        let retry = create(&client, &b, &token, &key).await;
        assert_eq!(retry.status, StatusCode::CREATED);
        assert!(
            retry.replayed,
            "the retry on the other instance is a replay"
        );
        assert_eq!(retry.body, first.body);
        assert_eq!(retry.location, first.location);
        assert_eq!(deployments_with_key(&db.db, &key).await, 1);
    }
    // Every retry was a replay from the shared store: B ran nothing.
    assert_eq!(a.executions().await, Executions::exactly(10));
    assert_eq!(b.executions().await, Executions::exactly(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_concurrent_creates_across_instances() {
    concurrent_creates_across_instances(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_concurrent_creates_across_instances() {
    concurrent_creates_across_instances(StoreKind::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_concurrent_creates_across_instances() {
    concurrent_creates_across_instances(StoreKind::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_retry_on_the_other_instance_replays() {
    retry_on_the_other_instance_replays(StoreKind::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_cluster_retry_on_the_other_instance_replays() {
    retry_on_the_other_instance_replays(StoreKind::RedisCluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_retry_on_the_other_instance_replays() {
    retry_on_the_other_instance_replays(StoreKind::Postgres).await;
}

/// A `redis-server` of this test's own, on a free port, that it may stop and start.
struct PrivateRedis {
    child: Option<Child>,
}

impl PrivateRedis {
    fn start(port: u16) -> Self {
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{bin}` ({e}): install Redis (apt-get install redis-server) or set REDIS_SERVER_BIN")
            });
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child: Some(child) }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Redis stops in the middle of traffic and comes back: during the outage every create gets
/// 503 with Retry-After and nothing executes twice; afterwards the instance recovers by
/// itself, and every key ends with exactly one deployment.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_outage_fails_closed_and_recovers() {
    let db = TestDb::new(Backend::Postgres).await;
    let redis_port = free_port();
    let mut redis = PrivateRedis::start(redis_port);
    let store = Store {
        spec: format!("redis://127.0.0.1:{redis_port}"),
        namespace: "outage:".into(),
    };
    let instance = Instance::start(&db.url, &store, None).await;
    let token = mint_token(&db.url, "alice");
    let client = reqwest::Client::new();

    for n in 0..20 {
        let answer = create(&client, &instance, &token, &format!("before-{n}")).await;
        assert_eq!(answer.status, StatusCode::CREATED);
    }
    assert_eq!(instance.executions().await, Executions::exactly(20));

    redis.stop();
    let mut outage_keys = Vec::new();
    for n in 0..20 {
        let key = format!("during-{n}");
        let response = client
            .post(instance.url("/api/deployments"))
            .bearer_auth(&token)
            .header("idempotency-key", &key)
            .json(&deployment("fleet"))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key("retry-after"));
        let problem: serde_json::Value = response.json().await.unwrap();
        assert!(
            problem["type"]
                .as_str()
                .unwrap()
                .ends_with("store-unavailable"),
            "{problem}"
        );
        assert_eq!(
            deployments_with_key(&db.db, &key).await,
            0,
            "nothing executed"
        );
        outage_keys.push(key);
    }
    // A retry of a key completed before the outage is refused too, not re-executed.
    let answer = create(&client, &instance, &token, "before-0").await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    // Nothing ran during the outage (the row checks above would miss a run that failed).
    assert_eq!(instance.executions().await, Executions::exactly(20));

    let _redis = PrivateRedis::start(redis_port);
    // The instance reconnects by itself: retry each outage key until it succeeds.
    let deadline = Instant::now() + Duration::from_secs(20);
    for key in &outage_keys {
        loop {
            let answer = create(&client, &instance, &token, key).await;
            if answer.status == StatusCode::CREATED {
                break;
            }
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
            assert!(Instant::now() < deadline, "the instance did not recover");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert_eq!(deployments_with_key(&db.db, key).await, 1);
    }
    assert_eq!(instance.executions().await, Executions::exactly(40));
    // Keys from before the outage: Redis lost their records (it keeps nothing on disk), so
    // the handler runs again and the database guard (within the TTL) answers the retry with
    // the same deployment: a second execution, caught by the second line of defence.
    let again = create(&client, &instance, &token, "before-0").await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed);
    assert_eq!(deployments_with_key(&db.db, "before-0").await, 1);
    assert_eq!(
        instance.executions().await,
        Executions {
            handler: 41,
            layer: 41,
            guard_hits: 1,
        }
    );
}
