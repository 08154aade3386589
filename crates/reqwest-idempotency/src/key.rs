//! The `Idempotency-Key` request header: which requests get one, how a new one is written,
//! and how a key is read back from a header.

use reqwest::{
    Method,
    header::{HeaderName, HeaderValue},
};

/// The request header that carries the key.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header by which a server marks an answer replayed from an earlier attempt.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// How a generated key is written in the `Idempotency-Key` header.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyFormat {
    /// A Structured Field string, as `draft-ietf-httpapi-idempotency-key-header` defines the
    /// field: `Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"` (the default).
    #[default]
    Quoted,
    /// The bare value, as Stripe documents it: `Idempotency-Key: 8e03978e-...`. For servers
    /// that would take the quotes as part of the key.
    Bare,
}

impl KeyFormat {
    /// A new random key (a UUID v4) in this format.
    pub(crate) fn generate(self) -> HeaderValue {
        let uuid = uuid::Uuid::new_v4().hyphenated().to_string();
        let text = match self {
            Self::Quoted => format!("\"{uuid}\""),
            Self::Bare => uuid,
        };
        HeaderValue::from_str(&text).expect("a UUID is a valid header value")
    }
}

/// Whether requests with `method` get a key when they have none: POST and PATCH, the methods
/// that are neither safe nor idempotent.
pub(crate) fn wants_key(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PATCH
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2), so a request with it may be repeated
/// without a key: GET, HEAD, PUT, DELETE, OPTIONS, TRACE.
pub(crate) fn is_idempotent(method: &Method) -> bool {
    [
        Method::GET,
        Method::HEAD,
        Method::PUT,
        Method::DELETE,
        Method::OPTIONS,
        Method::TRACE,
    ]
    .contains(method)
}

/// The key a header value names: the content of a Structured Field string (`"abc"` → `abc`),
/// or the value itself when it is not quoted (as it was sent, lossily decoded if not UTF-8).
pub(crate) fn key_text(value: &HeaderValue) -> String {
    let raw = String::from_utf8_lossy(value.as_bytes());
    let trimmed = raw.trim_matches([' ', '\t']);
    unquote(trimmed).unwrap_or_else(|| trimmed.to_owned())
}

/// The content of a well-formed Structured Field string, escapes resolved.
fn unquote(value: &str) -> Option<String> {
    let inner = value.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                escaped @ ('"' | '\\') => out.push(escaped),
                _ => return None,
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_fresh_uuids_in_the_chosen_format() {
        let quoted = KeyFormat::default().generate();
        let text = quoted.to_str().unwrap();
        assert_eq!(text.len(), 38);
        assert!(text.starts_with('"') && text.ends_with('"'));
        let uuid = uuid::Uuid::parse_str(&key_text(&quoted)).unwrap();
        assert_eq!(uuid.get_version_num(), 4);

        let bare = KeyFormat::Bare.generate();
        assert_eq!(bare.len(), 36);
        assert_eq!(key_text(&bare), bare.to_str().unwrap());
        assert_ne!(KeyFormat::Bare.generate(), bare, "a new key each time");
    }

    #[test]
    fn key_text_unquotes_structured_field_strings_only() {
        let text = |v: &'static str| key_text(&HeaderValue::from_static(v));
        assert_eq!(text("\"order-42\""), "order-42");
        assert_eq!(text("order-42"), "order-42");
        assert_eq!(text(" \"a\\\"b\\\\c\" "), "a\"b\\c");
        // Not a well-formed string: kept as sent.
        assert_eq!(text("\"a\"b\""), "\"a\"b\"");
        assert_eq!(text("\"a\\x\""), "\"a\\x\"");
        assert_eq!(text("\"open"), "\"open");
        assert_eq!(text("\"\""), "");
    }

    #[test]
    fn methods() {
        for m in [Method::POST, Method::PATCH] {
            assert!(wants_key(&m) && !is_idempotent(&m), "{m}");
        }
        for m in ["GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"] {
            let m = Method::from_bytes(m.as_bytes()).unwrap();
            assert!(!wants_key(&m) && is_idempotent(&m), "{m}");
        }
        for m in [Method::CONNECT, Method::from_bytes(b"PURGE").unwrap()] {
            assert!(!wants_key(&m) && !is_idempotent(&m), "{m}");
        }
    }
}
