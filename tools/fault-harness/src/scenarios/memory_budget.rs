//! memory-budget: one instance with the in-memory store and a small budget
//! (`IDEMPOTENCY_MEMORY_MAX_ENTRIES=2000`, `IDEMPOTENCY_MEMORY_MAX_BYTES=2000000`), flooded
//! with unique keys far past it, one attempt per key.
//!
//! Asserted: once full, new keys get 503 `store-full` (problem+json, `Retry-After`) and are
//! not executed (no row in the database); no more keys are accepted than the budget holds;
//! every key completed earlier still replays byte for byte from the store (fresh records are
//! never evicted; the database guard is never what answers); a refused key is still
//! refused when retried; RSS stays bounded.

use std::{collections::HashMap, time::Duration};

use bytes::Bytes;

use super::{Ctx, backend_env, common_checks, key_of, resources, run_creates};
use crate::{
    client::{self, Client, Failure, Outcome, deployment_body},
    db::{FleetDb, mint_token},
    executions::{Contract, Executions},
    procs::{Backend, Sampler},
    report::{ScenarioReport, mib},
};

const NAME: &str = "memory-budget";
const MAX_ENTRIES: usize = 2_000;
const MAX_BYTES: usize = 2_000_000;
/// The memory store splits its budget over its shards, rounding up; a budget this small gets
/// 8 shards (at least 256 entries each, `MIN_ENTRIES_PER_SHARD`): at most 8 × ⌈2000 / 8⌉ =
/// 2000 records.
const SHARDS: usize = 8;
const WARM_UP: usize = 200;
const CONCURRENCY: usize = 16;
/// RSS may grow by at most this over the instance's idle baseline. The store's own budget is
/// 2 MB of responses plus 128 bytes charged per record (already in the 2 MB); its maps and
/// heaps at 2,000 records are well under 1 MiB; request and connection buffers for 16
/// concurrent clients, the database pool (16 connections) and allocator slack add a few MiB.
/// 32 MiB leaves room for allocator behaviour while catching any growth per key: 5,000
/// (quick) to 50,000 (soak) flooded keys at even 1 KiB retained each would exceed it.
const RSS_GROWTH_LIMIT_KIB: u64 = 32 * 1024;

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let flood = ctx.scale().flood_keys;
    let db = FleetDb::create(&ctx.admin_url).await?;
    let token = mint_token(&ctx.backend_bin, &db.url)?;
    let entries = MAX_ENTRIES.to_string();
    let bytes = MAX_BYTES.to_string();
    let env = backend_env(
        &db.url,
        "memory",
        &[
            ("IDEMPOTENCY_MEMORY_MAX_ENTRIES", &entries),
            ("IDEMPOTENCY_MEMORY_MAX_BYTES", &bytes),
        ],
    );
    let mut a = Backend::start("A", &ctx.backend_bin, env, ctx.log(NAME, "A")).await?;
    let sampler = Sampler::start(vec![("A".into(), a.pid_cell())], Duration::from_millis(50));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let baseline = sampler.peaks()[0];

    // Keys completed before the store fills: they must replay at the end.
    let client = Client::new(
        vec![a.url()],
        &token,
        client::policy().build()?,
        false,
        false,
    )?;
    let warm = run_creates(client.clone(), NAME, 0..WARM_UP, CONCURRENCY, None).await;

    // The flood: one attempt per key, no retry.
    let once = Client::new(
        vec![a.url()],
        &token,
        client::policy().max_attempts(1).build()?,
        false,
        false,
    )?;
    let flooded = run_creates(
        once.clone(),
        NAME,
        WARM_UP..WARM_UP + flood,
        CONCURRENCY,
        None,
    )
    .await;
    let peak_after_flood = sampler.peaks()[0];

    let mut accepted: HashMap<usize, Bytes> = HashMap::new();
    let mut expected: HashMap<String, Vec<String>> = HashMap::new();
    for (n, created) in warm.created.iter().chain(&flooded.created) {
        accepted.insert(*n, created.body.clone());
        expected.insert(key_of(NAME, *n), vec![created.id.clone()]);
    }
    let mut refused = Vec::new();
    let mut wrong = Vec::new();
    let mut first_refusal = None;
    for (n, failure) in &flooded.failures {
        match failure {
            Failure::GaveUp(Outcome::Answer(answer))
                if answer.status == 503
                    && answer.problem_slug() == Some("store-full")
                    && answer.retry_after.is_some() =>
            {
                refused.push(*n);
                first_refusal = Some(first_refusal.map_or(*n, |f: usize| f.min(*n)));
            }
            other => wrong.push(format!("#{n}: {other}")),
        }
    }

    // Every accepted key replays, byte for byte, from the store.
    let mut replay_ok = 0usize;
    let mut replay_bad = Vec::new();
    let mut keys: Vec<usize> = accepted.keys().copied().collect();
    keys.sort_unstable();
    for n in &keys {
        let outcome = once
            .send_once(0, &key_of(NAME, *n), &deployment_body(NAME, *n))
            .await;
        match outcome {
            Outcome::Answer(answer)
                if answer.status == 201 && answer.replayed && answer.body == accepted[n] =>
            {
                replay_ok += 1;
            }
            other => {
                if replay_bad.len() < 3 {
                    replay_bad.push(format!("#{n}: {}", describe(&other)));
                }
            }
        }
    }
    // A refused key is refused again, not executed now.
    let mut still_refused = 0usize;
    let mut refused_bad = Vec::new();
    for n in refused.iter().take(200) {
        match once
            .send_once(0, &key_of(NAME, *n), &deployment_body(NAME, *n))
            .await
        {
            Outcome::Answer(a) if a.status == 503 && a.problem_slug() == Some("store-full") => {
                still_refused += 1;
            }
            other => {
                if refused_bad.len() < 3 {
                    refused_bad.push(format!("#{n}: {}", describe(&other)));
                }
            }
        }
    }
    let peak = sampler.peaks()[0];

    let mut tally = client.tally();
    let flood_tally = once.tally();
    tally.attempts += flood_tally.attempts;
    tally.creates += flood_tally.creates;
    tally.created += flood_tally.created;
    tally.replayed += flood_tally.replayed;
    tally.conflict += flood_tally.conflict;
    tally.unavailable += flood_tally.unavailable;
    tally.other_5xx += flood_tally.other_5xx;
    tally.other += flood_tally.other;
    tally.connect_errors += flood_tally.connect_errors;
    tally.timeouts += flood_tally.timeouts;
    tally.broken += flood_tally.broken;
    let verification = db.verify(&expected).await?;
    let executions = Executions::gather(&mut [&mut a]).await;
    let (names, peaks, cpu) = resources(&sampler);
    let max_records = SHARDS * MAX_ENTRIES.div_ceil(SHARDS);

    let mut report = ScenarioReport::new(NAME);
    report.standard_figures(
        format!(
            "{} ({WARM_UP} before the flood, {flood} unique keys in it)",
            WARM_UP + flood
        ),
        &tally,
        format!("budget overflow: {MAX_ENTRIES} entries / {MAX_BYTES} bytes"),
        &verification,
        &executions,
        Contract::Once,
        &names,
        &peaks,
        &cpu,
    );
    report.figure(
        "accepted / refused store-full / first refusal at key",
        format!(
            "{} / {} / #{}",
            accepted.len(),
            refused.len(),
            first_refusal.map_or("-".to_owned(), |n| n.to_string())
        ),
    );
    report.figure(
        "RSS: idle / after the flood / peak",
        format!(
            "{} / {} / {}",
            mib(baseline),
            mib(peak_after_flood),
            mib(peak)
        ),
    );
    common_checks(
        &mut report,
        &warm,
        &verification,
        &executions,
        Contract::Once,
        &[&client, &once],
    );
    report.check(
        "once full, new keys get 503 store-full with Retry-After (nothing else)",
        !refused.is_empty() && wrong.is_empty(),
        format!(
            "{} refused; other answers: {}",
            refused.len(),
            if wrong.is_empty() {
                "none".to_owned()
            } else {
                wrong[..wrong.len().min(3)].join("; ")
            }
        ),
    );
    report.check(
        format!("no more keys accepted than the budget holds ({max_records} = {SHARDS} shards × ⌈{MAX_ENTRIES}/{SHARDS}⌉)"),
        accepted.len() <= max_records,
        format!("{} accepted", accepted.len()),
    );
    report.check(
        "refused keys were not executed (no row), and are refused again on retry",
        verification.unexpected.is_empty() && still_refused == refused.len().min(200),
        format!(
            "{} rows for refused keys; {still_refused} of {} retried refused again{}",
            verification.unexpected.len(),
            refused.len().min(200),
            if refused_bad.is_empty() {
                String::new()
            } else {
                format!("; {}", refused_bad.join("; "))
            }
        ),
    );
    report.check(
        "every key completed earlier replays byte for byte (fresh records never evicted)",
        replay_ok == accepted.len() && executions.readable() && executions.guard_hits() == 0,
        format!(
            "{replay_ok} of {} replayed; {} answered by the database guard{}",
            accepted.len(),
            executions.guard_hits(),
            if replay_bad.is_empty() {
                String::new()
            } else {
                format!("; {}", replay_bad.join("; "))
            }
        ),
    );
    report.check(
        format!(
            "RSS grows by at most {} over idle",
            mib(RSS_GROWTH_LIMIT_KIB)
        ),
        peak <= baseline + RSS_GROWTH_LIMIT_KIB,
        format!("+{}", mib(peak.saturating_sub(baseline))),
    );
    Ok(report)
}

fn describe(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Answer(a) => format!(
            "{} replayed={} {}",
            a.status,
            a.replayed,
            a.problem_slug().unwrap_or("")
        ),
        other => format!("{other:?}"),
    }
}
