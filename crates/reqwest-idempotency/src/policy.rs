//! [`RetryPolicy`]: which answers are worth another attempt, how long to wait before it, and
//! when to stop. A plain value with no I/O, so every rule is unit-tested on its own.

use std::{error::Error as StdError, fmt, time::Duration};

use reqwest::StatusCode;

/// Default [`RetryPolicy::max_attempts`]: the first attempt and up to four retries.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;
/// Default [`RetryPolicy::base_delay`]: the ceiling of the first backoff.
pub const DEFAULT_BASE_DELAY: Duration = Duration::from_millis(200);
/// Default [`RetryPolicy::max_delay`]: the largest backoff ceiling.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(10);
/// Default [`RetryPolicy::max_retry_after`]: the longest `Retry-After` waited in full.
pub const DEFAULT_MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// When to retry a request that met a transient failure, and how long to wait first.
///
/// - Transient failures: connection errors and timeouts, and the statuses for which
///   [`retries_status`](Self::retries_status) is true (408, 409, 425, 429, 500, 502, 503,
///   504). Every other status is final.
/// - The wait before retry number `n` (1 for the first retry) is the server's `Retry-After`
///   when it sent one, capped at [`max_retry_after`](Self::max_retry_after); otherwise a
///   backoff drawn uniformly from `[0, min(max_delay, base_delay × 2^(n-1))]` ("full
///   jitter", so that clients that failed together do not retry together).
/// - At most [`max_attempts`](Self::max_attempts) attempts, and none that would start
///   after the [`deadline`](Self::deadline) (measured from the start of the first attempt).
///
/// ```
/// use std::time::Duration;
/// use reqwest::StatusCode;
/// use reqwest_idempotency::{Decision, RetryPolicy, StopReason};
///
/// let policy = RetryPolicy::builder()
///     .max_attempts(3)
///     .base_delay(Duration::from_millis(100))
///     .max_delay(Duration::from_secs(2))
///     .max_retry_after(Duration::from_secs(20))
///     .deadline(Duration::from_secs(60))
///     .build()
///     .unwrap();
///
/// assert!(RetryPolicy::retries_status(StatusCode::CONFLICT));
/// assert!(!RetryPolicy::retries_status(StatusCode::UNPROCESSABLE_ENTITY));
///
/// // The server asked for 5 s: wait 5 s.
/// let asked = Some(Duration::from_secs(5));
/// assert_eq!(policy.decide(1, Duration::ZERO, asked), Decision::Retry(Duration::from_secs(5)));
/// // It asked for an hour: wait the cap.
/// let asked = Some(Duration::from_secs(3600));
/// assert_eq!(policy.decide(1, Duration::ZERO, asked), Decision::Retry(Duration::from_secs(20)));
/// // No Retry-After: a jittered backoff, at most 100 ms before the first retry.
/// let Decision::Retry(wait) = policy.decide(1, Duration::ZERO, None) else { panic!() };
/// assert!(wait <= Duration::from_millis(100));
/// // Three attempts made: stop.
/// assert_eq!(policy.decide(3, Duration::ZERO, None), Decision::Stop(StopReason::Attempts));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    max_attempts: u32,
    base_delay: Duration,
    max_delay: Duration,
    max_retry_after: Duration,
    deadline: Option<Duration>,
}

impl Default for RetryPolicy {
    /// [`DEFAULT_MAX_ATTEMPTS`] attempts, backoff from [`DEFAULT_BASE_DELAY`] up to
    /// [`DEFAULT_MAX_DELAY`], `Retry-After` capped at [`DEFAULT_MAX_RETRY_AFTER`], no deadline.
    fn default() -> Self {
        Self {
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            base_delay: DEFAULT_BASE_DELAY,
            max_delay: DEFAULT_MAX_DELAY,
            max_retry_after: DEFAULT_MAX_RETRY_AFTER,
            deadline: None,
        }
    }
}

/// What to do after an attempt that met a transient failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Wait this long, then send the request again (with the same key).
    Retry(Duration),
    /// Give up: hand the last failure to the caller.
    Stop(StopReason),
}

/// Why the middleware stopped retrying a request whose last attempt failed transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StopReason {
    /// [`RetryPolicy::max_attempts`] attempts were made.
    Attempts,
    /// Another attempt would start after (or the last one ran into) the
    /// [`RetryPolicy::deadline`].
    Deadline,
    /// The request body is a stream that cannot be cloned, so it can be sent only once.
    BodyNotCloneable,
    /// The request has no `Idempotency-Key` and its method is not idempotent, so sending it
    /// again could repeat its effect.
    NotIdempotent,
}

