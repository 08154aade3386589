//! The deployments API: `POST /api/deployments` made safe to retry by the
//! `tower-idempotency` layer (by default in transactional mode: the idempotency record commits
//! in the deployment's own database transaction), with a database guard within the TTL as a
//! second line of defence for stores of their own.
//!
//! The binary (`src/main.rs`) is a thin CLI over this library; the integration tests build
//! the same [`app()`](fn@app) over SQLite and PostgreSQL. [`cli`] is the API's own client
//! (`backend deploy ...`).

pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod http_metrics;
pub mod idempotency;
pub mod openapi;
pub mod ratelimit;
pub mod redact;
pub mod request_id;
pub mod server;
pub mod telemetry;

pub use self::{
    app::{AppState, Settings, app},
    auth::AuthUser,
    db::Db,
    error::{AppError, PROBLEM_TYPE_BASE},
};
