//! The connection to a single server: one multiplexed connection, rebuilt when it fails.
//!
//! The redis crate's `ConnectionManager` reconnects only after an error that closes the
//! connection. A connection that went silent (a primary that vanished without a FIN, an
//! expired NAT or firewall entry) closes nothing: every command times out on it, for good.
//! This one also gives up a connection on which a command timed out **without any reply
//! arriving while it waited**: a whole response timeout of silence while a reply was owed. A
//! command that is merely slow, while replies to earlier commands keep arriving, does not
//! condemn the connection.
//!
//! A connection that failed is replaced by the next command that needs one (one connection
//! attempt at a time; the others wait for it). Commands that may be sent twice ([`Resend::Safe`])
//! are sent once more on the fresh connection, within the operation's deadline, so a claim
//! that met a dead connection still succeeds; the others fail, and the next call reconnects.

use std::{
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, ErrorKind, RedisError, RedisResult, Value};

use crate::connection::Resend;

/// A reconnecting connection to one server. Cheap to clone: clones share the connection.
#[derive(Clone)]
pub(crate) struct SingleNode(Arc<Shared>);

struct Shared {
    client: Client,
    config: AsyncConnectionConfig,
    /// The connection in use, if any. Replaced once it failed.
    current: Mutex<Option<Arc<Link>>>,
    /// Held while connecting, so that one attempt runs at a time.
    connecting: tokio::sync::Mutex<()>,
    /// Reference point of the [`Link`] timestamps.
    epoch: Instant,
}

/// One connection and what it has done lately.
struct Link {
    connection: MultiplexedConnection,
    /// Nanoseconds after the epoch at which the last reply (a value or a server error) was read.
    last_reply: AtomicU64,
    failed: AtomicBool,
}

impl SingleNode {
    /// Connects once (the error is the connection attempt's).
    pub(crate) async fn connect(
        client: Client,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        let node = Self(Arc::new(Shared {
            client,
            config,
            current: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(()),
            epoch: Instant::now(),
        }));
        node.link().await?;
        Ok(node)
    }

    /// Sends `cmd`, on a fresh connection if the current one failed; once more if it fails on
    /// the way and `resend` allows it.
    pub(crate) async fn query(&self, cmd: &Cmd, resend: Resend) -> RedisResult<Value> {
        let mut resent = false;
        loop {
            let link = self.link().await?;
            match self.send(&link, cmd).await {
                Err(error) if link.failed.load(Ordering::Acquire) => {
                    if resend == Resend::Safe && !resent {
                        resent = true;
                        tracing::debug!(%error, "Redis connection failed; sending again");
                        continue;
                    }
                    return Err(error);
                }
                result => return result,
            }
        }
    }

    async fn send(&self, link: &Link, cmd: &Cmd) -> RedisResult<Value> {
        let sent_at = self.now();
        let result = link.connection.clone().send_packed_command(cmd).await;
        match &result {
            Ok(_) => link.replied(self.now()),
            Err(error) if is_reply(error) => link.replied(self.now()),
            Err(error) if error.is_timeout() => {
                if link.last_reply.load(Ordering::Acquire) < sent_at {
                    tracing::warn!(
                        "no reply from Redis for a whole response timeout; reconnecting"
                    );
                    link.fail();
                }
            }
            Err(error) if error.is_unrecoverable_error() || error.is_connection_dropped() => {
                tracing::debug!(%error, "Redis connection lost; reconnecting");
                link.fail();
            }
            Err(_) => {}
        }
        result
    }

    /// The current connection, or a new one if there is none or it failed.
    async fn link(&self) -> RedisResult<Arc<Link>> {
        if let Some(link) = self.usable() {
            return Ok(link);
        }
        let _connecting = self.0.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(link) = self.usable() {
            return Ok(link);
        }
        let connection = self
            .0
            .client
            .get_multiplexed_async_connection_with_config(&self.0.config)
            .await?;
        let link = Arc::new(Link {
            connection,
            last_reply: AtomicU64::new(self.now()),
            failed: AtomicBool::new(false),
        });
        *self.lock() = Some(Arc::clone(&link));
        Ok(link)
    }

    fn usable(&self) -> Option<Arc<Link>> {
        self.lock()
            .as_ref()
            .filter(|link| !link.failed.load(Ordering::Acquire))
            .cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Arc<Link>>> {
        self.0
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> u64 {
        u64::try_from(self.0.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Link {
    fn replied(&self, at: u64) {
        self.last_reply.fetch_max(at, Ordering::AcqRel);
    }

    fn fail(&self) {
        self.failed.store(true, Ordering::Release);
    }
}

/// The server answered (with an error): the connection works.
fn is_reply(error: &RedisError) -> bool {
    matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension)
}
