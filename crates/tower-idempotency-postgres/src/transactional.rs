//! [`PostgresTransactionalStore`]: transactional mode on PostgreSQL.
//!
//! A claim is a transaction-scoped advisory lock on the record id, taken without waiting
//! (`pg_try_advisory_xact_lock`): a duplicate of a running request learns at once that it is
//! in flight, and a crashed instance's lock ends with its session. The record is written at
//! commit time by `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`, which sees committed
//! rows whatever the snapshot: even if two transactions ran for one key (the lock lost, say,
//! to a non-transactional writer of the same table), only one commits a record, and the
//! other's writes roll back with it.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use sqlx::{PgConnection, PgPool, Postgres, Row};
use tower_idempotency::{
    Fingerprint,
    store::{CompletedRecord, RecordId, StoreError},
    transactional::{Begun, CommitError, NewRecord, TransactionalStore},
};

use crate::{
    PostgresStore, ReaperHandle, error,
    sql::{DEFAULT_TABLE, TableName, millis},
};

/// A [`TransactionalStore`] on the application's own PostgreSQL pool: the handler's writes
/// and the idempotency record commit in one transaction. Records live in the table of
/// [`PostgresStore`] (same format; [`migrate`](Self::migrate) creates it).
///
/// Per first request: a read (is there a record?), `BEGIN` (with the transaction's time
/// limits, one message), the lock, a read of the record under it, the handler's statements,
/// the record's `INSERT`, `COMMIT`: **one commit**. A replay is one read and no transaction.
///
/// Every running keyed request holds a pooled connection until it commits; waiting
/// duplicates hold none.
#[derive(Clone)]
pub struct PostgresTransactionalStore {
    pool: PgPool,
    table: TableName,
    sql: Arc<Statements>,
}

impl fmt::Debug for PostgresTransactionalStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTransactionalStore")
            .field("table", &self.table.as_str())
            .finish_non_exhaustive()
    }
}

struct Statements {
    /// `$1` id. A live completed record: `fingerprint`, `response`.
    lookup: String,
    /// `$1` lock key. One row: `locked`.
    lock: &'static str,
    /// `$1` id. The live record, if any, completed or (`response` `NULL`) claimed by a
    /// non-transactional store sharing the table.
    find: String,
    /// `$1` id, `$2` fingerprint, `$3` response, `$4` TTL (ms). No row touched: a live
    /// record exists.
    record: String,
}

impl PostgresTransactionalStore {
    /// A store on `pool` (the one the handlers' writes go to), records in
    /// `idempotency_records`.
    pub fn new(pool: PgPool) -> Self {
        let table = TableName::parse(DEFAULT_TABLE).expect("the default table name is valid");
        Self::build(pool, table)
    }

    /// The same with records in `table` (`"table"` or `"schema.table"`, as for
    /// [`PostgresStore::with_table`]).
    pub fn with_table(pool: PgPool, table: &str) -> Result<Self, StoreError> {
        Ok(Self::build(pool, TableName::parse(table)?))
    }

    fn build(pool: PgPool, table: TableName) -> Self {
        let t = table.quoted();
        let live = "expires_at > clock_timestamp()";
        let sql = Statements {
            lookup: format!(
                "SELECT fingerprint, response FROM {t} WHERE id = $1 AND {live} \
                 AND response IS NOT NULL"
            ),
            lock: "SELECT pg_try_advisory_xact_lock($1)",
            find: format!("SELECT fingerprint, response FROM {t} WHERE id = $1 AND {live}"),
            record: format!(
                "INSERT INTO {t} AS r (id, fingerprint, token, response, expires_at) \
                 VALUES ($1, $2, 0, $3, clock_timestamp() + $4 * interval '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE SET fingerprint = EXCLUDED.fingerprint, token = 0, \
                 response = EXCLUDED.response, expires_at = EXCLUDED.expires_at \
                 WHERE r.expires_at <= clock_timestamp()"
            ),
        };
        Self {
            pool,
            table,
            sql: Arc::new(sql),
        }
    }

    /// The separate-mode store on the same pool and table: what creates the table and deletes
    /// expired records.
    fn records(&self) -> PostgresStore {
        PostgresStore::from_pool(self.pool.clone())
            .with_table(self.table.as_str())
            .expect("the table name was validated")
    }

    /// Creates the table if missing (see [`PostgresStore::migrate`]).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.records().migrate().await
    }

    /// Deletes expired records in batches of `batch`, every `period`, until the handle drops
    /// (see [`PostgresStore::spawn_reaper`]).
    pub fn spawn_reaper(&self, period: Duration, batch: u32) -> ReaperHandle {
        self.records().spawn_reaper(period, batch)
    }

    /// The pool.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The table name, as given.
    pub fn table(&self) -> &str {
        self.table.as_str()
    }

    async fn begin_with_limits(
        &self,
        timeout: Duration,
    ) -> Result<sqlx::Transaction<'static, Postgres>, StoreError> {
        // One simple-protocol message: the limits cost no round trip of their own. They end
        // with the transaction, so the pool's connections keep their own settings.
        let ms = millis(timeout).max(1);
        let begin = format!(
            "BEGIN; SET LOCAL idle_in_transaction_session_timeout = {ms}; \
             SET LOCAL statement_timeout = {ms}"
        );
        self.pool
            .begin_with(begin)
            .await
            .map_err(|e| error::map("beginning a transaction", e))
    }
}

