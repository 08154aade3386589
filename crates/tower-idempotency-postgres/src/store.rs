//! [`PostgresStore`] and its builder.

use std::{
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use sqlx::{
    Executor, Row,
    postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow},
};
use tokio::time::Instant;
use tower_idempotency::{
    Fingerprint,
    store::{
        Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreError,
        StoreErrorKind,
    },
};

use crate::{
    conn::{self, Checkout, Health},
    error,
    reaper::{self, ReaperHandle},
    session::{Limits, setting_ms},
    sql::{Arg, DEFAULT_TABLE, Statements, TableName, millis, render},
};

/// Default [`acquire_timeout`](PostgresStoreBuilder::acquire_timeout) of pools the store
/// creates.
pub const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// Default [`operation_timeout`](PostgresStoreBuilder::operation_timeout): how long one
/// operation (acquiring a connection included) may take before it fails with
/// [`Unavailable`](StoreErrorKind::Unavailable).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a statement that failed with a serialization failure (40001) or a deadlock
/// (40P01) is run again, within the operation timeout. Such a statement rolled back.
const SERIALIZATION_RETRIES: u32 = 4;

/// How often a claim runs again after it lost a race (see the claim statement).
const CLAIM_ATTEMPTS: u32 = 4;

/// Longest time `migrate` lets its DDL wait for a lock: claims queue behind a waiting DDL
/// lock, so they are delayed by at most this much (plus the DDL itself).
const MIGRATE_LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// Most background releases of claims whose outcome is unknown (see
/// [`PostgresStore::release_in_background`]) pending at once; beyond that, such claims
/// simply run out with their lease.
const MAX_PENDING_RELEASES: usize = 64;

/// How the store talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    /// Extended protocol, statements prepared once per connection; session settings set at
    /// connection start.
    Prepared,
    /// Simple protocol, one message per operation that carries its own transaction
    /// settings and inlines its parameters; no prepared statement, no session state. For
    /// poolers in transaction mode.
    Simple,
}

/// What a statement is expected to return.
#[derive(Debug, Clone, Copy)]
enum Want {
    Row,
    Affected,
}

#[derive(Debug)]
enum Fetched {
    Row(PgRow),
    Affected(u64),
}

impl Fetched {
    fn row(self) -> PgRow {
        match self {
            Self::Row(row) => row,
            Self::Affected(_) => unreachable!("asked for a row"),
        }
    }

    fn affected(self) -> u64 {
        match self {
            Self::Affected(n) => n,
            Self::Row(_) => unreachable!("asked for a count"),
        }
    }
}

/// A failed operation, and whether its statement may have been applied anyway (it was sent
/// and then the connection broke or the operation timed out).
#[derive(Debug)]
struct Failure {
    error: StoreError,
    maybe_applied: bool,
}

impl Failure {
    fn before_sending(error: StoreError) -> Self {
        Self {
            error,
            maybe_applied: false,
        }
    }
}

/// An [`IdempotencyStore`] in one PostgreSQL table. See the [crate docs](crate) for the
/// schema and the statements it runs.
///
/// Cheap to clone: clones share the connection pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: PgPool,
    sql: Arc<Statements>,
    timeout: Option<Duration>,
    protocol: Protocol,
    /// The limits the store's statements run under (as far as the store knows them: a pool
    /// of the caller's sets its own in prepared mode).
    limits: Limits,
    /// `limits` as statements opening every message (simple protocol only, else empty).
    prefix: Arc<str>,
    health: Arc<Health>,
    ping_within: Duration,
    /// Set until a connection showed that the session settings asked for took effect.
    verify: Arc<AtomicBool>,
    pending_releases: Arc<AtomicUsize>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("table", &self.table())
            .field("operation_timeout", &self.timeout)
            .field("transaction_pooling", &(self.protocol == Protocol::Simple))
            .field("limits", &self.limits)
            .field("pool", &self.pool)
            .finish()
    }
}

