//! The load generator: keep-alive HTTP/1.1 connections at a fixed concurrency, each sending
//! its next request as soon as the previous answer is read (closed loop, like `wrk`).
//!
//! It runs in its own process, never in the server's, on a one-worker runtime.

use std::{
    fmt,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::ValueEnum;
use hdrhistogram::Histogram;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::{net::TcpStream, sync::Barrier, task::JoinSet};

use crate::{app::USER_HEADER, config::Config};

/// The payload of every request: a small JSON document, like a real create call.
const BODY: &[u8] = br#"{"name":"web","image":"registry.example/web:1.4.2","replicas":3}"#;

/// Keep-alive connections in the timed scenarios (`run --concurrency`'s default), and the
/// clients of `redis-ceiling`'s `redis-benchmark`.
pub const CONCURRENCY: usize = 32;

/// Requests that share one key in `same-key-64`.
pub const SAME_KEY_CONCURRENCY: usize = 64;

/// Retry50 keeps this many of a connection's completed keys to retry.
const RETRY_WINDOW: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Every request carries a new key: claim, execute, store.
    Unique,
    /// One key, stored once; every request replays it.
    Replay,
    /// Half the requests retry a key the same connection already completed, half are new.
    Retry50,
    /// 64 concurrent requests with one fresh key, repeated for a number of rounds: the
    /// handler must run exactly once per key.
    #[value(name = "same-key-64")]
    #[serde(rename = "same-key-64")]
    SameKey64,
    /// POST without an Idempotency-Key: the layer must pass it through, the handler runs
    /// every time.
    NoKey,
}

impl Scenario {
    pub const ALL: [Self; 5] = [
        Self::Unique,
        Self::Replay,
        Self::Retry50,
        Self::SameKey64,
        Self::NoKey,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Unique => "unique",
            Self::Replay => "replay",
            Self::Retry50 => "retry50",
            Self::SameKey64 => "same-key-64",
            Self::NoKey => "no-key",
        }
    }

    /// Whether `run` measures this scenario against `config`: `no-key` only where there is no
    /// database, so that it adds little to a full run.
    pub fn runs_for(self, config: Config) -> bool {
        match self {
            Self::NoKey => !(config.needs_postgres() || config.needs_sqlite()),
            Self::Unique | Self::Replay | Self::Retry50 | Self::SameKey64 => true,
        }
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Who sends a request: the scope header, and the session cookie where the server set one.
#[derive(Debug, Clone)]
pub struct Identity {
    user: HeaderValue,
    cookie: Option<HeaderValue>,
}

/// One keep-alive connection.
pub struct Client {
    addr: SocketAddr,
    sender: SendRequest<Full<Bytes>>,
}

/// What one request got.
struct Reply {
    status: StatusCode,
    replayed: bool,
    latency: Duration,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            // Ends when the server closes the connection or the sender is dropped.
            let _ = connection.await;
        });
        Ok(Self { addr, sender })
    }

    async fn reconnect(&mut self) -> anyhow::Result<()> {
        *self = Self::connect(self.addr).await?;
        Ok(())
    }

    async fn send(
        &mut self,
        request: Request<Full<Bytes>>,
    ) -> Result<http::Response<Bytes>, hyper::Error> {
        self.sender.ready().await?;
        let response = self.sender.send_request(request).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(http::Response::from_parts(parts, body))
    }

    /// `POST /session` as `user`: keeps the session cookie if the server sets one.
    pub async fn identify(&mut self, user: &str) -> anyhow::Result<Identity> {
        let request = Request::post("/session")
            .header(header::HOST, "127.0.0.1")
            .header(USER_HEADER, user)
            .body(Full::new(Bytes::new()))?;
        let response = self.send(request).await?;
        if !response.status().is_success() {
            bail!("POST /session answered {}", response.status());
        }
        let cookie = response
            .headers()
            .get(header::SET_COOKIE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(HeaderValue::from_str)
            .transpose()?;
        Ok(Identity {
            user: HeaderValue::from_str(user)?,
            cookie,
        })
    }

    /// The handler's execution count (`GET /stats`).
    pub async fn executions(&mut self) -> anyhow::Result<u64> {
        let body = self.control(Method::GET, "/stats").await?;
        let stats: serde_json::Value = serde_json::from_slice(&body)?;
        stats["executions"]
            .as_u64()
            .context("GET /stats without an execution count")
    }

    /// `POST /stats/reset`.
    pub async fn reset(&mut self) -> anyhow::Result<()> {
        self.control(Method::POST, "/stats/reset").await.map(drop)
    }

    async fn control(&mut self, method: Method, path: &str) -> anyhow::Result<Bytes> {
        let request = Request::builder()
            .method(method)
            .uri(path)
            .header(header::HOST, "127.0.0.1")
            .body(Full::new(Bytes::new()))?;
        let response = self.send(request).await?;
        if !response.status().is_success() {
            bail!("{path} answered {}", response.status());
        }
        Ok(response.into_body())
    }

    /// One `POST /api/deployments`, with `key` as its `idempotency-key` if any, timed from
    /// before the send to the last body byte.
    async fn post(
        &mut self,
        identity: &Identity,
        key: Option<&str>,
    ) -> Result<Reply, hyper::Error> {
        let mut request = Request::post("/api/deployments")
            .header(header::HOST, "127.0.0.1")
            .header(header::CONTENT_TYPE, "application/json")
            .header(USER_HEADER, identity.user.clone());
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        if let Some(cookie) = &identity.cookie {
            request = request.header(header::COOKIE, cookie.clone());
        }
        let request = request
            .body(Full::new(Bytes::from_static(BODY)))
            .expect("a valid request");
        let start = Instant::now();
        let response = self.send(request).await?;
        let latency = start.elapsed();
        let headers = response.headers();
        // Ours and `idempotent` say `idempotent-replayed`, axum-idempotent `idempotency-replayed`.
        let replayed = ["idempotent-replayed", "idempotency-replayed"]
            .iter()
            .any(|name| headers.get(*name).is_some_and(|v| v == "true"));
        Ok(Reply {
            status: response.status(),
            replayed,
            latency,
        })
    }
}

