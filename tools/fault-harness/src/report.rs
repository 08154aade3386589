//! Figures and checks of a scenario: printed as a table, and written into the report
//! (`--report docs/reliability.md`) between markers, one block per mode, so a quick run does
//! not erase the figures of a soak run and the prose around the blocks stays as written.

use std::{fmt::Write as _, path::Path, time::Duration};

use anyhow::Context as _;

use crate::{
    client::Tally,
    db::Verification,
    executions::{Contract, Executions},
};

/// One assertion.
#[derive(Debug, Clone)]
pub(crate) struct Check {
    /// What is asserted.
    pub(crate) what: String,
    /// Whether it held.
    pub(crate) passed: bool,
    /// What was measured.
    pub(crate) detail: String,
}

/// What a scenario produced.
#[derive(Debug, Clone)]
pub(crate) struct ScenarioReport {
    /// Its name (`lost-responses`, `store-outage (redis)`...).
    pub(crate) name: String,
    /// Figure rows, in order.
    pub(crate) figures: Vec<(String, String)>,
    /// Assertions.
    pub(crate) checks: Vec<Check>,
    /// Set when the scenario could not run to its end.
    pub(crate) error: Option<String>,
    /// Wall time.
    pub(crate) wall: Duration,
}

impl ScenarioReport {
    /// A report for `name`, to fill.
    pub(crate) fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            figures: Vec::new(),
            checks: Vec::new(),
            error: None,
            wall: Duration::ZERO,
        }
    }

    /// A scenario that failed before it could report.
    pub(crate) fn failed(name: impl Into<String>, error: String, wall: Duration) -> Self {
        let mut report = Self::new(name);
        report.error = Some(error);
        report.wall = wall;
        report
    }

    /// Adds a figure.
    pub(crate) fn figure(&mut self, name: impl Into<String>, value: impl Into<String>) {
        self.figures.push((name.into(), value.into()));
    }

    /// Adds an assertion.
    pub(crate) fn check(
        &mut self,
        what: impl Into<String>,
        passed: bool,
        detail: impl Into<String>,
    ) {
        self.checks.push(Check {
            what: what.into(),
            passed,
            detail: detail.into(),
        });
    }

    /// No error and every check held.
    pub(crate) fn passed(&self) -> bool {
        self.error.is_none() && self.checks.iter().all(|c| c.passed)
    }

    /// The figures every scenario reports, in the standard order.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn standard_figures(
        &mut self,
        logical_creates: String,
        tally: &Tally,
        faults: String,
        verification: &Verification,
        executions: &Executions,
        contract: Contract,
        instances: &[String],
        peaks_kib: &[u64],
        cpu_seconds: &[f64],
    ) {
        self.figure("logical creates", logical_creates);
        self.figure("HTTP attempts", tally.attempts.to_string());
        self.figure("retries", tally.retries().to_string());
        self.figure("faults injected", faults);
        self.figure("deployments created", verification.deployments.to_string());
        executions.figures(self, contract);
        self.figure(
            "answers: 201 original / 201 replay / 409 / 503 / other 5xx",
            format!(
                "{} / {} / {} / {} / {}",
                tally.created, tally.replayed, tally.conflict, tally.unavailable, tally.other_5xx
            ),
        );
        self.figure(
            "no answer: connect error / timeout / broken; other statuses",
            format!(
                "{} / {} / {}; {}",
                tally.connect_errors, tally.timeouts, tally.broken, tally.other
            ),
        );
        self.figure(
            "peak RSS",
            instances
                .iter()
                .zip(peaks_kib)
                .map(|(name, kib)| format!("{name} {}", mib(*kib)))
                .collect::<Vec<_>>()
                .join(", "),
        );
        self.figure(
            "CPU time",
            instances
                .iter()
                .zip(cpu_seconds)
                .map(|(name, s)| format!("{name} {s:.1} s"))
                .collect::<Vec<_>>()
                .join(", "),
        );
    }

    /// As a terminal table.
    pub(crate) fn to_text(&self) -> String {
        let mut rows: Vec<(String, String)> = self.figures.clone();
        rows.push(("wall time".into(), secs(self.wall)));
        let width = rows.iter().map(|(n, _)| n.len()).max().unwrap_or(0);
        let mut out = String::new();
        let verdict = if self.passed() { "PASS" } else { "FAIL" };
        let _ = writeln!(out, "== {} — {verdict}", self.name);
        for (name, value) in &rows {
            let _ = writeln!(out, "  {name:<width$}  {value}");
        }
        if let Some(error) = &self.error {
            let _ = writeln!(out, "  ERROR: {error}");
        }
        for check in &self.checks {
            let mark = if check.passed { "ok  " } else { "FAIL" };
            let _ = writeln!(out, "  [{mark}] {} — {}", check.what, check.detail);
        }
        out
    }

    /// As Markdown: a figures table and the list of checks.
    pub(crate) fn to_markdown(&self) -> String {
        let mut out = String::new();
        let verdict = if self.passed() { "passed" } else { "FAILED" };
        let _ = writeln!(out, "#### {} ({verdict})\n", self.name);
        let _ = writeln!(out, "| figure | value |\n|---|---|");
        for (name, value) in &self.figures {
            let _ = writeln!(out, "| {} | {} |", escape(name), escape(value));
        }
        let _ = writeln!(out, "| wall time | {} |", secs(self.wall));
        out.push('\n');
        if let Some(error) = &self.error {
            let _ = writeln!(out, "Error: `{}`\n", error.replace('`', "'"));
        }
        for check in &self.checks {
            let mark = if check.passed { "✅" } else { "❌" };
            let _ = writeln!(out, "- {mark} {}: {}", check.what, check.detail);
        }
        out
    }
}

