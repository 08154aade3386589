//! Which database errors are contention or an outage (503 `database-unavailable`, retry
//! later) rather than a bug (500).

/// Whether `error` means "the database cannot serve this now, the same request may succeed
/// later" (503 + Retry-After) rather than a bug (500).
pub fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        // Pool exhausted or the server unreachable.
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(db) => {
            let Some(code) = db.code() else {
                return false;
            };
            if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                code.parse().is_ok_and(transient_sqlite)
            } else {
                transient_sqlstate(&code)
            }
        }
        _ => false,
    }
}

/// SQLITE_BUSY (another connection held the lock past busy_timeout) and SQLITE_LOCKED;
/// extended codes carry the primary one in their low byte.
fn transient_sqlite(code: i32) -> bool {
    matches!(code & 0xff, 5 | 6)
}

/// PostgreSQL SQLSTATEs that mean contention or an unavailable server.
fn transient_sqlstate(code: &str) -> bool {
    matches!(
        code,
        // serialization_failure, deadlock_detected
        "40001" | "40P01"
        // query_canceled (statement_timeout), lock_not_available (lock_timeout, NOWAIT)
        | "57014" | "55P03"
        // admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections
        | "57P01" | "57P02" | "57P03" | "53300"
    ) || code.starts_with("08") // connection_exception and its subclasses
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contention_is_transient() {
        for code in [5, 517, 6, 262] {
            assert!(transient_sqlite(code), "{code}");
        }
        for code in [1, 19, 2067, 11] {
            assert!(!transient_sqlite(code), "{code}");
        }
        for code in ["40001", "40P01", "57014", "55P03", "08006", "57P01"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "22P02", "00000"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!is_transient(&sqlx::Error::RowNotFound));
    }
}
