//! [`PostgresStore`] and its builder.

use std::{fmt, future::Future, str::FromStr, sync::Arc, time::Duration};

use bytes::Bytes;
use sqlx::{
    Row,
    postgres::{PgConnectOptions, PgPool, PgPoolOptions},
};
use tower_idempotency::{
    Fingerprint,
    store::{
        Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreError,
        StoreErrorKind,
    },
};

use crate::{
    error,
    reaper::{self, ReaperHandle},
    sql::{DEFAULT_TABLE, Statements, TableName, millis},
};

/// Default [`acquire_timeout`](PostgresStoreBuilder::acquire_timeout) of pools the store
/// creates.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Default [`operation_timeout`](PostgresStoreBuilder::operation_timeout): how long one
/// operation (acquiring a connection included) may take before it fails with
/// [`Unavailable`](StoreErrorKind::Unavailable).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// An [`IdempotencyStore`] in one PostgreSQL table. See the [crate docs](crate) for the
/// schema and the statements it runs.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    timeout: Option<Duration>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table())
            .field("operation_timeout", &self.timeout)
            .field("pool", &self.pool)
            .finish()
    }
}

impl PostgresStore {
    /// Connects a new pool to `url` (e.g. `postgres://user:password@host:5432/db`) with the
    /// [builder](Self::builder)'s defaults, using the table `idempotency_records`.
    ///
    /// Fails with [`StoreErrorKind::Unavailable`] if the server cannot be reached within the
    /// acquire timeout ([`DEFAULT_ACQUIRE_TIMEOUT`]). Does not create the table: call
    /// [`migrate`](Self::migrate).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }

    /// A builder, to choose the table and the pool settings.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// A store on an existing pool, using the table `idempotency_records` and the
    /// [`DEFAULT_OPERATION_TIMEOUT`]. The pool's own settings apply; give it a short
    /// [`acquire_timeout`](sqlx::pool::PoolOptions::acquire_timeout) too.
    pub fn from_pool(pool: PgPool) -> Self {
        let table = TableName::parse(DEFAULT_TABLE).expect("the default table name is valid");
        Self::new(pool, table, Some(DEFAULT_OPERATION_TIMEOUT))
    }

    /// The same store on another table: `"table"` or `"schema.table"`, each part made of ASCII
    /// letters, digits and `_` (not starting with a digit), the table at most 51 bytes. Names
    /// are quoted, so their case is kept. The schema must exist.
    pub fn with_table(self, table: &str) -> Result<Self, StoreError> {
        Ok(Self::new(self.pool, TableName::parse(table)?, self.timeout))
    }

    /// The same store with another [operation
    /// timeout](PostgresStoreBuilder::operation_timeout) (`None`: wait as long as it takes).
    pub fn with_operation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self
    }

    fn new(pool: PgPool, table: TableName, timeout: Option<Duration>) -> Self {
        Self {
            pool,
            sql: Arc::new(Statements::new(table)),
            timeout,
        }
    }

    /// Runs `op` within the operation timeout.
    async fn timed<T>(
        &self,
        doing: &'static str,
        op: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let Some(timeout) = self.timeout else {
            return op.await;
        };
        match tokio::time::timeout(timeout, op).await {
            Ok(result) => result,
            Err(elapsed) => Err(StoreError::new(
                StoreErrorKind::Unavailable,
                format!("PostgreSQL did not answer within {timeout:?} while {doing}"),
            )
            .with_source(elapsed)),
        }
    }

    /// The table, as given.
    pub fn table(&self) -> &str {
        self.sql.table.as_str()
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Creates the table and its index on `expires_at` if they do not exist. Idempotent, and
    /// safe to run from many instances at once (migrations of one table are serialized by a
    /// transaction-scoped advisory lock).
    ///
    /// ```sql
    /// CREATE TABLE IF NOT EXISTS "idempotency_records" (
    ///     id          BYTEA PRIMARY KEY,     -- the 32-byte RecordId
    ///     fingerprint BYTEA NOT NULL,        -- the 16-byte Fingerprint
    ///     token       BIGINT NOT NULL,       -- the fencing token
    ///     response    BYTEA,                 -- NULL while in flight
    ///     expires_at  TIMESTAMPTZ NOT NULL); -- lease end (in flight) or TTL end (completed)
    /// CREATE INDEX IF NOT EXISTS "idempotency_records_expires_idx"
    ///     ON "idempotency_records" (expires_at);
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let fail = |e| error::map("migrating the idempotency table", e);
        let mut tx = self.pool.begin().await.map_err(fail)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(self.sql.migration_lock_key())
            .execute(&mut *tx)
            .await
            .map_err(fail)?;
        for statement in [&self.sql.create_table, &self.sql.create_index] {
            sqlx::query(statement)
                .persistent(false)
                .execute(&mut *tx)
                .await
                .map_err(fail)?;
        }
        tx.commit().await.map_err(fail)
    }

    /// Deletes up to `batch` expired records (in flight or completed), oldest first, and
    /// returns how many it deleted. Rows another transaction holds are skipped, and live
    /// records are never deleted.
    ///
    /// ```sql
    /// DELETE FROM t WHERE id IN (
    ///     SELECT id FROM t WHERE expires_at <= now()
    ///     ORDER BY expires_at LIMIT $batch FOR UPDATE SKIP LOCKED
    /// ) AND expires_at <= now()
    /// ```
    pub async fn delete_expired(&self, batch: u32) -> Result<u64, StoreError> {
        if batch == 0 {
            return Ok(0);
        }
        const DOING: &str = "deleting expired records";
        self.timed(DOING, async {
            let done = sqlx::query(&self.sql.delete_expired)
                .bind(i64::from(batch))
                .execute(&self.pool)
                .await
                .map_err(|e| error::map(DOING, e))?;
            Ok(done.rows_affected())
        })
        .await
    }

    /// Starts a background task that, every `period` (at least 10 ms), calls
    /// [`delete_expired(batch)`](Self::delete_expired) until a batch comes back short.
    /// Failures are logged (`tracing`, level WARN) and retried at the next period; the task
    /// ends when the pool is closed.
    ///
    /// Dropping or [aborting](ReaperHandle::abort) the handle stops the task.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_reaper(&self, period: Duration, batch: u32) -> ReaperHandle {
        reaper::spawn(self.clone(), period, batch)
    }
}

