//! The scenarios and what they share.

pub(crate) mod crash;
pub(crate) mod crash_tx;
pub(crate) mod lost_responses;
pub(crate) mod memory_budget;
pub(crate) mod retry_storm;
pub(crate) mod store_outage;

use std::{
    collections::HashMap,
    ops::Range,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use clap::ValueEnum;
use tokio::sync::Semaphore;

use crate::{
    client::{Attempt, Client, Created, Failure, Outcome, delay_seconds, deployment_body},
    db::Verification,
    executions::{Contract, Executions},
    report::ScenarioReport,
};

/// The scenarios, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Scenario {
    /// Responses lost (and delayed) between client and API.
    LostResponses,
    /// An API instance SIGKILLed with requests in flight, then restarted.
    Crash,
    /// The same in transactional mode (records in the deployments database), on SQLite and
    /// on PostgreSQL: SIGKILLs at random instants, strict atomicity.
    CrashTx,
    /// The idempotency store (Redis, then PostgreSQL) down and back.
    StoreOutage,
    /// Hundreds of clients hammering a few keys.
    RetryStorm,
    /// The in-memory store flooded past its budget.
    MemoryBudget,
}

impl Scenario {
    /// All of them.
    pub(crate) const ALL: [Self; 6] = [
        Self::LostResponses,
        Self::Crash,
        Self::CrashTx,
        Self::StoreOutage,
        Self::RetryStorm,
        Self::MemoryBudget,
    ];

    /// The CLI name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::LostResponses => "lost-responses",
            Self::Crash => "crash",
            Self::CrashTx => "crash-tx",
            Self::StoreOutage => "store-outage",
            Self::RetryStorm => "retry-storm",
            Self::MemoryBudget => "memory-budget",
        }
    }
}

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// For CI: every scenario, small counts (about a minute in all).
    Quick,
    /// The counts of the specification (1,000 lost-response creates, 30 s storm...).
    Standard,
    /// Longer and bigger: 10x the standard creates, repeated kills and outages.
    Soak,
}

impl Mode {
    /// Its name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Quick => "quick",
            Self::Standard => "standard",
            Self::Soak => "soak",
        }
    }

    /// The counts for this mode.
    pub(crate) fn scale(self) -> Scale {
        match self {
            Self::Quick => Scale {
                lost_creates: 200,
                crash_cycles: 2,
                crash_rate: 40,
                tx_kills: 6,
                outage_cycles: 1,
                outage_rate: 25,
                storm: Duration::from_secs(5),
                flood_keys: 5_000,
                time_limit: Duration::from_secs(150),
            },
            Self::Standard => Scale {
                lost_creates: 1_000,
                crash_cycles: 3,
                crash_rate: 40,
                tx_kills: 12,
                outage_cycles: 2,
                outage_rate: 25,
                storm: Duration::from_secs(30),
                flood_keys: 10_000,
                time_limit: Duration::from_secs(600),
            },
            Self::Soak => Scale {
                lost_creates: 10_000,
                crash_cycles: 10,
                crash_rate: 40,
                tx_kills: 40,
                outage_cycles: 5,
                outage_rate: 25,
                storm: Duration::from_secs(120),
                flood_keys: 50_000,
                time_limit: Duration::from_secs(1_800),
            },
        }
    }
}

/// Counts and durations of a run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scale {
    /// lost-responses: logical creates.
    pub(crate) lost_creates: usize,
    /// crash: kill/restart cycles (alternating instances).
    pub(crate) crash_cycles: usize,
    /// crash and crash-tx: new logical creates per second.
    pub(crate) crash_rate: usize,
    /// crash-tx: SIGKILLs per database (alternating instances).
    pub(crate) tx_kills: usize,
    /// store-outage: outages per store.
    pub(crate) outage_cycles: usize,
    /// store-outage: new logical creates per second.
    pub(crate) outage_rate: usize,
    /// retry-storm: how long it lasts.
    pub(crate) storm: Duration,
    /// memory-budget: unique keys in the flood.
    pub(crate) flood_keys: usize,
    /// Hard time limit of one scenario.
    pub(crate) time_limit: Duration,
}

/// What every scenario gets.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    /// The `backend` binary.
    pub(crate) backend_bin: PathBuf,
    /// A PostgreSQL URL with CREATEDB rights (scenario databases are created there).
    pub(crate) admin_url: String,
    /// `redis-server`.
    pub(crate) redis_bin: String,
    /// `initdb`/`pg_ctl` directory.
    pub(crate) pg_bin_dir: Option<PathBuf>,
    /// Where logs and private servers' files go.
    pub(crate) run_dir: PathBuf,
    /// Size of the run.
    pub(crate) mode: Mode,
}

