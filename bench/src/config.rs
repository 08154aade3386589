//! The configurations `loadbench` serves and measures, and where their stores live.

use std::fmt;

use clap::ValueEnum;

/// One way of serving the app.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, ValueEnum, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// No idempotency layer: the cost of the app itself.
    Baseline,
    /// tower-idempotency with its `MemoryStore`.
    OursMemory,
    /// tower-idempotency with `RedisStore`.
    OursRedis,
    /// tower-idempotency with `PostgresStore`; the handler inserts a row on the store's pool.
    OursPostgres,
    /// Transactional mode with `PostgresTransactionalStore`; the handler inserts a row
    /// through the lent transaction.
    OursPostgresTx,
    /// tower-idempotency with `SqliteStore`; the handler inserts a row on the store's pool.
    OursSqlite,
    /// Transactional mode with `SqliteTransactionalStore`; the handler inserts a row through
    /// the lent transaction.
    OursSqliteTx,
    /// `idempotent` 2.0.0 with its memory store.
    IdempotentMemory,
    /// `idempotent` 2.0.0 with its Valkey/Redis store.
    IdempotentRedis,
    /// `axum-idempotent` 0.6.0 over a `ruts` session in a `MokaStore`.
    AxumIdempotent,
}

impl Config {
    pub const ALL: [Self; 10] = [
        Self::Baseline,
        Self::OursMemory,
        Self::OursRedis,
        Self::OursPostgres,
        Self::OursPostgresTx,
        Self::OursSqlite,
        Self::OursSqliteTx,
        Self::IdempotentMemory,
        Self::IdempotentRedis,
        Self::AxumIdempotent,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::OursMemory => "ours-memory",
            Self::OursRedis => "ours-redis",
            Self::OursPostgres => "ours-postgres",
            Self::OursPostgresTx => "ours-postgres-tx",
            Self::OursSqlite => "ours-sqlite",
            Self::OursSqliteTx => "ours-sqlite-tx",
            Self::IdempotentMemory => "idempotent-memory",
            Self::IdempotentRedis => "idempotent-redis",
            Self::AxumIdempotent => "axum-idempotent",
        }
    }

    /// Whether this is tower-idempotency: its correctness failures fail the run.
    pub fn is_ours(self) -> bool {
        matches!(
            self,
            Self::OursMemory
                | Self::OursRedis
                | Self::OursPostgres
                | Self::OursPostgresTx
                | Self::OursSqlite
                | Self::OursSqliteTx
        )
    }

    /// Whether a layer deduplicates at all (the baseline executes every request).
    pub fn deduplicates(self) -> bool {
        self != Self::Baseline
    }

    pub fn needs_redis(self) -> bool {
        matches!(self, Self::OursRedis | Self::IdempotentRedis)
    }

    pub fn needs_postgres(self) -> bool {
        matches!(self, Self::OursPostgres | Self::OursPostgresTx)
    }

    /// Whether the server keeps a SQLite database file (under [`Backends::sqlite_dir`]).
    pub fn needs_sqlite(self) -> bool {
        matches!(self, Self::OursSqlite | Self::OursSqliteTx)
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where the shared stores live, and the namespace that keeps one run's records apart.
#[derive(Debug, Clone)]
pub struct Backends {
    pub redis_url: String,
    pub database_url: String,
    /// `[a-z0-9_]`, unique per server process: the Redis key prefix and the table suffix.
    pub namespace: String,
}

impl Backends {
    /// Redis keys of this namespace, for both stores (`idempotent` adds the `:` itself).
    pub fn redis_pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }

    pub fn table(&self) -> String {
        format!("loadbench_{}", self.namespace)
    }

    /// The handler's table in PostgreSQL.
    pub fn orders_table(&self) -> String {
        format!("loadbench_{}_orders", self.namespace)
    }

    /// The directory of the SQLite configurations' database file.
    pub fn sqlite_dir(&self) -> std::path::PathBuf {
        std::env::temp_dir().join(format!("loadbench-sqlite-{}", self.namespace))
    }
}