impl PostgresStore {
    /// Connects a new pool to `url` (e.g. `postgres://user:password@host:5432/db`) with the
    /// [builder](Self::builder)'s defaults, using the table `idempotency_records`.
    ///
    /// Fails with [`StoreErrorKind::Unavailable`] if the server cannot be reached within the
    /// acquire timeout ([`DEFAULT_ACQUIRE_TIMEOUT`]), and with `Backend` if it is reached but
    /// refuses the store's session settings (a pooler in transaction mode: see
    /// [`PostgresStoreBuilder::transaction_pooling`]). Does not create the table: call
    /// [`migrate`](Self::migrate).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }

    /// A builder, to choose the table and the pool settings.
    pub fn builder() -> PostgresStoreBuilder {
        PostgresStoreBuilder::default()
    }

    /// A store on an existing pool, using the table `idempotency_records` and the
    /// [`DEFAULT_OPERATION_TIMEOUT`]. The pool's own settings apply, so give it what the
    /// store's own pools have (see [`PostgresStoreBuilder::session_options`]):
    ///
    /// - a short [`acquire_timeout`](sqlx::pool::PoolOptions::acquire_timeout);
    /// - `default_transaction_isolation = 'read committed'`. Under `repeatable read` or
    ///   `serializable` the store still works, by running statements that fail with a
    ///   serialization failure again (a few times), but concurrent operations on one record
    ///   then fail more often;
    /// - a `statement_timeout` and a `lock_timeout` below the operation timeout, so that the
    ///   server cancels a statement the store gave up on instead of letting it write later.
    ///
    /// The store closes connections whose operation timed out or broke, and bounds the ping
    /// sqlx sends when a connection goes back to the pool; pools it creates itself also
    /// discard idle connections opened before such a failure at once, where a pool of yours
    /// tries them one by one (a silent one costs its operation a timeout). Behind a pooler
    /// in transaction mode, use [`PostgresStoreBuilder::transaction_pooling`] and
    /// [`build`](PostgresStoreBuilder::build).
    pub fn from_pool(pool: PgPool) -> Self {
        let table = TableName::parse(DEFAULT_TABLE).expect("the default table name is valid");
        let timeout = Some(DEFAULT_OPERATION_TIMEOUT);
        Self::new(
            pool,
            table,
            timeout,
            Protocol::Prepared,
            PostgresStoreBuilder::default().limits(),
            Health::new(),
            false,
        )
    }

    /// The same store on another table: `"table"` or `"schema.table"`, each part made of ASCII
    /// letters, digits and `_` (not starting with a digit), the table at most 51 bytes. Names
    /// are quoted, so their case is kept. The schema must exist.
    pub fn with_table(self, table: &str) -> Result<Self, StoreError> {
        Ok(Self {
            sql: Arc::new(Statements::new(TableName::parse(table)?)),
            ..self
        })
    }

