//! [`Faulty`]: a store wrapper that injects the faults a real store can produce, around a
//! real store.
//!
//! The layer's promises under store faults (a `complete` that fails after the handler ran, a
//! renewal that stalls or is refused) are tested at the layer level with it; the real
//! servers' own faults (silenced connections, paused nodes) are tested against the servers.

use std::{
    fmt,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError, StoreErrorKind},
};

/// A store operation faults can be injected into.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// [`IdempotencyStore::claim`].
    Claim,
    /// [`IdempotencyStore::renew`].
    Renew,
    /// [`IdempotencyStore::complete`].
    Complete,
    /// [`IdempotencyStore::release`].
    Release,
}

const OPERATIONS: usize = 4;

impl Operation {
    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Script {
    /// How many of the next calls fail (`usize::MAX`: all of them).
    fail: usize,
    kind: Option<StoreErrorKind>,
    /// Each call waits this long before it is forwarded (or fails).
    delay: Duration,
    /// Faults injected so far.
    injected: usize,
    /// Calls seen so far.
    calls: usize,
    /// The lease (claim, renew) or TTL (complete) of the last call.
    last_duration: Option<Duration>,
}

/// The fault plan shared by a test and its [`Faulty`] store: what to inject next, and what
/// was injected.
#[derive(Clone, Default)]
pub struct Faults(Arc<Mutex<[Script; OPERATIONS]>>);

impl Faults {
    /// A plan that injects nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Wraps `store` so that its calls follow this plan.
    pub fn wrap<St>(&self, store: St) -> Faulty<St> {
        Faulty {
            inner: store,
            faults: self.clone(),
        }
    }

    /// The next `times` calls of `operation` fail with `kind` without reaching the store
    /// (`usize::MAX`: every call from now on).
    pub fn fail(&self, operation: Operation, times: usize, kind: StoreErrorKind) -> &Self {
        let mut plan = self.lock();
        let script = &mut plan[operation.index()];
        script.fail = times;
        script.kind = Some(kind);
        self
    }

    /// Every call of `operation` waits `delay` first.
    pub fn delay(&self, operation: Operation, delay: Duration) -> &Self {
        self.lock()[operation.index()].delay = delay;
        self
    }

    /// Stops injecting anything.
    pub fn heal(&self) {
        for script in self.lock().iter_mut() {
            script.fail = 0;
            script.delay = Duration::ZERO;
        }
    }

    /// Faults injected into `operation` so far.
    pub fn injected(&self, operation: Operation) -> usize {
        self.lock()[operation.index()].injected
    }

    /// Calls of `operation` seen so far, failed or not.
    pub fn calls(&self, operation: Operation) -> usize {
        self.lock()[operation.index()].calls
    }

    /// The lease (claim, renew) or TTL (complete) the layer asked for in its last call of
    /// `operation`.
    pub fn last_duration(&self, operation: Operation) -> Option<Duration> {
        self.lock()[operation.index()].last_duration
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, [Script; OPERATIONS]> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Applies the plan to one call: waits, then says whether to fail it.
    async fn before(
        &self,
        operation: Operation,
        duration: Option<Duration>,
    ) -> Result<(), StoreError> {
        let (delay, fault) = {
            let mut plan = self.lock();
            let script = &mut plan[operation.index()];
            script.calls += 1;
            script.last_duration = duration.or(script.last_duration);
            let fault = match script.kind {
                Some(kind) if script.fail > 0 => {
                    if script.fail != usize::MAX {
                        script.fail -= 1;
                    }
                    script.injected += 1;
                    Some(kind)
                }
                _ => None,
            };
            (script.delay, fault)
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match fault {
            Some(kind) => Err(StoreError::new(
                kind,
                format!("injected {operation:?} fault"),
            )),
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Faults").field(&*self.lock()).finish()
    }
}

/// A real store whose calls follow a [`Faults`] plan.
#[derive(Debug)]
pub struct Faulty<St> {
    inner: St,
    faults: Faults,
}

impl<St: IdempotencyStore> IdempotencyStore for Faulty<St> {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.faults.before(Operation::Claim, Some(lease)).await?;
        self.inner.claim(id, fingerprint, lease).await
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.faults.before(Operation::Renew, Some(lease)).await?;
        self.inner.renew(id, token, lease).await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.faults.before(Operation::Complete, Some(ttl)).await?;
        self.inner.complete(id, token, response, ttl).await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.faults.before(Operation::Release, None).await?;
        self.inner.release(id, token).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.inner.check().await
    }

    fn max_record_bytes(&self) -> Option<usize> {
        self.inner.max_record_bytes()
    }
}
