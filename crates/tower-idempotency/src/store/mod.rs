//! The store contract: where claims and completed responses live.
//!
//! The layer decides HTTP; the store decides atomicity. A store keeps, per [`RecordId`], one
//! record that is either *in flight* (claimed by one request, guarded by a lease and a
//! [`FencingToken`]) or *completed* (an encoded response, kept for a TTL).
//!
//! # What an implementation must guarantee
//!
//! 1. **Exclusive claims.** Of any number of concurrent [`claim`](IdempotencyStore::claim)s
//!    for one id, across any number of processes sharing the store, at most one returns
//!    [`Claim::Acquired`] while a live record exists. The others see the record as it is:
//!    [`Claim::InFlight`] with the claimer's fingerprint, or [`Claim::Completed`].
//! 2. **Expiry by the store's clock.** An in-flight record whose lease ran out, and a completed
//!    record whose TTL ran out, no longer exist: the next claim acquires the id afresh. Leases
//!    and TTLs are measured by the store's own clock (the Redis or database server's), never
//!    the caller's, so instances with skewed clocks agree.
//! 3. **Fencing.** Every acquisition hands out a token never handed out before for that id.
//!    [`complete`](IdempotencyStore::complete), [`release`](IdempotencyStore::release) and
//!    [`renew`](IdempotencyStore::renew) succeed only while the record is in flight under that
//!    token, and fail with [`StoreErrorKind::LeaseLost`] otherwise: an owner whose lease
//!    expired can never overwrite or delete the record of the owner that took over.
//! 4. **Byte-exact records.** [`Claim::Completed`] returns exactly the bytes given to
//!    `complete`, and the fingerprint given to the claim that acquired the record.
//! 5. **Opaque identities.** Stores only ever see hashed ids and fingerprints, never raw
//!    keys or user ids.
//! 6. **One error type.** Backend failures map to [`StoreError`]; an unreachable backend is
//!    [`StoreErrorKind::Unavailable`], so the layer can fail closed (503) or open.
//! 7. **A claim can always be completed.** A store with a capacity limit reserves, when it
//!    hands out [`Claim::Acquired`], room for a record of [`RESERVED_RECORD_BYTES`]: a
//!    `complete` of at most that many bytes by the owner never fails for lack of room. The
//!    layer relies on it to record that a request ran (status and headers, body not kept)
//!    when the full response does not fit, so that a retry never executes it again. A store
//!    that can refuse larger records outright says so in
//!    [`max_record_bytes`](IdempotencyStore::max_record_bytes), and the layer refuses a
//!    configuration whose responses could never fit.
//!
//! `tower_idempotency::testing` holds a conformance suite that checks all of this against any
//! implementation (feature `test-suite`).

mod dyn_store;
mod error;
pub mod memory;
mod token;

use std::{fmt, future::Future, time::Duration};

use bytes::Bytes;
use sha2::{Digest, Sha256};

pub use self::dyn_store::BoxStore;
pub use self::error::{StoreError, StoreErrorKind};
pub use self::token::FencingToken;
use crate::{Fingerprint, IdempotencyKey};

/// Room a capacity-limited store reserves with every claim (see guarantee 7 above): enough
/// for a record of the status and a few headers of a response whose body is not kept.
pub const RESERVED_RECORD_BYTES: usize = 1024;

/// The identity of one record: SHA-256 over the scope (e.g. the user) and the key.
///
/// Neither the raw key nor the scope can be read back from it, and one scope's key never
/// addresses another scope's record.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RecordId([u8; RecordId::LEN]);

impl RecordId {
    /// Size in bytes.
    pub const LEN: usize = 32;

