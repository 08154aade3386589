//! What a server executed: its `/metrics` (Prometheus text) and its execution log.

use std::{collections::HashMap, path::Path};

use backend::telemetry::{
    CREATE_EXECUTIONS_TOTAL, EXECUTION_LOG_TARGET, EXECUTION_MESSAGE, GUARD_HIT_MESSAGE,
    GUARD_HITS_TOTAL,
};
use reqwest::StatusCode;
use serde_json::Value;
use tower_idempotency::metrics::REQUESTS_TOTAL;

/// What a server executed, from its `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Executions {
    /// `deployments_create_executions_total`: the create handler ran for a keyed request.
    pub handler: u64,
    /// `idempotency_requests_total{outcome="executed"}`: the layer let a keyed request run
    /// its inner service (the handler, or an extractor that refused the request first).
    pub layer: u64,
    /// `deployments_idempotency_guard_hits_total`, all outcomes: the database guard
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
