//! The API consumer the scenarios drive. `reqwest-idempotency` does the retrying: one
//! `Idempotency-Key` per logical create and the same body on every attempt; connection
//! errors, timeouts, 408, 409, 425, 429, 500, 502, 503 and 504 retried, other answers final;
//! `Retry-After` waited as asked (up to the policy's cap), otherwise exponential backoff with
//! full jitter; bounded by attempts and a deadline. What is left here is what the harness
//! measures, and the little it needs around the middleware:
//!
//! - its `on_attempt` observer journals and counts every attempt, and is a defect detector:
//!   a `Retry-After` that is not delta-seconds, or is over the cap, is recorded
//!   ([`Client::retry_after_defects`]) and fails the scenario;
//! - [`Spread`], a middleware after it, sends each attempt to the next instance, gauges
//!   attempts in flight, and reads each answer's body within its attempt;
//! - an answer that breaks off after its headers (the middleware hands it to its caller,
//!   not retried) is sent again with the same key.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use reqwest::{
    Request, Response, Url,
    header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER},
};
use reqwest_idempotency::{
    AttemptOutcome, AttemptReport, Decision, Error, IdempotencyMiddleware, LastFailure,
    PROBLEM_JSON, Problem, ResponseExt as _, RetryPolicy, RetryPolicyBuilder,
    reqwest_middleware::{self, ClientBuilder, Middleware, Next},
};

/// Time limit of one HTTP attempt (connect, request, whole response).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The harness's retry policy, to adjust and build: attempts without limit within a 90 s
/// deadline per create, backoff ceilings from 50 ms doubling up to 1 s, `Retry-After` waited
/// up to 30 s (the backend asks for 1 s on 409 and 5 s on 503).
pub(crate) fn policy() -> RetryPolicyBuilder {
    RetryPolicy::builder()
        .max_attempts(u32::MAX)
        .base_delay(Duration::from_millis(50))
        .max_delay(Duration::from_secs(1))
        .max_retry_after(Duration::from_secs(30))
        .deadline(Duration::from_secs(90))
}

/// What one HTTP attempt ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// An HTTP answer was read completely.
    Answer(Answer),
    /// The connection could not be made.
    Connect,
    /// The attempt timed out (its own limit, or the create's deadline).
    Timeout,
    /// The connection broke before a complete answer arrived.
    Broken,
}

/// A complete HTTP answer, with what the harness looks at.
#[derive(Debug, Clone)]
pub(crate) struct Answer {
    /// HTTP status.
    pub(crate) status: u16,
    /// `Idempotent-Replayed: true` was present.
    pub(crate) replayed: bool,
    /// `Retry-After`, raw.
    pub(crate) retry_after: Option<String>,
    /// The problem details of a problem+json answer.
    pub(crate) problem: Option<Box<Problem>>,
    /// The body.
    pub(crate) body: Bytes,
}

impl Answer {
    /// The problem type's last segment (`store-full`, `key-in-use`...).
    pub(crate) fn problem_slug(&self) -> Option<&str> {
        self.problem.as_deref().map(Problem::slug)
    }
}

/// One attempt, in the journal.
#[derive(Debug, Clone)]
pub(crate) struct Attempt {
    /// The logical create (its index in the scenario's key list).
    pub(crate) key: usize,
    /// Index of the target it went to.
    pub(crate) target: usize,
    /// When it was sent.
    pub(crate) sent: Instant,
    /// When it ended; `None` while in flight.
    pub(crate) done: Option<Instant>,
    /// How it ended; `None` while in flight.
    pub(crate) outcome: Option<Outcome>,
}

/// The successful end of a logical create.
#[derive(Debug, Clone)]
pub(crate) struct Created {
    /// The deployment id in the final 201.
    pub(crate) id: String,
    /// Whether that 201 was marked as a replay.
    pub(crate) replayed: bool,
    /// The final 201's body.
    pub(crate) body: Bytes,
    /// Attempts it took.
    pub(crate) attempts: u32,
}

