//! The query of `GET /api/deployments`: page size, cursor and filters, read by hand so that
//! an unknown, repeated or invalid parameter is a 400 problem naming it.
//!
//! The cursor names the last deployment of the previous page (its public id), not a row
//! number: `seq` is global across users and would tell them how many deployments everyone
//! created.

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use serde::Deserialize;
use utoipa::IntoParams;

use super::{
    DEFAULT_PAGE_SIZE, DeploymentStatus, MAX_PAGE_SIZE,
    input::{validate_ref, validate_slug},
};
use crate::{db::deployments::ListFilter, error::FieldError};

/// Query parameters of `GET /api/deployments` (documentation; [`parse`] reads them).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1-100 (default 20).
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// `next_cursor` of the previous page; omit for the first page.
    #[param(min_length = 1, pattern = r"^[A-Za-z0-9_-]+$")]
    pub cursor: Option<String>,
    /// Only deployments of this project (a project slug).
    #[param(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub project: Option<String>,
    /// Only deployments to this environment (an environment slug).
    #[param(
        min_length = 1,
        max_length = 63,
        pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$"
    )]
    pub environment: Option<String>,
    /// Only deployments in this state.
    #[param(value_type = Option<DeploymentStatus>)]
    pub status: Option<String>,
    /// Only deployments of this ref (exact match).
    #[serde(rename = "ref")]
    #[param(
        min_length = 1,
        max_length = 255,
        pattern = r"^[^\u0000-\u0020\u007f-\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+$"
    )]
    pub git_ref: Option<String>,
}

/// A valid list query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    /// Page size.
    pub limit: u32,
    /// The id of the last deployment of the previous page.
    pub after: Option<String>,
    /// What to list.
    pub filter: ListFilter,
}

/// Reads the query's `(name, value)` pairs, naming every bad parameter.
pub fn parse(pairs: &[(String, String)]) -> Result<ListQuery, Vec<FieldError>> {
    let mut errors = Vec::new();
    let mut query = ListQuery {
        limit: DEFAULT_PAGE_SIZE,
        after: None,
        filter: ListFilter::default(),
    };
    let mut seen: Vec<&str> = Vec::new();
    for (name, value) in pairs {
        if seen.contains(&name.as_str()) {
            errors.push(FieldError::new(name.as_str(), "must be given at most once"));
            continue;
        }
        seen.push(name);
        let slug = |value: &str| validate_slug(value).map(|()| value.to_owned());
        let result = match name.as_str() {
            "limit" => match value.parse::<u32>() {
                Ok(limit) if (1..=MAX_PAGE_SIZE).contains(&limit) => {
                    query.limit = limit;
                    Ok(())
                }
                _ => Err(format!("must be an integer from 1 to {MAX_PAGE_SIZE}")),
            },
            "cursor" => match decode_cursor(value) {
                Some(id) => {
                    query.after = Some(id);
                    Ok(())
                }
                None => Err("is not a cursor this API returned".to_owned()),
            },
            "project" => slug(value).map(|v| query.filter.project = Some(v)),
            "environment" => slug(value).map(|v| query.filter.environment = Some(v)),
            "ref" => validate_ref(value).map(|()| query.filter.git_ref = Some(value.clone())),
            "status" => match DeploymentStatus::parse(value) {
                Some(state) => {
                    query.filter.status = Some(state.as_str().to_owned());
                    Ok(())
                }
                None => Err(
                    "must be one of queued, in_progress, success, failure, error, cancelled"
                        .to_owned(),
                ),
            },
            _ => Err("unknown query parameter".to_owned()),
        };
        if let Err(message) = result {
            errors.push(FieldError::new(name.as_str(), message));
        }
    }
    if errors.is_empty() {
        Ok(query)
    } else {
        Err(errors)
    }
}

/// Cursors are opaque to clients (base64url), so their format can change.
pub fn encode_cursor(last_id: &str) -> String {
    URL_SAFE_NO_PAD.encode(format!("v2:{last_id}"))
}

fn decode_cursor(cursor: &str) -> Option<String> {
    let bytes = URL_SAFE_NO_PAD.decode(cursor).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let id = text.strip_prefix("v2:")?;
    // Ids are UUIDs: anything else was not made here.
    uuid::Uuid::parse_str(id).ok().map(|_| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(query: &[(&str, &str)]) -> Vec<(String, String)> {
        query
            .iter()
            .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let id = "019ac9c4-3f2e-7b61-9d4a-8f6e2b1c0a57";
        assert_eq!(decode_cursor(&encode_cursor(id)).as_deref(), Some(id));
        for bad in ["", "!!", "djE6", "djE6LTE", "eHh4", "djI6eA"] {
            assert_eq!(decode_cursor(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn page_size_bounds() {
        let limit = |v: &str| parse(&pairs(&[("limit", v)]));
        assert_eq!(limit("1").unwrap().limit, 1);
        assert_eq!(limit("100").unwrap().limit, 100);
        for bad in ["0", "101", "ten", ""] {
            assert!(limit(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse(&[]).unwrap().limit, DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn filters_and_their_errors() {
        let query = parse(&pairs(&[
            ("project", "api"),
            ("environment", "prod"),
            ("status", "in_progress"),
            ("ref", "v1.2"),
        ]))
        .unwrap();
        assert_eq!(query.filter.project.as_deref(), Some("api"));
        assert_eq!(query.filter.status.as_deref(), Some("in_progress"));
        let errors = parse(&pairs(&[
            ("project", "API"),
            ("status", "done"),
            ("colour", "blue"),
            ("ref", "a b"),
            ("limit", "5"),
            ("limit", "6"),
        ]))
        .unwrap_err();
        let names: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(names, ["project", "status", "colour", "ref", "limit"]);
    }
}
