//! [`IdempotencyLayer`]: the configuration builder.

use std::{fmt, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Method, Response, StatusCode, request::Parts};
use tower::Layer;

use crate::{
    Idempotency, Scope,
    flow::LeaseKeeper,
    policy::store_success_and_redirects,
    problem::{DEFAULT_TYPE_BASE, Problem},
    store::IdempotencyStore,
    tasks::HandlerTasks,
};

/// Longest lease accepted; longer ones are clamped (a claim outliving its owner by more than
/// a day helps nobody, and stores must be able to express it).
pub const MAX_LEASE: Duration = Duration::from_secs(24 * 60 * 60);
/// Shortest lease accepted; shorter ones are raised to it.
pub const MIN_LEASE: Duration = Duration::from_millis(30);
/// Longest TTL accepted; longer ones are clamped.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 24 * 60 * 60);
/// How long the handler's transaction may stay open in transactional mode, unless set.
pub const DEFAULT_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait of [`InFlightPolicy::Wait`] and longest `Retry-After`; longer ones are clamped.
pub const MAX_WAIT: Duration = Duration::from_secs(60 * 60);

/// What a request with a key gets while the first request with that key is still running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlightPolicy {
    /// Answer 409 `key-in-use` at once, with this `Retry-After` (the default, 1 s).
    Reject {
        /// Sent as `Retry-After`, rounded up to whole seconds.
        retry_after: Duration,
    },
    /// Wait up to `timeout` for the first request to finish and replay its response; answer
    /// 409 if it is still running by then. Holds a connection per waiting retry.
    Wait {
        /// The longest a retry waits.
        timeout: Duration,
        /// Sent as `Retry-After` with the 409 answered after a fruitless wait.
        retry_after: Duration,
    },
}

/// What happens when the store cannot be reached (or is full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreFailurePolicy {
    /// Answer 503 with this `Retry-After` and execute nothing (the default, 5 s).
    FailClosed {
        /// Sent as `Retry-After`.
        retry_after: Duration,
    },
    /// Execute the request without deduplication when the store is unreachable or full.
    /// Availability over exactly-once: pick this only if the handler has its own guard
    /// against duplicates. A store that answers but is misconfigured or returns records it
    /// cannot read ([`StoreErrorKind::Backend`](crate::store::StoreErrorKind::Backend),
    /// [`Corrupt`](crate::store::StoreErrorKind::Corrupt)) is still refused (503), and logged
    /// at error level: failing open would hide it.
    FailOpen,
}

impl InFlightPolicy {
    fn clamped(self) -> Self {
        match self {
            Self::Reject { retry_after } => Self::Reject {
                retry_after: retry_after.min(MAX_WAIT),
            },
            Self::Wait {
                timeout,
                retry_after,
            } => Self::Wait {
                timeout: timeout.min(MAX_WAIT),
                retry_after: retry_after.min(MAX_WAIT),
            },
        }
    }
}

impl StoreFailurePolicy {
    fn clamped(self) -> Self {
        match self {
            Self::FailClosed { retry_after } => Self::FailClosed {
                retry_after: retry_after.min(MAX_WAIT),
            },
            Self::FailOpen => Self::FailOpen,
        }
    }
}

/// A layer configuration that cannot work, found by [`IdempotencyLayer::validate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub(crate) String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

pub(crate) type ScopeFn = dyn Fn(&Parts) -> Option<Scope> + Send + Sync;
pub(crate) type StatusPredicate = dyn Fn(StatusCode) -> bool + Send + Sync;
pub(crate) type Responder = dyn Fn(&Problem) -> Response<Bytes> + Send + Sync;

/// Everything the service needs, shared by all its clones.
pub(crate) struct Config<St> {
    pub(crate) store: Arc<St>,
    pub(crate) scope: Option<Arc<ScopeFn>>,
    pub(crate) allow_unscoped: bool,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) in_flight: InFlightPolicy,
    pub(crate) on_store_failure: StoreFailurePolicy,
    pub(crate) store_status: Arc<StatusPredicate>,
    pub(crate) responder: Option<Arc<Responder>>,
    pub(crate) problem_type_base: String,
    pub(crate) tasks: HandlerTasks,
    /// Transactional mode: how long the handler's transaction may stay open.
    pub(crate) transaction_timeout: Duration,
    /// Renews the claims of running handlers; never shared between two configurations.
    pub(crate) leases: LeaseKeeper,
}

