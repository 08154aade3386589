//! Claiming a key when the caller may go away at any moment.
//!
//! A client that disconnects drops the request's future. Dropped while its claim is on the
//! way, or after the claim succeeded but before the handler started, the layer would leave a
//! claim that nobody runs: the key blocked (409) for a whole lease. So a claim always runs to
//! its answer, and a key acquired for a caller who left is released at once.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use super::outcome::release;
use crate::{
    Fingerprint,
    layer::Config,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError},
};

type ClaimFuture = Pin<Box<dyn Future<Output = Result<Claim, StoreError>> + Send>>;

/// The store's answer to one claim, finished on a task of its own if dropped first.
pub(super) struct ClaimToAnswer<St: IdempotencyStore> {
    future: Option<ClaimFuture>,
    config: Arc<Config<St>>,
    id: RecordId,
}

impl<St: IdempotencyStore> ClaimToAnswer<St> {
    pub(super) fn new(config: &Arc<Config<St>>, id: RecordId, fingerprint: Fingerprint) -> Self {
        let store = Arc::clone(config);
        let future =
            Box::pin(async move { store.store.claim(&id, &fingerprint, store.lease).await });
        Self {
            future: Some(future),
            config: Arc::clone(config),
            id,
        }
    }
}

impl<St: IdempotencyStore> Future for ClaimToAnswer<St> {
    type Output = Result<Claim, StoreError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(future) = self.future.as_mut() else {
            return Poll::Pending; // polled after completion: never resolves again
        };
        let answer = std::task::ready!(future.as_mut().poll(cx));
        self.future = None;
        Poll::Ready(answer)
    }
}

impl<St: IdempotencyStore> Drop for ClaimToAnswer<St> {
    fn drop(&mut self) {
        let Some(future) = self.future.take() else {
            return;
        };
        let (config, id) = (Arc::clone(&self.config), self.id);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                if let Ok(Claim::Acquired(token)) = future.await {
                    tracing::debug!("the caller left before its claim was answered; releasing");
                    release(&config, &id, token).await;
                }
            });
        }
    }
}

/// Held from a successful claim until the handler's execution takes over: dropped armed (the
/// caller left in between), it releases the key.
pub(super) struct NotStarted<St: IdempotencyStore> {
    config: Option<Arc<Config<St>>>,
    id: RecordId,
    token: FencingToken,
}

impl<St: IdempotencyStore> NotStarted<St> {
    pub(super) fn new(config: &Arc<Config<St>>, id: RecordId, token: FencingToken) -> Self {
        Self {
            config: Some(Arc::clone(config)),
            id,
            token,
        }
    }

    /// The execution (or a release) is in charge of the key now.
    pub(super) fn disarm(mut self) {
        self.config = None;
    }
}

impl<St: IdempotencyStore> Drop for NotStarted<St> {
    fn drop(&mut self) {
        let Some(config) = self.config.take() else {
            return;
        };
        let (id, token) = (self.id, self.token);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { release(&config, &id, token).await });
        }
    }
}
