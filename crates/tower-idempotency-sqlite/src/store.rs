//! [`SqliteStore`] and its builder: every write one statement, every instant SQLite's.

use std::{fmt, path::Path, sync::Arc, time::Duration};

use bytes::Bytes;
use sqlx::{Row, SqlitePool};
use tower_idempotency::{
    Fingerprint,
    store::{
        Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreError,
        StoreErrorKind,
    },
};

use crate::{error, schema};

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// How often a claim reads and tries to write again after losing a race (the record it
/// found absent was claimed by another writer before its own write).
const CLAIM_ATTEMPTS: u32 = 4;

/// A durable [`IdempotencyStore`] in a SQLite database file: records survive restarts, and
/// every process opening the file shares them.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::{
///     Fingerprint, IdempotencyKey, IdempotencyLayer,
///     store::{Claim, IdempotencyStore, RecordId},
/// };
/// use tower_idempotency_sqlite::SqliteStore;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// # let dir = std::env::temp_dir().join(format!("sqlite-store-doc-{}", std::process::id()));
/// # std::fs::create_dir_all(&dir)?;
/// # let path = dir.join("idempotency.db");
/// let store = SqliteStore::connect(&path).await?; // WAL, busy_timeout 5 s
/// store.migrate().await?; // CREATE TABLE IF NOT EXISTS idempotency_records ...
/// let _layer = IdempotencyLayer::new(store.clone()); // router.layer(_layer) ...
///
/// // What the layer does with a new key:
/// let id = RecordId::new(b"alice", &IdempotencyKey::parse(b"order-1")?);
/// let fingerprint = Fingerprint::from_bytes([7; Fingerprint::LEN]);
/// let claim = store.claim(&id, &fingerprint, Duration::from_secs(30)).await?;
/// assert!(matches!(claim, Claim::Acquired(_)));
/// # store.pool().close().await;
/// # std::fs::remove_dir_all(&dir)?;
/// # Ok(()) }
/// ```
///
/// # Statements
///
/// Writes are single autocommit statements, so they wait for SQLite's write lock up to the
/// connection's `busy_timeout` (a deferred transaction that read first would instead fail
/// at once when another writer committed in between). Under WAL, reads never wait. `t` is
/// the table, `now` SQLite's clock in milliseconds since the epoch (`julianday('now')`, one
/// value per statement), durations are whole milliseconds (rounded up).
///
/// **claim** reads first, so replays and duplicates of a running request are answered
/// without taking the write lock:
///
/// ```sql
/// SELECT fingerprint, response FROM t WHERE id = ?1 AND expires_at > now
/// ```
///
/// A live row is [`Claim::InFlight`] (`response IS NULL`) or [`Claim::Completed`]. Without
/// one, the claim inserts its record, or takes over an expired one; the write lock makes
/// the `WHERE` and the write one step, so of concurrent claimers exactly one gets a row back
/// ([`Claim::Acquired`]), and the others read again:
///
/// ```sql
/// INSERT INTO t (id, fingerprint, token, response, expires_at)
///     VALUES (?1, ?2, ?3, NULL, now + ?4)
/// ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, token = excluded.token,
///     response = NULL, expires_at = excluded.expires_at
///     WHERE t.expires_at <= now
/// RETURNING 1
/// ```
///
/// **renew**, **complete**, **release** are guarded by the fencing token; a statement
/// touching no row fails with [`StoreErrorKind::LeaseLost`]:
///
/// ```sql
/// UPDATE t SET expires_at = now + ?3                 WHERE id = ?1 AND token = ?2 AND response IS NULL AND expires_at > now
/// UPDATE t SET response = ?3, expires_at = now + ?4  WHERE id = ?1 AND token = ?2 AND response IS NULL AND expires_at > now
/// DELETE FROM t                                      WHERE id = ?1 AND token = ?2 AND response IS NULL AND expires_at > now
/// ```
///
/// **check** is `SELECT 1`. Fencing tokens are random non-zero 64-bit values from the
/// operating system's generator, drawn per acquisition (0 marks records committed by
/// [`SqliteTransactionalStore`](crate::SqliteTransactionalStore), which shares the table
/// format). Responses have no size limit of the store's own beyond SQLite's (1 GB by
/// default).
///
/// # Errors
///
/// [`StoreErrorKind::Unavailable`] when a retry may succeed: SQLITE_BUSY or SQLITE_LOCKED
/// (the write lock held past `busy_timeout`), I/O errors, a full disk, a file that cannot be
/// opened, a pool timeout or a closed pool. Undecodable rows are `Corrupt`, anything else (a
/// missing table) `Backend`. The sqlx error is the [`source`](std::error::Error::source).
///
/// Cheap to clone: clones share the pool.
#[derive(Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    table: Arc<str>,
    sql: Arc<Statements>,
}

