//! What the database itself shows about the victim at the instant it dies (it is frozen with
//! SIGSTOP, looked at, then SIGKILLed: the state seen is the state it dies in).
//!
//! - SQLite: `/proc/locks`, the kernel's table of POSIX locks. SQLite keeps its WAL locks on
//!   bytes of the `-shm` file; byte 120 is the write lock, held from `BEGIN IMMEDIATE` (the
//!   claim) to the end of `COMMIT`. The victim holding it means one of its creates was inside
//!   its transaction.
//! - PostgreSQL: `pg_stat_activity` of the victim's connections (the upstream ports of its
//!   own latency relay), read once the statements it had sent before it froze have reached
//!   the server: an open transaction whose last statement was the handler's
//!   `INSERT INTO deployments` (or the record's insert) was killed between its write and
//!   `COMMIT`; one still before that write was killed mid-handler; a `COMMIT` that began
//!   less than one relay delay before the freeze, or after it, was never acknowledged to the
//!   process: killed right after (or during) its `COMMIT`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use sqlx::PgConnection;

/// The server side of one kill.
#[derive(Debug, Clone, Default)]
pub(super) enum Evidence {
    /// Nothing could be read.
    #[default]
    None,
    /// SQLite: the victim held the write lock.
    Sqlite { write_lock: bool },
    /// PostgreSQL: the victim's transactions by phase.
    Postgres(Phases),
}

/// PostgreSQL transactions of the victim at its death, by phase.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Phases {
    /// Open, the handler's insert not done yet (claimed, guard, insert running).
    pub(super) before_write: u32,
    /// Open, the deployment (and maybe the record) written, `COMMIT` not executed.
    pub(super) written: u32,
    /// Committed, the acknowledgement not received by the process.
    pub(super) committed: u32,
}

impl Phases {
    fn add(&mut self, other: Self) {
        self.before_write += other.before_write;
        self.written += other.written;
        self.committed += other.committed;
    }
}

/// Whether `pid` holds SQLite's WAL write lock on the `-shm` file with inode `shm_inode`.
pub(super) fn sqlite_write_lock(pid: u32, shm_inode: u64) -> anyhow::Result<bool> {
    let locks = std::fs::read_to_string("/proc/locks").context("read /proc/locks")?;
    Ok(holds_write_lock(&locks, pid, shm_inode))
}

/// Parses `/proc/locks` lines: `1: POSIX  ADVISORY  WRITE 4242 fe:00:123 120 120`.
fn holds_write_lock(locks: &str, pid: u32, shm_inode: u64) -> bool {
    const WRITE_LOCK_BYTE: u64 = 120;
    locks.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // Waiting requests are marked `->`; SQLite never waits (F_SETLK), but skip them.
        if fields.get(1) == Some(&"->") || fields.len() < 8 {
            return false;
        }
        let inode = fields[5].rsplit(':').next().and_then(|i| i.parse().ok());
        let (start, end) = (fields[6].parse::<u64>().ok(), fields[7]);
        let end = if end == "EOF" {
            Some(u64::MAX)
        } else {
            end.parse::<u64>().ok()
        };
        fields[1] == "POSIX"
            && fields[3] == "WRITE"
            && fields[4].parse::<u32>().ok() == Some(pid)
            && inode == Some(shm_inode)
            && start.is_some_and(|s| s <= WRITE_LOCK_BYTE)
            && end.is_some_and(|e| e >= WRITE_LOCK_BYTE)
    })
}

/// A row of `pg_stat_activity`: state, query, `query_start` (epoch seconds), and whether the
/// statement runs in a transaction begun before it.
type Activity = (Option<String>, Option<String>, Option<f64>, Option<bool>);

/// The phases of the transactions on the server connections whose client ports are
/// `ports`, for a process frozen at `frozen` behind a relay of one-way `delay`.
pub(super) async fn postgres_phases(
    observer: &mut PgConnection,
    ports: &[u16],
    frozen: SystemTime,
    delay: Duration,
) -> anyhow::Result<Phases> {
    let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
    // `explicit`: the statement runs inside a transaction begun earlier (an autocommit
    // statement, such as the lookup before a claim, starts its transaction with itself).
    // `query_start` dates the last statement (a COMMIT is done within a fraction of a
    // millisecond of it); `state_change` would not do: a pooled connection's liveness check
    // (a bare Sync) moves it without a statement.
    let rows: Vec<Activity> = sqlx::query_as(
        "SELECT state, query, extract(epoch FROM query_start)::float8, \
         xact_start < query_start FROM pg_stat_activity \
         WHERE datname = current_database() AND client_port = ANY($1)",
    )
    .bind(&ports)
    .fetch_all(observer)
    .await
    .context("read pg_stat_activity")?;
    // A COMMIT done after this instant had not been acknowledged when the process froze.
    let unacknowledged_after = frozen
        .checked_sub(delay)
        .unwrap_or(frozen)
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut phases = Phases::default();
    for (state, query, started, explicit) in rows {
        let state = state.as_deref().unwrap_or_default();
        if state == "active" && explicit != Some(true) {
            continue; // a statement of its own, outside any create's transaction
        }
        let one = classify(
            state,
            query.as_deref().unwrap_or_default(),
            started.is_some_and(|c| c >= unacknowledged_after),
        );
        phases.add(one);
    }
    Ok(phases)
}

