//! The problem document every error answer carries ([`ProblemDetails`]), with its `code`
//! member and its OpenAPI schema.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::PROBLEM_TYPE_BASE;

/// An RFC 9457 problem document, as every error response carries it. Serialised with a
/// `code` member (the slug of `type`) derived from `type_uri`, so every problem built from
/// this struct carries it without listing it ([`ProblemDetails::new`] builds one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProblemDetails {
    /// URI identifying the problem type; stable, match on it.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What happened in this occurrence.
    pub detail: String,
    /// The invalid fields (`validation-failed` and `invalid-parameter` only).
    #[serde(default)]
    pub errors: Option<Vec<FieldError>>,
}

impl ProblemDetails {
    /// A problem of type `slug` (under [`PROBLEM_TYPE_BASE`]) without field errors.
    pub fn new(
        slug: &str,
        title: impl Into<String>,
        status: u16,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            type_uri: format!("{PROBLEM_TYPE_BASE}{slug}"),
            title: title.into(),
            status,
            detail: detail.into(),
            errors: None,
        }
    }

    /// The stable `code` member: the last path segment of `type`.
    pub fn code(&self) -> &str {
        self.type_uri
            .rsplit_once('/')
            .map_or(self.type_uri.as_str(), |(_, slug)| slug)
    }
}

/// Member order as the document shows it: `type`, `code`, `title`, `status`, `detail`,
/// `errors` (only when present).
impl Serialize for ProblemDetails {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct as _;
        let members = if self.errors.is_some() { 6 } else { 5 };
        let mut document = serializer.serialize_struct("ProblemDetails", members)?;
        document.serialize_field("type", &self.type_uri)?;
        document.serialize_field("code", self.code())?;
        document.serialize_field("title", &self.title)?;
        document.serialize_field("status", &self.status)?;
        document.serialize_field("detail", &self.detail)?;
        if let Some(errors) = &self.errors {
            document.serialize_field("errors", errors)?;
        }
        document.end()
    }
}

/// The schema of [`ProblemDetails`] as serialised (with `code`).
impl utoipa::PartialSchema for ProblemDetails {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        ProblemDocument::schema()
    }
}

impl ToSchema for ProblemDetails {
    fn name() -> std::borrow::Cow<'static, str> {
        "ProblemDetails".into()
    }

    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        <ProblemDocument as ToSchema>::schemas(schemas);
    }
}

/// An RFC 9457 problem document, as every error response carries it.
#[derive(ToSchema)]
#[allow(dead_code)] // only its schema is used
#[schema(example = json!({
    "type": "https://deployments.example.com/problems/validation-failed",
    "code": "validation-failed",
    "title": "Invalid deployment",
    "status": 422,
    "detail": "The request body has 1 invalid field.",
    "errors": [{"field": "project", "message": "must not start or end with '-'"}]
}))]
struct ProblemDocument {
    /// URI identifying the problem type; stable, match on it.
    #[schema(rename = "type")]
    type_uri: String,
    /// The slug of `type` (its last path segment), e.g. `validation-failed`; stable too.
    code: String,
    /// Short summary of the problem type.
    title: String,
    /// The HTTP status code.
    status: u16,
    /// What happened in this occurrence.
    detail: String,
    /// The invalid fields (`validation-failed` and `invalid-parameter` only).
    #[schema(nullable = false)]
    errors: Option<Vec<FieldError>>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldError {
    /// The field (body member or query parameter).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error on `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
