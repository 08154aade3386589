//! The middleware against the real server: the testkit's `TestServer` (axum, the real
//! `tower-idempotency` layer, a memory store, a handler that counts its executions) behind
//! the testkit's `Relay`, which loses or delays replies the way networks do.
//!
//! No sleeps: the tests act on signals (gates, counts, the middleware's attempt reports).

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use reqwest::{Method, StatusCode, header::CONTENT_TYPE};
use reqwest_idempotency::{
    AttemptOutcome, Error, GaveUp, IdempotencyMiddleware, LastFailure, ResponseExt, RetryPolicy,
    StopReason,
};
use reqwest_middleware::{ClientBuilder, ClientWithMiddleware};
use tower_idempotency::store::memory::MemoryStore;
use tower_idempotency_testkit::{Relay, TestServer, headers, layer, unique};

const ORDER: &str = r#"{"sku":"A-1","quantity":2}"#;

/// Short waits (the tests are about which attempts happen, not how long they wait), and
/// room for the extra attempts a loaded machine may need.
fn policy() -> RetryPolicy {
    RetryPolicy::builder()
        .max_attempts(10)
        .base_delay(Duration::from_millis(5))
        .max_delay(Duration::from_millis(50))
        .max_retry_after(Duration::from_millis(50))
        .build()
        .unwrap()
}

struct Setup {
    server: TestServer,
    relay: Arc<Relay>,
    user: String,
}

impl Setup {
    async fn start() -> Self {
        let server = TestServer::start(layer(MemoryStore::default())).await;
        let relay = Arc::new(Relay::start(server.addr()).await);
        Self {
            server,
            relay,
            user: unique("client"),
        }
    }

    /// `http://<relay><path>`.
    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.relay.addr())
    }

    fn client(&self, middleware: IdempotencyMiddleware) -> ClientWithMiddleware {
        // Fresh connections per attempt: a connection the relay closed is never reused.
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .no_proxy()
            .build()
            .unwrap();
        ClientBuilder::new(http).with(middleware).build()
    }

    /// A JSON `POST /orders` as the test's user, through the relay.
    fn order(&self, client: &ClientWithMiddleware) -> reqwest_middleware::RequestBuilder {
        client
            .post(self.url("/orders"))
            .header(headers::USER, &self.user)
            .header(CONTENT_TYPE, "application/json")
            .body(ORDER)
    }
}

/// The handler's JSON answer.
async fn body(response: reqwest::Response) -> serde_json::Value {
    response.json().await.expect("the handler answers JSON")
}

/// Every attempt's outcome, as the middleware reported it: a status, or 0 for an error.
#[derive(Clone, Default)]
struct Outcomes(Arc<Mutex<Vec<u16>>>);

impl Outcomes {
    fn record(&self, outcome: &AttemptOutcome<'_>) {
        let code = match outcome {
            AttemptOutcome::Answer { status, .. } => status.as_u16(),
            _ => 0,
        };
        self.0.lock().unwrap().push(code);
    }

