//! Request fingerprints: what makes a retry "the same request".
//!
//! A key reused for a different request is a client bug that must not be answered with the
//! first request's response. The fingerprint covers the method, the path and query of the
//! request target *as the client sent it* (see [`OriginalTarget`]), and the body. JSON
//! bodies (by `Content-Type`) are canonicalised first, so a client that re-serialises its
//! payload with other whitespace, another object-key order or another spelling of the same
//! number (`1`, `1.0`, `1e0`) still matches, while numbers that differ in any digit never
//! do (they are compared as exact decimals, never through `f64`); any other body, and JSON
//! that does not parse, is compared byte for byte.

mod json;

use std::fmt;

use http::{HeaderMap, Method, Uri, header::CONTENT_TYPE, request::Parts};
use sha2::{Digest, Sha256};

/// The request target as the client sent it, for fingerprinting.
///
/// Routers that strip a prefix before the layer runs (axum's `Router::nest`, or any
/// middleware that rewrites `parts.uri`) would otherwise make `POST /tenants/a/orders` and
/// `POST /tenants/b/orders` look like the same request, so a key reused across them would
/// replay the other tenant's response. [`Fingerprint::of_parts`] therefore fingerprints, in
/// this order of preference:
///
/// 1. this extension, if present;
/// 2. with the `axum` feature (on by default), axum's `OriginalUri` extension, which axum's
///    `Router` inserts before nesting strips anything;
/// 3. the request's own URI.
///
/// Plain tower or hyper users who rewrite or strip paths before the idempotency layer insert
/// this extension first, holding the target as received:
///
/// ```
/// use http::Request;
/// use tower_idempotency::fingerprint::OriginalTarget;
///
/// let mut request = Request::post("/tenants/a/orders").body(()).unwrap();
/// let original = request.uri().clone();
/// request.extensions_mut().insert(OriginalTarget(original));
/// *request.uri_mut() = "/orders".parse().unwrap(); // what an inner router sees
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginalTarget(pub Uri);

/// A 128-bit digest of a request (method, path, query, body).
///
/// 128 bits are plenty: fingerprints are only ever compared for one record id, so the
/// question is never "does any pair collide" but "does this pair collide".
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; Fingerprint::LEN]);

impl Fingerprint {
    /// Size in bytes.
    pub const LEN: usize = 16;

    /// Fingerprints a request from its parts and fully buffered body, by its original target
    /// ([`OriginalTarget`], else axum's `OriginalUri` with the `axum` feature, else
    /// `parts.uri`). This is what the layer uses.
    ///
    /// ```
    /// use http::Request;
    /// use tower_idempotency::{Fingerprint, fingerprint::OriginalTarget};
    ///
    /// let (mut a, _) = Request::post("/orders").body(()).unwrap().into_parts();
    /// let mut b = a.clone();
    /// a.extensions.insert(OriginalTarget("/tenants/a/orders".parse().unwrap()));
    /// b.extensions.insert(OriginalTarget("/tenants/b/orders".parse().unwrap()));
    /// assert_ne!(Fingerprint::of_parts(&a, b"{}"), Fingerprint::of_parts(&b, b"{}"));
    /// ```
    pub fn of_parts(parts: &Parts, body: &[u8]) -> Self {
        Self::of_request(&parts.method, original_target(parts), &parts.headers, body)
    }

