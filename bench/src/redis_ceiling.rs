//! `redis-ceiling`: what the Redis server itself sustains for `RedisStore`'s commands, measured
//! with `redis-benchmark` against a private `redis-server` (nobody else's keys or load), with
//! as many clients as the load runs have connections ([`CONCURRENCY`]) and no pipelining:
//! - the claim of a new key: `SET key:__rand_int__ <25-byte in-flight value> NX GET PX 30000`
//!   with `-r 100000000`;
//! - the claim of an existing key (a replay): the same command on one key that holds a
//!   completed record;
//! - the completion: `EVALSHA` of the real `complete` script on `key:__rand_int__`. Those keys
//!   are absent (the server is flushed first), so the script answers 0 after its `GET`, without
//!   its `SET`: a little cheaper than a real completion, so the ceiling is slightly high, which
//!   is conservative for us.
//!
//! A first request is a claim and a completion, so the unique-key ceiling is
//! `1 / (1/claim + 1/complete)`; a replay is one claim, so the replay ceiling is the
//! existing-key claim's rate.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use redis::Value;
use tokio::process::Command;

use crate::{
    load::CONCURRENCY,
    results::{self, RedisBenchmarkRun, RedisCeilingResults},
    services::{self, PrivateRedis, socket_of},
};

/// The lease of a claim, in milliseconds (what the load runs' layer asks for).
const LEASE_MS: &str = "30000";
/// The TTL of a completed record, in milliseconds: a day.
const TTL_MS: &str = "86400000";
/// `-r`: the range of `__rand_int__`, so that claims practically never meet an existing key.
const KEY_RANGE: &str = "100000000";
/// An in-flight value: state byte `I`, 16-byte fingerprint, 8-byte token (25 bytes, as
/// `codec::in_flight` lays it out).
const IN_FLIGHT: &str = "Iffffffffffffffff01234567";
/// The fencing token the completion sends (8 bytes); `IN_FLIGHT` holds it at bytes 18..=25.
const TOKEN: &str = "01234567";
/// An encoded response of 100 bytes: ASCII without spaces, commas or quotes, since
/// `redis-benchmark` takes it from argv and repeats the command in its CSV.
const RESPONSE: &str = "200;content-type=application/json;body={id:ord_0123456789;name:web;image:registry.example/web:1.4.2}";
/// The one key the existing-key claims hit.
const EXISTING_KEY: &str = "replay:key";
/// Requests of the first, sizing run of each command.
const PROBE_REQUESTS: u64 = 20_000;

/// The `complete` script of a response of at most `RESERVED_RECORD_BYTES` (`COMPLETE_SMALL`),
/// built as `crates/tower-idempotency-redis/src/scripts.rs` builds it: `Script::new(" flags=
/// allow-oom", COMPLETE_TAIL, ..)` formats `#!lua{flags}\n{CHECK_OWNED}{tail}`. The crate does
/// not expose it; [`run`] checks that a `RedisStore` connected to the same server has loaded a
/// script of this very SHA-1, so a change there fails here instead of measuring another script.
fn complete_script() -> String {
    const CHECK_OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state = string.byte(v, 1)
if state == 67 and #v >= 25 then return 0 end
if state ~= 73 or #v ~= 25 then return -1 end
if string.sub(v, 18, 25) ~= ARGV[1] then return 0 end
";
    const COMPLETE_TAIL: &str = "
redis.call('SET', KEYS[1], 'C' .. string.sub(v, 2, 25) .. ARGV[3], 'PX', ARGV[2])
return 1
";
    format!("#!lua flags=allow-oom\n{CHECK_OWNED}{COMPLETE_TAIL}")
}

/// The completed record the existing-key claims read back: header and [`RESPONSE`].
fn completed_record() -> String {
    format!("C{}{RESPONSE}", &IN_FLIGHT[1..])
}

/// `redis-benchmark` next to `redis-server` (Debian ships it in `redis-tools`), else on `PATH`.
fn redis_benchmark() -> anyhow::Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
    let next_to_server = dirs
        .iter()
        .find(|d| d.join("redis-server").is_file())
        .map(|d| d.join("redis-benchmark"));
    next_to_server
        .into_iter()
        .chain(dirs.iter().map(|d| d.join("redis-benchmark")))
        .find(|p| p.is_file())
        .context("no redis-benchmark next to redis-server or on PATH (Debian: redis-tools)")
}

struct Bench {
    program: PathBuf,
    host: String,
    port: String,
}

