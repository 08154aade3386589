//! [`Probed`]: a pass-through store wrapper that counts what the layer asked of the store.
//!
//! It changes nothing about the store's answers; it only lets a scenario wait for a state of
//! the protocol ("every duplicate has seen the claim in flight", "the lease was renewed six
//! times") instead of sleeping, and check ordering guarantees ("the key was released before
//! the 500 was sent").

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use tokio::sync::watch;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError},
};

use crate::SIGNAL_TIMEOUT;

/// What the store has answered so far, by call and outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct StoreCalls {
    /// Claims answered [`Claim::Acquired`].
    pub acquired: usize,
    /// Claims answered [`Claim::InFlight`].
    pub in_flight: usize,
    /// Claims answered [`Claim::Completed`].
    pub completed: usize,
    /// Successful renewals.
    pub renewed: usize,
    /// Successful completions (a response, or the note that it was too large, was stored).
    pub stored: usize,
    /// Successful releases.
    pub released: usize,
    /// Calls of any kind that failed.
    pub errors: usize,
}

/// Reads and waits on the [`StoreCalls`] of one [`Probed`] store.
#[derive(Clone)]
pub struct Probe(Arc<watch::Sender<StoreCalls>>);

impl Probe {
    /// The counts so far.
    pub fn calls(&self) -> StoreCalls {
        *self.0.borrow()
    }

    /// Resolves once `ready` holds for the counts; fails the test (naming `what`) after
    /// [`SIGNAL_TIMEOUT`].
    pub async fn wait_until(&self, what: &str, mut ready: impl FnMut(&StoreCalls) -> bool) {
        let mut rx = self.0.subscribe();
        if tokio::time::timeout(SIGNAL_TIMEOUT, rx.wait_for(|c| ready(c)))
            .await
            .is_err()
        {
            panic!(
                "timed out after {SIGNAL_TIMEOUT:?} waiting for the store to see {what}; \
                 it saw {:?}",
                self.calls()
            );
        }
    }

    fn record(&self, f: impl FnOnce(&mut StoreCalls)) {
        self.0.send_modify(f);
    }

    fn outcome<T>(&self, result: &Result<T, StoreError>, f: impl FnOnce(&mut StoreCalls)) {
        match result {
            Ok(_) => self.record(f),
            Err(_) => self.record(|c| c.errors += 1),
        }
    }
}

impl fmt::Debug for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Probe").field(&self.calls()).finish()
    }
}

/// A store that forwards every call to `St` and counts the answers in its [`Probe`].
#[derive(Debug)]
pub struct Probed<St> {
    inner: St,
    probe: Probe,
}

impl<St> Probed<St> {
    /// Wraps `store`; the probe reads what it answers.
    pub fn new(store: St) -> (Self, Probe) {
        let probe = Probe(Arc::new(watch::Sender::new(StoreCalls::default())));
        let store = Self {
            inner: store,
            probe: probe.clone(),
        };
        (store, probe)
    }

    /// The wrapped store.
    pub fn get_ref(&self) -> &St {
        &self.inner
    }
}

impl<St: IdempotencyStore> IdempotencyStore for Probed<St> {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let result = self.inner.claim(id, fingerprint, lease).await;
        self.probe.outcome(&result, |c| match &result {
            Ok(Claim::Acquired(_)) => c.acquired += 1,
            Ok(Claim::InFlight { .. }) => c.in_flight += 1,
            Ok(Claim::Completed(_)) => c.completed += 1,
            Err(_) => unreachable!("outcome records errors itself"),
        });
        result
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let result = self.inner.renew(id, token, lease).await;
        self.probe.outcome(&result, |c| c.renewed += 1);
        result
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let result = self.inner.complete(id, token, response, ttl).await;
        self.probe.outcome(&result, |c| c.stored += 1);
        result
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        let result = self.inner.release(id, token).await;
        self.probe.outcome(&result, |c| c.released += 1);
        result
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }

    fn max_record_bytes(&self) -> Option<usize> {
        self.inner.max_record_bytes()
    }
}
