//! The retrying client: what a careful API consumer does.
//!
//! - One `Idempotency-Key` per logical create, the same body on every attempt.
//! - Retries 409, 503, any other 5xx, connection errors, timeouts and responses that break
//!   off; never a 4xx other than 409 (those are final).
//! - Waits with exponential backoff and "equal jitter" (half the step fixed, half random),
//!   capped at [`RetryPolicy::max_backoff`].
//! - Honours `Retry-After`: never retries sooner than the server asked (a little jitter is
//!   added on top, never subtracted). The only cap: a `Retry-After` longer than
//!   [`RetryPolicy::max_retry_after`] makes the create give up rather than retry early (the
//!   backend asks for 1 s on 409 and 5 s on 503, far below that cap).
//! - Each attempt goes to the next target (round robin from a per-key start), like a load
//!   balancer that moves a retry to another instance.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use rand::Rng as _;
use reqwest::header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER};

/// How a client retries.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    /// First backoff step (doubled per retry).
    pub(crate) base_backoff: Duration,
    /// Largest backoff step.
    pub(crate) max_backoff: Duration,
    /// Largest `Retry-After` the client accepts to wait; a longer one ends the create (as a
    /// failure) instead of being shortened.
    pub(crate) max_retry_after: Duration,
    /// Time limit of one HTTP attempt (connect, request, whole response).
    pub(crate) attempt_timeout: Duration,
    /// Time limit of one logical create, all attempts and waits included.
    pub(crate) deadline: Duration,
    /// Most attempts per logical create (1 = no retry).
    pub(crate) max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(90),
            max_attempts: u32::MAX,
        }
    }
}

/// What one HTTP attempt ended with.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// An HTTP answer was read completely.
    Answer(Answer),
    /// The connection could not be made.
    Connect,
    /// The attempt timed out.
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
    /// The `type` of a problem+json answer, if it is one.
    pub(crate) problem_type: Option<String>,
    /// The body.
    pub(crate) body: Bytes,
}

impl Answer {
    /// The problem type's last path segment (`store-full`, `key-in-use`...).
    pub(crate) fn problem_slug(&self) -> Option<&str> {
        self.problem_type
            .as_deref()
            .map(|t| t.rsplit('/').next().unwrap_or(t))
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
    /// A final answer (a 4xx other than 409, or a 2xx other than 201, or a 201 without id).
    Final(Answer),
    /// The deadline or the attempt budget ran out; the last outcome.
    GaveUp(Outcome),
    /// `Retry-After` was not delta-seconds, or longer than the client accepts to wait.
    RetryAfterRefused(String),
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
            Self::RetryAfterRefused(value) => write!(
                f,
                "Retry-After `{value}` refused (not seconds, or over the cap)"
            ),
        }
    }
}

/// Counts of everything the client saw, across all its creates.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// HTTP attempts made.
    pub(crate) attempts: AtomicU64,
    /// Logical creates started.
    pub(crate) creates: AtomicU64,
    /// 201 without the replay marker.
    pub(crate) created: AtomicU64,
    /// 201 with `Idempotent-Replayed: true`.
    pub(crate) replayed: AtomicU64,
    /// 409.
    pub(crate) conflict: AtomicU64,
    /// 503.
    pub(crate) unavailable: AtomicU64,
    /// Other 5xx.
    pub(crate) other_5xx: AtomicU64,
    /// 4xx other than 409 (final), and unexpected 1xx-3xx.
    pub(crate) other: AtomicU64,
    /// Connection refused / failed.
    pub(crate) connect_errors: AtomicU64,
    /// Attempts that timed out.
    pub(crate) timeouts: AtomicU64,
    /// Connections that broke before a complete answer.
    pub(crate) broken: AtomicU64,
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tally {
    pub(crate) attempts: u64,
    pub(crate) creates: u64,
    pub(crate) created: u64,
    pub(crate) replayed: u64,
    pub(crate) conflict: u64,
    pub(crate) unavailable: u64,
    pub(crate) other_5xx: u64,
    pub(crate) other: u64,
    pub(crate) connect_errors: u64,
    pub(crate) timeouts: u64,
    pub(crate) broken: u64,
}

