//! The `deployments` table.

use sqlx::FromRow;
use time::OffsetDateTime;

use super::Db;

const COLUMNS: &str = "seq, id, user_id, idempotency_key, project, environment, git_ref, \
                       description, status, created_at";

/// One row of `deployments`.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct DeploymentRecord {
    /// Insertion order: sorts the list endpoint and backs its cursor.
    pub seq: i64,
    /// The public id.
    pub id: String,
    /// The owner.
    pub user_id: String,
    /// The `Idempotency-Key` the deployment was created with, if any.
    pub idempotency_key: Option<String>,
    /// Project slug.
    pub project: String,
    /// Environment slug.
    pub environment: String,
    /// Git ref or image.
    pub git_ref: String,
    /// Free text.
    pub description: Option<String>,
    /// Lifecycle status (`queued` on creation).
    pub status: String,
    /// Creation time, whole milliseconds, UTC.
    pub created_at: OffsetDateTime,
}

/// A deployment to insert.
#[derive(Debug, Clone)]
pub struct NewDeployment<'a> {
    /// The public id.
    pub id: &'a str,
    /// The owner.
    pub user_id: &'a str,
    /// The request's `Idempotency-Key`, if any.
    pub idempotency_key: Option<&'a str>,
    /// Project slug.
    pub project: &'a str,
    /// Environment slug.
    pub environment: &'a str,
    /// Git ref or image.
    pub git_ref: &'a str,
    /// Free text.
    pub description: Option<&'a str>,
    /// Lifecycle status.
    pub status: &'a str,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// What [`Deployments::insert`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new row.
    Created(DeploymentRecord),
    /// The user already has a deployment with this idempotency key; nothing was inserted.
    Existing(DeploymentRecord),
}

/// Queries on `deployments`.
#[derive(Debug, Clone, Copy)]
pub struct Deployments<'a> {
    db: &'a Db,
}

impl<'a> Deployments<'a> {
    pub(super) fn new(db: &'a Db) -> Self {
        Self { db }
    }

    /// Inserts `new` unless the user already has a deployment with the same idempotency
    /// key, in which case that one is returned. Race-free: the UNIQUE constraint decides,
    /// and `ON CONFLICT DO NOTHING` turns the loser's insert into a no-op.
    pub async fn insert(&self, new: &NewDeployment<'_>) -> Result<Inserted, sqlx::Error> {
        let inserted = match self.db {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "INSERT INTO deployments (id, user_id, idempotency_key, project, environment, \
                     git_ref, description, status, created_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) \
                     ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
                );
                sqlx::query_as::<_, DeploymentRecord>(&sql)
                    .bind(new.id)
                    .bind(new.user_id)
                    .bind(new.idempotency_key)
                    .bind(new.project)
                    .bind(new.environment)
                    .bind(new.git_ref)
                    .bind(new.description)
                    .bind(new.status)
                    .bind(new.created_at)
                    .fetch_optional(pool)
                    .await?
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "INSERT INTO deployments (id, user_id, idempotency_key, project, environment, \
                     git_ref, description, status, created_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                     ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING {COLUMNS}"
                );
                sqlx::query_as::<_, DeploymentRecord>(&sql)
                    .bind(new.id)
                    .bind(new.user_id)
                    .bind(new.idempotency_key)
                    .bind(new.project)
                    .bind(new.environment)
                    .bind(new.git_ref)
                    .bind(new.description)
                    .bind(new.status)
                    .bind(new.created_at)
                    .fetch_optional(pool)
                    .await?
            }
        };
        if let Some(record) = inserted {
            return Ok(Inserted::Created(record));
        }
        // Only a keyed insert can conflict (NULL keys are distinct), and the conflicting row
        // is committed by now: ON CONFLICT waited for it.
        let key = new.idempotency_key.ok_or(sqlx::Error::RowNotFound)?;
        self.find_by_key(new.user_id, key)
            .await?
            .map(Inserted::Existing)
            .ok_or(sqlx::Error::RowNotFound)
    }

    /// The user's deployment created with `key`.
    pub async fn find_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<DeploymentRecord>, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = ? AND idempotency_key = ?"
                );
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = $1 AND idempotency_key = $2"
                );
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    /// The user's deployment `id`; `None` for unknown ids and other users' deployments alike.
    pub async fn get(
        &self,
        user_id: &str,
        id: &str,
    ) -> Result<Option<DeploymentRecord>, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                let sql = format!("SELECT {COLUMNS} FROM deployments WHERE user_id = ? AND id = ?");
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                let sql =
                    format!("SELECT {COLUMNS} FROM deployments WHERE user_id = $1 AND id = $2");
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(id)
                    .fetch_optional(pool)
                    .await
            }
        }
    }

    /// Up to `limit` of the user's deployments, newest first, starting after `before_seq`
    /// (keyset pagination: stable while new deployments arrive).
    pub async fn list(
        &self,
        user_id: &str,
        before_seq: Option<i64>,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>, sqlx::Error> {
        let before = before_seq.unwrap_or(i64::MAX);
        match self.db {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = ? AND seq < ? \
                     ORDER BY seq DESC LIMIT ?"
                );
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = $1 AND seq < $2 \
                     ORDER BY seq DESC LIMIT $3"
                );
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(before)
                    .bind(limit)
                    .fetch_all(pool)
                    .await
            }
        }
    }

    /// How many deployments the user has.
    pub async fn count_for_user(&self, user_id: &str) -> Result<i64, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE user_id = ?")
                    .bind(user_id)
                    .fetch_one(pool)
                    .await
            }
            Db::Postgres(pool) => {
                sqlx::query_scalar("SELECT COUNT(*) FROM deployments WHERE user_id = $1")
                    .bind(user_id)
                    .fetch_one(pool)
                    .await
            }
        }
    }
}