impl fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteStore")
            .field("table", &self.table)
            .field("pool", &self.pool)
            .finish()
    }
}

/// The statements of one table (see [`SqliteStore`]), rendered once.
struct Statements {
    find: String,
    acquire: String,
    renew: String,
    complete: String,
    release: String,
}

impl Statements {
    fn new(table: &str) -> Self {
        let now = schema::NOW_MS;
        let guard =
            format!("WHERE id = ?1 AND token = ?2 AND response IS NULL AND expires_at > {now}");
        Self {
            find: format!(
                "SELECT fingerprint, response FROM \"{table}\" WHERE id = ?1 AND expires_at > {now}"
            ),
            acquire: format!(
                "INSERT INTO \"{table}\" (id, fingerprint, token, response, expires_at) \
                 VALUES (?1, ?2, ?3, NULL, {now} + ?4) \
                 ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, \
                 token = excluded.token, response = NULL, expires_at = excluded.expires_at \
                 WHERE \"{table}\".expires_at <= {now} \
                 RETURNING 1"
            ),
            renew: format!("UPDATE \"{table}\" SET expires_at = {now} + ?3 {guard}"),
            complete: format!(
                "UPDATE \"{table}\" SET response = ?3, expires_at = {now} + ?4 {guard}"
            ),
            release: format!("DELETE FROM \"{table}\" {guard}"),
        }
    }
}

impl SqliteStore {
    /// A store keeping its records in the table `idempotency_records` of `pool`'s database.
    /// Open the pool with WAL and a `busy_timeout`, as [`connect_options`](crate::connect_options)
    /// and [`pool_options`](crate::pool_options) do. Does not create the table: call
    /// [`migrate`](Self::migrate).
    pub fn new(pool: SqlitePool) -> Self {
        Self::on(pool, schema::DEFAULT_TABLE)
    }

    /// A builder, to choose the table.
    pub fn builder() -> SqliteStoreBuilder {
        SqliteStoreBuilder::default()
    }

    /// Opens (creating it if missing) the database file at `path` with
    /// [`connect_options`](crate::connect_options) and [`pool_options`](crate::pool_options),
    /// using the table `idempotency_records`. For other settings (a URL, a read-only file),
    /// open the pool yourself and pass it to [`new`](Self::new).
    ///
    /// Fails with [`StoreErrorKind::Unavailable`] if the file cannot be opened. Does not
    /// create the table: call [`migrate`](Self::migrate).
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, StoreError> {
        Self::builder().connect(path).await
    }

    fn on(pool: SqlitePool, table: &str) -> Self {
        Self {
            pool,
            table: table.into(),
            sql: Arc::new(Statements::new(table)),
        }
    }

    /// Creates the table and its index on `expires_at` if they do not exist (idempotent):
    ///
    /// ```sql
    /// CREATE TABLE IF NOT EXISTS "idempotency_records" (
    ///     id          BLOB PRIMARY KEY NOT NULL, -- the 32-byte RecordId
    ///     fingerprint BLOB NOT NULL,             -- the 16-byte Fingerprint
    ///     token       INTEGER NOT NULL,          -- the fencing token
    ///     response    BLOB,                      -- NULL while in flight
    ///     expires_at  INTEGER NOT NULL           -- lease or TTL end, ms since the epoch
    /// ) WITHOUT ROWID;
    /// CREATE INDEX IF NOT EXISTS "idempotency_records_expires_idx"
    ///     ON "idempotency_records" (expires_at);
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(&self.pool, &self.table).await
    }

    /// Deletes up to `batch` expired records (in flight or completed) and returns how many.
    /// Expired records already count as absent (a claim takes them over); this only frees
    /// their space. Live records are never deleted.
    pub async fn delete_expired(&self, batch: u32) -> Result<u64, StoreError> {
        schema::delete_expired(&self.pool, &self.table, batch).await
    }

    /// The connection pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// The live record of `id`, if any, as a claim would report it.
    async fn find(&self, id: &RecordId) -> Result<Option<Claim>, StoreError> {
        const DOING: &str = "claim (reading the record)";
        let row = sqlx::query(&self.sql.find)
            .bind(&id.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error::map(DOING, e))?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: Vec<u8> = row.try_get(0).map_err(|e| error::map(DOING, e))?;
        let response: Option<Vec<u8>> = row.try_get(1).map_err(|e| error::map(DOING, e))?;
        found(fingerprint, response).map(Some)
    }

    /// Writes an in-flight record owned by `token` unless a live one exists; whether it did.
    async fn acquire(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        token: i64,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let row = sqlx::query(&self.sql.acquire)
            .bind(&id.as_bytes()[..])
            .bind(&fingerprint.as_bytes()[..])
            .bind(token)
            .bind(schema::millis(lease))
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error::map("claim", e))?;
        Ok(row.is_some())
    }

    /// Runs a statement guarded by a fencing token; touching no row means the lease is lost.
    async fn guarded(&self, doing: &str, query: Query<'_>) -> Result<(), StoreError> {
        let done = query
            .execute(&self.pool)
            .await
            .map_err(|e| error::map(doing, e))?;
        match done.rows_affected() {
            0 => Err(StoreError::lease_lost()),
            _ => Ok(()),
        }
    }
}

