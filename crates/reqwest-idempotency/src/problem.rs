//! [`Problem`]: an RFC 9457 `application/problem+json` answer, read.

use std::fmt;

use reqwest::{
    Response,
    header::{CONTENT_TYPE, HeaderMap},
};
use serde_json::Value;

/// The media type of problem answers.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The problem details (RFC 9457) a server sent with an error answer.
///
/// Members of the wrong JSON type are treated as absent, as RFC 9457 asks; extension
/// members other than `code` are in [`json`](Self::json).
///
/// ```
/// use reqwest_idempotency::Problem;
///
/// let problem = Problem::from_json(br#"{
///     "type": "https://api.example.com/problems/key-reused",
///     "title": "Idempotency-Key reused with a different request",
///     "status": 422,
///     "detail": "Use a new key for a new request.",
///     "code": "key_reused"
/// }"#).unwrap();
/// assert_eq!(problem.slug(), "key-reused");
/// assert_eq!(problem.status(), Some(422));
/// assert_eq!(problem.code(), Some("key_reused"));
/// assert_eq!(Problem::from_json(b"{}").unwrap().type_uri(), "about:blank");
/// assert!(Problem::from_json(b"[1]").is_none());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    type_uri: String,
    title: Option<String>,
    status: Option<u16>,
    detail: Option<String>,
    instance: Option<String>,
    code: Option<String>,
    json: String,
}

impl Problem {
    /// Reads `response`'s body as a problem, if the answer is `application/problem+json`
    /// (parameters and case aside) and its body a JSON object; `None` otherwise, or if the
    /// body cannot be read.
    pub async fn from_response(response: Response) -> Option<Self> {
        if !is_problem(response.headers()) {
            return None;
        }
        let body = response.bytes().await.ok()?;
        Self::from_json(&body)
    }

    /// Parses a problem document; `None` if `body` is not a JSON object.
    pub fn from_json(body: &[u8]) -> Option<Self> {
        let value: Value = serde_json::from_slice(body).ok()?;
        let object = value.as_object()?;
        let text = |name: &str| object.get(name)?.as_str().map(str::to_owned);
        Some(Self {
            type_uri: text("type").unwrap_or_else(|| "about:blank".to_owned()),
            title: text("title"),
            status: object
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            detail: text("detail"),
            instance: text("instance"),
            code: match object.get("code") {
                Some(Value::String(code)) => Some(code.clone()),
                Some(Value::Number(code)) => Some(code.to_string()),
                _ => None,
            },
            json: String::from_utf8_lossy(body).into_owned(),
        })
    }

    /// The `type` member: a URI naming the problem type; `about:blank` when absent.
    pub fn type_uri(&self) -> &str {
        &self.type_uri
    }

    /// The last segment of the `type` URI (after the last `/`, `:` or `#`), the stable name
    /// servers usually match on: `.../problems/key-in-use` → `key-in-use`.
    pub fn slug(&self) -> &str {
        self.type_uri
            .rsplit(['/', ':', '#'])
            .next()
            .unwrap_or(&self.type_uri)
    }

    /// The `title` member: a short summary of the problem type.
    pub fn title(&self) -> Option<&str> {
        self.title.as_deref()
    }

    /// The `status` member (the server's; the answer's own status may differ behind a proxy).
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// The `detail` member: what happened in this occurrence.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// The `instance` member: a URI naming this occurrence.
    pub fn instance(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// The `code` extension member some APIs add (a string, or a number as text).
    pub fn code(&self) -> Option<&str> {
        self.code.as_deref()
    }

    /// The whole document as received, for extension members (`errors`...): parse it with
    /// the JSON library of your choice.
    pub fn json(&self) -> &str {
        &self.json
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.title.as_deref().unwrap_or(&self.type_uri))?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

/// Whether `headers` declare an `application/problem+json` body.
pub(crate) fn is_problem(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(PROBLEM_JSON))
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn reads_every_member_and_ignores_wrong_types() {
        let p = Problem::from_json(
            br#"{"type":"urn:tower-idempotency:problem:key-in-use","title":"In use","status":409,
                "detail":"Still running.","instance":"/orders/1","code":7,"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(p.type_uri(), "urn:tower-idempotency:problem:key-in-use");
        assert_eq!(p.slug(), "key-in-use");
        assert_eq!(p.title(), Some("In use"));
        assert_eq!(p.status(), Some(409));
        assert_eq!(p.detail(), Some("Still running."));
        assert_eq!(p.instance(), Some("/orders/1"));
        assert_eq!(p.code(), Some("7"));
        assert!(p.json().contains("\"extra\":[1]"));
        assert_eq!(p.to_string(), "In use: Still running.");

        let odd =
            Problem::from_json(br#"{"type":3,"title":[],"status":"409","detail":null}"#).unwrap();
        assert_eq!(odd.type_uri(), "about:blank");
        assert_eq!(odd.slug(), "blank");
        assert_eq!(
            (odd.title(), odd.status(), odd.detail()),
            (None, None, None)
        );
        assert_eq!(odd.to_string(), "about:blank");
        assert_eq!(
            Problem::from_json(br#"{"status":70000}"#).unwrap().status(),
            None
        );
        assert!(Problem::from_json(b"not json").is_none());
        assert!(Problem::from_json(b"\"a string\"").is_none());
    }

    #[test]
    fn slug_of_each_uri_form() {
        let slug = |t: &str| {
            Problem::from_json(format!(r#"{{"type":"{t}"}}"#).as_bytes())
                .unwrap()
                .slug()
                .to_owned()
        };
        assert_eq!(slug("https://example.com/problems/not-found"), "not-found");
        assert_eq!(
            slug("https://example.com/probs#out-of-credit"),
            "out-of-credit"
        );
        assert_eq!(slug("urn:x:problem:store-full"), "store-full");
        assert_eq!(slug("plain"), "plain");
    }

    #[test]
    fn recognises_the_media_type() {
        let with = |v: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(CONTENT_TYPE, HeaderValue::from_static(v));
            is_problem(&h)
        };
        assert!(with("application/problem+json"));
        assert!(with("Application/Problem+JSON; charset=utf-8"));
        assert!(!with("application/json"));
        assert!(!with("application/problem+xml"));
        assert!(!is_problem(&HeaderMap::new()));
    }
}
