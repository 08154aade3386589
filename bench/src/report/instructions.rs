//! The report's "Instruction counts" section, from `instructions.json`, and the profile it links
//! to, copied next to the report.

use std::{fmt::Write as _, fs, path::Path};

use anyhow::Context as _;

use super::thousands;
use crate::{
    instructions::{BASELINE, CASES, PROFILE_FILE, PROFILED},
    results::InstructionResults,
};

/// Copies the stored profile next to `markdown`; returns its file name there.
pub(super) fn copy_profile(dir: &Path, markdown: &Path) -> anyhow::Result<Option<String>> {
    let source = dir.join(PROFILE_FILE);
    if !source.is_file() {
        return Ok(None);
    }
    let stem = markdown
        .file_stem()
        .map_or_else(|| "benchmarks".into(), |s| s.to_string_lossy().into_owned());
    let name = format!("{stem}-{PROFILE_FILE}");
    let target = markdown.with_file_name(&name);
    fs::copy(&source, &target).with_context(|| format!("writing {}", target.display()))?;
    Ok(Some(name))
}

fn optional(n: Option<u64>) -> String {
    n.map_or_else(|| "–".to_owned(), |n| thousands(n as f64))
}

pub(super) fn section(md: &mut String, results: &InstructionResults, profile: Option<&str>) {
    let _ = writeln!(md, "## Instruction counts\n");
    let _ = writeln!(
        md,
        "One request through `IdempotencyLayer` over `MemoryStore` (scoped by `x-user`, 409 at \
         once while a key runs), under callgrind ({}), with the load harness's handler on a \
         current-thread runtime: `oneshot` of a prepared request, response body read to the \
         end. The runtime, store, layer, request, the case's prior state and one warm-up \
         request are set up outside the count. Unlike wall time, the counts repeat to within a \
         few dozen instructions (hash seeds vary between runs); *est. cycles* is gungraun's \
         estimate from callgrind's cache simulation (L1 hits + 5 × LL hits + 35 × RAM hits), a \
         relative measure, not a timing. *Above baseline* is what the layer adds to the handler \
         alone.\n",
        results.tools
    );
    let _ = writeln!(
        md,
        "| case | what it measures | instructions | above baseline | L1 hits | LL hits | RAM \
         hits | est. cycles |"
    );
    let _ = writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|");
    let baseline = results
        .cases
        .iter()
        .find(|c| c.case == BASELINE)
        .map(|c| c.instructions);
    for c in &results.cases {
        let what = CASES
            .iter()
            .find(|(case, _)| *case == c.case)
            .map_or("", |(_, what)| what);
        let above = match baseline {
            Some(b) if c.case != BASELINE => {
                let d = c.instructions as i64 - b as i64;
                format!(
                    "{}{}",
                    if d < 0 { "−" } else { "+" },
                    thousands(d.abs() as f64)
                )
            }
            _ => "–".to_owned(),
        };
        let _ = writeln!(
            md,
            "| `{}` | {} | {} | {} | {} | {} | {} | {} |",
            c.case,
            what,
            thousands(c.instructions as f64),
            above,
            optional(c.l1_hits),
            optional(c.ll_hits),
            optional(c.ram_hits),
            optional(c.estimated_cycles)
        );
    }
    if let Some(profile) = profile {
        let _ = writeln!(
            md,
            "\nWhere `{PROFILED}`'s instructions go, by function (inclusive): [{profile}]({profile}) \
             (`callgrind_annotate --inclusive=yes`; the full callgrind output files are under the \
             results directory's `gungraun/`)."
        );
    }
    let _ = writeln!(
        md,
        "\nCommand: `{}` ({:.0} s, build included)\n",
        results.command, results.seconds
    );
}