const CORRUPT_FINGERPRINT: &str = "SQLite idempotency store: a fingerprint is not 16 bytes long";

/// A live record as a claim reports it: in flight (no response yet) or completed.
fn found(fingerprint: Vec<u8>, response: Option<Vec<u8>>) -> Result<Claim, StoreError> {
    let fingerprint = <[u8; Fingerprint::LEN]>::try_from(fingerprint.as_slice())
        .map(Fingerprint::from_bytes)
        .map_err(|_| StoreError::new(StoreErrorKind::Corrupt, CORRUPT_FINGERPRINT))?;
    Ok(match response {
        None => Claim::InFlight { fingerprint },
        Some(response) => Claim::Completed(CompletedRecord {
            fingerprint,
            response: Bytes::from(response),
        }),
    })
}

/// `sql` with the guard's `?1` (the id) and `?2` (the token) bound.
fn fenced<'q>(sql: &'q str, id: &'q RecordId, token: FencingToken) -> Query<'q> {
    sqlx::query(sql)
        .bind(&id.as_bytes()[..])
        .bind(token.get().cast_signed())
}

/// A fresh fencing token as the table keeps it: never 0, the token of records written in
/// transactional mode.
fn new_token() -> i64 {
    FencingToken::random().get().cast_signed()
}

impl IdempotencyStore for SqliteStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        for _ in 0..CLAIM_ATTEMPTS {
            if let Some(claim) = self.find(id).await? {
                return Ok(claim);
            }
            let token = new_token();
            if self.acquire(id, fingerprint, token, lease).await? {
                return Ok(Claim::Acquired(FencingToken::new(token.cast_unsigned())));
            }
            // Another claim wrote first; read what it wrote (or, if already gone, try again).
        }
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "SQLite idempotency store: claim failed: the record was claimed and freed again \
                 between reading and writing, {CLAIM_ATTEMPTS} times"
            ),
        ))
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let query = fenced(&self.sql.renew, id, token).bind(schema::millis(lease));
        self.guarded("renew", query).await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let query = fenced(&self.sql.complete, id, token)
            .bind(&response[..])
            .bind(schema::millis(ttl));
        self.guarded("complete", query).await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.guarded("release", fenced(&self.sql.release, id, token))
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| error::map("check", e))
    }
}

/// Configures a [`SqliteStore`]: its table.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), tower_idempotency::store::StoreError> {
/// use tower_idempotency_sqlite::{SqliteStore, sqlx::SqlitePool};
///
/// # let pool = SqlitePool::connect("sqlite::memory:").await.unwrap();
/// let store = SqliteStore::builder().table("http_idempotency").build(pool)?;
/// assert_eq!(store.table(), "http_idempotency");
/// assert!(SqliteStore::builder().table("no spaces").build(store.pool().clone()).is_err());
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct SqliteStoreBuilder {
    table: String,
}

impl Default for SqliteStoreBuilder {
    fn default() -> Self {
        Self {
            table: schema::DEFAULT_TABLE.to_owned(),
        }
    }
}

impl SqliteStoreBuilder {
    /// The table (default `idempotency_records`): ASCII letters, digits and `_`, not
    /// starting with a digit, at most 64 bytes; checked by [`build`](Self::build) and
    /// [`connect`](Self::connect). SQLite ignores ASCII case in names: `Records` and
    /// `records` are one table.
    pub fn table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// A store on an existing pool (see [`SqliteStore::new`] for how to open it). Fails
    /// with [`StoreErrorKind::Backend`] for an invalid table name.
    pub fn build(self, pool: SqlitePool) -> Result<SqliteStore, StoreError> {
        schema::validate_table(&self.table)?;
        Ok(SqliteStore::on(pool, &self.table))
    }

    /// Opens the database file at `path` as [`SqliteStore::connect`] does.
    pub async fn connect(self, path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        schema::validate_table(&self.table)?;
        let pool = crate::pool_options()
            .connect_with(crate::connect_options(path))
            .await
            .map_err(|e| error::map("connect", e))?;
        Ok(SqliteStore::on(pool, &self.table))
    }
}
