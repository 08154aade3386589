//! The body of `POST /api/deployments`, validated by hand so that every invalid field is
//! named at once.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use utoipa::ToSchema;

use crate::{
    db::deployments::DeploymentRecord,
    error::{AppError, FieldError},
};

const SLUG_MAX: usize = 63;
const REF_MAX: usize = 255;
const DESCRIPTION_MAX: usize = 1000;

/// The body of `POST /api/deployments`. Unknown members are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
// The handler validates by hand (`from_json`); this makes the schema say what it enforces
// (`additionalProperties: false`).
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "project": "billing-api",
    "environment": "production",
    "ref": "v2.14.0",
    "description": "Roll out the new invoice renderer"
}))]
pub struct CreateDeployment {
    /// Project slug: 1-63 lowercase letters, digits or `-`, not starting or ending with `-`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub project: String,
    /// Environment slug, same rules as `project`.
    #[schema(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub environment: String,
    /// Git ref or image to deploy: 1-255 characters, no whitespace or control characters.
    #[serde(rename = "ref")]
    // The pattern: no Unicode whitespace (`char::is_whitespace`), no control character.
    #[schema(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub git_ref: String,
    /// Optional free text, at most 1000 characters, no NUL.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub description: Option<String>,
}

impl CreateDeployment {
    /// Reads and validates a request body, collecting every invalid field.
    pub fn from_json(body: Value) -> Result<Self, AppError> {
        let Value::Object(mut members) = body else {
            return Err(AppError::MalformedBody(
                "The request body must be a JSON object.".to_owned(),
            ));
        };
        let mut errors = Vec::new();
        let project = required_string(&mut members, "project", &mut errors)
            .filter(|v| check(v, "project", validate_slug, &mut errors));
        let environment = required_string(&mut members, "environment", &mut errors)
            .filter(|v| check(v, "environment", validate_slug, &mut errors));
        let git_ref = required_string(&mut members, "ref", &mut errors)
            .filter(|v| check(v, "ref", validate_ref, &mut errors));
        let description = match members.remove("description") {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(text)) => match validate_description(&text) {
                Ok(()) => Some(Some(text)),
                Err(message) => {
                    errors.push(FieldError::new("description", message));
                    None
                }
            },
            Some(_) => {
                errors.push(FieldError::new("description", "must be a string or null"));
                None
            }
        };
        // What is left is unknown; rejecting it beats silently ignoring a misspelt field.
        errors.extend(
            members
                .keys()
                .map(|name| FieldError::new(name.as_str(), "unknown field")),
        );
        match (project, environment, git_ref, description) {
            (Some(project), Some(environment), Some(git_ref), Some(description))
                if errors.is_empty() =>
            {
                Ok(Self {
                    project,
                    environment,
                    git_ref,
                    description,
                })
            }
            _ => Err(AppError::Validation(errors)),
        }
    }

    /// Whether `record` was created from an equal request (for the database-level guard).
    pub(crate) fn matches(&self, record: &DeploymentRecord) -> bool {
        self.project == record.project
            && self.environment == record.environment
            && self.git_ref == record.git_ref
            && self.description == record.description
    }
}

fn required_string(
    members: &mut Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
) -> Option<String> {
    match members.remove(field) {
        Some(Value::String(value)) => Some(value),
        None | Some(Value::Null) => {
            errors.push(FieldError::new(field, "is required"));
            None
        }
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string"));
            None
        }
    }
}

fn check(
    value: &str,
    field: &str,
    validate: fn(&str) -> Result<(), String>,
    errors: &mut Vec<FieldError>,
) -> bool {
    match validate(value) {
        Ok(()) => true,
        Err(message) => {
            errors.push(FieldError::new(field, message));
            false
        }
    }
}

/// DNS-label-like: safe in URLs, hostnames and metric labels.
pub(super) fn validate_slug(value: &str) -> Result<(), String> {
    if value.is_empty() || value.len() > SLUG_MAX {
        return Err(format!("must be 1-{SLUG_MAX} characters long"));
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("may only contain lowercase letters, digits and '-'".to_owned());
    }
    if value.starts_with('-') || value.ends_with('-') {
        return Err("must not start or end with '-'".to_owned());
    }
    Ok(())
}

pub(super) fn validate_ref(value: &str) -> Result<(), String> {
    let length = value.chars().count();
    if length == 0 || length > REF_MAX {
        return Err(format!("must be 1-{REF_MAX} characters long"));
    }
    if value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must not contain whitespace or control characters".to_owned());
    }
    Ok(())
}

pub(super) fn validate_description(value: &str) -> Result<(), String> {
    if value.chars().count() > DESCRIPTION_MAX {
        return Err(format!("must be at most {DESCRIPTION_MAX} characters"));
    }
    // Valid JSON (`\u0000`), but PostgreSQL text cannot store it: refuse it on every
    // database alike instead of failing the insert.
    if value.contains('\0') {
        return Err("must not contain NUL characters".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn errors_of(body: Value) -> Vec<(String, String)> {
        match CreateDeployment::from_json(body) {
            Err(AppError::Validation(errors)) => {
                errors.into_iter().map(|e| (e.field, e.message)).collect()
            }
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn accepts_a_valid_body() {
        let input = CreateDeployment::from_json(json!({
            "project": "billing-api", "environment": "prod-eu1", "ref": "refs/tags/v1.2.3",
            "description": null
        }))
        .unwrap();
        assert_eq!(input.git_ref, "refs/tags/v1.2.3");
        assert_eq!(input.description, None);
        let input = CreateDeployment::from_json(json!({
            "project": "a", "environment": "0", "ref": "ghcr.io/acme/api@sha256:abc",
            "description": "x".repeat(1000)
        }))
        .unwrap();
        assert_eq!(input.project, "a");
    }

    #[test]
    fn names_every_invalid_field() {
        let errors = errors_of(json!({
            "project": "-billing", "environment": 5, "ref": "has space",
            "description": "x".repeat(1001), "colour": "blue"
        }));
        let fields: Vec<_> = errors.iter().map(|(f, _)| f.as_str()).collect();
        assert_eq!(
            fields,
            ["project", "environment", "ref", "description", "colour"]
        );
        let errors = errors_of(json!({}));
        assert!(errors.iter().all(|(_, m)| m == "is required"));
        assert_eq!(errors.len(), 3);
    }

    #[test]
    fn slug_rules() {
        assert!(validate_slug("a-b-1").is_ok());
        assert!(validate_slug(&"a".repeat(63)).is_ok());
        for bad in ["", "A", "a_b", "a-", "-a", "é", &"a".repeat(64)] {
            assert!(validate_slug(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn description_rules() {
        assert!(validate_description("").is_ok());
        assert!(validate_description("two\nlines\tand a tab").is_ok());
        assert!(validate_description(&"é".repeat(1000)).is_ok());
        for bad in ["a\0b", "\0", &"x".repeat(1001)] {
            assert!(validate_description(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ref_rules() {
        assert!(validate_ref("main").is_ok());
        assert!(validate_ref(&"é".repeat(255)).is_ok());
        for bad in ["", "a b", "a\tb", "a\u{7f}", &"a".repeat(256)] {
            assert!(validate_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn non_objects_are_malformed() {
        assert!(matches!(
            CreateDeployment::from_json(json!([1])),
            Err(AppError::MalformedBody(_))
        ));
    }
}
