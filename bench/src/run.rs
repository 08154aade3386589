//! `run`: every scenario against every configuration, side by side.
//!
//! Each (configuration, scenario) gets a fresh server process, so no run inherits another's
//! records, and configurations are interleaved within each round (their order rotated from
//! round to round), so a noisy moment on the shared machine hits them all alike.

use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};

use crate::{
    config::{Backends, Config},
    load::{self, Client, Plan, Scenario},
    results::{self, LoadResults, LoadSettings, Machine, Measurement},
    services,
};

/// Settings of `run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub quick: bool,
    pub configs: Vec<Config>,
    pub scenarios: Vec<Scenario>,
    pub duration: Duration,
    pub warmup: Duration,
    pub concurrency: usize,
    pub rounds: usize,
    pub same_key_rounds: usize,
    /// Handler work in same-key-64, so that the 64 requests overlap as they would with a
    /// handler that writes to a database.
    pub same_key_work: Duration,
    pub redis_url: String,
    pub database_url: String,
    pub results: PathBuf,
}

/// A server process serving one configuration; killed on drop.
struct Server {
    child: Child,
    addr: SocketAddr,
    backends: Backends,
    config: Config,
}

static SERVERS: AtomicU32 = AtomicU32::new(0);

impl Server {
    async fn start(config: Config, options: &RunOptions, work: Duration) -> anyhow::Result<Self> {
        let port = services::free_port()?;
        let backends = Backends {
            redis_url: options.redis_url.clone(),
            database_url: options.database_url.clone(),
            namespace: format!(
                "lb{}n{}",
                std::process::id(),
                SERVERS.fetch_add(1, Ordering::Relaxed)
            ),
        };
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "serve",
                "--config",
                config.name(),
                "--port",
                &port.to_string(),
            ])
            .args(["--namespace", &backends.namespace])
            .args(["--work-ms", &work.as_millis().to_string()])
            .args(["--redis-url", &backends.redis_url])
            .args(["--database-url", &backends.database_url])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting the server process")?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("the {config} server exited at start ({status})");
            }
            if let Ok(mut client) = Client::connect(addr).await
                && client.executions().await.is_ok()
            {
                break;
            }
            if start.elapsed() > Duration::from_secs(30) {
                bail!("the {config} server did not answer within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Self {
            child,
            addr,
            backends,
            config,
        })
    }

    /// Kills the server and deletes what it stored in the shared Redis or PostgreSQL, or in
    /// its SQLite file.
    async fn stop(mut self) -> anyhow::Result<()> {
        let _ = self.child.kill().await;
        if self.config.needs_redis() {
            services::redis_delete(&self.backends.redis_url, &self.backends.redis_pattern())
                .await?;
        }
        if self.config.needs_postgres() {
            for table in [self.backends.table(), self.backends.orders_table()] {
                services::postgres_drop(&self.backends.database_url, &table).await?;
            }
        }
        if self.config.needs_sqlite() {
            let dir = self.backends.sqlite_dir();
            if dir.exists() {
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        Ok(())
    }
}

/// One scenario against a fresh server of one configuration.
async fn measure(
    config: Config,
    scenario: Scenario,
    options: &RunOptions,
    plan: Plan,
    work: Duration,
    round: usize,
) -> anyhow::Result<Measurement> {
    let server = Server::start(config, options, work).await?;
    let tag = format!("{}r{round}", server.backends.namespace);
    // The pid the server was spawned with: `None` only once it has been reaped.
    let pid = server.child.id();
    if pid.is_none() && scenario != Scenario::SameKey64 {
        server.stop().await?;
        bail!("the {config} server exited before the {scenario} load");
    }
    let outcome = load::run(server.addr, pid, scenario, plan, &tag).await;
    server.stop().await?;
    let outcome = outcome.with_context(|| format!("{scenario} against {config}"))?;
    Ok(Measurement::new(config, scenario, round + 1, &outcome))
}

/// Runs every scenario against every configuration and stores the measurements. A
/// configuration that cannot run is recorded as failed, not fatal: the run goes on.
pub fn run(options: &RunOptions) -> anyhow::Result<LoadResults> {
    // One worker, like the server: each process gets one of the two cores.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(run_all(options))
}

async fn run_all(options: &RunOptions) -> anyhow::Result<LoadResults> {
    let redis = if options.configs.iter().any(|c| c.needs_redis()) {
        Some(services::redis_version(&options.redis_url).await?)
    } else {
        services::redis_version(&options.redis_url).await.ok()
    };
    let postgres = if options.configs.iter().any(|c| c.needs_postgres()) {
        Some(services::postgres_version(&options.database_url).await?)
    } else {
        services::postgres_version(&options.database_url).await.ok()
    };
    let machine = Machine::describe(redis, postgres);
    let plan = Plan {
        concurrency: options.concurrency,
        warmup: options.warmup,
        duration: options.duration,
        rounds: options.same_key_rounds,
    };
    let mut measurements = Vec::new();
    for round in 0..options.rounds {
        for &scenario in &options.scenarios {
            let mut order = options.configs.clone();
            let shift = round % order.len().max(1);
            order.rotate_left(shift);
            for config in order.into_iter().filter(|&c| scenario.runs_for(c)) {
                let work = if scenario == Scenario::SameKey64 {
                    options.same_key_work
                } else {
                    Duration::ZERO
                };
                let m = match measure(config, scenario, options, plan, work, round).await {
                    Ok(m) => m,
                    Err(error) => Measurement::failed(config, scenario, round + 1, &error),
                };
                let failures = m.failures();
                eprintln!(
                    "round {}/{} {scenario:>11} {config:>17}: {:>8.0} req/s  p50 {:>6} µs  p99 {:>6} µs  {}",
                    round + 1,
                    options.rounds,
                    m.rps,
                    m.p50_us,
                    m.p99_us,
                    if failures.is_empty() {
                        "ok".to_owned()
                    } else {
                        format!("FAILURE: {}", failures.join("; "))
                    }
                );
                measurements.push(m);
            }
        }
    }
    let results = LoadResults {
        machine,
        command: results::command_line(),
        settings: LoadSettings {
            quick: options.quick,
            duration_s: options.duration.as_secs_f64(),
            warmup_s: options.warmup.as_secs_f64(),
            concurrency: options.concurrency,
            rounds: options.rounds,
            same_key_rounds: options.same_key_rounds,
            same_key_work_ms: options.same_key_work.as_millis() as u64,
        },
        measurements,
    };
    results::save(&options.results.join("load.json"), &results)?;
    Ok(results)
}

/// Our configurations' correctness failures, for the exit code.
pub fn our_failures(results: &LoadResults) -> Vec<String> {
    results
        .measurements
        .iter()
        .filter(|m| m.config.is_ours())
        .flat_map(|m| {
            m.failures()
                .into_iter()
                .map(move |f| format!("{} / {} / round {}: {f}", m.config, m.scenario, m.round))
        })
        .collect()
}