/// Counts and latencies of one phase, mergeable across connections.
#[derive(Debug, Clone)]
pub struct Tally {
    latency_us: Histogram<u64>,
    /// 2xx answers (fresh and replayed).
    pub ok: u64,
    /// 2xx answers marked as replays.
    pub replayed: u64,
    /// 409: the key was in flight.
    pub conflict: u64,
    /// Any other status.
    pub other_status: u64,
    /// Connection-level failures.
    pub transport_errors: u64,
    /// Keys sent for the first time that were answered 2xx: each must have run the handler
    /// exactly once (none in `no-key`, which sends no keys).
    pub new_keys: u64,
}

impl Tally {
    fn new() -> Self {
        Self {
            // 1 µs to 60 s at 3 significant digits.
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
            ok: 0,
            replayed: 0,
            conflict: 0,
            other_status: 0,
            transport_errors: 0,
            new_keys: 0,
        }
    }

    fn record(&mut self, reply: &Reply) {
        let micros = u64::try_from(reply.latency.as_micros()).unwrap_or(u64::MAX);
        self.latency_us.saturating_record(micros.max(1));
        if reply.status.is_success() {
            self.ok += 1;
            self.replayed += u64::from(reply.replayed);
        } else if reply.status == StatusCode::CONFLICT {
            self.conflict += 1;
        } else {
            self.other_status += 1;
        }
    }

    fn merge(&mut self, other: &Self) {
        self.latency_us
            .add(&other.latency_us)
            .expect("histograms with the same bounds");
        self.ok += other.ok;
        self.replayed += other.replayed;
        self.conflict += other.conflict;
        self.other_status += other.other_status;
        self.transport_errors += other.transport_errors;
        self.new_keys += other.new_keys;
    }

    pub fn requests(&self) -> u64 {
        self.latency_us.len()
    }

    pub fn quantile_us(&self, q: f64) -> u64 {
        self.latency_us.value_at_quantile(q)
    }
}

/// A small, fast, seeded generator: which key a retry50 request uses.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// One connection's share of a timed phase.
async fn drive(
    mut client: Client,
    identity: Identity,
    scenario: Scenario,
    tag: Arc<str>,
    connection: usize,
    deadline: Instant,
) -> Tally {
    let mut tally = Tally::new();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15 ^ (connection as u64 + 1));
    let mut completed: Vec<String> = Vec::with_capacity(RETRY_WINDOW);
    let mut sequence = 0u64;
    while Instant::now() < deadline {
        let reuse = match scenario {
            Scenario::Replay => true,
            Scenario::Retry50 => rng.next() & 1 == 0 && !completed.is_empty(),
            Scenario::Unique | Scenario::SameKey64 | Scenario::NoKey => false,
        };
        let key = if scenario == Scenario::NoKey {
            None
        } else if scenario == Scenario::Replay {
            Some(format!("replay-{tag}"))
        } else if reuse {
            Some(completed[rng.next() as usize % completed.len()].clone())
        } else {
            sequence += 1;
            Some(format!("{tag}-c{connection}-{sequence}"))
        };
        match client.post(&identity, key.as_deref()).await {
            Ok(reply) => {
                tally.record(&reply);
                if let Some(key) = key.filter(|_| !reuse && reply.status.is_success()) {
                    tally.new_keys += 1;
                    if scenario == Scenario::Retry50 {
                        if completed.len() < RETRY_WINDOW {
                            completed.push(key);
                        } else {
                            let slot = rng.next() as usize % RETRY_WINDOW;
                            completed[slot] = key;
                        }
                    }
                }
            }
            Err(_) => {
                tally.transport_errors += 1;
                if client.reconnect().await.is_err() {
                    break;
                }
            }
        }
    }
    tally
}