/// Whether a transaction on the connections whose client ports are `ports` has written its
/// idempotency record and waits for its `COMMIT`.
pub(super) async fn record_written(
    observer: &mut PgConnection,
    ports: &[u16],
) -> anyhow::Result<bool> {
    let ports: Vec<i32> = ports.iter().map(|&p| i32::from(p)).collect();
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_stat_activity WHERE datname = current_database() \
         AND client_port = ANY($1) AND state = 'idle in transaction' \
         AND query LIKE 'INSERT INTO \"idempotency_records\"%')",
    )
    .bind(&ports)
    .fetch_one(observer)
    .await
    .context("read pg_stat_activity")
}

/// One connection's phase (all zero: not in a create's transaction).
fn classify(state: &str, query: &str, unacknowledged: bool) -> Phases {
    let query = query.trim_start().to_ascii_uppercase();
    let mut one = Phases::default();
    match state {
        "idle" if query.starts_with("COMMIT") && unacknowledged => {
            one.committed = 1;
        }
        "idle" | "" | "disabled" => {}
        // A COMMIT still running (or waiting) has not been acknowledged either way: its
        // outcome is what the server decides, counted with the written ones.
        _ if query.starts_with("INSERT INTO DEPLOYMENTS")
            || query.starts_with("INSERT INTO \"IDEMPOTENCY_RECORDS\"")
            || query.starts_with("COMMIT") =>
        {
            one.written = 1;
        }
        _ => one.before_write = 1,
    }
    one
}

/// Totals over kills.
pub(super) fn totals(evidence: &[Evidence]) -> (u32, u32, Phases) {
    let (mut held, mut sqlite) = (0, 0);
    let mut phases = Phases::default();
    for e in evidence {
        match e {
            Evidence::Sqlite { write_lock } => {
                sqlite += 1;
                held += u32::from(*write_lock);
            }
            Evidence::Postgres(p) => phases.add(*p),
            Evidence::None => {}
        }
    }
    (held, sqlite, phases)
}

impl std::fmt::Display for Evidence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::None => f.write_str("-"),
            Self::Sqlite { write_lock: true } => f.write_str("held"),
            Self::Sqlite { write_lock: false } => f.write_str("free"),
            Self::Postgres(p) => write!(f, "{}/{}/{}", p.before_write, p.written, p.committed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_wal_write_lock_from_proc_locks() {
        let locks = "1: POSIX  ADVISORY  READ 42 fe:00:77 124 124\n\
                     2: POSIX  ADVISORY  WRITE 42 fe:00:77 120 120\n\
                     3: POSIX  ADVISORY  WRITE 43 fe:00:78 120 120\n\
                     4: FLOCK  ADVISORY  WRITE 44 fe:00:77 0 EOF\n";
        assert!(holds_write_lock(locks, 42, 77));
        assert!(!holds_write_lock(locks, 43, 77), "another file");
        assert!(!holds_write_lock(locks, 44, 77), "not a POSIX lock");
        assert!(!holds_write_lock(
            "1: POSIX  ADVISORY  WRITE 42 fe:00:77 121 121\n",
            42,
            77
        ));
    }

    #[test]
    fn classifies_connections() {
        let p = |s, q, c| {
            let p = classify(s, q, c);
            (p.before_write, p.written, p.committed)
        };
        assert_eq!(
            p(
                "idle in transaction",
                "INSERT INTO deployments (id) VALUES ($1)",
                false
            ),
            (0, 1, 0)
        );
        assert_eq!(
            p(
                "idle in transaction",
                "INSERT INTO \"idempotency_records\" AS r",
                false
            ),
            (0, 1, 0)
        );
        assert_eq!(
            p(
                "idle in transaction",
                "SELECT pg_try_advisory_xact_lock($1)",
                false
            ),
            (1, 0, 0)
        );
        assert_eq!(p("active", "SELECT id FROM deployments", false), (1, 0, 0));
        assert_eq!(p("idle", "COMMIT", true), (0, 0, 1));
        assert_eq!(
            p("idle", "COMMIT", false),
            (0, 0, 0),
            "acknowledged long ago"
        );
        assert_eq!(p("idle", "SELECT 1", true), (0, 0, 0));
    }
}