impl StopReason {
    fn describe(self) -> &'static str {
        match self {
            Self::Attempts => "the attempt limit was reached",
            Self::Deadline => "the deadline was reached",
            Self::BodyNotCloneable => "the request body is a stream that cannot be sent twice",
            Self::NotIdempotent => "the request has no idempotency key and is not idempotent",
        }
    }
}

impl fmt::Display for StopReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

impl RetryPolicy {
    /// A builder starting from the [defaults](Self::default).
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder {
            policy: Self::default(),
        }
    }

    /// One attempt, never a retry (keys are still attached).
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The most attempts per logical request, the first included (at least 1).
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The ceiling of the first backoff; each retry doubles it, up to
    /// [`max_delay`](Self::max_delay).
    pub fn base_delay(&self) -> Duration {
        self.base_delay
    }

    /// The largest backoff ceiling.
    pub fn max_delay(&self) -> Duration {
        self.max_delay
    }

    /// The longest `Retry-After` waited in full; a longer one is waited this long.
    pub fn max_retry_after(&self) -> Duration {
        self.max_retry_after
    }

    /// The time limit of a logical request, all attempts and waits included, if any.
    pub fn deadline(&self) -> Option<Duration> {
        self.deadline
    }

    /// Whether an answer with `status` is a transient failure worth another attempt with the
    /// same key: 408 Request Timeout, 409 Conflict (the key is in use by a request still
    /// running), 425 Too Early, 429 Too Many Requests, 500, 502, 503 and 504. Every other
    /// status is final: success, redirects, and errors such as 400, 401, 403, 404, 410
    /// (the original ran but its response was not kept), 413, 415, 422 (the key was used for
    /// another request), 501 or 505.
    pub fn retries_status(status: StatusCode) -> bool {
        matches!(
            status.as_u16(),
            408 | 409 | 425 | 429 | 500 | 502 | 503 | 504
        )
    }

    /// The ceiling of the backoff before retry number `retry` (1 for the first retry):
    /// `min(max_delay, base_delay × 2^(retry-1))`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        self.base_delay
            .saturating_mul(1u32 << doublings)
            .min(self.max_delay)
    }

    /// A backoff before retry number `retry`, drawn uniformly from
    /// `[0, backoff_ceiling(retry)]`.
    pub fn backoff(&self, retry: u32) -> Duration {
        self.backoff_at(retry, fastrand::f64())
    }

    /// The backoff at `fraction` (in `[0, 1]`) of the ceiling.
    fn backoff_at(&self, retry: u32, fraction: f64) -> Duration {
        let ceiling = self.backoff_ceiling(retry);
        // Through f64, a ceiling near `Duration::MAX` can round above it: never panic.
        Duration::try_from_secs_f64(ceiling.as_secs_f64() * fraction.clamp(0.0, 1.0))
            .map_or(ceiling, |wait| wait.min(ceiling))
    }

    /// What to do after `attempts` attempts (at least 1), the last of which failed
    /// transiently, `elapsed` after the first one started; `retry_after` is the server's
    /// `Retry-After`, if it sent one (see [`retry_after::parse`](crate::retry_after::parse)).
    pub fn decide(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
    ) -> Decision {
        self.decide_at(attempts, elapsed, retry_after, fastrand::f64())
    }

    fn decide_at(
        &self,
        attempts: u32,
        elapsed: Duration,
        retry_after: Option<Duration>,
        fraction: f64,
    ) -> Decision {
        if attempts >= self.max_attempts {
            return Decision::Stop(StopReason::Attempts);
        }
        let wait = match retry_after {
            Some(asked) => asked.min(self.max_retry_after),
            None => self.backoff_at(attempts, fraction),
        };
        match self.deadline {
            // No attempt would have any time left once it could start.
            Some(deadline) if elapsed.saturating_add(wait) >= deadline => {
                Decision::Stop(StopReason::Deadline)
            }
            _ => Decision::Retry(wait),
        }
    }
}

/// Builds a [`RetryPolicy`]; see its fields' getters for their meaning.
#[derive(Debug, Clone)]
pub struct RetryPolicyBuilder {
    policy: RetryPolicy,
}

