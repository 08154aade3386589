//! Persistence: one [`Db`] over SQLite or PostgreSQL, with a repository per table.
//!
//! sqlx's `Any` driver is avoided on purpose: it loses type information (timestamps) and
//! hides dialect differences. An enum over the two pools keeps every query checked against
//! its own dialect, at the cost of writing the SQL once per database.

pub mod deployments;
pub mod insert;
pub mod tokens;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use time::OffsetDateTime;

pub use self::{deployments::Deployments, tokens::Tokens};

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a request waits for a pooled connection before the database counts as
/// unavailable (503) rather than making the client hang.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection pool to the configured database. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Db {
    /// `sqlite://path` (the embedded default).
    Sqlite(SqlitePool),
    /// `postgres://...`.
    Postgres(PgPool),
}

impl Db {
    /// Connects to `url` (`sqlite://...` or `postgres://...`) and applies pending migrations.
    /// A SQLite file is created if missing.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let db = Self::connect_without_migrating(url).await?;
        db.migrate().await?;
        Ok(db)
    }

    async fn connect_without_migrating(url: &str) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => {
                let options = SqliteConnectOptions::from_str(url)
                    .with_context(|| format!("invalid SQLite URL `{url}`"))?
                    .create_if_missing(true)
                    // WAL lets readers proceed while one connection writes; the busy timeout
                    // makes concurrent writers queue instead of failing with SQLITE_BUSY.
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(5));
                // Every connection to `:memory:` is its own database: keep exactly one.
                let in_memory = url.contains(":memory:") || url.contains("mode=memory");
                let pool = SqlitePoolOptions::new()
                    .max_connections(if in_memory { 1 } else { 8 })
                    .min_connections(u32::from(in_memory))
                    .idle_timeout((!in_memory).then_some(Duration::from_secs(600)))
                    .max_lifetime((!in_memory).then_some(Duration::from_secs(1800)))
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    .with_context(|| format!("cannot open SQLite database `{url}`"))?;
                Ok(Self::Sqlite(pool))
            }
            "postgres" | "postgresql" => {
                let options = PgConnectOptions::from_str(url)
                    .context("invalid PostgreSQL URL")?
                    .application_name("backend");
                let pool = PgPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await
                    // The URL may hold a password: name the host only through sqlx's error.
                    .context("cannot connect to PostgreSQL")?;
                Ok(Self::Postgres(pool))
            }
            _ => anyhow::bail!(
                "unsupported database URL `{}`: expected `sqlite://<path>` or `postgres://...`",
                redact(url)
            ),
        }
    }

    /// Applies pending migrations (each dialect has its own folder under `migrations/`).
    pub async fn migrate(&self) -> anyhow::Result<()> {
        use anyhow::Context as _;
        match self {
            Self::Sqlite(pool) => SQLITE_MIGRATIONS.run(pool).await,
            Self::Postgres(pool) => POSTGRES_MIGRATIONS.run(pool).await,
        }
        .context("database migration failed")
    }

    /// A round trip to the database, for the readiness probe.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match self {
            Self::Sqlite(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
            Self::Postgres(pool) => sqlx::query("SELECT 1").execute(pool).await.map(drop),
        }
    }

    /// Closes every connection (on shutdown, so SQLite checkpoints its WAL).
    pub async fn close(&self) {
        match self {
            Self::Sqlite(pool) => pool.close().await,
            Self::Postgres(pool) => pool.close().await,
        }
    }

    /// `"sqlite"` or `"postgres"`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Which database this is, for the startup log, without credentials: the SQLite file
    /// (absolute: a relative `sqlite://` path is relative to the working directory), or the
    /// PostgreSQL user, server and database.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(pool) => {
                let file = pool.connect_options().get_filename().to_owned();
                std::path::absolute(&file)
                    .unwrap_or(file)
                    .display()
                    .to_string()
            }
            Self::Postgres(pool) => {
                let options = pool.connect_options();
                format!(
                    "postgres://{}@{}:{}/{}",
                    options.get_username(),
                    options.get_host(),
                    options.get_port(),
                    options.get_database().unwrap_or_default()
                )
            }
        }
    }

    /// The `deployments` table.
    pub fn deployments(&self) -> Deployments<'_> {
        Deployments::new(self)
    }

    /// The `api_tokens` table.
    pub fn tokens(&self) -> Tokens<'_> {
        Tokens::new(self)
    }
}

/// The current time, cut to whole milliseconds: what the API shows is exactly what both
/// databases store (PostgreSQL keeps microseconds), so a row read back serialises to the
/// same bytes as the response that created it.
pub fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_millisecond(now.millisecond()).unwrap_or(now)
}

/// `url` without its password, for error messages.
pub(crate) fn redact(url: &str) -> String {
    crate::redact::url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_only() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
    }

    #[test]
    fn now_has_whole_milliseconds() {
        assert_eq!(now().nanosecond() % 1_000_000, 0);
    }
}
