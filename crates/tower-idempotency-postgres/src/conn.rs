//! Connections: checked out for one operation, returned only when it finished cleanly, and
//! never waited on without a limit.
//!
//! sqlx 0.8 returns a dropped connection to its pool by pinging it first, in a task of its
//! own, with no time limit (launchbadge/sqlx#4349). A connection that went silent (no FIN,
//! no RST: a failover, an expired NAT entry) keeps that ping, and the pool permit it holds,
//! forever; once every permit is held so, every acquisition fails with "pool timed out"
//! long after the server is reachable again. So a [`Checkout`] closes its connection unless
//! the operation ended with the connection idle and healthy, and bounds the return ping.
//!
//! [`Health`] remembers when connections last failed that way. The pools the store creates
//! discard idle connections older than that failure instead of trying them one by one (each
//! would cost an operation timeout), and bound their own ping before reuse.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use sqlx::{
    Connection, Postgres,
    pool::{PoolConnection, PoolConnectionMetadata},
    postgres::{PgConnection, PgPool, PgPoolOptions},
};

/// When connections of one pool last failed in a way that suggests the path to the server
/// went silent (an operation timed out on its connection, a ping went unanswered).
#[derive(Debug)]
pub(crate) struct Health {
    base: Instant,
    /// Nanoseconds after `base` of the last failure; 0: none yet.
    failed_at: AtomicU64,
}

impl Health {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            failed_at: AtomicU64::new(0),
        })
    }

    fn nanos_since_base(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.base).as_nanos()).unwrap_or(u64::MAX)
    }

    /// Connections open now are suspect: the pool discards them when they are next taken.
    pub(crate) fn connections_failed(&self) {
        let now = self.nanos_since_base(Instant::now()).max(1);
        self.failed_at.fetch_max(now, Ordering::SeqCst);
    }

    /// Whether a connection of this `age` was opened before the last failure.
    fn is_suspect(&self, age: Duration) -> bool {
        let failed_at = self.failed_at.load(Ordering::SeqCst);
        if failed_at == 0 {
            return false;
        }
        let now = Instant::now();
        let opened = now.checked_sub(age).unwrap_or(self.base);
        self.nanos_since_base(opened) < failed_at
    }
}

/// How long a ping (before reuse, or when a connection goes back to the pool) may take
/// before the connection is given up: a quarter of the operation timeout, within
/// 50 ms ..= 1 s. A healthy server answers a ping at once: it takes no lock and runs no
/// statement.
pub(crate) fn ping_within(operation_timeout: Option<Duration>) -> Duration {
    operation_timeout.map_or(Duration::from_secs(1), |t| {
        (t / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    })
}

/// The pools the store creates: sqlx's own unbounded test before acquire is off, and
/// `before_acquire` discards suspect connections and (if `ping` is set) pings the others
/// with a bound.
pub(crate) fn configure(
    options: PgPoolOptions,
    health: Arc<Health>,
    ping: Option<Duration>,
) -> PgPoolOptions {
    options
        .test_before_acquire(false)
        .before_acquire(move |conn, meta| before_acquire(Arc::clone(&health), ping, conn, meta))
}

type BoxFuture<'c, T> = Pin<Box<dyn Future<Output = T> + Send + 'c>>;

fn before_acquire(
    health: Arc<Health>,
    ping: Option<Duration>,
    conn: &mut PgConnection,
    meta: PoolConnectionMetadata,
) -> BoxFuture<'_, Result<bool, sqlx::Error>> {
    Box::pin(async move {
        if health.is_suspect(meta.age) {
            // Closed (a Terminate is written, nothing is awaited) and replaced.
            return Ok(false);
        }
        let Some(within) = ping else {
            return Ok(true);
        };
        match tokio::time::timeout(within, conn.ping()).await {
            Ok(Ok(())) => Ok(true),
            Ok(Err(error)) => {
                health.connections_failed();
                Err(error)
            }
            Err(_) => {
                health.connections_failed();
                Err(sqlx::Error::Io(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("an idle connection did not answer a ping within {within:?}"),
                )))
            }
        }
    })
}

/// A connection checked out for one operation. Dropped without [`keep`](Self::keep) (the
/// operation failed, or was cancelled by its timeout mid-statement), the connection is
/// closed at once and its pool permit freed; kept, it goes back to the pool through a ping
/// bounded by `return_within`.
pub(crate) struct Checkout {
    conn: Option<PoolConnection<Postgres>>,
    keep: bool,
    health: Arc<Health>,
    return_within: Duration,
}

impl Checkout {
    pub(crate) async fn acquire(
        pool: &PgPool,
        health: &Arc<Health>,
        return_within: Duration,
    ) -> Result<Self, sqlx::Error> {
        let conn = pool.acquire().await?;
        Ok(Self {
            conn: Some(conn),
            keep: false,
            health: Arc::clone(health),
            return_within,
        })
    }

    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_deref_mut()
            .expect("a checkout holds its connection until dropped")
    }

    /// The operation ended with the connection idle and healthy: return it to the pool.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        if self.keep
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            // `return_to_pool` is sqlx's own drop path (hidden from its docs, used by
            // sqlx-postgres's PgListener, so kept within 0.8): the ping, then back to the
            // idle queue. Dropped by the timeout, it drops the connection and frees the
            // permit.
            let back = conn.return_to_pool();
            let (health, within) = (Arc::clone(&self.health), self.return_within);
            runtime.spawn(async move {
                if tokio::time::timeout(within, back).await.is_err() {
                    tracing::info!(
                        "a PostgreSQL connection did not answer its release ping within \
                         {within:?}; closed"
                    );
                    health.connections_failed();
                }
            });
            // `conn` is empty now; dropping it only does sqlx's min_connections upkeep.
            return;
        }
        // Closes the socket without waiting on it and frees the pool permit.
        drop(conn.detach());
    }
}
