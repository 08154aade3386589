//! Mapping of sqlx errors onto [`StoreError`].

use tower_idempotency::store::{StoreError, StoreErrorKind};

/// SQLSTATEs that mean "the database cannot serve us right now" rather than "this statement
/// is wrong": the layer should answer 503 (or fail open), and a retry may succeed.
fn is_unavailable_sqlstate(code: &str) -> bool {
    // Class 08: connection exceptions. Class 53: insufficient resources (too many
    // connections, out of memory, disk full).
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            // query_canceled: statement_timeout, pg_cancel_backend: did not answer in time
            "57014"
            // admin_shutdown (pg_terminate_backend, shutdown), crash_shutdown, cannot_connect_now
            // (starting up, recovering), idle_session_timeout
            | "57P01" | "57P02" | "57P03" | "57P05"
            // lock_not_available: lock_timeout
            | "55P03"
            // serialization_failure, deadlock_detected: only once our retries are spent
            | "40001" | "40P01"
            // idle_in_transaction_session_timeout
            | "25P03"
            // read_only_sql_transaction: we reached a standby, e.g. during a failover
            | "25006"
        )
}

fn sqlstate(error: &sqlx::Error) -> Option<std::borrow::Cow<'_, str>> {
    match error {
        sqlx::Error::Database(db) => db.code(),
        _ => None,
    }
}

/// A refusal of the connection or of its prepared statements by a connection pooler:
/// misconfiguration, never transient. Returns the hint to give.
fn pooler_hint(error: &sqlx::Error) -> Option<&'static str> {
    let sqlx::Error::Database(db) = error else {
        return None;
    };
    let message = db.message();
    match db.code().as_deref() {
        Some("08P01") if message.starts_with("unsupported startup parameter") => Some(
            "a connection pooler (PgBouncer?) refused a startup parameter. Behind PgBouncer in \
             transaction mode, use `PostgresStoreBuilder::transaction_pooling(true)`, which \
             sends neither `extra_float_digits` nor `options` and sets the store's limits per \
             transaction; do not add `options` to PgBouncer's ignore_startup_parameters (they \
             would be dropped, not applied). Remove `options` from the URL in that mode",
        ),
        Some("08P01")
            if message.starts_with("no such database") || message.starts_with("no such user") =>
        {
            Some("the connection pooler does not know this database or user")
        }
        // invalid_sql_statement_name, duplicate_prepared_statement
        Some("26000" | "42P05") if message.contains("prepared statement") => Some(
            "a prepared statement did not survive between two transactions: a connection \
             pooler in transaction mode (PgBouncer before 1.21, or without \
             max_prepared_statements)? Use `PostgresStoreBuilder::transaction_pooling(true)`",
        ),
        _ => None,
    }
}

/// The kind of store error a sqlx error is.
pub(crate) fn kind_of(error: &sqlx::Error) -> StoreErrorKind {
    if pooler_hint(error).is_some() {
        return StoreErrorKind::Backend;
    }
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StoreErrorKind::Unavailable,
        sqlx::Error::Database(db) if db.code().is_some_and(|c| is_unavailable_sqlstate(&c)) => {
            StoreErrorKind::Unavailable
        }
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Backend,
    }
}

/// A statement that failed this way rolled back and may simply be run again.
pub(crate) fn is_retryable(error: &sqlx::Error) -> bool {
    sqlstate(error).is_some_and(|c| c == "40001" || c == "40P01")
}

/// The connection is gone or in an unknown state: it must be closed, not reused, and a
/// statement sent on it may or may not have been applied.
pub(crate) fn breaks_connection(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            c.starts_with("08") || matches!(&*c, "57P01" | "57P02" | "57P05" | "25P03")
        }),
        _ => false,
    }
}

/// Maps a sqlx error, keeping it as the source; `doing` says what failed.
pub(crate) fn map(doing: &'static str, error: sqlx::Error) -> StoreError {
    let kind = kind_of(&error);
    let mut message = match kind {
        StoreErrorKind::Unavailable => {
            format!("the idempotency store (PostgreSQL) is unavailable while {doing}")
        }
        StoreErrorKind::Corrupt => format!("a stored idempotency record is corrupt ({doing})"),
        _ => format!("PostgreSQL failed while {doing}"),
    };
    if let Some(hint) = pooler_hint(&error) {
        message.push_str(": ");
        message.push_str(hint);
    }
    StoreError::new(kind, message).with_source(error)
}

pub(crate) fn corrupt(what: &str) -> StoreError {
    StoreError::new(
        StoreErrorKind::Corrupt,
        format!("a stored idempotency record is corrupt: {what}"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_failures_are_unavailable() {
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset));
        assert_eq!(kind_of(&io), StoreErrorKind::Unavailable);
        assert_eq!(
            kind_of(&sqlx::Error::PoolTimedOut),
            StoreErrorKind::Unavailable
        );
        assert_eq!(
            kind_of(&sqlx::Error::PoolClosed),
            StoreErrorKind::Unavailable
        );
        assert_eq!(kind_of(&sqlx::Error::RowNotFound), StoreErrorKind::Backend);
        assert_eq!(
            kind_of(&sqlx::Error::Protocol("x".into())),
            StoreErrorKind::Backend
        );
        for code in [
            "08006", "08001", "53300", "57P01", "57014", "25006", "55P03", "40001", "40P01",
        ] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        // Misconfiguration: missing table or column, no permission, unknown database,
        // failed authentication; and statements that are wrong.
        for code in [
            "42P01", "42703", "42501", "3D000", "28P01", "23505", "22001",
        ] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        let err = map("claiming", sqlx::Error::PoolTimedOut);
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        assert!(std::error::Error::source(&err).is_some());
    }
}
