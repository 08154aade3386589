//! Waiting for a request in flight, as [`InFlightPolicy`] says: shared by both modes.

use std::time::Duration;

use tokio::time::Instant;

use crate::layer::InFlightPolicy;

/// The longest pause between two looks of a waiting duplicate.
const MAX_POLL_INTERVAL: Duration = Duration::from_millis(250);

/// The waits of one duplicate: pauses doubling from 10 ms up to [`MAX_POLL_INTERVAL`], until
/// the policy's deadline.
pub(crate) struct InFlightWait {
    /// `None`: never wait (409 at once). `Some(None)`: a deadline past the clock's range, so
    /// as long as allowed.
    deadline: Option<Option<Instant>>,
    interval: Duration,
}

impl InFlightWait {
    /// Starts the clock of `policy` now.
    pub(crate) fn new(policy: InFlightPolicy) -> Self {
        let deadline = match policy {
            InFlightPolicy::Wait { timeout, .. } => Some(Instant::now().checked_add(timeout)),
            InFlightPolicy::Reject { .. } => None,
        };
        Self {
            deadline,
            interval: Duration::from_millis(10),
        }
    }

    /// Pauses before the next look and returns `true`, or returns `false` at once when the
    /// duplicate is to be answered 409 now.
    pub(crate) async fn pause(&mut self) -> bool {
        let may_wait = match self.deadline {
            Some(Some(deadline)) => Instant::now() + self.interval < deadline,
            Some(None) => true,
            None => false,
        };
        if may_wait {
            tokio::time::sleep(self.interval).await;
            self.interval = (self.interval * 2).min(MAX_POLL_INTERVAL);
        }
        may_wait
    }
}
