//! `x-request-id`: kept when the client sent a valid one, generated (a UUID) otherwise, echoed
//! on every response, and a field of the request's span, so every log line of the request
//! carries it.

use axum::{
    extract::{MatchedPath, Request},
    http::HeaderName,
    middleware::Next,
    response::Response,
};
use tracing::Span;

/// The header.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest request id accepted from a client.
pub const MAX_LEN: usize = 128;

/// Whether `id` is kept: 1 to [`MAX_LEN`] ASCII letters, digits and `-_.:+/=@`. Anything else
/// (log-injection attempts, megabyte ids) is replaced by a generated one.
pub fn is_valid(id: &[u8]) -> bool {
    (1..=MAX_LEN).contains(&id.len())
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:+/=@".contains(b))
}

/// Removes an invalid (or repeated) `x-request-id`, so that `SetRequestIdLayer`, which keeps
/// whatever it finds, generates one instead.
pub async fn drop_invalid(mut request: Request, next: Next) -> Response {
    let headers = request.headers_mut();
    let mut values = headers.get_all(&REQUEST_ID).iter();
    let keep = match (values.next(), values.next()) {
        (Some(value), None) => is_valid(value.as_bytes()),
        _ => false,
    };
    if !keep {
        headers.remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// The span of one request. Its target is the crate's, so the default filters of a
/// deployment (`RUST_LOG=warn,backend=info`) keep it, and with it the id, on every line.
pub fn make_span<B>(request: &axum::http::Request<B>) -> Span {
    let id = request
        .headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("", MatchedPath::as_str);
    tracing::info_span!(
        target: "backend::http",
        "request",
        request_id = %id,
        method = %request.method(),
        route,
        path = %request.uri().path(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        assert!(is_valid(b"0199a3c2-7f1e-4d4b-9a55-4c1f2d3e4f50"));
        assert!(is_valid(b"req:42/a+b=c@lb"));
        assert!(!is_valid(b""));
        assert!(!is_valid(b"has space"));
        assert!(!is_valid(b"line\nbreak"));
        assert!(!is_valid(&[b'a'; MAX_LEN + 1]));
    }
}