/// Why a logical create ended without a 201.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    /// A final answer (one the policy does not retry, a 2xx other than 201, a 201 without
    /// id).
    Final(Answer),
    /// The deadline or the attempt budget ran out; the last outcome.
    GaveUp(Outcome),
    /// The client failed otherwise (a request it could not build...).
    Client(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Final(answer) => write!(
                f,
                "final answer {} {}",
                answer.status,
                String::from_utf8_lossy(&answer.body)
            ),
            Self::GaveUp(Outcome::Answer(answer)) => write!(
                f,
                "gave up; last answer {} {}",
                answer.status,
                answer.problem_slug().unwrap_or("")
            ),
            Self::GaveUp(outcome) => write!(f, "gave up; last outcome {outcome:?}"),
            Self::Client(error) => write!(f, "client error: {error}"),
        }
    }
}

/// Counts of everything a client saw, across all its creates.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tally {
    /// HTTP attempts made.
    pub(crate) attempts: u64,
    /// Logical creates started.
    pub(crate) creates: u64,
    /// 201 without the replay marker.
    pub(crate) created: u64,
    /// 201 with `Idempotent-Replayed: true`.
    pub(crate) replayed: u64,
    /// 409.
    pub(crate) conflict: u64,
    /// 503.
    pub(crate) unavailable: u64,
    /// Other 5xx.
    pub(crate) other_5xx: u64,
    /// 4xx other than 409, and unexpected 1xx-3xx.
    pub(crate) other: u64,
    /// Connection refused / failed.
    pub(crate) connect_errors: u64,
    /// Attempts that timed out.
    pub(crate) timeouts: u64,
    /// Connections that broke before a complete answer.
    pub(crate) broken: u64,
}

impl Tally {
    /// Attempts beyond the first of each create.
    pub(crate) fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.creates)
    }

    fn count(&mut self, outcome: &Outcome) {
        self.attempts += 1;
        *match outcome {
            Outcome::Answer(a) if a.status == 201 && a.replayed => &mut self.replayed,
            Outcome::Answer(a) if a.status == 201 => &mut self.created,
            Outcome::Answer(a) if a.status == 409 => &mut self.conflict,
            Outcome::Answer(a) if a.status == 503 => &mut self.unavailable,
            Outcome::Answer(a) if a.status >= 500 => &mut self.other_5xx,
            Outcome::Answer(_) => &mut self.other,
            Outcome::Connect => &mut self.connect_errors,
            Outcome::Timeout => &mut self.timeouts,
            Outcome::Broken => &mut self.broken,
        } += 1;
    }
}

/// Every attempt with its timing, for scenarios that look at when things happened.
#[derive(Debug, Default)]
pub(crate) struct Journal {
    entries: Mutex<Vec<Attempt>>,
}

impl Journal {
    fn start(&self, key: usize, target: usize) -> usize {
        let mut entries = self.entries.lock().expect("journal lock");
        entries.push(Attempt {
            key,
            target,
            sent: Instant::now(),
            done: None,
            outcome: None,
        });
        entries.len() - 1
    }

    fn finish(&self, index: usize, outcome: &Outcome) {
        let mut entries = self.entries.lock().expect("journal lock");
        let entry = &mut entries[index];
        entry.done = Some(Instant::now());
        entry.outcome = Some(outcome.clone());
    }

    /// A copy of every attempt so far.
    pub(crate) fn snapshot(&self) -> Vec<Attempt> {
        self.entries.lock().expect("journal lock").clone()
    }
}

/// The seconds of a `Retry-After` in delay-seconds form (`1*DIGIT`), the only form this API
/// sends; `None` for anything else (an HTTP-date, a sign, a fraction...).
pub(crate) fn delay_seconds(value: &str) -> Option<u64> {
    let value = value.trim();
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok()
}

/// What the clones of a [`Client`] share.
#[derive(Debug)]
struct Shared {
    targets: Vec<Url>,
    token: String,
    policy: RetryPolicy,
    tally: Mutex<Tally>,
    journal: Option<Journal>,
    in_flight: Vec<AtomicI64>,
    /// `Retry-After` values the observer refused: how many, and the first few.
    retry_after_defects: Mutex<(u64, Vec<String>)>,
}

