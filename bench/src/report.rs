//! Renders `docs/benchmarks.md` and its SVG chart from the stored results.

mod goals;
mod instructions;
mod redis_ceiling;
mod transactional;

use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path};

use anyhow::Context as _;

use crate::{
    config::Config,
    load::{SAME_KEY_CONCURRENCY, Scenario},
    memory::BODY_BYTES,
    results::{
        self, InstructionResults, LoadResults, Measurement, MemoryResults, RedisCeilingResults,
        RoundTripResults,
    },
};

/// The scenarios measured as a throughput (same-key-64 is a fixed number of requests).
const TIMED: [Scenario; 4] = [
    Scenario::Unique,
    Scenario::Replay,
    Scenario::Retry50,
    Scenario::NoKey,
];

/// Medians over rounds and sums of counts, for one configuration in one scenario.
struct Summary<'a> {
    config: Config,
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    rounds: Vec<&'a Measurement>,
}

impl Summary<'_> {
    fn sum(&self, f: impl Fn(&Measurement) -> u64) -> u64 {
        self.rounds.iter().map(|m| f(m)).sum()
    }

    /// The checks over all rounds at once: counts summed, per-key runs pooled.
    fn failures(&self) -> Vec<String> {
        let mut all = self.rounds[0].clone();
        for m in &self.rounds[1..] {
            all.ok += m.ok;
            all.replayed += m.replayed;
            all.conflict += m.conflict;
            all.other_status += m.other_status;
            all.transport_errors += m.transport_errors;
            all.executions += m.executions;
            all.new_keys += m.new_keys;
            all.executions_per_key.extend(&m.executions_per_key);
            all.error = all.error.or_else(|| m.error.clone());
        }
        all.failures()
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

fn summarize(results: &LoadResults, scenario: Scenario) -> Vec<Summary<'_>> {
    let mut by_config: BTreeMap<usize, Vec<&Measurement>> = BTreeMap::new();
    for m in results
        .measurements
        .iter()
        .filter(|m| m.scenario == scenario)
    {
        let order = Config::ALL
            .iter()
            .position(|c| *c == m.config)
            .unwrap_or(usize::MAX);
        by_config.entry(order).or_default().push(m);
    }
    by_config
        .into_values()
        .map(|rounds| Summary {
            config: rounds[0].config,
            rps: median(rounds.iter().map(|m| m.rps).collect()),
            p50_us: median(rounds.iter().map(|m| m.p50_us as f64).collect()),
            p99_us: median(rounds.iter().map(|m| m.p99_us as f64).collect()),
            rounds,
        })
        .collect()
}

fn thousands(n: f64) -> String {
    let digits = format!("{:.0}", n.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ms(us: f64) -> String {
    if us < 10_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.1} ms", us / 1000.0)
    }
}

/// Round trips, with how many were sqlx's pings where there were any.
fn round_trips(r: &crate::results::RoundTrips) -> String {
    match (r.client_writes, r.pings) {
        (Some(n), Some(pings)) if pings > 0 => format!("{n} ({pings} pings)"),
        (n, _) => optional(n),
    }
}

fn optional(n: Option<u64>) -> String {
    n.map_or_else(|| "–".to_owned(), |n| n.to_string())
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() && b.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "–".to_owned()
    }
}

fn peer_note(config: Config) -> &'static str {
    match config {
        Config::Baseline => "no idempotency layer",
        Config::OursMemory => "tower-idempotency, `MemoryStore`",
        Config::OursRedis => "tower-idempotency, `RedisStore`",
        Config::OursPostgres => "tower-idempotency, `PostgresStore`; the handler inserts a row",
        Config::OursPostgresTx => {
            "transactional mode, `PostgresTransactionalStore`; the handler inserts a row in the lent transaction"
        }
        Config::OursSqlite => "tower-idempotency, `SqliteStore`; the handler inserts a row",
        Config::OursSqliteTx => {
            "transactional mode, `SqliteTransactionalStore`; the handler inserts a row in the lent transaction"
        }
        Config::IdempotentMemory => "`idempotent` 2.0.0, memory store",
        Config::IdempotentRedis => "`idempotent` 2.0.0, Valkey/Redis store",
        Config::AxumIdempotent => "`axum-idempotent` 0.6.0, ruts `MokaStore` session",
    }
}