/// The identities of a scenario: one per connection, or one shared by all of them where the
/// connections must share keys (a key belongs to one user).
async fn identities(
    addr: SocketAddr,
    scenario: Scenario,
    connections: usize,
) -> anyhow::Result<Vec<Identity>> {
    let mut client = Client::connect(addr).await?;
    match scenario {
        Scenario::Unique | Scenario::Retry50 | Scenario::NoKey => {
            let mut all = Vec::with_capacity(connections);
            for n in 0..connections {
                all.push(client.identify(&format!("user-{n}")).await?);
            }
            Ok(all)
        }
        Scenario::Replay | Scenario::SameKey64 => {
            let shared = client.identify("shared-user").await?;
            Ok(vec![shared; connections])
        }
    }
}

async fn timed_phase(
    addr: SocketAddr,
    scenario: Scenario,
    identities: &[Identity],
    duration: Duration,
    tag: &str,
) -> anyhow::Result<(Tally, Duration)> {
    let mut clients = Vec::with_capacity(identities.len());
    for _ in identities {
        clients.push(Client::connect(addr).await?);
    }
    let tag: Arc<str> = tag.into();
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = JoinSet::new();
    for (n, (client, identity)) in clients.into_iter().zip(identities).enumerate() {
        tasks.spawn(drive(
            client,
            identity.clone(),
            scenario,
            Arc::clone(&tag),
            n,
            deadline,
        ));
    }
    let mut total = Tally::new();
    while let Some(tally) = tasks.join_next().await {
        total.merge(&tally?);
    }
    Ok((total, start.elapsed()))
}

/// What a scenario measured against one server.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub tally: Tally,
    pub elapsed: Duration,
    /// Handler executions during the measured phase (`/stats`).
    pub executions: u64,
    /// same-key-64: handler executions per round (one key per round).
    pub executions_per_key: Vec<u64>,
    /// The server's CPU time during the measured phase, where its pid was given (not in
    /// same-key-64).
    pub server_cpu: Option<CpuTicks>,
}

/// A process's CPU time, in clock ticks, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// `utime`: in user mode.
    pub user: u64,
    /// `stime`: in the kernel.
    pub system: u64,
}

impl CpuTicks {
    /// `/proc` counts in USER_HZ ticks, which is 100 per second on Linux: 10 ms each.
    pub const MICROS_PER_TICK: f64 = 10_000.0;

    /// The CPU time of process `pid` so far, all its threads together.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let path = format!("/proc/{pid}/stat");
        let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        Self::parse(&stat).with_context(|| format!("parsing {path}"))
    }

    /// Parses a `/proc/<pid>/stat` line: fields 14 (`utime`) and 15 (`stime`), counted after
    /// the last `)`, since the command name (field 2) may hold spaces and parentheses.
    fn parse(stat: &str) -> anyhow::Result<Self> {
        let (_, rest) = stat
            .rsplit_once(')')
            .context("no `)` closing the command name")?;
        // `rest` starts at field 3 (the state).
        let mut fields = rest.split_whitespace().skip(14 - 3);
        let mut next = |name: &str| -> anyhow::Result<u64> {
            fields
                .next()
                .with_context(|| format!("no {name} field"))?
                .parse()
                .with_context(|| format!("{name} is not a number"))
        };
        Ok(Self {
            user: next("utime")?,
            system: next("stime")?,
        })
    }

    /// The time spent since `earlier`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
        }
    }
}

/// Settings of one scenario run.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    pub concurrency: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// same-key-64 rounds.
    pub rounds: usize,
}

