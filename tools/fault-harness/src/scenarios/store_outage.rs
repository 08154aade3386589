//! store-outage: the idempotency store goes down in the middle of traffic and comes back.
//!
//! Run twice: with a private Redis (SIGKILLed, no persistence: it comes back empty) and with
//! a private PostgreSQL cluster (`pg_ctl stop -m immediate`, then crash recovery on start).
//! The deployments database stays on the shared server. Two instances, leases of 5 s (so a
//! claim whose reply was lost in the crash blocks its key for 5 s, not the default 30 s).
//!
//! Asserted: while the store is down every answer is 503 `store-unavailable` with
//! `Retry-After`; a key that only ever got 503s has no deployment (checked before the store
//! comes back); nothing executes twice; afterwards every create completes and a fresh create
//! succeeds on each instance at the first attempt, without any restart of the API.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use super::{
    Ctx, Traffic, backend_env, check_retry_after_honoured, common_checks, key_of, resources,
    sleep_until,
};
use crate::{
    client::{self, Attempt, Client, Outcome, deployment_body},
    db::{FleetDb, mint_token},
    executions::{Contract, Executions},
    procs::{Backend, PrivatePostgres, PrivateRedis, Sampler, find_pg_bin_dir},
    report::{ScenarioReport, secs},
};

const LEAD: Duration = Duration::from_millis(1500);
const OUTAGE: Duration = Duration::from_secs(4);
const AFTER: Duration = Duration::from_secs(3);
const CONCURRENCY: usize = 256;

/// Runs the Redis part, then the PostgreSQL part.
pub(crate) async fn run(ctx: &Ctx) -> Vec<anyhow::Result<ScenarioReport>> {
    let mut reports = Vec::new();
    for kind in [Kind::Redis, Kind::Postgres] {
        let started = Instant::now();
        reports.push(run_one(ctx, kind).await.map(|mut report| {
            report.wall = started.elapsed();
            report
        }));
    }
    reports
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Redis,
    Postgres,
}

enum Store {
    Redis(PrivateRedis),
    Postgres(PrivatePostgres),
}

impl Store {
    fn spec(&self) -> String {
        match self {
            Self::Redis(r) => r.url(),
            Self::Postgres(p) => p.url(),
        }
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => {
                r.kill();
                Ok(())
            }
            Self::Postgres(p) => p.stop_immediate().await,
        }
    }

    async fn resume(&mut self) -> anyhow::Result<()> {
        match self {
            Self::Redis(r) => r.resume().await,
            Self::Postgres(p) => p.resume().await,
        }
    }
}

#[derive(Debug)]
struct Window {
    stopped_at: Instant,
    restart_at: Instant,
    resumed_at: Instant,
    /// Keys whose every attempt had ended, all with 503, when the store came back.
    refused_keys: usize,
    /// Of those, keys with a deployment (must be none).
    executed_anyway: Vec<String>,
}

