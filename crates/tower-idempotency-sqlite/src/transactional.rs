//! [`SqliteTransactionalStore`]: transactional mode on SQLite.
//!
//! SQLite has one writer at a time, so a claim is the write lock itself: `BEGIN IMMEDIATE`
//! takes it before the first read (a deferred transaction that reads, then writes, would get
//! SQLITE_BUSY at once under a concurrent writer, whatever `busy_timeout` says), the record is
//! checked inside it, and the handler's writes and the record commit together. Duplicates of a
//! running request in this process are answered from an in-process set without touching the
//! database, so they get 409 at once instead of queueing on the write lock; another process
//! sharing the file waits up to `busy_timeout` for the lock and then sees the committed record.
//! Writers of this store in one process queue on an async lock before `BEGIN IMMEDIATE`:
//! in order, holding no pooled connection while they wait, instead of each holding one and
//! polling SQLite's busy handler.

use std::{
    collections::HashSet,
    fmt,
    ops::{Deref, DerefMut},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use bytes::Bytes;
use sqlx::{Row, Sqlite, SqliteConnection, SqlitePool};
use tower_idempotency::{
    Fingerprint,
    store::{CompletedRecord, RecordId, StoreError, StoreErrorKind},
    transactional::{Begun, CommitError, NewRecord, TransactionalStore},
};

use crate::{error, schema};

/// A [`TransactionalStore`] on a SQLite database: the application's own file, so the
/// handler's writes and the idempotency record commit in one transaction.
///
/// Every keyed request holds SQLite's write lock from its claim to its commit: keyed requests
/// run one at a time (readers are never blocked under WAL), and one waiting longer than
/// `busy_timeout` gets 503 + `Retry-After`. Keep handlers short.
#[derive(Clone)]
pub struct SqliteTransactionalStore {
    pool: SqlitePool,
    table: Arc<str>,
    sql: Arc<Statements>,
    running: Arc<Mutex<HashSet<RecordId>>>,
    writer: Arc<tokio::sync::Mutex<()>>,
    write_wait: Duration,
}

impl fmt::Debug for SqliteTransactionalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTransactionalStore")
            .field("table", &self.table)
            .finish_non_exhaustive()
    }
}

struct Statements {
    /// `?1` id. A live record: `fingerprint`, `response` (`NULL`: in flight, written by a
    /// non-transactional store sharing the table).
    find: String,
    /// `?1` id, `?2` fingerprint, `?3` response, `?4` TTL (ms): inserts, or replaces an
    /// expired record; touches no row if a live one exists.
    record: String,
}

impl SqliteTransactionalStore {
    /// A store keeping its records in `idempotency_records` of `pool`'s database. Open the
    /// pool with WAL and a `busy_timeout` ([`connect_options`](crate::connect_options)).
    pub fn new(pool: SqlitePool) -> Self {
        Self::build(pool, schema::DEFAULT_TABLE)
    }

    /// The same, with records in `table` (ASCII letters, digits, `_`).
    pub fn with_table(pool: SqlitePool, table: &str) -> Result<Self, StoreError> {
        schema::validate_table(table)?;
        Ok(Self::build(pool, table))
    }

    fn build(pool: SqlitePool, table: &str) -> Self {
        let now = schema::NOW_MS;
        let sql = Statements {
            find: format!(
                "SELECT fingerprint, response FROM \"{table}\" WHERE id = ?1 AND expires_at > {now}"
            ),
            record: format!(
                "INSERT INTO \"{table}\" (id, fingerprint, token, response, expires_at) \
                 VALUES (?1, ?2, 0, ?3, {now} + ?4) \
                 ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint, token = 0, \
                 response = excluded.response, expires_at = excluded.expires_at \
                 WHERE \"{table}\".expires_at <= {now}"
            ),
        };
        Self {
            pool,
            table: table.into(),
            sql: Arc::new(sql),
            running: Arc::default(),
            writer: Arc::default(),
            write_wait: crate::DEFAULT_BUSY_TIMEOUT,
        }
    }

    /// How long a request waits for its turn to write behind the other requests of this
    /// process (default [`DEFAULT_BUSY_TIMEOUT`](crate::DEFAULT_BUSY_TIMEOUT)); then it is
    /// answered 503 + `Retry-After`. Other processes' writers are waited for by SQLite's
    /// `busy_timeout` on top.
    pub fn with_write_wait(mut self, wait: Duration) -> Self {
        self.write_wait = wait;
        self
    }

    /// Waits for this process's write turn, then takes SQLite's write lock.
    async fn begin_immediate(&self) -> Result<SqliteTransaction, StoreError> {
        let turn = tokio::time::timeout(self.write_wait, Arc::clone(&self.writer).lock_owned())
            .await
            .map_err(|_| {
                StoreError::new(
                    StoreErrorKind::Unavailable,
                    "SQLite idempotency store: no turn to write within the write wait",
                )
            })?;
        let transaction = self
            .pool
            .begin_with(BEGIN)
            .await
            .map_err(|e| error::map("begin", e))?;
        Ok(SqliteTransaction {
            transaction,
            _claim: None,
            _turn: turn,
        })
    }