/// A random, non-zero 64-bit token from the operating system's generator.
///
/// Tokens are not a sequence: two acquisitions of one id get the same token with probability
/// 2⁻⁶⁴ per pair, which the fencing guarantee accepts as "never".
fn new_token() -> Result<i64, StoreError> {
    loop {
        let token = getrandom::u64()
            .map_err(|e| {
                StoreError::new(
                    StoreErrorKind::Backend,
                    "the operating system's random generator failed",
                )
                .with_source(e)
            })?
            .cast_signed();
        if token != 0 {
            return Ok(token);
        }
    }
}

impl IdempotencyStore for PostgresStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        const DOING: &str = "claiming a record";
        let token = new_token()?;
        let fail = |e| error::map(DOING, e);
        let row = self
            .timed(DOING, async {
                sqlx::query(&self.sql.claim)
                    .bind(&id.as_bytes()[..])
                    .bind(&fingerprint.as_bytes()[..])
                    .bind(token)
                    .bind(millis(lease))
                    .fetch_one(&self.pool)
                    .await
                    .map_err(fail)
            })
            .await?;
        if row.try_get::<bool, _>(0).map_err(fail)? {
            return Ok(Claim::Acquired(FencingToken::new(token.cast_unsigned())));
        }
        let stored: Vec<u8> = row.try_get(1).map_err(fail)?;
        let fingerprint = <[u8; Fingerprint::LEN]>::try_from(stored)
            .map(Fingerprint::from_bytes)
            .map_err(|v| error::corrupt(&format!("a fingerprint of {} bytes", v.len())))?;
        Ok(match row.try_get::<Option<Vec<u8>>, _>(2).map_err(fail)? {
            None => Claim::InFlight { fingerprint },
            Some(response) => Claim::Completed(CompletedRecord {
                fingerprint,
                response: Bytes::from(response),
            }),
        })
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "renewing a lease";
        self.timed(DOING, async {
            let done = sqlx::query(&self.sql.renew)
                .bind(&id.as_bytes()[..])
                .bind(token.get().cast_signed())
                .bind(millis(lease))
                .execute(&self.pool)
                .await
                .map_err(|e| error::map(DOING, e))?;
            owned(done.rows_affected())
        })
        .await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        const DOING: &str = "completing a record";
        self.timed(DOING, async {
            let done = sqlx::query(&self.sql.complete)
                .bind(&id.as_bytes()[..])
                .bind(token.get().cast_signed())
                .bind(&response[..])
                .bind(millis(ttl))
                .execute(&self.pool)
                .await
                .map_err(|e| error::map(DOING, e))?;
            owned(done.rows_affected())
        })
        .await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        const DOING: &str = "releasing a record";
        self.timed(DOING, async {
            let done = sqlx::query(&self.sql.release)
                .bind(&id.as_bytes()[..])
                .bind(token.get().cast_signed())
                .execute(&self.pool)
                .await
                .map_err(|e| error::map(DOING, e))?;
            owned(done.rows_affected())
        })
        .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        const DOING: &str = "checking the connection";
        self.timed(DOING, async {
            sqlx::query("SELECT 1")
                .execute(&self.pool)
                .await
                .map_err(|e| error::map(DOING, e))?;
            Ok(())
        })
        .await
    }
}

