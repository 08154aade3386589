//! The connection to a Redis Cluster: the redis crate's cluster connection, rebuilt whole when
//! the connection to one of its nodes went silent.
//!
//! The cluster client reconnects to a node after an error that closes the connection (a
//! restart, a reset), and re-reads the slot map after redirects. A connection that went silent
//! (a primary whose host vanished without a FIN, an expired NAT or firewall entry) closes
//! nothing: the client re-sends a command that timed out on the same connection, and has no
//! way to be told to replace one node's connection. Every command to that primary's slots
//! then times out, for good (until TCP gives up on the connection, if ever).
//!
//! So this wrapper watches for it. A command that waited a whole response timeout with no
//! answer is suspect; the node its key lives on is then asked a `GET` of the same key (the
//! *probe*; for `PING`, which has no key, the command itself is the probe). A node that does
//! not answer the probe within half a response timeout either is silent: a fresh cluster
//! connection is built (new connections to every node, a new slot map), checked with the same
//! probe, and swapped in; the old one serves what is in flight on it and closes once that is
//! done. Commands that may be sent twice ([`Resend::Safe`]: claims, renewals, `PING`) are sent
//! again on the new connection, within the operation's deadline; `complete` and `release`
//! keep waiting for their first attempt.
//!
//! One rebuild runs at a time (commands that find one running wait for it), and rebuilds are
//! rate-limited: after one, the next may start [`MIN_REBUILD_INTERVAL`] (or the deadline, if
//! longer) later, and a rebuild following soon after the previous one doubles the interval,
//! up to [`MAX_REBUILD_INTERVAL`]. A rebuilt connection that does not reach the silent node
//! either (a node really down) is thrown away, so the healthy nodes keep their connections.
//! Nothing of this costs a round trip while the cluster answers.

use std::{
    future::{Future, poll_fn},
    pin::{Pin, pin},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::Poll,
    time::{Duration, Instant},
};

use redis::{
    Cmd, ErrorKind, RedisError, RedisResult, Value,
    aio::ConnectionLike,
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
    cluster_routing::{
        MultipleNodeRoutingInfo, ResponsePolicy, Route, RoutingInfo, SingleNodeRoutingInfo,
        SlotAddr,
    },
};
use tokio::sync::watch;

use crate::connection::Resend;

/// The shortest time between the starts of two rebuilds (or the deadline, if longer).
const MIN_REBUILD_INTERVAL: Duration = Duration::from_secs(1);
/// The longest: what a primary that stays unreachable costs, one rebuild this often.
const MAX_REBUILD_INTERVAL: Duration = Duration::from_secs(10);

/// A self-repairing cluster connection. Cheap to clone: clones share it.
#[derive(Clone)]
pub(crate) struct Cluster(Arc<Shared>);

struct Shared {
    client: ClusterClient,
    /// The connection in use; replaced by a rebuild (which also wakes the commands waiting for
    /// it, whether it succeeded or not).
    current: watch::Sender<Arc<Generation>>,
    rebuilds: Mutex<Rebuilds>,
    response_timeout: Duration,
    /// The longest an operation may take (connect timeout plus response timeout).
    deadline: Duration,
}

/// One cluster connection, numbered in the order they were built.
struct Generation {
    connection: ClusterConnection,
    number: u64,
}

/// Whether the node a command went to answers: a `GET` of the command's key (or a `PING` of
/// every primary), routed the way the command was.
#[derive(Debug, Clone)]
enum Probe {
    Key(Box<str>),
    AllPrimaries,
}

impl Cluster {
    /// Connects (the error is the connection attempt's).
    pub(crate) async fn connect(
        client: ClusterClient,
        response_timeout: Duration,
        deadline: Duration,
    ) -> RedisResult<Self> {
        let connection = client.get_async_connection().await?;
        let (current, _) = watch::channel(Arc::new(Generation {
            connection,
            number: 0,
        }));
        Ok(Self(Arc::new(Shared {
            client,
            current,
            rebuilds: Mutex::new(Rebuilds::default()),
            response_timeout,
            deadline,
        })))
    }

    /// Sends `cmd`, routed by the cluster client (by its key, which must be `key` if it has
    /// one). After a whole response timeout without an answer it checks the node, replaces a
    /// silent connection, and sends `cmd` once more on the new one if `resend` allows it.
    pub(crate) async fn query(
        &self,
        cmd: &Cmd,
        key: Option<&str>,
        resend: Resend,
    ) -> RedisResult<Value> {
        let generation = self.current();
        let mut attempt = pin!(generation.send(cmd));
        if let Ok(result) = tokio::time::timeout(self.0.response_timeout, attempt.as_mut()).await {
            return result;
        }
        let probe = key.map_or(Probe::AllPrimaries, |key| Probe::Key(key.into()));
        match race(attempt.as_mut(), self.recover(&generation, probe)).await {
            Either::Left(answer) => answer,
            Either::Right(Some(newer)) if resend == Resend::Safe => {
                tracing::debug!("sending again on the rebuilt Redis Cluster connection");
                newer.send(cmd).await
            }
            // Not to be sent twice, or nothing better to send it on: the first attempt may
            // still be answered within the deadline.
            Either::Right(_) => attempt.await,
        }
    }