impl Ctx {
    /// The counts of this run.
    pub(crate) fn scale(&self) -> Scale {
        self.mode.scale()
    }

    /// A log file path for `scenario`'s instance `name`.
    pub(crate) fn log(&self, scenario: &str, name: &str) -> PathBuf {
        self.run_dir.join(format!("{scenario}-{name}.log"))
    }
}

/// The environment of a backend instance.
pub(crate) fn backend_env(
    database_url: &str,
    store: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = vec![
        ("DATABASE_URL".to_owned(), database_url.to_owned()),
        ("IDEMPOTENCY_STORE".to_owned(), store.to_owned()),
    ];
    env.extend(
        extra
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    env
}

/// The idempotency key of logical create `n` of `scenario`.
pub(crate) fn key_of(scenario: &str, n: usize) -> String {
    format!("{scenario}-{n:06}")
}

/// The outcome of a batch of logical creates.
#[derive(Debug, Default)]
pub(crate) struct Results {
    /// Key index → its final 201.
    pub(crate) created: HashMap<usize, Created>,
    /// Key index → why it ended without one.
    pub(crate) failures: Vec<(usize, Failure)>,
}

impl Results {
    /// Key → the id(s) the client got, for [`crate::db::FleetDb::verify`].
    pub(crate) fn expected(&self, scenario: &str) -> HashMap<String, Vec<String>> {
        self.created
            .iter()
            .map(|(n, c)| (key_of(scenario, *n), vec![c.id.clone()]))
            .collect()
    }

    /// Figure: how the creates ended (final 201 a replay or not, most attempts).
    pub(crate) fn figure(&self, report: &mut ScenarioReport) {
        let replays = self.created.values().filter(|c| c.replayed).count();
        let most = self.created.values().map(|c| c.attempts).max().unwrap_or(0);
        report.figure(
            "creates ending with a replayed 201 / most attempts for one create",
            format!("{replays} / {most}"),
        );
    }

    /// A short account of the failures.
    pub(crate) fn describe_failures(&self) -> String {
        if self.failures.is_empty() {
            return "none".to_owned();
        }
        let sample: Vec<String> = self
            .failures
            .iter()
            .take(3)
            .map(|(n, f)| format!("#{n}: {f}"))
            .collect();
        format!("{} failed: {}", self.failures.len(), sample.join("; "))
    }
}

/// Runs logical creates `range` of `scenario` with at most `concurrency` at once; with
/// `pace`, starts one every `pace`.
pub(crate) async fn run_creates(
    client: Client,
    scenario: &'static str,
    range: Range<usize>,
    concurrency: usize,
    pace: Option<Duration>,
) -> Results {
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    let mut ticker = pace.map(|p| {
        let mut t = tokio::time::interval(p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    for n in range {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let permit = limit.clone().acquire_owned().await.expect("semaphore open");
        let client = client.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let key = key_of(scenario, n);
            let body = deployment_body(scenario, n);
            (n, client.create(n, &key, &body).await)
        });
    }
    let mut results = Results::default();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((n, Ok(created))) => {
                results.created.insert(n, created);
            }
            Ok((n, Err(failure))) => results.failures.push((n, failure)),
            Err(error) => panic!("a create task failed: {error}"),
        }
    }
    results.failures.sort_by_key(|(n, _)| *n);
    results
}

/// A background batch of creates ([`run_creates`] on its own task), aborted if dropped
/// before it is joined (a scenario that fails half-way stops its traffic too).
#[derive(Debug)]
pub(crate) struct Traffic(Option<tokio::task::JoinHandle<Results>>);

impl Traffic {
    /// Starts [`run_creates`] in the background.
    pub(crate) fn start(
        client: Client,
        scenario: &'static str,
        range: Range<usize>,
        concurrency: usize,
        pace: Option<Duration>,
    ) -> Self {
        Self(Some(tokio::spawn(run_creates(
            client,
            scenario,
            range,
            concurrency,
            pace,
        ))))
    }

    /// Waits for every create to end.
    pub(crate) async fn join(mut self) -> anyhow::Result<Results> {
        let handle = self.0.take().expect("joined once");
        Ok(handle.await?)
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
        }
    }
}

