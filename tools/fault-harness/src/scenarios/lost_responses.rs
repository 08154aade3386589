//! lost-responses: two instances behind fault-injecting proxies lose ~30% of responses and
//! delay ~20%; the retrying client must end with a deployment per create, the handler must
//! have run once per create, and the idempotency store (not the database guard) must
//! have answered every retry.

use std::{sync::atomic::Ordering, time::Duration};

use super::{Ctx, backend_env, check_retry_after_honoured, common_checks, resources, run_creates};
use crate::{
    client::{self, Client},
    db::{FleetDb, mint_token},
    executions::{Contract, Executions},
    procs::{Backend, PrivateRedis, Sampler},
    proxy::{FaultProxy, Faults},
    report::ScenarioReport,
};

const NAME: &str = "lost-responses";
const CONCURRENCY: usize = 32;

pub(crate) async fn run(ctx: &Ctx) -> anyhow::Result<ScenarioReport> {
    let creates = ctx.scale().lost_creates;
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
    let faults = Faults {
        drop: 0.30,
        delay: 0.20,
        delay_ms: (50, 300),
    };
    let proxies = [
        FaultProxy::start(a.addr(), faults.clone()).await?,
        FaultProxy::start(b.addr(), faults).await?,
    ];
    let client = Client::new(
        proxies.iter().map(FaultProxy::url).collect(),
        &token,
        client::policy().build()?,
        // A new connection per attempt: none is reused after a drop.
        true,
        true,
    )?;

    let results = run_creates(client.clone(), NAME, 0..creates, CONCURRENCY, None).await;

    let tally = client.tally();
    let verification = db.verify(&results.expected(NAME)).await?;
    let executions = Executions::gather(&mut [&mut a, &mut b]).await;
    let (names, peaks, cpu) = resources(&sampler);
    let count = |f: fn(&crate::proxy::ProxyCounters) -> u64| -> u64 {
        proxies.iter().map(|p| f(p.counters())).sum()
    };
    let connections = count(|c| c.connections.load(Ordering::Relaxed));
    let drops = count(crate::proxy::ProxyCounters::drops);
    let mid_flight = count(|c| c.dropped_mid_flight.load(Ordering::Relaxed));
    let before_response = count(|c| c.dropped_before_response.load(Ordering::Relaxed));
    let truncated = count(|c| c.dropped_truncated.load(Ordering::Relaxed));
    let delays = count(|c| c.delayed.load(Ordering::Relaxed));

    let mut report = ScenarioReport::new(NAME);
    report.standard_figures(
        creates.to_string(),
        &tally,
        format!(
            "{drops} drops of {connections} connections ({mid_flight} mid-flight, \
             {before_response} before the response, {truncated} truncated), {delays} delays \
             of 50-300 ms"
        ),
        &verification,
        &executions,
        Contract::Once,
        &names,
        &peaks,
        &cpu,
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
    let share = drops as f64 / connections.max(1) as f64;
    report.check(
        "faults were injected (every kind of drop, and delays)",
        mid_flight > 0 && before_response > 0 && truncated > 0 && delays > 0 && share > 0.15,
        format!("{:.0}% of connections dropped", share * 100.0),
    );
    check_retry_after_honoured(&mut report, &client.journal());
    drop(proxies);
    Ok(report)
}
