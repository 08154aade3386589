//! Mapping of sqlx errors onto [`StoreError`].

use tower_idempotency::store::{StoreError, StoreErrorKind};

/// SQLSTATEs that mean "the database cannot serve us right now" rather than "this statement
/// is wrong": the layer should answer 503 (or fail open), and a retry may succeed.
fn is_unavailable_sqlstate(code: &str) -> bool {
    // Class 08: connection exceptions.
    code.starts_with("08")
        || matches!(
            code,
            // too_many_connections
            "53300"
            // query_canceled (statement_timeout, pg_cancel_backend): did not answer in time
            | "57014"
            // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, recovering)
            | "57P01" | "57P02" | "57P03"
            // read_only_sql_transaction: we reached a standby, e.g. during a failover
            | "25006"
        )
}

/// The kind of store error a sqlx error is.
pub(crate) fn kind_of(error: &sqlx::Error) -> StoreErrorKind {
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

/// Maps a sqlx error, keeping it as the source; `doing` says what failed.
pub(crate) fn map(doing: &'static str, error: sqlx::Error) -> StoreError {
    let kind = kind_of(&error);
    let message = match kind {
        StoreErrorKind::Unavailable => {
            format!("the idempotency store (PostgreSQL) is unavailable while {doing}")
        }
        StoreErrorKind::Corrupt => format!("a stored idempotency record is corrupt ({doing})"),
        _ => format!("PostgreSQL failed while {doing}"),
    };
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
        for code in ["08006", "08001", "53300", "57P01", "57014", "25006"] {
            assert!(is_unavailable_sqlstate(code), "{code}");
        }
        for code in ["42P01", "23505", "40001", "22001"] {
            assert!(!is_unavailable_sqlstate(code), "{code}");
        }
        let err = map("claiming", sqlx::Error::PoolTimedOut);
        assert_eq!(err.kind(), StoreErrorKind::Unavailable);
        assert!(std::error::Error::source(&err).is_some());
    }
}
