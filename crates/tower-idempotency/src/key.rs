//! The `Idempotency-Key` request header.
//!
//! `draft-ietf-httpapi-idempotency-key-header` defines the field as a Structured Field
//! string (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`). Many clients send the
//! bare value instead (`Idempotency-Key: 8e03978e-...`), as Stripe documents it, so both forms
//! are accepted and name the same key: `"abc"` and `abc` are one key.

use std::fmt;

use http::{HeaderMap, HeaderName};

/// The request header that carries the key.
pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");

/// The response header set on every replayed response.
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Longest accepted key, in characters (the unescaped content of the header).
pub const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1 to [`MAX_KEY_LEN`] printable ASCII characters.
///
/// The layer inserts it into the request extensions before calling the inner service, so a
/// handler can persist it (for example in a unique database column, as a second line of
/// defence behind the store).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(Box<str>);

impl IdempotencyKey {
    /// Parses one header value, in either accepted form.
    ///
    /// ```
    /// use tower_idempotency::IdempotencyKey;
    ///
    /// let quoted = IdempotencyKey::parse(br#""order-42""#).unwrap();
    /// let bare = IdempotencyKey::parse(b"order-42").unwrap();
    /// assert_eq!(quoted, bare);
    /// assert_eq!(bare.as_str(), "order-42");
    /// assert!(IdempotencyKey::parse(b"").is_err());
    /// assert!(IdempotencyKey::parse(br#""a", "b""#).is_err());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, KeyError> {
        let value = trim_ows(value);
        if value.is_empty() {
            return Err(KeyError::Empty);
        }
        let key = if value[0] == b'"' {
            parse_sf_string(value)?
        } else {
            parse_bare(value)?
        };
        match key.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(Self(key.into_boxed_str())),
        }
    }

    /// Reads the key from request headers: `Ok(None)` when the header is absent.
    ///
    /// More than one `Idempotency-Key` field line is an error: intermediaries may merge them
    /// into a list, and which one the client meant is unknowable.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(&IDEMPOTENCY_KEY).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::MultipleFields);
        }
        Self::parse(first.as_bytes()).map(Some)
    }

    /// The key's characters, unescaped.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("IdempotencyKey").field(&&*self.0).finish()
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why an `Idempotency-Key` header was rejected (each becomes a 400 problem response).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyError {
    /// The value is empty (or an empty quoted string).
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    TooLong,
    /// The key contains a control character, whitespace or a non-ASCII byte.
    InvalidCharacter,
    /// The value is a list (`"a", "b"`), not a single key.
    List,
    /// The request carries the header more than once.
    MultipleFields,
    /// A quoted value is not a well-formed Structured Field string, or carries parameters.
    Malformed,
}

impl KeyError {
    /// A sentence for the problem's `detail` member.
    pub fn describe(self) -> &'static str {
        match self {
            Self::Empty => "The Idempotency-Key header is empty.",
            Self::TooLong => "The Idempotency-Key is longer than 255 characters.",
            Self::InvalidCharacter => {
                "The Idempotency-Key may only contain printable ASCII characters (no spaces or control characters)."
            }
            Self::List => "The Idempotency-Key header must carry one key, not a list.",
            Self::MultipleFields => "The request carries more than one Idempotency-Key header.",
            Self::Malformed => {
                "The Idempotency-Key is not a valid Structured Field string (RFC 8941) or bare token."
            }
        }
    }
}

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl std::error::Error for KeyError {}

