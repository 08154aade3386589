//! The table name and the SQL text of every statement, rendered once per store.

use tower_idempotency::store::{StoreError, StoreErrorKind};

/// The default table name.
pub(crate) const DEFAULT_TABLE: &str = "idempotency_records";

/// Suffix of the index on `expires_at`; the table name is limited so the index name fits in
/// PostgreSQL's 63-byte identifiers (a truncated name could collide with another table's).
const INDEX_SUFFIX: &str = "_expires_idx";
const MAX_IDENT: usize = 63;

/// Longest duration passed to the database, in milliseconds: 100 years. Longer leases and
/// TTLs are clamped so `clock_timestamp() + interval` never leaves PostgreSQL's timestamp
/// range.
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
    pub(crate) fn quoted(&self) -> String {
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

/// A parameter of a statement: what `$n` stands for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(i64),
}

/// The SQL text of every statement the store runs against one table.
///
/// Time is always the database's `clock_timestamp()`, the instant the expression is
/// evaluated: a lease or TTL starts when its row is written, and "is it live" is asked at
/// the moment the row is looked at, however long the statement waited for a lock first.
/// (`now()` is the start of the transaction: a claim that waited would write a lease that
/// began before its row existed.)
#[derive(Debug)]
pub(crate) struct Statements {
    pub(crate) table: TableName,
    /// `$1` id, `$2` fingerprint, `$3` new token, `$4` lease (ms). One row: `wrote` (this
    /// statement wrote the claim), `fresh` (and its lease still runs), then the record that
    /// was there before: `fingerprint`, `response`, `live` (all `NULL` if there was none).
    pub(crate) claim: String,
    /// `$1` id, `$2` token, `$3` response, `$4` TTL (ms).
    pub(crate) complete: String,
    /// `$1` id, `$2` token, `$3` lease (ms).
    pub(crate) renew: String,
    /// `$1` id, `$2` token.
    pub(crate) release: String,
    /// `$1` batch size.
    pub(crate) delete_expired: String,
    /// No parameters. One row: `has_table`, `index_valid` (`NULL`: no index).
    pub(crate) catalog: String,
    /// No parameters; several statements, one implicit transaction. Creates what is missing,
    /// serialized with other instances by an advisory lock.
    pub(crate) migrate: String,
}

impl Statements {
    pub(crate) fn new(table: TableName) -> Self {
        let t = table.quoted();
        let index_name = format!("{}{INDEX_SUFFIX}", table.table);
        let index = format!("\"{index_name}\"");
        let lease = "clock_timestamp() + $4 * interval '1 millisecond'";
        // The index of this table named `index_name`, if any (names are validated: no quotes).
        let index_of = |relation: &str| {
            format!(
                "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid \
                 WHERE i.indrelid = {relation} AND c.relname = '{index_name}'"
            )
        };
        Self {
            // A live record is only read: no row version, no row lock, no WAL. An expired one
            // is taken over by an UPDATE that re-checks expiry after any lock wait; a missing
            // one is inserted. `existing` is read from the statement's snapshot, so a record
            // another claim wrote after it, or a take-over that lost a race, shows as "not
            // written, nothing live": the caller runs the statement again (a new snapshot).
            claim: format!(
                "WITH existing AS (\
                 SELECT fingerprint, response, expires_at > clock_timestamp() AS live \
                 FROM {t} WHERE id = $1), \
                 taken AS (\
                 UPDATE {t} SET fingerprint = $2, token = $3, response = NULL, expires_at = {lease} \
                 WHERE id = $1 AND expires_at <= clock_timestamp() \
                 RETURNING expires_at), \
                 inserted AS (\
                 INSERT INTO {t} (id, fingerprint, token, response, expires_at) \
                 SELECT $1, $2, $3, NULL::bytea, {lease} \
                 WHERE NOT EXISTS (SELECT FROM existing) \
                 ON CONFLICT (id) DO NOTHING \
                 RETURNING expires_at), \
                 ours AS (SELECT expires_at FROM taken UNION ALL SELECT expires_at FROM inserted) \
                 SELECT EXISTS (SELECT FROM ours) AS wrote, \
                 EXISTS (SELECT FROM ours WHERE expires_at > clock_timestamp()) AS fresh, \
                 e.fingerprint, e.response, e.live \
                 FROM (VALUES (1)) AS one (x) LEFT JOIN existing AS e ON true"
            ),
            complete: format!(
                "UPDATE {t} SET response = $3, expires_at = clock_timestamp() + $4 * interval '1 millisecond' \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > clock_timestamp()"
            ),
            renew: format!(
                "UPDATE {t} SET expires_at = clock_timestamp() + $3 * interval '1 millisecond' \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > clock_timestamp()"
            ),
            release: format!(
                "DELETE FROM {t} \
                 WHERE id = $1 AND token = $2 AND response IS NULL AND expires_at > clock_timestamp()"
            ),
            // `(SELECT clock_timestamp())` is evaluated once, so the index on `expires_at`
            // bounds the scan; each row is checked again as it is deleted.
            delete_expired: format!(
                "DELETE FROM {t} WHERE id IN (\
                 SELECT id FROM {t} WHERE expires_at <= (SELECT clock_timestamp()) \
                 ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED\
                 ) AND expires_at <= clock_timestamp()"
            ),
            // Catalog lookups take no lock on the table.
            catalog: format!(
                "SELECT r.oid IS NOT NULL AS has_table, ({}) AS index_valid \
                 FROM (SELECT to_regclass('{t}') AS oid) AS r",
                index_of("r.oid")
            ),
            migrate: format!(
                "SELECT pg_advisory_xact_lock({key}); \
                 CREATE TABLE IF NOT EXISTS {t} (\
                 id BYTEA PRIMARY KEY, \
                 fingerprint BYTEA NOT NULL, \
                 token BIGINT NOT NULL, \
                 response BYTEA, \
                 expires_at TIMESTAMPTZ NOT NULL); \
                 DO $tip$ BEGIN IF NOT EXISTS ({exists}) THEN \
                 CREATE INDEX IF NOT EXISTS {index} ON {t} (expires_at); \
                 END IF; END $tip$",
                key = migration_lock_key(&table),
                exists = index_of(&format!("to_regclass('{t}')")),
            ),
            table,
        }
    }
}

