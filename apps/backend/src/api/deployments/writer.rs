//! [`Writer`]: the connection a create writes its deployment through.
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
        deployments::{Inserted, NewDeployment},
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
