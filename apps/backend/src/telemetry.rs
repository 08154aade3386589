//! Logs (tracing-subscriber) and metrics (Prometheus), including the count of create-handler
//! executions.
//!
//! # Counting executions
//!
//! The promise of `POST /api/deployments` is one *handler execution* per logical request,
//! not one row: the database guard (a deployment created with the same (user, key) within
//! the TTL) turns a second execution into a "replay" of the first row, so rows cannot show
//! one. Two things are therefore counted where they
//! happen, in the handler:
//!
//! - [`CREATE_EXECUTIONS_TOTAL`]: the handler's body was entered for a request with an
//!   `Idempotency-Key` (the idempotency layer let it run). Counted before the body is
//!   validated or anything is written, so an execution that is killed half-way still counts.
//! - [`GUARD_HITS_TOTAL`]`{outcome}`: the database guard found a deployment created with
//!   the key less than the TTL ago, so the handler answered with it (`replayed`) or refused a
//!   different body (`key_reused`) instead of inserting. Each one is an execution that the
//!   idempotency layer did not prevent.
//!
//! Both are Prometheus counters on `/metrics` (zero from startup, so a missing series is a
//! broken exporter, not "none yet"), and each occurrence is also one log line under the
//! target [`EXECUTION_LOG_TARGET`] at INFO, carrying the layer's record id (SHA-256 of user
//! and key, never the key itself or the token): counters die with their process, and a log
//! written line by line before the work starts survives a SIGKILL. With `--log-format json`
//! a line reads
//!
//! ```text
//! {"timestamp":"…","level":"INFO","message":"create handler executing","record":"9f86…","target":"backend::executions"}
//! {"timestamp":"…","level":"INFO","message":"idempotency guard hit","record":"9f86…","deployment":"0199…","outcome":"replayed","target":"backend::executions"}
//! ```

use std::{io::IsTerminal as _, sync::OnceLock, time::Duration};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_idempotency::metrics::{Outcome, REQUESTS_TOTAL};
use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// Counter: executions of the create handler for requests with an `Idempotency-Key`.
pub const CREATE_EXECUTIONS_TOTAL: &str = "deployments_create_executions_total";

/// Counter, by `outcome` ([`GuardOutcome`]): keyed creates that the database guard (a
/// deployment created with the same (user, key) within the TTL) answered instead of inserting.
pub const GUARD_HITS_TOTAL: &str = "deployments_idempotency_guard_hits_total";

/// The `tracing` target of the execution log: one INFO line per execution and per guard hit.
/// `RUST_LOG=warn,backend::executions=info` keeps it while silencing the rest.
pub const EXECUTION_LOG_TARGET: &str = "backend::executions";

/// Message of the execution log's line for an execution.
pub const EXECUTION_MESSAGE: &str = "create handler executing";

/// Message of the execution log's line for a guard hit.
pub const GUARD_HIT_MESSAGE: &str = "idempotency guard hit";

/// How the database guard answered a keyed create whose key already had a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuardOutcome {
    /// Same request: the existing deployment, as a replay (201, `Idempotent-Replayed`).
    Replayed,
    /// Different request: 422 `key-reused`.
    KeyReused,
}

impl GuardOutcome {
    /// Every outcome.
    pub const ALL: [Self; 2] = [Self::Replayed, Self::KeyReused];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Replayed => "replayed",
            Self::KeyReused => "key_reused",
        }
    }
}

/// Records one execution of the create handler for the keyed request whose idempotency
/// record is `record` (hex): a log line first (the durable trace), then the counter.
pub(crate) fn create_executing(record: &str) {
    tracing::info!(target: EXECUTION_LOG_TARGET, record, "{EXECUTION_MESSAGE}");
    metrics::counter!(CREATE_EXECUTIONS_TOTAL).increment(1);
}

/// Records that the database guard answered the keyed request of `record` with the existing
/// `deployment` instead of inserting.
pub(crate) fn guard_hit(record: &str, deployment: &str, outcome: GuardOutcome) {
    tracing::info!(
        target: EXECUTION_LOG_TARGET,
        record,
        deployment,
        outcome = outcome.as_str(),
        "{GUARD_HIT_MESSAGE}"
    );
    metrics::counter!(GUARD_HITS_TOTAL, "outcome" => outcome.as_str()).increment(1);
}

/// Describes the app's counters and registers them, and the layer's per-outcome counters,
/// at zero: a scrape then shows every series from startup on.
fn register_metrics() {
    metrics::describe_counter!(
        CREATE_EXECUTIONS_TOTAL,
        "Executions of the create-deployment handler for requests with an Idempotency-Key \
         (the idempotency layer let them run). One per logical create is the promise."
    );
    metrics::describe_counter!(
        GUARD_HITS_TOTAL,
        "Keyed creates that the database guard (a deployment with the same user and key, \
         created within the TTL) answered with the existing \
         deployment (outcome=replayed) or refused (outcome=key_reused) instead of inserting: \
         executions the idempotency layer did not prevent."
    );
    metrics::counter!(CREATE_EXECUTIONS_TOTAL).increment(0);
    for outcome in GuardOutcome::ALL {
        metrics::counter!(GUARD_HITS_TOTAL, "outcome" => outcome.as_str()).increment(0);
    }
    for outcome in [
        Outcome::Executed,
        Outcome::Replayed,
        Outcome::Conflict,
        Outcome::Mismatch,
        Outcome::Rejected,
        Outcome::StoreError,
    ] {
        metrics::counter!(REQUESTS_TOTAL, "outcome" => outcome.as_str()).increment(0);
    }
}

/// Buckets for latency histograms, in seconds (1 ms to 10 s).
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder's handle.
///
/// The `metrics` facade takes one global recorder per process, while a process may build
/// several apps (the tests do): the first call installs it, later calls share it. If some
/// other recorder was installed first, `/metrics` still works but stays empty, and a warning
/// says why.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Suffix("_duration_seconds".to_owned()),
                    LATENCY_BUCKETS,
                )
                // Fails only for an empty bucket list; summaries are the fallback then.
                .unwrap_or_else(|_| PrometheusBuilder::new());
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            if let Err(error) = metrics::set_global_recorder(recorder) {
                tracing::warn!(%error, "another metrics recorder is installed; /metrics will be empty");
            }
            register_metrics();
            crate::http_metrics::describe();
            // Histograms and summaries need periodic upkeep, or they grow without bound.
            let upkeep = handle.clone();
            let spawned = std::thread::Builder::new()
                .name("metrics-upkeep".to_owned())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(5));
                        upkeep.run_upkeep();
                    }
                });
            if let Err(error) = spawned {
                tracing::warn!(%error, "could not start the metrics upkeep thread");
            }
            handle
        })
        .clone()
}

/// Installs the global log subscriber: `RUST_LOG` filters (default `info`), `format`
/// chooses human-readable or JSON lines. Logs go to stderr; stdout is for command output.
pub fn init_logging(format: LogFormat) {
    // Colours only for a terminal: escape codes in a log file are noise.
    let ansi = std::io::stderr().is_terminal();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let registry = tracing_subscriber::registry().with(filter);
    let result = match format {
        LogFormat::Pretty => registry
            .with(fmt::layer().with_ansi(ansi).with_writer(std::io::stderr))
            .try_init(),
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging already initialised: {error}");
    }
}
