//! [`Idempotency`]: the tower service.

use std::{
    fmt,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{Request, Response, request::Parts};
use http_body::Body;
use tower::{Service, util::Oneshot};
use tracing::Instrument;

use crate::{
    IdempotencyKey, Scope,
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

    pub(crate) fn config(&self) -> &Arc<Config<St>> {
        &self.config
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

    /// Always ready: the inner service is readied on a clone only once a request is to run,
    /// so replays and 409s never wait behind a limit placed below the layer.
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        // A clone of the inner service per request that reaches it (readied there, see
        // `poll_ready`); none for a refusal.
        match classify(&self.config, req) {
            Route::Untouched(req) | Route::Unkeyed(req) => ResponseFuture::passthrough(
                Oneshot::new(self.inner.clone(), req.map(RequestBody::streaming)),
            ),
            Route::Refused(kind) => ResponseFuture::ready(flow::reject(&self.config, kind)),
            Route::Keyed(keyed) => {
                let flow = flow::run(Arc::clone(&self.config), self.inner.clone(), keyed);
                ResponseFuture::flow(Box::pin(flow.instrument(flow::span())))
            }
        }
    }
}

/// Where a request goes, decided from its method and headers alone.
pub(crate) enum Route<B> {
    /// A method the layer does not act on.
    Untouched(Request<B>),
    /// An acted-on method without a key, which is optional.
    Unkeyed(Request<B>),
    /// Answered by the layer at once.
    Refused(ProblemKind),
    /// A keyed request of a known scope.
    Keyed(Keyed<B>),
}

/// A keyed request, split for fingerprinting.
pub(crate) struct Keyed<B> {
    pub(crate) parts: Parts,
    pub(crate) body: B,
    pub(crate) key: IdempotencyKey,
    pub(crate) scope: Scope,
}

pub(crate) fn classify<St, B>(config: &Config<St>, req: Request<B>) -> Route<B> {
    if !config.methods.contains(req.method()) {
        return Route::Untouched(req);
    }
    let key = match IdempotencyKey::from_headers(req.headers()) {
        Ok(Some(key)) => key,
        Ok(None) if config.require_key => return Route::Refused(ProblemKind::KeyRequired),
        Ok(None) => return Route::Unkeyed(req),
        Err(error) => return Route::Refused(ProblemKind::KeyInvalid(error)),
    };
    let (parts, body) = req.into_parts();
    let scope = match config.scope.as_ref().and_then(|scope| scope(&parts)) {
        Some(scope) => scope,
        None if config.allow_unscoped => Scope::from(&b""[..]),
        None => return Route::Refused(ProblemKind::ScopeMissing),
    };
    Route::Keyed(Keyed {
        parts,
        body,
        key,
        scope,
    })
}