impl Tally {
    /// Attempts beyond the first of each create.
    pub(crate) fn retries(&self) -> u64 {
        self.attempts.saturating_sub(self.creates)
    }
}

impl Counters {
    /// The current counts.
    pub(crate) fn tally(&self) -> Tally {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Tally {
            attempts: get(&self.attempts),
            creates: get(&self.creates),
            created: get(&self.created),
            replayed: get(&self.replayed),
            conflict: get(&self.conflict),
            unavailable: get(&self.unavailable),
            other_5xx: get(&self.other_5xx),
            other: get(&self.other),
            connect_errors: get(&self.connect_errors),
            timeouts: get(&self.timeouts),
            broken: get(&self.broken),
        }
    }

    fn count(&self, outcome: &Outcome) {
        let counter = match outcome {
            Outcome::Answer(a) if a.status == 201 && a.replayed => &self.replayed,
            Outcome::Answer(a) if a.status == 201 => &self.created,
            Outcome::Answer(a) if a.status == 409 => &self.conflict,
            Outcome::Answer(a) if a.status == 503 => &self.unavailable,
            Outcome::Answer(a) if a.status >= 500 => &self.other_5xx,
            Outcome::Answer(_) => &self.other,
            Outcome::Connect => &self.connect_errors,
            Outcome::Timeout => &self.timeouts,
            Outcome::Broken => &self.broken,
        };
        counter.fetch_add(1, Ordering::Relaxed);
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

/// An API consumer that retries. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct Client {
    http: reqwest::Client,
    targets: Arc<Vec<String>>,
    token: Arc<str>,
    policy: Arc<RetryPolicy>,
    counters: Arc<Counters>,
    journal: Option<Arc<Journal>>,
    in_flight: Arc<Vec<AtomicI64>>,
}

impl Client {
    /// A client for `targets` (base URLs). `fresh_connections`: a new TCP connection per
    /// attempt (no connection is reused after one was dropped under it). `journal`: keep
    /// every attempt.
    pub(crate) fn new(
        targets: Vec<String>,
        token: &str,
        policy: RetryPolicy,
        fresh_connections: bool,
        journal: bool,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(2))
            .no_proxy();
        if fresh_connections {
            builder = builder.pool_max_idle_per_host(0);
        }
        let in_flight = (0..targets.len()).map(|_| AtomicI64::new(0)).collect();
        Ok(Self {
            http: builder.build()?,
            targets: Arc::new(targets),
            token: token.into(),
            policy: Arc::new(policy),
            counters: Arc::default(),
            journal: journal.then(Arc::default),
            in_flight: Arc::new(in_flight),
        })
    }

    /// The counts so far.
    pub(crate) fn tally(&self) -> Tally {
        self.counters.tally()
    }

    /// The journal (empty if the client keeps none).
    pub(crate) fn journal(&self) -> Vec<Attempt> {
        self.journal
            .as_ref()
            .map(|j| j.snapshot())
            .unwrap_or_default()
    }

    /// Attempts currently in flight to `target`.
    pub(crate) fn in_flight(&self, target: usize) -> i64 {
        self.in_flight[target].load(Ordering::Relaxed)
    }

