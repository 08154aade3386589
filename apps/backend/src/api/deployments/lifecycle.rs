//! The lifecycle of a deployment: its states, which moves between them are allowed, and the
//! body of `POST /api/deployments/{id}/statuses`.
//!
//! `queued -> in_progress -> success | failure | error`, `queued -> error` (it could not
//! start), and `cancelled` from either non-final state. A state is never entered twice, so
//! a runner retrying a report that took effect gets 409 however its idempotency record
//! fared, and a deployment has at most three statuses.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::input::validate_description;
use crate::error::{AppError, FieldError};

const LOG_URL_MAX: usize = 2048;

/// Lifecycle state of a deployment. New deployments are `queued`; `success`, `failure`,
/// `error` and `cancelled` are final.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeploymentStatus {
    /// Accepted, waiting for a runner.
    Queued,
    /// A runner is deploying it.
    InProgress,
    /// Deployed.
    Success,
    /// The deployment itself failed (a failing health check, say).
    Failure,
    /// The runner could not carry it out.
    Error,
    /// Stopped on request.
    Cancelled,
}

impl DeploymentStatus {
    const ALL: [Self; 6] = [
        Self::Queued,
        Self::InProgress,
        Self::Success,
        Self::Failure,
        Self::Error,
        Self::Cancelled,
    ];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::InProgress => "in_progress",
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Error => "error",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state spelt `text`, as stored and as the API spells it.
    pub(crate) fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == text)
    }

    /// Whether no status can follow this one.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Self::Success | Self::Failure | Self::Error | Self::Cancelled
        )
    }

    /// Checks the move from `self` to `next`: 409 `deployment-finished` after a final
    /// state, 409 `invalid-transition` for any other move the lifecycle does not have.
    pub fn check_transition(self, next: Self) -> Result<(), AppError> {
        if self.is_final() {
            return Err(AppError::DeploymentFinished(self.as_str()));
        }
        let allowed = match self {
            Self::Queued => matches!(next, Self::InProgress | Self::Error | Self::Cancelled),
            _ => next.is_final(),
        };
        if allowed {
            Ok(())
        } else {
            Err(AppError::InvalidTransition {
                from: self.as_str(),
                to: next.as_str(),
            })
        }
    }
}

/// The body of `POST /api/deployments/{id}/statuses`. Unknown members are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "state": "in_progress",
    "description": "Rolling out to 3 of 12 hosts",
    "log_url": "https://ci.example.com/runs/4711"
}))]
pub struct NewStatusInput {
    /// The state the deployment moves to.
    pub state: DeploymentStatus,
    /// Optional free text, at most 1000 characters, no NUL.
    #[serde(default)]
    #[schema(max_length = 1000, pattern = r"^[^\u0000]*$")]
    pub description: Option<String>,
    /// Optional link to the runner's log: an `http://` or `https://` URL of visible ASCII
    /// characters, at most 2048 long.
    #[serde(default)]
    #[schema(max_length = 2048, pattern = r"^https?://[\x21-\x7e]+$")]
    pub log_url: Option<String>,
}

impl NewStatusInput {
    /// Reads and validates a request body, collecting every invalid field.
    pub fn from_json(body: Value) -> Result<Self, AppError> {
        let Value::Object(mut members) = body else {
            return Err(AppError::MalformedBody(
                "The request body must be a JSON object.".to_owned(),
            ));
        };
        let mut errors = Vec::new();
        let state = match members.remove("state") {
            Some(Value::String(text)) => {
                let state = DeploymentStatus::parse(&text);
                if state.is_none() {
                    errors.push(FieldError::new(
                        "state",
                        "must be one of queued, in_progress, success, failure, error, cancelled",
                    ));
                }
                state
            }
            None | Some(Value::Null) => {
                errors.push(FieldError::new("state", "is required"));
                None
            }
            Some(_) => {
                errors.push(FieldError::new("state", "must be a string"));
                None
            }
        };
        let description = optional_string(&mut members, "description", &mut errors, |text| {
            validate_description(text)
        });
        let log_url = optional_string(&mut members, "log_url", &mut errors, validate_log_url);
        errors.extend(
            members
                .keys()
                .map(|name| FieldError::new(name.as_str(), "unknown field")),
        );
        match (state, description, log_url) {
            (Some(state), Some(description), Some(log_url)) if errors.is_empty() => Ok(Self {
                state,
                description,
                log_url,
            }),
            _ => Err(AppError::Validation(errors)),
        }
    }
}