    /// The same store with another [operation
    /// timeout](PostgresStoreBuilder::operation_timeout) (`None`: wait as long as it takes).
    /// The server-side limits of the pool's connections stay as they are.
    pub fn with_operation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.timeout = timeout.into();
        self.ping_within = conn::ping_within(self.timeout);
        self
    }

    fn new(
        pool: PgPool,
        table: TableName,
        timeout: Option<Duration>,
        protocol: Protocol,
        limits: Limits,
        health: Arc<Health>,
        verify: bool,
    ) -> Self {
        let prefix = match protocol {
            Protocol::Prepared => String::new(),
            Protocol::Simple => limits.transaction_prefix(),
        };
        Self {
            pool,
            sql: Arc::new(Statements::new(table)),
            timeout,
            protocol,
            limits,
            prefix: prefix.into(),
            health,
            ping_within: conn::ping_within(timeout),
            verify: Arc::new(AtomicBool::new(verify)),
            pending_releases: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The table, as given.
    pub fn table(&self) -> &str {
        self.sql.table.as_str()
    }

    /// The connection pool. Connections of a pool the store created carry its session
    /// settings (see the crate docs): use them for short statements only, since a transaction
    /// left idle longer than the statement timeout is ended by the server.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn deadline(&self) -> Option<Instant> {
        self.timeout.map(|t| Instant::now() + t)
    }

    /// Runs one statement on a connection of its own, before `deadline`: `sql` with `args`
    /// in the store's protocol, or, with `literal`, `sql` as it is (several statements,
    /// one implicit transaction) in the simple protocol. Statements that fail with a
    /// serialization failure or a deadlock rolled back and run again.
    async fn perform(
        &self,
        doing: &'static str,
        sql: &str,
        args: &[Arg<'_>],
        want: Want,
        literal: bool,
        deadline: Option<Instant>,
    ) -> Result<Fetched, Failure> {
        let sent = AtomicBool::new(false);
        let work = async {
            let mut checkout = Checkout::acquire(&self.pool, &self.health, self.ping_within)
                .await
                .map_err(|e| Failure::before_sending(error::map(doing, e)))?;
            if self.verify.load(Ordering::SeqCst) {
                self.verify_settings(checkout.conn()).await?;
            }
            let protocol = if literal {
                Protocol::Simple
            } else {
                self.protocol
            };
            let mut retries = 0;
            loop {
                sent.store(true, Ordering::SeqCst);
                let result =
                    execute(checkout.conn(), protocol, &self.prefix, sql, args, want).await;
                match result {
                    Ok(fetched) => {
                        checkout.keep();
                        return Ok(fetched);
                    }
                    Err(e) if error::is_retryable(&e) && retries < SERIALIZATION_RETRIES => {
                        // It rolled back: nothing was applied.
                        sent.store(false, Ordering::SeqCst);
                        retries += 1;
                        tracing::debug!(error = %e, retries, "retrying a statement ({doing})");
                        tokio::time::sleep(retry_pause(retries)).await;
                    }
                    Err(e) => {
                        let broken = error::breaks_connection(&e);
                        if broken {
                            self.health.connections_failed();
                        } else {
                            checkout.keep();
                        }
                        return Err(Failure {
                            error: error::map(doing, e),
                            maybe_applied: broken,
                        });
                    }
                }
            }
        };
        let Some(deadline) = deadline else {
            return work.await;
        };
        match tokio::time::timeout_at(deadline, work).await {
            Ok(result) => result,
            Err(elapsed) => {
                // Cancelled mid-way: the checkout closed its connection.
                let sent = sent.load(Ordering::SeqCst);
                if sent {
                    // It went silent, or the server stalled: the connections opened with it
                    // are suspect too.
                    self.health.connections_failed();
                }
                let timeout = self.timeout.unwrap_or_default();
                Err(Failure {
                    error: StoreError::new(
                        StoreErrorKind::Unavailable,
                        format!("PostgreSQL did not answer within {timeout:?} while {doing}"),
                    )
                    .with_source(elapsed),
                    maybe_applied: sent,
                })
            }
        }
    }

    /// Checks, once per store, that the session settings asked for at connection start are
    /// in effect.
    async fn verify_settings(&self, conn: &mut PgConnection) -> Result<(), Failure> {
        let row = execute(conn, Protocol::Simple, "", Limits::QUERY, &[], Want::Row)
            .await
            .map(Fetched::row)
            .map_err(|e| Failure::before_sending(error::map("checking session settings", e)))?;
        self.limits
            .check_row(&row)
            .map_err(Failure::before_sending)?;
        self.verify.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// A guarded write: one row touched, or [`LeaseLost`](StoreErrorKind::LeaseLost).
    async fn guarded(
        &self,
        doing: &'static str,
        sql: &str,
        args: &[Arg<'_>],
    ) -> Result<(), StoreError> {
        let done = self
            .perform(doing, sql, args, Want::Affected, false, self.deadline())
            .await
            .map_err(|f| f.error)?;
        owned(done.affected())
    }

    /// Creates the table and its index on `expires_at` if they do not exist. Idempotent, and
    /// safe to run from many instances at once, while others serve traffic:
    ///
    /// - It first looks in the catalog (no lock on the table): when the table and a valid
    ///   index exist, which is every start but the first, it does nothing else.
    /// - Otherwise it creates what is missing in one transaction, serialized with other
    ///   instances by an advisory lock, waiting at most 1 s for any lock (`lock_timeout`;
    ///   claims queue behind a waiting DDL lock, so they are held up at most that long),
    ///   and fails with [`Unavailable`](StoreErrorKind::Unavailable) if it has to wait
    ///   longer: run it again. Creating the index on an existing, large table blocks
    ///   writes while it is built (up to the `statement_timeout`); create such an index by
    ///   hand with `CREATE INDEX CONCURRENTLY` instead.
    /// - An index left invalid by a failed `CREATE INDEX CONCURRENTLY` is reported
    ///   (`Backend`), not replaced.
    ///
    /// Bounded by twice the operation timeout.
    ///
    /// ```sql
    /// CREATE TABLE IF NOT EXISTS "idempotency_records" (
    ///     id          BYTEA PRIMARY KEY,     -- the 32-byte RecordId
    ///     fingerprint BYTEA NOT NULL,        -- the 16-byte Fingerprint
    ///     token       BIGINT NOT NULL,       -- the fencing token
    ///     response    BYTEA,                 -- NULL while in flight
    ///     expires_at  TIMESTAMPTZ NOT NULL); -- lease end (in flight) or TTL end (completed)
    /// CREATE INDEX "idempotency_records_expires_idx" ON "idempotency_records" (expires_at);
    /// ```
    pub async fn migrate(&self) -> Result<(), StoreError> {
        const LOOKING: &str = "looking up the idempotency table";
        const DOING: &str = "migrating the idempotency table";
        let deadline = self.timeout.map(|t| Instant::now() + 2 * t);
        let row = self
            .perform(LOOKING, &self.sql.catalog, &[], Want::Row, true, deadline)
            .await
            .map_err(|f| f.error)?
            .row();
        let fail = |e| error::map(LOOKING, e);
        let has_table: bool = row.try_get(0).map_err(fail)?;
        let index_valid: Option<bool> = row.try_get(1).map_err(fail)?;
        match (has_table, index_valid) {
            (true, Some(true)) => return Ok(()),
            (_, Some(false)) => {
                return Err(StoreError::new(
                    StoreErrorKind::Backend,
                    format!(
                        "the index on expires_at of the idempotency table {:?} is invalid (left \
                         by a failed CREATE INDEX CONCURRENTLY?): drop it and migrate again",
                        self.table()
                    ),
                ));
            }
            _ => {}
        }
        let lock = self
            .limits
            .lock_timeout
            .map_or(MIGRATE_LOCK_TIMEOUT, |t| t.min(MIGRATE_LOCK_TIMEOUT));
        let ddl = format!(
            "SET LOCAL lock_timeout = {}; {}",
            setting_ms(lock),
            self.sql.migrate
        );
        self.perform(DOING, &ddl, &[], Want::Affected, true, deadline)
            .await
            .map_err(|f| f.error)?;
        tracing::info!(
            table = self.table(),
            "created the idempotency table or its index"
        );
        Ok(())
    }

    /// Deletes up to `batch` expired records (in flight or completed), oldest first, and
    /// returns how many it deleted. Rows another transaction holds are skipped, and live
    /// records are never deleted.
    ///
    /// ```sql
    /// DELETE FROM t WHERE id IN (
    ///     SELECT id FROM t WHERE expires_at <= (SELECT clock_timestamp())
    ///     ORDER BY expires_at LIMIT $batch FOR UPDATE SKIP LOCKED
    /// ) AND expires_at <= clock_timestamp()
    /// ```
    pub async fn delete_expired(&self, batch: u32) -> Result<u64, StoreError> {
        if batch == 0 {
            return Ok(0);
        }
        let done = self
            .perform(
                "deleting expired records",
                &self.sql.delete_expired,
                &[Arg::Int(i64::from(batch))],
                Want::Affected,
                false,
                self.deadline(),
            )
            .await
            .map_err(|f| f.error)?;
        Ok(done.affected())
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

    /// Best effort, in the background: frees the record a claim whose outcome is unknown
    /// (sent, then the connection broke or the operation timed out) may have written. The
    /// caller got an error and runs nothing, so the claim, if it was written, belongs to
    /// nobody; without this the key would be blocked for a whole lease.
    ///
    /// The release is guarded by the claim's token, which nobody else holds: it can only
    /// delete that claim. It runs at once and, if it finds nothing, once more when the
    /// claim can no longer be running (the operation timeout plus the statement timeout
    /// after it was sent: the server cancels statements that run longer); while the server
    /// is unreachable it retries until the claim would have expired anyway. A claim that
    /// reaches the server later still (held up in the network) runs out with its lease.
    fn release_in_background(&self, id: RecordId, token: i64, lease: Duration, sent_at: Instant) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.pending_releases.fetch_add(1, Ordering::SeqCst) >= MAX_PENDING_RELEASES {
            self.pending_releases.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                "too many claims with an unknown outcome; this one runs out with its lease"
            );
            return;
        }
        let store = self.clone();
        runtime.spawn(async move {
            store.release_orphan(&id, token, lease, sent_at).await;
            store.pending_releases.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn release_orphan(&self, id: &RecordId, token: i64, lease: Duration, sent_at: Instant) {
        let patience = self.timeout.unwrap_or(DEFAULT_OPERATION_TIMEOUT);
        let settled = sent_at
            + patience
            + self.limits.statement_timeout.unwrap_or(patience)
            + Duration::from_millis(100);
        let give_up = settled + lease;
        let mut pause = Duration::from_millis(20);
        let mut after_settled = false;
        loop {
            let started = Instant::now();
            match self
                .release(id, FencingToken::new(token.cast_unsigned()))
                .await
            {
                Ok(()) => {
                    tracing::info!(
                        record = ?id,
                        "freed a claim whose outcome was unknown to its claimer"
                    );
                    return;
                }
                Err(e) if e.kind() == StoreErrorKind::LeaseLost => {
                    if after_settled || started >= settled {
                        return;
                    }
                    tokio::time::sleep_until(settled).await;
                    after_settled = true;
                }
                Err(e) if e.kind() == StoreErrorKind::Unavailable => {
                    if Instant::now() + pause >= give_up {
                        tracing::warn!(
                            record = ?id,
                            error = %e,
                            "could not free a claim whose outcome was unknown; it runs out with \
                             its lease"
                        );
                        return;
                    }
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    tracing::warn!(record = ?id, error = %e, "could not free a claim whose outcome was unknown");
                    return;
                }
            }
        }
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Runs one statement. (Boxed: it pins down the lifetimes of the connection borrow, which
/// sqlx's `Executor` bounds otherwise leave too general for the `Send` futures of the
/// store's trait methods.)
fn execute<'a>(
    conn: &'a mut PgConnection,
    protocol: Protocol,
    prefix: &'a str,
    sql: &'a str,
    args: &'a [Arg<'a>],
    want: Want,
) -> BoxFuture<'a, Result<Fetched, sqlx::Error>> {
    Box::pin(async move {
        match protocol {
            Protocol::Prepared => {
                let mut query = sqlx::query(sql);
                for arg in args {
                    query = match *arg {
                        Arg::Bytes(bytes) => query.bind(bytes),
                        Arg::Int(int) => query.bind(int),
                    };
                }
                match want {
                    Want::Row => conn.fetch_one(query).await.map(Fetched::Row),
                    Want::Affected => {
                        let done = conn.execute(query).await?;
                        Ok(Fetched::Affected(done.rows_affected()))
                    }
                }
            }
            Protocol::Simple => {
                // Literal statements (no parameters) may hold `$` of their own: a DO block.
                let text = if args.is_empty() {
                    format!("{prefix}{sql}")
                } else {
                    format!("{prefix}{}", render(sql, args))
                };
                match want {
                    // Only the last statement returns rows.
                    Want::Row => conn
                        .fetch_all(sqlx::raw_sql(&text))
                        .await?
                        .pop()
                        .map(Fetched::Row)
                        .ok_or(sqlx::Error::RowNotFound),
                    Want::Affected => {
                        let done = conn.execute(sqlx::raw_sql(&text)).await?;
                        Ok(Fetched::Affected(done.rows_affected()))
                    }
                }
            }
        }
    })
}

/// Pause before the `n`th run of a statement that hit a serialization failure: a few
/// milliseconds, doubling, with jitter so that the transactions that collided do not
/// collide again.
fn retry_pause(n: u32) -> Duration {
    let jitter = getrandom::u32().unwrap_or(0) % 1000;
    Duration::from_micros((1000u64 << n.min(6)) + u64::from(jitter) * u64::from(n))
}

/// A fresh fencing token as the table keeps it: never 0, the token of records written in
/// transactional mode.
fn new_token() -> i64 {
    FencingToken::random().get().cast_signed()
}

/// What one run of the claim statement decided.
enum Decided {
    Claim(Claim),
    /// Another claim won a race: nothing live in the statement's snapshot, nothing written.
    Raced,
    /// The claim was written, but its lease had run out by then (it waited longer than its
    /// lease for a lock): not a claim anyone may act on.
    Expired,
}

fn decide(row: &PgRow, token: i64) -> Result<Decided, StoreError> {
    let fail = |e| error::map("claiming a record", e);
    let wrote: bool = row.try_get(0).map_err(fail)?;
    let fresh: bool = row.try_get(1).map_err(fail)?;
    if wrote {
        return Ok(if fresh {
            Decided::Claim(Claim::Acquired(FencingToken::new(token.cast_unsigned())))
        } else {
            Decided::Expired
        });
    }
    let live: Option<bool> = row.try_get(4).map_err(fail)?;
    if live != Some(true) {
        return Ok(Decided::Raced);
    }
    let stored: Option<Vec<u8>> = row.try_get(2).map_err(fail)?;
    let stored = stored.unwrap_or_default();
    let fingerprint = <[u8; Fingerprint::LEN]>::try_from(stored)
        .map(Fingerprint::from_bytes)
        .map_err(|v| error::corrupt(&format!("a fingerprint of {} bytes", v.len())))?;
    Ok(Decided::Claim(
        match row.try_get::<Option<Vec<u8>>, _>(3).map_err(fail)? {
            None => Claim::InFlight { fingerprint },
            Some(response) => Claim::Completed(CompletedRecord {
                fingerprint,
                response: Bytes::from(response),
            }),
        },
    ))
}

impl IdempotencyStore for PostgresStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        const DOING: &str = "claiming a record";
        let deadline = self.deadline();
        let mut last = "";
        for _ in 0..CLAIM_ATTEMPTS {
            let token = new_token();
            let sent_at = Instant::now();
            let args = [
                Arg::Bytes(&id.as_bytes()[..]),
                Arg::Bytes(&fingerprint.as_bytes()[..]),
                Arg::Int(token),
                Arg::Int(millis(lease)),
            ];
            let row = match self
                .perform(DOING, &self.sql.claim, &args, Want::Row, false, deadline)
                .await
            {
                Ok(fetched) => fetched.row(),
                Err(failure) => {
                    if failure.maybe_applied {
                        self.release_in_background(*id, token, lease, sent_at);
                    }
                    return Err(failure.error);
                }
            };
            // Raced or expired: run again, with a new snapshot and a fresh lease.
            last = match decide(&row, token)? {
                Decided::Claim(claim) => return Ok(claim),
                Decided::Raced => "it lost every race for the record",
                Decided::Expired => {
                    "every claim's lease ran out before its record was written (a lease that \
                     short, or waits for locks that long)"
                }
            };
        }
        Err(StoreError::new(
            StoreErrorKind::Unavailable,
            format!(
                "the idempotency store (PostgreSQL) is unavailable while {DOING}: after \
                 {CLAIM_ATTEMPTS} attempts, {last}"
            ),
        ))
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let args = [
            Arg::Bytes(&id.as_bytes()[..]),
            Arg::Int(token.get().cast_signed()),
            Arg::Int(millis(lease)),
        ];
        self.guarded("renewing a lease", &self.sql.renew, &args)
            .await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let args = [
            Arg::Bytes(&id.as_bytes()[..]),
            Arg::Int(token.get().cast_signed()),
            Arg::Bytes(&response[..]),
            Arg::Int(millis(ttl)),
        ];
        self.guarded("completing a record", &self.sql.complete, &args)
            .await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        let args = [
            Arg::Bytes(&id.as_bytes()[..]),
            Arg::Int(token.get().cast_signed()),
        ];
        self.guarded("releasing a record", &self.sql.release, &args)
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.perform(
            "checking the connection",
            "SELECT 1",
            &[],
            Want::Affected,
            false,
            self.deadline(),
        )
        .await
        .map_err(|f| f.error)?;
        Ok(())
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

/// Configures a [`PostgresStore`]: its table, its limits and, when the store creates the
/// pool, the pool's settings.
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
    statement_timeout: Option<Option<Duration>>,
    lock_timeout: Option<Option<Duration>>,
    max_connections: Option<u32>,
    test_before_acquire: bool,
    transaction_pooling: bool,
}

impl Default for PostgresStoreBuilder {
    fn default() -> Self {
        Self {
            table: DEFAULT_TABLE.to_owned(),
            acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
            operation_timeout: Some(DEFAULT_OPERATION_TIMEOUT),
            statement_timeout: None,
            lock_timeout: None,
            max_connections: None,
            test_before_acquire: true,
            transaction_pooling: false,
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
    /// `release`, `check`, [`delete_expired`](PostgresStore::delete_expired); `migrate`
    /// gets twice as long), waiting for a connection included, may take before it fails
    /// with [`Unavailable`](StoreErrorKind::Unavailable) (default
    /// [`DEFAULT_OPERATION_TIMEOUT`], 5 s; `None`: no limit). It catches a server or network
    /// that stops answering without closing the connection; the connection is then closed,
    /// not reused.
    ///
    /// A statement that timed out may still have been applied: a completion that timed out
    /// may have stored the response (the layer retries it). A claim that timed out, or
    /// whose connection broke, may have left an in-flight record nobody owns: the store
    /// deletes it in the background (see the crate docs).
    pub fn operation_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.operation_timeout = timeout.into();
        self
    }

    /// The server-side `statement_timeout` of the store's statements (default: four fifths
    /// of the operation timeout; `None`: the server's own setting). The server cancels a
    /// statement that runs longer, so that one the store gave up on (and whose connection it
    /// closed) does not go on to write a claim nobody owns. Also the
    /// `idle_in_transaction_session_timeout` of the store's connections.
    pub fn statement_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.statement_timeout = Some(timeout.into());
        self
    }

    /// The server-side `lock_timeout` of the store's statements (default: half the operation
    /// timeout; `None`: the server's own setting): how long a statement waits for a lock
    /// (a concurrent claim of the same record, a DDL statement) before the server fails it
    /// with `55P03`, which the store reports as [`Unavailable`](StoreErrorKind::Unavailable).
    pub fn lock_timeout(mut self, timeout: impl Into<Option<Duration>>) -> Self {
        self.lock_timeout = Some(timeout.into());
        self
    }

    /// Most connections the pool opens (default: sqlx's, 10).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.max_connections = Some(n);
        self
    }

    /// Whether an idle connection is pinged (one extra round trip, no statement) before each
    /// use (default `true`). The ping is bounded (a quarter of the operation timeout, at most
    /// 1 s); a connection that does not answer is closed, and so are the other idle ones
    /// opened before it. Turning it off takes that round trip off every operation's
    /// latency; a connection the server dropped while it sat idle then fails one operation
    /// with [`Unavailable`](StoreErrorKind::Unavailable) before it is replaced. (sqlx 0.8
    /// also pings every connection returned to the pool, after the operation has returned,
    /// whatever this setting; the store bounds that ping the same way.)
    pub fn test_before_acquire(mut self, test: bool) -> Self {
        self.test_before_acquire = test;
        self
    }

    /// For a connection pooler in transaction mode between the store and PostgreSQL
    /// (PgBouncer's `pool_mode = transaction`), where consecutive transactions of one
    /// connection run on different server connections (default `false`).
    ///
    /// Every operation is then one simple-protocol message holding its settings and its
    /// statement, one implicit transaction: `SET TRANSACTION ISOLATION LEVEL READ COMMITTED;
    /// SET LOCAL statement_timeout = ...; SET LOCAL lock_timeout = ...; SET LOCAL
    /// bytea_output = hex;` then the statement, its parameters written as literals (hex and
    /// integers). No prepared statement (sqlx's, named or unnamed, do not survive from one
    /// transaction to the next behind such a pooler: PgBouncer before 1.21 reports missing
    /// or duplicate statements, or runs another client's unnamed statement), no session
    /// state, and neither the `extra_float_digits` nor the `options` startup parameter,
    /// which PgBouncer refuses unless told to ignore them. Costs: the server parses and
    /// plans every statement, and responses travel as hex text (twice their size).
    ///
    /// Without it, the store refuses to start behind such a pooler, saying so.
    pub fn transaction_pooling(mut self, on: bool) -> Self {
        self.transaction_pooling = on;
        self
    }

    fn limits(&self) -> Limits {
        let base = self.operation_timeout;
        Limits {
            statement_timeout: self
                .statement_timeout
                .unwrap_or_else(|| base.map(|t| t * 4 / 5)),
            lock_timeout: self.lock_timeout.unwrap_or_else(|| base.map(|t| t / 2)),
        }
    }

    fn protocol(&self) -> Protocol {
        if self.transaction_pooling {
            Protocol::Simple
        } else {
            Protocol::Prepared
        }
    }

    /// `options` as the store's own pools connect with them: with the session settings
    /// (`default_transaction_isolation = 'read committed'`, the
    /// [statement](Self::statement_timeout) and [lock](Self::lock_timeout) timeouts) as
    /// startup `options`, or, with [transaction pooling](Self::transaction_pooling), without
    /// the startup parameters a pooler would refuse. For a pool of your own, to pass to
    /// [`build`](Self::build).
    pub fn session_options(&self, options: PgConnectOptions) -> PgConnectOptions {
        match self.protocol() {
            Protocol::Prepared => options.options(self.limits().startup_options()),
            Protocol::Simple => options.extra_float_digits(None),
        }
    }

    fn pool_options(&self, health: &Arc<Health>) -> PgPoolOptions {
        let options = PgPoolOptions::new().acquire_timeout(self.acquire_timeout);
        let options = match self.max_connections {
            Some(n) => options.max_connections(n),
            None => options,
        };
        let ping = self
            .test_before_acquire
            .then(|| conn::ping_within(self.operation_timeout));
        conn::configure(options, Arc::clone(health), ping)
    }

    fn store(
        &self,
        pool: PgPool,
        table: TableName,
        health: Arc<Health>,
        verify: bool,
    ) -> PostgresStore {
        PostgresStore::new(
            pool,
            table,
            self.operation_timeout,
            self.protocol(),
            self.limits(),
            health,
            verify && self.protocol() == Protocol::Prepared,
        )
    }

    /// Connects a pool to `url` and opens its first connection.
    pub async fn connect(self, url: &str) -> Result<PostgresStore, StoreError> {
        let options = parse_url(url)?;
        self.connect_with(options).await
    }

    /// Connects a pool with explicit connection options, opens its first connection and
    /// checks that the session settings took effect.
    pub async fn connect_with(
        self,
        options: PgConnectOptions,
    ) -> Result<PostgresStore, StoreError> {
        let table = TableName::parse(&self.table)?;
        let health = Health::new();
        let pool = self
            .pool_options(&health)
            .connect_with(self.session_options(options))
            .await
            .map_err(|e| error::map("connecting", e))?;
        let store = self.store(pool, table, health, true);
        if store.verify.load(Ordering::SeqCst) {
            let mut checkout = Checkout::acquire(&store.pool, &store.health, store.ping_within)
                .await
                .map_err(|e| error::map("connecting", e))?;
            store
                .verify_settings(checkout.conn())
                .await
                .map_err(|f| f.error)?;
            checkout.keep();
        }
        Ok(store)
    }

    /// Creates a pool for `url` without connecting: connections open on first use (the
    /// first one checks that the session settings took effect).
    pub fn connect_lazy(self, url: &str) -> Result<PostgresStore, StoreError> {
        let options = parse_url(url)?;
        let table = TableName::parse(&self.table)?;
        let health = Health::new();
        let pool = self
            .pool_options(&health)
            .connect_lazy_with(self.session_options(options));
        Ok(self.store(pool, table, health, true))
    }

    /// A store on an existing pool; the table, the operation timeout and
    /// [transaction pooling](Self::transaction_pooling) apply (with it, the statement and
    /// lock timeouts too: they travel with every statement). See
    /// [`PostgresStore::from_pool`] for what the pool should be configured with.
    pub fn build(self, pool: PgPool) -> Result<PostgresStore, StoreError> {
        let table = TableName::parse(&self.table)?;
        Ok(self.store(pool, table, Health::new(), false))
    }
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StoreError> {
    // Never echo the URL: it may hold a password.
    PgConnectOptions::from_str(url).map_err(|e| {
        StoreError::new(StoreErrorKind::Backend, "invalid PostgreSQL connection URL").with_source(e)
    })
}