impl RetryPolicyBuilder {
    /// The most attempts, the first included (default [`DEFAULT_MAX_ATTEMPTS`]; 1 = never
    /// retry; 0 is refused).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.policy.max_attempts = attempts;
        self
    }

    /// The ceiling of the first backoff (default [`DEFAULT_BASE_DELAY`]).
    pub fn base_delay(mut self, delay: Duration) -> Self {
        self.policy.base_delay = delay;
        self
    }

    /// The largest backoff ceiling (default [`DEFAULT_MAX_DELAY`]; at least `base_delay`).
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.policy.max_delay = delay;
        self
    }

    /// The longest `Retry-After` waited in full (default [`DEFAULT_MAX_RETRY_AFTER`]).
    pub fn max_retry_after(mut self, cap: Duration) -> Self {
        self.policy.max_retry_after = cap;
        self
    }

    /// The time limit of a logical request, all attempts and waits included (default none;
    /// zero is refused). An attempt still running at the deadline is abandoned.
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.policy.deadline = Some(deadline);
        self
    }

    /// No deadline (the default).
    pub fn no_deadline(mut self) -> Self {
        self.policy.deadline = None;
        self
    }

    /// The policy, if its settings are consistent.
    pub fn build(self) -> Result<RetryPolicy, PolicyError> {
        let policy = self.policy;
        if policy.max_attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        if policy.base_delay > policy.max_delay {
            return Err(PolicyError::BaseAboveMax);
        }
        if policy.deadline == Some(Duration::ZERO) {
            return Err(PolicyError::ZeroDeadline);
        }
        Ok(policy)
    }
}

/// Why [`RetryPolicyBuilder::build`] refused its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` is 0: not even the first attempt would be made.
    ZeroAttempts,
    /// `base_delay` is longer than `max_delay`.
    BaseAboveMax,
    /// The deadline is zero: no attempt would have any time.
    ZeroDeadline,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ZeroAttempts => "max_attempts must be at least 1",
            Self::BaseAboveMax => "base_delay must not exceed max_delay",
            Self::ZeroDeadline => "the deadline must be longer than zero",
        })
    }
}

