//! Mapping of sqlx's SQLite errors onto [`StoreError`].

use tower_idempotency::store::{StoreError, StoreErrorKind};

/// SQLite's primary result codes that mean "not now" rather than "wrong": another
/// connection holds the write lock past `busy_timeout` (BUSY, LOCKED), the disk is full or
/// failing (FULL, IOERR), the file cannot be opened (CANTOPEN). A retry may succeed.
fn is_transient(primary: i64) -> bool {
    const BUSY: i64 = 5;
    const LOCKED: i64 = 6;
    const IOERR: i64 = 10;
    const FULL: i64 = 13;
    const CANTOPEN: i64 = 14;
    const PROTOCOL: i64 = 15;
    matches!(primary, BUSY | LOCKED | IOERR | FULL | CANTOPEN | PROTOCOL)
}

/// The primary result code of a SQLite error (sqlx reports the extended code, whose low
/// byte is the primary one).
pub(crate) fn primary_code(error: &sqlx::Error) -> Option<i64> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    db.code()?.parse::<i64>().ok().map(|code| code & 0xff)
}

/// Maps `error`, raised while doing `what`, onto the store's error kinds.
pub(crate) fn map(what: &str, error: sqlx::Error) -> StoreError {
    let kind = match &error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::WorkerCrashed => StoreErrorKind::Unavailable,
        sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => StoreErrorKind::Corrupt,
        _ if primary_code(&error).is_some_and(is_transient) => StoreErrorKind::Unavailable,
        _ => StoreErrorKind::Backend,
    };
    StoreError::new(
        kind,
        format!("SQLite idempotency store: {what} failed: {error}"),
    )
    .with_source(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_exhaustion_is_unavailable() {
        assert_eq!(
            map("claim", sqlx::Error::PoolTimedOut).kind(),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            map("claim", sqlx::Error::RowNotFound).kind(),
            StoreErrorKind::Backend
        );
    }
}
