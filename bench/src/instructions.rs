//! `instructions`: runs the callgrind benchmarks (`benches/instructions.rs`, gungraun), stores
//! each case's counts from gungraun's JSON summaries, and keeps the per-function profile of
//! [`PROFILED`] (`callgrind_annotate`), for [`crate::report`] to render.
//!
//! Needs valgrind and the `gungraun-runner` of the library's version (`GUNGRAUN_RUNNER`, or
//! on `PATH`); `scripts/bench` installs both.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, bail, ensure};
use serde_json::Value;

use crate::results::{self, InstructionCount, InstructionResults};

/// The cases of `benches/instructions.rs`, as its `#[bench::..]` ids name them, with what each
/// measures.
pub const CASES: [(&str, &str); 5] = [
    (BASELINE, "the handler alone, no layer"),
    (
        PROFILED,
        "a new key: claim, run the handler, store its response",
    ),
    ("replay", "a completed key: the stored response, replayed"),
    (
        "conflict_409",
        "the key's first request still running: 409 at once",
    ),
    ("passthrough", "a POST without a key, through the layer"),
];
pub const BASELINE: &str = "baseline";
/// The case whose per-function profile is kept.
pub const PROFILED: &str = "keyed_first";
/// The profile's file in the results directory (and next to the report).
pub const PROFILE_FILE: &str = "instructions-keyed_first.txt";
/// Functions shown in the profile.
const PROFILE_FUNCTIONS: usize = 30;

/// Runs the benchmarks and stores `instructions.json` and [`PROFILE_FILE`] under `results_dir`.
pub fn run(results_dir: &Path) -> anyhow::Result<()> {
    let started = Instant::now();
    let stored = results_dir.join("instructions.json");
    // A failed run must not leave the last run's numbers to be reported as this one's.
    for stale in [stored.clone(), results_dir.join(PROFILE_FILE)] {
        remove(&stale)?;
    }
    let home = std::path::absolute(results_dir.join("gungraun"))?;
    if home.exists() {
        fs::remove_dir_all(&home).with_context(|| format!("removing {}", home.display()))?;
    }
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    eprintln!("instructions: cargo bench --bench instructions (callgrind)");
    let status = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args([
            "bench",
            "--ignore-rust-version",
            "--manifest-path",
            manifest,
        ])
        .args(["--bench", "instructions", "--", "--save-summary=json"])
        .arg(format!("--home={}", home.display()))
        .status()
        .context("running cargo bench")?;
    ensure!(
        status.success(),
        "the instruction benchmarks failed ({status}): see their output above"
    );

    let mut cases = Vec::new();
    let mut profile = None;
    for (case, _) in CASES {
        let dir = case_dir(&home, case)?;
        let summary: Value = serde_json::from_slice(&fs::read(dir.join("summary.json"))?)
            .with_context(|| format!("reading {}/summary.json", dir.display()))?;
        cases.push(count(case, &summary).with_context(|| format!("the summary of {case}"))?);
        if case == PROFILED {
            profile = Some(annotate(&callgrind_file(&dir)?)?);
        }
    }
    if let Some(profile) = profile {
        fs::write(results_dir.join(PROFILE_FILE), profile)?;
    }
    let results = InstructionResults {
        command: results::command_line(),
        tools: tools(),
        cases,
        seconds: started.elapsed().as_secs_f64(),
    };
    for c in &results.cases {
        eprintln!("instructions: {:<14} {:>9} Ir", c.case, c.instructions);
    }
    eprintln!("instructions: took {:.0} s", results.seconds);
    results::save(&stored, &results)
}

fn remove(path: &Path) -> anyhow::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", path.display()))
        }
        _ => Ok(()),
    }
}

/// The output directory of one case: `<home>/<package>/<bench>/<group>/<function>.<case>`.
fn case_dir(home: &Path, case: &str) -> anyhow::Result<PathBuf> {
    let suffix = format!(".{case}");
    let mut pending = vec![home.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            if !path.is_dir() {
                continue;
            }
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(&suffix) && path.join("summary.json").is_file() {
                return Ok(path);
            }
            pending.push(path);
        }
    }
    bail!("no gungraun summary for {case} under {}", home.display())
}

/// The counts of one case from its summary (the callgrind profile's total).
fn count(case: &str, summary: &Value) -> anyhow::Result<InstructionCount> {
    let profiles = summary["profiles"].as_array().context("no profiles")?;
    let callgrind = profiles
        .iter()
        .find(|p| p["tool"] == "Callgrind")
        .context("no callgrind profile")?;
    let metrics = &callgrind["data"]["total"]["metrics"];
    // Each metric is {"values": {"new": n}} ("old" too where an earlier run is compared).
    let metric = |name: &str| metrics[name]["values"]["new"].as_u64();
    Ok(InstructionCount {
        case: case.to_owned(),
        instructions: metric("Ir").context("no Ir")?,
        l1_hits: metric("L1hits"),
        ll_hits: metric("LLhits"),
        ram_hits: metric("RamHits"),
        estimated_cycles: metric("EstimatedCycles"),
    })
}

/// The case's callgrind output file (`callgrind.<id>.out`, not a log or an older run's).
fn callgrind_file(dir: &Path) -> anyhow::Result<PathBuf> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if name.starts_with("callgrind.") && name.ends_with(".out") {
            return Ok(path);
        }
    }
    bail!("no callgrind output file in {}", dir.display())
}

/// `callgrind_annotate --inclusive=yes`: its header and the top functions by inclusive Ir,
/// without the frames around the measured call (at 100%: `main`, the harness) and with objects
/// named by file name.
fn annotate(file: &Path) -> anyhow::Result<String> {
    let output = Command::new("callgrind_annotate")
        .args([
            "--inclusive=yes",
            "--auto=no",
            "--show=Ir",
            "--threshold=100",
        ])
        .arg(file)
        .output()
        .context("running callgrind_annotate")?;
    ensure!(
        output.status.success(),
        "callgrind_annotate {} failed: {}",
        file.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    let text = String::from_utf8_lossy(&output.stdout);
    let mut kept = format!(
        "callgrind_annotate --inclusive=yes --auto=no --show=Ir {}\n\
         (top {PROFILE_FUNCTIONS} functions; the frames around the measured call, at 100%, left out)\n\n",
        file.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut rows = None;
    for line in text.lines() {
        if let Some(n) = rows {
            if n >= PROFILE_FUNCTIONS {
                break;
            }
            if line.contains("(100.0%)") {
                continue;
            }
            if !line.trim().is_empty() && !line.starts_with("---") {
                rows = Some(n + 1);
            }
        }
        if line.contains("file:function") {
            rows = Some(0);
        }
        kept.push_str(&short_object(line));
        kept.push('\n');
    }
    Ok(kept)
}

/// `... [/path/to/object]` as `... [object]`.
fn short_object(line: &str) -> String {
    match (line.rfind(" ["), line.ends_with(']')) {
        (Some(open), true) => {
            let object = &line[open + 2..line.len() - 1];
            let name = object.rsplit('/').next().unwrap_or(object);
            format!("{} [{name}]", &line[..open])
        }
        _ => line.to_owned(),
    }
}

/// gungraun-runner's and valgrind's versions, as they report them.
fn tools() -> String {
    let runner = std::env::var_os("GUNGRAUN_RUNNER").unwrap_or_else(|| "gungraun-runner".into());
    let version = |program: &std::ffi::OsStr| {
        Command::new(program)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown".to_owned())
    };
    format!("{}, {}", version(&runner), version("valgrind".as_ref()))
}
