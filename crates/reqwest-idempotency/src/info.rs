//! [`RetryInfo`]: what the middleware tells the caller about the answer it hands over.

use crate::policy::StopReason;

/// How the final answer of a logical request came about. The middleware puts one in the
/// extensions of every [`reqwest::Response`] it returns (read it with
/// [`ResponseExt::retry_info`](crate::ResponseExt::retry_info)), and [`GaveUp`](crate::GaveUp)
/// and [`Rejected`](crate::Rejected) errors carry one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryInfo {
    attempts: u32,
    replayed: bool,
    key: Option<String>,
    gave_up: Option<StopReason>,
}

impl RetryInfo {
    pub(crate) fn new(
        attempts: u32,
        replayed: bool,
        key: Option<String>,
        gave_up: Option<StopReason>,
    ) -> Self {
        Self {
            attempts,
            replayed,
            key,
            gave_up,
        }
    }

    /// Attempts made, this one included (1: no retry was needed).
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the server marked the answer `Idempotent-Replayed: true`: an earlier attempt
    /// (whose answer was lost) executed the request, and this is its stored response.
    pub fn replayed(&self) -> bool {
        self.replayed
    }

    /// The idempotency key every attempt carried, unquoted (`"abc"` → `abc`); `None` for a
    /// request without one (an idempotent method). To retry the logical request later,
    /// send it again with this key.
    pub fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }

    /// `Some` when the answer is a transient failure (409, 503...) that was not retried
    /// further, and why; `None` when it is final (a success, or an answer not worth
    /// retrying).
    pub fn gave_up(&self) -> Option<StopReason> {
        self.gave_up
    }
}
