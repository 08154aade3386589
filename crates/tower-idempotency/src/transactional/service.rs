//! The layer and service of transactional mode: [`IdempotencyLayer::transactional`].

use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Layer, Service, util::Oneshot};

use super::{Transactional, TransactionalStore, flow};
use crate::{
    ConfigError, Idempotency, IdempotencyLayer, StoreFailurePolicy,
    body::{RequestBody, ResponseBody},
    future::ResponseFuture,
    layer::{Config, MAX_WAIT},
    service::{Route, classify},
};

impl<T: TransactionalStore> IdempotencyLayer<Transactional<T>> {
    /// A layer in **transactional mode** over `store`: every request of the configured
    /// methods runs in a transaction of `store`'s database, lent to the handler as a
    /// [`Lent`](super::Lent); a keyed request's record is written and committed in that same
    /// transaction. See the [module docs](super). Defaults as for [`IdempotencyLayer::new`];
    /// leases do not exist here.
    pub fn transactional(store: T) -> Self {
        Self::from_config(Config::new(Transactional(store)))
    }

    /// How long the handler's transaction may stay open (default
    /// [`DEFAULT_TRANSACTION_TIMEOUT`](crate::DEFAULT_TRANSACTION_TIMEOUT), at most
    /// [`MAX_WAIT`]). A handler still running then is dropped and its transaction rolled
    /// back (503 `handler-timed-out`); stores also bound it on the server
    /// (PostgreSQL: `idle_in_transaction_session_timeout`, `statement_timeout`).
    pub fn transaction_timeout(self, timeout: Duration) -> Self {
        self.with(|c| c.transaction_timeout = timeout.min(MAX_WAIT))
    }

    /// Checks that the configuration can keep its promise: failing open cannot lend a
    /// transaction that could not begin, so it is refused here.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.config().on_store_failure == StoreFailurePolicy::FailOpen {
            return Err(ConfigError(
                "StoreFailurePolicy::FailOpen has no meaning in transactional mode: the \
                 handler's own transaction needs the database"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

impl<S, T: TransactionalStore> Layer<S> for IdempotencyLayer<Transactional<T>> {
    type Service = Idempotency<S, Transactional<T>>;

    /// # Panics
    ///
    /// When [`validate`](IdempotencyLayer::validate) fails.
    fn layer(&self, inner: S) -> Self::Service {
        if let Err(error) = self.validate() {
            panic!("invalid IdempotencyLayer configuration: {error}");
        }
        Idempotency::from_config(inner, Arc::clone(self.config()))
    }
}

impl<S, T, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, Transactional<T>>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    T: TransactionalStore,
    ReqBody: Body<Data = Bytes> + Send + 'static,
    ReqBody::Error: Into<Box<dyn std::error::Error + Send + Sync>> + Send,
    ResBody: Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<Oneshot<S, Request<RequestBody<ReqBody>>>, ResBody, S::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let inner = self.get_ref().clone();
        let config = self.config();
        match classify(config, req) {
            Route::Untouched(req) => {
                ResponseFuture::passthrough(Oneshot::new(inner, req.map(RequestBody::streaming)))
            }
            Route::Unkeyed(req) => {
                ResponseFuture::flow(Box::pin(flow::run_unkeyed(Arc::clone(config), inner, req)))
            }
            Route::Refused(kind) => ResponseFuture::ready(crate::flow::reject(config, kind)),
            Route::Keyed(keyed) => {
                ResponseFuture::flow(Box::pin(flow::run_keyed(Arc::clone(config), inner, keyed)))
            }
        }
    }
}
