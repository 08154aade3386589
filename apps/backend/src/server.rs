//! The accept loop: HTTP/1.1 connections with bounded idleness and a bounded count, and the
//! ordered graceful shutdown.
//!
//! # Why HTTP/1.1 only
//!
//! hyper-util's automatic HTTP/1-or-2 detection reads the first bytes of a connection with no
//! timer, so a client that sends nothing (or one byte) held its socket forever, and enough of
//! them exhausted the file descriptors. Served as HTTP/1.1 only, hyper arms
//! `--header-timeout` as soon as it polls a connection, before its first byte, and again while a
//! keep-alive connection waits for its next request: a silent or idle socket is closed once it
//! elapses. HTTP/2 would bring nothing here: the API is meant behind a TLS-terminating proxy or
//! load balancer (which speaks HTTP/1.1 upstream), no client of it needs cleartext HTTP/2
//! with prior knowledge, and HTTP/2 adds a denial-of-service surface of its own (rapid resets,
//! CONTINUATION floods, stream-level idleness) for no gain.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use axum::{extract::ConnectInfo, http::HeaderValue, response::IntoResponse as _};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto::Builder as ConnectionBuilder, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tower::ServiceExt as _;

use crate::{error::AppError, request_id::REQUEST_ID};

/// Default of `--shutdown-grace`: what orchestrators commonly allow (Kubernetes'
/// `terminationGracePeriodSeconds`) before they SIGKILL.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Default of `--shutdown-readiness-delay`: long enough for load balancers probing every few
/// seconds to see `/readyz` fail and stop sending.
pub const DEFAULT_READINESS_DELAY: Duration = Duration::from_secs(5);

/// Default of `--max-connections`: well under the common soft limit of 1,024 file
/// descriptors, which the database pool, logs and the idempotency store need too.
pub const DEFAULT_MAX_CONNECTIONS: usize = 512;

/// Limits of the accept loop.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Longest wait for a request's headers, from the connection's start (its first byte
    /// included) and between the requests of a keep-alive connection.
    pub header_timeout: Duration,
    /// Most connections served at once; more wait in the listen backlog until one closes.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `shutdown` resolves (to a deadline), then stops
/// accepting and lets the open connections finish their requests until that deadline. Unlike
/// `axum::serve`, it gives hyper a timer, which the header timeout needs, and puts each
/// connection's peer address into its requests as [`ConnectInfo`].
pub async fn serve_connections(
    listener: TcpListener,
    router: axum::Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = Instant>,
) {
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    let mut deadline = None;
    let mut builder = ConnectionBuilder::new(TokioExecutor::new()).http1_only();
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let mut last_warned = None;
    loop {
        // A permit before accepting: past the cap, connections queue in the kernel's backlog
        // (and the client's connect timeout applies) instead of costing a descriptor here.
        let permit = tokio::select! {
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_closed) => break,
            },
            at = &mut shutdown => {
                deadline = Some(at);
                break;
            }
        };
        // Once per minute at most: under a flood, every freed slot would log again.
        if permits.available_permits() == 0
            && last_warned.is_none_or(|at: Instant| at.elapsed() > Duration::from_secs(60))
        {
            last_warned = Some(Instant::now());
            tracing::warn!(
                max_connections = limits.max_connections,
                "connection limit reached; new connections wait"
            );
        }
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            at = &mut shutdown => {
                deadline = Some(at);
                break;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = router
            .clone()
            .map_request(move |mut request: axum::extract::Request<_>| {
                request
                    .extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(peer));
                request
            });
        // `serve_connection`, not `serve_connection_with_upgrades`: the latter sniffs the
        // protocol version (an untimed read) even when only HTTP/1 is enabled.
        let connection = builder
            .serve_connection(TokioIo::new(stream), TowerToHyperService::new(service))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(error = %error, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    tracing::info!("stopped accepting connections; draining the open ones");
    let deadline = deadline.unwrap_or_else(Instant::now);
    if tokio::time::timeout_at(deadline.into(), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open at the end of the shutdown grace period");
    } else {
        tracing::info!("connections drained");
    }
}

/// Whether `/readyz` may answer: it fails from the start of a shutdown on, while the server
/// still serves, so load balancers stop sending before connections are refused.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    /// From now on `/readyz` answers 503 `not-ready`.
    pub fn fail(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// `router` with `/readyz` answering 503 once [`fail`](Self::fail) was called.
    pub fn guard(&self, router: axum::Router) -> axum::Router {
        let failed = self.0.clone();
        router.layer(axum::middleware::from_fn(
            move |request: axum::extract::Request, next: axum::middleware::Next| {
                let failed = failed.load(Ordering::SeqCst) && request.uri().path() == "/readyz";
                async move {
                    if !failed {
                        return next.run(request).await;
                    }
                    // Outside the app's request-id layers: echo or mint the id here.
                    let id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .filter(|v| crate::request_id::is_valid(v.as_bytes()))
                        .cloned()
                        .unwrap_or_else(|| {
                            HeaderValue::from_str(&uuid::Uuid::new_v4().to_string())
                                .unwrap_or_else(|_| HeaderValue::from_static("-"))
                        });
                    let mut response =
                        AppError::NotReady("The server is shutting down.".to_owned())
                            .into_response();
                    response.headers_mut().insert(REQUEST_ID, id);
                    response
                }
            },
        ))
    }
}

/// The shutdown, in its order: on SIGINT/SIGTERM, `/readyz` fails at once while everything
/// else is still served for `readiness_delay`; then [`serve_connections`] stops accepting
/// and drains the open connections, and the caller waits for detached handlers, both until
/// the deadline this resolves to: `grace` after the signal.
pub async fn shutdown_sequence(
    readiness: Readiness,
    readiness_delay: Duration,
    grace: Duration,
) -> Instant {
    shutdown_signal().await;
    let deadline = Instant::now() + grace;
    readiness.fail();
    tracing::info!(
        delay = %humantime::format_duration(readiness_delay),
        grace = %humantime::format_duration(grace),
        "readiness now fails; still serving until the delay ends"
    );
    tokio::time::sleep(readiness_delay.min(grace)).await;
    deadline
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM (what orchestrators send).
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => tracing::info!("SIGINT received; shutting down gracefully"),
        () = terminate => tracing::info!("SIGTERM received; shutting down gracefully"),
    }
}