/// Runs `scenario` against the server at `addr`; `tag` makes its keys unique. With the
/// server's `pid`, its CPU time over the measured phase is part of the outcome.
pub async fn run(
    addr: SocketAddr,
    pid: Option<u32>,
    scenario: Scenario,
    plan: Plan,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let mut control = Client::connect(addr).await?;
    if scenario == Scenario::SameKey64 {
        return same_key(addr, &mut control, plan.rounds, tag).await;
    }
    let identities = identities(addr, scenario, plan.concurrency).await?;
    if scenario == Scenario::Replay {
        // Store the response once; everything after replays it.
        let mut first = Client::connect(addr).await?;
        let key = format!("replay-{tag}");
        let reply = first.post(&identities[0], Some(&key)).await?;
        if !reply.status.is_success() {
            bail!(
                "the first request of the replay scenario answered {}",
                reply.status
            );
        }
    }
    if !plan.warmup.is_zero() {
        timed_phase(addr, scenario, &identities, plan.warmup, &format!("{tag}w")).await?;
    }
    control.reset().await?;
    let cpu_before = pid.map(CpuTicks::of).transpose()?;
    let (tally, elapsed) = timed_phase(addr, scenario, &identities, plan.duration, tag).await?;
    let server_cpu = match (pid, cpu_before) {
        (Some(pid), Some(before)) => Some(CpuTicks::of(pid)?.since(before)),
        _ => None,
    };
    let executions = control.executions().await?;
    Ok(Outcome {
        tally,
        elapsed,
        executions,
        executions_per_key: Vec::new(),
        server_cpu,
    })
}

/// `same-key-64`: per round, 64 connections send one fresh key at the same moment; the
/// execution count after the round is how often the handler ran for that key.
async fn same_key(
    addr: SocketAddr,
    control: &mut Client,
    rounds: usize,
    tag: &str,
) -> anyhow::Result<Outcome> {
    let identity = identities(addr, Scenario::SameKey64, 1).await?.remove(0);
    let mut clients = Vec::with_capacity(SAME_KEY_CONCURRENCY);
    for _ in 0..SAME_KEY_CONCURRENCY {
        clients.push(Client::connect(addr).await?);
    }
    let mut total = Tally::new();
    let mut per_key = Vec::with_capacity(rounds);
    let start = Instant::now();
    for round in 0..rounds {
        control.reset().await?;
        let key: Arc<str> = format!("same-{tag}-{round}").into();
        let barrier = Arc::new(Barrier::new(SAME_KEY_CONCURRENCY));
        let mut tasks = JoinSet::new();
        for mut client in clients.drain(..) {
            let (identity, key, barrier) =
                (identity.clone(), Arc::clone(&key), Arc::clone(&barrier));
            tasks.spawn(async move {
                barrier.wait().await;
                let reply = client.post(&identity, Some(&key)).await;
                (client, reply)
            });
        }
        let mut answered = false;
        while let Some(joined) = tasks.join_next().await {
            let (mut client, reply) = joined?;
            match reply {
                Ok(reply) => {
                    answered |= reply.status.is_success();
                    total.record(&reply);
                }
                Err(_) => {
                    total.transport_errors += 1;
                    client.reconnect().await?;
                }
            }
            clients.push(client);
        }
        total.new_keys += u64::from(answered);
        per_key.push(control.executions().await?);
    }
    Ok(Outcome {
        tally: total,
        elapsed: start.elapsed(),
        executions: per_key.iter().sum(),
        executions_per_key: per_key,
        server_cpu: None,
    })
}

#[cfg(test)]
mod tests {
    use super::CpuTicks;

    #[test]
    fn parses_proc_stat_with_a_command_name_holding_spaces_and_parentheses() {
        // Fields 14 and 15 are 1234 and 567; the name `a b) (c` would break a split on spaces
        // or on the first `)`.
        let stat = "4242 (a b) (c) S 1 4242 4242 0 -1 4194560 1500 0 3 0 1234 567 0 0 20 0 3 0 \
                    98765 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 17663 0 0 0 17 \
                    1 0 0 0 0 0\n";
        assert_eq!(
            CpuTicks::parse(stat).unwrap(),
            CpuTicks {
                user: 1234,
                system: 567
            }
        );
    }

    #[test]
    fn refuses_a_truncated_stat_line() {
        assert!(CpuTicks::parse("4242 (x) S 1 2 3").is_err());
        assert!(CpuTicks::parse("").is_err());
    }

    #[test]
    fn reads_its_own_process() {
        let ticks = CpuTicks::of(std::process::id()).unwrap();
        assert_eq!(ticks.since(ticks), CpuTicks { user: 0, system: 0 });
    }
}
