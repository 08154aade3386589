//! A PostgreSQL [`IdempotencyStore`] for [`tower_idempotency`], on [sqlx] 0.8: every instance
//! behind the load balancer shares one table, and the database decides which request runs.
//!
//! # Example
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_idempotency::IdempotencyLayer;
//! use tower_idempotency_postgres::PostgresStore;
//!
//! # async fn demo() -> Result<(), tower_idempotency::store::StoreError> {
//! let store = PostgresStore::connect("postgres://app@db.internal:5432/app").await?;
//! store.migrate().await?; // CREATE TABLE IF NOT EXISTS idempotency_records ...
//!
//! // Deletes expired records, 1,000 per statement, every minute, for as long as it is held.
//! let _reaper = store.spawn_reaper(Duration::from_secs(60), 1_000);
//!
//! let layer = IdempotencyLayer::new(store.clone()).ttl(Duration::from_secs(24 * 3600));
//! // router.layer(layer) ...
//! # drop(layer);
//! # Ok(()) }
//! ```
//!
//! # Transactional mode
//!
//! [`PostgresTransactionalStore`] keeps the records in the application's own database and
//! commits each one in the handler's transaction
//! ([`IdempotencyLayer::transactional`](tower_idempotency::IdempotencyLayer::transactional)):
//!
//! ```no_run
//! use axum::{Router, http::StatusCode, routing::post};
//! use tower_idempotency::{IdempotencyLayer, transactional::{Lent, LentGone}};
//! use tower_idempotency_postgres::{PostgresTransaction, PostgresTransactionalStore, sqlx};
//!
//! async fn create(tx: Lent<PostgresTransaction>) -> Result<StatusCode, StatusCode> {
//!     let mut tx = tx.lock().await.map_err(|_: LentGone| StatusCode::INTERNAL_SERVER_ERROR)?;
//!     sqlx::query("INSERT INTO orders (sku) VALUES ('A-1')")
//!         .execute(&mut *tx) // the same transaction the record commits in
//!         .await
//!         .map_err(|_| StatusCode::SERVICE_UNAVAILABLE)?;
//!     Ok(StatusCode::CREATED)
//! }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://app@db.internal/app").await?;
//! let store = PostgresTransactionalStore::new(pool);
//! store.migrate().await?;
//! let _reaper = store.spawn_reaper(std::time::Duration::from_secs(60), 1_000);
//! let app: Router = Router::new().route("/orders", post(create)).layer(
//!     IdempotencyLayer::transactional(store)
//!         .scope(|parts| Some(parts.headers.get("x-user")?.to_str().ok()?.to_owned().into())),
//! );
//! # drop(app); Ok(()) }
//! ```
//!
//! Per first request: a read (is there a record?), `BEGIN` with the transaction's limits, a
//! transaction-scoped advisory lock (`pg_try_advisory_xact_lock`, never waiting: a duplicate
//! gets 409 at once), a read of the record in a statement of its own (its snapshot must follow
//! the lock, or a commit released just before would go unseen and the handler run twice), the
//! handler's statements, the record's `INSERT ... ON CONFLICT DO UPDATE ... WHERE expired`, and
//! `COMMIT`: one commit. The `INSERT` decides: it sees committed rows whatever the snapshot, so of two
//! transactions for one key only one commits. A replay is the first read alone. Lock keys are
//! the first 8 bytes of the record id, in the single-`bigint` advisory lock space: an
//! application lock on the same number delays nothing but may answer a request 409.
//!
//! With an existing pool: [`PostgresStore::from_pool`], and [`PostgresStore::with_table`] or
//! the [builder](PostgresStore::builder) for another table (`"schema.table"` works too).
//! Behind PgBouncer in transaction mode:
//! [`PostgresStore::builder().transaction_pooling(true)`](PostgresStoreBuilder::transaction_pooling).
//!
//! # Schema
//!
//! One table, created by [`PostgresStore::migrate`]:
//!
//! | column | type | holds |
//! |---|---|---|
//! | `id` | `BYTEA PRIMARY KEY` | the 32-byte [`RecordId`](tower_idempotency::store::RecordId) (a hash: no key, no user id) |
//! | `fingerprint` | `BYTEA NOT NULL` | the 16-byte request fingerprint |
//! | `token` | `BIGINT NOT NULL` | the fencing token of the owner |
//! | `response` | `BYTEA` | the encoded response; `NULL` while in flight |
//! | `expires_at` | `TIMESTAMPTZ NOT NULL` | end of the lease (in flight) or of the TTL (completed) |
//!
//! plus an index on `expires_at` for the reaper. A record is live while
//! `expires_at > clock_timestamp()`.
//!
//! # Statements
//!
//! Every operation is **one statement** (one autocommit transaction, one round trip), so a
//! first request costs two (claim, then complete) and a replay, a 409 or a 422 costs one: the
//! claim itself returns what is stored, **without writing**: a live record is only read (no
//! new row version, no WAL flush, no row lock, so concurrent replays of one key do not queue
//! on it). Statements are prepared once per connection. `$ms` parameters are durations in
//! whole milliseconds.
//!
//! **claim**: reads the record; takes it over if it expired (lease or TTL), or inserts one if
//! there is none; always returns exactly one row.
//!
//! ```sql
//! WITH existing AS (
//!     SELECT fingerprint, response, expires_at > clock_timestamp() AS live FROM t WHERE id = $id),
//! taken AS (                      -- an expired record: re-checked after any lock wait
//!     UPDATE t SET fingerprint = $fingerprint, token = $new_token, response = NULL,
//!                  expires_at = clock_timestamp() + $lease_ms * interval '1 millisecond'
//!     WHERE id = $id AND expires_at <= clock_timestamp() RETURNING expires_at),
//! inserted AS (                   -- no record at all
//!     INSERT INTO t (id, fingerprint, token, response, expires_at)
//!     SELECT $id, $fingerprint, $new_token, NULL, clock_timestamp() + $lease_ms * interval '1 millisecond'
//!     WHERE NOT EXISTS (SELECT FROM existing)
//!     ON CONFLICT (id) DO NOTHING RETURNING expires_at),
//! ours AS (SELECT expires_at FROM taken UNION ALL SELECT expires_at FROM inserted)
//! SELECT EXISTS (SELECT FROM ours) AS wrote,
//!        EXISTS (SELECT FROM ours WHERE expires_at > clock_timestamp()) AS fresh,
//!        e.fingerprint, e.response, e.live
//! FROM (VALUES (1)) AS one (x) LEFT JOIN existing AS e ON true
//! ```
//!
//! `wrote` and `fresh` → [`Claim::Acquired`](tower_idempotency::store::Claim::Acquired);
//! otherwise a live record with a `NULL` response → `InFlight`, else `Completed`. Concurrent
//! claims of one id serialize on the unique index (or the expired row's lock), so exactly one
//! acquires. The loser of such a race reads nothing live in its snapshot yet wrote nothing,
//! and runs the statement again (a second round trip, only then). So does a claim that waited
//! for a lock longer than its lease (its record would be expired already).
//!
//! **complete**, **renew**, **release**: guarded by the fencing token; no row touched →
//! [`StoreErrorKind::LeaseLost`](tower_idempotency::store::StoreErrorKind::LeaseLost).
//!
//! ```sql
//! UPDATE t SET response = $response, expires_at = clock_timestamp() + $ttl_ms * interval '1 millisecond'
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > clock_timestamp();
//! UPDATE t SET expires_at = clock_timestamp() + $lease_ms * interval '1 millisecond'
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > clock_timestamp();
//! DELETE FROM t
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > clock_timestamp();
//! ```
//!
//! **check**: `SELECT 1`. **reaper**: see [`PostgresStore::delete_expired`]. **migrate**: see
//! [`PostgresStore::migrate`] (a catalog lookup, and DDL only for what is missing).
//!
//! # Clock, tokens, expiry
//!
//! - All time comes from the database's `clock_timestamp()`, the instant it is evaluated, so a
//!   lease or TTL runs from when its row is written, however long the statement waited for a
//!   lock first (`now()` would be the start of the transaction). The instances' clocks are
//!   never used, so skewed instances agree.
//! - Fencing tokens are random non-zero 64-bit values from the operating system's generator,
//!   drawn per claim: unique per id with overwhelming probability (a collision between two
//!   given acquisitions has probability 2⁻⁶⁴), not a sequence.
//! - Expired records stop counting at once (a claim takes them over), but their rows stay
//!   until deleted: run [`PostgresStore::spawn_reaper`] on at least one instance (several are
//!   fine: they skip each other's rows), or call
//!   [`delete_expired`](PostgresStore::delete_expired) from your own scheduler.
//!
//! # Session settings
//!
//! Pools the store creates open their connections with (as startup `options`, checked once
//! when the store connects):
//!
//! - `default_transaction_isolation = 'read committed'`: the statements rely on read
//!   committed's re-check of a row after a lock wait. Under `repeatable read` or
//!   `serializable` (a database or role default), a statement that meets a concurrent update
//!   fails with a serialization failure (40001); the store runs such statements, and
//!   deadlocks (40P01), again a few times, since the failed statement rolled back.
//! - `statement_timeout` (default four fifths of the operation timeout) and `lock_timeout`
//!   (default half of it), see the [builder](PostgresStoreBuilder::statement_timeout): the
//!   server cancels a statement the store has given up on, instead of letting it write later
//!   a claim nobody owns; `idle_in_transaction_session_timeout` as the statement timeout.
//!
//! [`PostgresStore::from_pool`] uses the pool as it is: see there for what to configure.
//!
//! # Connection poolers (PgBouncer)
//!
//! In session pooling mode the store works as with a direct connection, provided the pooler
//! passes the `options` startup parameter through. In **transaction pooling** mode
//! (`pool_mode = transaction`), consecutive transactions of one client connection run on
//! different server connections: neither session settings nor sqlx's prepared statements
//! survive from one to the next (with PgBouncer 1.18, as in Debian 12, named statements are
//! reported missing or duplicate, and unnamed ones can even bind to another client's
//! statement), and PgBouncer refuses the `extra_float_digits` and `options` startup
//! parameters sqlx and the store send. Use
//! [`PostgresStoreBuilder::transaction_pooling`]: every operation is then one simple-protocol
//! message carrying its own settings. Without it, the store refuses to start there, naming
//! that option (`Backend`).
//!
//! # Errors and availability
//!
//! Connection, I/O and TLS failures, pool timeouts, a closed pool, the SQLSTATEs of classes
//! 08 and 53, `57014` (statement timeout), `55P03` (lock timeout), `57P01`–`57P03`, `57P05`,
//! `25P03`, `25006` (a read-only standby) and `40001`/`40P01` (once retried) map to
//! [`StoreErrorKind::Unavailable`](tower_idempotency::store::StoreErrorKind::Unavailable);
//! undecodable rows to `Corrupt`; everything else, a missing table, column or database,
//! missing privileges, failed authentication, a pooler refusing the store's startup
//! parameters or prepared statements, to `Backend`. The sqlx error is kept as the
//! [`source`](std::error::Error::source).
//!
//! So that an outage answers quickly, pools the store creates wait at most
//! [`DEFAULT_ACQUIRE_TIMEOUT`] (3 s) for a connection, and every operation fails with
//! `Unavailable` after [`DEFAULT_OPERATION_TIMEOUT`] (5 s), which also covers a server or
//! network that stops answering without closing connections (see
//! [`PostgresStoreBuilder::operation_timeout`]).
//!
//! # Recovery
//!
//! A connection whose operation timed out or broke is closed, never returned to the pool
//! (sqlx 0.8 would ping it first, without a time limit, keeping its pool permit for as long
//! as the connection stays silent: after a few such operations every acquisition fails with
//! "pool timed out", long after the server is back). The ping sqlx sends when a healthy
//! connection goes back to the pool, and the ping before reuse, are bounded (a quarter of the
//! operation timeout, at most 1 s). After such a failure, pools the store creates discard the
//! idle connections opened before it rather than trying each. The store recovers from silent
//! connections within about twice the operation timeout (measured: 0.3 s with idle
//! connections, 1.0 s with every connection mid-statement, for a 1 s timeout), and from
//! terminated backends at once.
//!
//! A claim whose outcome is unknown (sent, then the connection broke or the operation timed
//! out: it may have been written) fails with `Unavailable`, so the layer executes nothing;
//! the store then deletes the claim it may have written, in the background, guarded by that
//! claim's own token (so it can delete nothing else): at once, and once more when the
//! statement can no longer be running. Otherwise the key would stay blocked for a whole
//! lease, by nobody.
//!
//! # Costs worth knowing
//!
//! - Round trips: one per statement, plus sqlx's own pings: one when a connection returns
//!   to the pool (after the operation has returned) and, with
//!   [`test_before_acquire`](PostgresStoreBuilder::test_before_acquire) (the default), one
//!   before an idle connection is handed out. Connecting costs one statement more, once per
//!   store: the check of the session settings.
//! - Completed and in-flight records are answered without a write; a first request writes
//!   twice (the claim's insert, the completion's update; not a HOT update, since it moves the
//!   indexed `expires_at`: a new index entry in both indexes).
//! - TLS: enable one of sqlx's TLS features (e.g. `sqlx = { version = "0.8", features =
//!   ["tls-rustls"] }` in your own manifest); this crate enables none.
//!
//! [`IdempotencyStore`]: tower_idempotency::store::IdempotencyStore

mod conn;
mod error;
mod reaper;
mod session;
mod sql;
mod store;
mod transactional;

pub use self::{
    reaper::ReaperHandle,
    store::{
        DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, PostgresStore, PostgresStoreBuilder,
    },
    transactional::{PostgresTransaction, PostgresTransactionalStore},
};
/// The sqlx version this crate is built on, for [`PostgresStore::from_pool`] and
/// [`PostgresStoreBuilder::connect_with`].
pub use sqlx;
