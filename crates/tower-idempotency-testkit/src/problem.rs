//! [`assert_problem`]: checks an RFC 9457 `application/problem+json` answer.

/// Asserts an `application/problem+json` answer with `status` and a `type` ending in `slug`
/// (and the `status`, `title` and `detail` members RFC 9457 describes), and returns its JSON.
pub async fn assert_problem(
    response: reqwest::Response,
    status: u16,
    slug: &str,
) -> serde_json::Value {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of a `{slug}` problem"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json",
        "content type of a `{slug}` problem"
    );
    let json: serde_json::Value = response
        .json()
        .await
        .unwrap_or_else(|e| panic!("the body of a `{slug}` problem is JSON: {e}"));
    let ty = json["type"].as_str().unwrap_or_default();
    assert!(
        ty.ends_with(slug),
        "problem type {ty:?} should end with {slug:?}"
    );
    assert_eq!(
        json["status"], status,
        "status member of a `{slug}` problem"
    );
    assert!(
        json["title"].is_string() && json["detail"].is_string(),
        "a `{slug}` problem has a title and a detail: {json}"
    );
    json
}
