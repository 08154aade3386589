//! What the client says on stderr: why an attempt failed, why it gave up, what the server
//! refused. Pure text from what the middleware reports, so each wording is unit-tested.

use std::{error::Error as StdError, fmt::Write as _, time::Duration};

use reqwest::StatusCode;
use reqwest_idempotency::{
    AttemptOutcome, AttemptReport, Decision, LastFailure, Problem, reqwest_middleware,
};
use serde::Deserialize;

use crate::error::FieldError;

/// The line for an attempt that is retried (`None` for a final one: the caller reports it).
pub fn retry_line(
    report: &AttemptReport<'_>,
    max_attempts: u32,
    timeout: Duration,
) -> Option<String> {
    let Some(Decision::Retry(wait)) = report.decision else {
        return None;
    };
    let why = match &report.outcome {
        AttemptOutcome::Answer { status, .. } => answered(*status),
        AttemptOutcome::Error(reqwest_middleware::Error::Reqwest(error)) => {
            transport(error, timeout)
        }
        AttemptOutcome::Error(error) => root_cause(*error),
        AttemptOutcome::DeadlineElapsed => "the deadline passed".to_owned(),
        _ => "it failed".to_owned(),
    };
    let key = if report.key.is_some() {
        " with the same idempotency key"
    } else {
        ""
    };
    Some(format!(
        "retry: attempt {} of {max_attempts} failed: {why}; retrying in {}{key}",
        report.attempt,
        millis(wait)
    ))
}

/// Why the last attempt failed, when the client gave up.
pub fn last_failure(last: &LastFailure, timeout: Duration) -> String {
    match last {
        LastFailure::Status { status, problem } => {
            let mut text = answered(*status);
            if let Some(problem) = problem {
                let _ = write!(text, " ({problem})");
            }
            text
        }
        LastFailure::Transport(error) => transport(error, timeout),
        LastFailure::DeadlineElapsed => {
            "the deadline passed while it waited for the answer".to_owned()
        }
        _ => "it failed".to_owned(),
    }
}

/// A transport failure in the words of what the user can check.
pub fn transport(error: &reqwest::Error, timeout: Duration) -> String {
    if error.is_timeout() {
        format!("no answer within {}", millis(timeout))
    } else if error.is_connect() {
        format!("cannot connect ({})", root_cause(error))
    } else {
        format!(
            "the connection failed before the answer arrived ({})",
            root_cause(error)
        )
    }
}

/// What a transient answer means.
fn answered(status: StatusCode) -> String {
    let meaning = match status.as_u16() {
        409 => " (a request with this key is still running)",
        429 => " (too many requests)",
        503 => " (the server cannot serve it now)",
        _ => "",
    };
    format!("the server answered {status}{meaning}")
}

/// The lines for a final refusal: the problem's title and detail (and its invalid fields),
/// or the status and the start of the body when it is no problem document.
pub fn refused(status: StatusCode, problem: Option<&Problem>, body: &[u8]) -> String {
    let mut text = match problem {
        Some(problem) => {
            let title = problem.title().unwrap_or(problem.type_uri());
            let mut text = format!("error: {title} ({status})");
            if let Some(detail) = problem.detail() {
                let _ = write!(text, ": {detail}");
            }
            for field in field_errors(problem) {
                let _ = write!(text, "\n  {}: {}", field.field, field.message);
            }
            text
        }
        None => {
            let mut text = format!("error: the server refused the request: {status}");
            let body = String::from_utf8_lossy(body);
            let body = body.trim();
            if !body.is_empty() {
                let start: String = body.chars().take(300).collect();
                let _ = write!(text, "\n  {start}");
            }
            text
        }
    };
    if status == StatusCode::UNAUTHORIZED {
        text.push_str(
            "\nThe token was not accepted: check --token or BACKEND_TOKEN (mint one with \
             `backend token create USER`).",
        );
    }
    text
}

/// The `errors` member of a problem (`validation-failed`, `invalid-parameter`).
fn field_errors(problem: &Problem) -> Vec<FieldError> {
    #[derive(Deserialize)]
    struct WithErrors {
        #[serde(default)]
        errors: Vec<FieldError>,
    }
    serde_json::from_str::<WithErrors>(problem.json())
        .map(|p| p.errors)
        .unwrap_or_default()
}

/// The innermost cause of `error` ("Connection refused (os error 111)"), the part that
/// tells what happened; reqwest's outer layers only repeat the URL.
pub fn root_cause(error: &(dyn StdError + 'static)) -> String {
    let mut cause = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    cause.to_string()
}

/// `wait` rounded to milliseconds, in humantime's spelling (`1s 250ms`).
pub fn millis(wait: Duration) -> String {
    let rounded = Duration::from_millis(u64::try_from(wait.as_millis()).unwrap_or(u64::MAX));
    humantime::format_duration(rounded).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(json: &str) -> Problem {
        Problem::from_json(json.as_bytes()).unwrap()
    }

    #[test]
    fn validation_problems_list_their_fields() {
        let p = problem(
            r#"{"type":"https://deployments.example.com/problems/validation-failed",
                "title":"Invalid deployment","status":422,
                "detail":"The request body has 2 invalid fields.",
                "errors":[{"field":"project","message":"is required"},
                          {"field":"ref","message":"must be 1-255 characters long"}]}"#,
        );
        assert_eq!(
            refused(StatusCode::UNPROCESSABLE_ENTITY, Some(&p), b""),
            "error: Invalid deployment (422 Unprocessable Entity): The request body has 2 \
             invalid fields.\n  project: is required\n  ref: must be 1-255 characters long"
        );
    }

    #[test]
    fn unauthenticated_says_what_to_check() {
        let p = problem(r#"{"title":"Authentication required","status":401,"detail":"x"}"#);
        let text = refused(StatusCode::UNAUTHORIZED, Some(&p), b"");
        assert!(text.starts_with("error: Authentication required (401 Unauthorized): x\n"));
        assert!(text.contains("BACKEND_TOKEN"), "{text}");
    }

    #[test]
    fn a_refusal_without_a_problem_shows_the_body() {
        assert_eq!(
            refused(StatusCode::NOT_FOUND, None, b"  no such page\n"),
            "error: the server refused the request: 404 Not Found\n  no such page"
        );
        assert_eq!(
            refused(StatusCode::GONE, None, b""),
            "error: the server refused the request: 410 Gone"
        );
    }

    #[test]
    fn transient_answers_and_waits() {
        let last = LastFailure::Status {
            status: StatusCode::SERVICE_UNAVAILABLE,
            problem: Some(problem(
                r#"{"title":"Database unavailable","detail":"Retry later."}"#,
            )),
        };
        assert_eq!(
            last_failure(&last, Duration::from_secs(10)),
            "the server answered 503 Service Unavailable (the server cannot serve it now) \
             (Database unavailable: Retry later.)"
        );
        assert_eq!(
            last_failure(&LastFailure::DeadlineElapsed, Duration::ZERO),
            "the deadline passed while it waited for the answer"
        );
        assert_eq!(millis(Duration::from_micros(1_250_400)), "1s 250ms");
        assert_eq!(millis(Duration::ZERO), "0s");
    }

    #[test]
    fn root_causes() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(root_cause(&io), "refused");
    }
}