/// Renders the report from whatever results exist under `dir`.
pub fn render(dir: &Path, markdown: &Path, svg: &Path) -> anyhow::Result<()> {
    let load: Option<LoadResults> = results::load(&dir.join("load.json"))?;
    let memory: Option<MemoryResults> = results::load(&dir.join("memory.json"))?;
    let roundtrips: Option<RoundTripResults> = results::load(&dir.join("roundtrips.json"))?;
    let instructions: Option<InstructionResults> = results::load(&dir.join("instructions.json"))?;
    let ceiling: Option<RedisCeilingResults> =
        results::load(&dir.join(crate::redis_ceiling::FILE))?;
    let load = load.context("no load results yet: run `loadbench run` first")?;

    let svg_name = svg.file_name().map_or_else(
        || "benchmarks-throughput.svg".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    for path in [markdown, svg] {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
    }
    let profile = match instructions {
        Some(_) => instructions::copy_profile(dir, markdown)?,
        None => None,
    };
    let text = markdown_text(
        &load,
        memory.as_ref(),
        roundtrips.as_ref(),
        instructions.as_ref().map(|i| (i, profile.as_deref())),
        ceiling.as_ref(),
        &svg_name,
    );
    fs::write(markdown, text).with_context(|| format!("writing {}", markdown.display()))?;
    fs::write(svg, chart(&load)).with_context(|| format!("writing {}", svg.display()))?;
    eprintln!("report: wrote {} and {}", markdown.display(), svg.display());
    Ok(())
}

fn markdown_text(
    load: &LoadResults,
    memory: Option<&MemoryResults>,
    roundtrips: Option<&RoundTripResults>,
    instruction_counts: Option<(&InstructionResults, Option<&str>)>,
    ceiling: Option<&RedisCeilingResults>,
    svg_name: &str,
) -> String {
    let mut md = String::new();
    let s = &load.settings;
    let m = &load.machine;
    let _ = writeln!(md, "# Benchmarks\n");
    let _ = writeln!(
        md,
        "Generated by `bench/` (`loadbench`) from real measurements; regenerate with \
         `scripts/bench` rather than editing by hand.{}\n",
        if s.quick {
            " **This is a `--quick` run: too short for stable numbers.**"
        } else {
            ""
        }
    );
    let _ = writeln!(md, "## Machine\n");
    let _ = writeln!(md, "| | |\n|---|---|");
    let _ = writeln!(md, "| CPUs (`nproc`) | {} |", m.nproc);
    let _ = writeln!(md, "| CPU model | {} |", m.cpu_model);
    let _ = writeln!(md, "| memory | {} |", m.memory);
    let _ = writeln!(md, "| kernel | {} |", m.kernel);
    let _ = writeln!(md, "| rustc | {} |", m.rustc);
    let _ = writeln!(
        md,
        "| Redis | {} |",
        m.redis.as_deref().unwrap_or("not reachable")
    );
    let _ = writeln!(
        md,
        "| PostgreSQL | {} |",
        m.postgres.as_deref().unwrap_or("not reachable")
    );
    let _ = writeln!(md, "| date | {} |\n", m.date);
    let _ = writeln!(md, "Command: `{}`\n", load.command);

    method(&mut md, load, instruction_counts.is_some());
    goals::section(&mut md, load, memory);

    let _ = writeln!(md, "## Throughput\n");
    let _ = writeln!(
        md,
        "![Requests per second per configuration and scenario]({svg_name})\n"
    );
    for scenario in TIMED {
        timed_table(&mut md, load, scenario);
    }
    ours_vs_peers(&mut md, load);
    server_cpu(&mut md, load);
    same_key_table(&mut md, load);
    correctness(&mut md, load);
    if let Some(ceiling) = ceiling {
        redis_ceiling::section(&mut md, ceiling, load);
    }
    if let Some(memory) = memory {
        memory_section(&mut md, memory);
    }
    if let Some(roundtrips) = roundtrips {
        roundtrip_section(&mut md, roundtrips);
    }
    if let Some((counts, profile)) = instruction_counts {
        instructions::section(&mut md, counts, profile);
    }
    transactional::section(&mut md, load, roundtrips);
    md
}

fn method(md: &mut String, load: &LoadResults, instructions: bool) {
    let s = &load.settings;
    let _ = writeln!(md, "## How it is measured\n");
    let _ = writeln!(
        md,
        "- **App**: axum 0.8, `POST /api/deployments` with a 64-byte JSON body; the handler \
         parses it, counts an execution and answers `201` with a ~45-byte JSON body. Keys are \
         scoped by an `x-user` header (axum-idempotent scopes by its session cookie instead, \
         the only scope it has). Where the store is a database (PostgreSQL, SQLite), the \
         handler also inserts one `orders` row into it: on the store's pool, as a statement of \
         its own, with the separate stores; through the lent transaction in transactional mode \
         (see [Transactional mode](#transactional-mode))."
    );
    let _ = writeln!(
        md,
        "- **Processes**: each configuration is served by its own process on a Tokio \
         multi-thread runtime with **1 worker thread**; the load generator is another process, \
         also with 1 worker. On this {}-CPU machine that shares the cores fairly between server \
         and client; Redis and PostgreSQL (the shared local servers) compete for the same cores, \
         as they would on a small VM. Every (configuration, scenario) pair gets a fresh server, \
         so no run inherits another's records.",
        load.machine.nproc
    );
    let _ = writeln!(
        md,
        "- **Load**: closed loop over {} keep-alive HTTP/1.1 connections (hyper), each sending its \
         next request when the previous answer is read; {:.1} s warm-up, then {:.0} s measured; \
         latency from send to last body byte (HdrHistogram). {} round(s), configurations \
         interleaved within each round with their order rotated; tables show the **median** \
         over rounds.",
        s.concurrency, s.warmup_s, s.duration_s, s.rounds
    );
    let _ = writeln!(
        md,
        "- **Scenarios**: `unique`: a new key per request (claim, execute, store). `replay`: one \
         key stored once, every request replays it. `retry50`: half the requests retry a key the \
         same connection already completed (replay), half are new. `same-key-64`: {} requests \
         with one fresh key sent at once over {} connections, {} keys per run; the handler \
         sleeps {} ms here so the requests overlap as they would with a database write. \
         `no-key`: the `unique` requests without an `Idempotency-Key`, which the layer must \
         pass through to the handler every time; measured only for the configurations without \
         a database.",
        SAME_KEY_CONCURRENCY, SAME_KEY_CONCURRENCY, s.same_key_rounds, s.same_key_work_ms
    );
    let _ = writeln!(
        md,
        "- **Correctness**: the server counts handler executions (`GET /stats`). Every new key \
         that got a 2xx must have run the handler exactly once, a replayed key never again, and \
         in `same-key-64` each key exactly once; any answer other than 2xx or 409 is a failure. \
         The baseline has no layer, so only its status codes are checked, except in `no-key`, \
         where every configuration, the baseline included, must have run the handler once per \
         2xx answer (no replays) and answered no 409."
    );
    let _ = writeln!(
        md,
        "- **Configurations**: {}. Stores as shipped (our `MemoryStore` with a budget above what \
         a run writes, so eviction is not measured; `PostgresStore` with sqlx's 10-connection \
         pool; `PostgresTransactionalStore` on `PgPool::connect`'s pool (sqlx's defaults, also 10 \
         connections); both SQLite stores on the crate's settings: a fresh database file per \
         server, WAL, `synchronous = NORMAL`, 8 connections; `idempotent` and \
         `axum-idempotent` with their defaults and a 24 h TTL like ours).",
        Config::ALL
            .iter()
            .map(|c| format!("`{c}` ({})", peer_note(*c)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if instructions {
        let _ = writeln!(
            md,
            "- **Instructions**: `cargo bench --bench instructions` counts one request through the \
         layer under callgrind (gungraun), in process, without HTTP or load; see \
         [Instruction counts](#instruction-counts)."
        );
    }
    let _ = writeln!(md);
}

fn timed_table(md: &mut String, load: &LoadResults, scenario: Scenario) {
    let rows = summarize(load, scenario);
    if rows.is_empty() {
        return;
    }
    let baseline = rows
        .iter()
        .find(|r| r.config == Config::Baseline)
        .map_or(f64::NAN, |r| r.rps);
    let _ = writeln!(md, "### `{scenario}`\n");
    let _ = writeln!(
        md,
        "| configuration | req/s | vs baseline | p50 | p99 | replayed | 409 | other / errors | handler runs / new keys | correct |"
    );
    let _ = writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let requests = r.sum(|m| m.requests).max(1);
        let runs = if scenario == Scenario::NoKey {
            format!(
                "{} / {} 2xx (no keys)",
                thousands(r.sum(|m| m.executions) as f64),
                thousands(r.sum(|m| m.ok) as f64)
            )
        } else if r.config.deduplicates() {
            format!(
                "{} / {}",
                thousands(r.sum(|m| m.executions) as f64),
                thousands(r.sum(|m| m.new_keys) as f64)
            )
        } else {
            format!("{} (no layer)", thousands(r.sum(|m| m.executions) as f64))
        };
        let failures = r.failures();
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {:.0}% | {} | {} / {} | {} | {} |",
            r.config,
            thousands(r.rps),
            ratio(r.rps, baseline),
            ms(r.p50_us),
            ms(r.p99_us),
            100.0 * r.sum(|m| m.replayed) as f64 / requests as f64,
            r.sum(|m| m.conflict),
            r.sum(|m| m.other_status),
            r.sum(|m| m.transport_errors),
            runs,
            if failures.is_empty() {
                "yes"
            } else {
                "**FAILURE**"
            }
        );
    }
    let _ = writeln!(md);
}

fn ours_vs_peers(md: &mut String, load: &LoadResults) {
    let pairs = [
        (Config::OursMemory, Config::IdempotentMemory),
        (Config::OursMemory, Config::AxumIdempotent),
        (Config::OursRedis, Config::IdempotentRedis),
    ];
    let _ = writeln!(md, "### Ours against the peers\n");
    let _ = writeln!(
        md,
        "Throughput ratio (above 1: ours serves more requests per second) and p99 ratio (below \
         1: ours answers faster), medians of each.\n"
    );
    let mut header = "| scenario |".to_owned();
    let mut rule = "|---|".to_owned();
    for (ours, peer) in pairs {
        let _ = write!(header, " {ours} ÷ {peer}: req/s | p99 |");
        rule.push_str("---:|---:|");
    }
    let _ = writeln!(md, "{header}\n{rule}");
    for scenario in TIMED {
        let rows = summarize(load, scenario);
        if rows.is_empty() {
            continue;
        }
        let get = |c: Config| rows.iter().find(|r| r.config == c);
        let mut line = format!("| `{scenario}` |");
        for (ours, peer) in pairs {
            match (get(ours), get(peer)) {
                (Some(o), Some(p)) => {
                    let _ = write!(
                        line,
                        " {} | {} |",
                        ratio(o.rps, p.rps),
                        ratio(o.p99_us, p.p99_us)
                    );
                }
                _ => line.push_str(" – | – |"),
            }
        }
        let _ = writeln!(md, "{line}");
    }
    let _ = writeln!(md);
}

/// The median over the rounds that measured it; `None` where none did.
fn median_of(rounds: &[&Measurement], f: impl Fn(&Measurement) -> Option<f64>) -> Option<f64> {
    let values: Vec<f64> = rounds.iter().filter_map(|m| f(m)).collect();
    (!values.is_empty()).then(|| median(values))
}

fn micros(us: Option<f64>) -> String {
    us.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"))
}

fn server_cpu(md: &mut String, load: &LoadResults) {
    let scenarios: Vec<(Scenario, Vec<Summary<'_>>)> = TIMED
        .into_iter()
        .map(|s| (s, summarize(load, s)))
        .filter(|(_, rows)| {
            rows.iter()
                .any(|r| r.rounds.iter().any(|m| m.server_user_us.is_some()))
        })
        .collect();
    if scenarios.is_empty() {
        return;
    }
    let _ = writeln!(md, "### Server CPU per request\n");
    let _ = writeln!(
        md,
        "The server process's CPU time over the measured phase (`utime` and `stime` of \
         `/proc/<pid>/stat`, all its threads, in 10 ms ticks) divided by the requests it \
         answered; medians over rounds. Kernel time is mostly the loopback TCP to the client \
         and, where the store is one, to Redis or PostgreSQL (a send also runs the wakeup of \
         the peer, `sock_def_readable`, on the sender's time), and for SQLite its file I/O \
         and the hand-offs to sqlx's worker threads; user time is the server's own code: \
         HTTP, the layer, the store's client and the handler.\n"
    );
    let _ = writeln!(
        md,
        "| scenario | configuration | user µs | kernel µs | total µs | total ÷ baseline |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for (scenario, rows) in &scenarios {
        let total = |r: &Summary<'_>| {
            median_of(&r.rounds, |m| Some(m.server_user_us? + m.server_kernel_us?))
        };
        let baseline = rows
            .iter()
            .find(|r| r.config == Config::Baseline)
            .and_then(total);
        for r in rows {
            let all = total(r);
            let _ = writeln!(
                md,
                "| `{scenario}` | {} | {} | {} | {} | {} |",
                r.config,
                micros(median_of(&r.rounds, |m| m.server_user_us)),
                micros(median_of(&r.rounds, |m| m.server_kernel_us)),
                micros(all),
                match (all, baseline) {
                    (Some(a), Some(b)) => ratio(a, b),
                    _ => "–".to_owned(),
                }
            );
        }
    }
    let _ = writeln!(md);
}

fn same_key_table(md: &mut String, load: &LoadResults) {
    let rows = summarize(load, Scenario::SameKey64);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(md, "### `same-key-64`: how often the handler ran per key\n");
    let _ = writeln!(
        md,
        "| configuration | keys | handler runs per key | fresh 2xx | replayed 2xx | 409 | other / errors | p50 | p99 | verdict |"
    );
    let _ = writeln!(md, "|---|---:|---|---:|---:|---:|---:|---:|---:|---|");
    for r in &rows {
        let mut histogram: BTreeMap<u64, u64> = BTreeMap::new();
        for m in &r.rounds {
            for &n in &m.executions_per_key {
                *histogram.entry(n).or_default() += 1;
            }
        }
        let keys: u64 = histogram.values().sum();
        let runs = histogram
            .iter()
            .map(|(runs, keys)| format!("{runs}× for {keys} keys"))
            .collect::<Vec<_>>()
            .join(", ");
        let verdict = if !r.config.deduplicates() {
            "n/a (no layer)".to_owned()
        } else if r.failures().is_empty() {
            "exactly once".to_owned()
        } else {
            "**FAILURE**: duplicate executions".to_owned()
        };
        let ok = r.sum(|m| m.ok);
        let replayed = r.sum(|m| m.replayed);
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} | {} | {} |",
            r.config,
            keys,
            runs,
            ok - replayed,
            replayed,
            r.sum(|m| m.conflict),
            r.sum(|m| m.other_status),
            r.sum(|m| m.transport_errors),
            ms(r.p50_us),
            ms(r.p99_us),
            verdict
        );
    }
    let _ = writeln!(md);
}

