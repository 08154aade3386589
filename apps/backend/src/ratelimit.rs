//! Rate limits of authentication: invalid credentials per client address (a blocked address
//! gets 429 before its token is looked up, so guessing costs the database nothing), and
//! optionally requests per token.
//!
//! governor directly rather than tower_governor: the keys (a failed attempt's address, a
//! token's id) are only known inside authentication, and only failures count.

use std::{
    collections::HashMap,
    net::IpAddr,
    num::NonZeroU32,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};
use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock as _, DefaultClock},
};

use crate::error::{ProblemDetails, problem_response};

/// Default of `--auth-failure-limit`: invalid credentials per minute from one address.
pub const DEFAULT_AUTH_FAILURES_PER_MINUTE: u32 = 20;

/// Problem slug of a blocked address.
pub const TOO_MANY_AUTH_FAILURES: &str = "too-many-auth-failures";

/// Problem slug of a token over its request limit.
pub const TOO_MANY_REQUESTS: &str = "too-many-requests";

/// Past this many remembered keys, stale ones are forgotten.
const HOUSEKEEPING_AT: usize = 10_000;

/// The limits, each per minute (with a burst of as many); 0 turns one off.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitConfig {
    /// Invalid credentials per client address.
    pub auth_failures_per_minute: u32,
    /// Requests per token.
    pub requests_per_token_per_minute: u32,
}

/// The limiters of one app.
#[derive(Default)]
pub struct RateLimits {
    failures: Option<DefaultKeyedRateLimiter<IpAddr>>,
    /// Addresses over the failure limit, until when: checked before any lookup (governor
    /// cannot test a key without spending a cell, and a valid token must not spend one).
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    per_token: Option<DefaultKeyedRateLimiter<String>>,
}

impl std::fmt::Debug for RateLimits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimits")
            .field("failures", &self.failures.is_some())
            .field("per_token", &self.per_token.is_some())
            .finish_non_exhaustive()
    }
}

fn per_minute<K: std::hash::Hash + Eq + Clone>(n: u32) -> Option<DefaultKeyedRateLimiter<K>> {
    NonZeroU32::new(n).map(|n| RateLimiter::keyed(Quota::per_minute(n)))
}

impl RateLimits {
    /// Limiters for `config`.
    pub fn new(config: RateLimitConfig) -> Self {
        Self {
            failures: per_minute(config.auth_failures_per_minute),
            blocked: Mutex::default(),
            per_token: per_minute(config.requests_per_token_per_minute),
        }
    }

    /// How long `address` is still blocked, if it is.
    pub fn blocked(&self, address: IpAddr) -> Option<Duration> {
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        let until = *blocked.get(&address)?;
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            blocked.remove(&address);
            return None;
        }
        Some(left)
    }

    /// Counts a failed authentication from `address`; past the limit, blocks it and says for
    /// how long.
    pub fn failed(&self, address: IpAddr) -> Option<Duration> {
        let limiter = self.failures.as_ref()?;
        if limiter.len() > HOUSEKEEPING_AT {
            limiter.retain_recent();
        }
        let wait = limiter
            .check_key(&address)
            .err()?
            .wait_time_from(DefaultClock::default().now());
        let mut blocked = self.blocked.lock().unwrap_or_else(|e| e.into_inner());
        if blocked.len() > HOUSEKEEPING_AT {
            let now = Instant::now();
            blocked.retain(|_, until| *until > now);
        }
        blocked.insert(address, Instant::now() + wait);
        Some(wait)
    }

    /// Counts a request of token `id`; past its limit, says how long to wait.
    pub fn token_request(&self, id: &str) -> Option<Duration> {
        let limiter = self.per_token.as_ref()?;
        if limiter.len() > HOUSEKEEPING_AT {
            limiter.retain_recent();
        }
        let wait = limiter
            .check_key(&id.to_owned())
            .err()?
            .wait_time_from(DefaultClock::default().now());
        Some(wait)
    }
}

/// 429 for an address over the failure limit.
pub fn too_many_auth_failures(wait: Duration) -> Response {
    too_many(
        TOO_MANY_AUTH_FAILURES,
        "Too many authentication failures",
        "This client address sent too many invalid credentials; retry after the number of \
         seconds in Retry-After.",
        wait,
    )
}

/// 429 for a token over its request limit.
pub fn too_many_requests(wait: Duration) -> Response {
    too_many(
        TOO_MANY_REQUESTS,
        "Too many requests",
        "This token made more requests than its rate limit allows; retry after the number of \
         seconds in Retry-After.",
        wait,
    )
}

fn too_many(slug: &str, title: &str, detail: &str, wait: Duration) -> Response {
    let problem = ProblemDetails::new(slug, title, 429, detail);
    let mut response = problem_response(&problem).into_response();
    // Whole seconds, rounded up, at least 1.
    let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_block_after_the_burst_only_their_address() {
        let limits = RateLimits::new(RateLimitConfig {
            auth_failures_per_minute: 3,
            requests_per_token_per_minute: 0,
        });
        let (a, b): (IpAddr, IpAddr) = ([10, 0, 0, 1].into(), [10, 0, 0, 2].into());
        assert!((0..3).all(|_| limits.failed(a).is_none()));
        assert!(limits.blocked(a).is_none());
        let wait = limits.failed(a).expect("over the limit");
        assert!(wait > Duration::ZERO && wait <= Duration::from_secs(20));
        assert!(limits.blocked(a).is_some());
        assert!(limits.blocked(b).is_none());
        assert!(limits.token_request("tok_x").is_none(), "off");
    }
}