    /// `cmd` with an explicit routing, on the current connection, without any recovery (for
    /// loading the scripts up front).
    pub(crate) async fn route_command(&self, cmd: Cmd, routing: RoutingInfo) -> RedisResult<Value> {
        let mut connection = self.current().connection.clone();
        connection.route_command(cmd, routing).await
    }

    fn current(&self) -> Arc<Generation> {
        Arc::clone(&self.0.current.borrow())
    }

    /// After a command on `generation` waited a whole response timeout: a newer connection if
    /// there is one, or if the probe finds the node silent and a rebuild succeeds.
    async fn recover(&self, generation: &Arc<Generation>, probe: Probe) -> Option<Arc<Generation>> {
        if let Some(newer) = self.newer_than(generation) {
            return Some(newer);
        }
        let silent = match &probe {
            Probe::Key(_) => {
                !answers(&generation.connection, &probe, self.0.response_timeout / 2).await
            }
            // A PING of every primary that waited a whole response timeout is the probe.
            Probe::AllPrimaries => true,
        };
        if !silent {
            return None;
        }
        self.replace(generation, probe).await
    }

    fn newer_than(&self, generation: &Generation) -> Option<Arc<Generation>> {
        let current = self.current();
        (current.number > generation.number).then_some(current)
    }

    /// Replaces `generation`, which has a silent connection: waits for a rebuild (starting one
    /// unless one runs, or the last one was too recent) and returns its connection.
    async fn replace(&self, generation: &Arc<Generation>, probe: Probe) -> Option<Arc<Generation>> {
        let mut changes = self.0.current.subscribe();
        loop {
            let newest = Arc::clone(&changes.borrow_and_update());
            if newest.number > generation.number {
                return Some(newest);
            }
            let start = {
                let mut rebuilds = self.0.lock_rebuilds();
                if rebuilds.running {
                    false
                } else if let Some(newer) = self.newer_than(generation) {
                    // A rebuild installs its connection before it stops running.
                    return Some(newer);
                } else if rebuilds.try_start(Instant::now(), self.0.min_interval()) {
                    true
                } else {
                    tracing::debug!(
                        "a Redis Cluster node is silent; the last rebuild was too recent for \
                         another"
                    );
                    return None;
                }
            };
            if start {
                tracing::warn!(
                    "a Redis Cluster node did not answer for a whole response timeout; \
                     rebuilding the cluster connection"
                );
                self.spawn_rebuild(probe.clone());
            }
            // Woken when the rebuild is over, whatever its outcome; then look again.
            if changes.changed().await.is_err() {
                return None;
            }
        }
    }

    /// Builds a new connection in the background (so that no caller's deadline cuts it
    /// short), and swaps it in if it reaches the node that `probe` found silent.
    fn spawn_rebuild(&self, probe: Probe) {
        let shared = Arc::clone(&self.0);
        tokio::spawn(async move {
            let running = Running(Arc::clone(&shared));
            let built = tokio::time::timeout(shared.deadline.saturating_mul(3), async {
                let connection = shared.client.get_async_connection().await?;
                if answers(&connection, &probe, shared.response_timeout).await {
                    Ok(connection)
                } else {
                    Err(RedisError::from((
                        ErrorKind::Io,
                        "the rebuilt connection does not reach the silent node either",
                    )))
                }
            })
            .await
            .unwrap_or_else(|_| {
                Err(RedisError::from((
                    ErrorKind::Io,
                    "rebuilding the connection timed out",
                )))
            });
            match built {
                Ok(connection) => {
                    let number = shared.current.borrow().number + 1;
                    // The old connection closes once what is in flight on it is done.
                    shared
                        .current
                        .send_replace(Arc::new(Generation { connection, number }));
                    tracing::info!("rebuilt the Redis Cluster connection");
                }
                Err(error) => tracing::warn!(
                    %error,
                    "could not rebuild the Redis Cluster connection; keeping the current one"
                ),
            }
            drop(running);
        });
    }
}

impl Shared {
    fn lock_rebuilds(&self) -> MutexGuard<'_, Rebuilds> {
        self.rebuilds.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn min_interval(&self) -> Duration {
        self.deadline.max(MIN_REBUILD_INTERVAL)
    }
}

