//! Request fingerprints: what makes a retry "the same request".
//!
//! A key reused for a different request is a client bug that must not be answered with the
//! first request's response. The fingerprint covers the method, path, query and body. JSON
//! bodies (by `Content-Type`) are canonicalised first, so a client that re-serialises its
//! payload with other whitespace or another object-key order still matches; any other body,
//! and JSON that does not parse, is compared byte for byte.

mod json;

use std::fmt;

use http::{HeaderMap, Method, Uri, header::CONTENT_TYPE};
use sha2::{Digest, Sha256};

/// A 128-bit digest of a request (method, path, query, body).
///
/// 128 bits are plenty: fingerprints are only ever compared for one record id, so the
/// question is never "does any pair collide" but "does this pair collide".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; Fingerprint::LEN]);

impl Fingerprint {
    /// Size in bytes.
    pub const LEN: usize = 16;

    /// Fingerprints a request from its parts and fully buffered body.
    pub fn of_request(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tower-idempotency fingerprint v1\0");
        hasher.update(method.as_str().as_bytes());
        hasher.update(b"\0");
        hasher.update(uri.path().as_bytes());
        hasher.update(b"\0");
        hasher.update(uri.query().unwrap_or("").as_bytes());
        hasher.update(b"\0");
        match is_json(headers).then(|| canonical_json(body)).flatten() {
            Some(canonical) => {
                hasher.update(b"json\0");
                hasher.update(&canonical);
            }
            None => {
                hasher.update(b"bytes\0");
                hasher.update(body);
            }
        }
        let digest = hasher.finalize();
        let mut bytes = [0; Self::LEN];
        bytes.copy_from_slice(&digest[..Self::LEN]);
        Self(bytes)
    }

    /// Rebuilds a fingerprint a store kept.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The raw digest, for stores.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, subtype)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (subtype.eq_ignore_ascii_case("json")
            || subtype
                .get(subtype.len().saturating_sub(5)..)
                .is_some_and(|tail| tail.eq_ignore_ascii_case("+json")))
}

/// Canonical form of a JSON document: no insignificant whitespace, object members sorted by
/// key, strings and numbers in one spelling. `None` when the bytes are not JSON (or nest
/// deeper than 128 levels), in which case the caller compares raw bytes.
///
/// ```
/// use tower_idempotency::fingerprint::canonical_json;
///
/// let a = canonical_json(br#"{"b": [1, 2], "a": {"y": true, "x": null}}"#).unwrap();
/// let b = canonical_json(br#"{"a":{"x":null,"y":true},"b":[1,2]}"#).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a, br#"{"a":{"x":null,"y":true},"b":[1,2]}"#);
/// assert!(canonical_json(b"{not json").is_none());
/// ```
pub fn canonical_json(body: &[u8]) -> Option<Vec<u8>> {
    json::canonicalize(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn json_headers(content_type: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        h
    }

    fn fp(method: Method, uri: &str, headers: &HeaderMap, body: &[u8]) -> Fingerprint {
        Fingerprint::of_request(&method, &uri.parse().unwrap(), headers, body)
    }

    #[test]
    fn json_bodies_ignore_whitespace_and_key_order() {
        let h = json_headers("application/json; charset=utf-8");
        let a = fp(
            Method::POST,
            "/d",
            &h,
            br#"{"a":1,"b":[true,{"d":2,"c":3}]}"#,
        );
        let b = fp(
            Method::POST,
            "/d",
            &h,
            b"{ \"b\" : [ true , {\"c\":3, \"d\":2} ],\n \"a\" : 1 }",
        );
        assert_eq!(a, b);
        let vendor = json_headers("application/vnd.api+json");
        assert_eq!(
            a,
            fp(
                Method::POST,
                "/d",
                &vendor,
                br#"{"b":[true,{"c":3,"d":2}],"a":1}"#
            )
        );
    }

    #[test]
    fn every_component_counts() {
        let h = json_headers("application/json");
        let base = fp(Method::POST, "/d?x=1", &h, br#"{"a":1}"#);
        assert_ne!(base, fp(Method::PATCH, "/d?x=1", &h, br#"{"a":1}"#));
        assert_ne!(base, fp(Method::POST, "/e?x=1", &h, br#"{"a":1}"#));
        assert_ne!(base, fp(Method::POST, "/d?x=2", &h, br#"{"a":1}"#));
        assert_ne!(base, fp(Method::POST, "/d", &h, br#"{"a":1}"#));
        assert_ne!(base, fp(Method::POST, "/d?x=1", &h, br#"{"a":2}"#));
        assert_ne!(base, fp(Method::POST, "/d?x=1", &h, br#"{"a":"1"}"#));
    }

    #[test]
    fn other_bodies_compare_as_bytes() {
        let text = json_headers("text/plain");
        assert_ne!(
            fp(Method::POST, "/d", &text, br#"{"a":1,"b":2}"#),
            fp(Method::POST, "/d", &text, br#"{"b":2,"a":1}"#)
        );
        let json = json_headers("application/json");
        assert_ne!(
            fp(Method::POST, "/d", &json, b"{broken"),
            fp(Method::POST, "/d", &json, b"{broken ")
        );
        assert_eq!(
            fp(Method::POST, "/d", &HeaderMap::new(), &[0, 159, 146, 150]),
            fp(Method::POST, "/d", &HeaderMap::new(), &[0, 159, 146, 150])
        );
    }

    #[test]
    fn deep_nesting_falls_back_to_bytes_without_panicking() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert!(canonical_json(deep.as_bytes()).is_none());
        let h = json_headers("application/json");
        let _ = fp(Method::POST, "/d", &h, deep.as_bytes());
    }

    #[test]
    fn content_type_detection() {
        assert!(is_json(&json_headers("application/json")));
        assert!(is_json(&json_headers("Application/JSON;charset=utf-8")));
        assert!(is_json(&json_headers("application/problem+json")));
        assert!(!is_json(&json_headers("application/jsonx")));
        assert!(!is_json(&json_headers("text/json5")));
        assert!(!is_json(&HeaderMap::new()));
    }
}