    /// Derives the id of `key` within `scope`.
    ///
    /// ```
    /// use tower_idempotency::{IdempotencyKey, store::RecordId};
    ///
    /// let key = IdempotencyKey::parse(b"k-1").unwrap();
    /// assert_eq!(RecordId::new(b"alice", &key), RecordId::new(b"alice", &key));
    /// assert_ne!(RecordId::new(b"alice", &key), RecordId::new(b"bob", &key));
    /// ```
    pub fn new(scope: &[u8], key: &IdempotencyKey) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(b"tower-idempotency record v1\0");
        // Length-prefix the scope so ("ab", "c") and ("a", "bc") cannot meet.
        hasher.update((scope.len() as u64).to_be_bytes());
        hasher.update(scope);
        hasher.update(key.as_str().as_bytes());
        Self(hasher.finalize().into())
    }

    /// Rebuilds an id a store kept.
    pub const fn from_bytes(bytes: [u8; Self::LEN]) -> Self {
        Self(bytes)
    }

    /// The raw id.
    pub const fn as_bytes(&self) -> &[u8; Self::LEN] {
        &self.0
    }

    /// Lower-case hex, for stores that key by text (64 characters).
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(Self::LEN * 2);
        self.push_hex(&mut out);
        out
    }

    /// Appends the lower-case hex of [`to_hex`](Self::to_hex) to `out`, for a store that
    /// builds a key around it without a second string.
    pub fn push_hex(&self, out: &mut String) {
        for b in self.0 {
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({})", &self.to_hex()[..16])
    }
}

/// What [`IdempotencyStore::claim`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// No live record existed; the caller now owns a fresh in-flight record.
    Acquired(FencingToken),
    /// Another request holds the id and is still running.
    InFlight {
        /// The fingerprint of the request that holds the claim.
        fingerprint: Fingerprint,
    },
    /// A request with this id completed; here is what it stored.
    Completed(CompletedRecord),
}

/// A completed record as a store returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompletedRecord {
    /// The fingerprint of the request that produced the response.
    pub fingerprint: Fingerprint,
    /// The encoded response, exactly as given to [`IdempotencyStore::complete`].
    pub response: Bytes,
}

/// An async key-value store with atomic claim-then-complete, shared by every instance that
/// must agree on which request runs. See the [module docs](self) for the guarantees.
///
/// Implement it with `async fn`s; the futures must be `Send`. For a store chosen at run time,
/// wrap it in a [`BoxStore`].
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Atomically: if no live record exists for `id`, create an in-flight record holding
    /// `fingerprint` with a lease of `lease` and return [`Claim::Acquired`]; otherwise return
    /// what exists.
    fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Extends the lease of an in-flight record owned by `token` to `lease` from now.
    fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Turns the in-flight record owned by `token` into a completed record holding
    /// `response`, kept for `ttl` from now.
    fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the in-flight record owned by `token`, so the key can be used again.
    fn release(
        &self,
        id: &RecordId,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Checks that the backend is reachable (for readiness probes). Defaults to `Ok`.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }

    /// The largest encoded response this store could ever keep, if it has such a limit (an
    /// in-memory budget). The layer checks its response limit against it when it is built.
    /// Defaults to `None`: no limit of its own.
    fn max_record_bytes(&self) -> Option<usize> {
        None
    }
}

impl<T: IdempotencyStore> IdempotencyStore for std::sync::Arc<T> {
    fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send {
        (**self).claim(id, fingerprint, lease)
    }

    fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).renew(id, token, lease)
    }

    fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).complete(id, token, response, ttl)
    }

    fn release(
        &self,
        id: &RecordId,
        token: FencingToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).release(id, token)
    }

    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).check()
    }

    fn max_record_bytes(&self) -> Option<usize> {
        (**self).max_record_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scope_boundaries_are_unambiguous() {
        let key = |s: &str| IdempotencyKey::parse(s.as_bytes()).unwrap();
        assert_ne!(
            RecordId::new(b"ab", &key("c")),
            RecordId::new(b"a", &key("bc"))
        );
        assert_eq!(RecordId::new(b"", &key("x")).to_hex().len(), 64);
    }
}