fn escape(text: &str) -> String {
    text.replace('|', "\\|")
}

/// KiB as MiB with one decimal.
pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Seconds with one decimal.
pub(crate) fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

/// Replaces the block of `mode` in the report at `path` (creating the file with a skeleton
/// if it does not exist) with `content`.
pub(crate) fn write_block(path: &Path, mode: &str, content: &str) -> anyhow::Result<()> {
    let begin = format!("<!-- fault-harness:{mode}:begin -->");
    let end = format!("<!-- fault-harness:{mode}:end -->");
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => skeleton(),
        Err(error) => return Err(error).with_context(|| format!("read {}", path.display())),
    };
    let block = format!("{begin}\n{}\n{end}", content.trim_end());
    let updated = match (existing.find(&begin), existing.find(&end)) {
        (Some(start), Some(stop)) if stop > start => {
            format!(
                "{}{block}{}",
                &existing[..start],
                &existing[stop + end.len()..]
            )
        }
        // No block for this mode yet: append one.
        _ => format!("{}\n### Last {mode} run\n\n{block}\n", existing.trim_end()),
    };
    std::fs::write(path, updated).with_context(|| format!("write {}", path.display()))
}

fn skeleton() -> String {
    let mut out = String::from("# Reliability\n\nFigures written by `fault-harness --report`.\n");
    for mode in ["quick", "standard", "soak"] {
        let _ = write!(
            out,
            "\n### Last {mode} run\n\n<!-- fault-harness:{mode}:begin -->\n(not run yet)\n\
             <!-- fault-harness:{mode}:end -->\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_only_its_block() {
        let dir = std::env::temp_dir().join(format!("fh-report-{}", fastrand::u32(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("r.md");
        std::fs::write(
            &path,
            "intro\n<!-- fault-harness:quick:begin -->\nold\n<!-- fault-harness:quick:end -->\n\
             mid\n<!-- fault-harness:soak:begin -->\nsoak\n<!-- fault-harness:soak:end -->\nend\n",
        )
        .unwrap();
        write_block(&path, "quick", "new\n").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains(
            "intro\n<!-- fault-harness:quick:begin -->\nnew\n<!-- fault-harness:quick:end -->\nmid"
        ));
        assert!(text.contains("soak\n<!-- fault-harness:soak:end -->\nend\n"));
        write_block(&path, "standard", "std").unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("### Last standard run"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
