//! The session settings every statement of the store runs under: server-side limits and the
//! isolation level, set at connection start (direct connections, session pooling) or per
//! transaction (transaction pooling).

use std::{fmt::Write, time::Duration};

use sqlx::{Row, postgres::PgRow};
use tower_idempotency::store::{StoreError, StoreErrorKind};

/// The isolation level the store's statements are written for.
const ISOLATION: &str = "read committed";

/// Server-side limits of the store's statements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// `statement_timeout` (and `idle_in_transaction_session_timeout`): the server cancels a
    /// statement that runs longer, so one the client gave up on does not go on to write.
    pub(crate) statement_timeout: Option<Duration>,
    /// `lock_timeout`: the server gives up waiting for a lock after this long.
    pub(crate) lock_timeout: Option<Duration>,
}

/// A duration as a PostgreSQL `int` milliseconds setting: at least 1 (0 would mean "no
/// limit"), at most `i32::MAX`.
pub(crate) fn setting_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, i32::MAX as u64)
}

impl Limits {
    /// Startup `options` for connections the store opens itself: `-c name=value` each.
    pub(crate) fn startup_options(&self) -> Vec<(&'static str, String)> {
        // A backslash escapes the space inside an `options` value.
        let mut options = vec![(
            "default_transaction_isolation",
            ISOLATION.replace(' ', "\\ "),
        )];
        if let Some(t) = self.statement_timeout {
            options.push(("statement_timeout", setting_ms(t).to_string()));
            options.push((
                "idle_in_transaction_session_timeout",
                setting_ms(t).to_string(),
            ));
        }
        if let Some(t) = self.lock_timeout {
            options.push(("lock_timeout", setting_ms(t).to_string()));
        }
        options
    }

    /// The statements that open every simple-protocol message under transaction pooling:
    /// they apply to the message's implicit transaction only, so nothing leaks to the
    /// pooler's other clients. `bytea_output` is pinned because text results are decoded.
    pub(crate) fn transaction_prefix(&self) -> String {
        let mut prefix = String::from("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ");
        if let Some(t) = self.statement_timeout {
            let _ = write!(prefix, "SET LOCAL statement_timeout = {}; ", setting_ms(t));
        }
        if let Some(t) = self.lock_timeout {
            let _ = write!(prefix, "SET LOCAL lock_timeout = {}; ", setting_ms(t));
        }
        prefix.push_str("SET LOCAL bytea_output = hex; ");
        prefix
    }

    /// What the session settings are, to compare with [`check`](Self::check).
    pub(crate) const QUERY: &'static str = "SELECT current_setting('default_transaction_isolation'), \
         (SELECT setting FROM pg_settings WHERE name = 'statement_timeout'), \
         (SELECT setting FROM pg_settings WHERE name = 'lock_timeout')";

    /// Fails (`Backend`) unless the settings the store asked for at connection start are
    /// in effect: a pooler that drops the `options` startup parameter would otherwise leave
    /// the store without its limits, silently.
    pub(crate) fn check_row(&self, row: &PgRow) -> Result<(), StoreError> {
        let get = |i| row.try_get::<String, _>(i).unwrap_or_default();
        self.check(&get(0), &get(1), &get(2))
    }

    fn check(&self, isolation: &str, statement: &str, lock: &str) -> Result<(), StoreError> {
        let mut wrong = Vec::new();
        if isolation != ISOLATION {
            wrong.push(format!(
                "default_transaction_isolation = {isolation:?}, not {ISOLATION:?}"
            ));
        }
        for (name, want, found) in [
            ("statement_timeout", self.statement_timeout, statement),
            ("lock_timeout", self.lock_timeout, lock),
        ] {
            if let Some(want) = want
                && found != setting_ms(want).to_string().as_str()
            {
                wrong.push(format!("{name} = {found} ms, not {} ms", setting_ms(want)));
            }
        }
        if wrong.is_empty() {
            return Ok(());
        }
        Err(StoreError::new(
            StoreErrorKind::Backend,
            format!(
                "the session settings the idempotency store sets when it connects are not in \
                 effect ({}): something between the store and PostgreSQL dropped the `options` \
                 startup parameter, e.g. PgBouncer with `options` in ignore_startup_parameters. \
                 Behind PgBouncer use `PostgresStoreBuilder::transaction_pooling(true)`, which \
                 sets them in every transaction instead",
                wrong.join(", ")
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_render() {
        let limits = Limits {
            statement_timeout: Some(Duration::from_millis(4000)),
            lock_timeout: Some(Duration::from_micros(10)),
        };
        assert_eq!(
            limits.startup_options(),
            [
                (
                    "default_transaction_isolation",
                    "read\\ committed".to_owned()
                ),
                ("statement_timeout", "4000".to_owned()),
                ("idle_in_transaction_session_timeout", "4000".to_owned()),
                ("lock_timeout", "1".to_owned()),
            ]
        );
        assert_eq!(
            limits.transaction_prefix(),
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET LOCAL statement_timeout = 4000; \
             SET LOCAL lock_timeout = 1; SET LOCAL bytea_output = hex; "
        );
        let none = Limits {
            statement_timeout: None,
            lock_timeout: None,
        };
        assert_eq!(none.startup_options().len(), 1);

        assert!(limits.check("read committed", "4000", "1").is_ok());
        assert!(none.check("read committed", "0", "0").is_ok());
        // A pooler dropped the startup options: the server's defaults are in effect.
        let error = limits.check("serializable", "0", "0").unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend);
        let message = error.to_string();
        assert!(
            message.contains("statement_timeout = 0 ms, not 4000 ms")
                && message.contains("transaction_pooling(true)"),
            "{message}"
        );
        assert_eq!(setting_ms(Duration::MAX), i32::MAX as u64);
    }
}