/// Checks every scenario makes: every create ended with a 201; the database holds one
/// deployment per create with the id the client got; the handler executions are readable,
/// account for every deployment and keep `contract`; no backend panicked or died; every
/// `Retry-After` the `clients` saw was sane.
pub(crate) fn common_checks(
    report: &mut ScenarioReport,
    results: &Results,
    verification: &Verification,
    executions: &Executions,
    contract: Contract,
    clients: &[&Client],
) {
    report.check(
        "every logical create ended with a 201",
        results.failures.is_empty(),
        results.describe_failures(),
    );
    // With a store of its own, one row per key is what the database guard keeps within the
    // TTL whatever the layer does; in transactional mode nothing but the layer does. Either
    // way this checks that every client got that row's id, and nothing else exists.
    report.check(
        "database: a deployment for every logical create, with the id the client got",
        verification.ok(),
        verification.describe(),
    );
    executions.checks(report, verification, contract);
    report.check(
        "no backend panicked",
        executions.panics() == 0,
        format!("{} panic lines in the logs", executions.panics()),
    );
    let dead: Vec<String> = executions
        .instances
        .iter()
        .filter(|i| !i.alive)
        .map(|i| i.name.clone())
        .collect();
    report.check(
        "every instance still running at the end",
        dead.is_empty(),
        if dead.is_empty() {
            "all alive".to_owned()
        } else {
            format!("exited: {}", dead.join(", "))
        },
    );
    check_retry_after_sane(report, clients);
}

/// The clients' defect detector: every `Retry-After` any answer carried was delta-seconds
/// and no longer than the policy's cap (the middleware would have waited anything else,
/// capped or as a date; its observer records it instead).
fn check_retry_after_sane(report: &mut ScenarioReport, clients: &[&Client]) {
    let (mut count, mut samples) = (0, Vec::new());
    for client in clients {
        let (n, values) = client.retry_after_defects();
        count += n;
        samples.extend(values);
    }
    report.check(
        "every Retry-After was delta-seconds, within the client's cap",
        count == 0,
        if count == 0 {
            "none refused".to_owned()
        } else {
            format!(
                "{count} refused: {}",
                samples
                    .iter()
                    .take(3)
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        },
    );
}

/// The retrying middleware's discipline, checked from the journal: no retry came sooner
/// than the previous answer's `Retry-After` (sent is stamped when the attempt leaves, after
/// the middleware's wait; done when the observer saw the answer, before it).
pub(crate) fn check_retry_after_honoured(report: &mut ScenarioReport, journal: &[Attempt]) {
    let mut by_key: HashMap<usize, Vec<&Attempt>> = HashMap::new();
    for attempt in journal {
        by_key.entry(attempt.key).or_default().push(attempt);
    }
    let mut honoured = 0u64;
    let mut early = Vec::new();
    for attempts in by_key.values_mut() {
        attempts.sort_by_key(|a| a.sent);
        for pair in attempts.windows(2) {
            let (previous, next) = (pair[0], pair[1]);
            let (Some(done), Some(Outcome::Answer(answer))) = (previous.done, &previous.outcome)
            else {
                continue;
            };
            let Some(seconds) = answer.retry_after.as_deref().and_then(delay_seconds) else {
                continue;
            };
            honoured += 1;
            let waited = next.sent.saturating_duration_since(done);
            if waited < Duration::from_secs(seconds) {
                early.push(format!(
                    "key #{} retried after {:.3} s, asked {seconds} s",
                    previous.key,
                    waited.as_secs_f64()
                ));
            }
        }
    }
    report.check(
        "the client never retried sooner than Retry-After",
        early.is_empty(),
        if early.is_empty() {
            format!("{honoured} retries after a Retry-After, none early")
        } else {
            format!(
                "{} early: {}",
                early.len(),
                early[..early.len().min(3)].join("; ")
            )
        },
    );
}

/// Names, peak RSS and CPU seconds of the sampled instances.
pub(crate) fn resources(sampler: &crate::procs::Sampler) -> (Vec<String>, Vec<u64>, Vec<f64>) {
    (sampler.names().to_vec(), sampler.peaks(), sampler.cpu())
}

/// Sleeps until `deadline` (returns at once if it has passed).
pub(crate) async fn sleep_until(deadline: Instant) {
    tokio::time::sleep_until(deadline.into()).await;
}

/// Makes `path`'s parent exist.
pub(crate) fn ensure_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => std::fs::create_dir_all(parent),
        _ => Ok(()),
    }
}
