//! What the backends logged: every execution of the create handler (the harness starts them
//! with `RUST_LOG=warn,backend::api::deployments=info` and JSON logs), warnings, errors and
//! panics.

use std::path::Path;

/// Counts over one or more backend logs.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct LogScan {
    /// `deployment queued`: the handler ran and inserted a row.
    pub(crate) executions: u64,
    /// `repeated idempotency key`: the handler ran again for a key that already had a row,
    /// and the database's unique (user, key) returned the existing deployment. The
    /// idempotency store did not stop that retry; the second line of defence did.
    pub(crate) guard_hits: u64,
    /// Lines at ERROR level.
    pub(crate) errors: u64,
    /// Lines at WARN level.
    pub(crate) warnings: u64,
    /// Panics (the default hook's `panicked at`).
    pub(crate) panics: u64,
}

impl LogScan {
    /// Scans `paths`.
    pub(crate) fn of<P: AsRef<Path>>(paths: &[P]) -> Self {
        let mut scan = Self::default();
        for path in paths {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            for line in text.lines() {
                if line.contains("\"message\":\"deployment queued\"") {
                    scan.executions += 1;
                } else if line.contains("\"message\":\"repeated idempotency key") {
                    scan.guard_hits += 1;
                }
                if line.contains("\"level\":\"ERROR\"") {
                    scan.errors += 1;
                } else if line.contains("\"level\":\"WARN\"") {
                    scan.warnings += 1;
                }
                if line.contains("panicked at") {
                    scan.panics += 1;
                }
            }
        }
        scan
    }
}