impl Bench {
    /// One `redis-benchmark` run of `args` (the command) for `requests` requests.
    async fn once(&self, requests: u64, args: &[&str]) -> anyhow::Result<(f64, Csv)> {
        let start = Instant::now();
        let output = Command::new(&self.program)
            .args(["-h", &self.host, "-p", &self.port])
            .args(["-c", &CONCURRENCY.to_string(), "-P", "1"])
            .args(["-n", &requests.to_string(), "-r", KEY_RANGE, "--csv"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", self.program.display()))?;
        let seconds = start.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() {
            bail!(
                "redis-benchmark {} failed ({}): {}{}",
                args.join(" "),
                output.status,
                stdout.trim(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok((seconds, Csv::parse(&stdout)?))
    }

    /// A short run to size the measured one at about `target_s` seconds, then that one.
    async fn measure(
        &self,
        label: &str,
        target_s: f64,
        args: &[&str],
    ) -> anyhow::Result<RedisBenchmarkRun> {
        let (_, probe) = self.once(PROBE_REQUESTS, args).await?;
        let requests = ((probe.rps * target_s) as u64).clamp(PROBE_REQUESTS, 20_000_000);
        let (seconds, csv) = self.once(requests, args).await?;
        let run = RedisBenchmarkRun {
            label: label.to_owned(),
            command: args.join(" "),
            requests,
            seconds,
            rps: csv.rps,
            avg_ms: csv.avg_ms,
            p50_ms: csv.p50_ms,
            p99_ms: csv.p99_ms,
        };
        eprintln!(
            "redis-ceiling: {label}: {:.0} req/s ({requests} requests in {seconds:.1} s, p50 {} ms, \
             p99 {} ms)",
            run.rps,
            run.p50_ms.map_or("?".to_owned(), |v| v.to_string()),
            run.p99_ms.map_or("?".to_owned(), |v| v.to_string()),
        );
        Ok(run)
    }
}

/// The `--csv` output: a header line, then one line per test.
struct Csv {
    rps: f64,
    avg_ms: Option<f64>,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
}

impl Csv {
    fn parse(text: &str) -> anyhow::Result<Self> {
        let fields = |line: &str| -> Vec<String> {
            line.split(',')
                .map(|f| f.trim().trim_matches('"').to_owned())
                .collect()
        };
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header = fields(lines.next().context("redis-benchmark printed nothing")?);
        let row = fields(
            lines
                .next_back()
                .with_context(|| format!("redis-benchmark printed no result: {text}"))?,
        );
        let column = |name: &str| -> Option<f64> {
            let i = header.iter().position(|h| h == name)?;
            // The test name (the command) has no commas, so columns line up from the end.
            let i = row.len().checked_sub(header.len())? + i;
            row.get(i)?.parse().ok()
        };
        let rps = column("rps").with_context(|| format!("no rps in redis-benchmark's {text}"))?;
        ensure!(
            rps > 0.0,
            "redis-benchmark reported {rps} requests per second"
        );
        Ok(Self {
            rps,
            avg_ms: column("avg_latency_ms"),
            p50_ms: column("p50_latency_ms"),
            p99_ms: column("p99_latency_ms"),
        })
    }
}

async fn measure(quick: bool) -> anyhow::Result<RedisCeilingResults> {
    let program = redis_benchmark()?;
    let server = PrivateRedis::start().await?;
    let redis = services::redis_version(&server.url).await?;
    let mut con = services::redis(&server.url).await?;

    // The script: the one the store loads, and what SCRIPT LOAD names it by.
    let script = complete_script();
    let sha = redis::Script::new(&script).get_hash().to_owned();
    let store = tower_idempotency_redis::RedisStore::connect(&server.url)
        .await
        .context("connecting RedisStore to the private redis-server")?;
    drop(store);
    let exists: Vec<bool> = redis::cmd("SCRIPT")
        .arg("EXISTS")
        .arg(&sha)
        .query_async(&mut con)
        .await?;
    ensure!(
        exists == [true],
        "RedisStore did not load a script of SHA-1 {sha}: the complete script in \
         crates/tower-idempotency-redis/src/scripts.rs changed; update redis_ceiling.rs"
    );
    let loaded: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(&script)
        .query_async(&mut con)
        .await?;
    ensure!(
        loaded == sha,
        "SCRIPT LOAD answered {loaded}, not the SHA-1 {sha} of the script"
    );

    // Each command once, to check it answers what the store expects.
    let claim = |key: &str| {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(IN_FLIGHT)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(LEASE_MS);
        cmd
    };
    let complete = |key: &str| {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(&sha)
            .arg(1)
            .arg(key)
            .arg(TOKEN)
            .arg(TTL_MS)
            .arg(RESPONSE);
        cmd
    };
    let record = completed_record();
    let answer: Value = claim("check:key").query_async(&mut con).await?;
    ensure!(
        answer == Value::Nil,
        "a new key's claim answered {answer:?}"
    );
    let answer: i64 = complete("check:key").query_async(&mut con).await?;
    ensure!(answer == 1, "complete of a claimed key answered {answer}");
    let answer: Option<Vec<u8>> = claim("check:key").query_async(&mut con).await?;
    ensure!(
        answer.as_deref() == Some(record.as_bytes()),
        "a completed key's claim answered {answer:?}"
    );
    let answer: i64 = complete("check:absent").query_async(&mut con).await?;
    ensure!(answer == 0, "complete of an absent key answered {answer}");
    redis::cmd("FLUSHALL").query_async::<()>(&mut con).await?;

    let addr = socket_of(&server.url)?;
    let bench = Bench {
        program: program.clone(),
        host: addr.ip().to_string(),
        port: addr.port().to_string(),
    };
    let target_s = if quick { 1.0 } else { 4.0 };
    let claim_args = |key: &'static str| ["SET", key, IN_FLIGHT, "NX", "GET", "PX", LEASE_MS];
    let complete_args = [
        "EVALSHA",
        sha.as_str(),
        "1",
        "key:__rand_int__",
        TOKEN,
        TTL_MS,
        RESPONSE,
    ];
    let complete_run = bench
        .measure("complete (keys absent)", target_s, &complete_args)
        .await?;

    let claim_unique = bench
        .measure(
            "claim, unique keys",
            target_s,
            &claim_args("key:__rand_int__"),
        )
        .await?;

    redis::cmd("FLUSHALL").query_async::<()>(&mut con).await?;
    redis::cmd("SET")
        .arg(EXISTING_KEY)
        .arg(&record)
        .arg("PX")
        .arg(TTL_MS)
        .query_async::<()>(&mut con)
        .await?;
    let claim_existing = bench
        .measure(
            "claim of an existing key",
            target_s,
            &claim_args(EXISTING_KEY),
        )
        .await?;
    let still: Option<Vec<u8>> = redis::cmd("GET")
        .arg(EXISTING_KEY)
        .query_async(&mut con)
        .await?;
    ensure!(
        still.as_deref() == Some(record.as_bytes()),
        "the existing key's record changed under its claims"
    );

    let unique_ceiling_rps = 1.0 / (1.0 / claim_unique.rps + 1.0 / complete_run.rps);
    let replay_ceiling_rps = claim_existing.rps;
    eprintln!(
        "redis-ceiling: ceilings: unique {unique_ceiling_rps:.0} req/s, replay \
         {replay_ceiling_rps:.0} req/s"
    );
    Ok(RedisCeilingResults {
        command: results::command_line(),
        quick,
        date: results::Machine::describe(None, None).date,
        redis,
        redis_benchmark: program.display().to_string(),
        clients: CONCURRENCY,
        complete_sha: loaded,
        claim_unique,
        claim_existing,
        complete: complete_run,
        unique_ceiling_rps,
        replay_ceiling_rps,
    })
}

/// `redis-ceiling`.
pub fn run(quick: bool, results_dir: &Path) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let results = runtime.block_on(measure(quick))?;
    results::save(&results_dir.join(FILE), &results)
}

/// Where `redis-ceiling` stores its results, in the results directory.
pub const FILE: &str = "redis-ceiling.json";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_redis_benchmark_csv() {
        let csv = Csv::parse(
            "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\
             \"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
             \"SET key:__rand_int__ v NX GET PX 30000\",\"46728.97\",\"0.491\",\"0.072\",\
             \"0.351\",\"0.959\",\"4.479\",\"8.071\"\n",
        )
        .unwrap();
        assert_eq!(csv.rps, 46728.97);
        assert_eq!(csv.avg_ms, Some(0.491));
        assert_eq!(csv.p50_ms, Some(0.351));
        assert_eq!(csv.p99_ms, Some(4.479));
        assert!(Csv::parse("\"test\",\"rps\"\n").is_err());
    }

    #[test]
    fn values_have_the_store_layout() {
        assert_eq!(IN_FLIGHT.len(), 25);
        assert_eq!(&IN_FLIGHT[17..], TOKEN);
        assert_eq!(RESPONSE.len(), 100);
        assert!(!RESPONSE.contains([' ', ',', '"']));
        assert_eq!(completed_record().len(), 125);
    }
}