/// Marks the rebuild as over when dropped (done, failed, or its task cancelled), then wakes
/// the commands waiting for it.
struct Running(Arc<Shared>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.lock_rebuilds().running = false;
        self.0.current.send_modify(|_| {});
    }
}

impl Generation {
    async fn send(&self, cmd: &Cmd) -> RedisResult<Value> {
        let mut connection = self.connection.clone();
        connection.req_packed_command(cmd).await
    }
}

/// Whether `probe` is answered on `connection` within `timeout` (an error reply is an answer).
async fn answers(connection: &ClusterConnection, probe: &Probe, timeout: Duration) -> bool {
    let mut connection = connection.clone();
    let (cmd, routing) = match probe {
        Probe::Key(key) => {
            // A read of the key, which the store may do anyway (claims at `maxmemory`): a
            // node that does not own it redirects to the one that does.
            let mut get = redis::cmd("GET");
            get.arg(&**key);
            let route = Route::with_key(key.as_bytes(), SlotAddr::Master);
            (
                get,
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
            )
        }
        Probe::AllPrimaries => (
            redis::cmd("PING"),
            RoutingInfo::MultiNode((
                MultipleNodeRoutingInfo::AllMasters,
                Some(ResponsePolicy::AllSucceeded),
            )),
        ),
    };
    match tokio::time::timeout(timeout, connection.route_command(cmd, routing)).await {
        Ok(Ok(_)) => true,
        Ok(Err(error)) => matches!(error.kind(), ErrorKind::Server(_) | ErrorKind::Extension),
        Err(_) => false,
    }
}

/// When rebuilds happened, and whether one runs.
#[derive(Debug, Default)]
struct Rebuilds {
    running: bool,
    last: Option<Instant>,
    /// The time from the last start to the next one allowed.
    interval: Duration,
}

impl Rebuilds {
    /// Starts a rebuild at `now` unless the last one is too recent. One that follows the last
    /// within twice the interval (the fault came back, or never went) doubles the interval;
    /// after a longer quiet the interval is back at `min`.
    fn try_start(&mut self, now: Instant, min: Duration) -> bool {
        if let Some(last) = self.last {
            let since = now.saturating_duration_since(last);
            if since < self.interval {
                return false;
            }
            self.interval = if since < self.interval.saturating_mul(2) {
                self.interval
                    .saturating_mul(2)
                    .min(MAX_REBUILD_INTERVAL.max(min))
            } else {
                min
            };
        } else {
            self.interval = min;
        }
        self.last = Some(now);
        self.running = true;
        true
    }
}

enum Either<A, B> {
    Left(A),
    Right(B),
}

/// Polls `left` and `right` until one is ready; `left` stays usable if `right` wins.
async fn race<A: Future, B: Future>(
    mut left: Pin<&mut A>,
    right: B,
) -> Either<A::Output, B::Output> {
    let mut right = pin!(right);
    poll_fn(|cx| {
        if let Poll::Ready(output) = left.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(output));
        }
        if let Poll::Ready(output) = right.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(output));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(1);

    #[test]
    fn rebuilds_back_off_while_the_fault_persists() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut rebuilds = Rebuilds::default();
        assert!(
            rebuilds.try_start(at(0), MIN),
            "the first one starts at once"
        );
        rebuilds.running = false;
        assert!(!rebuilds.try_start(at(500), MIN), "too soon");
        assert!(rebuilds.try_start(at(1_000), MIN));
        assert_eq!(rebuilds.interval, MIN * 2, "soon again: backs off");
        rebuilds.running = false;
        assert!(!rebuilds.try_start(at(2_900), MIN));
        assert!(rebuilds.try_start(at(3_000), MIN));
        assert_eq!(rebuilds.interval, MIN * 4);
        let mut t = 3_000;
        for _ in 0..4 {
            t += u64::try_from(rebuilds.interval.as_millis()).unwrap();
            rebuilds.running = false;
            assert!(rebuilds.try_start(at(t), MIN));
        }
        assert_eq!(rebuilds.interval, MAX_REBUILD_INTERVAL, "capped");
        rebuilds.running = false;
        assert!(rebuilds.try_start(at(t + 25_000), MIN));
        assert_eq!(
            rebuilds.interval, MIN,
            "after a long quiet, back to the minimum"
        );
    }

    #[test]
    fn the_minimum_can_exceed_the_cap() {
        let t0 = Instant::now();
        let long = MAX_REBUILD_INTERVAL * 2;
        let mut rebuilds = Rebuilds::default();
        assert!(rebuilds.try_start(t0, long));
        assert!(rebuilds.try_start(t0 + long, long));
        assert_eq!(rebuilds.interval, long);
    }
}
