//! RFC 9457 `application/problem+json` answers.
//!
//! Every request the layer refuses gets one, with a stable `type` made of a configurable
//! base and a fixed slug (see [`ProblemKind::slug`]). The whole response can be replaced with
//! [`IdempotencyLayer::problem_responder`](crate::IdempotencyLayer::problem_responder).
//!
//! | slug | status | when |
//! |---|---|---|
//! | `key-required` | 400 | the route requires a key and the request has none |
//! | `key-invalid` | 400 | the `Idempotency-Key` header is malformed, too long, repeated or a list |
//! | `request-unreadable` | 400 | the request body could not be read |
//! | `scope-missing` | 401 | a keyed request carries no scope (no authenticated user) |
//! | `request-too-large` | 413 | the body exceeds the request limit; nothing was executed |
//! | `key-in-use` | 409 | the first request with this key is still running (`Retry-After`) |
//! | `key-reused` | 422 | the key was used for a different request (method, path, query or body) |
//! | `response-not-kept` | 410 | the first request ran, but its response could not be kept (too large, no room in the store, or it broke off) |
//! | `store-unavailable` | 503 | the idempotency store cannot be reached (`Retry-After`) |
//! | `store-full` | 503 | the store has no room it may free (`Retry-After`) |
//! | `handler-failed` | 500 | the handler panicked; the key was released |
//! | `response-failed` | 500 | the handler ran, but its response body failed before it was complete; retries get `response-not-kept` |
//! | `record-corrupt` | 500 | a stored response could not be decoded |
//! | `transaction-failed` | 503 | transactional mode: the commit was refused and rolled back; nothing took effect (`Retry-After`) |
//! | `outcome-unknown` | 503 | transactional mode: the connection broke during `COMMIT`; the retry replays or executes (`Retry-After`) |
//! | `handler-timed-out` | 503 | transactional mode: the handler outran its transaction's time limit and was rolled back (`Retry-After`) |

use std::{fmt, time::Duration};

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};

use crate::key::KeyError;

/// The default base of every problem `type`: `urn:tower-idempotency:problem:<slug>`.
pub const DEFAULT_TYPE_BASE: &str = "urn:tower-idempotency:problem:";

/// The media type of problem responses.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Which condition a [`Problem`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// The route requires a key and the request has none (400).
    KeyRequired,
    /// The `Idempotency-Key` header is invalid (400).
    KeyInvalid(KeyError),
    /// The request body could not be read (400).
    RequestUnreadable,
    /// A keyed request carries no scope (401).
    ScopeMissing,
    /// The request body exceeds the limit (413).
    RequestTooLarge,
    /// The first request with this key is still running (409).
    KeyInUse,
    /// The key was used for a different request (422).
    KeyReused,
    /// The first request ran but its response could not be kept (410).
    ResponseNotKept,
    /// The store cannot be reached (503).
    StoreUnavailable,
    /// The store has no room it may free (503).
    StoreFull,
    /// The handler panicked (500).
    HandlerFailed,
    /// The handler ran, but its response body failed mid-stream (500).
    ResponseFailed,
    /// A stored response could not be decoded (500).
    RecordCorrupt,
    /// Transactional mode: the transaction holding the handler's writes and the record
    /// failed to commit and was rolled back; nothing took effect (503).
    TransactionFailed,
    /// Transactional mode: the connection broke during `COMMIT`, so whether the request took
    /// effect is unknown; a retry with the same key finds out (503).
    OutcomeUnknown,
    /// Transactional mode: the handler ran longer than its transaction may stay open; it was
    /// rolled back (503).
    HandlerTimedOut,
}