/// A guarded write touched the record (`1`) or found it gone, completed or re-claimed (`0`).
fn owned(rows: u64) -> Result<(), StoreError> {
    if rows == 0 {
        Err(StoreError::lease_lost())
    } else {
        Ok(())
    }
}

/// Configures a [`PostgresStore`]: its table and, when the store creates the pool, the
/// pool's settings.
///
/// ```no_run
/// # async fn demo() -> Result<(), tower_idempotency::store::StoreError> {
/// use std::time::Duration;
/// use tower_idempotency_postgres::PostgresStore;
///
/// let store = PostgresStore::builder()
///     .table("idempotency.records")
///     .max_connections(20)
///     .acquire_timeout(Duration::from_secs(2))
///     .connect("postgres://app@db.internal/app")
///     .await?;
/// store.migrate().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresStoreBuilder {
    table: String,
    acquire_timeout: Duration,
    operation_timeout: Option<Duration>,
    max_connections: Option<u32>,
    test_before_acquire: bool,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            max_connections: None,
            test_before_acquire: true,
        }
    }
}

impl PostgresStoreBuilder {
    /// The table: `"table"` or `"schema.table"` (default `idempotency_records`). See
    /// [`PostgresStore::with_table`] for the accepted names.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long an operation waits for a connection (including connecting) before failing
    /// with [`Unavailable`](StoreErrorKind::Unavailable) (default
    /// [`DEFAULT_ACQUIRE_TIMEOUT`], 3 s).
    pub fn acquire_timeout(mut self, timeout: Duration) -> Self {
        self.acquire_timeout = timeout;
        self
    }

    /// How long one operation ([`claim`](IdempotencyStore::claim), `complete`, `renew`,
    /// `release`, `check`, [`delete_expired`](PostgresStore::delete_expired); not
    /// [`migrate`](PostgresStore::migrate)), waiting for a connection included, may take
    /// before it fails with [`Unavailable`](StoreErrorKind::Unavailable) (default
    /// [`DEFAULT_OPERATION_TIMEOUT`], 5 s; `None`: no limit). It catches a server or network
    /// that stops answering without closing the connection.
    ///
    /// A statement that timed out may still have been applied: a claim that timed out can
    /// leave an in-flight record that lives until its lease ends, and a completion that timed
    /// out may have stored the response.
    pub fn operation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.operation_timeout = timeout.into();
        self
    }

    /// Most connections the pool opens (default: sqlx's, 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Whether an idle connection is pinged (one extra round trip, no statement) before each
    /// use (default `true`, sqlx's default). Turning it off takes that round trip off every
    /// operation's latency; a connection the server dropped while it sat idle then fails one
    /// operation with [`Unavailable`](StoreErrorKind::Unavailable) before it is replaced.
    /// (sqlx 0.8 also pings every connection returned to the pool, after the operation has
    /// returned, whatever this setting.)
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    fn pool_options(&self) -> PgPoolOptions {
        let options = PgPoolOptions::new()
            .acquire_timeout(self.acquire_timeout)
            .test_before_acquire(self.test_before_acquire);
        match self.max_connections {
            Some(n) => options.max_connections(n),
            None => options,
        }
    }

    /// Connects a pool to `url` and opens its first connection.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, StoreError> {
        let options = parse_url(url)?;
        self.connect_with(options).await
    }

    /// Connects a pool with explicit connection options and opens its first connection.
    pub async fn connect_with(
        self,
        options: PgConnectOptions,
    ) -> Result<PostgresStore, StoreError> {
        let table = TableName::parse(&self.table)?;
        let pool = self
            .pool_options()
            .connect_with(options)
            .await
            .map_err(|e| error::map("connecting", e))?;
        Ok(PostgresStore::new(pool, table, self.operation_timeout))
    }

    /// Creates a pool for `url` without connecting: connections open on first use.
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, StoreError> {
        let options = parse_url(url)?;
        let table = TableName::parse(&self.table)?;
        let pool = self.pool_options().connect_lazy_with(options);
        Ok(PostgresStore::new(pool, table, self.operation_timeout))
    }

    /// A store on an existing pool; only the table and the operation timeout apply.
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, StoreError> {
        let table = TableName::parse(&self.table)?;
        Ok(PostgresStore::new(pool, table, self.operation_timeout))
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    // Never echo the URL: it may hold a password.
    PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::new(StoreErrorKind::Backend, "invalid PostgreSQL connection URL").with_source(e)
    })
}