    /// Creates a deployment with `idempotency_key`, retrying as the policy says. `key` is
    /// the create's index (for the journal); the first attempt goes to target
    /// `key % targets`.
    pub(crate) async fn create(
        &self,
        key: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> Result<Created, Failure> {
        self.counters.creates.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let policy = &*self.policy;
        let mut attempt: u32 = 0;
        loop {
            let target = (key + attempt as usize) % self.targets.len();
            attempt += 1;
            let outcome = self.attempt(key, target, idempotency_key, body).await;
            let wait = match &outcome {
                Outcome::Answer(answer) if answer.status == 201 => {
                    return match deployment_id(&answer.body) {
                        Some(id) => Ok(Created {
                            id,
                            replayed: answer.replayed,
                            body: answer.body.clone(),
                            attempts: attempt,
                        }),
                        None => Err(Failure::Final(answer.clone())),
                    };
                }
                Outcome::Answer(answer) if answer.status == 409 || answer.status >= 500 => {
                    let backoff = self.backoff(attempt);
                    match answer.retry_after.as_deref() {
                        None => backoff,
                        Some(raw) => {
                            let Ok(seconds) = raw.trim().parse::<u64>() else {
                                // Only delta-seconds is expected from this API; anything else
                                // is a defect worth failing on, not something to guess at.
                                return Err(Failure::RetryAfterRefused(raw.to_owned()));
                            };
                            let asked = Duration::from_secs(seconds);
                            if asked > policy.max_retry_after {
                                return Err(Failure::RetryAfterRefused(raw.to_owned()));
                            }
                            // Never sooner than asked: jitter only adds.
                            asked + jitter(backoff.min(Duration::from_millis(250)))
                        }
                    }
                }
                Outcome::Answer(answer) => return Err(Failure::Final(answer.clone())),
                Outcome::Connect | Outcome::Timeout | Outcome::Broken => self.backoff(attempt),
            };
            if attempt >= policy.max_attempts || started.elapsed() + wait > policy.deadline {
                return Err(Failure::GaveUp(outcome));
            }
            tokio::time::sleep(wait).await;
        }
    }

    /// Exponential backoff with equal jitter for retry number `retry` (1-based).
    fn backoff(&self, retry: u32) -> Duration {
        let policy = &*self.policy;
        let step = policy
            .base_backoff
            .saturating_mul(1u32 << retry.saturating_sub(1).min(16))
            .min(policy.max_backoff);
        step / 2 + jitter(step / 2)
    }

    async fn attempt(
        &self,
        key: usize,
        target: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> Outcome {
        self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        let entry = self.journal.as_ref().map(|j| j.start(key, target));
        self.in_flight[target].fetch_add(1, Ordering::Relaxed);
        let outcome = self.send(target, idempotency_key, body).await;
        self.in_flight[target].fetch_sub(1, Ordering::Relaxed);
        if let (Some(journal), Some(entry)) = (&self.journal, entry) {
            journal.finish(entry, &outcome);
        }
        self.counters.count(&outcome);
        outcome
    }

    async fn send(&self, target: usize, idempotency_key: &str, body: &Bytes) -> Outcome {
        let url = format!("{}/api/deployments", self.targets[target]);
        let request = self
            .http
            .post(url)
            .bearer_auth(&*self.token)
            .header("idempotency-key", idempotency_key)
            .header(CONTENT_TYPE, "application/json")
            .body(body.clone())
            .timeout(self.policy.attempt_timeout);
        let response = match request.send().await {
            Ok(response) => response,
            Err(error) => return transport_outcome(&error),
        };
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = match response.bytes().await {
            Ok(body) => body,
            Err(error) => return transport_outcome(&error),
        };
        Outcome::Answer(answer_of(status, &headers, body))
    }

    /// One plain attempt, outside any create (no retry, not counted): for probes.
    pub(crate) async fn send_once(
        &self,
        target: usize,
        idempotency_key: &str,
        body: &Bytes,
    ) -> Outcome {
        self.send(target, idempotency_key, body).await
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
    let is_problem =
        header(CONTENT_TYPE.as_str()).is_some_and(|t| t.starts_with("application/problem+json"));
    let problem_type = is_problem
        .then(|| serde_json::from_slice::<serde_json::Value>(&body).ok())
        .flatten()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned));
    Answer {
        status,
        replayed: header("idempotent-replayed").is_some_and(|v| v.eq_ignore_ascii_case("true")),
        retry_after: header(RETRY_AFTER.as_str()),
        problem_type,
        body,
    }
}

fn deployment_id(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("id")?.as_str().map(str::to_owned)
}

/// A uniformly random duration in `[0, max]`.
pub(crate) fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return max;
    }
    let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rand::rng().random_range(0..=nanos))
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