impl ProblemKind {
    /// The stable slug that ends the problem's `type`.
    pub fn slug(self) -> &'static str {
        match self {
            Self::KeyRequired => "key-required",
            Self::KeyInvalid(_) => "key-invalid",
            Self::RequestUnreadable => "request-unreadable",
            Self::ScopeMissing => "scope-missing",
            Self::RequestTooLarge => "request-too-large",
            Self::KeyInUse => "key-in-use",
            Self::KeyReused => "key-reused",
            Self::ResponseNotKept => "response-not-kept",
            Self::StoreUnavailable => "store-unavailable",
            Self::StoreFull => "store-full",
            Self::HandlerFailed => "handler-failed",
            Self::ResponseFailed => "response-failed",
            Self::RecordCorrupt => "record-corrupt",
            Self::TransactionFailed => "transaction-failed",
            Self::OutcomeUnknown => "outcome-unknown",
            Self::HandlerTimedOut => "handler-timed-out",
        }
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> StatusCode {
        match self {
            Self::KeyRequired | Self::KeyInvalid(_) | Self::RequestUnreadable => {
                StatusCode::BAD_REQUEST
            }
            Self::ScopeMissing => StatusCode::UNAUTHORIZED,
            Self::RequestTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::KeyInUse => StatusCode::CONFLICT,
            Self::KeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            Self::ResponseNotKept => StatusCode::GONE,
            Self::StoreUnavailable
            | Self::StoreFull
            | Self::TransactionFailed
            | Self::OutcomeUnknown
            | Self::HandlerTimedOut => StatusCode::SERVICE_UNAVAILABLE,
            Self::HandlerFailed | Self::ResponseFailed | Self::RecordCorrupt => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
        }
    }

    /// A short, human-readable summary that does not change between occurrences.
    pub fn title(self) -> &'static str {
        match self {
            Self::KeyRequired => "Idempotency-Key required",
            Self::KeyInvalid(_) => "Invalid Idempotency-Key",
            Self::RequestUnreadable => "Request body unreadable",
            Self::ScopeMissing => "Authentication required for idempotent requests",
            Self::RequestTooLarge => "Request body too large",
            Self::KeyInUse => "Request with this Idempotency-Key in progress",
            Self::KeyReused => "Idempotency-Key reused with a different request",
            Self::ResponseNotKept => "Original response not kept",
            Self::StoreUnavailable => "Idempotency store unavailable",
            Self::StoreFull => "Idempotency store full",
            Self::HandlerFailed => "Request handler failed",
            Self::ResponseFailed => "Response failed after the request was executed",
            Self::RecordCorrupt => "Stored response unreadable",
            Self::TransactionFailed => "Request rolled back",
            Self::OutcomeUnknown => "Request outcome unknown",
            Self::HandlerTimedOut => "Request took too long and was rolled back",
        }
    }

    fn detail(self) -> &'static str {
        match self {
            Self::KeyRequired => "This endpoint requires an Idempotency-Key header.",
            Self::KeyInvalid(e) => e.describe(),
            Self::RequestUnreadable => "The request body could not be read to the end.",
            Self::ScopeMissing => {
                "Idempotency keys are scoped per user; authenticate the request to use one."
            }
            Self::RequestTooLarge => {
                "The request body exceeds the size limit; the request was not executed."
            }
            Self::KeyInUse => {
                "A request with this Idempotency-Key is still being processed. Retry after the interval in Retry-After to receive its response."
            }
            Self::KeyReused => {
                "This Idempotency-Key was already used for a request with a different method, path, query or body. Use a new key for a new request."
            }
            Self::ResponseNotKept => {
                "The request with this Idempotency-Key was executed, but its response could not be kept for replay. It will not be executed again."
            }
            Self::StoreUnavailable => {
                "Request deduplication is temporarily unavailable, so the request was not executed. Retry later with the same key."
            }
            Self::StoreFull => {
                "Request deduplication has no room for new keys right now, so the request was not executed. Retry later with the same key."
            }
            Self::HandlerFailed => {
                "The request failed unexpectedly. The key was released; retry with the same key."
            }
            Self::ResponseFailed => {
                "The request was executed, but its response broke off before it was complete. It will not be executed again with this key; a retry learns that it ran (410 response-not-kept)."
            }
            Self::RecordCorrupt => {
                "The stored response for this Idempotency-Key could not be read."
            }
            Self::TransactionFailed => {
                "The request's changes could not be committed and were rolled back: nothing took effect. Retry later with the same key."
            }
            Self::OutcomeUnknown => {
                "The connection to the database broke while the request's changes were being committed, so they may or may not have taken effect. Retry with the same key: the retry replays the response if they did, and executes the request if they did not."
            }
            Self::HandlerTimedOut => {
                "The request ran longer than allowed and was rolled back: nothing took effect. Retry later with the same key."
            }
        }
    }
}