async fn run_one(ctx: &Ctx, kind: Kind) -> anyhow::Result<ScenarioReport> {
    let (name, scenario): (String, &'static str) = match kind {
        Kind::Redis => ("store-outage (redis)".into(), "outage-redis"),
        Kind::Postgres => ("store-outage (postgres)".into(), "outage-postgres"),
    };
    let scale = ctx.scale();
    let mut store = match kind {
        Kind::Redis => Store::Redis(PrivateRedis::start(&ctx.redis_bin).await?),
        Kind::Postgres => {
            let bin_dir = find_pg_bin_dir(ctx.pg_bin_dir.as_deref())?;
            Store::Postgres(PrivatePostgres::start(&bin_dir, &ctx.run_dir).await?)
        }
    };
    let db = FleetDb::create(&ctx.admin_url).await?;
    let token = mint_token(&ctx.backend_bin, &db.url)?;
    let env = backend_env(&db.url, &store.spec(), &[("IDEMPOTENCY_LEASE", "5s")]);
    let mut a = Backend::start("A", &ctx.backend_bin, env.clone(), ctx.log(scenario, "A")).await?;
    let mut b = Backend::start("B", &ctx.backend_bin, env, ctx.log(scenario, "B")).await?;
    let sampler = Sampler::start(
        vec![("A".into(), a.pid_cell()), ("B".into(), b.pid_cell())],
        Duration::from_millis(100),
    );
    let client = Client::new(
        vec![a.url(), b.url()],
        &token,
        client::policy().build()?,
        true,
        true,
    )?;

    let cycle = OUTAGE + AFTER;
    let run_for = LEAD + cycle * scale.outage_cycles as u32;
    let creates = (run_for.as_secs_f64() * scale.outage_rate as f64) as usize;
    let pace = Duration::from_secs(1) / scale.outage_rate as u32;
    let traffic = Traffic::start(
        client.clone(),
        scenario,
        0..creates,
        CONCURRENCY,
        Some(pace),
    );

    let mut windows = Vec::new();
    let mut next = Instant::now() + LEAD;
    for _ in 0..scale.outage_cycles {
        sleep_until(next).await;
        store.stop().await?;
        let stopped_at = Instant::now();
        next = stopped_at + cycle;
        sleep_until(stopped_at + OUTAGE).await;
        // Before the store comes back: keys refused so far must not have executed.
        let journal = client.journal();
        let rows: HashSet<String> = db
            .rows()
            .await?
            .into_iter()
            .filter_map(|(k, _)| k)
            .collect();
        let refused = only_refused(&journal);
        let executed_anyway = refused
            .iter()
            .map(|n| key_of(scenario, *n))
            .filter(|k| rows.contains(k))
            .collect();
        let restart_at = Instant::now();
        store.resume().await?;
        windows.push(Window {
            stopped_at,
            restart_at,
            resumed_at: Instant::now(),
            refused_keys: refused.len(),
            executed_anyway,
        });
    }
    let results = traffic.join().await?;

    // Recovered by itself: a fresh create succeeds at once on each instance.
    let mut probes = Vec::new();
    for target in 0..2 {
        let key = format!("{scenario}-probe-{target}");
        let body = deployment_body(scenario, 1_000_000 + target);
        probes.push((key.clone(), client.send_once(target, &key, &body).await));
    }

    let tally = client.tally();
    let journal = client.journal();
    let mut expected = results.expected(scenario);
    for (key, outcome) in &probes {
        if let Outcome::Answer(answer) = outcome
            && answer.status == 201
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&answer.body)
            && let Some(id) = v["id"].as_str()
        {
            expected.insert(key.clone(), vec![id.to_owned()]);
        }
    }
    let verification = db.verify(&expected).await?;
    let executions = Executions::gather(&mut [&mut a, &mut b]).await;
    let (names, peaks, cpu) = resources(&sampler);

    let outage = outage_answers(&journal, &windows);
    let recovery: Vec<Option<Duration>> = windows
        .iter()
        .map(|w| first_success_after(&journal, w.resumed_at))
        .collect();

    let mut report = ScenarioReport::new(name);
    report.standard_figures(
        format!(
            "{creates} ({} per second), then 1 probe per instance",
            scale.outage_rate
        ),
        &tally,
        format!(
            "{} outage(s) of {} ({})",
            windows.len(),
            secs(OUTAGE),
            match kind {
                Kind::Redis => "redis-server SIGKILLed, restarted empty",
                Kind::Postgres => "pg_ctl stop -m immediate, restarted with crash recovery",
            }
        ),
        &verification,
        &executions,
        Contract::Once,
        &names,
        &peaks,
        &cpu,
    );
    report.figure(
        "answers during the outage(s): total / 503 store-unavailable with Retry-After",
        format!("{} / {}", outage.total, outage.proper),
    );
    report.figure(
        "time to answer during the outage: median / max",
        outage.latency(),
    );
    report.figure(
        "keys refused (only 503s) when the store came back",
        windows
            .iter()
            .map(|w| w.refused_keys.to_string())
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.figure(
        "store back (start to ready) / first new 201 after it",
        windows
            .iter()
            .zip(&recovery)
            .map(|(w, r)| {
                format!(
                    "{} / {}",
                    secs(w.resumed_at - w.restart_at),
                    r.map_or("never".to_owned(), secs)
                )
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    results.figure(&mut report);
    common_checks(
        &mut report,
        &results,
        &verification,
        &executions,
        Contract::Once,
        &[&client],
    );
    report.check(
        "during the outage every answer was 503 store-unavailable with Retry-After",
        outage.total > 0 && outage.proper == outage.total,
        format!(
            "{} answers, {} proper; others: {}",
            outage.total,
            outage.proper,
            if outage.improper.is_empty() {
                "none".to_owned()
            } else {
                outage.improper.join("; ")
            }
        ),
    );
    let executed: Vec<&String> = windows.iter().flat_map(|w| &w.executed_anyway).collect();
    report.check(
        "a key refused with 503 was not executed",
        executed.is_empty() && windows.iter().all(|w| w.refused_keys > 0),
        format!(
            "{} refused keys checked, {} executed anyway",
            windows.iter().map(|w| w.refused_keys).sum::<usize>(),
            executed.len()
        ),
    );
    let probe_ok = probes
        .iter()
        .all(|(_, o)| matches!(o, Outcome::Answer(a) if a.status == 201 && !a.replayed));
    report.check(
        "recovered by itself: a new create succeeds at the first attempt on each instance",
        probe_ok && recovery.iter().all(Option::is_some),
        probes
            .iter()
            .map(|(_, o)| match o {
                Outcome::Answer(a) => a.status.to_string(),
                other => format!("{other:?}"),
            })
            .collect::<Vec<_>>()
            .join(", "),
    );
    check_retry_after_honoured(&mut report, &journal);
    Ok(report)
}

/// Keys whose every attempt has ended, each with a 503.
fn only_refused(journal: &[Attempt]) -> Vec<usize> {
    let mut state: HashMap<usize, bool> = HashMap::new();
    for attempt in journal {
        let refused = matches!(&attempt.outcome, Some(Outcome::Answer(a)) if a.status == 503);
        let entry = state.entry(attempt.key).or_insert(true);
        *entry &= refused;
    }
    let mut keys: Vec<usize> = state
        .into_iter()
        .filter_map(|(k, refused)| refused.then_some(k))
        .collect();
    keys.sort_unstable();
    keys
}

#[derive(Debug, Default)]
struct OutageAnswers {
    total: usize,
    proper: usize,
    improper: Vec<String>,
    /// How long each answer took.
    latencies: Vec<Duration>,
}

impl OutageAnswers {
    fn latency(&self) -> String {
        let mut sorted = self.latencies.clone();
        sorted.sort_unstable();
        match (sorted.get(sorted.len() / 2), sorted.last()) {
            (Some(median), Some(max)) => format!("{} / {}", millis(*median), millis(*max)),
            _ => "-".to_owned(),
        }
    }
}

fn millis(d: Duration) -> String {
    format!("{} ms", d.as_millis())
}

/// Attempts sent after a stop and ended before the restart began.
fn outage_answers(journal: &[Attempt], windows: &[Window]) -> OutageAnswers {
    let mut out = OutageAnswers::default();
    for attempt in journal {
        let Some(done) = attempt.done else { continue };
        let inside = windows
            .iter()
            .any(|w| attempt.sent > w.stopped_at && done < w.restart_at);
        if !inside {
            continue;
        }
        out.total += 1;
        out.latencies.push(done - attempt.sent);
        match &attempt.outcome {
            Some(Outcome::Answer(a))
                if a.status == 503
                    && a.retry_after.is_some()
                    && a.problem_slug() == Some("store-unavailable") =>
            {
                out.proper += 1;
            }
            Some(Outcome::Answer(a)) => {
                if out.improper.len() < 3 {
                    out.improper.push(format!(
                        "{} {} ({})",
                        a.status,
                        a.problem_slug().unwrap_or("-"),
                        String::from_utf8_lossy(&a.body)
                    ));
                }
            }
            other => {
                if out.improper.len() < 3 {
                    out.improper.push(format!("{other:?}"));
                }
            }
        }
    }
    out
}

/// How long after `since` the first attempt sent after it got a 201 original.
fn first_success_after(journal: &[Attempt], since: Instant) -> Option<Duration> {
    journal
        .iter()
        .filter(|a| a.sent >= since)
        .filter(
            |a| matches!(&a.outcome, Some(Outcome::Answer(x)) if x.status == 201 && !x.replayed),
        )
        .filter_map(|a| a.done)
        .min()
        .map(|d| d - since)
}
