//! `/api/deployments`: create (idempotent), list, show, and the document they share.
//!
//! - [`input`]: the create body and its validation;
//! - [`create`](mod@create): `POST /api/deployments` (behind the idempotency layer);
//! - [`writer`]: the connection a create writes through (the request's lent transaction, or
//!   the pool);
//! - [`read`]: `GET /api/deployments` and `GET /api/deployments/{id}` (with its ETag);
//! - [`list_query`]: the list's query parameters and its cursor;
//! - [`lifecycle`]: the states, their transitions, the body of a status report;
//! - [`statuses`]: `POST` and `GET /api/deployments/{id}/statuses`.

pub mod create;
pub mod input;
pub mod lifecycle;
pub mod list_query;
pub mod read;
pub mod statuses;
pub mod writer;

use serde::{Deserialize, Serialize};
use time::{UtcOffset, format_description::BorrowedFormatItem, macros::format_description};
use utoipa::ToSchema;

pub use self::{
    create::create,
    input::CreateDeployment,
    lifecycle::{DeploymentStatus, NewStatusInput},
    list_query::ListParams,
    read::{DeploymentPage, list, show},
    statuses::{StatusReport, add_status, list_statuses},
    writer::Writer,
};
use crate::{db::deployments::DeploymentRecord, error::AppError};

/// Default page size of the list endpoint.
pub const DEFAULT_PAGE_SIZE: u32 = 20;
/// Largest page size of the list endpoint.
pub const MAX_PAGE_SIZE: u32 = 100;

/// RFC 3339, UTC, milliseconds: one spelling per instant, so equal rows serialise equally.
const CREATED_AT_FORMAT: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// `at` as the API spells instants: RFC 3339, UTC, milliseconds.
pub(crate) fn format_time(at: time::OffsetDateTime) -> Result<String, AppError> {
    at.to_offset(UtcOffset::UTC)
        .format(CREATED_AT_FORMAT)
        .map_err(|e| AppError::Internal(format!("cannot format a timestamp: {e}")))
}

/// A deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "id": "019ac9c4-3f2e-7b61-9d4a-8f6e2b1c0a57",
    "project": "billing-api",
    "environment": "production",
    "ref": "v2.14.0",
    "description": "Roll out the new invoice renderer",
    "status": "queued",
    "created_at": "2026-11-28T19:45:00.123Z"
}))]
pub struct Deployment {
    /// Opaque identifier.
    pub id: String,
    /// Project slug.
    pub project: String,
    /// Environment slug.
    pub environment: String,
    /// Git ref or container image that is deployed.
    #[serde(rename = "ref")]
    pub git_ref: String,
    /// Free text; `null` when none was given.
    #[schema(required = true)]
    pub description: Option<String>,
    /// Lifecycle status: the state of its newest status report, `queued` before the first.
    pub status: DeploymentStatus,
    /// Creation time, RFC 3339 in UTC with milliseconds.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl Deployment {
    pub(crate) fn from_record(record: &DeploymentRecord) -> Result<Self, AppError> {
        let status = DeploymentStatus::parse(&record.status)
            .ok_or_else(|| AppError::Internal(format!("unknown status `{}`", record.status)))?;
        let created_at = format_time(record.created_at)?;
        Ok(Self {
            id: record.id.clone(),
            project: record.project.clone(),
            environment: record.environment.clone(),
            git_ref: record.git_ref.clone(),
            description: record.description.clone(),
            status,
            created_at,
        })
    }
}