impl StdError for PolicyError {}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn policy() -> RetryPolicy {
        RetryPolicy::builder()
            .max_attempts(5)
            .base_delay(100 * MS)
            .max_delay(1000 * MS)
            .max_retry_after(Duration::from_secs(30))
            .build()
            .unwrap()
    }

    fn status(code: u16) -> StatusCode {
        StatusCode::from_u16(code).unwrap()
    }

    #[test]
    fn retries_exactly_the_transient_statuses() {
        for code in [408, 409, 425, 429, 500, 502, 503, 504] {
            assert!(
                RetryPolicy::retries_status(status(code)),
                "{code} is retried"
            );
        }
        for code in [
            400, 401, 403, 404, 410, 413, 415, 422, // named final
            200, 201, 202, 204, 301, 302, 304, 307, 308, // not failures at all
            402, 405, 406, 407, 411, 412, 414, 416, 417, 418, 421, 423, 424, 426, 428, 431, 451,
            501, 505, 506, 507, 508, 510, 511, 599,
        ] {
            assert!(
                !RetryPolicy::retries_status(status(code)),
                "{code} is final"
            );
        }
        let retried = (100..=999)
            .filter(|&c| RetryPolicy::retries_status(status(c)))
            .count();
        assert_eq!(retried, 8, "nothing else is retried");
    }

    #[test]
    fn defaults() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts(), 5);
        assert_eq!(p.base_delay(), 200 * MS);
        assert_eq!(p.max_delay(), Duration::from_secs(10));
        assert_eq!(p.max_retry_after(), Duration::from_secs(30));
        assert_eq!(p.deadline(), None);
        assert_eq!(RetryPolicy::builder().build().unwrap(), p);
        assert_eq!(RetryPolicy::never().max_attempts(), 1);
    }

    #[test]
    fn builder_refuses_inconsistent_settings() {
        let b = RetryPolicy::builder;
        assert_eq!(b().max_attempts(0).build(), Err(PolicyError::ZeroAttempts));
        assert_eq!(
            b().base_delay(2 * MS).max_delay(MS).build(),
            Err(PolicyError::BaseAboveMax)
        );
        assert_eq!(
            b().deadline(Duration::ZERO).build(),
            Err(PolicyError::ZeroDeadline)
        );
        assert_eq!(
            b().deadline(MS).no_deadline().build().unwrap().deadline(),
            None
        );
        let zero = b().base_delay(Duration::ZERO).build().unwrap();
        assert_eq!(zero.backoff_ceiling(3), Duration::ZERO);
    }

    #[test]
    fn backoff_ceiling_doubles_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<_> = (1..=7).map(|n| p.backoff_ceiling(n)).collect();
        assert_eq!(
            ceilings,
            [100, 200, 400, 800, 1000, 1000, 1000].map(|ms| ms * MS)
        );
        // No overflow however many retries.
        assert_eq!(p.backoff_ceiling(u32::MAX), 1000 * MS);
        let huge = RetryPolicy::builder()
            .base_delay(Duration::from_secs(u64::MAX / 4))
            .max_delay(Duration::MAX)
            .build()
            .unwrap();
        assert_eq!(huge.backoff_ceiling(40), Duration::MAX);
        assert_eq!(huge.backoff_at(40, 1.0), Duration::MAX);
        assert!(huge.backoff(40) <= Duration::MAX);
    }

    #[test]
    fn backoff_is_full_jitter_below_the_ceiling() {
        let p = policy();
        assert_eq!(p.backoff_at(3, 0.0), Duration::ZERO);
        assert_eq!(p.backoff_at(3, 0.5), 200 * MS);
        assert_eq!(p.backoff_at(3, 1.0), 400 * MS);
        assert_eq!(p.backoff_at(3, 7.0), 400 * MS, "fractions are clamped");
        for retry in 1..=6 {
            let ceiling = p.backoff_ceiling(retry);
            let samples: Vec<_> = (0..2000).map(|_| p.backoff(retry)).collect();
            assert!(
                samples.iter().all(|&d| d <= ceiling),
                "never above {ceiling:?}"
            );
            // Uniform over [0, ceiling]: both the low and the high quarter are hit (the
            // chance that 2000 draws miss one is 0.75^2000).
            assert!(
                samples.iter().any(|&d| d < ceiling / 4),
                "jitter reaches low"
            );
            assert!(
                samples.iter().any(|&d| d > ceiling * 3 / 4),
                "jitter reaches high"
            );
            let distinct: std::collections::HashSet<_> = samples.iter().collect();
            assert!(distinct.len() > 1000, "the draws differ");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy();
        let decide = |asked| p.decide_at(1, Duration::ZERO, Some(asked), 0.5);
        assert_eq!(decide(Duration::ZERO), Decision::Retry(Duration::ZERO));
        assert_eq!(decide(7 * MS), Decision::Retry(7 * MS));
        // Longer than any backoff ceiling: Retry-After wins over the backoff cap.
        assert_eq!(
            decide(Duration::from_secs(12)),
            Decision::Retry(Duration::from_secs(12))
        );
        assert_eq!(
            decide(Duration::from_secs(30)),
            Decision::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            decide(Duration::from_secs(31)),
            Decision::Retry(Duration::from_secs(30))
        );
        assert_eq!(
            decide(Duration::MAX),
            Decision::Retry(Duration::from_secs(30))
        );
        // Without it: the jittered backoff of that retry (3 attempts made: retry 3, whose
        // ceiling is 400 ms).
        assert_eq!(
            p.decide_at(3, Duration::ZERO, None, 0.5),
            Decision::Retry(200 * MS)
        );
        assert_eq!(
            p.decide_at(3, Duration::ZERO, None, 1.0),
            Decision::Retry(400 * MS)
        );
        assert_eq!(
            p.decide_at(1, Duration::ZERO, None, 1.0),
            Decision::Retry(100 * MS)
        );
    }

    #[test]
    fn stops_after_max_attempts() {
        let p = policy();
        for attempts in 1..5 {
            assert!(matches!(
                p.decide(attempts, Duration::ZERO, None),
                Decision::Retry(_)
            ));
        }
        for attempts in [5, 6, u32::MAX] {
            assert_eq!(
                p.decide(attempts, Duration::ZERO, None),
                Decision::Stop(StopReason::Attempts)
            );
        }
        assert_eq!(
            RetryPolicy::never().decide(1, Duration::ZERO, Some(MS)),
            Decision::Stop(StopReason::Attempts)
        );
    }

    #[test]
    fn stops_when_the_wait_would_reach_the_deadline() {
        let p = RetryPolicy::builder()
            .deadline(Duration::from_secs(10))
            .build()
            .unwrap();
        let s = Duration::from_secs;
        assert_eq!(p.decide(1, s(2), Some(s(7))), Decision::Retry(s(7)));
        assert_eq!(
            p.decide(1, s(3), Some(s(7))),
            Decision::Stop(StopReason::Deadline)
        );
        assert_eq!(
            p.decide(1, s(10), Some(s(0))),
            Decision::Stop(StopReason::Deadline)
        );
        assert_eq!(
            p.decide(1, s(11), None),
            Decision::Stop(StopReason::Deadline)
        );
        // The cap applies before the deadline check: a 1 h Retry-After is waited 30 s.
        let long = RetryPolicy::builder().deadline(s(40)).build().unwrap();
        assert_eq!(long.decide(1, s(9), Some(s(3600))), Decision::Retry(s(30)));
        assert_eq!(
            long.decide(1, s(10), Some(s(3600))),
            Decision::Stop(StopReason::Deadline)
        );
        // The attempt limit is checked first.
        assert_eq!(
            RetryPolicy::never().decide(1, s(11), None),
            Decision::Stop(StopReason::Attempts)
        );
    }
}