impl<St> Config<St> {
    /// The defaults, documented on [`IdempotencyLayer::new`].
    pub(crate) fn new(store: St) -> Self {
        Config {
            store: Arc::new(store),
            scope: None,
            allow_unscoped: false,
            methods: vec![Method::POST, Method::PATCH],
            require_key: false,
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(30),
            max_request_body: 1024 * 1024,
            max_response_body: 1024 * 1024,
            in_flight: InFlightPolicy::Reject {
                retry_after: Duration::from_secs(1),
            },
            on_store_failure: StoreFailurePolicy::FailClosed {
                retry_after: Duration::from_secs(5),
            },
            store_status: Arc::new(store_success_and_redirects),
            responder: None,
            problem_type_base: DEFAULT_TYPE_BASE.to_owned(),
            tasks: HandlerTasks::default(),
            transaction_timeout: DEFAULT_TRANSACTION_TIMEOUT,
            leases: LeaseKeeper::default(),
        }
    }
}

impl<St> Clone for Config<St> {
    fn clone(&self) -> Self {
        Self {
            store: Arc::clone(&self.store),
            scope: self.scope.clone(),
            allow_unscoped: self.allow_unscoped,
            methods: self.methods.clone(),
            require_key: self.require_key,
            ttl: self.ttl,
            lease: self.lease,
            max_request_body: self.max_request_body,
            max_response_body: self.max_response_body,
            in_flight: self.in_flight,
            on_store_failure: self.on_store_failure,
            store_status: Arc::clone(&self.store_status),
            responder: self.responder.clone(),
            problem_type_base: self.problem_type_base.clone(),
            tasks: self.tasks.clone(),
            transaction_timeout: self.transaction_timeout,
            leases: LeaseKeeper::default(),
        }
    }
}

/// Applies [`Idempotency`] to a service: see the [crate docs](crate) for the behaviour.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::{IdempotencyLayer, InFlightPolicy, store::memory::MemoryStore};
///
/// # #[derive(Clone)] struct User { id: String }
/// let layer = IdempotencyLayer::new(MemoryStore::default())
///     .scope(|parts| parts.extensions.get::<User>().map(|u| u.id.clone().into()))
///     .ttl(Duration::from_secs(24 * 3600))
///     .in_flight(InFlightPolicy::Wait {
///         timeout: Duration::from_secs(10),
///         retry_after: Duration::from_secs(1),
///     });
/// ```
pub struct IdempotencyLayer<St> {
    config: Arc<Config<St>>,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            config: Arc::clone(&self.config),
        }
    }
}

impl<St> fmt::Debug for IdempotencyLayer<St> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.debug_struct("IdempotencyLayer")
            .field("methods", &c.methods)
            .field("require_key", &c.require_key)
            .field("ttl", &c.ttl)
            .field("lease", &c.lease)
            .field("max_request_body", &c.max_request_body)
            .field("max_response_body", &c.max_response_body)
            .field("in_flight", &c.in_flight)
            .field("on_store_failure", &c.on_store_failure)
            .finish_non_exhaustive()
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// A layer over `store` with the defaults: POST and PATCH, key optional, 24 h TTL, 30 s
    /// lease, 1 MiB request and response limits, 409 while in flight, fail closed, 2xx and 3xx
    /// stored. Keyed requests need a [`scope`](Self::scope) (or
    /// [`allow_unscoped`](Self::allow_unscoped)), or they get 401.
    pub fn new(store: St) -> Self {
        Self::from_config(Config::new(store))
    }

    /// How long a claim survives without renewal (default 30 s; clamped to
    /// [`MIN_LEASE`]..=[`MAX_LEASE`]). The layer renews it every third of the lease while the
    /// handler runs, from a task of its own; after a crash the key is free again once the
    /// lease ends.
    pub fn lease(self, lease: Duration) -> Self {
        self.with(|c| c.lease = lease.clamp(MIN_LEASE, MAX_LEASE))
    }

    /// Checks that the configuration can keep its promise: today, that the store can hold a
    /// response of `max_response_body` bytes at all (an in-memory budget smaller than that
    /// would refuse every large response after its handler ran). Call it at start-up to
    /// report a bad configuration as an error; wrapping a service checks it too.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.config;
        if let Some(max) = c.store.max_record_bytes()
            && c.max_response_body > max
        {
            return Err(ConfigError(format!(
                "max_response_body ({} bytes) exceeds the largest record the store can keep \
                 ({max} bytes): raise the store's budget or lower the response limit",
                c.max_response_body
            )));
        }
        Ok(())
    }
}

impl<St> IdempotencyLayer<St> {
    pub(crate) fn from_config(config: Config<St>) -> Self {
        Self {
            config: Arc::new(config),
        }
    }

