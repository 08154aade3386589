//! The report's "Redis ceiling" section, from `redis-ceiling.json`, with the Redis
//! configurations' throughput from the load results as a fraction of it.

use std::fmt::Write as _;

use super::{summarize, thousands};
use crate::{
    config::Config,
    load::Scenario,
    results::{LoadResults, RedisBenchmarkRun, RedisCeilingResults},
};

/// The configurations compared with the ceiling.
const CONFIGS: [Config; 2] = [Config::OursRedis, Config::IdempotentRedis];

fn latency(ms: Option<f64>) -> String {
    ms.map_or_else(|| "–".to_owned(), |v| format!("{v:.2} ms"))
}

fn fraction(rps: Option<f64>, ceiling: f64) -> String {
    match rps {
        Some(rps) if ceiling > 0.0 && rps.is_finite() => format!("{:.0} %", 100.0 * rps / ceiling),
        _ => "–".to_owned(),
    }
}

pub(super) fn section(md: &mut String, ceiling: &RedisCeilingResults, load: &LoadResults) {
    let _ = writeln!(md, "## Redis ceiling\n");
    let _ = writeln!(
        md,
        "What a private `redis-server` ({}) sustains for `RedisStore`'s own commands, measured \
         by `redis-benchmark` with {} clients (the load runs' connections), no pipelining. A \
         first request is a claim and a completion, so its ceiling is \
         1 / (1/claim + 1/complete); a replay is one claim of an existing key. The completions \
         run on absent keys, so the script returns after its `GET`, without its `SET`: a little \
         cheaper than a real one, so the ceiling is slightly high (conservative for us).{}\n",
        ceiling.redis,
        ceiling.clients,
        if ceiling.quick {
            " **`--quick`: about 1 s per command.**"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "| command | `redis-benchmark` | req/s | p50 | p99 |");
    let _ = writeln!(md, "|---|---|---:|---:|---:|");
    let runs: [(&str, &RedisBenchmarkRun); 3] = [
        ("claim, unique keys", &ceiling.claim_unique),
        ("claim of an existing key (replay)", &ceiling.claim_existing),
        ("complete", &ceiling.complete),
    ];
    for (label, run) in runs {
        let command = run.command.replace(&ceiling.complete_sha, "<sha>");
        let command = match command.split_once(" 86400000 ") {
            // The 100-byte response, abbreviated.
            Some((head, _)) => format!("{head} 86400000 <100-byte response>"),
            None => command,
        };
        let _ = writeln!(
            md,
            "| {label} | `{command}` | {} | {} | {} |",
            thousands(run.rps),
            latency(run.p50_ms),
            latency(run.p99_ms)
        );
    }
    let _ = writeln!(
        md,
        "| **ceiling, unique keys** | claim + complete | **{}** | | |",
        thousands(ceiling.unique_ceiling_rps)
    );
    let _ = writeln!(
        md,
        "| **ceiling, replay** | claim of an existing key | **{}** | | |\n",
        thousands(ceiling.replay_ceiling_rps)
    );

    let median = |config: Config, scenario: Scenario| {
        summarize(load, scenario)
            .into_iter()
            .find(|s| s.config == config && s.rps > 0.0)
            .map(|s| s.rps)
    };
    let _ = writeln!(
        md,
        "| configuration | unique req/s | of the ceiling | replay req/s | of the ceiling |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|");
    for config in CONFIGS {
        let unique = median(config, Scenario::Unique);
        let replay = median(config, Scenario::Replay);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |",
            config.name(),
            unique.map_or_else(|| "–".to_owned(), thousands),
            fraction(unique, ceiling.unique_ceiling_rps),
            replay.map_or_else(|| "–".to_owned(), thousands),
            fraction(replay, ceiling.replay_ceiling_rps)
        );
    }
    let _ = writeln!(
        md,
        "\nOn this {}-core machine the load runs' server process and load generator share the \
         cores with Redis, while `redis-benchmark` shares them only with its own client: the \
         fraction measures the whole stack (HTTP, layer, store client), not only the store's \
         client. `idempotent-redis` sends its own commands, not these; its fraction only places \
         it on the same scale. Ceiling measured {}{}.\n",
        load.machine.nproc,
        ceiling.date,
        if load.settings.concurrency == ceiling.clients {
            String::new()
        } else {
            format!(
                "; **the load run used {} connections, not {}**",
                load.settings.concurrency, ceiling.clients
            )
        }
    );
}