/// `Some(value)` when the member is absent, null or a valid string; `None` (with an error)
/// otherwise.
fn optional_string(
    members: &mut serde_json::Map<String, Value>,
    field: &str,
    errors: &mut Vec<FieldError>,
    validate: impl Fn(&str) -> Result<(), String>,
) -> Option<Option<String>> {
    match members.remove(field) {
        None | Some(Value::Null) => Some(None),
        Some(Value::String(text)) => match validate(&text) {
            Ok(()) => Some(Some(text)),
            Err(message) => {
                errors.push(FieldError::new(field, message));
                None
            }
        },
        Some(_) => {
            errors.push(FieldError::new(field, "must be a string or null"));
            None
        }
    }
}

fn validate_log_url(value: &str) -> Result<(), String> {
    let rest = value
        .strip_prefix("https://")
        .or_else(|| value.strip_prefix("http://"));
    match rest {
        Some(rest)
            if !rest.is_empty()
                && value.len() <= LOG_URL_MAX
                && rest.bytes().all(|b| (0x21..=0x7e).contains(&b)) =>
        {
            Ok(())
        }
        _ => Err(format!(
            "must be an http:// or https:// URL of visible ASCII characters, at most \
             {LOG_URL_MAX} long"
        )),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{DeploymentStatus::*, *};

    #[test]
    fn transitions() {
        for (from, to) in [
            (Queued, InProgress),
            (Queued, Error),
            (Queued, Cancelled),
            (InProgress, Success),
            (InProgress, Failure),
            (InProgress, Error),
            (InProgress, Cancelled),
        ] {
            assert!(from.check_transition(to).is_ok(), "{from:?} -> {to:?}");
        }
        for (from, to) in [
            (Queued, Queued),
            (Queued, Success),
            (InProgress, InProgress),
            (InProgress, Queued),
        ] {
            assert!(
                matches!(
                    from.check_transition(to),
                    Err(AppError::InvalidTransition { .. })
                ),
                "{from:?} -> {to:?}"
            );
        }
        for from in [Success, Failure, Error, Cancelled] {
            for to in DeploymentStatus::ALL {
                assert!(matches!(
                    from.check_transition(to),
                    Err(AppError::DeploymentFinished(_))
                ));
            }
        }
    }

    #[test]
    fn states_round_trip() {
        for state in DeploymentStatus::ALL {
            assert_eq!(DeploymentStatus::parse(state.as_str()), Some(state));
            assert_eq!(serde_json::to_value(state).unwrap(), json!(state.as_str()));
        }
    }

    #[test]
    fn status_bodies() {
        let input = NewStatusInput::from_json(json!({"state": "in_progress"})).unwrap();
        assert_eq!(input.state, InProgress);
        assert!(
            NewStatusInput::from_json(json!({
                "state": "success", "description": null, "log_url": "https://ci.example.com/1"
            }))
            .is_ok()
        );
        for bad in [
            json!({}),
            json!({"state": "done"}),
            json!({"state": 1}),
            json!({"state": "success", "log_url": "ftp://x"}),
            json!({"state": "success", "log_url": "https://"}),
            json!({"state": "success", "log_url": "https://a b"}),
            json!({"state": "success", "colour": "blue"}),
        ] {
            assert!(
                matches!(
                    NewStatusInput::from_json(bad.clone()),
                    Err(AppError::Validation(_))
                ),
                "{bad}"
            );
        }
    }
}
