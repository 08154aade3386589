//! Type erasure for stores chosen at run time (memory, Redis or PostgreSQL by configuration).

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError};
use crate::Fingerprint;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The object-safe mirror of [`IdempotencyStore`], implemented for every store.
trait DynStore: Send + Sync + 'static {
    fn claim<'a>(
        &'a self,
        id: &'a RecordId,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>>;
    fn renew<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn complete<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn release<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>>;
    fn max_record_bytes(&self) -> Option<usize>;
}

impl<T: IdempotencyStore> DynStore for T {
    fn claim<'a>(
        &'a self,
        id: &'a RecordId,
        fingerprint: &'a Fingerprint,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Claim, StoreError>> {
        Box::pin(IdempotencyStore::claim(self, id, fingerprint, lease))
    }
    fn renew<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(IdempotencyStore::renew(self, id, token, lease))
    }
    fn complete<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(IdempotencyStore::complete(self, id, token, response, ttl))
    }
    fn release<'a>(
        &'a self,
        id: &'a RecordId,
        token: FencingToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(IdempotencyStore::release(self, id, token))
    }
    fn check(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(IdempotencyStore::check(self))
    }
    fn max_record_bytes(&self) -> Option<usize> {
        IdempotencyStore::max_record_bytes(self)
    }
}

/// Any [`IdempotencyStore`] behind one type, for stores picked by configuration.
///
/// ```
/// use tower_idempotency::store::{BoxStore, memory::MemoryStore};
///
/// let store = BoxStore::new(MemoryStore::default());
/// let _shared = store.clone();
/// ```
#[derive(Clone)]
pub struct BoxStore(Arc<dyn DynStore>);

impl BoxStore {
    /// Erases the type of `store`.
    pub fn new(store: impl IdempotencyStore) -> Self {
        Self(Arc::new(store))
    }
}

impl fmt::Debug for BoxStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BoxStore").finish_non_exhaustive()
    }
}

impl IdempotencyStore for BoxStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.0.claim(id, fingerprint, lease).await
    }
    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.0.renew(id, token, lease).await
    }
    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.0.complete(id, token, response, ttl).await
    }
    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.0.release(id, token).await
    }
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        self.0.check()
    }
    fn max_record_bytes(&self) -> Option<usize> {
        self.0.max_record_bytes()
    }
}