    fn get(&self) -> Vec<u16> {
        self.0.lock().unwrap().clone()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_replayed_not_executed_again() {
    let s = Setup::start().await;
    let client = s.client(IdempotencyMiddleware::with_policy(policy()));
    s.relay.lose_replies(1);

    let response = s.order(&client).send().await.unwrap();

    assert_eq!(s.relay.lost_replies(), 1, "the first reply was lost");
    assert_eq!(response.status(), StatusCode::CREATED);
    let info = response.retry_info().unwrap().clone();
    assert!(info.attempts() >= 2);
    assert!(info.replayed(), "the retry got the stored response");
    assert!(response.is_replayed());
    let json = body(response).await;
    assert_eq!(json["execution"], 1, "the first execution's response");
    assert_eq!(
        json["key"],
        info.key().unwrap(),
        "the handler saw the generated key"
    );
    assert_eq!(json["echo"]["quantity"], 2);
    assert_eq!(s.server.executions(), 1, "executed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_is_retried_with_the_same_key() {
    let s = Setup::start().await;
    let outcomes = Outcomes::default();
    let timeouts = Arc::new(Mutex::new(0));
    // Every reply is held far longer than the client waits, until the first attempt has
    // timed out; then replies pass again.
    s.relay.delay_replies(Duration::from_secs(30));
    let (relay, seen, timed_out) = (s.relay.clone(), outcomes.clone(), timeouts.clone());
    let middleware = IdempotencyMiddleware::with_policy(policy()).on_attempt(move |report| {
        seen.record(&report.outcome);
        if let AttemptOutcome::Error(error) = &report.outcome
            && error.is_timeout()
        {
            *timed_out.lock().unwrap() += 1;
        }
        relay.delay_replies(Duration::ZERO);
    });
    let client = s.client(middleware);

    let response = s
        .order(&client)
        .timeout(Duration::from_millis(500))
        .send()
        .await
        .unwrap();

    assert_eq!(outcomes.get()[0], 0, "the first attempt failed");
    assert!(*timeouts.lock().unwrap() >= 1, "it timed out");
    assert_eq!(response.status(), StatusCode::CREATED);
    let info = response.retry_info().unwrap().clone();
    assert!(info.attempts() >= 2);
    let json = body(response).await;
    assert_eq!(json["execution"], 1);
    assert_eq!(json["key"], info.key().unwrap());
    assert_eq!(s.server.executions(), 1, "executed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conflict_while_the_first_runs_is_retried_until_the_replay() {
    let s = Setup::start().await;
    let gate = s.server.gate(&unique("first"));
    let key = unique("key");
    // The first request, from another client, holds the key while it waits at the gate.
    let first = tokio::spawn(
        s.server
            .post(&s.user, &key, ORDER)
            .header(headers::GATE, gate.name())
            .send(),
    );
    gate.started().await;

    // Our client meets the claim in flight: 409 key-in-use. It opens the gate once it has
    // seen the 409, and retries until it gets the first request's response.
    let outcomes = Outcomes::default();
    let (seen, opener) = (outcomes.clone(), gate.clone());
    let middleware = IdempotencyMiddleware::with_policy(policy()).on_attempt(move |report| {
        seen.record(&report.outcome);
        if matches!(report.outcome, AttemptOutcome::Answer { status, .. } if status == 409) {
            opener.open();
        }
    });
    let client = s.client(middleware);
    let response = s
        .order(&client)
        .header("idempotency-key", &key)
        .send()
        .await
        .unwrap();

    assert_eq!(
        outcomes.get()[0],
        409,
        "the first attempt met the claim in flight"
    );
    assert_eq!(response.status(), StatusCode::CREATED);
    let info = response.retry_info().unwrap().clone();
    assert!(info.attempts() >= 2);
    assert!(info.replayed());
    assert_eq!(info.key(), Some(key.as_str()));
    assert_eq!(body(response).await["execution"], 1);
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::CREATED);
    assert_eq!(s.server.executions(), 1, "executed exactly once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessable_answers_are_final() {
    let s = Setup::start().await;
    let client = s.client(IdempotencyMiddleware::with_policy(policy()));

    // The handler refuses.
    let response = s
        .order(&client)
        .header(headers::STATUS, "422")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(response.retry_info().unwrap().attempts(), 1);
    let Err(Error::Rejected(rejected)) = response.into_result().await else {
        panic!("a 422 is a rejection");
    };
    assert!(rejected.is_client_error());
    assert!(
        rejected.problem().is_none(),
        "the handler's 422 is plain JSON"
    );
    assert_eq!(s.server.executions(), 1);

    // The layer refuses: the key was used for another request.
    let key = unique("key");
    let first = s.server.post(&s.user, &key, ORDER).send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let response = s
        .order(&client)
        .header("idempotency-key", &key)
        .body(r#"{"sku":"B-2"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.retry_info().unwrap().attempts(), 1);
    let error = response.into_result().await.unwrap_err();
    assert_eq!(error.status(), Some(StatusCode::UNPROCESSABLE_ENTITY));
    assert_eq!(error.key(), Some(key.as_str()));
    let problem = error.problem().expect("the layer answers problem+json");
    assert_eq!(problem.slug(), "key-reused");
    assert_eq!(problem.status(), Some(422));
    assert!(problem.title().is_some() && problem.detail().is_some());
    assert!(matches!(error, Error::Rejected(_)));
    assert_eq!(s.server.executions(), 2, "the reused key executed nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_final() {
    let s = Setup::start().await;
    let client = s.client(IdempotencyMiddleware::with_policy(policy()));

    // An empty key: the layer's 400 key-invalid, nothing executed.
    let response = s
        .order(&client)
        .header("idempotency-key", "\"\"")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.retry_info().unwrap().attempts(), 1);
    let Err(Error::Rejected(rejected)) = response.into_result().await else {
        panic!("a 400 is a rejection");
    };
    assert_eq!(rejected.problem().unwrap().slug(), "key-invalid");
    assert_eq!(s.server.executions(), 0);

    // The handler's own 400.
    let response = s
        .order(&client)
        .header(headers::STATUS, "400")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert_eq!(response.retry_info().unwrap().attempts(), 1);
    assert_eq!(s.server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callers_key_is_kept_across_retries() {
    let s = Setup::start().await;
    let client = s.client(IdempotencyMiddleware::with_policy(policy()));
    let key = unique("caller-key");
    s.relay.lose_replies(1);

    let response = s
        .order(&client)
        .header("idempotency-key", &key)
        .send()
        .await
        .unwrap();

    assert_eq!(s.relay.lost_replies(), 1);
    let info = response.retry_info().unwrap().clone();
    assert_eq!(info.key(), Some(key.as_str()));
    assert!(info.replayed());
    let json = body(response).await;
    assert_eq!(
        json["key"],
        key.as_str(),
        "the handler saw the caller's key"
    );
    assert_eq!(json["execution"], 1);
    assert_eq!(s.server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idempotent_get_is_retried_without_a_key() {
    let s = Setup::start().await;
    let keys = Arc::new(Mutex::new(Vec::new()));
    let seen = keys.clone();
    let middleware = IdempotencyMiddleware::with_policy(policy())
        .on_attempt(move |report| seen.lock().unwrap().push(report.key.map(str::to_owned)));
    let client = s.client(middleware);
    s.relay.lose_replies(1);

    let response = client.get(s.url("/orders")).send().await.unwrap();

    assert_eq!(s.relay.lost_replies(), 1);
    assert_eq!(response.status(), StatusCode::OK);
    let info = response.retry_info().unwrap().clone();
    assert!(info.attempts() >= 2);
    assert_eq!(info.key(), None);
    assert!(
        keys.lock().unwrap().iter().all(Option::is_none),
        "no attempt had a key"
    );
    assert_eq!(response.text().await.unwrap(), "listing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_is_sent_once_and_its_key_reported() {
    let s = Setup::start().await;
    let client = s.client(IdempotencyMiddleware::with_policy(policy()));
    s.relay.lose_replies(1);

    let chunks = futures_util::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from_static(
        ORDER.as_bytes(),
    ))]);
    let error = s
        .order(&client)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap_err();

    let gave_up = GaveUp::find(&error).expect("the middleware reports the lost answer");
    assert_eq!(gave_up.attempts(), 1, "never retried");
    assert_eq!(gave_up.reason(), StopReason::BodyNotCloneable);
    assert!(matches!(gave_up.last(), LastFailure::Transport(_)));
    let key = gave_up.key().expect("it had a key").to_owned();
    s.server.execution_count().reached(1).await;
    assert_eq!(s.relay.lost_replies(), 1);

    // The caller can get the lost answer with the key it was given.
    let response = s
        .order(&client)
        .header("idempotency-key", &key)
        .send()
        .await
        .unwrap();
    assert!(response.is_replayed());
    assert_eq!(body(response).await["execution"], 1);
    assert_eq!(s.server.executions(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_and_then_reported() {
    let s = Setup::start().await;
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let client = s.client(IdempotencyMiddleware::with_policy(policy));
    let response = s
        .order(&client)
        .header(headers::STATUS, "503")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    // The layer keeps no error answer: each attempt executes again.
    assert_eq!(s.server.executions(), 3);
    let Err(Error::GaveUp(gave_up)) = response.into_result().await else {
        panic!("transient failures until the attempt limit");
    };
    assert_eq!(gave_up.attempts(), 3);
    assert_eq!(gave_up.reason(), StopReason::Attempts);
    assert_eq!(gave_up.status(), Some(StatusCode::SERVICE_UNAVAILABLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_errors_are_retried_and_then_reported() {
    // A port nothing listens on any more.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let attempts = Arc::new(Mutex::new(0));
    let count = attempts.clone();
    let policy = RetryPolicy::builder()
        .max_attempts(3)
        .base_delay(Duration::from_millis(1))
        .max_delay(Duration::from_millis(5))
        .build()
        .unwrap();
    let middleware =
        IdempotencyMiddleware::with_policy(policy).on_attempt(move |_| *count.lock().unwrap() += 1);
    let client = ClientBuilder::new(reqwest::Client::builder().no_proxy().build().unwrap())
        .with(middleware)
        .build();

    let error = client
        .request(Method::PUT, format!("http://{closed}/orders/1"))
        .body("{}")
        .send()
        .await
        .unwrap_err();

    assert_eq!(*attempts.lock().unwrap(), 3);
    let Error::GaveUp(gave_up) = Error::from(error) else {
        panic!("connection errors until the attempt limit");
    };
    assert_eq!(gave_up.attempts(), 3);
    assert!(gave_up.is_connect(), "{gave_up}");
    assert_eq!(gave_up.key(), None, "a PUT gets no key");
    assert!(std::error::Error::source(&gave_up).is_some());
}
