//! [`Writer`]: the connection a create (or a status report) writes through.
//!
//! With the `database` idempotency store the layer lends the request its open transaction
//! (the idempotency record commits in it, with the deployment, or neither does); with a store
//! of its own the handler writes through the pool, in a transaction of its own. Either way the
//! same statements run ([`db::insert`]), so the guard and the insert are one code path.

use std::time::Duration;

use axum::{extract::FromRequestParts, http::request::Parts};
use tower_idempotency::transactional::{Lent, LentGone};
use tower_idempotency_postgres::PostgresTransaction;
use tower_idempotency_sqlite::SqliteTransaction;

use crate::{
    app::AppState,
    db::{
        self, Db,
        deployments::{
            Inserted, NewDeployment,
            statuses::{self, NewStatus, StatusRecord},
        },
    },
    error::AppError,
    idempotency::Records,
};

/// Where a create writes.
#[derive(Debug)]
pub enum Writer {
    /// A transaction of its own on the pool (the idempotency records live elsewhere).
    Pool(Db),
    /// The request's SQLite transaction, lent by the idempotency layer.
    Sqlite(Lent<SqliteTransaction>),
    /// The request's PostgreSQL transaction, lent by the idempotency layer.
    Postgres(Lent<PostgresTransaction>),
}

impl Writer {
    /// Inserts `new` unless the guard finds a deployment created with its key less than
    /// `window` ago (see [`db::insert`]).
    pub async fn insert(
        &self,
        new: &NewDeployment<'_>,
        window: Duration,
    ) -> Result<Inserted, AppError> {
        let inserted = match self {
            Self::Pool(db) => db.deployments().insert(new, window).await?,
            Self::Sqlite(lent) => {
                let mut transaction = lent.lock().await.map_err(gone)?;
                db::insert::insert_sqlite(&mut transaction, new, window).await?
            }
            Self::Postgres(lent) => {
                let mut transaction = lent.lock().await.map_err(gone)?;
                db::insert::insert_postgres(&mut transaction, new, window).await?
            }
        };
        Ok(inserted)
    }
}

impl Writer {
    /// Adds a status to the user's deployment `new.deployment_id` if `check` allows the move
    /// from its current state (`None`: no such deployment of theirs, 404). The read, the check
    /// and the writes are one transaction, with the deployment locked.
    pub async fn add_status(
        &self,
        user_id: &str,
        new: &NewStatus<'_>,
        check: impl FnOnce(&str) -> Result<(), AppError>,
    ) -> Result<StatusRecord, AppError> {
        let id = new.deployment_id;
        let not_found = || AppError::NotFound("deployment");
        match self {
            Self::Pool(Db::Sqlite(pool)) => {
                let mut transaction = pool.begin_with(db::insert::SQLITE_BEGIN).await?;
                let current = statuses::current_sqlite(&mut transaction, user_id, id).await?;
                check(&current.ok_or_else(not_found)?)?;
                let record = statuses::insert_sqlite(&mut transaction, new).await?;
                transaction.commit().await?;
                Ok(record)
            }
            Self::Pool(Db::Postgres(pool)) => {
                let mut transaction = pool.begin().await?;
                let current = statuses::current_postgres(&mut transaction, user_id, id).await?;
                check(&current.ok_or_else(not_found)?)?;
                let record = statuses::insert_postgres(&mut transaction, new).await?;
                transaction.commit().await?;
                Ok(record)
            }
            Self::Sqlite(lent) => {
                let mut transaction = lent.lock().await.map_err(gone)?;
                let current = statuses::current_sqlite(&mut transaction, user_id, id).await?;
                check(&current.ok_or_else(not_found)?)?;
                Ok(statuses::insert_sqlite(&mut transaction, new).await?)
            }
            Self::Postgres(lent) => {
                let mut transaction = lent.lock().await.map_err(gone)?;
                let current = statuses::current_postgres(&mut transaction, user_id, id).await?;
                check(&current.ok_or_else(not_found)?)?;
                Ok(statuses::insert_postgres(&mut transaction, new).await?)
            }
        }
    }
}

fn gone(error: LentGone) -> AppError {
    AppError::Internal(error.to_string())
}

/// Chosen by the configured store, not by what the request happens to carry: with the
/// `database` store a request without its lent transaction is a wiring bug, and writing
/// through the pool instead would commit the deployment without its record (and, on SQLite,
/// wait for the write lock the request's own transaction holds).
impl FromRequestParts<AppState> for Writer {
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let missing = || {
            AppError::Internal(
                "no transaction was lent to this request: is the route behind the \
                 transactional idempotency layer?"
                    .to_owned(),
            )
        };
        match &state.records {
            Records::Separate(_) => Ok(Self::Pool(state.db.clone())),
            Records::Sqlite(_) => parts
                .extensions
                .get::<Lent<SqliteTransaction>>()
                .cloned()
                .map(Self::Sqlite)
                .ok_or_else(missing),
            Records::Postgres(_) => parts
                .extensions
                .get::<Lent<PostgresTransaction>>()
                .cloned()
                .map(Self::Postgres)
                .ok_or_else(missing),
        }
    }
}
