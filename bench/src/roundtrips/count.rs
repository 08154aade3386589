//! Where `roundtrips` counts what a request cost the database, and how it names statements.
//!
//! - Redis: `INFO commandstats` deltas.
//! - PostgreSQL: `pg_stat_statements` deltas (statements, utility ones such as `BEGIN` and
//!   `COMMIT` included), and the WAL the request wrote, read back with `pg_walinspect`:
//!   *commits* are its `Transaction/COMMIT` records, i.e. transactions that wrote something
//!   and were made durable (a read-only transaction writes no commit record). Background
//!   records (`Standby`, `XLOG`: running-transaction snapshots, checkpoints) are left out.
//! - SQLite (in-process, no wire): the statements sqlx logs (`sqlx::query` events; sqlx does
//!   not log `BEGIN`, `COMMIT` or `ROLLBACK`), and commits from SQLite's commit hook, which
//!   fires for every transaction that wrote (explicit or autocommit), never for a read.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use tower_idempotency_postgres::sqlx::{self, PgPool};
use tower_idempotency_sqlite::sqlx::{Sqlite, pool::PoolOptions, sqlite::SqliteConnection};

/// What the database had done by some moment.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Executions by command or statement name.
    commands: BTreeMap<String, u64>,
    /// PostgreSQL: the WAL flush position; SQLite: the commit hook's count.
    position: Option<Position>,
}

#[derive(Debug, Clone, Copy)]
enum Position {
    Lsn(u64),
    Commits(u64),
}

/// What happened between two snapshots.
#[derive(Debug, Default)]
pub struct Delta {
    pub commands: Vec<(String, u64)>,
    /// Durable commits (transactions that wrote); `None` where not measured.
    pub commits: Option<u64>,
    /// PostgreSQL: the WAL records written, by `resource manager/record type`.
    pub wal: Vec<(String, u64)>,
}

/// Where commands are counted.
pub enum Counter {
    Redis(redis::aio::MultiplexedConnection),
    /// `wal`: whether `pg_walinspect` is installed.
    Postgres {
        pool: PgPool,
        wal: bool,
    },
    Sqlite(Arc<SqliteCounts>),
}

impl Counter {
    pub fn is_redis(&self) -> bool {
        matches!(self, Self::Redis(_))
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Self::Postgres { .. })
    }

    /// Executions so far, by command or statement.
    pub async fn snapshot(&mut self) -> anyhow::Result<Snapshot> {
        let mut counts = BTreeMap::new();
        let position = match self {
            Self::Redis(con) => {
                let info: String = redis::cmd("INFO")
                    .arg("commandstats")
                    .query_async(con)
                    .await?;
                for line in info.lines() {
                    let Some((name, stats)) = line
                        .strip_prefix("cmdstat_")
                        .and_then(|l| l.split_once(':'))
                    else {
                        continue;
                    };
                    let calls = stats
                        .split(',')
                        .find_map(|kv| kv.strip_prefix("calls="))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    counts.insert(name.to_uppercase(), calls);
                }
                None
            }
            Self::Postgres { pool, wal } => {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT query, calls FROM pg_stat_statements \
                     WHERE query NOT LIKE '%pg_stat_statements%' \
                     AND query NOT LIKE '%pg_current_wal_flush_lsn%' \
                     AND query NOT LIKE '%pg_get_wal_records_info%'",
                )
                .fetch_all(&*pool)
                .await?;
                for (query, calls) in rows {
                    *counts.entry(statement_name(&query)).or_default() += calls as u64;
                }
                if *wal {
                    let lsn: i64 = sqlx::query_scalar(
                        "SELECT (pg_current_wal_flush_lsn() - '0/0'::pg_lsn)::bigint",
                    )
                    .fetch_one(&*pool)
                    .await?;
                    Some(Position::Lsn(lsn as u64))
                } else {
                    None
                }
            }
            Self::Sqlite(counts_of) => {
                counts = counts_of.statements();
                Some(Position::Commits(counts_of.commits()))
            }
        };
        Ok(Snapshot {
            commands: counts,
            position,
        })
    }

    /// What happened from `before` to `after`.
    pub async fn delta(&mut self, before: &Snapshot, after: &Snapshot) -> anyhow::Result<Delta> {
        let mut commands: Vec<(String, u64)> = after
            .commands
            .iter()
            .filter_map(|(name, &n)| {
                let d = n.saturating_sub(before.commands.get(name).copied().unwrap_or(0));
                (d > 0).then(|| (name.clone(), d))
            })
            .collect();
        if self.is_redis() {
            // The first snapshot's own INFO is counted by the second; a store's INFO (the
            // peer's claim script runs one) is not ours to hide.
            if let Some(info) = commands.iter_mut().find(|(name, _)| name == "INFO") {
                info.1 -= 1;
            }
            commands.retain(|(_, n)| *n > 0);
        }
        let (commits, wal) = match (self, before.position, after.position) {
            (Self::Postgres { pool, .. }, Some(Position::Lsn(a)), Some(Position::Lsn(b))) => {
                let wal = wal_records(pool, a, b).await?;
                let commits = wal
                    .iter()
                    .filter(|(name, _)| name.starts_with("Transaction/COMMIT"))
                    .map(|(_, n)| n)
                    .sum();
                (Some(commits), wal)
            }
            (_, Some(Position::Commits(a)), Some(Position::Commits(b))) => {
                (Some(b.saturating_sub(a)), Vec::new())
            }
            _ => (None, Vec::new()),
        };
        Ok(Delta {
            commands,
            commits,
            wal,
        })
    }
}

