//! `fault-harness`: runs the deployments API as real processes on loopback and injects
//! faults — lost and delayed responses, SIGKILLed instances (with a store of their own, and in
//! transactional mode on SQLite and PostgreSQL), idempotency-store outages, retry storms, an
//! in-memory store flooded past its budget — then counts how often the create
//! handler ran for each logical create (from every instance's execution log, killed lives
//! included, cross-checked with `/metrics`), and checks in the database that every client got
//! its deployment's id. Rows alone cannot show a second execution: the database guard
//! answers it with the first row.
//!
//! ```text
//! cargo run --release -p fault-harness -- --quick                 # CI: about a minute
//! cargo run --release -p fault-harness --                         # standard counts
//! cargo run --release -p fault-harness -- --soak --report docs/reliability.md
//! cargo run --release -p fault-harness -- --quick crash retry-storm
//! ```
//!
//! All traffic goes to 127.0.0.1; every process it starts is stopped when its scenario ends
//! (drop guards), on failure too. Exits non-zero if any check fails.

mod client;
mod commits;
mod db;
mod executions;
mod latency;
mod logs;
mod procs;
mod proxy;
mod report;
mod scenarios;

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use clap::Parser;

use crate::{
    report::{ScenarioReport, secs},
    scenarios::{Ctx, Mode, Scenario},
};

/// Fault injection against real `backend` processes (loopback only).
#[derive(Debug, Parser)]
#[command(name = "fault-harness", version)]
struct Cli {
    /// Small counts, every scenario in about a minute (what CI runs).
    #[arg(long, conflicts_with = "soak")]
    quick: bool,
    /// Longer and bigger: 10x the creates, repeated kills and outages.
    #[arg(long)]
    soak: bool,
    /// The `backend` binary; by default `cargo build --release -p backend` builds it.
    #[arg(long, env = "FAULT_HARNESS_BACKEND_BIN", value_name = "PATH")]
    backend_bin: Option<PathBuf>,
    /// PostgreSQL server for the scenario databases (a role with CREATEDB); defaults to
    /// DATABASE_URL when it is a postgres:// URL, else postgres://postgres@127.0.0.1:5432/test.
    #[arg(
        long,
        env = "FAULT_HARNESS_DATABASE_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    database_url: Option<String>,
    /// `redis-server` binary for the private Redis instances.
    #[arg(long, env = "REDIS_SERVER_BIN", default_value = "redis-server")]
    redis_server: String,
    /// Directory of `initdb` and `pg_ctl` (default: `pg_config --bindir`, or the newest
    /// /usr/lib/postgresql/*/bin).
    #[arg(long, env = "PG_BIN_DIR", value_name = "DIR")]
    pg_bin_dir: Option<PathBuf>,
    /// Rewrite this mode's figures in this Markdown report (e.g. docs/reliability.md).
    #[arg(long, value_name = "FILE")]
    report: Option<PathBuf>,
    /// Keep the backends' logs even when every scenario passes.
    #[arg(long)]
    keep_logs: bool,
    /// Scenarios to run (default: all).
    #[arg(value_enum)]
    scenarios: Vec<Scenario>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<bool> {
    let mode = if cli.quick {
        Mode::Quick
    } else if cli.soak {
        Mode::Soak
    } else {
        Mode::Standard
    };
    let selected: Vec<Scenario> = if cli.scenarios.is_empty() {
        Scenario::ALL.to_vec()
    } else {
        Scenario::ALL
            .into_iter()
            .filter(|s| cli.scenarios.contains(s))
            .collect()
    };
    let backend_bin = match &cli.backend_bin {
        Some(path) => path.clone(),
        None => build_backend()?,
    };
    anyhow::ensure!(
        backend_bin.exists(),
        "backend binary {} does not exist",
        backend_bin.display()
    );
    let admin_url =
        cli.database_url
            .clone()
            .unwrap_or_else(|| match std::env::var("DATABASE_URL") {
                Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                    url
                }
                _ => "postgres://postgres@127.0.0.1:5432/test".to_owned(),
            });
    anyhow::ensure!(
        is_loopback_url(&admin_url),
        "the harness only talks to loopback: the database URL must point at 127.0.0.1/localhost"
    );
    let run_dir = std::env::temp_dir().join(format!("fault-harness-{}", std::process::id()));
    std::fs::create_dir_all(&run_dir)?;
    // PostgreSQL (run as `postgres` when we are root) must be able to reach its data dir.
    let _ = Command::new("chmod").arg("755").arg(&run_dir).status();
    let ctx = Ctx {
        backend_bin,
        admin_url,
        redis_bin: cli.redis_server.clone(),
        pg_bin_dir: cli.pg_bin_dir.clone(),
        run_dir: run_dir.clone(),
        mode,
    };
    println!(
        "fault-harness: {} mode, scenarios: {}; backend {}; logs in {}",
        mode.name(),
        selected
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        ctx.backend_bin.display(),
        run_dir.display()
    );

