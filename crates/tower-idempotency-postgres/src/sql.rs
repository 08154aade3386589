//! The table name and the SQL text of every statement, rendered once per store.

use tower_idempotency::store::{StoreError, StoreErrorKind};

/// The default table name.
pub(crate) const DEFAULT_TABLE: &str = "idempotency_records";

/// Suffix of the index on `expires_at`; the table name is limited so the index name fits in
/// PostgreSQL's 63-byte identifiers (a truncated name could collide with another table's).
const INDEX_SUFFIX: &str = "_expires_idx";
const MAX_IDENT: usize = 63;

/// Longest duration passed to the database, in milliseconds: 100 years. Longer leases and
/// TTLs are clamped so `now() + interval` never leaves PostgreSQL's timestamp range.
pub(crate) const MAX_MILLIS: i64 = 100 * 366 * 24 * 60 * 60 * 1000;

/// A validated, possibly schema-qualified table name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TableName {
    schema: Option<String>,
    table: String,
    /// The name as given.
    name: String,
}

impl TableName {
    pub(crate) fn parse(name: &str) -> Result<Self, StoreError> {
        let invalid = |why: &str| {
            StoreError::new(
                StoreErrorKind::Backend,
                format!("invalid idempotency table name {name:?}: {why}"),
            )
        };
        let (schema, table) = match name.split_once('.') {
            Some((schema, table)) => (Some(schema), table),
            None => (None, name),
        };
        for part in schema.iter().chain([&table]) {
            let mut chars = part.chars();
            let starts_well = chars
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
            if !starts_well || !chars.all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(invalid(
                    "expected `table` or `schema.table`, each part made of ASCII letters, digits \
                     and `_`, not starting with a digit",
                ));
            }
        }
        if schema.is_some_and(|s| s.len() > MAX_IDENT) {
            return Err(invalid("the schema name is longer than 63 bytes"));
        }
        if table.len() + INDEX_SUFFIX.len() > MAX_IDENT {
            return Err(invalid("the table name is longer than 51 bytes"));
        }
        Ok(Self {
            schema: schema.map(str::to_owned),
            table: table.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `"schema"."table"` or `"table"`: quoted, so case is kept.
    fn quoted(&self) -> String {
        match &self.schema {
            Some(schema) => format!("\"{schema}\".\"{}\"", self.table),
            None => format!("\"{}\"", self.table),
        }
    }

    /// The name as given (unquoted).
    pub(crate) fn as_str(&self) -> &str {
        &self.name
    }
}

/// The SQL text of every statement the store runs against one table.
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) table: TableName,
    /// `$1` id, `$2` fingerprint, `$3` new token, `$4` lease (ms). One row:
    /// `acquired`, `fingerprint`, `response`.
    pub(crate) claim: String,
    /// `$1` id, `$2` token, `$3` response, `$4` TTL (ms).
    pub(crate) complete: String,
    /// `$1` id, `$2` token, `$3` lease (ms).
    pub(crate) renew: String,
    /// `$1` id, `$2` token.
    pub(crate) release: String,
    /// `$1` batch size.
    pub(crate) delete_expired: String,
    pub(crate) create_table: String,
    pub(crate) create_index: String,
}

impl Statements {
    pub(crate) fn new(table: TableName) -> Self {
        let t = table.quoted();
        let index = format!("\"{}{INDEX_SUFFIX}\"", table.table);
        // A record is live while `expires_at > now()`. `now()` is the start of the statement's
        // (implicit) transaction: one database-clock instant for the whole statement.
        let take_over = "t.expires_at <= now()";
        Self {
            claim: format!(
                "INSERT INTO {t} AS t (id, fingerprint, token, response, expires_at) \
                 VALUES ($1, $2, $3, NULL, now() + $4 * interval '1 millisecond') \
                 ON CONFLICT (id) DO UPDATE SET \
                 fingerprint = CASE WHEN {take_over} THEN EXCLUDED.fingerprint ELSE t.fingerprint END, \
                 token = CASE WHEN {take_over} THEN EXCLUDED.token ELSE t.token END, \
                 response = CASE WHEN {take_over} THEN NULL ELSE t.response END, \
                 expires_at = CASE WHEN {take_over} THEN EXCLUDED.expires_at ELSE t.expires_at END \
                 RETURNING t.token = $3 AS acquired, t.fingerprint, t.response"
            ),
            complete: format!(
                "UPDATE {t} SET response = $3, expires_at = now() + $4 * interval '1 millisecond' \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > now()"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = now() + $3 * interval '1 millisecond' \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > now()"
            ),
            release: format!(
                "DELETE FROM {t} \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > now()"
            ),
            delete_expired: format!(
                "DELETE FROM {t} WHERE id IN (\
                 SELECT id FROM {t} WHERE expires_at <= now() \
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED\
                 ) AND expires_at <= now()"
            ),
            create_table: format!(
                "CREATE TABLE IF NOT EXISTS {t} (\
                 id BYTEA PRIMARY KEY, \
                 fingerprint BYTEA NOT NULL, \
                 token BIGINT NOT NULL, \
                 response BYTEA, \
                 expires_at TIMESTAMPTZ NOT NULL)"
            ),
            create_index: format!("CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at)"),
            table,
        }
    }

    /// The key of the advisory lock that serializes migrations of this table (FNV-1a).
    pub(crate) fn migration_lock_key(&self) -> i64 {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in b"tower-idempotency-postgres migrate "
            .iter()
            .chain(self.table.as_str().as_bytes())
        {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        hash.cast_signed()
    }
}

/// A duration in whole milliseconds, clamped to [`MAX_MILLIS`].
pub(crate) fn millis(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_millis()).map_or(MAX_MILLIS, |ms| ms.min(MAX_MILLIS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names() {
        let ok = |n: &str| TableName::parse(n).unwrap().quoted();
        assert_eq!(ok("idempotency_records"), "\"idempotency_records\"");
        assert_eq!(ok("app.Records_2"), "\"app\".\"Records_2\"");
        assert_eq!(ok("_x"), "\"_x\"");
        for bad in [
            "",
            ".t",
            "s.",
            "a.b.c",
            "1abc",
            "t; DROP TABLE x",
            "t\"",
            "tä",
            &"x".repeat(52),
        ] {
            assert!(TableName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(TableName::parse(&"x".repeat(51)).is_ok());
        assert!(TableName::parse(&format!("{}.t", "s".repeat(63))).is_ok());
        assert!(TableName::parse(&format!("{}.t", "s".repeat(64))).is_err());
    }

    #[test]
    fn millis_are_clamped() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(999)), 0);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }
}
