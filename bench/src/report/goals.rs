//! "Goals": the performance targets of the layer, each with this run's figure.

use std::fmt::Write as _;

use super::{Summary, summarize};
use crate::{
    config::Config,
    load::Scenario,
    results::{LoadResults, MemoryResults},
};

/// The where-the-time-goes analysis, written from profiles (see its own header for how).
const PROFILE: &str = include_str!("profile.md");

pub(super) fn section(md: &mut String, load: &LoadResults, memory: Option<&MemoryResults>) {
    let rps = |config: Config, scenario: Scenario| {
        summarize(load, scenario)
            .iter()
            .find(|s: &&Summary<'_>| s.config == config)
            .map(|s| s.rps)
    };
    let ratio = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let (ours, base, peer) = (
        Config::OursMemory,
        Config::Baseline,
        Config::IdempotentMemory,
    );
    let targets = [
        (
            "memory store, fresh keys ÷ no layer",
            ratio(rps(ours, Scenario::Unique), rps(base, Scenario::Unique)),
            0.85,
        ),
        (
            "memory store, fresh keys ÷ `idempotent` memory",
            ratio(rps(ours, Scenario::Unique), rps(peer, Scenario::Unique)),
            1.5,
        ),
        (
            "memory store, replays ÷ no layer",
            ratio(rps(ours, Scenario::Replay), rps(base, Scenario::Replay)),
            0.97,
        ),
        (
            // Indistinguishable from no layer within the run-to-run spread.
            "memory store, requests without a key ÷ no layer",
            ratio(rps(ours, Scenario::NoKey), rps(base, Scenario::NoKey)),
            0.97,
        ),
        (
            "Redis, replays ÷ `idempotent` Redis",
            ratio(
                rps(Config::OursRedis, Scenario::Replay),
                rps(Config::IdempotentRedis, Scenario::Replay),
            ),
            1.2,
        ),
    ];
    let _ = writeln!(md, "## Goals\n");
    let _ = writeln!(
        md,
        "The layer's performance targets, with this run's figures (medians, side by side in one \
         run). Where one is missed, [Where the time goes](#where-the-time-goes) says what stands \
         in the way.\n"
    );
    let _ = writeln!(
        md,
        "| target | goal | this run | met |\n|---|---:|---:|---|"
    );
    for (what, value, goal) in targets {
        let shown = value.map_or_else(|| "–".to_owned(), |v| format!("{v:.2}×"));
        let met = value.is_some_and(|v| v >= goal);
        let _ = writeln!(
            md,
            "| {what} | ≥ {goal}× | {shown} | {} |",
            yes_no(met, value.is_some())
        );
    }
    if let Some(memory) = memory {
        let ours = memory.costs.iter().find(|c| c.store == "ours: MemoryStore");
        if let Some(cost) = ours {
            let met = cost.overhead_per_key <= 100.0;
            let _ = writeln!(
                md,
                "| memory store, bytes per key above its payload ({} keys) | ≤ 100 B | {:.0} B | {} |",
                cost.keys,
                cost.overhead_per_key,
                yes_no(met, true)
            );
        }
    }
    let _ = writeln!(md);
    let _ = writeln!(md, "{}", PROFILE.trim_end());
    let _ = writeln!(md);
}

fn yes_no(met: bool, measured: bool) -> &'static str {
    match (measured, met) {
        (false, _) => "not measured",
        (true, true) => "yes",
        (true, false) => "**no**",
    }
}
