//! crash-tx: SIGKILLs at random instants under steady create traffic in transactional mode
//! (`IDEMPOTENCY_STORE=database`: the idempotency record commits in the create's own
//! transaction), on SQLite and on PostgreSQL. Clients keep retrying; each victim is restarted
//! on the same port.
//!
//! Two instances each: on SQLite both open the same file (a single-host deployment with two
//! processes: a rolling restart, or two workers; SQLite's write lock and `busy_timeout`
//! arbitrate, and a retry lands on the other process while the dead one's lock is being
//! released by the kernel); on PostgreSQL both use one database, each through a latency relay
//! of its own ([`database::PG_DELAY`]), so that transactions last long enough for random
//! kills to find them in every phase.
//!
//! Per kill: random instants are drawn until one finds what the kill aims at ([`Aim`]: a
//! create in flight at the victim, as the client sees it; on SQLite also the victim inside a
//! write transaction, or just out of one; on PostgreSQL also a commit on the wire); the
//! victim is frozen (SIGSTOP) there, what the database shows of it is read ([`evidence`]),
//! and it is SIGKILLed. Asserted, strictly
//! ([`Contract::Atomic`](crate::executions::Contract::Atomic)): one
//! committed deployment per logical create, 0 guard hits, no re-execution whose effects
//! committed, every run that did not commit died with a killed instance; every 2xx for a key
//! carries its deployment's id.

mod aim;
mod database;
mod evidence;
mod kill_points;

use std::{
    collections::HashMap,
    time::{Duration, Instant, SystemTime},
};

use self::{
    aim::Aim,
    database::{Database, Kind},
    kill_points::Kill,
};
use super::{
    Ctx, Traffic, backend_env, check_retry_after_honoured, common_checks, resources, sleep_until,
};
use crate::{
    client::{self, Attempt, Client, Outcome},
    commits::{self, Commits},
    db::mint_token,
    executions::Executions,
    procs::{Backend, Sampler},
    report::ScenarioReport,
};

const LEAD: Duration = Duration::from_secs(1);
/// One kill per cycle; no lease to wait out, so a cycle is short.
const CYCLE: Duration = Duration::from_millis(1500);
/// Where in its cycle the drawing of a kill instant starts: a random point in this range.
const FIRST_DRAW: (u64, u64) = (100, 700);
const TAIL: Duration = Duration::from_secs(1);
const CONCURRENCY: usize = 256;

/// Runs on SQLite, then on PostgreSQL.
pub(crate) async fn run(ctx: &Ctx) -> Vec<anyhow::Result<ScenarioReport>> {
    let mut reports = Vec::new();
    for kind in [Kind::Sqlite, Kind::Postgres] {
        let started = Instant::now();
        reports.push(run_one(ctx, kind).await.map(|mut report| {
            report.wall = started.elapsed();
            report
        }));
    }
    reports
}

