//! The middleware against a scripted server: a terminal middleware that records every
//! attempt and answers from a script, on tokio's paused clock. No network, and waits of
//! seconds take no time, so the timing assertions are exact on any machine.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http::Extensions;
use reqwest::{Method, Request, Response, StatusCode};
use reqwest_idempotency::{
    AttemptOutcome, Decision, Error, GaveUp, IdempotencyMiddleware, KeyFormat, LastFailure,
    ResponseExt, RetryPolicy, StopReason,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware, Middleware, Next};
use tokio::time::Instant;

const URL: &str = "http://scripted.invalid/orders";
const PROBLEM: &str = "application/problem+json";

/// One scripted answer.
#[derive(Clone)]
enum Step {
    /// Answer with this status and these headers (and a small body).
    Answer(u16, Vec<(&'static str, String)>),
    /// Never answer (until the test's deadline cuts the attempt).
    Hang,
    /// Fail as a middleware would: not a transport error, never retried.
    MiddlewareError,
}

fn status(code: u16) -> Step {
    Step::Answer(code, Vec::new())
}

fn with(code: u16, headers: &[(&'static str, &str)]) -> Step {
    Step::Answer(
        code,
        headers.iter().map(|&(n, v)| (n, v.to_owned())).collect(),
    )
}

/// What one attempt looked like.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    key: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    at: Instant,
}

#[derive(Clone, Default)]
struct Script {
    steps: Arc<Mutex<VecDeque<Step>>>,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Script {
    fn new(steps: impl IntoIterator<Item = Step>) -> Self {
        let script = Self::default();
        script.steps.lock().unwrap().extend(steps);
        script
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// The gaps between consecutive attempts.
    fn gaps(&self) -> Vec<Duration> {
        let seen = self.seen();
        seen.windows(2).map(|w| w[1].at - w[0].at).collect()
    }
}

#[async_trait::async_trait]
impl Middleware for Script {
    async fn handle(
        &self,
        request: Request,
        _: &mut Extensions,
        _: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        self.seen.lock().unwrap().push(Seen {
            method: request.method().clone(),
            key: request
                .headers()
                .get("idempotency-key")
                .map(|v| v.as_bytes().to_vec()),
            body: request
                .body()
                .and_then(|b| b.as_bytes())
                .map(<[u8]>::to_vec),
            at: Instant::now(),
        });
        let step = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .expect("the script has an answer for every attempt");
        match step {
            Step::Answer(code, headers) => {
                let mut builder = http::Response::builder().status(code);
                for (name, value) in headers {
                    builder = builder.header(name, value);
                }
                Ok(builder.body("{}").unwrap().into())
            }
            Step::Hang => std::future::pending().await,
            Step::MiddlewareError => Err(reqwest_middleware::Error::middleware(
                std::io::Error::other("a middleware failed"),
            )),
        }
    }
}

fn client(middleware: IdempotencyMiddleware, script: &Script) -> ClientWithMiddleware {
    ClientBuilder::new(reqwest::Client::new())
        .with(middleware)
        .with(script.clone())
        .build()
}

fn quick() -> RetryPolicy {
    RetryPolicy::builder()
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(1))
        .build()
        .unwrap()
}

fn info(response: &Response) -> reqwest_idempotency::RetryInfo {
    response
        .retry_info()
        .expect("the middleware sets it")
        .clone()
}

#[tokio::test(start_paused = true)]
async fn a_post_gets_one_uuid_key_for_all_its_retries() {
    let script = Script::new([status(503), status(409), status(502), status(201)]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .body(r#"{"sku":"A-1"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let seen = script.seen();
    assert_eq!(seen.len(), 4);
    let key = seen[0].key.clone().expect("a key was attached");
    assert!(seen.iter().all(|s| s.key.as_ref() == Some(&key)), "one key");
    assert!(
        seen.iter()
            .all(|s| s.body.as_deref() == Some(br#"{"sku":"A-1"}"#.as_slice())),
        "the same body on every attempt"
    );
    let text = std::str::from_utf8(&key).unwrap();
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .expect("a Structured Field string");
    assert_eq!(uuid::Uuid::parse_str(inner).unwrap().get_version_num(), 4);

    let info = info(&response);
    assert_eq!(info.attempts(), 4);
    assert_eq!(info.key(), Some(inner));
    assert!(!info.replayed());
    assert_eq!(info.gave_up(), None);
    assert!(response.into_result().await.is_ok());

    // The next logical request gets a new key.
    let script = Script::new([status(201)]);
    client(IdempotencyMiddleware::new(), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    assert_ne!(script.seen()[0].key, Some(key));
}

#[tokio::test(start_paused = true)]
async fn only_post_and_patch_get_a_key() {
    for (method, keyed) in [
        (Method::POST, true),
        (Method::PATCH, true),
        (Method::GET, false),
        (Method::PUT, false),
        (Method::DELETE, false),
        (Method::HEAD, false),
        (Method::OPTIONS, false),
    ] {
        let script = Script::new([status(200)]);
        let response = client(IdempotencyMiddleware::new(), &script)
            .request(method.clone(), URL)
            .send()
            .await
            .unwrap();
        assert_eq!(script.seen()[0].method, method);
        assert_eq!(script.seen()[0].key.is_some(), keyed, "{method}");
        assert_eq!(info(&response).key().is_some(), keyed, "{method}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_callers_key_is_sent_as_is() {
    for sent in ["order-42", "\"order-42\"", "\"a\\\"b\""] {
        let script = Script::new([status(503), status(201)]);
        let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
            .post(URL)
            .header("idempotency-key", sent)
            .send()
            .await
            .unwrap();
        let seen = script.seen();
        assert_eq!(seen.len(), 2);
        for s in &seen {
            assert_eq!(s.key.as_deref(), Some(sent.as_bytes()), "byte for byte");
        }
        let unquoted = match sent {
            "order-42" | "\"order-42\"" => "order-42",
            _ => "a\"b",
        };
        assert_eq!(info(&response).key(), Some(unquoted));
    }
}

#[tokio::test(start_paused = true)]
async fn bare_keys_on_request() {
    let script = Script::new([status(201)]);
    let response = client(
        IdempotencyMiddleware::new().key_format(KeyFormat::Bare),
        &script,
    )
    .patch(URL)
    .send()
    .await
    .unwrap();
    let key = String::from_utf8(script.seen()[0].key.clone().unwrap()).unwrap();
    assert!(uuid::Uuid::parse_str(&key).is_ok(), "{key}");
    assert_eq!(info(&response).key(), Some(key.as_str()));
}

#[tokio::test(start_paused = true)]
async fn every_transient_status_is_retried() {
    for code in [408, 409, 425, 429, 500, 502, 503, 504] {
        let script = Script::new([status(code), status(201)]);
        let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
            .post(URL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 201, "{code}");
        assert_eq!(info(&response).attempts(), 2, "{code} is retried");
    }
}

#[tokio::test(start_paused = true)]
async fn final_statuses_are_never_retried() {
    for code in [400, 401, 403, 404, 410, 413, 415, 422, 405, 501, 505] {
        let problem = format!(
            r#"{{"type":"https://api.example.com/problems/p{code}","title":"T","status":{code},"detail":"D","code":"c{code}"}}"#
        );
        let script = Script::new([with(code, &[("content-type", PROBLEM)])]);
        let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
            .post(URL)
            .send()
            .await
            .unwrap();
        assert_eq!(script.seen().len(), 1, "{code} is final");
        let info = info(&response);
        assert_eq!((info.attempts(), info.gave_up()), (1, None), "{code}");
        // The scripted body is `{}`; check the mapping with a real problem body too.
        let rejected = match response.into_result().await {
            Err(Error::Rejected(rejected)) => rejected,
            other => panic!("{code}: expected Rejected, got {other:?}"),
        };
        assert_eq!(rejected.status().as_u16(), code);
        assert_eq!(rejected.is_client_error(), code < 500);
        assert_eq!(rejected.problem().unwrap().type_uri(), "about:blank");
        assert_eq!(rejected.body(), b"{}");
        let parsed = reqwest_idempotency::Problem::from_json(problem.as_bytes()).unwrap();
        assert_eq!(parsed.code(), Some(format!("c{code}").as_str()));
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_seconds_is_waited_exactly() {
    let script = Script::new([with(503, &[("retry-after", "7")]), status(201)]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(script.gaps(), [Duration::from_secs(7)]);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_capped() {
    let policy = RetryPolicy::builder()
        .max_retry_after(Duration::from_secs(20))
        .build()
        .unwrap();
    let script = Script::new([
        with(429, &[("retry-after", "3600")]),
        with(503, &[("retry-after", "19")]),
        status(201),
    ]);
    client(IdempotencyMiddleware::with_policy(policy), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.gaps(),
        [Duration::from_secs(20), Duration::from_secs(19)]
    );
}

#[tokio::test(start_paused = true)]
async fn retry_after_http_date_is_waited() {
    // The header has whole seconds; the wall clock does not stand still (only tokio's does).
    let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(12));
    let script = Script::new([with(503, &[("retry-after", date.as_str())]), status(201)]);
    client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    let gap = script.gaps()[0];
    assert!(
        gap > Duration::from_secs(10) && gap <= Duration::from_secs(12),
        "waited {gap:?} for a date 12 s ahead"
    );
}

#[tokio::test(start_paused = true)]
async fn without_retry_after_the_backoff_stays_under_its_ceiling() {
    let policy = RetryPolicy::builder()
        .max_attempts(6)
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_millis(300))
        .build()
        .unwrap();
    // An unreadable Retry-After falls back to the backoff.
    let script = Script::new([
        status(500),
        with(503, &[("retry-after", "soon")]),
        status(502),
        status(504),
        status(429),
        status(201),
    ]);
    client(IdempotencyMiddleware::with_policy(policy.clone()), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    let gaps = script.gaps();
    assert_eq!(gaps.len(), 5);
    for (retry, gap) in (1..).zip(&gaps) {
        let ceiling = policy.backoff_ceiling(retry);
        assert!(*gap <= ceiling, "retry {retry}: {gap:?} > {ceiling:?}");
    }
    assert_eq!(
        (1..=5)
            .map(|n| policy.backoff_ceiling(n))
            .collect::<Vec<_>>(),
        [100, 200, 300, 300, 300].map(Duration::from_millis)
    );
}

#[tokio::test(start_paused = true)]
async fn gives_up_after_max_attempts_with_the_last_answer() {
    let policy = RetryPolicy::builder().max_attempts(3).build().unwrap();
    let last = with(503, &[("content-type", PROBLEM)]);
    let script = Script::new([status(503), status(503), last, status(201)]);
    let response = client(IdempotencyMiddleware::with_policy(policy), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 3);
    assert_eq!(response.status(), 503, "the last answer is handed over");
    let info = info(&response);
    assert_eq!(info.attempts(), 3);
    assert_eq!(info.gave_up(), Some(StopReason::Attempts));
    let key = info.key().unwrap().to_owned();
    let Err(Error::GaveUp(gave_up)) = response.into_result().await else {
        panic!("a transient answer the middleware gave up on is GaveUp");
    };
    assert_eq!(gave_up.attempts(), 3);
    assert_eq!(gave_up.reason(), StopReason::Attempts);
    assert_eq!(gave_up.key(), Some(key.as_str()));
    assert_eq!(gave_up.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
    assert!(
        gave_up.problem().is_some(),
        "the problem+json body `{{}}` is read"
    );
    assert!(!gave_up.is_timeout());
    let message = gave_up.to_string();
    assert!(
        message.contains("3 attempts") && message.contains(&key),
        "{message}"
    );
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries_before_they_would_start_late() {
    let policy = RetryPolicy::builder()
        .deadline(Duration::from_secs(10))
        .build()
        .unwrap();
    let busy = || with(409, &[("retry-after", "4")]);
    // More answers than the deadline allows attempts for.
    let script = Script::new([busy(), busy(), busy(), busy(), busy()]);
    let started = Instant::now();
    let response = client(IdempotencyMiddleware::with_policy(policy), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    // Attempts at 0 s, 4 s and 8 s; one at 12 s would be past the deadline.
    assert_eq!(script.seen().len(), 3);
    assert_eq!(started.elapsed(), Duration::from_secs(8), "no useless wait");
    assert_eq!(info(&response).gave_up(), Some(StopReason::Deadline));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_cuts_an_attempt_that_hangs() {
    let policy = RetryPolicy::builder()
        .deadline(Duration::from_secs(5))
        .build()
        .unwrap();
    let script = Script::new([with(503, &[("retry-after", "2")]), Step::Hang]);
    let started = Instant::now();
    let error = client(IdempotencyMiddleware::with_policy(policy), &script)
        .post(URL)
        .send()
        .await
        .unwrap_err();
    assert_eq!(started.elapsed(), Duration::from_secs(5));
    let gave_up = GaveUp::find(&error).expect("the middleware's error");
    assert_eq!(gave_up.attempts(), 2);
    assert_eq!(gave_up.reason(), StopReason::Deadline);
    assert!(matches!(gave_up.last(), LastFailure::DeadlineElapsed));
    assert!(gave_up.is_timeout());
    assert!(gave_up.key().is_some());
    assert!(matches!(Error::from(error), Error::GaveUp(_)));
}

#[tokio::test(start_paused = true)]
async fn a_request_without_key_and_idempotent_method_is_sent_once() {
    let purge = Method::from_bytes(b"PURGE").unwrap();
    let script = Script::new([status(503), status(200)]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .request(purge.clone(), URL)
        .send()
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 1);
    assert_eq!(script.seen()[0].key, None);
    assert_eq!(info(&response).gave_up(), Some(StopReason::NotIdempotent));

    // With a key it is retried.
    let script = Script::new([status(503), status(200)]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .request(purge, URL)
        .header("idempotency-key", "purge-1")
        .send()
        .await
        .unwrap();
    assert_eq!(info(&response).attempts(), 2);
}

#[tokio::test(start_paused = true)]
async fn idempotent_methods_are_retried_without_a_key() {
    for method in [Method::GET, Method::PUT, Method::DELETE, Method::HEAD] {
        let script = Script::new([status(503), status(200)]);
        let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
            .request(method.clone(), URL)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let seen = script.seen();
        assert_eq!(seen.len(), 2, "{method}");
        assert!(seen.iter().all(|s| s.key.is_none()), "{method}: no key");
        assert_eq!(info(&response).key(), None);
    }
}

#[tokio::test(start_paused = true)]
async fn a_streaming_body_is_sent_once() {
    let script = Script::new([status(503), status(201)]);
    let chunks =
        futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(b"{}"))]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 1);
    assert!(script.seen()[0].key.is_some(), "it still gets a key");
    assert_eq!(response.status(), 503);
    assert_eq!(
        info(&response).gave_up(),
        Some(StopReason::BodyNotCloneable)
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_can_carry_its_own_policy() {
    let script = Script::new([status(503), status(201)]);
    let response = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .with_extension(RetryPolicy::never())
        .send()
        .await
        .unwrap();
    assert_eq!(script.seen().len(), 1);
    assert_eq!(info(&response).gave_up(), Some(StopReason::Attempts));
}

#[tokio::test(start_paused = true)]
async fn replays_are_reported() {
    let script = Script::new([with(201, &[("idempotent-replayed", "true")])]);
    let response = client(IdempotencyMiddleware::new(), &script)
        .post(URL)
        .send()
        .await
        .unwrap();
    assert!(info(&response).replayed());
    assert!(response.is_replayed());
    let script = Script::new([with(201, &[("idempotent-replayed", "?1")]), status(201)]);
    let client = client(IdempotencyMiddleware::new(), &script);
    assert!(client.post(URL).send().await.unwrap().is_replayed());
    let plain = client.post(URL).send().await.unwrap();
    assert!(!plain.is_replayed() && !info(&plain).replayed());
}

#[tokio::test(start_paused = true)]
async fn other_middleware_errors_pass_through_unretried() {
    let script = Script::new([Step::MiddlewareError, status(201)]);
    let error = client(IdempotencyMiddleware::with_policy(quick()), &script)
        .post(URL)
        .send()
        .await
        .unwrap_err();
    assert_eq!(script.seen().len(), 1);
    assert!(GaveUp::find(&error).is_none());
    assert!(error.to_string().contains("a middleware failed"));
    assert!(matches!(Error::from(error), Error::Other(_)));
}

#[tokio::test(start_paused = true)]
async fn the_observer_sees_every_attempt_and_decision() {
    let reports = Arc::new(Mutex::new(Vec::new()));
    let log = reports.clone();
    let middleware = IdempotencyMiddleware::with_policy(quick()).on_attempt(move |report| {
        let (status, retry_after) = match report.outcome {
            AttemptOutcome::Answer {
                status, headers, ..
            } => (
                status.as_u16(),
                headers
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_owned()),
            ),
            _ => (0, None),
        };
        log.lock().unwrap().push((
            report.attempt,
            (status, retry_after),
            (report.sent, report.elapsed),
            report.decision,
            report.key.map(str::to_owned),
        ));
    });
    let script = Script::new([with(409, &[("retry-after", "1")]), status(201)]);
    let response = client(middleware, &script).post(URL).send().await.unwrap();
    let key = info(&response).key().map(str::to_owned);
    let reports = reports.lock().unwrap().clone();
    assert_eq!(
        reports,
        [
            (
                1,
                (409, Some("1".to_owned())),
                (Duration::ZERO, Duration::ZERO),
                Some(Decision::Retry(Duration::from_secs(1))),
                key.clone()
            ),
            (
                2,
                (201, None),
                (Duration::from_secs(1), Duration::from_secs(1)),
                None,
                key
            ),
        ]
    );
}
