//! What one backend logged, over all its lives (the harness appends every life of an
//! instance to one file). The backends run with JSON logs and
//! `RUST_LOG=warn,backend=info`, which keeps:
//!
//! - `listening` (target `backend`): one per life, logged before the instance serves;
//! - the execution log (target `backend::executions`): `create handler executing` each time
//!   the create handler runs for a keyed request, written before the handler does anything
//!   else, so it survives a SIGKILL; `idempotency guard hit` each time the database guard
//!   (the user's deployment with the key, within its TTL) answered instead of an insert. Both carry `record`, the layer's record id
//!   (SHA-256 of user and key);
//! - `deployment queued` (target `backend::api::deployments::create`): the create handler's
//!   insert returned, naming the new deployment: its write is done, inside the request's
//!   transaction in transactional mode, before the layer commits it;
//! - warnings, errors, and panics (the default hook's plain-text `panicked at`).

use std::{collections::HashMap, path::Path};

use anyhow::Context as _;

/// Target of the backend's execution log.
pub(crate) const EXECUTION_TARGET: &str = "backend::executions";
/// Message of an execution line.
pub(crate) const EXECUTION_MESSAGE: &str = "create handler executing";
/// Message of a guard-hit line.
pub(crate) const GUARD_HIT_MESSAGE: &str = "idempotency guard hit";
/// Message of the handler's line once its insert returned.
pub(crate) const QUEUED_MESSAGE: &str = "deployment queued";

/// What one life of an instance logged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Life {
    /// Executions of the create handler.
    pub(crate) executions: u64,
    /// Hits of the database guard.
    pub(crate) guard_hits: u64,
}

/// What the handler did in one life, run by run.
#[derive(Debug, Clone, Default)]
pub(crate) struct LifeRuns {
    /// Executions per idempotency record (hex).
    pub(crate) records: HashMap<String, u64>,
    /// Ids of the deployments its inserts wrote (`deployment queued`), committed or not.
    pub(crate) queued: Vec<String>,
}

/// One backend's log, read.
#[derive(Debug, Clone, Default)]
pub(crate) struct LogScan {
    /// Per life (each starts at a `listening` line), in order.
    pub(crate) lives: Vec<Life>,
    /// Per life, the same order: which records ran and which deployments were written.
    pub(crate) runs: Vec<LifeRuns>,
    /// Executions per idempotency record (hex).
    pub(crate) per_record: HashMap<String, u64>,
    /// Execution-log lines that could not be read (not JSON, no record, unknown message,
    /// before the first `listening`): each makes the counts untrustworthy.
    pub(crate) unreadable: Vec<String>,
    /// Lines at ERROR level.
    pub(crate) errors: u64,
    /// Lines at WARN level.
    pub(crate) warnings: u64,
    /// Panics (the default hook's `panicked at`).
    pub(crate) panics: u64,
}