    /// Creates the table and its index if missing.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        schema::migrate(&self.pool, &self.table).await
    }

    /// Deletes up to `batch` expired records; returns how many. Expired records already
    /// count as absent; this only frees their space.
    pub async fn delete_expired(&self, batch: u32) -> Result<u64, StoreError> {
        schema::delete_expired(&self.pool, &self.table, batch).await
    }

    /// Deletes expired records, `batch` per statement, every `period`, until the handle is
    /// dropped (see [`SqliteStore::spawn_reaper`](crate::SqliteStore::spawn_reaper)).
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime.
    pub fn spawn_reaper(&self, period: Duration, batch: u32) -> crate::ReaperHandle {
        crate::reaper::spawn(self.pool.clone(), Arc::clone(&self.table), period, batch)
    }

    /// The pool the handlers' transactions come from.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    async fn find(
        &self,
        executor: impl sqlx::SqliteExecutor<'_>,
        id: &RecordId,
    ) -> Result<Option<(Fingerprint, Option<Bytes>)>, StoreError> {
        let row = sqlx::query(&self.sql.find)
            .bind(&id.as_bytes()[..])
            .fetch_optional(executor)
            .await
            .map_err(|e| error::map("lookup", e))?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: Vec<u8> = row.try_get(0).map_err(|e| error::map("lookup", e))?;
        let response: Option<Vec<u8>> = row.try_get(1).map_err(|e| error::map("lookup", e))?;
        let fingerprint =
            <[u8; Fingerprint::LEN]>::try_from(fingerprint.as_slice()).map_err(|_| {
                StoreError::new(StoreErrorKind::Corrupt, "a fingerprint of the wrong size")
            })?;
        Ok(Some((
            Fingerprint::from_bytes(fingerprint),
            response.map(Bytes::from),
        )))
    }
}

/// The transaction of one request: SQLite's write lock, held until commit or rollback.
/// Dereferences to the connection (`&mut *guard` is an executor); dropping it rolls back.
pub struct SqliteTransaction {
    // Declared first, so dropped (and its rollback started) before the claim and the
    // write turn are let go.
    transaction: sqlx::Transaction<'static, Sqlite>,
    _claim: Option<Running>,
    _turn: tokio::sync::OwnedMutexGuard<()>,
}

impl fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteTransaction").finish_non_exhaustive()
    }
}

impl Deref for SqliteTransaction {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        &self.transaction
    }
}

impl DerefMut for SqliteTransaction {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.transaction
    }
}

/// An id in this process's set of running claims, removed on drop.
struct Running {
    id: RecordId,
    set: Arc<Mutex<HashSet<RecordId>>>,
}

impl Running {
    fn enter(set: &Arc<Mutex<HashSet<RecordId>>>, id: RecordId) -> Option<Self> {
        let fresh = set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id);
        fresh.then(|| Self {
            id,
            set: Arc::clone(set),
        })
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
    }
}

const BEGIN: &str = "BEGIN IMMEDIATE";

impl TransactionalStore for SqliteTransactionalStore {
    type Transaction = SqliteTransaction;

    async fn lookup(&self, id: &RecordId) -> Result<Option<CompletedRecord>, StoreError> {
        Ok(match self.find(&self.pool, id).await? {
            Some((fingerprint, Some(response))) => Some(CompletedRecord {
                fingerprint,
                response,
            }),
            _ => None,
        })
    }

    async fn claim(
        &self,
        id: &RecordId,
        _: Duration,
    ) -> Result<Begun<SqliteTransaction>, StoreError> {
        let Some(running) = Running::enter(&self.running, *id) else {
            return Ok(Begun::InFlight);
        };
        let mut transaction = self.begin_immediate().await?;
        match self.find(&mut *transaction.transaction, id).await? {
            None => {
                transaction._claim = Some(running);
                Ok(Begun::Claimed(transaction))
            }
            Some((fingerprint, Some(response))) => Ok(Begun::Completed(CompletedRecord {
                fingerprint,
                response,
            })),
            Some((_, None)) => Ok(Begun::InFlight),
        }
    }

    async fn begin(&self, _: Duration) -> Result<SqliteTransaction, StoreError> {
        self.begin_immediate().await
    }

    async fn commit(
        &self,
        mut transaction: SqliteTransaction,
        record: Option<NewRecord<'_>>,
    ) -> Result<(), CommitError> {
        if let Some(record) = record {
            let written = sqlx::query(&self.sql.record)
                .bind(&record.id.as_bytes()[..])
                .bind(&record.fingerprint.as_bytes()[..])
                .bind(&record.response[..])
                .bind(schema::millis(record.ttl))
                .execute(&mut *transaction.transaction)
                .await
                .map_err(|e| CommitError::Failed(error::map("record", e)))?;
            if written.rows_affected() == 0 {
                return Err(CommitError::Conflict); // dropped: rolled back
            }
        }
        transaction.transaction.commit().await.map_err(|e| {
            // SQLite runs in this process: a COMMIT that returned an error did not commit,
            // unless the connection's worker itself went away mid-way.
            let unknown = matches!(e, sqlx::Error::WorkerCrashed | sqlx::Error::Io(_));
            let error = error::map("commit", e);
            if unknown {
                CommitError::Unknown(error)
            } else {
                CommitError::Failed(error)
            }
        })
    }

    async fn rollback(&self, transaction: SqliteTransaction) {
        if let Err(error) = transaction.transaction.rollback().await {
            tracing::warn!(%error, "rolling back a request's transaction failed");
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| error::map("check", e))
    }
}
