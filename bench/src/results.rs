//! What the subcommands measure, as stored between them (JSON under `bench/target/loadbench/`)
//! and rendered by [`crate::report`].

use std::{fs, path::Path, process::Command};

use anyhow::Context as _;
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::{
    config::Config,
    load::{CpuTicks, Outcome, Scenario},
};

/// One scenario against one configuration in one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measurement {
    pub config: Config,
    pub scenario: Scenario,
    pub round: usize,
    pub seconds: f64,
    pub requests: u64,
    pub rps: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub ok: u64,
    pub replayed: u64,
    pub conflict: u64,
    pub other_status: u64,
    pub transport_errors: u64,
    pub new_keys: u64,
    pub executions: u64,
    pub executions_per_key: Vec<u64>,
    /// The server's user-mode CPU time per request over the measured phase, in µs (`None` in
    /// same-key-64 and in results from before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_user_us: Option<f64>,
    /// The server's kernel CPU time per request over the measured phase, in µs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_kernel_us: Option<f64>,
    /// Why the scenario could not run (the server did not start, or the load failed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Measurement {
    pub fn new(config: Config, scenario: Scenario, round: usize, outcome: &Outcome) -> Self {
        let tally = &outcome.tally;
        let seconds = outcome.elapsed.as_secs_f64();
        let per_request = |ticks: u64| {
            (tally.requests() > 0)
                .then(|| ticks as f64 * CpuTicks::MICROS_PER_TICK / tally.requests() as f64)
        };
        let cpu = outcome.server_cpu;
        Self {
            config,
            scenario,
            round,
            seconds,
            requests: tally.requests(),
            rps: tally.requests() as f64 / seconds.max(1e-9),
            p50_us: tally.quantile_us(0.50),
            p99_us: tally.quantile_us(0.99),
            ok: tally.ok,
            replayed: tally.replayed,
            conflict: tally.conflict,
            other_status: tally.other_status,
            transport_errors: tally.transport_errors,
            new_keys: tally.new_keys,
            executions: outcome.executions,
            executions_per_key: outcome.executions_per_key.clone(),
            server_user_us: cpu.and_then(|c| per_request(c.user)),
            server_kernel_us: cpu.and_then(|c| per_request(c.system)),
            error: None,
        }
    }

    /// A scenario that did not run.
    pub fn failed(config: Config, scenario: Scenario, round: usize, error: &anyhow::Error) -> Self {
        Self {
            config,
            scenario,
            round,
            seconds: 0.0,
            requests: 0,
            rps: 0.0,
            p50_us: 0,
            p99_us: 0,
            ok: 0,
            replayed: 0,
            conflict: 0,
            other_status: 0,
            transport_errors: 0,
            new_keys: 0,
            executions: 0,
            executions_per_key: Vec::new(),
            server_user_us: None,
            server_kernel_us: None,
            error: Some(format!("{error:#}")),
        }
    }

    /// Correctness failures: answers other than 2xx or 409, and, for a deduplicating layer,
    /// any key whose handler did not run exactly once. In `no-key`, for every configuration
    /// (the baseline too): a 409, or a 2xx without its own handler run.
    pub fn failures(&self) -> Vec<String> {
        if let Some(error) = &self.error {
            return vec![format!("did not run: {error}")];
        }
        let mut failures = Vec::new();
        if self.other_status > 0 {
            failures.push(format!("{} answers neither 2xx nor 409", self.other_status));
        }
        if self.transport_errors > 0 {
            failures.push(format!("{} connection errors", self.transport_errors));
        }
        if self.scenario == Scenario::NoKey {
            if self.conflict > 0 {
                failures.push(format!(
                    "{} answers 409 to requests without a key",
                    self.conflict
                ));
            }
            if self.executions != self.ok {
                failures.push(format!(
                    "the handler ran {} times for {} 2xx answers without a key ({} marked replayed)",
                    self.executions, self.ok, self.replayed
                ));
            }
            return failures;
        }
        if !self.config.deduplicates() {
            return failures;
        }
        if self.scenario == Scenario::SameKey64 {
            let bad: Vec<u64> = self
                .executions_per_key
                .iter()
                .copied()
                .filter(|&n| n != 1)
                .collect();
            if !bad.is_empty() {
                failures.push(format!(
                    "the handler ran {} times per key for {} of {} keys (max {})",
                    describe_counts(&bad),
                    bad.len(),
                    self.executions_per_key.len(),
                    bad.iter().max().copied().unwrap_or(0)
                ));
            }
        } else if self.executions != self.new_keys {
            failures.push(format!(
                "the handler ran {} times for {} new keys",
                self.executions, self.new_keys
            ));
        }
        failures
    }
}

fn describe_counts(counts: &[u64]) -> String {
    let mut distinct: Vec<u64> = counts.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    distinct
        .iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join("/")
}

/// The machine and software a run happened on.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub memory: String,
    pub kernel: String,
    pub date: String,
    pub rustc: String,
    pub redis: Option<String>,
    pub postgres: Option<String>,
}

impl Machine {
    pub fn describe(redis: Option<String>, postgres: Option<String>) -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |text: &str, name: &str| {
            text.lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split(':').nth(1))
                .map(|v| v.trim().to_owned())
        };
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory = field(&meminfo, "MemTotal")
            .and_then(|kb| kb.trim_end_matches(" kB").parse::<u64>().ok())
            .map(|kb| format!("{:.0} GiB", kb as f64 / (1024.0 * 1024.0)))
            .unwrap_or_else(|| "unknown".to_owned());
        Self {
            nproc: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".to_owned()),
            memory,
            kernel: output("uname", &["-sr"]),
            date: output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
            rustc: output("rustc", &["--version"]),
            redis,
            postgres,
        }
    }
}