impl Shared {
    /// The `on_attempt` observer: journals and counts the attempt of `call` that just ended,
    /// and checks its `Retry-After`.
    fn observe(&self, call: &Call, report: &AttemptReport<'_>) {
        let current = std::mem::take(&mut *call.current.lock().expect("call lock"));
        let outcome = match &report.outcome {
            AttemptOutcome::Answer {
                status,
                replayed,
                headers,
            } => {
                // The report has the headers; Spread kept the body.
                let body = current.body.unwrap_or_default();
                let mut answer = answer_of(status.as_u16(), headers, body);
                answer.replayed = *replayed;
                if let Some(raw) = &answer.retry_after {
                    self.check_retry_after(raw);
                }
                Outcome::Answer(answer)
            }
            AttemptOutcome::Error(reqwest_middleware::Error::Reqwest(e)) => transport_outcome(e),
            AttemptOutcome::DeadlineElapsed => Outcome::Timeout,
            _ => Outcome::Broken,
        };
        self.tally.lock().expect("tally lock").count(&outcome);
        if let (Some(journal), Some(entry)) = (&self.journal, current.entry) {
            journal.finish(entry, &outcome);
        }
    }

    /// The defect detector. This API only sends delta-seconds, well under the cap; the
    /// middleware would wait anything else (capped, or as an HTTP-date), so it is recorded.
    fn check_retry_after(&self, raw: &str) {
        let cap = self.policy.max_retry_after();
        if delay_seconds(raw).is_some_and(|s| Duration::from_secs(s) <= cap) {
            return;
        }
        let mut defects = self.retry_after_defects.lock().expect("defects lock");
        defects.0 += 1;
        if defects.1.len() < 3 {
            defects.1.push(raw.to_owned());
        }
    }
}

/// One logical create: which it is, where its attempts go, and what its attempt in progress
/// has learned, for the observer (which sees neither the request nor its extensions).
#[derive(Debug)]
struct Call {
    key: usize,
    /// The target of its first attempt.
    start: usize,
    /// Attempts begun, over every send of the create.
    begun: AtomicU32,
    current: Mutex<Current>,
}

/// The attempt in progress: its journal entry, and its body once read.
#[derive(Debug, Default)]
struct Current {
    entry: Option<usize>,
    body: Option<Bytes>,
}

/// The load balancer: sends each attempt of a create to the next target (the retrying
/// middleware sends every attempt to the URL it was given).
///
/// It also does what needs an attempt's start or its body, which `on_attempt` does not give:
/// the in-flight gauge and the journal entry's send time; reading the body within the
/// attempt, so that an answer that breaks off is that attempt's failure, and the observer
/// sees the problem type in the body.
#[derive(Debug)]
struct Spread {
    shared: Arc<Shared>,
    call: Arc<Call>,
}

#[async_trait::async_trait]
impl Middleware for Spread {
    async fn handle(
        &self,
        mut request: Request,
        extensions: &mut http::Extensions,
        next: Next<'_>,
    ) -> reqwest_middleware::Result<Response> {
        let (shared, call) = (&*self.shared, &*self.call);
        let n = call.begun.fetch_add(1, Ordering::Relaxed) as usize;
        let target = (call.start + n) % shared.targets.len();
        let (to, url) = (&shared.targets[target], request.url_mut());
        url.set_host(to.host_str()).expect("targets are checked");
        url.set_port(to.port()).expect("targets are checked");

        let entry = shared.journal.as_ref().map(|j| j.start(call.key, target));
        *call.current.lock().expect("call lock") = Current { entry, body: None };
        let gauge = &shared.in_flight[target];
        gauge.fetch_add(1, Ordering::Relaxed);
        // Down again however the attempt ends, abandoned at the deadline included.
        let _in_flight = Decrement(gauge);

        let response = next.run(request, extensions).await?;
        let (status, version, headers) = (
            response.status(),
            response.version(),
            response.headers().clone(),
        );
        let body = response.bytes().await?;
        call.current.lock().expect("call lock").body = Some(body.clone());
        let mut read = http::Response::new(body);
        *read.status_mut() = status;
        *read.version_mut() = version;
        *read.headers_mut() = headers;
        Ok(read.into())
    }
}

struct Decrement<'a>(&'a AtomicI64);

impl Drop for Decrement<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// An API consumer that retries. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    shared: Arc<Shared>,
}

