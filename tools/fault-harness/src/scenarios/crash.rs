//! crash: an instance is SIGKILLed while requests are really in flight, then restarted on
//! the same port; clients keep retrying.
//!
//! Requests are held in flight by a real slow database, with no test code in the product: a
//! separate transaction holds `LOCK TABLE deployments IN ACCESS EXCLUSIVE MODE` for 1.5 s
//! while creates keep arriving, so their statements on it (the database guard's lookup, then
//! the INSERT) queue behind it. The victim is killed 0.7 s into that window, the lock
//! released, the victim restarted. Leases are 3 s.
//!
//! Per cycle (alternating the victim): lock, 0.7 s, SIGKILL, lock released at 1.5 s,
//! restart, next cycle 6 s after the previous one began.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use sqlx::{Connection as _, Executor as _};

use super::{
    Ctx, Traffic, backend_env, check_retry_after_honoured, common_checks, resources, sleep_until,
};
use crate::{
    client::{self, Attempt, Client, Outcome},
    db::{FleetDb, mint_token},
    executions::{Contract, Executions},
    procs::{Backend, PrivateRedis, Sampler},
    report::{ScenarioReport, secs},
};

const NAME: &str = "crash";
const LEASE: Duration = Duration::from_secs(3);
/// What a blocked key may take beyond its lease to answer something else than 409: the
/// client's wait after a 409 (`Retry-After: 1`, waited as asked), the request itself, and
/// the victim's restart moving traffic around.
const MARGIN: Duration = Duration::from_secs(3);
const LEAD: Duration = Duration::from_secs(1);
/// Long enough for the keys blocked by one kill to recover (lease, then the client's wait)
/// before the next cycle's lock slows the database again.
const CYCLE: Duration = Duration::from_secs(6);
const KILL_AFTER: Duration = Duration::from_millis(700);
const LOCK_HELD: Duration = Duration::from_millis(1500);
const CONCURRENCY: usize = 256;
/// A SIGKILL leaves the victim's claims to expire by their lease; the retry that claims the
/// key then runs the handler again. That is reported here, not failed, until the layer
/// records that a claim ran.
const CONTRACT: Contract = Contract::Reported(
    "a SIGKILLed instance's claims expire by their lease and the retry that claims the key runs \
     the handler again (to be fixed in the layer)",
);

#[derive(Debug)]
struct Kill {
    victim: usize,
    killed_at: Instant,
    /// Attempts in flight to the victim when it was killed (client side).
    in_flight: i64,
    /// Statements on `deployments` waiting for the lock at the kill (server side, both
    /// instances).
    waiting_inserts: i64,
    /// Kill to ready again.
    downtime: Duration,
}

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let scale = ctx.scale();
    let redis = PrivateRedis::start(&ctx.redis_bin).await?;
    let db = FleetDb::create(&ctx.admin_url).await?;
    let token = mint_token(&ctx.backend_bin, &db.url)?;
    let env = backend_env(&db.url, &redis.url(), &[("IDEMPOTENCY_LEASE", "3s")]);
    let mut instances = [
        Backend::start("A", &ctx.backend_bin, env.clone(), ctx.log(NAME, "A")).await?,
        Backend::start("B", &ctx.backend_bin, env, ctx.log(NAME, "B")).await?,
    ];
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
    let mut observer = db.connect().await?;

    let run_for = LEAD + CYCLE * scale.crash_cycles as u32;
    let creates = (run_for.as_secs_f64() * scale.crash_rate as f64) as usize;
    let pace = Duration::from_secs(1) / scale.crash_rate as u32;
    let traffic = Traffic::start(client.clone(), NAME, 0..creates, CONCURRENCY, Some(pace));

    let mut kills = Vec::new();
    let mut next_cycle = Instant::now() + LEAD;
    for cycle in 0..scale.crash_cycles {
        sleep_until(next_cycle).await;
        let cycle_start = Instant::now();
        next_cycle = cycle_start + CYCLE;
        let victim = cycle % 2;
        let mut lock_conn = db.connect().await?;
        let mut lock = lock_conn.begin().await?;
        lock.execute("LOCK TABLE deployments IN ACCESS EXCLUSIVE MODE")
            .await?;
        let locked_at = Instant::now();
        sleep_until(locked_at + KILL_AFTER).await;
        let waiting_inserts: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM pg_locks WHERE NOT granted AND relation = 'deployments'::regclass",
        )
        .fetch_one(&mut observer)
        .await?;
        let in_flight = client.in_flight(victim);
        // Taken before the kill: clients see their connections reset before kill() has
        // reaped the process.
        let killed_at = Instant::now();
        instances[victim].kill();
        sleep_until(locked_at + LOCK_HELD).await;
        lock.rollback().await?;
        lock_conn.close().await.ok();
        instances[victim].restart().await?;
        kills.push(Kill {
            victim,
            killed_at,
            in_flight,
            waiting_inserts,
            downtime: killed_at.elapsed(),
        });
    }
    let results = traffic.join().await?;

    let tally = client.tally();
    let journal = client.journal();
    let verification = db.verify(&results.expected(NAME)).await?;
    let [a, b] = &mut instances;
    let executions = Executions::gather(&mut [a, b]).await;
    let (names, peaks, cpu) = resources(&sampler);

    let blocked = blocked_spans(&journal, &kills);
    let longest = blocked.values().copied().max().unwrap_or_default();
    let recovery = recovery_of_hit_keys(&journal, &kills, &results);

    let mut report = ScenarioReport::new(NAME);
    report.standard_figures(
        format!("{creates} ({} per second)", scale.crash_rate),
        &tally,
        format!(
            "{} SIGKILLs ({}), each inside a {} table lock",
            kills.len(),
            kills
                .iter()
                .map(|k| instances_name(k.victim))
                .collect::<Vec<_>>()
                .join(", "),
            secs(LOCK_HELD)
        ),
        &verification,
        &executions,
        CONTRACT,
        &names,
        &peaks,
        &cpu,
    );
    report.figure(
        "in flight at each kill: requests to the victim / statements waiting on the lock",
        kills
            .iter()
            .map(|k| format!("{} / {}", k.in_flight, k.waiting_inserts))
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.figure(
        "victim down (kill to ready)",
        kills
            .iter()
            .map(|k| secs(k.downtime))
            .collect::<Vec<_>>()
            .join(", "),
    );
    report.figure(
        "keys answered 409 after a kill / longest kill-to-first-non-409",
        format!("{} / {}", blocked.len(), secs(longest)),
    );
    report.figure(
        "keys hit by a kill / longest kill-to-final-201",
        format!("{} / {}", recovery.0, secs(recovery.1)),
    );
    results.figure(&mut report);
    common_checks(
        &mut report,
        &results,
        &verification,
        &executions,
        CONTRACT,
        &[&client],
    );
    report.check(
        "every kill hit requests in flight",
        kills
            .iter()
            .all(|k| k.in_flight > 0 && k.waiting_inserts > 0),
        kills
            .iter()
            .map(|k| format!("{} requests, {} statements", k.in_flight, k.waiting_inserts))
            .collect::<Vec<_>>()
            .join("; "),
    );
    report.check(
        format!(
            "no key answered 409 longer than its lease ({}) + {} after a kill",
            secs(LEASE),
            secs(MARGIN)
        ),
        longest <= LEASE + MARGIN,
        format!("{} keys blocked, longest {}", blocked.len(), secs(longest)),
    );
    check_retry_after_honoured(&mut report, &journal);
    Ok(report)
}

