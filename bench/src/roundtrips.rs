//! `roundtrips`: what each kind of request costs the store, on private servers.
//!
//! The app runs in-process (no HTTP: only store traffic matters) against a `redis-server` and
//! a PostgreSQL cluster of our own, so no one else's commands enter the counts. Two counts per
//! request kind:
//! - commands or statements the server executed: `INFO commandstats` deltas (Redis),
//!   `pg_stat_statements` deltas (PostgreSQL);
//! - round trips: writes the client sent, through a counting TCP proxy. They include what is
//!   not a statement, such as sqlx's connection pings.
//!
//! Statements are prepared and scripts loaded by a warm-up pass first, as in a running service.

use std::{collections::BTreeMap, path::Path, sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use axum::{
    Router,
    body::Body,
    extract::State,
    http::{HeaderMap, Request, StatusCode},
    routing::post,
};
use tokio::sync::Notify;
use tower::ServiceExt;
use tower_idempotency_postgres::sqlx::{self, PgPool};

use crate::{
    results::{self, RoundTripResults, RoundTrips},
    services::{self, CountingProxy, PrivatePostgres, PrivateRedis},
};

/// Lets a test hold a request inside the handler, to observe what a concurrent retry costs.
#[derive(Default)]
struct Gate {
    entered: Notify,
    release: Notify,
}

async fn handler(State(gate): State<Arc<Gate>>, headers: HeaderMap) -> (StatusCode, &'static str) {
    if headers.contains_key("x-hold") {
        gate.entered.notify_one();
        gate.release.notified().await;
    }
    (StatusCode::CREATED, r#"{"id":1,"status":"queued"}"#)
}

fn app<L>(layer: L, gate: Arc<Gate>) -> Router
where
    L: tower::Layer<axum::routing::Route> + Clone + Send + Sync + 'static,
    L::Service: tower::Service<Request<Body>, Error = std::convert::Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    <L::Service as tower::Service<Request<Body>>>::Response: axum::response::IntoResponse + 'static,
    <L::Service as tower::Service<Request<Body>>>::Future: Send + 'static,
{
    Router::new()
        .route("/api/deployments", post(handler))
        .with_state(gate)
        .layer(layer)
}

fn request(key: &str, body: &'static str, hold: bool) -> Request<Body> {
    let mut builder = Request::post("/api/deployments")
        .header("content-type", "application/json")
        .header("idempotency-key", key)
        .header("x-user", "user-1");
    if hold {
        builder = builder.header("x-hold", "1");
    }
    builder.body(Body::from(body)).expect("a valid request")
}

const BODY: &str = r#"{"name":"web","replicas":3}"#;
const OTHER_BODY: &str = r#"{"name":"web","replicas":4}"#;

/// Where commands are counted.
enum Counter {
    Redis(redis::aio::MultiplexedConnection),
    Postgres(PgPool),
}

impl Counter {
    /// Executions so far, by command or statement.
    async fn snapshot(&mut self) -> anyhow::Result<BTreeMap<String, u64>> {
        let mut counts = BTreeMap::new();
        match self {
            Self::Redis(con) => {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(con)
                    .await?;
                for line in info.lines() {
                    let Some((name, stats)) = line
                        .strip_prefix("cmdstat_")
                        .and_then(|l| l.split_once(':'))
                    else {
                        continue;
                    };
                    let calls = stats
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    counts.insert(name.to_uppercase(), calls);
                }
            }
            Self::Postgres(pool) => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT query, calls FROM pg_stat_statements \
                     WHERE query NOT LIKE '%pg_stat_statements%'",
                )
                .fetch_all(&*pool)
                .await?;
                for (query, calls) in rows {
                    *counts.entry(statement_name(&query)).or_default() += calls as u64;
                }
            }
        }
        Ok(counts)
    }
}

/// A short name for a statement: its verb and what it changes.
fn statement_name(query: &str) -> String {
    let q = query.trim();
    let verb = q.split_whitespace().next().unwrap_or("?").to_uppercase();
    match verb.as_str() {
        "INSERT" if q.contains("ON CONFLICT") => {
            "INSERT … ON CONFLICT DO UPDATE (claim)".to_owned()
        }
        "UPDATE" if q.contains("SET response") => "UPDATE … SET response (complete)".to_owned(),
        "UPDATE" => "UPDATE … SET expires_at (renew)".to_owned(),
        "DELETE" if q.contains("token") => "DELETE (release)".to_owned(),
        _ => q.chars().take(48).collect(),
    }
}