async fn run_one(ctx: &Ctx, kind: Kind) -> anyhow::Result<ScenarioReport> {
    let name = format!("crash-tx ({})", kind.name());
    let scenario: &'static str = match kind {
        Kind::Sqlite => "crash-tx-sqlite",
        Kind::Postgres => "crash-tx-postgres",
    };
    let scale = ctx.scale();
    let mut database = Database::create(ctx, kind, scenario).await?;
    let token = mint_token(&ctx.backend_bin, &database.url())?;
    let mut instances = Vec::new();
    for (index, label) in ["A", "B"].into_iter().enumerate() {
        let env = backend_env(&database.url_for(index), "database", &[]);
        let log = ctx.log(scenario, label);
        instances.push(Backend::start(label, &ctx.backend_bin, env, log).await?);
    }
    let sampler = Sampler::start(
        instances
            .iter()
            .map(|b| (b.name().to_owned(), b.pid_cell()))
            .collect(),
        Duration::from_millis(100),
    );
    let client = Client::new(
        instances.iter().map(Backend::url).collect(),
        &token,
        client::policy().build()?,
        true,
        true,
    )?;

    let kills_wanted = scale.tx_kills;
    let run_for = LEAD + CYCLE * kills_wanted as u32 + TAIL;
    let creates = (run_for.as_secs_f64() * scale.crash_rate as f64) as usize;
    let pace = Duration::from_secs(1) / scale.crash_rate as u32;
    let traffic = Traffic::start(
        client.clone(),
        scenario,
        0..creates,
        CONCURRENCY,
        Some(pace),
    );

    let mut kills = Vec::new();
    let mut next_cycle = Instant::now() + LEAD;
    for cycle in 0..kills_wanted {
        sleep_until(next_cycle).await;
        next_cycle = Instant::now() + CYCLE;
        let victim = cycle % 2;
        let aim = Aim::for_cycle(kind, cycle);
        let first = fastrand::u64(FIRST_DRAW.0..=FIRST_DRAW.1);
        tokio::time::sleep(Duration::from_millis(first)).await;
        let pid = instances[victim].pid();
        let draws = aim::freeze_at(aim, victim, pid, &client, &mut database).await?;
        let (frozen_at, frozen_wall) = (Instant::now(), SystemTime::now());
        let in_flight = client.in_flight(victim);
        let evidence = database.evidence(victim, pid, frozen_wall).await;
        let killed_at = Instant::now();
        let backend = &mut instances[victim];
        backend.kill();
        let life = backend.killed_lives().last().copied().unwrap_or_default();
        backend.restart().await?;
        kills.push(Kill {
            victim,
            aim,
            life,
            frozen_at,
            killed_at,
            in_flight,
            draws,
            evidence,
            downtime: killed_at.elapsed(),
        });
    }
    let results = traffic.join().await?;

    let tally = client.tally();
    let journal = client.journal();
    let mut expected = results.expected(scenario);
    let answers_2xx = add_every_2xx(&mut expected, &journal, scenario);
    let rows = database.rows().await?;
    let verification = database.verify(&expected).await?;
    let mut refs: Vec<&mut Backend> = instances.iter_mut().collect();
    let executions = Executions::gather(&mut refs).await;
    let (names, peaks, cpu) = resources(&sampler);
    let commits = Commits::join(&executions, &rows);
    let classified = kill_points::classify(&kills, &journal, &commits, scenario);

    let mut report = ScenarioReport::new(name);
    report.standard_figures(
        format!("{creates} ({} per second)", scale.crash_rate),
        &tally,
        format!(
            "{} SIGKILLs at random instants (each aimed, see the kills), alternating A and B; {}",
            kills.len(),
            database.describe()
        ),
        &verification,
        &executions,
        commits::CONTRACT,
        &names,
        &peaks,
        &cpu,
    );
    commits.report(&mut report, &executions, &verification);
    classified.report(&mut report, &kills, &results);
    evidence_figures(&mut report, kind, &kills);
    report.figure(
        "time to a 201 (one attempt): median / 90th percentile / max",
        latency_of_201s(&journal),
    );
    report.figure(
        "2xx answers checked against their key's one deployment (every attempt, not only the \
         last)",
        answers_2xx.to_string(),
    );
    results.figure(&mut report);
    common_checks(
        &mut report,
        &results,
        &verification,
        &executions,
        commits::CONTRACT,
        &[&client],
    );
    check_retry_after_honoured(&mut report, &journal);
    Ok(report)
}

/// Adds to `expected` the id of every 2xx any attempt got (not only the final one): each
/// must be its key's deployment. Returns how many there were.
fn add_every_2xx(
    expected: &mut HashMap<String, Vec<String>>,
    journal: &[Attempt],
    scenario: &str,
) -> usize {
    let mut answers = 0;
    for attempt in journal {
        let Some(Outcome::Answer(answer)) = &attempt.outcome else {
            continue;
        };
        if !(200..300).contains(&answer.status) {
            continue;
        }
        answers += 1;
        let id = serde_json::from_slice::<serde_json::Value>(&answer.body)
            .ok()
            .and_then(|v| v["id"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("(a {} without an id)", answer.status));
        let ids = expected
            .entry(super::key_of(scenario, attempt.key))
            .or_default();
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    answers
}

/// Median, 90th percentile and max of the attempts answered 201.
fn latency_of_201s(journal: &[Attempt]) -> String {
    let mut took: Vec<Duration> = journal
        .iter()
        .filter(|a| matches!(&a.outcome, Some(Outcome::Answer(x)) if x.status == 201))
        .filter_map(|a| a.done.map(|d| d - a.sent))
        .collect();
    took.sort_unstable();
    let ms = |d: Option<&Duration>| d.map_or("-".to_owned(), |d| format!("{} ms", d.as_millis()));
    format!(
        "{} / {} / {}",
        ms(took.get(took.len() / 2)),
        ms(took.get(took.len() * 9 / 10)),
        ms(took.last())
    )
}

fn evidence_figures(report: &mut ScenarioReport, kind: Kind, kills: &[Kill]) {
    let evidence: Vec<evidence::Evidence> = kills.iter().map(|k| k.evidence.clone()).collect();
    let (held, sqlite, phases) = evidence::totals(&evidence);
    let each = evidence
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    match kind {
        Kind::Sqlite => report.figure(
            "server side: SQLite write lock held by the victim at the kill (/proc/locks)",
            format!("{held} of {sqlite} kills ({each})"),
        ),
        Kind::Postgres => report.figure(
            "server side: the victim's transactions at the kill (pg_stat_activity): open before \
             the write / written, before COMMIT / committed, not acknowledged",
            format!(
                "{} / {} / {} (per kill: {each})",
                phases.before_write, phases.written, phases.committed
            ),
        ),
    }
}
