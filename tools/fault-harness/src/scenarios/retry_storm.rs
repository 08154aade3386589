//! retry-storm: 200 concurrent clients create with the same 20 keys over and over, against
//! two instances, for the whole storm (each client: create with the retrying client, then
//! again at once). Exactly 20 handler executions and 20 deployments; every answer any client
//! got carries its key's id; the instances' memory stays bounded and flat.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use super::{Ctx, Results, backend_env, common_checks, key_of, resources};
use crate::{
    client::{self, Client, deployment_body},
    db::{FleetDb, mint_token},
    executions::{Contract, Executions},
    procs::{Backend, PrivateRedis, Sample, Sampler},
    report::{ScenarioReport, mib, secs},
};

const NAME: &str = "retry-storm";
const CLIENTS: usize = 200;
const KEYS: usize = 20;
/// Peak RSS limit per instance. A fresh instance holds about 10-20 MiB; 200 connections and
/// their buffers add a few MiB. Ten times that is still a small service; a leak per request
/// at thousands of requests per second crosses it within seconds.
const RSS_LIMIT_KIB: u64 = 200 * 1024;
/// "Not growing steadily": the peak of the last quarter of the storm may exceed the peak of
/// its second quarter (after warm-up) by at most this much.
const GROWTH_SLACK_KIB: u64 = 8 * 1024;
const GROWTH_SLACK_RATIO: f64 = 0.10;

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let storm = ctx.scale().storm;
    let redis = PrivateRedis::start(&ctx.redis_bin).await?;
    let db = FleetDb::create(&ctx.admin_url).await?;
    let token = mint_token(&ctx.backend_bin, &db.url)?;
    let env = backend_env(&db.url, &redis.url(), &[]);
    let mut a = Backend::start("A", &ctx.backend_bin, env.clone(), ctx.log(NAME, "A")).await?;
    let mut b = Backend::start("B", &ctx.backend_bin, env, ctx.log(NAME, "B")).await?;
    let sampler = Sampler::start(
        vec![("A".into(), a.pid_cell()), ("B".into(), b.pid_cell())],
        Duration::from_millis(100),
    );
    // Keep-alive connections: a storm of fresh connections would measure the kernel's
    // ephemeral ports, not the service.
    let client = Client::new(
        vec![a.url(), b.url()],
        &token,
        client::policy()
            .deadline(storm + Duration::from_secs(30))
            .build()?,
        false,
        false,
    )?;

    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let until = started + storm;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..CLIENTS {
        let client = client.clone();
        tasks.spawn(async move {
            let n = c % KEYS;
            let key = key_of(NAME, n);
            let body = deployment_body(NAME, n);
            let mut mine = Vec::new();
            while Instant::now() < until {
                mine.push((n, client.create(c, &key, &body).await));
            }
            mine
        });
    }
    let mut answers = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        answers.extend(joined?);
    }
    let ended = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await;

    let mut ids: HashMap<usize, Vec<String>> = HashMap::new();
    let mut results = Results::default();
    let mut calls = 0u64;
    for (n, outcome) in answers {
        calls += 1;
        match outcome {
            Ok(created) => {
                ids.entry(n).or_default().push(created.id.clone());
                results.created.insert(n, created);
            }
            Err(failure) => results.failures.push((n, failure)),
        }
    }
    let expected: HashMap<String, Vec<String>> = ids
        .into_iter()
        .map(|(n, ids)| (key_of(NAME, n), ids))
        .collect();

    let tally = client.tally();
    let verification = db.verify(&expected).await?;
    let executions = Executions::gather(&mut [&mut a, &mut b]).await;
    let (names, peaks, cpu) = resources(&sampler);
    let samples: Vec<Sample> = sampler
        .samples()
        .into_iter()
        .filter(|s| s.at >= started && s.at <= ended)
        .collect();
    let wall = ended - started;

    let mut report = ScenarioReport::new(NAME);
    report.standard_figures(
        format!("{KEYS} keys, created over and over by {CLIENTS} clients ({calls} creates)"),
        &tally,
        format!("the storm itself: {} of {CLIENTS} clients", secs(storm)),
        &verification,
        &executions,
        Contract::Once,
        &names,
        &peaks,
        &cpu,
    );
    report.figure(
        "request rate",
        format!(
            "{:.0} per second",
            tally.attempts as f64 / wall.as_secs_f64()
        ),
    );
    let mut growth_ok = true;
    let mut growth = Vec::new();
    for (index, name) in names.iter().enumerate() {
        let mine: Vec<&Sample> = samples.iter().filter(|s| s.index == index).collect();
        let quarter = |q: usize| -> u64 {
            let (from, to) = (mine.len() * q / 4, mine.len() * (q + 1) / 4);
            mine[from..to].iter().map(|s| s.rss_kib).max().unwrap_or(0)
        };
        let (second, last) = (quarter(1), quarter(3));
        let allowed = second + GROWTH_SLACK_KIB.max((second as f64 * GROWTH_SLACK_RATIO) as u64);
        growth_ok &= mine.len() >= 8 && last <= allowed;
        let cpu_used = match (mine.first(), mine.last()) {
            (Some(first), Some(last)) => last.cpu_seconds - first.cpu_seconds,
            _ => 0.0,
        };
        growth.push(format!(
            "{name}: {} → {} (2nd → 4th quarter peak), CPU {:.1} s = {:.0}% of a core",
            mib(second),
            mib(last),
            cpu_used,
            100.0 * cpu_used / wall.as_secs_f64()
        ));
    }
    report.figure("during the storm", growth.join("; "));
    common_checks(
        &mut report,
        &results,
        &verification,
        &executions,
        Contract::Once,
        &[&client],
    );
    // 20 original 201s alone would not do: the database guard's answers to a second
    // execution are marked as replays too.
    report.check(
        format!("exactly {KEYS} handler executions, {KEYS} deployments, {KEYS} original 201s"),
        executions.readable()
            && executions.total() == KEYS as u64
            && verification.deployments == KEYS as u64
            && tally.created == KEYS as u64,
        format!(
            "{} executions, {} deployments, {} original 201s",
            executions.total(),
            verification.deployments,
            tally.created
        ),
    );
    report.check(
        format!("peak RSS below {} per instance", mib(RSS_LIMIT_KIB)),
        peaks.iter().all(|p| *p > 0 && *p < RSS_LIMIT_KIB),
        peaks.iter().map(|p| mib(*p)).collect::<Vec<_>>().join(", "),
    );
    report.check(
        "RSS not growing steadily (4th-quarter peak ≤ 2nd-quarter peak + max(10%, 8 MiB))",
        growth_ok,
        growth.join("; "),
    );
    Ok(report)
}