/// The transaction of one request. Dereferences to the connection (`&mut *guard` is an
/// executor); dropping it rolls back.
pub struct PostgresTransaction {
    transaction: sqlx::Transaction<'static, Postgres>,
    timeout: Duration,
}

impl fmt::Debug for PostgresTransaction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresTransaction")
            .finish_non_exhaustive()
    }
}

impl Deref for PostgresTransaction {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.transaction
    }
}

impl DerefMut for PostgresTransaction {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.transaction
    }
}

/// The advisory lock of a record: its id's first 8 bytes (ids are SHA-256 output).
fn lock_key(id: &RecordId) -> i64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&id.as_bytes()[..8]);
    i64::from_be_bytes(bytes)
}

fn fingerprint_of(bytes: &[u8]) -> Result<Fingerprint, StoreError> {
    <[u8; Fingerprint::LEN]>::try_from(bytes)
        .map(Fingerprint::from_bytes)
        .map_err(|_| error::corrupt("a fingerprint of the wrong size"))
}

impl TransactionalStore for PostgresTransactionalStore {
    type Transaction = PostgresTransaction;

    async fn lookup(&self, id: &RecordId) -> Result<Option<CompletedRecord>, StoreError> {
        let row = sqlx::query(&self.sql.lookup)
            .bind(&id.as_bytes()[..])
            .fetch_optional(&self.pool)
            .await
            .map_err(|e| error::map("looking up a record", e))?;
        let Some(row) = row else { return Ok(None) };
        let fingerprint: Vec<u8> = row.try_get(0).map_err(|e| error::map("decoding", e))?;
        let response: Vec<u8> = row.try_get(1).map_err(|e| error::map("decoding", e))?;
        Ok(Some(CompletedRecord {
            fingerprint: fingerprint_of(&fingerprint)?,
            response: Bytes::from(response),
        }))
    }

    async fn claim(
        &self,
        id: &RecordId,
        timeout: Duration,
    ) -> Result<Begun<PostgresTransaction>, StoreError> {
        let mut transaction = self.begin_with_limits(timeout).await?;
        let locked: bool = sqlx::query_scalar(self.sql.lock)
            .bind(lock_key(id))
            .fetch_one(&mut *transaction)
            .await
            .map_err(|e| error::map("claiming a record", e))?;
        if !locked {
            return Ok(Begun::InFlight); // dropped: rolled back
        }
        // A statement of its own, so its snapshot is taken after the lock: a transaction that
        // held the lock and committed a record is visible here (it commits before releasing
        // the lock). Read together with the lock, the snapshot would predate it and the
        // handler could run a second time, only to roll back at the commit.
        let row = sqlx::query(&self.sql.find)
            .bind(&id.as_bytes()[..])
            .fetch_optional(&mut *transaction)
            .await
            .map_err(|e| error::map("claiming a record", e))?;
        let Some(row) = row else {
            return Ok(Begun::Claimed(PostgresTransaction {
                transaction,
                timeout,
            }));
        };
        let fingerprint: Vec<u8> = row.try_get(0).map_err(|e| error::map("decoding", e))?;
        let response: Option<Vec<u8>> = row.try_get(1).map_err(|e| error::map("decoding", e))?;
        Ok(match response {
            Some(response) => Begun::Completed(CompletedRecord {
                fingerprint: fingerprint_of(&fingerprint)?,
                response: Bytes::from(response),
            }),
            None => Begun::InFlight,
        })
    }

    async fn begin(&self, timeout: Duration) -> Result<PostgresTransaction, StoreError> {
        Ok(PostgresTransaction {
            transaction: self.begin_with_limits(timeout).await?,
            timeout,
        })
    }

    async fn commit(
        &self,
        mut transaction: PostgresTransaction,
        record: Option<NewRecord<'_>>,
    ) -> Result<(), CommitError> {
        let timeout = transaction.timeout;
        let commit = async move {
            if let Some(record) = record {
                let written = sqlx::query(&self.sql.record)
                    .bind(&record.id.as_bytes()[..])
                    .bind(&record.fingerprint.as_bytes()[..])
                    .bind(&record.response[..])
                    .bind(millis(record.ttl))
                    .execute(&mut *transaction.transaction)
                    .await
                    .map_err(|e| CommitError::Failed(error::map("writing the record", e)))?;
                if written.rows_affected() == 0 {
                    return Err(CommitError::Conflict); // dropped: rolled back
                }
            }
            transaction.transaction.commit().await.map_err(|e| {
                // An error the server sent means it did not commit; a connection that broke
                // before its answer leaves it unknown.
                let unknown = matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::Tls(_)
                        | sqlx::Error::Protocol(_)
                        | sqlx::Error::WorkerCrashed
                );
                let error = error::map("committing", e);
                if unknown {
                    CommitError::Unknown(error)
                } else {
                    CommitError::Failed(error)
                }
            })
        };
        // A server that stops answering must not hold the answer forever.
        match tokio::time::timeout(timeout, commit).await {
            Ok(result) => result,
            Err(_) => Err(CommitError::Unknown(StoreError::new(
                tower_idempotency::store::StoreErrorKind::Unavailable,
                "PostgreSQL did not answer the commit in time",
            ))),
        }
    }

    async fn rollback(&self, transaction: PostgresTransaction) {
        let rollback = transaction.transaction.rollback();
        match tokio::time::timeout(transaction.timeout, rollback).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "rolling back a request's transaction failed"),
            Err(_) => tracing::warn!("PostgreSQL did not answer a rollback in time"),
        }
    }

    async fn check(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(drop)
            .map_err(|e| error::map("checking the connection", e))
    }
}
