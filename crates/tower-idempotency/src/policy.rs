//! What is stored, and which headers a replay carries.

use http::{HeaderMap, HeaderName, StatusCode, header};

/// Default storage predicate: 2xx and 3xx responses are kept; 4xx and 5xx release the key
/// so that the client can correct or retry the request.
pub fn store_success_and_redirects(status: StatusCode) -> bool {
    status.is_success() || status.is_redirection()
}

/// Whether the handler forbade storing the response (`Cache-Control: no-store`). This is
/// honoured whatever the storage predicate says.
pub(crate) fn forbids_storing(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|directive| directive.trim().eq_ignore_ascii_case("no-store"))
}

/// The headers worth replaying: everything but per-connection and per-message fields
/// (hop-by-hop headers, those the `Connection` header names, `Date`, `Content-Length`) and
/// `Set-Cookie`, which must never be handed to a retry. Repeated and non-UTF-8 values are
/// kept as they are.
/// Asked of each field of the handler's response as it is encoded, so that no map of the
/// kept fields is ever built.
pub(crate) fn replayable(headers: &HeaderMap, name: &HeaderName) -> bool {
    is_replayable(name) && !named_by_connection(headers, name)
}

fn is_replayable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
            | "date"
            | "content-length"
            | "set-cookie"
            | "set-cookie2"
    )
}

fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::HeaderValue;

    fn replayable_headers(headers: &HeaderMap) -> HeaderMap {
        headers
            .iter()
            .filter(|(name, _)| replayable(headers, name))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect()
    }

    #[test]
    fn drops_cookies_dates_and_hop_by_hop_headers() {
        let mut h = HeaderMap::new();
        h.insert("location", HeaderValue::from_static("/x/1"));
        h.insert("content-type", HeaderValue::from_static("application/json"));
        h.insert("etag", HeaderValue::from_static("\"v1\""));
        h.append("link", HeaderValue::from_static("</a>"));
        h.append("link", HeaderValue::from_static("</b>"));
        h.insert("x-raw", HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        h.insert("set-cookie", HeaderValue::from_static("session=secret"));
        h.insert(
            "date",
            HeaderValue::from_static("Tue, 01 Dec 2026 00:00:00 GMT"),
        );
        h.insert(
            "connection",
            HeaderValue::from_static("keep-alive, x-private"),
        );
        h.insert("x-private", HeaderValue::from_static("1"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        let kept = replayable_headers(&h);
        let names: Vec<_> = kept.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["location", "content-type", "etag", "link", "x-raw"]);
        assert_eq!(kept.get_all("link").iter().count(), 2);
        assert_eq!(kept["x-raw"].as_bytes(), b"\xff\xfe");
    }

    #[test]
    fn no_store_is_detected_among_directives() {
        let mut h = HeaderMap::new();
        assert!(!forbids_storing(&h));
        h.insert(
            "cache-control",
            HeaderValue::from_static("private, No-Store"),
        );
        assert!(forbids_storing(&h));
    }
}