    /// Fingerprints a request from its method, target (only its path and query count),
    /// headers (only `Content-Type` counts) and fully buffered body.
    pub fn of_request(method: &Method, uri: &Uri, headers: &HeaderMap, body: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        // v2: JSON numbers became exact decimals.
        hasher.update(b"tower-idempotency fingerprint v2\0");
        hasher.update(method.as_str().as_bytes());
        hasher.update(b"\0");
        hasher.update(uri.path().as_bytes());
        hasher.update(b"\0");
        hasher.update(uri.query().unwrap_or("").as_bytes());
        hasher.update(b"\0");
        let hashed_as_json = is_json(headers)
            && json::with_canonical(body, |canonical| {
                hasher.update(b"json\0");
                hasher.update(canonical);
            })
            .is_some();
        if !hashed_as_json {
            hasher.update(b"bytes\0");
            hasher.update(body);
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

/// The request target as the client sent it: see [`OriginalTarget`].
fn original_target(parts: &Parts) -> &Uri {
    if let Some(OriginalTarget(uri)) = parts.extensions.get() {
        return uri;
    }
    #[cfg(feature = "axum")]
    if let Some(axum::extract::OriginalUri(uri)) = parts.extensions.get() {
        return uri;
    }
    &parts.uri
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
/// key, strings in one spelling, numbers as their exact decimal value in one spelling. `None`
/// when the bytes are not JSON (or nest deeper than 128 levels, or hold a number whose
/// exponent does not fit an `i64`), in which case the caller compares raw bytes.
///
/// A number's canonical spelling is `0` for zero; otherwise an optional `-`, its significant
/// digits (no leading or trailing zeros) and then, the value being `±digits × 10^e`, either
/// `e` zeros when `0 ≤ e ≤ 20` or `e` and the exponent (`15e-1` for `1.5`, `1e21`). The
/// canonical form is valid JSON and canonicalises to itself.
///
/// ```
/// use tower_idempotency::fingerprint::canonical_json;
///
/// let a = canonical_json(br#"{"b": [1, 2.50], "a": {"y": true, "x": null}}"#).unwrap();
/// let b = canonical_json(br#"{"a":{"x":null,"y":true},"b":[1e0,25e-1]}"#).unwrap();
/// assert_eq!(a, b);
/// assert_eq!(a, br#"{"a":{"x":null,"y":true},"b":[1,25e-1]}"#);
/// assert_ne!(canonical_json(b"1.00000000000000001"), canonical_json(b"1"));
/// assert_eq!(canonical_json(b"[100, 1e2, -0.0, 1e21]").unwrap(), b"[100,100,0,1e21]");
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

    fn parts(uri: &str) -> Parts {
        let request = http::Request::post(uri)
            .header(CONTENT_TYPE, "application/json")
            .body(())
            .unwrap();
        request.into_parts().0
    }

    #[test]
    fn of_parts_prefers_original_target_then_original_uri_then_uri() {
        let h = json_headers("application/json");
        let body = br#"{"a":1}"#;
        let direct = |uri: &str| fp(Method::POST, uri, &h, body);

        // Nothing but the URI.
        let mut parts = parts("/orders?x=1");
        assert_eq!(Fingerprint::of_parts(&parts, body), direct("/orders?x=1"));

        // axum's OriginalUri (inserted by axum's Router before `nest` strips the prefix).
        parts.extensions.insert(axum::extract::OriginalUri(
            "/tenants/a/orders?x=1".parse().unwrap(),
        ));
        #[cfg(feature = "axum")]
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            direct("/tenants/a/orders?x=1")
        );
        #[cfg(not(feature = "axum"))]
        assert_eq!(Fingerprint::of_parts(&parts, body), direct("/orders?x=1"));

        // OriginalTarget wins over both.
        parts
            .extensions
            .insert(OriginalTarget("/tenants/b/orders?x=1".parse().unwrap()));
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            direct("/tenants/b/orders?x=1")
        );
        parts.extensions.remove::<axum::extract::OriginalUri>();
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            direct("/tenants/b/orders?x=1")
        );

        // An absolute-form target counts by its path and query, like any other.
        parts.extensions.insert(OriginalTarget(
            "http://example.com/tenants/b/orders?x=1".parse().unwrap(),
        ));
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            direct("/tenants/b/orders?x=1")
        );
    }

    #[test]
    fn of_parts_takes_method_and_content_type_from_the_parts() {
        let body = br#"{"b":2, "a":1}"#;
        let mut parts = parts("/orders");
        let json = json_headers("application/json");
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            fp(Method::POST, "/orders", &json, body)
        );
        parts.method = Method::PUT;
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            fp(Method::PUT, "/orders", &json, br#"{"a":1,"b":2}"#)
        );
        parts.headers.remove(CONTENT_TYPE);
        assert_eq!(
            Fingerprint::of_parts(&parts, body),
            fp(Method::PUT, "/orders", &HeaderMap::new(), body)
        );
        assert_ne!(
            Fingerprint::of_parts(&parts, body),
            fp(Method::PUT, "/orders", &json, body)
        );
    }

    #[test]
    fn json_numbers_are_exact_decimals() {
        let h = json_headers("application/json");
        let f = |body: &str| fp(Method::POST, "/d", &h, body.as_bytes());
        let one = f(r#"{"n":1}"#);
        for same in ["1.0", "1e0", "10e-1", "0.1e1", "1.000", "100E-2"] {
            assert_eq!(one, f(&format!(r#"{{"n":{same}}}"#)), "{same}");
        }
        assert_ne!(one, f(r#"{"n":1.00000000000000001}"#));
        assert_ne!(
            f(r#"{"n":9007199254740993}"#),
            f(r#"{"n":9007199254740992.0}"#)
        );
        let zero = f("0");
        for same in ["-0", "0.0", "0e5", "-0.0e-3"] {
            assert_eq!(zero, f(same), "{same}");
        }
        assert_eq!(f("100"), f("1e2"));
        assert_ne!(f("1e1000000000"), f("1e1000000001"));
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
