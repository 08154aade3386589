//! [`Idempotency`]: the tower service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use tower::{Service, util::Oneshot};

use crate::{
    IdempotencyKey,
    body::{RequestBody, ResponseBody},
    flow,
    future::ResponseFuture,
    layer::Config,
    problem::ProblemKind,
    store::IdempotencyStore,
};

/// Executes each keyed request once and replays its response to retries. Built by
/// [`IdempotencyLayer`](crate::IdempotencyLayer).
///
/// It is always ready: the inner service is driven to readiness (`poll_ready`, then `call`,
/// on a clone) inside the response future, and only once the layer has decided to run it.
/// A retry that is answered from the store, waits for its first request or is refused
/// never holds the inner service's capacity (a concurrency limit below this layer, say).
pub struct Idempotency<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S, St> Idempotency<S, St> {
    pub(crate) fn from_config(inner: S, config: Arc<Config<St>>) -> Self {
        Self { inner, config }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: Arc::clone(&self.config),
        }
    }
}

impl<S: fmt::Debug, St> fmt::Debug for Idempotency<S, St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Idempotency<S, St>
where
    S: Service<Request<RequestBody<ReqBody>>, Response = Response<ResBody>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: IdempotencyStore,
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
        let inner = self.inner.clone();
        let config = &self.config;

        if !config.methods.contains(req.method()) {
            return ResponseFuture::passthrough(Oneshot::new(
                inner,
                req.map(RequestBody::streaming),
            ));
        }
        let key = match IdempotencyKey::from_headers(req.headers()) {
            Ok(Some(key)) => key,
            Ok(None) if config.require_key => {
                return ResponseFuture::ready(flow::reject(config, ProblemKind::KeyRequired));
            }
            Ok(None) => {
                return ResponseFuture::passthrough(Oneshot::new(
                    inner,
                    req.map(RequestBody::streaming),
                ));
            }
            Err(error) => {
                return ResponseFuture::ready(flow::reject(config, ProblemKind::KeyInvalid(error)));
            }
        };
        let (parts, body) = req.into_parts();
        let scope = match config.scope.as_ref().and_then(|scope| scope(&parts)) {
            Some(scope) => scope,
            None if config.allow_unscoped => crate::Scope::from(&b""[..]),
            None => return ResponseFuture::ready(flow::reject(config, ProblemKind::ScopeMissing)),
        };
        ResponseFuture::flow(Box::pin(flow::run(
            Arc::clone(config),
            inner,
            parts,
            body,
            key,
            scope,
        )))
    }
}
