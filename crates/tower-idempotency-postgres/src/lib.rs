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
//! With an existing pool: [`PostgresStore::from_pool`], and [`PostgresStore::with_table`] or
//! the [builder](PostgresStore::builder) for another table (`"schema.table"` works too).
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
//! `expires_at > now()`.
//!
//! # Statements
//!
//! Every operation is **one statement** (one autocommit transaction), so a first request
//! costs two (claim, then complete) and a replay, a 409 or a 422 costs one: the claim itself
//! returns what is stored. Statements are prepared once per connection. `$ms` parameters are
//! durations in whole milliseconds.
//!
//! **claim**: inserts an in-flight record, or takes over the existing one if it expired
//! (lease or TTL), or leaves it as it is; always returns exactly one row.
//!
//! ```sql
//! INSERT INTO t AS t (id, fingerprint, token, response, expires_at)
//! VALUES ($id, $fingerprint, $new_token, NULL, now() + $lease_ms * interval '1 millisecond')
//! ON CONFLICT (id) DO UPDATE SET
//!     fingerprint = CASE WHEN t.expires_at <= now() THEN EXCLUDED.fingerprint ELSE t.fingerprint END,
//!     token       = CASE WHEN t.expires_at <= now() THEN EXCLUDED.token       ELSE t.token       END,
//!     response    = CASE WHEN t.expires_at <= now() THEN NULL                 ELSE t.response    END,
//!     expires_at  = CASE WHEN t.expires_at <= now() THEN EXCLUDED.expires_at  ELSE t.expires_at  END
//! RETURNING t.token = $new_token AS acquired, t.fingerprint, t.response
//! ```
//!
//! `acquired` → [`Claim::Acquired`](tower_idempotency::store::Claim::Acquired); otherwise a
//! `NULL` response → `InFlight`, else `Completed`. Concurrent claims of one id serialize on
//! the row (or the unique index), so exactly one acquires.
//!
//! **complete**, **renew**, **release**: guarded by the fencing token; no row touched →
//! [`StoreErrorKind::LeaseLost`](tower_idempotency::store::StoreErrorKind::LeaseLost).
//!
//! ```sql
//! UPDATE t SET response = $response, expires_at = now() + $ttl_ms * interval '1 millisecond'
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > now();
//! UPDATE t SET expires_at = now() + $lease_ms * interval '1 millisecond'
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > now();
//! DELETE FROM t
//!     WHERE id = $id AND token = $token AND response IS NULL AND expires_at > now();
//! ```
//!
//! **check**: `SELECT 1`. **reaper**: see [`PostgresStore::delete_expired`].
//!
//! # Clock, tokens, expiry
//!
//! - All time comes from the database (`now()`, the start of the statement's transaction);
//!   the instances' clocks are never used, so skewed instances agree.
//! - Fencing tokens are random non-zero 64-bit values from the operating system's generator,
//!   drawn per claim: unique per id with overwhelming probability (a collision between two
//!   given acquisitions has probability 2⁻⁶⁴), not a sequence.
//! - Expired records stop counting at once (a claim takes them over), but their rows stay
//!   until deleted: run [`PostgresStore::spawn_reaper`] on at least one instance (several are
//!   fine: they skip each other's rows), or call
//!   [`delete_expired`](PostgresStore::delete_expired) from your own scheduler.
//!
//! # Errors and availability
//!
//! Connection, I/O and TLS failures, pool timeouts, a closed pool, and the SQLSTATEs of
//! class 08, `53300`, `57014` (statement timeout), `57P01`–`57P03` and `25006` (a read-only
//! standby) map to
//! [`StoreErrorKind::Unavailable`](tower_idempotency::store::StoreErrorKind::Unavailable);
//! undecodable rows to `Corrupt`; everything else to `Backend`. The sqlx error is kept as the
//! [`source`](std::error::Error::source).
//!
//! So that an outage answers quickly, pools the store creates wait at most
//! [`DEFAULT_ACQUIRE_TIMEOUT`] (3 s) for a connection, and every operation fails with
//! `Unavailable` after [`DEFAULT_OPERATION_TIMEOUT`] (5 s), which also covers a server or
//! network that stops answering without closing connections (see
//! [`PostgresStoreBuilder::operation_timeout`]).
//!
//! # Costs worth knowing
//!
//! - A claim that finds a live record still updates the row to its own values (that is
//!   what makes `ON CONFLICT ... RETURNING` return it): each replay, 409 or 422 writes a new
//!   row version. It changes no indexed column, so PostgreSQL can make it a HOT update, and
//!   an unchanged, TOASTed response is not copied. Autovacuum handles the dead versions;
//!   tune it for this table if the replay rate is high.
//! - Round trips: one per statement, plus sqlx's own pings: one when a connection returns
//!   to the pool (after the operation has returned) and, with
//!   [`test_before_acquire`](PostgresStoreBuilder::test_before_acquire) (the default), one
//!   before an idle connection is handed out.
//! - TLS: enable one of sqlx's TLS features (e.g. `sqlx = { version = "0.8", features =
//!   ["tls-rustls"] }` in your own manifest); this crate enables none.
//!
//! [`IdempotencyStore`]: tower_idempotency::store::IdempotencyStore

mod error;
mod reaper;
mod sql;
mod store;

pub use self::{
    reaper::ReaperHandle,
    store::{
        DEFAULT_ACQUIRE_TIMEOUT, DEFAULT_OPERATION_TIMEOUT, PostgresStore, PostgresStoreBuilder,
    },
};
/// The sqlx version this crate is built on, for [`PostgresStore::from_pool`] and
/// [`PostgresStoreBuilder::connect_with`].
pub use sqlx;
