//! [`TransactionalStore`]: the contract of a database whose transaction the handler borrows.

use std::{fmt, future::Future, ops::DerefMut, time::Duration};

use bytes::Bytes;

use crate::{
    Fingerprint,
    store::{CompletedRecord, RecordId, StoreError},
};

/// A database that keeps idempotency records in the tables of the application's own data, so
/// that a request's writes and its record commit in **one transaction**.
///
/// # What an implementation must guarantee
///
/// 1. **One commit per record.** Of any number of transactions that [`claim`] one id and then
///    [`commit`] a record for it, across any number of processes sharing the database, at most
///    one commits while a live record exists; the others' commits fail with
///    [`CommitError::Conflict`] and roll back everything they wrote. This is what makes the
///    mode exactly-once: it holds even if the locks below were lost.
/// 2. **No lock waits.** While one transaction holds a claim, a [`claim`] of the same id by
///    another transaction answers [`Begun::InFlight`] at once (or after a short, bounded
///    wait), never after the first transaction ends.
/// 3. **Nothing survives a crash but committed records.** A claim lives in the transaction
///    only (an advisory lock, a write lock, an uncommitted row): a process that dies, or a
///    transaction that rolls back, leaves the key free.
/// 4. **Expiry by the database's clock**, as for [`IdempotencyStore`](crate::store::IdempotencyStore):
///    a record whose TTL ran out is not returned by [`lookup`] or [`claim`], and a commit
///    replaces it.
/// 5. **Replays do not write.** [`lookup`] only reads.
/// 6. **Byte-exact records and opaque identities**, as for every store.
///
/// [`claim`]: Self::claim
/// [`commit`]: Self::commit
/// [`lookup`]: Self::lookup
pub trait TransactionalStore: Send + Sync + 'static {
    /// The transaction the handler writes through, reached with
    /// [`Lent::lock`](super::Lent::lock). It dereferences to the driver's connection (e.g.
    /// `sqlx`'s `PgConnection`), so `&mut *guard` is an executor. Dropping it rolls back.
    type Transaction: DerefMut + Send + 'static;

    /// The live completed record of `id`, if any; reads only.
    fn lookup(
        &self,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<CompletedRecord>, StoreError>> + Send;

    /// Begins a transaction that may stay open for `timeout` and claims `id` in it.
    fn claim(
        &self,
        id: &RecordId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Begun<Self::Transaction>, StoreError>> + Send;

    /// Begins a transaction without a claim, for a request that carries no key.
    fn begin(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send;

    /// Writes `record` (if any) in `transaction` and commits it.
    fn commit(
        &self,
        transaction: Self::Transaction,
        record: Option<NewRecord<'_>>,
    ) -> impl Future<Output = Result<(), CommitError>> + Send;

    /// Rolls `transaction` back (errors are the implementation's to log: a transaction that
    /// cannot be rolled back is never committed either).
    fn rollback(&self, transaction: Self::Transaction) -> impl Future<Output = ()> + Send;

    /// Checks that the database is reachable (for readiness probes). Defaults to `Ok`.
    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        async { Ok(()) }
    }
}

impl<T: TransactionalStore> TransactionalStore for std::sync::Arc<T> {
    type Transaction = T::Transaction;

    fn lookup(
        &self,
        id: &RecordId,
    ) -> impl Future<Output = Result<Option<CompletedRecord>, StoreError>> + Send {
        (**self).lookup(id)
    }

    fn claim(
        &self,
        id: &RecordId,
        timeout: Duration,
    ) -> impl Future<Output = Result<Begun<Self::Transaction>, StoreError>> + Send {
        (**self).claim(id, timeout)
    }

    fn begin(
        &self,
        timeout: Duration,
    ) -> impl Future<Output = Result<Self::Transaction, StoreError>> + Send {
        (**self).begin(timeout)
    }

    fn commit(
        &self,
        transaction: Self::Transaction,
        record: Option<NewRecord<'_>>,
    ) -> impl Future<Output = Result<(), CommitError>> + Send {
        (**self).commit(transaction, record)
    }

    fn rollback(&self, transaction: Self::Transaction) -> impl Future<Output = ()> + Send {
        (**self).rollback(transaction)
    }

    fn check(&self) -> impl Future<Output = Result<(), StoreError>> + Send {
        (**self).check()
    }
}

/// What [`TransactionalStore::claim`] found.
#[derive(Debug)]
pub enum Begun<T> {
    /// The id is claimed in this open transaction.
    Claimed(T),
    /// Another transaction holds the claim (its fingerprint is not visible outside it).
    InFlight,
    /// A live record exists (committed after the caller's [`lookup`](TransactionalStore::lookup)).
    Completed(CompletedRecord),
}

/// The record a [`TransactionalStore::commit`] writes.
#[derive(Debug, Clone)]
pub struct NewRecord<'a> {
    /// Whose record.
    pub id: &'a RecordId,
    /// The fingerprint of the request that ran.
    pub fingerprint: &'a Fingerprint,
    /// The encoded response.
    pub response: Bytes,
    /// How long the record lives, from the commit.
    pub ttl: Duration,
}

/// Why a [`TransactionalStore::commit`] did not commit, or may not have.
#[derive(Debug)]
pub enum CommitError {
    /// Another transaction committed a live record for the id first; everything this one
    /// wrote is rolled back.
    Conflict,
    /// The database refused the transaction (a serialization failure, a constraint, a timeout,
    /// a full disk): nothing of it is committed.
    Failed(StoreError),
    /// The connection broke while `COMMIT` was on its way: it may or may not have committed.
    Unknown(StoreError),
}

impl fmt::Display for CommitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Conflict => f.write_str("another request committed a record for this key first"),
            Self::Failed(error) => write!(f, "the transaction was rolled back: {error}"),
            Self::Unknown(error) => write!(f, "the outcome of COMMIT is unknown: {error}"),
        }
    }
}

impl std::error::Error for CommitError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Conflict => None,
            Self::Failed(error) | Self::Unknown(error) => Some(error),
        }
    }
}
