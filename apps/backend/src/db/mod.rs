//! Persistence: one [`Db`] over SQLite or PostgreSQL, with a repository per table.
//!
//! sqlx's `Any` driver is avoided on purpose: it loses type information (timestamps) and
//! hides dialect differences. An enum over the two pools keeps every query checked against
//! its own dialect, at the cost of writing the SQL once per database.

/// `impl sqlx::FromRow` for a struct, reading each listed field from the column of the same
/// name, for any database whose row can decode the field types: what `#[derive(FromRow)]`
/// writes, without sqlx's `macros` feature (which builds a second sqlx, SQLite's C library
/// included, for the proc macros). A field missing from the list fails to compile.
macro_rules! impl_from_row {
    ($ty:ident { $($field:ident: $field_ty:ty),+ $(,)? }) => {
        impl<'r, R: ::sqlx::Row> ::sqlx::FromRow<'r, R> for $ty
        where
            &'r str: ::sqlx::ColumnIndex<R>,
            $($field_ty: ::sqlx::Decode<'r, R::Database> + ::sqlx::Type<R::Database>,)+
        {
            fn from_row(row: &'r R) -> Result<Self, ::sqlx::Error> {
                Ok(Self {
                    $($field: row.try_get(stringify!($field))?,)+
                })
            }
        }
    };
}

pub mod deployments;
pub mod insert;
pub mod tokens;

use std::{borrow::Cow, str::FromStr, sync::LazyLock, time::Duration};

use sqlx::{
    PgPool, SqlitePool,
    migrate::{Migration, MigrationType, Migrator},
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};
use time::OffsetDateTime;

pub use self::{deployments::Deployments, tokens::Tokens};

/// `(file name, contents)` of one file under `migrations/<db>/`, embedded at compile time.
macro_rules! migration_file {
    ($db:literal, $file:literal) => {
        (
            $file,
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/migrations/",
                $db,
                "/",
                $file
            )),
        )
    };
}

/// Every file of `migrations/sqlite/` (a test checks that none is missing).
const SQLITE_MIGRATION_FILES: &[(&str, &str)] = &[
    migration_file!("sqlite", "20261128000001_init.sql"),
    migration_file!("sqlite", "20261201000001_keys_expire_with_their_ttl.sql"),
    migration_file!("sqlite", "20261202000001_token_lifecycle.sql"),
    migration_file!("sqlite", "20261202000002_deployment_statuses.sql"),
];

/// Every file of `migrations/postgres/` (a test checks that none is missing).
const POSTGRES_MIGRATION_FILES: &[(&str, &str)] = &[
    migration_file!("postgres", "20261128000001_init.sql"),
    migration_file!("postgres", "20261201000001_keys_expire_with_their_ttl.sql"),
    migration_file!("postgres", "20261202000001_token_lifecycle.sql"),
    migration_file!("postgres", "20261202000002_deployment_statuses.sql"),
];

static SQLITE_MIGRATIONS: LazyLock<Migrator> = LazyLock::new(|| migrator(SQLITE_MIGRATION_FILES));
static POSTGRES_MIGRATIONS: LazyLock<Migrator> =
    LazyLock::new(|| migrator(POSTGRES_MIGRATION_FILES));

/// The migrator `sqlx::migrate!` would build from a directory holding `files`: the same
/// versions, descriptions, types and SQL, hence the same checksums (SHA-384 of the SQL), so
/// databases migrated by the macro-built migrator still validate.
fn migrator(files: &'static [(&'static str, &'static str)]) -> Migrator {
    let mut migrations: Vec<Migration> = files
        .iter()
        .map(|&(file, sql)| migration(file, sql))
        .collect();
    migrations.sort_by_key(|migration| migration.version);
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// One migration from its file name `<version>_<description>.sql` (or `.up.sql`, `.down.sql`)
/// and contents, parsed as sqlx's `resolve_blocking` (behind `migrate!`) does.
fn migration(file: &'static str, sql: &'static str) -> Migration {
    let (version, rest) = file
        .split_once('_')
        .filter(|(_, rest)| rest.ends_with(".sql"))
        .unwrap_or_else(|| panic!("migration file `{file}` is not `<version>_<description>.sql`"));
    let version: i64 = version
        .parse()
        .unwrap_or_else(|_| panic!("migration file `{file}` has no integer version"));
    let migration_type = MigrationType::from_filename(rest);
    let description = rest
        .trim_end_matches(migration_type.suffix())
        .replace('_', " ");
    let no_tx = sql.starts_with("-- no-transaction");
    Migration::new(
        version,
        Cow::Owned(description),
        migration_type,
        Cow::Borrowed(sql),
        no_tx,
    )
}

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

    /// The embedded migrations are exactly what `sqlx::migrate!("migrations/<db>")` would
    /// embed: every file of the directory (so a new one cannot be forgotten), with the same
    /// version, description, type, SQL, `no_tx` and checksum as sqlx's own resolver (the code
    /// behind the macro) gives, and the checksum is also recomputed independently (SHA-384 of
    /// the file's bytes, with `sha2`).
    fn assert_matches_directory(db: &str, migrator: &Migrator) {
        use sha2::{Digest as _, Sha384};

        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("migrations")
            .join(db);
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        files.sort();
        let embedded: Vec<_> = match db {
            "sqlite" => SQLITE_MIGRATION_FILES,
            _ => POSTGRES_MIGRATION_FILES,
        }
        .iter()
        .map(|(file, _)| (*file).to_owned())
        .collect();
        assert_eq!(
            embedded, files,
            "migrations/{db}/ and the embedded list differ"
        );

        let resolved = sqlx::migrate::resolve_blocking(&dir).unwrap();
        assert_eq!(migrator.migrations.len(), resolved.len());
        for (ours, (theirs, path)) in migrator.migrations.iter().zip(&resolved) {
            let at = path.display();
            assert_eq!(ours.version, theirs.version, "{at}");
            assert_eq!(ours.description, theirs.description, "{at}");
            assert_eq!(ours.migration_type, theirs.migration_type, "{at}");
            assert_eq!(ours.sql, theirs.sql, "{at}");
            assert_eq!(ours.no_tx, theirs.no_tx, "{at}");
            assert_eq!(ours.checksum, theirs.checksum, "{at}");
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(&*ours.checksum, Sha384::digest(&bytes).as_slice(), "{at}");
        }
        assert!(!migrator.ignore_missing && migrator.locking && !migrator.no_tx);
    }

    #[test]
    fn sqlite_migrations_are_the_directory() {
        assert_matches_directory("sqlite", &SQLITE_MIGRATIONS);
        let first = &SQLITE_MIGRATIONS.migrations[0];
        assert_eq!(
            (first.version, &*first.description),
            (20261128000001, "init")
        );
    }

    #[test]
    fn postgres_migrations_are_the_directory() {
        assert_matches_directory("postgres", &POSTGRES_MIGRATIONS);
        let second = &POSTGRES_MIGRATIONS.migrations[1];
        assert_eq!(
            (second.version, &*second.description),
            (20261201000001, "keys expire with their ttl")
        );
    }
}
