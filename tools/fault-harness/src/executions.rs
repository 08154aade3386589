//! How often the create handler ran: the measure of "executed once".
//!
//! Rows cannot tell: the database guard (the create looks up the user's deployment with the
//! key, within the key's TTL, in its inserting transaction) turns a second execution into a
//! "replay" of the first row, so one row per key holds whether the handler ran once or ten
//! times. The backends count executions themselves, two ways:
//!
//! - each writes one execution-log line per execution and per hit of the database guard
//!   ([`crate::logs`]), before the work starts: the only count that survives a SIGKILL, and
//!   the one the figures use (every instance, every life);
//! - each exports `deployments_create_executions_total` and
//!   `deployments_idempotency_guard_hits_total` on `/metrics` (its current life only).
//!
//! For every instance still alive the log of its last life must agree with its `/metrics`;
//! a missing or unreadable log, a missing counter or a disagreement is a failure of the
//! scenario, never read as zero.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use anyhow::Context as _;

use crate::{
    db::Verification,
    logs::{Life, LogScan},
    procs::Backend,
    report::ScenarioReport,
};

/// Counter: executions of the create handler for keyed requests.
const EXECUTIONS_TOTAL: &str = "deployments_create_executions_total";
/// Counter (by `outcome`): keyed creates answered by the database guard.
const GUARD_HITS_TOTAL: &str = "deployments_idempotency_guard_hits_total";
/// The idempotency layer's per-outcome counter.
const LAYER_REQUESTS_TOTAL: &str = "idempotency_requests_total";

/// What a live instance's `/metrics` says about its current life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    /// `deployments_create_executions_total`.
    pub(crate) executions: u64,
    /// `deployments_idempotency_guard_hits_total`, all outcomes.
    pub(crate) guard_hits: u64,
    /// `idempotency_requests_total{outcome="executed"}`: what the layer let run.
    pub(crate) layer_executed: u64,
}

/// One instance's executions.
#[derive(Debug, Clone)]
pub(crate) struct Instance {
    /// A, B...
    pub(crate) name: String,
    /// Still running (it has not exited on its own; a killed-and-restarted one is alive).
    pub(crate) alive: bool,
    /// Its log; `None` if it could not be read.
    pub(crate) log: Option<LogScan>,
    /// Its `/metrics` (alive instances); `None` if it could not be scraped.
    pub(crate) counters: Option<Counters>,
    /// Its lives (indexes into the log's) that the harness ended with a SIGKILL.
    pub(crate) killed_lives: Vec<usize>,
}

/// The executions of a scenario, over all its instances and their lives.
#[derive(Debug, Clone, Default)]
pub(crate) struct Executions {
    /// Per instance.
    pub(crate) instances: Vec<Instance>,
    /// Executions per idempotency record (user and key), over every instance.
    pub(crate) per_record: HashMap<String, u64>,
    /// Why the counts cannot be trusted (missing or unreadable log, missing counter, log
    /// and `/metrics` disagreeing); empty when they can.
    pub(crate) problems: Vec<String>,
}

/// What a scenario promises about handler executions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Contract {
    /// Every key's handler runs once: the idempotency layer answers every retry.
    Once,
    /// Re-executions are reported, not failed; the reason is shown with the figure.
    Reported(&'static str),
    /// Transactional mode: a run's effects commit with its record or not at all, so a key's
    /// handler may run again only after a run that died with its SIGKILLed instance; no
    /// guard hit, one committed deployment per key. Checked by [`crate::commits`], which
    /// the scenario calls (it needs the rows and the kills).
    Atomic,
}