fn trim_ows(mut value: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = value {
        value = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = value {
        value = rest;
    }
    value
}

/// RFC 8941 §4.2.5: `"` then printable ASCII with `\"` and `\\` escapes, then `"`.
fn parse_sf_string(value: &[u8]) -> Result<String, KeyError> {
    let mut out = String::with_capacity(value.len());
    let mut bytes = value[1..].iter();
    loop {
        match bytes.next() {
            None => return Err(KeyError::Malformed),
            Some(b'"') => break,
            Some(b'\\') => match bytes.next() {
                Some(&c @ (b'"' | b'\\')) => out.push(char::from(c)),
                _ => return Err(KeyError::Malformed),
            },
            Some(&c @ 0x20..=0x7e) => out.push(char::from(c)),
            Some(_) => return Err(KeyError::InvalidCharacter),
        }
        if out.len() > MAX_KEY_LEN {
            return Err(KeyError::TooLong);
        }
    }
    match trim_ows(bytes.as_slice()) {
        [] => Ok(out),
        [b',', ..] => Err(KeyError::List),
        _ => Err(KeyError::Malformed),
    }
}

/// A bare key: visible ASCII without `"` (it would be a broken string) and `,` (a list).
fn parse_bare(value: &[u8]) -> Result<String, KeyError> {
    if value.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    for &c in value {
        match c {
            b',' => return Err(KeyError::List),
            b'"' => return Err(KeyError::Malformed),
            0x21..=0x7e => {}
            _ => return Err(KeyError::InvalidCharacter),
        }
    }
    // Every byte is ASCII, so this cannot fail; map instead of unwrapping all the same.
    String::from_utf8(value.to_vec()).map_err(|_| KeyError::InvalidCharacter)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn accepts_both_forms_as_the_same_key() {
        for raw in [
            &b"abc-123"[..],
            b"\"abc-123\"",
            b"  \"abc-123\"\t",
            b" abc-123 ",
        ] {
            assert_eq!(IdempotencyKey::parse(raw).unwrap().as_str(), "abc-123");
        }
    }

    #[test]
    fn unescapes_structured_field_strings() {
        let key = IdempotencyKey::parse(br#""a\"b\\c d""#).unwrap();
        assert_eq!(key.as_str(), r#"a"b\c d"#);
    }

    #[test]
    fn length_limits() {
        let max = "k".repeat(MAX_KEY_LEN);
        assert!(IdempotencyKey::parse(max.as_bytes()).is_ok());
        assert!(IdempotencyKey::parse(format!("\"{max}\"").as_bytes()).is_ok());
        let over = "k".repeat(MAX_KEY_LEN + 1);
        assert_eq!(
            IdempotencyKey::parse(over.as_bytes()),
            Err(KeyError::TooLong)
        );
        assert_eq!(
            IdempotencyKey::parse(format!("\"{over}\"").as_bytes()),
            Err(KeyError::TooLong)
        );
        assert_eq!(IdempotencyKey::parse(b""), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse(b"  "), Err(KeyError::Empty));
        assert_eq!(IdempotencyKey::parse(b"\"\""), Err(KeyError::Empty));
    }

    #[test]
    fn rejects_bad_characters_lists_and_malformed_strings() {
        assert_eq!(
            IdempotencyKey::parse(b"a b"),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            IdempotencyKey::parse(b"a\x01b"),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            IdempotencyKey::parse(b"caf\xc3\xa9"),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(
            IdempotencyKey::parse(b"\"a\tb\""),
            Err(KeyError::InvalidCharacter)
        );
        assert_eq!(IdempotencyKey::parse(b"a,b"), Err(KeyError::List));
        assert_eq!(IdempotencyKey::parse(b"\"a\", \"b\""), Err(KeyError::List));
        assert_eq!(IdempotencyKey::parse(b"\"abc"), Err(KeyError::Malformed));
        assert_eq!(
            IdempotencyKey::parse(b"\"a\\nb\""),
            Err(KeyError::Malformed)
        );
        assert_eq!(
            IdempotencyKey::parse(b"\"a\";p=1"),
            Err(KeyError::Malformed)
        );
        assert_eq!(IdempotencyKey::parse(b"ab\"c"), Err(KeyError::Malformed));
    }

    #[test]
    fn from_headers_rejects_repeated_fields() {
        let mut headers = HeaderMap::new();
        assert_eq!(IdempotencyKey::from_headers(&headers), Ok(None));
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("one"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers)
                .unwrap()
                .unwrap()
                .as_str(),
            "one"
        );
        headers.append(&IDEMPOTENCY_KEY, HeaderValue::from_static("two"));
        assert_eq!(
            IdempotencyKey::from_headers(&headers),
            Err(KeyError::MultipleFields)
        );
    }
}