fn instances_name(index: usize) -> &'static str {
    ["A", "B"][index]
}

/// Per key whose first answer after a kill (and before the next one) is a 409: the time from
/// that kill to its first answer other than 409 (the longest over kills).
fn blocked_spans(journal: &[Attempt], kills: &[Kill]) -> HashMap<usize, Duration> {
    let mut by_key: HashMap<usize, Vec<&Attempt>> = HashMap::new();
    for attempt in journal {
        if matches!(attempt.outcome, Some(Outcome::Answer(_))) {
            by_key.entry(attempt.key).or_default().push(attempt);
        }
    }
    let mut spans = HashMap::new();
    for (key, answers) in &mut by_key {
        answers.sort_by_key(|a| a.done);
        for (k, kill) in kills.iter().enumerate() {
            let next_kill = kills.get(k + 1).map(|next| next.killed_at);
            let after: Vec<&&Attempt> = answers
                .iter()
                .filter(|a| a.done.is_some_and(|d| d >= kill.killed_at))
                .collect();
            let status = |a: &Attempt| match &a.outcome {
                Some(Outcome::Answer(answer)) => answer.status,
                _ => 0,
            };
            let Some(first) = after.first() else { continue };
            // A 409 streak belongs to the last kill before it began.
            let before_next = match (first.done, next_kill) {
                (Some(done), Some(next)) => done < next,
                _ => true,
            };
            if status(first) != 409 || !before_next {
                continue;
            }
            let span = after
                .iter()
                .find(|a| status(a) != 409)
                .and_then(|a| a.done)
                // Never unblocked: as long as the whole run.
                .unwrap_or_else(Instant::now)
                .saturating_duration_since(kill.killed_at);
            let entry = spans.entry(*key).or_insert(span);
            *entry = (*entry).max(span);
        }
    }
    spans
}

/// Keys with an attempt in flight at the victim when it was killed, and the longest time
/// from that kill to the key's final 201.
fn recovery_of_hit_keys(
    journal: &[Attempt],
    kills: &[Kill],
    results: &super::Results,
) -> (usize, Duration) {
    let mut hit: HashMap<usize, Instant> = HashMap::new();
    for attempt in journal {
        for kill in kills {
            let in_flight = attempt.target == kill.victim
                && attempt.sent < kill.killed_at
                && attempt.done.is_none_or(|d| d >= kill.killed_at);
            if in_flight {
                hit.insert(attempt.key, kill.killed_at);
            }
        }
    }
    let mut longest = Duration::ZERO;
    for (key, killed_at) in &hit {
        if results.created.contains_key(key) {
            let last_done = journal
                .iter()
                .filter(|a| a.key == *key)
                .filter_map(|a| a.done)
                .max()
                .unwrap_or(*killed_at);
            longest = longest.max(last_done.saturating_duration_since(*killed_at));
        }
    }
    (hit.len(), longest)
}
