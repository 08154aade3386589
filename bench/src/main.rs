//! `loadbench`: measures tower-idempotency against the best peers.
//!
//! ```text
//! loadbench run [--quick]      load scenarios against every configuration, then the report
//! loadbench memory [--quick]   bytes per stored key (memory, Redis, PostgreSQL)
//! loadbench roundtrips         store commands per request (private Redis and PostgreSQL)
//! loadbench redis-ceiling      what a private redis-server sustains for our store's commands
//! loadbench instructions       instructions per request under callgrind (needs valgrind)
//! loadbench report             re-renders docs/benchmarks.md and the SVG from stored results
//! loadbench serve ...          one configuration's server (started by `run`)
//! ```
//!
//! `scripts/bench` runs them all; see docs/benchmarks.md for what is measured and how.

mod app;
mod config;
mod instructions;
mod load;
mod memory;
mod orders;
mod redis_ceiling;
mod report;
mod results;
mod roundtrips;
mod run;
mod services;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    config::{Backends, Config},
    load::Scenario,
};

#[derive(Parser)]
#[command(about = "Load, memory and round-trip benchmarks of tower-idempotency and its peers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct BackendArgs {
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    redis_url: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test"
    )]
    database_url: String,
}

#[derive(Args, Clone)]
struct OutputArgs {
    /// Where measurements are stored between subcommands.
    #[arg(long, default_value = "bench/target/loadbench")]
    results: PathBuf,
    /// The report.
    #[arg(long, default_value = "docs/benchmarks.md")]
    markdown: PathBuf,
    /// The throughput chart the report embeds.
    #[arg(long, default_value = "docs/benchmarks-throughput.svg")]
    svg: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Serve one configuration on 127.0.0.1 until killed.
    Serve {
        #[arg(long, value_enum)]
        config: Config,
        #[arg(long)]
        port: u16,
        /// Keeps this server's Redis keys and table apart (`[a-z0-9_]`).
        #[arg(long, default_value = "manual")]
        namespace: String,
        /// Simulated handler work, in milliseconds.
        #[arg(long, default_value_t = 0)]
        work_ms: u64,
        #[command(flatten)]
        backends: BackendArgs,
    },
    /// Run the load scenarios against every configuration and write the report.
    Run {
        /// A CI-friendly run: 2 s per scenario, one round.
        #[arg(long)]
        quick: bool,
        /// Configurations, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        configs: Vec<Config>,
        /// Scenarios, comma-separated (default: all).
        #[arg(long, value_enum, value_delimiter = ',')]
        scenarios: Vec<Scenario>,
        /// Seconds measured per scenario (default 10; 2 with --quick).
        #[arg(long)]
        duration: Option<f64>,
        /// Rounds; the report shows medians (default 3; 1 with --quick).
        #[arg(long)]
        rounds: Option<usize>,
        /// Keep-alive connections in the timed scenarios.
        #[arg(long, default_value_t = load::CONCURRENCY)]
        concurrency: usize,
        /// Keys per same-key-64 run (default 50; 10 with --quick).
        #[arg(long)]
        same_key_rounds: Option<usize>,
        /// Skip rendering the report.
        #[arg(long)]
        no_report: bool,
        #[command(flatten)]
        backends: BackendArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Bytes per stored key in our memory, Redis and PostgreSQL stores.
    Memory {
        /// Fewer keys (100,000 in memory, 10,000 in Redis and PostgreSQL).
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        backends: BackendArgs,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Fills one in-memory store and prints its cost as JSON (run by `memory`, in a fresh
    /// process so that its resident size is the store's).
    #[command(hide = true)]
    MemoryChild {
        #[arg(long)]
        store: memory::ChildStore,
        #[arg(long)]
        keys: u64,
    },
    /// Store commands and round trips per request, on private Redis and PostgreSQL servers.
    Roundtrips {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// What a private redis-server sustains for `RedisStore`'s commands (`redis-benchmark`,
    /// as many clients as the load runs): the ceiling of the Redis configurations.
    RedisCeiling {
        /// Shorter runs (about 1 s per command instead of 4).
        #[arg(long)]
        quick: bool,
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Instructions per request through the layer, under callgrind (`cargo bench --bench
    /// instructions`; needs valgrind and gungraun-runner, which scripts/bench installs).
    Instructions {
        #[command(flatten)]
        output: OutputArgs,
    },
    /// Re-render the report from the stored results.
    Report {
        #[command(flatten)]
        output: OutputArgs,
    },
}

fn main() -> ExitCode {
    match dispatch(Cli::parse().command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("loadbench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve {
            config,
            port,
            namespace,
            work_ms,
            backends,
        } => {
            let backends = Backends {
                redis_url: backends.redis_url,
                database_url: backends.database_url,
                namespace,
            };
            app::serve(config, port, backends, Duration::from_millis(work_ms))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            quick,
            configs,
            scenarios,
            duration,
            rounds,
            concurrency,
            same_key_rounds,
            no_report,
            backends,
            output,
        } => {
            let options = run::RunOptions {
                quick,
                configs: if configs.is_empty() {
                    Config::ALL.to_vec()
                } else {
                    configs
                },
                scenarios: if scenarios.is_empty() {
                    Scenario::ALL.to_vec()
                } else {
                    scenarios
                },
                duration: Duration::from_secs_f64(duration.unwrap_or(if quick {
                    2.0
                } else {
                    10.0
                })),
                warmup: Duration::from_secs_f64(if quick { 0.5 } else { 1.0 }),
                concurrency,
                rounds: rounds.unwrap_or(if quick { 1 } else { 3 }).max(1),
                same_key_rounds: same_key_rounds
                    .unwrap_or(if quick { 10 } else { 50 })
                    .max(1),
                same_key_work: Duration::from_millis(5),
                redis_url: backends.redis_url,
                database_url: backends.database_url,
                results: output.results.clone(),
            };
            let results = run::run(&options)?;
            if !no_report {
                report::render(&output.results, &output.markdown, &output.svg)?;
            }
            let failures = run::our_failures(&results);
            if failures.is_empty() {
                eprintln!("loadbench: every tower-idempotency configuration was correct");
                Ok(ExitCode::SUCCESS)
            } else {
                for failure in &failures {
                    eprintln!("loadbench: CORRECTNESS FAILURE {failure}");
                }
                Ok(ExitCode::from(2))
            }
        }
        Command::Memory {
            quick,
            backends,
            output,
        } => {
            memory::run(quick, &backends.database_url, &output.results)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::MemoryChild { store, keys } => {
            memory::child(store, keys)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Roundtrips { output } => {
            roundtrips::run(&output.results)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::RedisCeiling { quick, output } => {
            redis_ceiling::run(quick, &output.results)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Instructions { output } => {
            instructions::run(&output.results)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { output } => {
            report::render(&output.results, &output.markdown, &output.svg)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