    let started = Instant::now();
    let mut reports: Vec<ScenarioReport> = Vec::new();
    let mut interrupted = false;
    for scenario in &selected {
        println!("\n-- {} ...", scenario.name());
        let scenario_started = Instant::now();
        let limit = ctx.scale().time_limit;
        let outcome = tokio::select! {
            outcome = tokio::time::timeout(limit, run_scenario(*scenario, &ctx)) => outcome,
            _ = tokio::signal::ctrl_c() => {
                // Dropping the scenario's future above has run its guards: processes
                // stopped, databases dropped.
                interrupted = true;
                eprintln!("interrupted; stopping");
                break;
            }
        };
        let produced = match outcome {
            Ok(produced) => produced,
            Err(_) => vec![Err(anyhow::anyhow!(
                "did not finish within its time limit of {}",
                secs(limit)
            ))],
        };
        let wall = scenario_started.elapsed();
        for result in produced {
            let mut report = match result {
                Ok(report) => report,
                Err(error) => ScenarioReport::failed(scenario.name(), format!("{error:#}"), wall),
            };
            if report.wall.is_zero() {
                report.wall = wall;
            }
            println!("{}", report.to_text());
            reports.push(report);
        }
    }
    let total = started.elapsed();
    let passed = !interrupted && reports.iter().all(ScenarioReport::passed);
    println!(
        "fault-harness: {} of {} passed in {}",
        reports.iter().filter(|r| r.passed()).count(),
        reports.len(),
        secs(total)
    );
    for report in reports.iter().filter(|r| !r.passed()) {
        println!("FAILED: {}", report.name);
    }

    if let Some(path) = &cli.report {
        scenarios::ensure_parent(path)?;
        let block = report_block(mode, &reports, total, passed);
        report::write_block(path, mode.name(), &block)?;
        println!(
            "report: wrote the {} figures into {}",
            mode.name(),
            path.display()
        );
    }
    if passed && !cli.keep_logs {
        let _ = std::fs::remove_dir_all(&run_dir);
    } else {
        println!("backend logs kept in {}", run_dir.display());
    }
    Ok(passed)
}

async fn run_scenario(scenario: Scenario, ctx: &Ctx) -> Vec<anyhow::Result<ScenarioReport>> {
    let timed = |started: Instant, r: anyhow::Result<ScenarioReport>| {
        r.map(|mut report| {
            report.wall = started.elapsed();
            report
        })
    };
    let started = Instant::now();
    match scenario {
        Scenario::LostResponses => {
            vec![timed(started, scenarios::lost_responses::run(ctx).await)]
        }
        Scenario::Crash => vec![timed(started, scenarios::crash::run(ctx).await)],
        Scenario::CrashTx => scenarios::crash_tx::run(ctx).await,
        Scenario::StoreOutage => scenarios::store_outage::run(ctx).await,
        Scenario::RetryStorm => vec![timed(started, scenarios::retry_storm::run(ctx).await)],
        Scenario::MemoryBudget => vec![timed(started, scenarios::memory_budget::run(ctx).await)],
    }
}

fn report_block(mode: Mode, reports: &[ScenarioReport], total: Duration, passed: bool) -> String {
    let now = time::OffsetDateTime::now_utc();
    let date = now
        .format(time::macros::format_description!(
            "[year]-[month]-[day] [hour]:[minute] UTC"
        ))
        .unwrap_or_default();
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into());
    let dirty = git(&["status", "--porcelain"]).is_some_and(|s| !s.is_empty());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut args = Vec::new();
    let mut skip_next = false;
    for arg in std::env::args().skip(1) {
        if std::mem::take(&mut skip_next) || arg.starts_with("--report=") {
            continue;
        }
        if arg == "--report" {
            skip_next = true;
            continue;
        }
        args.push(arg);
    }
    let mut out = format!(
        "Run of `fault-harness {}` ({} mode) on {date}, commit `{commit}`{}, {cores} cores: \
         **{}**, {} scenario reports in {}.\n\n",
        args.join(" "),
        mode.name(),
        if dirty { " with local changes" } else { "" },
        if passed {
            "all checks passed"
        } else {
            "FAILED"
        },
        reports.len(),
        secs(total),
    );
    for report in reports {
        out.push_str(&report.to_markdown());
        out.push('\n');
    }
    out
}

fn git(args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .args(args)
        .current_dir(workspace_root())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// `cargo build --release -p backend` in this workspace (same target directory), and the
/// path of the binary it reports.
fn build_backend() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    println!("fault-harness: building the backend (cargo build --release -p backend)");
    let mut command = Command::new(cargo);
    command.args([
        "build",
        "--release",
        "-p",
        "backend",
        "--message-format=json-render-diagnostics",
    ]);
    // Started directly (not by `cargo run`) without CARGO_TARGET_DIR: build into the target
    // directory this binary was built in, not the workspace default.
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(target_dir) = own_target_dir()
    {
        command.arg("--target-dir").arg(target_dir);
    }
    let output = command
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("run cargo build -p backend")?;
    if !output.status.success() {
        bail!("cargo build -p backend failed");
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if message["reason"] == "compiler-artifact"
            && message["target"]["name"] == "backend"
            && let Some(path) = message["executable"].as_str()
        {
            return Ok(PathBuf::from(path));
        }
    }
    bail!("cargo build did not report the backend executable")
}

/// `<target>` when this binary is `<target>/<profile>/fault-harness` in a cargo target
/// directory (which cargo marks with `CACHEDIR.TAG`).
fn own_target_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let target = exe.parent()?.parent()?;
    target
        .join("CACHEDIR.TAG")
        .exists()
        .then(|| target.to_path_buf())
}

fn is_loopback_url(url: &str) -> bool {
    let Some((_, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_only() {
        assert!(is_loopback_url("postgres://postgres@127.0.0.1:5432/test"));
        assert!(is_loopback_url("postgres://u:p@localhost/db"));
        assert!(is_loopback_url("postgres://[::1]:5432/db"));
        assert!(!is_loopback_url("postgres://db.example.com/x"));
        assert!(!is_loopback_url("postgres://10.0.0.1/x"));
    }
}