impl Executions {
    /// Reads every instance's log and scrapes the live ones' `/metrics`.
    pub(crate) async fn gather(instances: &mut [&mut Backend]) -> Self {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(5))
            .build();
        let mut out = Self::default();
        for backend in instances.iter_mut() {
            let name = backend.name().to_owned();
            let alive = backend.alive();
            let log = match LogScan::read(backend.log()) {
                Ok(log) => Some(log),
                Err(error) => {
                    out.problems.push(format!("{name}: {error:#}"));
                    None
                }
            };
            let counters = if alive {
                let scraped = match &http {
                    Ok(http) => scrape(http, &backend.url()).await,
                    Err(error) => Err(anyhow::anyhow!("no HTTP client: {error}")),
                };
                match scraped {
                    Ok(counters) => Some(counters),
                    Err(error) => {
                        out.problems.push(format!("{name}: /metrics: {error:#}"));
                        None
                    }
                }
            } else {
                None
            };
            if let Some(log) = &log {
                for line in log.unreadable.iter().take(3) {
                    out.problems
                        .push(format!("{name}: unreadable log line ({line})"));
                }
                if log.unreadable.len() > 3 {
                    out.problems.push(format!(
                        "{name}: {} more unreadable log lines",
                        log.unreadable.len() - 3
                    ));
                }
                // Every life that became ready logged `listening` first.
                let lives = log.lives.len() as u32;
                if lives < backend.ready_lives() || lives > backend.starts() {
                    out.problems.push(format!(
                        "{name}: the log shows {lives} lives, the instance was started {} times \
                         ({} became ready): lines are missing",
                        backend.starts(),
                        backend.ready_lives()
                    ));
                }
                if let Some(counters) = counters {
                    let last = log.lives.last().copied().unwrap_or_default();
                    let counted = Life {
                        executions: counters.executions,
                        guard_hits: counters.guard_hits,
                    };
                    if last != counted {
                        out.problems.push(format!(
                            "{name}: the log of its current life (executions {}, guard hits {}) \
                             disagrees with /metrics ({}, {})",
                            last.executions,
                            last.guard_hits,
                            counters.executions,
                            counters.guard_hits
                        ));
                    }
                }
                for (record, n) in &log.per_record {
                    *out.per_record.entry(record.clone()).or_default() += n;
                }
            }
            out.instances.push(Instance {
                name,
                alive,
                log,
                counters,
                killed_lives: backend.killed_lives().to_vec(),
            });
        }
        out
    }

    /// Whether every count could be read and agrees.
    pub(crate) fn readable(&self) -> bool {
        self.problems.is_empty()
    }

    /// Handler executions, every instance and life.
    pub(crate) fn total(&self) -> u64 {
        self.logs().map(LogScan::executions).sum()
    }

    /// Hits of the database guard, every instance and life.
    pub(crate) fn guard_hits(&self) -> u64 {
        self.logs().map(LogScan::guard_hits).sum()
    }

    /// Distinct keys (records) whose handler ran.
    pub(crate) fn keys_executed(&self) -> usize {
        self.per_record.len()
    }

    /// Runs of a key's handler beyond its first.
    pub(crate) fn re_executions(&self) -> u64 {
        self.per_record.values().map(|n| n.saturating_sub(1)).sum()
    }

    /// Panic lines over every log.
    pub(crate) fn panics(&self) -> u64 {
        self.logs().map(|l| l.panics).sum()
    }

    fn logs(&self) -> impl Iterator<Item = &LogScan> {
        self.instances.iter().filter_map(|i| i.log.as_ref())
    }

    /// Adds the execution figures to `report`.
    pub(crate) fn figures(&self, report: &mut ScenarioReport, contract: Contract) {
        if !self.readable() {
            report.figure(
                "handler executions (execution log, every instance and life)",
                "UNREADABLE (see the checks)",
            );
            return;
        }
        let mut per_instance = Vec::new();
        for instance in &self.instances {
            let Some(log) = &instance.log else { continue };
            let mut text = format!("{} {}", instance.name, log.executions());
            if log.lives.len() > 1 {
                let _ = write!(
                    text,
                    " in {} lives ({})",
                    log.lives.len(),
                    log.lives
                        .iter()
                        .map(|l| l.executions.to_string())
                        .collect::<Vec<_>>()
                        .join(" + ")
                );
            }
            per_instance.push(text);
        }
        report.figure(
            "handler executions (execution log, every instance and life)",
            format!("{} ({})", self.total(), per_instance.join(", ")),
        );
        let re_executions = self.re_executions();
        let guard = self.guard_hits();
        report.figure(
            "keys executed / re-executions (a key's handler run again) / caught by the database guard",
            format!("{} / {re_executions} / {guard}", self.keys_executed()),
        );
        if let Contract::Reported(why) = contract {
            report.figure(
                "re-executions: reported, not failed",
                format!(
                    "{re_executions}, {guard} of them answered by the database guard, {} \
                     after a first run that had inserted nothing; {why}",
                    re_executions.saturating_sub(guard)
                ),
            );
        }
    }

    /// The checks every scenario makes on executions: the counts are readable and agree, they
    /// account for every deployment, and the contract holds.
    pub(crate) fn checks(
        &self,
        report: &mut ScenarioReport,
        verification: &Verification,
        contract: Contract,
    ) {
        let agreement: Vec<String> = self
            .instances
            .iter()
            .map(|i| {
                let log = i.log.as_ref().map_or("unreadable".to_owned(), |l| {
                    let last = l.lives.last().copied().unwrap_or_default();
                    match l.lives.len() {
                        1 => format!("1 life, {}", last.executions),
                        n => format!("{n} lives, last {}", last.executions),
                    }
                });
                match (&i.counters, i.alive) {
                    (Some(c), _) => format!(
                        "{}: log {log} = /metrics {} (layer executed {}), guard hits {}",
                        i.name, c.executions, c.layer_executed, c.guard_hits
                    ),
                    (None, true) => format!("{}: log {log}, /metrics unreadable", i.name),
                    (None, false) => format!("{}: log {log}, exited", i.name),
                }
            })
            .collect();
        report.check(
            "execution counts readable: a log for every life of every instance, agreeing with \
             /metrics of the live ones",
            self.readable(),
            if self.readable() {
                agreement.join("; ")
            } else {
                self.problems.join("; ")
            },
        );
        let keyed_rows = verification.deployments;
        report.check(
            "the execution log accounts for every deployment (one executed key per row)",
            self.readable()
                && self.keys_executed() as u64 == keyed_rows
                && self.guard_hits() <= self.re_executions(),
            format!(
                "{} keys executed, {keyed_rows} deployments; {} guard hits within {} \
                 re-executions",
                self.keys_executed(),
                self.guard_hits(),
                self.re_executions()
            ),
        );
        if contract == Contract::Once {
            report.check(
                "no handler ran twice for a key: the idempotency layer answered every retry \
                 (contract: 0 re-executions)",
                self.readable() && self.re_executions() == 0 && self.guard_hits() == 0,
                if self.readable() {
                    format!(
                        "{} re-executions, {} caught by the database guard",
                        self.re_executions(),
                        self.guard_hits()
                    )
                } else {
                    "cannot tell: the execution counts are unreadable".to_owned()
                },
            );
        }
    }
}

