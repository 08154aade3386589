//! The table both stores share, and the SQL that reads the clock.

use sqlx::SqlitePool;
use tower_idempotency::store::StoreError;

use crate::error;

/// The default table name.
pub(crate) const DEFAULT_TABLE: &str = "idempotency_records";

/// SQLite's clock in whole milliseconds since the Unix epoch (`julianday` works on every
/// SQLite version; `unixepoch('subsec')` needs 3.42).
pub(crate) const NOW_MS: &str = "CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

/// Longest duration written, in milliseconds (100 years): `now + ms` never overflows.
pub(crate) const MAX_MILLIS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;

/// A duration as the milliseconds the SQL adds to [`NOW_MS`], rounded up and clamped.
pub(crate) fn millis(duration: std::time::Duration) -> i64 {
    let ms = duration.as_micros().div_ceil(1000);
    i64::try_from(ms).unwrap_or(i64::MAX).min(MAX_MILLIS)
}

/// A validated table name: ASCII letters, digits and `_`, not starting with a digit.
pub(crate) fn validate_table(name: &str) -> Result<(), StoreError> {
    let mut chars = name.chars();
    let starts_well = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    if starts_well && chars.all(|c| c.is_ascii_alphanumeric() || c == '_') && name.len() <= 64 {
        Ok(())
    } else {
        Err(StoreError::new(
            tower_idempotency::store::StoreErrorKind::Backend,
            format!(
                "invalid idempotency table name {name:?}: expected ASCII letters, digits and `_`, \
                 not starting with a digit, at most 64 bytes"
            ),
        ))
    }
}

/// Creates `table` and its expiry index if missing. Columns: `id` (the 32-byte record id),
/// `fingerprint`, `token` (the fencing token; 0 for records committed by transactional
/// mode), `response` (`NULL` while in flight), `expires_at` (ms since the epoch, by
/// SQLite's clock). A record is live while `expires_at > now`.
pub(crate) async fn migrate(pool: &SqlitePool, table: &str) -> Result<(), StoreError> {
    let sql = format!(
        "CREATE TABLE IF NOT EXISTS \"{table}\" (\
             id BLOB PRIMARY KEY NOT NULL, \
             fingerprint BLOB NOT NULL, \
             token INTEGER NOT NULL, \
             response BLOB, \
             expires_at INTEGER NOT NULL\
         ) WITHOUT ROWID; \
         CREATE INDEX IF NOT EXISTS \"{table}_expires_idx\" ON \"{table}\" (expires_at);"
    );
    sqlx::raw_sql(&sql)
        .execute(pool)
        .await
        .map(drop)
        .map_err(|e| error::map("migrate", e))
}

/// Deletes up to `batch` expired records of `table`; returns how many.
pub(crate) async fn delete_expired(
    pool: &SqlitePool,
    table: &str,
    batch: u32,
) -> Result<u64, StoreError> {
    let sql = format!(
        "DELETE FROM \"{table}\" WHERE id IN \
         (SELECT id FROM \"{table}\" WHERE expires_at <= {NOW_MS} LIMIT ?)"
    );
    sqlx::query(&sql)
        .bind(i64::from(batch))
        .execute(pool)
        .await
        .map(|done| done.rows_affected())
        .map_err(|e| error::map("delete_expired", e))
}