fn correctness(md: &mut String, load: &LoadResults) {
    let _ = writeln!(md, "## Correctness\n");
    let mut any = false;
    for config in Config::ALL {
        let failures: Vec<String> = Scenario::ALL
            .iter()
            .flat_map(|&scenario| {
                summarize(load, scenario)
                    .into_iter()
                    .filter(|r| r.config == config)
                    .flat_map(move |r| {
                        r.failures()
                            .into_iter()
                            .map(move |f| format!("`{scenario}` {f}"))
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        if failures.is_empty() {
            continue;
        }
        any = true;
        let who = if config.is_ours() { "ours" } else { "peer" };
        let _ = writeln!(md, "- **{config}** ({who}): {}", failures.join("; "));
    }
    if !any {
        let _ = writeln!(md, "No configuration failed a check.");
    }
    let _ = writeln!(md);
}

fn memory_section(md: &mut String, memory: &MemoryResults) {
    let _ = writeln!(md, "## Cost per stored key\n");
    let _ = writeln!(
        md,
        "Completed keys with a {BODY_BYTES}-byte response body, written through the store API \
         (claim, then complete) without HTTP. *Payload* is what the caller hands the store per \
         key: for our stores the 32-byte record id plus the encoded response `complete` gets \
         (body, status, `content-type` header and the record header); for Redis, key and value \
         lengths as Redis counts them; for `idempotent`, its stored key, header and body. \
         *Overhead* is bytes per key minus payload. In-memory stores are measured as the \
         resident-size growth of a fresh process; Redis on a private `redis-server`; \
         PostgreSQL as `pg_total_relation_size` (heap, TOAST, primary key and `expires_at` \
         index).\n"
    );
    let _ = writeln!(
        md,
        "| store | measured as | keys | payload / key | bytes / key | overhead / key |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|");
    for c in &memory.costs {
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} B | {} B | {} B |",
            c.store,
            c.method,
            thousands(c.keys as f64),
            thousands(c.payload_bytes as f64),
            thousands(c.bytes_per_key),
            thousands(c.overhead_per_key)
        );
    }
    for s in &memory.skipped {
        let _ = writeln!(md, "\nSkipped: {s}");
    }
    let _ = writeln!(md, "\nCommand: `{}`\n", memory.command);
}

fn roundtrip_section(md: &mut String, roundtrips: &RoundTripResults) {
    let _ = writeln!(md, "## Store round trips per request\n");
    let _ = writeln!(
        md,
        "On a private `redis-server`, a private PostgreSQL cluster (`initdb` under /tmp, \
         `pg_stat_statements` preloaded) and a SQLite file, after a warm-up pass; where the \
         store is a database the handler inserts one row, as under load. *Commands* are what \
         the server executed (`INFO commandstats`, `pg_stat_statements`; for SQLite the \
         statements sqlx logs, which leave out `BEGIN`, `COMMIT` and `ROLLBACK`). *Commits* \
         are transactions that wrote and were made durable: PostgreSQL's WAL commit records \
         (read back with `pg_walinspect`), SQLite's commit hook. *Round trips* are the writes \
         the client sent through a counting TCP proxy, which also catches what is not a \
         statement (sqlx's connection pings, counted apart: a lone Sync before a pooled connection \
         is handed out, with `test_before_acquire`, and when it goes back) but not the one-time \
         preparation of a statement on a connection; SQLite runs in-process and has none.\n"
    );
    let _ = writeln!(
        md,
        "| store | request | status | commands executed | commits | round trips |"
    );
    let _ = writeln!(md, "|---|---|---:|---|---:|---:|");
    for r in &roundtrips.rows {
        let commands = if r.commands.is_empty() {
            "none".to_owned()
        } else {
            r.commands
                .iter()
                .map(|(name, n)| format!("{name} ×{n}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            r.store,
            r.request,
            r.status,
            commands,
            optional(r.commits),
            round_trips(r)
        );
    }
    for s in &roundtrips.skipped {
        let _ = writeln!(md, "\nSkipped: {s}");
    }
    let _ = writeln!(md, "\nCommand: `{}`\n", roundtrips.command);
}

/// Horizontal bars per scenario, hand-written SVG (no dependencies, renders on GitHub).
fn chart(load: &LoadResults) -> String {
    const WIDTH: f64 = 900.0;
    const LABEL: f64 = 150.0;
    const BARS: f64 = 520.0;
    const BAR: f64 = 16.0;
    const GAP: f64 = 5.0;
    const TITLE: f64 = 28.0;

    let groups: Vec<(Scenario, Vec<Summary<'_>>)> = TIMED
        .into_iter()
        .map(|s| (s, summarize(load, s)))
        .filter(|(_, rows)| !rows.is_empty())
        .collect();
    let height = 60.0
        + groups
            .iter()
            .map(|(_, rows)| TITLE + rows.len() as f64 * (BAR + GAP) + 12.0)
            .sum::<f64>();

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="system-ui, -apple-system, Segoe UI, sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r##"<rect width="100%" height="100%" fill="#ffffff"/>"##
    );
    let _ = writeln!(
        svg,
        r##"<text x="10" y="22" font-size="15" font-weight="600" fill="#111827">Requests per second (median of {} round(s), {} connections, 1 server worker thread)</text>"##,
        load.settings.rounds, load.settings.concurrency
    );
    let legend = [
        ("#9ca3af", "baseline (no layer)"),
        ("#2563eb", "tower-idempotency (ours)"),
        ("#ea580c", "peers"),
    ];
    let mut x = 10.0;
    for (color, label) in legend {
        let _ = writeln!(
            svg,
            r#"<rect x="{x}" y="34" width="12" height="12" fill="{color}"/>"#
        );
        let _ = writeln!(
            svg,
            r##"<text x="{}" y="44" fill="#374151">{label}</text>"##,
            x + 16.0
        );
        x += 30.0 + label.len() as f64 * 6.5;
    }

    let mut y = 60.0;
    for (scenario, rows) in &groups {
        let max = rows.iter().map(|r| r.rps).fold(0.0, f64::max).max(1.0);
        let _ = writeln!(
            svg,
            r##"<text x="10" y="{}" font-size="13" font-weight="600" fill="#111827">{scenario} (bars scaled to this scenario's fastest)</text>"##,
            y + 18.0
        );
        y += TITLE;
        for r in rows {
            let color = match r.config {
                Config::Baseline => "#9ca3af",
                c if c.is_ours() => "#2563eb",
                _ => "#ea580c",
            };
            let w = (r.rps / max * BARS).max(1.0);
            let _ = writeln!(
                svg,
                r##"<text x="{}" y="{}" text-anchor="end" fill="#374151">{}</text>"##,
                LABEL - 6.0,
                y + BAR - 4.0,
                r.config
            );
            let _ = writeln!(
                svg,
                r#"<rect x="{LABEL}" y="{y}" width="{w:.1}" height="{BAR}" rx="2" fill="{color}"/>"#
            );
            let _ = writeln!(
                svg,
                r##"<text x="{:.1}" y="{}" fill="#111827">{} req/s · p99 {}</text>"##,
                LABEL + w + 6.0,
                y + BAR - 4.0,
                thousands(r.rps),
                ms(r.p99_us)
            );
            y += BAR + GAP;
        }
        y += 12.0;
    }
    let _ = writeln!(svg, "</svg>");
    svg
}