/// The WAL records between two flush positions, by `rmgr/type`, background ones left out.
async fn wal_records(pool: &PgPool, from: u64, to: u64) -> anyhow::Result<Vec<(String, u64)>> {
    if to <= from {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT resource_manager || '/' || record_type, count(*) \
         FROM pg_get_wal_records_info('0/0'::pg_lsn + $1::numeric, '0/0'::pg_lsn + $2::numeric) \
         WHERE resource_manager NOT IN ('Standby', 'XLOG') GROUP BY 1 ORDER BY 1",
    )
    .bind(from.to_string())
    .bind(to.to_string())
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(k, n)| (k, n as u64)).collect())
}

/// Installs `pg_walinspect` if the server has it (PostgreSQL 15 and later).
pub async fn enable_wal_counts(pool: &PgPool) -> bool {
    sqlx::query("CREATE EXTENSION IF NOT EXISTS pg_walinspect")
        .execute(pool)
        .await
        .is_ok()
}

/// A short name for a statement: what it is for, and its shape.
pub fn statement_name(query: &str) -> String {
    let q = query.trim();
    let upper = q.to_uppercase();
    let verb = upper.split_whitespace().next().unwrap_or("?");
    let handler_table = upper.contains("_ORDERS\"") || upper.contains("INTO \"ORDERS\"");
    let name = match verb {
        _ if upper.contains("PG_TRY_ADVISORY_XACT_LOCK") => {
            "claim: SELECT pg_try_advisory_xact_lock(…), record"
        }
        "WITH" if upper.contains("INSERT INTO") => "claim: WITH … UPDATE … INSERT … RETURNING",
        "INSERT" if handler_table => "handler: INSERT INTO orders",
        "INSERT" if upper.contains("RESPONSE = EXCLUDED.RESPONSE") => {
            "record: INSERT … ON CONFLICT DO UPDATE … WHERE expired"
        }
        "INSERT" if upper.contains("ON CONFLICT") => {
            "claim: INSERT … ON CONFLICT DO UPDATE … WHERE expired"
        }
        "SELECT" if upper.contains("FINGERPRINT, RESPONSE") => "SELECT record",
        "UPDATE" if upper.contains("SET RESPONSE") => "complete: UPDATE … SET response",
        "UPDATE" => "renew: UPDATE … SET expires_at",
        "DELETE" if upper.contains("TOKEN") => "release: DELETE",
        "SET" => {
            // `SET LOCAL name = value`: the name, not the value.
            return q.split('=').next().unwrap_or(q).trim().to_owned();
        }
        _ => return q.chars().take(48).collect(),
    };
    name.to_owned()
}

