//! Inserting a deployment behind the **database guard**, on the connection of an open
//! transaction: the request's own (lent by the transactional idempotency layer), or one that
//! [`Deployments::insert`](super::Deployments::insert) begins on the pool. One statement
//! sequence per dialect serves both.
//!
//! The guard is the second line of defence behind the idempotency records: a keyed create
//! whose user already has a deployment created with the same key **less than `window` (the
//! TTL) ago** gets that deployment back ([`Inserted::Existing`]) instead of a new one. It
//! catches a record the store lost within its TTL (the memory store after a restart, a
//! Redis failover) and never outlives it: after the TTL the key creates a new deployment,
//! as the published policy says. The read and the insert are serialized per (user, key) in
//! the transaction, so two concurrent creates cannot both miss each other: SQLite by its
//! write lock (`BEGIN IMMEDIATE`, as the transactional store also begins), PostgreSQL by a
//! transaction-scoped advisory lock on the (user, key) pair.

use std::time::Duration;

use sqlx::{PgConnection, SqliteConnection};

use super::deployments::{COLUMNS, DeploymentRecord, Inserted, NewDeployment};

/// How a SQLite transaction that inserts a deployment begins: with the write lock.
pub const SQLITE_BEGIN: &str = "BEGIN IMMEDIATE";

/// The first key of the guard's advisory locks ("dpl0"). Two-key advisory locks never
/// collide with the one-key locks of the PostgreSQL idempotency stores.
const GUARD_LOCK_CLASS: i32 = 0x6470_6c30;

const INSERT_COLUMNS: &str =
    "id, user_id, idempotency_key, project, environment, git_ref, description, status, created_at";

/// Whether `existing` was created less than `window` before `new`: within the TTL of the
/// key, by the same clock that stamps every deployment (`db::now`).
fn within_window(existing: &DeploymentRecord, new: &NewDeployment<'_>, window: Duration) -> bool {
    match time::Duration::try_from(window)
        .ok()
        .and_then(|window| new.created_at.checked_sub(window))
    {
        Some(cutoff) => existing.created_at > cutoff,
        // A window reaching before the calendar's start: everything is within it.
        None => true,
    }
}

/// The guarded insert on SQLite. `connection` must be in a transaction holding the write lock
/// ([`SQLITE_BEGIN`]).
pub async fn insert_sqlite(
    connection: &mut SqliteConnection,
    new: &NewDeployment<'_>,
    window: Duration,
) -> Result<Inserted, sqlx::Error> {
    if let Some(key) = new.idempotency_key {
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments WHERE user_id = ? AND idempotency_key = ? \
             ORDER BY seq DESC LIMIT 1"
        );
        let newest: Option<DeploymentRecord> = sqlx::query_as(&sql)
            .bind(new.user_id)
            .bind(key)
            .fetch_optional(&mut *connection)
            .await?;
        if let Some(existing) = newest.filter(|e| within_window(e, new, window)) {
            return Ok(Inserted::Existing(existing));
        }
    }
    let sql = format!(
        "INSERT INTO deployments ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
         RETURNING {COLUMNS}"
    );
    let record = sqlx::query_as::<_, DeploymentRecord>(&sql)
        .bind(new.id)
        .bind(new.user_id)
        .bind(new.idempotency_key)
        .bind(new.project)
        .bind(new.environment)
        .bind(new.git_ref)
        .bind(new.description)
        .bind(new.status)
        .bind(new.created_at)
        .fetch_one(connection)
        .await?;
    Ok(Inserted::Created(record))
}

/// The guarded insert on PostgreSQL. `connection` must be in a transaction: the advisory
/// lock lasts until it ends, so a concurrent create with the same (user, key) reads this one's
/// row once it has committed (READ COMMITTED: each statement sees what committed before it).
pub async fn insert_postgres(
    connection: &mut PgConnection,
    new: &NewDeployment<'_>,
    window: Duration,
) -> Result<Inserted, sqlx::Error> {
    if let Some(key) = new.idempotency_key {
        // A hash collision only serializes two unrelated creates.
        sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2::text || '/' || $3::text))")
            .bind(GUARD_LOCK_CLASS)
            .bind(new.user_id)
            .bind(key)
            .execute(&mut *connection)
            .await?;
        let sql = format!(
            "SELECT {COLUMNS} FROM deployments WHERE user_id = $1 AND idempotency_key = $2 \
             ORDER BY seq DESC LIMIT 1"
        );
        let newest: Option<DeploymentRecord> = sqlx::query_as(&sql)
            .bind(new.user_id)
            .bind(key)
            .fetch_optional(&mut *connection)
            .await?;
        if let Some(existing) = newest.filter(|e| within_window(e, new, window)) {
            return Ok(Inserted::Existing(existing));
        }
    }
    let sql = format!(
        "INSERT INTO deployments ({INSERT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         RETURNING {COLUMNS}"
    );
    let record = sqlx::query_as::<_, DeploymentRecord>(&sql)
        .bind(new.id)
        .bind(new.user_id)
        .bind(new.idempotency_key)
        .bind(new.project)
        .bind(new.environment)
        .bind(new.git_ref)
        .bind(new.description)
        .bind(new.status)
        .bind(new.created_at)
        .fetch_one(connection)
        .await?;
    Ok(Inserted::Created(record))
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;

    fn record(created_at: time::OffsetDateTime) -> DeploymentRecord {
        DeploymentRecord {
            seq: 1,
            id: "d".to_owned(),
            user_id: "u".to_owned(),
            idempotency_key: Some("k".to_owned()),
            project: "p".to_owned(),
            environment: "e".to_owned(),
            git_ref: "r".to_owned(),
            description: None,
            status: "queued".to_owned(),
            created_at,
        }
    }

    #[test]
    fn the_window_is_the_ttl() {
        let new = NewDeployment {
            id: "n",
            user_id: "u",
            idempotency_key: Some("k"),
            project: "p",
            environment: "e",
            git_ref: "r",
            description: None,
            status: "queued",
            created_at: datetime!(2026-11-28 12:00:10 UTC),
        };
        let ttl = Duration::from_secs(10);
        assert!(within_window(
            &record(datetime!(2026-11-28 12:00:00.001 UTC)),
            &new,
            ttl
        ));
        assert!(!within_window(
            &record(datetime!(2026-11-28 12:00:00 UTC)),
            &new,
            ttl
        ));
        assert!(!within_window(
            &record(datetime!(2026-11-27 12:00:00 UTC)),
            &new,
            ttl
        ));
        assert!(within_window(
            &record(datetime!(2000-01-01 0:00 UTC)),
            &new,
            Duration::MAX
        ));
    }
}