/// The key of the advisory lock that serializes migrations of `table` (FNV-1a).
fn migration_lock_key(table: &TableName) -> i64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in b"tower-idempotency-postgres migrate "
        .iter()
        .chain(table.as_str().as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash.cast_signed()
}

/// `template` with every `$n` replaced by the literal of `args[n - 1]`, for the simple
/// query protocol. Only ever applied to the store's own statements (no `$` in them but
/// parameters), and literals are hex digits and integers: nothing to escape.
pub(crate) fn render(template: &str, args: &[Arg<'_>]) -> String {
    let extra: usize = args
        .iter()
        .map(|a| match a {
            Arg::Bytes(b) => 2 * b.len() + 24,
            Arg::Int(_) => 28,
        })
        .sum();
    let mut out = String::with_capacity(template.len() + 2 * extra);
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        let n: usize = rest[at + 1..at + 1 + digits]
            .parse()
            .expect("the store's statements only use `$` for parameters");
        match args[n - 1] {
            Arg::Bytes(bytes) => {
                out.push_str("decode('");
                for b in bytes {
                    out.push(char::from(HEX[usize::from(b >> 4)]));
                    out.push(char::from(HEX[usize::from(b & 0xf)]));
                }
                out.push_str("', 'hex')");
            }
            Arg::Int(i) => {
                use std::fmt::Write;
                write!(out, "'{i}'::int8").expect("writing to a String cannot fail");
            }
        }
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

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
    fn rendering_inlines_literals() {
        assert_eq!(
            render(
                "SELECT $1, $2 WHERE x = $1 AND y = $10",
                &[
                    Arg::Bytes(&[0, 0xab, 0x7f]),
                    Arg::Int(-42),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(0),
                    Arg::Int(9),
                ],
            ),
            "SELECT decode('00ab7f', 'hex'), '-42'::int8 WHERE x = decode('00ab7f', 'hex') \
             AND y = '9'::int8"
        );
        let sql = Statements::new(TableName::parse("s.t").unwrap());
        let rendered = render(
            &sql.claim,
            &[
                Arg::Bytes(b"i"),
                Arg::Bytes(b"f"),
                Arg::Int(7),
                Arg::Int(1000),
            ],
        );
        assert!(!rendered.contains('$'), "{rendered}");
        assert!(!sql.claim.contains("now()") && !sql.complete.contains("now()"));
    }

    #[test]
    fn millis_are_clamped() {
        use std::time::Duration;
        assert_eq!(millis(Duration::from_millis(1500)), 1500);
        assert_eq!(millis(Duration::from_micros(999)), 0);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }
}
