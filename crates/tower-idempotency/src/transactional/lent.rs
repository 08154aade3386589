//! [`Lent`]: the layer's transaction, lent to the handler.

use std::{
    fmt,
    ops::{Deref, DerefMut},
    sync::Arc,
};

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};

/// The open transaction of a request in transactional mode, lent to its handler: an
/// extension of the request (and an axum extractor, feature `axum`). The handler writes
/// through it; the layer takes it back when the handler returns, and commits it together with
/// the idempotency record, or rolls it back.
///
/// ```
/// # use tower_idempotency::transactional::Lent;
/// # async fn handler(tx: Lent<Box<String>>) -> Result<(), tower_idempotency::transactional::LentGone> {
/// let mut tx = tx.lock().await?;
/// // sqlx::query("INSERT ...").execute(&mut *tx).await?;   // `&mut *tx` is the connection
/// tx.push_str("written");
/// # Ok(()) }
/// ```
pub struct Lent<T> {
    slot: Arc<Mutex<Option<T>>>,
}

impl<T> Clone for Lent<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T> fmt::Debug for Lent<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Lent").finish_non_exhaustive()
    }
}

impl<T> Lent<T> {
    pub(crate) fn new(transaction: T) -> Self {
        Self {
            slot: Arc::new(Mutex::new(Some(transaction))),
        }
    }

    /// Exclusive use of the transaction until the guard drops. Fails once the layer has taken
    /// the transaction back (the handler returned: work it spawned cannot write any more).
    pub async fn lock(&self) -> Result<LentGuard<'_, T>, LentGone> {
        MutexGuard::try_map(self.slot.lock().await, Option::as_mut)
            .map(|inner| LentGuard { inner })
            .map_err(|_| LentGone(()))
    }

    /// Takes the transaction back; `None` if a guard is still held somewhere (the handler
    /// passed it to work that outlives it) or it was taken already.
    pub(crate) fn reclaim(&self) -> Option<T> {
        self.slot.try_lock().ok()?.take()
    }
}

/// Exclusive access to a [`Lent`] transaction. Dereferences to what the transaction
/// dereferences to (for sqlx: the connection, an executor as `&mut *guard`).
pub struct LentGuard<'a, T> {
    inner: MappedMutexGuard<'a, T>,
}

impl<T> fmt::Debug for LentGuard<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LentGuard").finish_non_exhaustive()
    }
}

impl<T: Deref> Deref for LentGuard<'_, T> {
    type Target = T::Target;

    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl<T: DerefMut> DerefMut for LentGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// The layer took the transaction back: the handler that borrowed it has returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LentGone(());

impl fmt::Display for LentGone {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the request's transaction was used after its handler returned")
    }
}

impl std::error::Error for LentGone {}

#[cfg(feature = "axum")]
mod extract {
    use axum::{
        extract::FromRequestParts,
        http::{StatusCode, header, request::Parts},
        response::{IntoResponse, Response},
    };

    use super::{Lent, LentGone};

    /// The route is not behind a transactional layer, or the method is one it does not act on.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct NoLentTransaction(());

    impl std::fmt::Display for NoLentTransaction {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(
                "no transaction is lent to this request: is the route behind \
                 IdempotencyLayer::transactional, for this method?",
            )
        }
    }

    impl std::error::Error for NoLentTransaction {}

    fn internal_problem(detail: &str) -> Response {
        let body = serde_json::json!({
            "type": format!("{}transaction-missing", crate::problem::DEFAULT_TYPE_BASE),
            "title": "Request transaction missing",
            "status": 500,
            "detail": detail,
        });
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, crate::problem::PROBLEM_JSON)],
            body.to_string(),
        )
            .into_response()
    }

    impl IntoResponse for NoLentTransaction {
        fn into_response(self) -> Response {
            tracing::error!("{self}");
            internal_problem("The server is misconfigured: the request has no transaction.")
        }
    }

    impl IntoResponse for LentGone {
        fn into_response(self) -> Response {
            tracing::error!("{self}");
            internal_problem("The request's transaction ended before its handler used it.")
        }
    }

    impl<S, T> FromRequestParts<S> for Lent<T>
    where
        S: Send + Sync,
        T: Send + 'static,
    {
        type Rejection = NoLentTransaction;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
            parts
                .extensions
                .get::<Lent<T>>()
                .cloned()
                .ok_or(NoLentTransaction(()))
        }
    }
}

#[cfg(feature = "axum")]
pub use self::extract::NoLentTransaction;

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_handler_loses_access_once_the_layer_takes_it_back() {
        let lent = Lent::new(Box::new(String::from("tx")));
        let handler = lent.clone();
        handler.lock().await.unwrap().push_str("+write");
        {
            let _held = handler.lock().await.unwrap();
            assert!(lent.reclaim().is_none(), "a held guard blocks the reclaim");
        }
        assert_eq!(*lent.reclaim().unwrap(), "tx+write");
        assert_eq!(handler.lock().await.unwrap_err(), LentGone(()));
    }
}