/// One refused request, as handed to a custom
/// [`problem_responder`](crate::IdempotencyLayer::problem_responder).
#[derive(Debug, Clone)]
pub struct Problem {
    kind: ProblemKind,
    type_uri: String,
    retry_after: Option<Duration>,
}

impl Problem {
    pub(crate) fn new(kind: ProblemKind, type_base: &str, retry_after: Option<Duration>) -> Self {
        Self {
            kind,
            type_uri: format!("{type_base}{}", kind.slug()),
            retry_after,
        }
    }

    /// What was wrong.
    pub fn kind(&self) -> ProblemKind {
        self.kind
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.kind.status()
    }

    /// The full `type` URI.
    pub fn type_uri(&self) -> &str {
        &self.type_uri
    }

    /// The `title` member.
    pub fn title(&self) -> &'static str {
        self.kind.title()
    }

    /// The `detail` member.
    pub fn detail(&self) -> &'static str {
        self.kind.detail()
    }

    /// When the client should retry (sent as `Retry-After`, in whole seconds, at least 1).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The `application/problem+json` body, members in RFC 9457's order.
    pub fn to_json(&self) -> Bytes {
        let string = |s: &str| serde_json::Value::from(s).to_string();
        Bytes::from(format!(
            r#"{{"type":{},"title":{},"status":{},"detail":{}}}"#,
            string(&self.type_uri),
            string(self.title()),
            self.status().as_u16(),
            string(self.detail()),
        ))
    }

    /// The default answer: status, `Content-Type: application/problem+json`, `Retry-After`
    /// where it applies, and [`to_json`](Self::to_json) as the body.
    pub fn to_response(&self) -> Response<Bytes> {
        let mut response = Response::new(self.to_json());
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(after) = self.retry_after {
            let secs = after
                .as_secs()
                .saturating_add(u64::from(after.subsec_nanos() > 0));
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        response
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.title(), self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_rfc9457_members_and_retry_after() {
        let p = Problem::new(
            ProblemKind::KeyInUse,
            DEFAULT_TYPE_BASE,
            Some(Duration::from_millis(1500)),
        );
        let response = p.to_response();
        assert_eq!(response.status(), StatusCode::CONFLICT);
        assert_eq!(response.headers()[header::CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(response.headers()[header::RETRY_AFTER], "2");
        assert!(
            response
                .body()
                .starts_with(br#"{"type":"urn:tower-idempotency:problem:key-in-use","title":"#)
        );
        let json: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
        assert_eq!(json["type"], "urn:tower-idempotency:problem:key-in-use");
        assert_eq!(json["status"], 409);
        assert_eq!(json["title"], ProblemKind::KeyInUse.title());
    }

    #[test]
    fn slugs_are_distinct() {
        let kinds = [
            ProblemKind::KeyRequired,
            ProblemKind::KeyInvalid(KeyError::Empty),
            ProblemKind::RequestUnreadable,
            ProblemKind::ScopeMissing,
            ProblemKind::RequestTooLarge,
            ProblemKind::KeyInUse,
            ProblemKind::KeyReused,
            ProblemKind::ResponseNotKept,
            ProblemKind::StoreUnavailable,
            ProblemKind::StoreFull,
            ProblemKind::HandlerFailed,
            ProblemKind::ResponseFailed,
            ProblemKind::RecordCorrupt,
            ProblemKind::TransactionFailed,
            ProblemKind::OutcomeUnknown,
            ProblemKind::HandlerTimedOut,
        ];
        let mut slugs: Vec<_> = kinds.iter().map(|k| k.slug()).collect();
        slugs.sort_unstable();
        slugs.dedup();
        assert_eq!(slugs.len(), kinds.len());
    }
}
