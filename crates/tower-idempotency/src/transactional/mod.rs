//! **Transactional mode**: the idempotency record commits in the handler's own database
//! transaction.
//!
//! With a separate store, a request's effects and its record are two commits: a crash between
//! them leaves either a claim that must expire or effects without a record, and the layer can
//! only narrow that window (leases, fencing, "ran, not kept" records). Here the layer begins a
//! transaction, claims the key in it and lends it to the handler ([`Lent`], an axum extractor
//! and a request extension). When the handler returns a response that is to be kept (the same
//! [storage policy](crate::IdempotencyLayer::store_responses_when) as always), the layer writes
//! the record into that transaction and commits **before** answering; otherwise (4xx, 5xx,
//! `Cache-Control: no-store`, an error, a panic, a timeout) it rolls back, and the handler's
//! writes and the claim vanish together. A crash at any point leaves both or neither: there is
//! no lease to wait out and no ownerless record, and a retry after any crash is a replay or a
//! first execution, both correct.
//!
//! | request | answer |
//! |---|---|
//! | keyed, first | runs in a transaction; a kept response commits with its record, else rolls back |
//! | keyed, completed | replayed from a read (no transaction, no write) |
//! | keyed, while the first runs | 409 `key-in-use` at once (or wait and replay), holding no connection while it waits |
//! | `COMMIT` refused | 503 `transaction-failed` + `Retry-After`: nothing took effect |
//! | connection lost during `COMMIT` | 503 `outcome-unknown` + `Retry-After`: the retry replays or executes, both correct |
//! | handler past [`transaction_timeout`](crate::IdempotencyLayer::transaction_timeout) | 503 `handler-timed-out`, rolled back |
//! | no key (configured methods) | runs in a transaction of its own, committed for 2xx/3xx |
//!
//! The rest (400, 401, 413, 422, replays, problem+json) is as in the separate-store mode. While
//! a first request runs, the fingerprint it claimed with is inside its uncommitted transaction,
//! so a concurrent request with the same key and a *different* body gets 409 (and 422 once the
//! first has committed). A client that disconnects does not cancel the handler: it runs on, on
//! a task of its own, to its commit, and the retry finds the record.
//!
//! ```text
//! let layer = IdempotencyLayer::transactional(SqliteTransactionalStore::new(pool.clone()))
//!     .scope(|parts| ...);
//! async fn create(tx: Lent<SqliteTransaction>, ...) -> ... {
//!     let mut tx = tx.lock().await?;
//!     sqlx::query("INSERT INTO orders ...").execute(&mut *tx).await?;
//! }
//! ```
//! (runnable examples: `tower-idempotency-sqlite` and `tower-idempotency-postgres`).
//!
//! # Effects outside the database
//!
//! Only the database's writes join the transaction. An e-mail sent, a message published or a
//! call to another API from the handler happens even when the transaction then rolls back (a
//! 4xx, a failed commit, a crash before `COMMIT`), and happens again when the retry executes.
//! The pattern that works is an **outbox**: the handler writes "send this e-mail" as a row in
//! the same transaction, and a worker delivers committed rows after the commit (marking each
//! delivered, with the row's id as the downstream idempotency key). The effect then happens
//! exactly when the request committed, once.
//!
//! # Sizing
//!
//! Every running keyed request holds one pooled connection for its whole handler (its
//! transaction); replays, 409s and waiting duplicates hold none while they wait. Size the pool
//! for the concurrent writes you expect plus the reads, and keep
//! [`transaction_timeout`](crate::IdempotencyLayer::transaction_timeout) short: a transaction
//! holds its locks until it ends.
//!
//! # Implementing a store
//!
//! [`TransactionalStore`] lists the guarantees; `tower-idempotency-postgres` (advisory lock,
//! commit-time `INSERT ... ON CONFLICT`) and `tower-idempotency-sqlite` (`BEGIN IMMEDIATE`)
//! implement it.

mod flow;
mod lent;
mod service;
mod store;

#[cfg(feature = "axum")]
pub use self::lent::NoLentTransaction;
pub use self::{
    lent::{Lent, LentGone, LentGuard},
    store::{Begun, CommitError, NewRecord, TransactionalStore},
};

/// A [`TransactionalStore`] as the store of an [`IdempotencyLayer`](crate::IdempotencyLayer):
/// what [`IdempotencyLayer::transactional`](crate::IdempotencyLayer::transactional) wraps it in.
#[derive(Debug, Clone)]
pub struct Transactional<T>(pub(crate) T);

impl<T> Transactional<T> {
    /// The wrapped store.
    pub fn get_ref(&self) -> &T {
        &self.0
    }
}