/// The execution counters on `{base_url}/metrics`. Every series is exported from startup:
/// a missing one is an error.
async fn scrape(http: &reqwest::Client, base_url: &str) -> anyhow::Result<Counters> {
    let response = http
        .get(format!("{base_url}/metrics"))
        .send()
        .await
        .context("GET /metrics")?;
    anyhow::ensure!(
        response.status() == 200,
        "GET /metrics answered {}",
        response.status()
    );
    let text = response.text().await.context("read /metrics")?;
    parse_counters(&text)
}

/// The execution counters in a Prometheus text exposition.
fn parse_counters(text: &str) -> anyhow::Result<Counters> {
    let mut executions = None;
    let mut guard_hits: Option<u64> = None;
    let mut layer_executed = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.trim().rsplit_once(' ') else {
            continue;
        };
        let (name, labels) = series.split_once('{').unwrap_or((series, ""));
        let value = || -> anyhow::Result<u64> {
            let value: f64 = value
                .parse()
                .with_context(|| format!("not a sample: {line}"))?;
            Ok(value as u64)
        };
        match name {
            EXECUTIONS_TOTAL => executions = Some(value()?),
            GUARD_HITS_TOTAL => *guard_hits.get_or_insert(0) += value()?,
            LAYER_REQUESTS_TOTAL if labels.contains("outcome=\"executed\"") => {
                layer_executed = Some(value()?);
            }
            _ => {}
        }
    }
    Ok(Counters {
        executions: executions.with_context(|| format!("{EXECUTIONS_TOTAL} is not exported"))?,
        guard_hits: guard_hits.with_context(|| format!("{GUARD_HITS_TOTAL} is not exported"))?,
        layer_executed: layer_executed.with_context(|| {
            format!("{LAYER_REQUESTS_TOTAL}{{outcome=\"executed\"}} is not exported")
        })?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_counters() {
        let text = "# TYPE deployments_create_executions_total counter\n\
            deployments_create_executions_total 12\n\
            deployments_idempotency_guard_hits_total{outcome=\"replayed\"} 2\n\
            deployments_idempotency_guard_hits_total{outcome=\"key_reused\"} 1\n\
            idempotency_requests_total{outcome=\"replayed\"} 40\n\
            idempotency_requests_total{outcome=\"executed\"} 12\n";
        assert_eq!(
            parse_counters(text).unwrap(),
            Counters {
                executions: 12,
                guard_hits: 3,
                layer_executed: 12,
            }
        );
    }

    #[test]
    fn a_missing_counter_is_an_error_not_zero() {
        let text = "idempotency_requests_total{outcome=\"executed\"} 1\n\
            deployments_idempotency_guard_hits_total{outcome=\"replayed\"} 0\n";
        let error = parse_counters(text).unwrap_err();
        assert!(error.to_string().contains(EXECUTIONS_TOTAL), "{error}");
        assert!(parse_counters("").is_err());
    }
}