    pub(crate) fn config(&self) -> &Arc<Config<St>> {
        &self.config
    }

    pub(crate) fn with(mut self, f: impl FnOnce(&mut Config<St>)) -> Self {
        f(Arc::make_mut(&mut self.config));
        self
    }

    /// Derives the key's owner from the request (typically an authenticated user that an
    /// auth layer running first put into the extensions). `None` means "unauthenticated":
    /// keyed requests then get 401 `scope-missing`.
    pub fn scope<F>(self, scope: F) -> Self
    where
        F: Fn(&Parts) -> Option<Scope> + Send + Sync + 'static,
    {
        self.with(|c| c.scope = Some(Arc::new(scope)))
    }

    /// Lets keyed requests without a scope share one global scope instead of getting 401.
    /// Only for APIs where every client is the same principal.
    pub fn allow_unscoped(self, allow: bool) -> Self {
        self.with(|c| c.allow_unscoped = allow)
    }

    /// The methods the layer acts on (default POST and PATCH); others pass through.
    pub fn methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods = methods.into_iter().collect();
        self.with(|c| c.methods = methods)
    }

    /// Answer 400 `key-required` to requests without a key (default: they just run).
    pub fn require_key(self, require: bool) -> Self {
        self.with(|c| c.require_key = require)
    }

    /// How long a completed response is replayed (default 24 h, at most [`MAX_TTL`]).
    pub fn ttl(self, ttl: Duration) -> Self {
        self.with(|c| c.ttl = ttl.min(MAX_TTL))
    }

    /// Largest request body accepted with a key (default 1 MiB); larger ones get 413.
    pub fn max_request_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_request_body = bytes)
    }

    /// Largest response body kept for replay (default 1 MiB). A larger response still
    /// reaches its caller; retries get 410 `response-not-kept`, never a second execution.
    pub fn max_response_body(self, bytes: usize) -> Self {
        self.with(|c| c.max_response_body = bytes)
    }

    /// What a retry gets while the first request runs (default: 409 with `Retry-After: 1`).
    /// Waits and `Retry-After` are clamped to [`MAX_WAIT`].
    pub fn in_flight(self, policy: InFlightPolicy) -> Self {
        self.with(|c| c.in_flight = policy.clamped())
    }

    /// What happens when the store fails (default: 503 with `Retry-After: 5`, clamped to
    /// [`MAX_WAIT`]).
    pub fn on_store_failure(self, policy: StoreFailurePolicy) -> Self {
        self.with(|c| c.on_store_failure = policy.clamped())
    }

    /// Which responses are kept for replay, by status (default: 2xx and 3xx). Responses not
    /// kept release the key. `Cache-Control: no-store` on a response always prevents storing.
    pub fn store_responses_when<F>(self, predicate: F) -> Self
    where
        F: Fn(StatusCode) -> bool + Send + Sync + 'static,
    {
        self.with(|c| c.store_status = Arc::new(predicate))
    }

    /// The prefix of every problem `type` (default `urn:tower-idempotency:problem:`), e.g.
    /// `https://api.example.com/problems/` to point at your own documentation.
    pub fn problem_type_base(self, base: impl Into<String>) -> Self {
        let base = base.into();
        self.with(|c| c.problem_type_base = base)
    }

    /// Replaces the problem responses with your own.
    pub fn problem_responder<F>(self, responder: F) -> Self
    where
        F: Fn(&Problem) -> Response<Bytes> + Send + Sync + 'static,
    {
        self.with(|c| c.responder = Some(Arc::new(responder)))
    }

    /// The handlers this layer started (detached ones included), to wait for on shutdown.
    pub fn handler_tasks(&self) -> HandlerTasks {
        self.config.tasks.clone()
    }

    /// Counts this layer's handlers in `tasks`, e.g. one tracker shared by several layers.
    pub fn with_handler_tasks(self, tasks: HandlerTasks) -> Self {
        self.with(|c| c.tasks = tasks)
    }

    /// The store, e.g. for readiness checks.
    pub fn store(&self) -> &St {
        &self.config.store
    }
}

impl<S, St: IdempotencyStore> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    /// # Panics
    ///
    /// When [`validate`](IdempotencyLayer::validate) fails: a router is built at start-up,
    /// so the mistake surfaces before any request is served, never per request.
    fn layer(&self, inner: S) -> Self::Service {
        if let Err(error) = self.validate() {
            panic!("invalid IdempotencyLayer configuration: {error}");
        }
        Idempotency::from_config(inner, Arc::clone(&self.config))
    }
}
