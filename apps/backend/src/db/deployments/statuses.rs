//! The `deployment_statuses` table: what runners reported about a deployment. Adding one
//! also moves `deployments.status`, in the same transaction: the caller's (lent by the
//! transactional idempotency layer, or begun on the pool by
//! [`Writer`](crate::api::deployments::Writer)).
//!
//! The caller first reads the deployment's state with the row locked ([`current_sqlite`],
//! [`current_postgres`]), decides whether the transition is allowed, then inserts
//! ([`insert_sqlite`], [`insert_postgres`]): two reports for one deployment are serialized,
//! so both cannot move it from the same state.

use sqlx::{PgConnection, SqliteConnection};
use time::OffsetDateTime;

use super::super::Db;

const COLUMNS: &str = "seq, id, deployment_id, state, description, log_url, created_at";

/// One row of `deployment_statuses`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    /// Insertion order: newest first in listings.
    pub seq: i64,
    /// The public id.
    pub id: String,
    /// The deployment it belongs to.
    pub deployment_id: String,
    /// The state the deployment moved to.
    pub state: String,
    /// Free text.
    pub description: Option<String>,
    /// Where the runner's log is.
    pub log_url: Option<String>,
    /// When it was reported, whole milliseconds, UTC.
    pub created_at: OffsetDateTime,
}

impl_from_row!(StatusRecord {
    seq: i64,
    id: String,
    deployment_id: String,
    state: String,
    description: Option<String>,
    log_url: Option<String>,
    created_at: OffsetDateTime,
});

/// A status to add.
#[derive(Debug, Clone)]
pub struct NewStatus<'a> {
    /// The public id.
    pub id: &'a str,
    /// The deployment (already checked to belong to the caller).
    pub deployment_id: &'a str,
    /// The new state.
    pub state: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// Where the runner's log is.
    pub log_url: Option<&'a str>,
    /// When it was reported.
    pub created_at: OffsetDateTime,
}

/// The state of the user's deployment `id`, `None` if it is not theirs. `connection` must be
/// in a transaction holding SQLite's write lock (`BEGIN IMMEDIATE`): that is the row lock.
pub async fn current_sqlite(
    connection: &mut SqliteConnection,
    user_id: &str,
    id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM deployments WHERE user_id = ? AND id = ?")
        .bind(user_id)
        .bind(id)
        .fetch_optional(connection)
        .await
}

/// The state of the user's deployment `id`, `None` if it is not theirs, with its row locked
/// until the transaction ends.
pub async fn current_postgres(
    connection: &mut PgConnection,
    user_id: &str,
    id: &str,
) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM deployments WHERE user_id = $1 AND id = $2 FOR UPDATE")
        .bind(user_id)
        .bind(id)
        .fetch_optional(connection)
        .await
}

/// Inserts `new` and moves its deployment to `new.state`.
pub async fn insert_sqlite(
    connection: &mut SqliteConnection,
    new: &NewStatus<'_>,
) -> Result<StatusRecord, sqlx::Error> {
    sqlx::query("UPDATE deployments SET status = ? WHERE id = ?")
        .bind(new.state)
        .bind(new.deployment_id)
        .execute(&mut *connection)
        .await?;
    let sql = format!(
        "INSERT INTO deployment_statuses (id, deployment_id, state, description, log_url, \
         created_at) VALUES (?, ?, ?, ?, ?, ?) RETURNING {COLUMNS}"
    );
    sqlx::query_as(&sql)
        .bind(new.id)
        .bind(new.deployment_id)
        .bind(new.state)
        .bind(new.description)
        .bind(new.log_url)
        .bind(new.created_at)
        .fetch_one(connection)
        .await
}

/// Inserts `new` and moves its deployment to `new.state`.
pub async fn insert_postgres(
    connection: &mut PgConnection,
    new: &NewStatus<'_>,
) -> Result<StatusRecord, sqlx::Error> {
    sqlx::query("UPDATE deployments SET status = $1 WHERE id = $2")
        .bind(new.state)
        .bind(new.deployment_id)
        .execute(&mut *connection)
        .await?;
    let sql = format!(
        "INSERT INTO deployment_statuses (id, deployment_id, state, description, log_url, \
         created_at) VALUES ($1, $2, $3, $4, $5, $6) RETURNING {COLUMNS}"
    );
    sqlx::query_as(&sql)
        .bind(new.id)
        .bind(new.deployment_id)
        .bind(new.state)
        .bind(new.description)
        .bind(new.log_url)
        .bind(new.created_at)
        .fetch_one(connection)
        .await
}

/// The statuses of the user's deployment `id`, newest first; `None` if it is not theirs.
/// The lifecycle bounds them (each state at most once), so no pagination.
pub async fn list(
    db: &Db,
    user_id: &str,
    id: &str,
) -> Result<Option<Vec<StatusRecord>>, sqlx::Error> {
    let Some(_) = db.deployments().get(user_id, id).await? else {
        return Ok(None);
    };
    let rows = match db {
        Db::Sqlite(pool) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM deployment_statuses WHERE deployment_id = ? \
                 ORDER BY seq DESC"
            );
            sqlx::query_as(&sql).bind(id).fetch_all(pool).await?
        }
        Db::Postgres(pool) => {
            let sql = format!(
                "SELECT {COLUMNS} FROM deployment_statuses WHERE deployment_id = $1 \
                 ORDER BY seq DESC"
            );
            sqlx::query_as(&sql).bind(id).fetch_all(pool).await?
        }
    };
    Ok(Some(rows))
}