/// Counts of a SQLite pool opened with [`SqliteCounts::pool_options`], and of every
/// statement sqlx logs in this process (see [`QueryLog`]).
#[derive(Default)]
pub struct SqliteCounts {
    commits: AtomicU64,
}

impl SqliteCounts {
    /// `options` with a commit hook on every connection, counting into `self`.
    pub fn pool_options(self: &Arc<Self>, options: PoolOptions<Sqlite>) -> PoolOptions<Sqlite> {
        let counts = Arc::clone(self);
        options.after_connect(move |conn: &mut SqliteConnection, _| {
            let counts = Arc::clone(&counts);
            Box::pin(async move {
                let mut handle = conn.lock_handle().await?;
                handle.set_commit_hook(move || {
                    counts.commits.fetch_add(1, Ordering::Relaxed);
                    true
                });
                Ok(())
            })
        })
    }

    fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    fn statements(&self) -> BTreeMap<String, u64> {
        QUERY_LOG
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Every statement sqlx logged in this process, by [`statement_name`].
struct QueryLog {
    counts: Mutex<BTreeMap<String, u64>>,
}

static QUERY_LOG: QueryLog = QueryLog {
    counts: Mutex::new(BTreeMap::new()),
};

/// The process's tracing subscriber: listens to sqlx's statement log and nothing else.
/// Installed once, before any pool is opened; later calls do nothing.
pub fn install_query_log() {
    let _ = tracing::subscriber::set_global_default(QueryLogSubscriber);
}

struct QueryLogSubscriber;

/// The statement of one `sqlx::query` event: `db.statement` (the full text, when sqlx
/// shortened the summary) or else `summary`.
#[derive(Default)]
struct StatementField {
    summary: String,
    statement: String,
}

impl tracing::field::Visit for StatementField {
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "summary" => value.clone_into(&mut self.summary),
            "db.statement" => value.clone_into(&mut self.statement),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if matches!(field.name(), "summary" | "db.statement") {
            let text = format!("{value:?}");
            let text = text
                .trim_matches('"')
                .replace("\\n", "\n")
                .replace("\\\"", "\"");
            self.record_str(field, &text);
        }
    }
}

impl tracing::Subscriber for QueryLogSubscriber {
    fn enabled(&self, metadata: &tracing::Metadata<'_>) -> bool {
        metadata.target() == "sqlx::query"
    }

    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }

    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}

    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}

    fn event(&self, event: &tracing::Event<'_>) {
        let mut field = StatementField::default();
        event.record(&mut field);
        let text = if field.statement.trim().is_empty() {
            field.summary
        } else {
            field.statement
        };
        if text.is_empty() {
            return;
        }
        *QUERY_LOG
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(statement_name(&text))
            .or_default() += 1;
    }

    fn enter(&self, _: &tracing::span::Id) {}

    fn exit(&self, _: &tracing::span::Id) {}
}

#[cfg(test)]
mod tests {
    use super::statement_name;

    #[test]
    fn statements_are_named_by_purpose() {
        assert_eq!(
            statement_name("INSERT INTO \"loadbench_x_orders\" (customer, name) VALUES ($1, $2)"),
            "handler: INSERT INTO orders"
        );
        assert_eq!(
            statement_name("INSERT INTO \"orders\" (customer, name) VALUES (?1, ?2) RETURNING id"),
            "handler: INSERT INTO orders"
        );
        assert_eq!(
            statement_name("SET LOCAL statement_timeout = 30000"),
            "SET LOCAL statement_timeout"
        );
        assert_eq!(
            statement_name(
                "INSERT INTO t (id) VALUES ($1) ON CONFLICT (id) DO UPDATE SET \
                 response = EXCLUDED.response WHERE r.expires_at <= clock_timestamp()"
            ),
            "record: INSERT … ON CONFLICT DO UPDATE … WHERE expired"
        );
        assert_eq!(statement_name("COMMIT"), "COMMIT");
    }
}