impl Client {
    /// A client for `targets` (base URLs) retrying as `policy` says. `fresh_connections`: a
    /// new TCP connection per attempt (no connection is reused after one was dropped under
    /// it). `journal`: keep every attempt.
    pub(crate) fn new(
        targets: Vec<String>,
        token: &str,
        policy: RetryPolicy,
        fresh_connections: bool,
        journal: bool,
    ) -> anyhow::Result<Self> {
        let targets = targets
            .iter()
            .map(|t| match Url::parse(t) {
                Ok(url) if url.scheme() == "http" && url.host().is_some() => Ok(url),
                _ => Err(anyhow::anyhow!("not an http:// base URL: {t}")),
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        anyhow::ensure!(!targets.is_empty(), "a client needs a target");
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy();
        if fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        Ok(Self {
            http: builder.build()?,
            shared: Arc::new(Shared {
                in_flight: targets.iter().map(|_| AtomicI64::new(0)).collect(),
                targets,
                token: token.to_owned(),
                policy,
                tally: Mutex::default(),
                journal: journal.then(Journal::default),
                retry_after_defects: Mutex::default(),
            }),
        })
    }

    /// The counts so far.
    pub(crate) fn tally(&self) -> Tally {
        *self.shared.tally.lock().expect("tally lock")
    }

    /// The journal (empty if the client keeps none).
    pub(crate) fn journal(&self) -> Vec<Attempt> {
        let journal = self.shared.journal.as_ref();
        journal.map(Journal::snapshot).unwrap_or_default()
    }

    /// Attempts currently in flight to `target`.
    pub(crate) fn in_flight(&self, target: usize) -> i64 {
        self.shared.in_flight[target].load(Ordering::Relaxed)
    }

    /// `Retry-After` values the observer refused (not delta-seconds, or over the cap): how
    /// many, and the first few.
    pub(crate) fn retry_after_defects(&self) -> (u64, Vec<String>) {
        let defects = self.shared.retry_after_defects.lock();
        defects.expect("defects lock").clone()
    }

    /// Creates a deployment with `idempotency_key`, retrying as the policy says. `key` is
    /// the create's index (for the journal); the first attempt goes to target
    /// `key % targets`, each next one to the next target.
    pub(crate) async fn create(
        &self,
        key: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> Result<Created, Failure> {
        let shared = &self.shared;
        shared.tally.lock().expect("tally lock").creates += 1;
        let call = Arc::new(Call {
            key,
            start: key % shared.targets.len(),
            begun: AtomicU32::new(0),
            current: Mutex::default(),
        });
        let started = Instant::now();
        loop {
            let made = call.begun.load(Ordering::Relaxed);
            let Some(policy) = rest_of(&shared.policy, made, started.elapsed()) else {
                return Err(Failure::GaveUp(Outcome::Broken));
            };
            let (observed, seen) = (shared.clone(), call.clone());
            let retrying = IdempotencyMiddleware::with_policy(policy)
                .on_attempt(move |report| observed.observe(&seen, report));
            let spread = Spread {
                shared: shared.clone(),
                call: call.clone(),
            };
            let client = ClientBuilder::new(self.http.clone())
                .with(retrying)
                .with(spread)
                .build();
            let request = self
                .request(call.start, idempotency_key, body)
                .map_err(|e| Failure::Client(e.to_string()))?;
            let sent = client.execute(request).await.map_err(Error::from);
            let made = call.begun.load(Ordering::Relaxed);
            let last = match sent {
                Ok(response) => return finish(response, made).await,
                Err(Error::GaveUp(gave_up)) => match gave_up.last() {
                    LastFailure::Transport(error) => transport_outcome(error),
                    LastFailure::DeadlineElapsed => Outcome::Timeout,
                    // An answer given up on comes back as the answer, not as an error.
                    _ => Outcome::Broken,
                },
                // The answer broke off after its headers: the middleware returns that to its
                // caller, not retried. Send the create again with its key, after a backoff.
                Err(Error::Other(reqwest_middleware::Error::Reqwest(e)))
                    if e.is_decode() || e.is_body() =>
                {
                    match shared.policy.decide(made, started.elapsed(), None) {
                        Decision::Retry(wait) => {
                            tokio::time::sleep(wait).await;
                            continue;
                        }
                        Decision::Stop(_) => Outcome::Broken,
                    }
                }
                Err(other) => return Err(Failure::Client(other.to_string())),
            };
            return Err(Failure::GaveUp(last));
        }
    }

    /// The create request to `target`.
    fn request(
        &self,
        target: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> reqwest::Result<Request> {
        let mut url = self.shared.targets[target].clone();
        url.set_path("/api/deployments");
        self.http
            .post(url)
            .bearer_auth(&self.shared.token)
            .header("idempotency-key", idempotency_key)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .timeout(ATTEMPT_TIMEOUT)
            .build()
    }

    /// One plain attempt, outside any create (no retry, not counted): for probes.
    pub(crate) async fn send_once(
        &self,
        target: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> Outcome {
        let sent = match self.request(target, idempotency_key, body) {
            Ok(request) => self.http.execute(request).await,
            Err(error) => Err(error),
        };
        let response = match sent {
            Ok(response) => response,
            Err(error) => return transport_outcome(&error),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        match response.bytes().await {
            Ok(body) => Outcome::Answer(answer_of(status, &headers, body)),
            Err(error) => transport_outcome(&error),
        }
    }
}

/// What is left of `policy` after `attempts` attempts, `elapsed` into the create: the policy
/// of a new send with the same key. `None` when no attempt is left.
fn rest_of(policy: &RetryPolicy, attempts: u32, elapsed: Duration) -> Option<RetryPolicy> {
    let mut rest = RetryPolicy::builder()
        .max_attempts(policy.max_attempts().saturating_sub(attempts))
        .base_delay(policy.base_delay())
        .max_delay(policy.max_delay())
        .max_retry_after(policy.max_retry_after());
    if let Some(deadline) = policy.deadline() {
        rest = rest.deadline(deadline.saturating_sub(elapsed));
    }
    // Zero attempts or a zero deadline are refused: nothing left.
    rest.build().ok()
}

/// How a create ends with the answer the middleware returned after `attempts` attempts.
async fn finish(response: Response, attempts: u32) -> Result<Created, Failure> {
    let gave_up = response.retry_info().is_some_and(|i| i.gave_up().is_some());
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    // Spread has read it: it cannot break off now.
    let body = response.bytes().await;
    let answer = answer_of(
        status,
        &headers,
        body.map_err(|e| Failure::Client(e.to_string()))?,
    );
    match deployment_id(&answer.body) {
        Some(id) if status == 201 => Ok(Created {
            id,
            replayed: answer.replayed,
            body: answer.body,
            attempts,
        }),
        _ if gave_up => Err(Failure::GaveUp(Outcome::Answer(answer))),
        _ => Err(Failure::Final(answer)),
    }
}

fn transport_outcome(error: &reqwest::Error) -> Outcome {
    if error.is_timeout() {
        Outcome::Timeout
    } else if error.is_connect() {
        Outcome::Connect
    } else {
        Outcome::Broken
    }
}

fn answer_of(status: u16, headers: &HeaderMap, body: Bytes) -> Answer {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let is_problem = header(CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with(PROBLEM_JSON));
    Answer {
        status,
        replayed: header("idempotent-replayed").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        retry_after: header(RETRY_AFTER.as_str()),
        problem: is_problem
            .then(|| Problem::from_json(&body).map(Box::new))
            .flatten(),
        body,
    }
}

fn deployment_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// The request body of logical create `n`.
pub(crate) fn deployment_body(scenario: &str, n: usize) -> Bytes {
    let body = serde_json::json!({
        "project": "faults",
        "environment": "prod",
        "ref": format!("{scenario}-{n}"),
    });
    Bytes::from(serde_json::to_vec(&body).expect("serialise a body"))
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncWriteExt as _, net::TcpListener, task::JoinHandle};

    use super::*;

    /// A server on loopback that answers each connection with the next of its scripted raw
    /// answers, then closes it, and keeps the requests it read.
    struct Scripted {
        url: String,
        requests: Arc<Mutex<Vec<String>>>,
        task: JoinHandle<()>,
    }

    impl Scripted {
        async fn start(answers: &[&'static str]) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(Mutex::new(Vec::new()));
            let (seen, answers) = (requests.clone(), answers.to_vec());
            let task = tokio::spawn(async move {
                for answer in answers {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let request = crate::proxy::read_request(&mut stream).await.unwrap();
                    seen.lock()
                        .unwrap()
                        .push(String::from_utf8_lossy(&request).into_owned());
                    stream.write_all(answer.as_bytes()).await.unwrap();
                    let _ = stream.shutdown().await;
                }
            });
            Self {
                url,
                requests,
                task,
            }
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    impl Drop for Scripted {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    const CREATED: &str = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                           content-length: 12\r\n\r\n{\"id\":\"d-1\"}";
    const REPLAYED: &str = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                            idempotent-replayed: true\r\ncontent-length: 12\r\n\r\n{\"id\":\"d-1\"}";
    const BUSY: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/problem+json\r\n\
                        retry-after: 0\r\ncontent-length: 57\r\n\r\n\
                        {\"type\":\"https://x.example/problems/store-unavailable\"}\r\n";

    fn client(targets: &[&Scripted], journal: bool) -> Client {
        let policy = policy()
            .base_delay(Duration::from_millis(1))
            .max_delay(Duration::from_millis(5))
            .max_retry_after(Duration::from_millis(100))
            .deadline(Duration::from_secs(10))
            .build()
            .unwrap();
        let targets = targets.iter().map(|t| t.url.clone()).collect();
        Client::new(targets, "token", policy, true, journal).unwrap()
    }

    fn status(attempt: &Attempt) -> Option<u16> {
        match attempt.outcome.as_ref()? {
            Outcome::Answer(answer) => Some(answer.status),
            _ => None,
        }
    }

    #[tokio::test]
    async fn spreads_attempts_over_the_targets_and_journals_them() {
        let (a, b) = (
            Scripted::start(&[BUSY]).await,
            Scripted::start(&[CREATED]).await,
        );
        let client = client(&[&a, &b], true);

        let created = client.create(0, "k-1", &Bytes::from_static(b"{}")).await;

        let created = created.unwrap();
        assert_eq!((created.id.as_str(), created.attempts), ("d-1", 2));
        assert!(!created.replayed);
        let journal = client.journal();
        let targets: Vec<usize> = journal.iter().map(|a| a.target).collect();
        assert_eq!(targets, [0, 1], "the first at key % targets, then the next");
        assert_eq!(
            journal.iter().map(status).collect::<Vec<_>>(),
            [Some(503), Some(201)]
        );
        let Some(Outcome::Answer(busy)) = &journal[0].outcome else {
            panic!("an answer")
        };
        assert_eq!(
            busy.problem_slug(),
            Some("store-unavailable"),
            "read from the body"
        );
        assert!(journal.iter().all(|a| a.done.is_some_and(|d| d >= a.sent)));
        for request in a.requests().iter().chain(&b.requests()) {
            assert!(request.contains("idempotency-key: k-1\r\n"), "{request}");
            assert!(request.starts_with("POST /api/deployments "), "{request}");
        }
        let tally = client.tally();
        assert_eq!(
            (
                tally.creates,
                tally.attempts,
                tally.unavailable,
                tally.created
            ),
            (1, 2, 1, 1)
        );
        assert_eq!((client.in_flight(0), client.in_flight(1)), (0, 0));
        assert_eq!(client.retry_after_defects().0, 0);
    }

    #[tokio::test]
    async fn an_answer_that_breaks_off_after_its_headers_is_sent_again_with_the_same_key() {
        let cut = "HTTP/1.1 201 Created\r\ncontent-type: application/json\r\n\
                   content-length: 12\r\n\r\n{\"id\"";
        let a = Scripted::start(&[cut, REPLAYED]).await;
        let client = client(&[&a], true);

        let created = client
            .create(0, "k-2", &Bytes::from_static(b"{}"))
            .await
            .unwrap();

        assert_eq!((created.attempts, created.replayed), (2, true));
        let journal = client.journal();
        assert!(matches!(journal[0].outcome, Some(Outcome::Broken)));
        assert_eq!(status(&journal[1]), Some(201));
        let requests = a.requests();
        assert_eq!(requests.len(), 2);
        assert!(
            requests
                .iter()
                .all(|r| r.contains("idempotency-key: k-2\r\n"))
        );
        let tally = client.tally();
        assert_eq!((tally.attempts, tally.broken, tally.replayed), (2, 1, 1));
    }

    #[tokio::test]
    async fn odd_retry_after_values_are_defects_and_final_answers_end_the_create() {
        let a = Scripted::start(&[
            "HTTP/1.1 503 Service Unavailable\r\nretry-after: Wed, 21 Oct 2015 07:28:00 GMT\r\n\
             content-length: 0\r\n\r\n",
            // One second: over this client's 100 ms cap.
            "HTTP/1.1 409 Conflict\r\nretry-after: 1\r\ncontent-length: 0\r\n\r\n",
            "HTTP/1.1 422 Unprocessable Entity\r\ncontent-type: application/problem+json\r\n\
             content-length: 50\r\n\r\n{\"type\":\"https://x.example/problems/key-reused\"}\r\n",
        ])
        .await;
        let client = client(&[&a], false);

        let failure = client
            .create(0, "k-3", &Bytes::from_static(b"{}"))
            .await
            .unwrap_err();

        let Failure::Final(answer) = &failure else {
            panic!("{failure}")
        };
        assert_eq!(
            (answer.status, answer.problem_slug()),
            (422, Some("key-reused"))
        );
        let (count, samples) = client.retry_after_defects();
        assert_eq!(count, 2);
        assert_eq!(samples, ["Wed, 21 Oct 2015 07:28:00 GMT", "1"]);
        let tally = client.tally();
        assert_eq!(
            (
                tally.attempts,
                tally.unavailable,
                tally.conflict,
                tally.other
            ),
            (3, 1, 1, 1)
        );
        assert!(client.journal().is_empty(), "no journal asked for");
    }

    #[tokio::test]
    async fn gives_up_with_the_last_outcome() {
        let a = Scripted::start(&[BUSY, BUSY]).await;
        let twice = Client::new(
            vec![a.url.clone()],
            "token",
            policy().max_attempts(2).build().unwrap(),
            true,
            false,
        )
        .unwrap();
        let failure = twice.create(0, "k-4", &Bytes::new()).await.unwrap_err();
        assert!(
            matches!(&failure, Failure::GaveUp(Outcome::Answer(a)) if a.status == 503),
            "{failure}"
        );

        // A port nobody listens on.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let once = Client::new(
            vec![url],
            "token",
            policy().max_attempts(1).build().unwrap(),
            true,
            false,
        )
        .unwrap();
        let failure = once.create(0, "k-5", &Bytes::new()).await.unwrap_err();
        assert!(
            matches!(failure, Failure::GaveUp(Outcome::Connect)),
            "{failure}"
        );
        assert_eq!(once.tally().connect_errors, 1);
    }

    #[test]
    fn delay_seconds_only() {
        assert_eq!(delay_seconds("5"), Some(5));
        assert_eq!(delay_seconds(" 30 "), Some(30));
        for odd in ["", "+5", "-1", "1.5", "5s", "Wed, 21 Oct 2015 07:28:00 GMT"] {
            assert_eq!(delay_seconds(odd), None, "{odd:?}");
        }
        assert_eq!(delay_seconds("99999999999999999999999"), None);
    }

    #[test]
    fn what_is_left_of_a_policy() {
        let p = policy().build().unwrap();
        let rest = rest_of(&p, 3, Duration::from_secs(60)).unwrap();
        assert_eq!(rest.max_attempts(), u32::MAX - 3);
        assert_eq!(rest.deadline(), Some(Duration::from_secs(30)));
        assert_eq!(
            (rest.base_delay(), rest.max_delay(), rest.max_retry_after()),
            (p.base_delay(), p.max_delay(), p.max_retry_after())
        );
        assert!(
            rest_of(&p, 1, Duration::from_secs(90)).is_none(),
            "deadline reached"
        );
        let once = policy().max_attempts(1).build().unwrap();
        assert!(
            rest_of(&once, 1, Duration::ZERO).is_none(),
            "attempts used up"
        );
    }
}
