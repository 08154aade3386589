//! The `deployments` table, and ([`statuses`]) what runners report about each deployment.

pub mod statuses;

use std::time::Duration;

use sqlx::QueryBuilder;
use time::OffsetDateTime;

use super::Db;

pub(super) const COLUMNS: &str = "seq, id, user_id, idempotency_key, project, environment, git_ref, \
                       description, status, created_at";

/// One row of `deployments`.
#[derive(Debug, Clone, PartialEq, Eq)]
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

impl_from_row!(DeploymentRecord {
    seq: i64,
    id: String,
    user_id: String,
    idempotency_key: Option<String>,
    project: String,
    environment: String,
    git_ref: String,
    description: Option<String>,
    status: String,
    created_at: OffsetDateTime,
});

/// What the list endpoint keeps: every given member must match exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListFilter {
    /// Project slug.
    pub project: Option<String>,
    /// Environment slug.
    pub environment: Option<String>,
    /// Lifecycle status.
    pub status: Option<String>,
    /// Git ref or image.
    pub git_ref: Option<String>,
}

impl ListFilter {
    /// `(column, value)` of every given member.
    fn clauses(&self) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("project", &self.project),
            ("environment", &self.environment),
            ("status", &self.status),
            ("git_ref", &self.git_ref),
        ]
        .into_iter()
        .filter_map(|(column, value)| value.as_deref().map(|value| (column, value)))
    }
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

/// What an insert behind the database guard did ([`Deployments::insert`],
/// [`insert_sqlite`](super::insert::insert_sqlite), [`insert_postgres`](super::insert::insert_postgres)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inserted {
    /// A new row.
    Created(DeploymentRecord),
    /// The user has a deployment created with this idempotency key within the guard's
    /// window (the TTL); nothing was inserted.
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

    /// Inserts `new` behind the database guard (see [`super::insert`]) in a transaction of
    /// its own on the pool: for requests whose idempotency records live outside the database.
    pub async fn insert(
        &self,
        new: &NewDeployment<'_>,
        window: Duration,
    ) -> Result<Inserted, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                // The write lock from the start: the guard's read and the insert are one
                // serialized step, so two creates with one key cannot both miss each other.
                let mut transaction = pool.begin_with(super::insert::SQLITE_BEGIN).await?;
                let inserted = super::insert::insert_sqlite(&mut transaction, new, window).await?;
                transaction.commit().await?;
                Ok(inserted)
            }
            Db::Postgres(pool) => {
                let mut transaction = pool.begin().await?;
                let inserted =
                    super::insert::insert_postgres(&mut transaction, new, window).await?;
                transaction.commit().await?;
                Ok(inserted)
            }
        }
    }

    /// The user's newest deployment created with `key` (a key may have created several, one
    /// per TTL).
    pub async fn find_by_key(
        &self,
        user_id: &str,
        key: &str,
    ) -> Result<Option<DeploymentRecord>, sqlx::Error> {
        match self.db {
            Db::Sqlite(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = ? AND idempotency_key = ? \
                     ORDER BY seq DESC LIMIT 1"
                );
                sqlx::query_as(&sql)
                    .bind(user_id)
                    .bind(key)
                    .fetch_optional(pool)
                    .await
            }
            Db::Postgres(pool) => {
                let sql = format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = $1 AND idempotency_key = $2 \
                     ORDER BY seq DESC LIMIT 1"
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

    /// Up to `limit` of the user's deployments matching `filter`, newest first, starting
    /// after their deployment `after_id` (keyset pagination: stable while new deployments
    /// arrive; an `after_id` that is not theirs yields nothing).
    pub async fn list_matching(
        &self,
        user_id: &str,
        filter: &ListFilter,
        after_id: Option<&str>,
        limit: i64,
    ) -> Result<Vec<DeploymentRecord>, sqlx::Error> {
        // The same clauses for both dialects; QueryBuilder writes each one's placeholders.
        macro_rules! build {
            ($db:ty) => {{
                let mut query = QueryBuilder::<$db>::new(format!(
                    "SELECT {COLUMNS} FROM deployments WHERE user_id = "
                ));
                query.push_bind(user_id);
                for (column, value) in filter.clauses() {
                    query
                        .push(format_args!(" AND {column} = "))
                        .push_bind(value);
                }
                if let Some(after_id) = after_id {
                    query
                        .push(" AND seq < (SELECT seq FROM deployments WHERE user_id = ")
                        .push_bind(user_id)
                        .push(" AND id = ")
                        .push_bind(after_id)
                        .push(")");
                }
                query.push(" ORDER BY seq DESC LIMIT ").push_bind(limit);
                query
            }};
        }
        match self.db {
            Db::Sqlite(pool) => build!(sqlx::Sqlite).build_query_as().fetch_all(pool).await,
            Db::Postgres(pool) => {
                build!(sqlx::Postgres)
                    .build_query_as()
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