fn delta(before: &BTreeMap<String, u64>, after: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    after
        .iter()
        .filter_map(|(name, &n)| {
            let d = n.saturating_sub(before.get(name).copied().unwrap_or(0));
            (d > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// Long enough for what a store does after the answer (sqlx returning the connection to its
/// pool, with a ping) to land in the counts.
const SETTLE: Duration = Duration::from_millis(150);

struct Probe<'a> {
    store: &'a str,
    app: Router,
    gate: Arc<Gate>,
    counter: Counter,
    proxy: &'a CountingProxy,
}

impl Probe<'_> {
    /// One request, and the store traffic it caused.
    async fn measure(&mut self, label: &str, request: Request<Body>) -> anyhow::Result<RoundTrips> {
        let before = self.counter.snapshot().await?;
        let writes = self.proxy.writes();
        let response = self.app.clone().oneshot(request).await?;
        tokio::time::sleep(SETTLE).await;
        let after = self.counter.snapshot().await?;
        let mut commands = delta(&before, &after);
        if matches!(self.counter, Counter::Redis(_)) {
            // The first snapshot's own INFO is counted by the second; a store's INFO (the
            // peer's claim script runs one) is not ours to hide.
            if let Some(info) = commands.iter_mut().find(|(name, _)| name == "INFO") {
                info.1 -= 1;
            }
            commands.retain(|(_, n)| *n > 0);
        }
        Ok(RoundTrips {
            store: self.store.to_owned(),
            request: label.to_owned(),
            status: response.status().as_u16(),
            commands,
            client_writes: self.proxy.writes() - writes,
        })
    }

    /// First request, replay, conflicting request (409) and reused key (422 / 400).
    async fn sequence(&mut self, run: &str) -> anyhow::Result<Vec<RoundTrips>> {
        let (key, held_key) = (format!("{run}-k1"), format!("{run}-k2"));
        let mut rows = vec![
            self.measure(
                "first request (executes, stores)",
                request(&key, BODY, false),
            )
            .await?,
            self.measure("replay", request(&key, BODY, false)).await?,
            self.measure(
                "same key, other body (422; idempotent: 400)",
                request(&key, OTHER_BODY, false),
            )
            .await?,
        ];
        let held = tokio::spawn(self.app.clone().oneshot(request(&held_key, BODY, true)));
        tokio::time::timeout(Duration::from_secs(5), self.gate.entered.notified())
            .await
            .context("the held request never reached the handler")?;
        tokio::time::sleep(SETTLE).await;
        rows.push(
            self.measure(
                "retry while in flight (409)",
                request(&held_key, BODY, false),
            )
            .await?,
        );
        self.gate.release.notify_one();
        held.await??;
        tokio::time::sleep(SETTLE).await;
        Ok(rows)
    }

    /// A warm-up pass (connections, prepared statements, scripts), then the measured one.
    async fn run(mut self) -> anyhow::Result<Vec<RoundTrips>> {
        self.sequence("warmup").await?;
        let rows = self.sequence("measured").await?;
        for row in &rows {
            eprintln!(
                "roundtrips: {:<22} {:<45} {} -> {:?}, {} round trips",
                row.store, row.request, row.status, row.commands, row.client_writes
            );
        }
        Ok(rows)
    }
}

fn ours<St: tower_idempotency::store::IdempotencyStore>(
    store: St,
) -> tower_idempotency::IdempotencyLayer<St> {
    tower_idempotency::IdempotencyLayer::new(store).scope(|parts| {
        Some(
            parts
                .headers
                .get("x-user")?
                .to_str()
                .ok()?
                .to_owned()
                .into(),
        )
    })
}

fn peer<St>(store: St) -> idempotent::middleware::IdempotencyLayer<St> {
    idempotent::middleware::IdempotencyLayer::new(store).scope(|parts| {
        parts
            .headers
            .get("x-user")?
            .to_str()
            .ok()
            .map(str::to_owned)
    })
}

async fn redis_rows() -> anyhow::Result<Vec<RoundTrips>> {
    let server = PrivateRedis::start().await?;
    let proxy = CountingProxy::start(services::socket_of(&server.url)?).await?;
    let via_proxy = format!("redis://{}", proxy.addr);
    let mut rows = Vec::new();

    let gate = Arc::new(Gate::default());
    let store = tower_idempotency_redis::RedisStore::connect(&via_proxy).await?;
    rows.extend(
        Probe {
            store: "ours: RedisStore",
            app: app(ours(store), Arc::clone(&gate)),
            gate,
            counter: Counter::Redis(services::redis(&server.url).await?),
            proxy: &proxy,
        }
        .run()
        .await?,
    );

    let gate = Arc::new(Gate::default());
    let store = idempotent::valkey::ValkeyStore::with_url(via_proxy.clone())
        .prefix("peer")
        .try_build()
        .await?;
    rows.extend(
        Probe {
            store: "idempotent: Valkey store",
            app: app(peer(store), Arc::clone(&gate)),
            gate,
            counter: Counter::Redis(services::redis(&server.url).await?),
            proxy: &proxy,
        }
        .run()
        .await?,
    );
    Ok(rows)
}

async fn postgres_rows() -> anyhow::Result<Vec<RoundTrips>> {
    let server = PrivatePostgres::start().await?;
    let admin = services::postgres(&server.url).await?;
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .execute(&admin)
        .await?;
    let proxy = CountingProxy::start(services::socket_of(&server.url)?).await?;
    let via_proxy = format!("postgres://postgres@{}/postgres", proxy.addr);
    // As shipped: sqlx's pool defaults (ping before use included).
    let store = tower_idempotency_postgres::PostgresStore::connect(&via_proxy).await?;
    store.migrate().await?;
    let gate = Arc::new(Gate::default());
    let rows = Probe {
        store: "ours: PostgresStore",
        app: app(ours(store), Arc::clone(&gate)),
        gate,
        counter: Counter::Postgres(admin),
        proxy: &proxy,
    }
    .run()
    .await?;
    if rows.is_empty() {
        bail!("no rows measured");
    }
    Ok(rows)
}

/// `roundtrips`.
pub fn run(results_dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (rows, skipped) = runtime.block_on(async {
        let mut rows = Vec::new();
        let mut skipped = Vec::new();
        match redis_rows().await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => skipped.push(format!("Redis: {e:#}")),
        }
        match postgres_rows().await {
            Ok(mut r) => rows.append(&mut r),
            Err(e) => skipped.push(format!("PostgreSQL: {e:#}")),
        }
        (rows, skipped)
    });
    for s in &skipped {
        eprintln!("roundtrips: skipped {s}");
    }
    results::save(
        &results_dir.join("roundtrips.json"),
        &RoundTripResults {
            command: results::command_line(),
            rows,
            skipped,
        },
    )
}
