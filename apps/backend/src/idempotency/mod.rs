//! The idempotency records (where they live is configuration) and the layer on
//! `POST /api/deployments`.
//!
//! - `database` (the default): [`Records::Sqlite`] / [`Records::Postgres`], the transactional
//!   stores on the deployments database's own pool. The layer begins the request's
//!   transaction, claims the key in it and lends it to the handler, which writes the
//!   deployment through it; the record commits with the deployment, or neither does.
//! - `memory`, `redis://...`, `postgres://...`: [`Records::Separate`], a store of its own; the
//!   handler writes through the pool, and the database guard catches a record lost within
//!   its TTL.

mod build;
mod spec;
mod sweeper;

use std::fmt;

use axum::http::{HeaderValue, Method, Response, header};
use bytes::Bytes;
use tower_idempotency::{
    ConfigError, IdempotencyKey, IdempotencyLayer, Scope,
    problem::{Problem, ProblemKind},
    store::{BoxStore, IdempotencyStore as _, RecordId, StoreError},
    transactional::{Transactional, TransactionalStore},
};
use tower_idempotency_postgres::PostgresTransactionalStore;
use tower_idempotency_sqlite::SqliteTransactionalStore;

pub use self::{
    build::{IdempotencyBackend, REAPER_BATCH, build_store},
    spec::StoreSpec,
    sweeper::Sweeper,
};
use crate::{
    app::AppState,
    auth::AuthUser,
    error::{PROBLEM_TYPE_BASE, ProblemDetails},
};

/// Where the layer keeps its records. Cheap to clone.
#[derive(Clone)]
pub enum Records {
    /// A store of its own (memory, Redis, PostgreSQL): the handler writes through the pool.
    Separate(BoxStore),
    /// The SQLite deployments database: the handler writes through the lent transaction.
    Sqlite(SqliteTransactionalStore),
    /// The PostgreSQL deployments database: the handler writes through the lent transaction.
    Postgres(PostgresTransactionalStore),
}

impl Records {
    /// A round trip to wherever the records live, for the readiness probe.
    pub async fn check(&self) -> Result<(), StoreError> {
        match self {
            Self::Separate(store) => store.check().await,
            Self::Sqlite(store) => TransactionalStore::check(store).await,
            Self::Postgres(store) => TransactionalStore::check(store).await,
        }
    }
}

impl From<BoxStore> for Records {
    fn from(store: BoxStore) -> Self {
        Self::Separate(store)
    }
}

impl fmt::Debug for Records {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Separate(_) => f.write_str("Separate"),
            Self::Sqlite(store) => f.debug_tuple("Sqlite").field(store).finish(),
            Self::Postgres(store) => f.debug_tuple("Postgres").field(store).finish(),
        }
    }
}

/// What every layer on `POST /api/deployments` shares: keys are per user (the auth layer
/// runs first and leaves an [`AuthUser`]), only POST is acted on, records live for the TTL,
/// problems share the API's type base and format, and the body limit matches the app's so
/// both answer 413 alike.
fn configured<St>(layer: IdempotencyLayer<St>, state: &AppState) -> IdempotencyLayer<St> {
    layer
        .scope(|parts| parts.extensions.get::<AuthUser>().map(scope_of))
        .methods([Method::POST])
        .ttl(state.settings.idempotency_ttl)
        .with_handler_tasks(state.handler_tasks.clone())
        .max_request_body(state.settings.max_body_bytes)
        .require_key(state.require_idempotency_key)
        .problem_type_base(PROBLEM_TYPE_BASE)
        .problem_responder(render_problem)
}

/// The layer over a store of its own (with its lease).
pub fn layer(state: &AppState, store: BoxStore) -> IdempotencyLayer<BoxStore> {
    configured(IdempotencyLayer::new(store), state).lease(state.settings.idempotency_lease)
}

/// The layer in transactional mode over `store` (the deployments database).
pub fn transactional_layer<T: TransactionalStore>(
    state: &AppState,
    store: T,
) -> IdempotencyLayer<Transactional<T>> {
    configured(IdempotencyLayer::transactional(store), state)
}

/// Checks that the layer `state` configures can keep its promise (a memory budget too small
/// for the response limit, say), so that the server refuses to start rather than failing
/// requests.
pub fn validate(state: &AppState) -> Result<(), ConfigError> {
    match &state.records {
        Records::Separate(store) => layer(state, store.clone()).validate(),
        Records::Sqlite(store) => transactional_layer(state, store.clone()).validate(),
        Records::Postgres(store) => transactional_layer(state, store.clone()).validate(),
    }
}

/// Whose keys a request's key is among: its authenticated user's.
fn scope_of(user: &AuthUser) -> Scope {
    Scope::from(user.id.as_str())
}

/// The layer's record id of `user`'s `key`, in hex: what the execution log names a keyed
/// request by (the same id the stores key by; neither the key nor the user can be read back
/// from it).
pub fn record_of(user: &AuthUser, key: &IdempotencyKey) -> String {
    RecordId::new(scope_of(user).as_bytes(), key).to_hex()
}

/// The layer's refusals in the app's own problem format (same members, same order), keeping
/// the layer's status and headers (`Retry-After`, `Cache-Control`).
fn render_problem(problem: &Problem) -> Response<Bytes> {
    let mut response = problem.to_response();
    let document = ProblemDetails {
        type_uri: problem.type_uri().to_owned(),
        title: problem.title().to_owned(),
        status: problem.status().as_u16(),
        detail: problem.detail().to_owned(),
        errors: None,
    };
    if let Ok(json) = serde_json::to_vec(&document) {
        *response.body_mut() = Bytes::from(json);
    }
    // A 401 must name the scheme (RFC 9110 §15.5.2). Unreachable while authentication runs
    // first, but the layer would otherwise send a bare 401.
    if problem.kind() == ProblemKind::ScopeMissing {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_execution_log_names_the_layers_record() {
        let key = IdempotencyKey::parse(b"order-1").unwrap();
        let alice = AuthUser {
            id: "alice".to_owned(),
        };
        let record = record_of(&alice, &key);
        // What the layer derives from the scope the closure above hands it.
        let scope: Scope = alice.id.clone().into();
        assert_eq!(record, RecordId::new(scope.as_bytes(), &key).to_hex());
        assert_eq!(record.len(), 64);
        assert!(!record.contains("order-1") && !record.contains("alice"));
        let bob = AuthUser {
            id: "bob".to_owned(),
        };
        assert_ne!(record, record_of(&bob, &key));
    }
}