fn output(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".to_owned())
}

/// How a load run was set up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadSettings {
    pub quick: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub concurrency: usize,
    pub rounds: usize,
    pub same_key_rounds: usize,
    pub same_key_work_ms: u64,
}

/// The output of `run`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoadResults {
    pub machine: Machine,
    pub command: String,
    pub settings: LoadSettings,
    pub measurements: Vec<Measurement>,
}

/// Cost per stored key in one store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyCost {
    pub store: String,
    pub method: String,
    pub keys: u64,
    /// What the caller stored per key: the 32-byte id plus the response given to `complete`.
    pub payload_bytes: u64,
    pub total_bytes: u64,
    pub bytes_per_key: f64,
    pub overhead_per_key: f64,
}

impl KeyCost {
    pub fn new(store: &str, method: &str, keys: u64, payload_bytes: u64, total_bytes: u64) -> Self {
        let bytes_per_key = total_bytes as f64 / keys.max(1) as f64;
        Self {
            store: store.to_owned(),
            method: method.to_owned(),
            keys,
            payload_bytes,
            total_bytes,
            bytes_per_key,
            overhead_per_key: bytes_per_key - payload_bytes as f64,
        }
    }
}

/// The output of `memory`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MemoryResults {
    pub command: String,
    pub response_body_bytes: usize,
    pub costs: Vec<KeyCost>,
    pub skipped: Vec<String>,
}

/// Store traffic caused by one kind of request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundTrips {
    pub store: String,
    pub request: String,
    pub status: u16,
    /// Commands or statements the server executed, by name, e.g. `set: 1`.
    pub commands: Vec<(String, u64)>,
    /// Writes the client sent to the server (through a counting proxy): round trips. `None`
    /// where there is no wire (SQLite).
    pub client_writes: Option<u64>,
    /// Of those, sqlx's connection pings (PostgreSQL).
    #[serde(default)]
    pub pings: Option<u64>,
    /// Durable commits: transactions that wrote (PostgreSQL: WAL commit records; SQLite: its
    /// commit hook). `None` where not measured (Redis).
    #[serde(default)]
    pub commits: Option<u64>,
    /// PostgreSQL: the WAL records written, by `resource manager/record type`.
    #[serde(default)]
    pub wal: Vec<(String, u64)>,
}

/// The output of `roundtrips`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoundTripResults {
    pub command: String,
    pub rows: Vec<RoundTrips>,
    pub skipped: Vec<String>,
}

/// One case of `instructions`: callgrind's counts for one request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstructionCount {
    pub case: String,
    /// Instructions executed (`Ir`).
    pub instructions: u64,
    /// Callgrind's cache simulation; `None` where the summary lacks them.
    pub l1_hits: Option<u64>,
    pub ll_hits: Option<u64>,
    pub ram_hits: Option<u64>,
    pub estimated_cycles: Option<u64>,
}

/// The output of `instructions`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InstructionResults {
    pub command: String,
    /// gungraun's and valgrind's versions.
    pub tools: String,
    pub cases: Vec<InstructionCount>,
    /// Wall time of the step (build included).
    pub seconds: f64,
}

pub fn save<T: Serialize>(path: &Path, value: &T) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, serde_json::to_vec_pretty(value)?)
        .with_context(|| format!("writing {}", path.display()))
}

pub fn load<T: DeserializeOwned>(path: &Path) -> anyhow::Result<Option<T>> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(
            serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?,
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The command line that produced a result: what `scripts/bench` says it ran, or argv.
pub fn command_line() -> String {
    std::env::var("LOADBENCH_COMMAND").unwrap_or_else(|_| {
        let mut args = std::env::args();
        let exe = args.next().unwrap_or_default();
        let exe = Path::new(&exe)
            .file_name()
            .map_or(exe.clone(), |n| n.to_string_lossy().into_owned());
        std::iter::once(exe)
            .chain(args)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

/// One `redis-benchmark` run of one command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisBenchmarkRun {
    /// What the command stands for in `RedisStore`, e.g. `claim, unique keys`.
    pub label: String,
    /// The command as `redis-benchmark` ran it.
    pub command: String,
    pub requests: u64,
    /// Wall time of the `redis-benchmark` process.
    pub seconds: f64,
    pub rps: f64,
    pub avg_ms: Option<f64>,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// The output of `redis-ceiling`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RedisCeilingResults {
    pub command: String,
    pub quick: bool,
    pub date: String,
    /// The private server's version.
    pub redis: String,
    /// The `redis-benchmark` binary used.
    pub redis_benchmark: String,
    /// Its clients (`-c`), as many as the load runs' connections; no pipelining.
    pub clients: usize,
    /// The SHA-1 of the `complete` script, as `SCRIPT LOAD` answered it.
    pub complete_sha: String,
    pub claim_unique: RedisBenchmarkRun,
    pub claim_existing: RedisBenchmarkRun,
    pub complete: RedisBenchmarkRun,
    /// First requests per second: a claim and a complete each, `1 / (1/claim + 1/complete)`.
    pub unique_ceiling_rps: f64,
    /// Replays per second: one claim of an existing key each.
    pub replay_ceiling_rps: f64,
}