impl LogScan {
    /// Reads the log at `path`. A missing or unreadable file is an error, never an empty log.
    pub(crate) fn read(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read the backend log {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// Scans the text of a log.
    pub(crate) fn parse(text: &str) -> Self {
        let mut scan = Self::default();
        for line in text.lines() {
            if line.contains("panicked at") {
                scan.panics += 1;
            }
            let json = serde_json::from_str::<serde_json::Value>(line).ok();
            if line.contains(EXECUTION_TARGET) {
                scan.execution_line(line, json.as_ref());
                continue;
            }
            let Some(json) = json else { continue };
            match json["level"].as_str() {
                Some("ERROR") => scan.errors += 1,
                Some("WARN") => scan.warnings += 1,
                _ => {}
            }
            if json["target"] == "backend" && json["message"] == "listening" {
                scan.lives.push(Life::default());
                scan.runs.push(LifeRuns::default());
            } else if json["message"] == QUEUED_MESSAGE
                && json["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("backend::"))
            {
                scan.queued_line(line, &json);
            }
        }
        scan
    }

    fn queued_line(&mut self, line: &str, json: &serde_json::Value) {
        let excerpt = || line.chars().take(160).collect::<String>();
        match (json["deployment"].as_str(), self.runs.last_mut()) {
            (Some(id), Some(runs)) => runs.queued.push(id.to_owned()),
            (None, _) => self
                .unreadable
                .push(format!("no deployment id: {}", excerpt())),
            (_, None) => self.unreadable.push(format!(
                "before the instance's `listening` line: {}",
                excerpt()
            )),
        }
    }

    fn execution_line(&mut self, line: &str, json: Option<&serde_json::Value>) {
        let mut unreadable = |why: &str| {
            let excerpt: String = line.chars().take(160).collect();
            self.unreadable.push(format!("{why}: {excerpt}"));
        };
        let Some(json) = json else {
            return unreadable("not JSON");
        };
        let Some(record) = json["record"]
            .as_str()
            .filter(|r| r.len() == 64 && r.bytes().all(|b| b.is_ascii_hexdigit()))
        else {
            return unreadable("no record id");
        };
        let record = record.to_owned();
        let message = json["message"].as_str().unwrap_or_default().to_owned();
        let Some(life) = self.lives.last_mut() else {
            return unreadable("before the instance's `listening` line");
        };
        match message.as_str() {
            EXECUTION_MESSAGE => {
                life.executions += 1;
                if let Some(runs) = self.runs.last_mut() {
                    *runs.records.entry(record.clone()).or_default() += 1;
                }
                *self.per_record.entry(record).or_default() += 1;
            }
            GUARD_HIT_MESSAGE => life.guard_hits += 1,
            _ => unreadable("unknown execution-log message"),
        }
    }

    /// Executions over every life.
    pub(crate) fn executions(&self) -> u64 {
        self.lives.iter().map(|l| l.executions).sum()
    }

    /// Guard hits over every life.
    pub(crate) fn guard_hits(&self) -> u64 {
        self.lives.iter().map(|l| l.guard_hits).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const R1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const R2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn execution(record: &str) -> String {
        format!(
            r#"{{"level":"INFO","message":"create handler executing","record":"{record}","target":"backend::executions"}}"#
        )
    }

    #[test]
    fn counts_per_life_and_record() {
        let listening =
            r#"{"level":"INFO","message":"listening","address":"127.0.0.1:1","target":"backend"}"#;
        let guard = format!(
            r#"{{"level":"INFO","message":"idempotency guard hit","record":"{R1}","deployment":"d","outcome":"replayed","target":"backend::executions"}}"#
        );
        let text = [
            listening.to_owned(),
            execution(R1),
            r#"{"level":"INFO","message":"deployment queued","deployment":"d-1","user":"u","target":"backend::api::deployments::create"}"#.to_owned(),
            execution(R2),
            r#"{"level":"WARN","message":"x","target":"tower_idempotency"}"#.to_owned(),
            // SIGKILL, restart.
            listening.to_owned(),
            execution(R1),
            guard,
            "thread 'tokio-runtime-worker' panicked at src/x.rs:1:1:".to_owned(),
        ]
        .join("\n");
        let scan = LogScan::parse(&text);
        assert_eq!(
            scan.lives,
            [
                Life {
                    executions: 2,
                    guard_hits: 0
                },
                Life {
                    executions: 1,
                    guard_hits: 1
                }
            ]
        );
        assert_eq!(scan.per_record[R1], 2);
        assert_eq!(scan.per_record[R2], 1);
        assert_eq!(scan.runs.len(), 2);
        assert_eq!((scan.runs[0].records[R1], scan.runs[0].records[R2]), (1, 1));
        assert_eq!(scan.runs[1].records[R1], 1);
        assert_eq!(scan.runs[0].queued, ["d-1"]);
        assert!(scan.runs[1].queued.is_empty());
        assert_eq!((scan.executions(), scan.guard_hits()), (3, 1));
        assert_eq!((scan.warnings, scan.panics), (1, 1));
        assert!(scan.unreadable.is_empty());
    }

    #[test]
    fn unreadable_lines_are_reported_not_skipped() {
        let text = [
            execution(R1), // before any `listening`
            r#"{"level":"INFO","message":"listening","target":"backend"}"#.to_owned(),
            r#"{"message":"create handler executing","target":"backend::executions"}"#.to_owned(),
            r#"{"message":"create handler exec"#.to_owned() + "backend::executions",
        ]
        .join("\n");
        let scan = LogScan::parse(&text);
        assert_eq!(scan.unreadable.len(), 3, "{:?}", scan.unreadable);
        assert_eq!(scan.executions(), 0);
    }

    #[test]
    fn a_missing_log_is_an_error() {
        assert!(LogScan::read(Path::new("/nonexistent/fault-harness.log")).is_err());
    }
}
