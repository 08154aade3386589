//! A Redis and Redis Cluster [`IdempotencyStore`] for
//! [`tower-idempotency`](tower_idempotency): every instance of a service shares one store, so a
//! retried request runs once no matter which instance it reaches.
//!
//! ```no_run
//! use std::time::Duration;
//! use tower_idempotency::store::IdempotencyStore;
//! use tower_idempotency_redis::RedisStore;
//!
//! # async fn run() -> Result<(), tower_idempotency::store::StoreError> {
//! // One node (or a primary behind a proxy); reconnects by itself.
//! let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
//!
//! // Or a Redis Cluster, with its own key prefix and timeouts.
//! let clustered = RedisStore::builder()
//!     .prefix("orders-api:idempotency:")
//!     .connect_timeout(Duration::from_millis(500))
//!     .response_timeout(Duration::from_millis(500))
//!     .connect_cluster(&["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"])
//!     .await?;
//!
//! // For readiness probes.
//! store.check().await?;
//! clustered.check().await?;
//! # Ok(()) }
//! ```
//!
//! Hand the store to the layer like any other store.
//!
//! # Round trips
//!
//! Every operation is one atomic step on the server, sent as one command:
//!
//! | operation  | command                                                     |
//! |------------|-------------------------------------------------------------|
//! | `claim`    | `SET <key> <in-flight value> NX GET PX <lease ms>`          |
//! | `complete` | `EVALSHA` of a script: check token, `SET <key> ... PX <ttl>` |
//! | `renew`    | `EVALSHA` of a script: check token, `PEXPIRE <key> <lease>`  |
//! | `release`  | `EVALSHA` of a script: check token, `DEL <key>`              |
//! | `check`    | `PING` (to every primary of a cluster)                      |
//!
//! A first request therefore costs two round trips (claim, complete), and a replay, a
//! `409 Conflict` or a `422` costs one (the claim, whose reply is the existing record). The
//! scripts are loaded when the store connects; should a server have lost them (a restart, a
//! new cluster node), the first `EVALSHA` there answers `NOSCRIPT` and the script is loaded
//! and run again, once.
//!
//! `SET ... NX GET` needs **Redis 7.0 or later** (or a compatible server, such as Valkey).
//!
//! # Keys and values
//!
//! A record is one Redis string under the key `<prefix><id>`: the prefix (default
//! `"idempotency:"`, see [`RedisStoreBuilder::prefix`]) keeps records apart from other data,
//! and `<id>` is the 64 lower-case hex digits of the [`RecordId`] (a SHA-256 of scope and
//! key: neither the raw `Idempotency-Key` nor the user appears in Redis). The value is:
//!
//! ```text
//! byte 0        state: b'I' (in flight) or b'C' (completed)
//! bytes 1..17   the request fingerprint (16 bytes)
//! bytes 17..25  the fencing token (u64, big-endian)
//! bytes 25..    the encoded response (completed records only; may be empty)
//! ```
//!
//! An in-flight value is exactly 25 bytes. A value that does not follow this layout (another
//! application's data under the prefix, say) is reported as [`StoreErrorKind::Corrupt`] and
//! never overwritten.
//!
//! One key per record means a record always lives in one hash slot, so it works unchanged on
//! Redis Cluster, and records spread over every primary. (Do not put a `{hash tag}` in the
//! prefix: it would pin every record to one slot.)
//!
//! # Clocks, leases and tokens
//!
//! Leases and TTLs are set with `PX` / `PEXPIRE` and expire by the **Redis server's clock**,
//! never the instance's, so instances with skewed clocks agree. Durations are rounded down to
//! whole milliseconds, and up to at least one.
//!
//! Each claim draws a random non-zero 64-bit fencing token from the operating system. Tokens
//! are therefore unique with overwhelming probability (two equal tokens for one id would take
//! on the order of 2³² claims of that very id), which is what fencing needs: `complete`,
//! `renew` and `release` act only while the record is in flight under the caller's token,
//! and otherwise fail with [`StoreErrorKind::LeaseLost`].
//!
//! # Failures
//!
//! Every Redis error maps to a [`StoreError`] that keeps it as its source: connection, I/O and
//! timeout errors, and a cluster that is down or failing over, are
//! [`StoreErrorKind::Unavailable`] (the layer answers 503 or fails open, as configured). An
//! operation never waits longer than the connect timeout plus the response timeout (1 s each
//! by default), so an outage fails fast instead of piling up requests.
//!
//! The store reconnects by itself: a single-node store after the server restarts (the first
//! operation after an outage reconnects), a cluster store after nodes restart or slots move.
//! No new store needs to be built.
//!
//! Exactly-once holds as long as Redis keeps what it acknowledged. Two things to know:
//! replication is asynchronous, so a failover can lose the newest records (a retry may then
//! run again); and an eviction policy other than `noeviction` may evict records, in-flight
//! ones included, under memory pressure. Prefer a primary with `maxmemory-policy noeviction`
//! (or enough memory) for idempotency records.

mod codec;
mod scripts;

use std::{fmt, future::Future, io, time::Duration};

use bytes::Bytes;
use redis::{
    Cmd, RedisError, RedisFuture, Value,
    aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig},
    cluster::ClusterClient,
    cluster_async::ClusterConnection,
};
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError, StoreErrorKind},
};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "idempotency:";

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RESPONSE_TIMEOUT: Duration = Duration::from_secs(1);

/// Largest lease or TTL sent to Redis (about 35,000 years), well inside what `PX` accepts.
const MAX_MILLIS: u64 = 1 << 50;

/// A Redis-backed [`IdempotencyStore`]; see the [crate docs](crate) for how it stores records.
///
/// Cheap to clone: clones share one connection (a multiplexed, reconnecting connection to a
/// single node, or one cluster connection).
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: Box<str>,
    /// The longest any one operation may take, reconnecting included.
    deadline: Duration,
}

/// Configures and connects a [`RedisStore`].
#[derive(Debug, Clone)]
pub struct RedisStoreBuilder {
    prefix: String,
    connect_timeout: Duration,
    response_timeout: Duration,
}

impl Default for RedisStoreBuilder {
    fn default() -> Self {
        Self {
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            response_timeout: DEFAULT_RESPONSE_TIMEOUT,
        }
    }
}

impl RedisStoreBuilder {
    /// The prefix of every key the store writes (default `"idempotency:"`). Give each
    /// application sharing a Redis its own.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How long one attempt to connect to a server may take (default 1 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for the reply to a command (default 1 s).
    ///
    /// An operation as a whole, reconnecting included, fails with
    /// [`StoreErrorKind::Unavailable`] after the connect timeout plus this.
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    fn deadline(&self) -> Duration {
        self.connect_timeout.saturating_add(self.response_timeout)
    }

    /// Connects to a single Redis server, e.g. `redis://127.0.0.1:6379`,
    /// `redis://:password@host:6379/2` or `rediss://...` where the `redis` crate supports it.
    ///
    /// The connection is multiplexed (all clones and concurrent requests share it) and
    /// reconnects by itself when the server goes away and comes back.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Unavailable`] if the server cannot be reached in time,
    /// [`StoreErrorKind::Backend`] if the URL is invalid or the server refuses the scripts.
    pub async fn connect(self, url: &str) -> Result<RedisStore, StoreError> {
        let client = redis::Client::open(url).map_err(|e| config_error("a Redis URL", e))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
            // Retry a failed (re)connection once, shortly: an outage must fail fast, and the
            // next operation starts another attempt anyway.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(self.connect_timeout.min(Duration::from_millis(500)));
        let deadline = self.deadline();
        let manager = within(deadline, ConnectionManager::new_with_config(client, config)).await?;
        self.finish(Connection::Single(manager)).await
    }

    /// Connects to a Redis Cluster through any of its nodes, e.g.
    /// `["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]`. The rest of the cluster is
    /// discovered from them.
    ///
    /// # Errors
    ///
    /// [`StoreErrorKind::Unavailable`] if the cluster cannot be reached in time,
    /// [`StoreErrorKind::Backend`] if no or an invalid URL was given.
    pub async fn connect_cluster<I, S>(self, urls: I) -> Result<RedisStore, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let urls: Vec<String> = urls.into_iter().map(|u| u.as_ref().to_owned()).collect();
        if urls.is_empty() {
            return Err(StoreError::new(
                StoreErrorKind::Backend,
                "connect_cluster needs the URL of at least one cluster node",
            ));
        }
        let deadline = self.deadline();
        let client = ClusterClient::builder(urls)
            .connection_timeout(self.connect_timeout)
            .response_timeout(self.response_timeout)
            .overall_response_timeout(Some(deadline))
            // Redirects and retries after a refused connection wait 20 ms and up: the default
            // (1.28 s at least) would outlast the deadline.
            .min_retry_wait(20)
            .max_retry_wait(500)
            .build()
            .map_err(|e| config_error("Redis Cluster URLs", e))?;
        let connection = within(deadline, client.get_async_connection()).await?;
        self.finish(Connection::Cluster(connection)).await
    }

    async fn finish(self, connection: Connection) -> Result<RedisStore, StoreError> {
        let store = RedisStore {
            connection,
            deadline: self.deadline(),
            prefix: self.prefix.into(),
        };
        store.load_scripts().await?;
        Ok(store)
    }
}

impl RedisStore {
    /// A builder with the defaults: prefix `"idempotency:"`, 1 s connect and response timeouts.
    pub fn builder() -> RedisStoreBuilder {
        RedisStoreBuilder::default()
    }

    /// Connects to a single server with the defaults; see [`RedisStoreBuilder::connect`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::builder().connect(url).await
    }

    /// Connects to a Redis Cluster with the defaults; see
    /// [`RedisStoreBuilder::connect_cluster`].
    ///
    /// # Errors
    ///
    /// As [`RedisStoreBuilder::connect_cluster`].
    pub async fn connect_cluster<I, S>(urls: I) -> Result<Self, StoreError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        Self::builder().connect_cluster(urls).await
    }

    /// The same store under another key prefix, sharing the connection.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().into_boxed_str();
        self
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a record: the prefix and the id in hex.
    pub fn key(&self, id: &RecordId) -> String {
        let mut key = String::with_capacity(self.prefix.len() + RecordId::LEN * 2);
        key.push_str(&self.prefix);
        key.push_str(&id.to_hex());
        key
    }

    async fn load_scripts(&self) -> Result<(), StoreError> {
        for script in scripts::all() {
            self.run(|| {
                let mut connection = self.connection.clone();
                async move { script.load_async(&mut connection).await }
            })
            .await?;
        }
        Ok(())
    }

    /// Runs `operation` within the deadline, mapping errors.
    ///
    /// On a single node, a command that failed because the connection was refused (it was
    /// never sent: the server is down, or was down when the last reconnection was tried) is
    /// tried once more, which reconnects: so the first operation after a restart succeeds.
    async fn run<T, F, Fut>(&self, mut operation: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let single = matches!(self.connection, Connection::Single(_));
        within(self.deadline, async {
            match operation().await {
                Err(error) if single && error.is_connection_refusal() => operation().await,
                result => result,
            }
        })
        .await
    }

    /// Runs a token-checked script and maps its answer.
    async fn run_script(
        &self,
        script: &redis::Script,
        key: String,
        token: FencingToken,
        extra: &[&[u8]],
    ) -> Result<(), StoreError> {
        let mut invocation = script.key(key);
        invocation.arg(&codec::token_bytes(token)[..]);
        for arg in extra {
            invocation.arg(*arg);
        }
        let invocation = &invocation;
        let answer: i64 = self
            .run(|| {
                let mut connection = self.connection.clone();
                async move { invocation.invoke_async(&mut connection).await }
            })
            .await?;
        match answer {
            1 => Ok(()),
            0 => Err(StoreError::lease_lost()),
            -1 => Err(codec::corrupt(
                "a stored value does not follow the record layout",
            )),
            other => Err(StoreError::new(
                StoreErrorKind::Backend,
                format!("a store script answered {other}, expected -1, 0 or 1"),
            )),
        }
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "mode",
                &match self.connection {
                    Connection::Single(_) => "single node",
                    Connection::Cluster(_) => "cluster",
                },
            )
            .field("prefix", &self.prefix)
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl IdempotencyStore for RedisStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let token = new_token()?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(self.key(id))
            .arg(&codec::in_flight(fingerprint, token)[..])
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(millis(lease));
        let cmd = &cmd;
        let reply: Value = self
            .run(|| {
                let mut connection = self.connection.clone();
                async move { cmd.query_async(&mut connection).await }
            })
            .await?;
        match reply {
            Value::Nil => Ok(Claim::Acquired(token)),
            Value::BulkString(existing) => codec::decode(existing),
            other => Err(codec::corrupt(format!(
                "SET ... NX GET answered {}, expected nil or a string",
                value_kind(&other)
            ))),
        }
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = millis(lease).to_string();
        self.run_script(&scripts::RENEW, self.key(id), token, &[lease.as_bytes()])
            .await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let ttl = millis(ttl).to_string();
        self.run_script(
            &scripts::COMPLETE,
            self.key(id),
            token,
            &[ttl.as_bytes(), &response],
        )
        .await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.run_script(&scripts::RELEASE, self.key(id), token, &[])
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        let ping = redis::cmd("PING");
        let ping = &ping;
        self.run(|| {
            let mut connection = self.connection.clone();
            async move { ping.query_async::<Value>(&mut connection).await }
        })
        .await
        .map(drop)
    }
}

/// The connection behind a store: both kinds reconnect by themselves.
#[derive(Clone)]
enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Awaits `future` for at most `deadline`, mapping its error.
async fn within<T>(
    deadline: Duration,
    future: impl Future<Output = redis::RedisResult<T>>,
) -> Result<T, StoreError> {
    match tokio::time::timeout(deadline, future).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(error)) => Err(map_error(error)),
        Err(_) => Err(StoreError::unavailable(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("Redis did not answer within {deadline:?}"),
        ))),
    }
}

/// Maps a Redis error to the store's error kinds, keeping it as the source.
fn map_error(error: RedisError) -> StoreError {
    use redis::{ErrorKind as Kind, ServerErrorKind as Server};

    let kind = match error.kind() {
        Kind::Io | Kind::ClusterConnectionNotFound => StoreErrorKind::Unavailable,
        // Loading a dump, a cluster that is down, failing over or resharding, a write that
        // reached a demoted primary: all pass, so they are outages, not bugs.
        Kind::Server(
            Server::BusyLoading
            | Server::TryAgain
            | Server::ClusterDown
            | Server::MasterDown
            | Server::ReadOnly,
        ) => StoreErrorKind::Unavailable,
        // A key under the prefix that holds a hash, a list, ...
        _ if error.code() == Some("WRONGTYPE") => StoreErrorKind::Corrupt,
        _ => StoreErrorKind::Backend,
    };
    match kind {
        StoreErrorKind::Unavailable => StoreError::unavailable(error),
        StoreErrorKind::Corrupt => StoreError::new(
            kind,
            "a key under the store's prefix holds a non-string value",
        )
        .with_source(error),
        _ if is_syntax_error(&error) => StoreError::new(
            kind,
            "Redis rejected the command; the store needs Redis 7.0 or later (SET ... NX GET)",
        )
        .with_source(error),
        _ => StoreError::new(kind, "Redis reported an error").with_source(error),
    }
}

fn is_syntax_error(error: &RedisError) -> bool {
    error.code() == Some("ERR") && error.detail().is_some_and(|d| d.contains("syntax error"))
}

fn config_error(what: &str, error: RedisError) -> StoreError {
    StoreError::new(StoreErrorKind::Backend, format!("invalid {what}")).with_source(error)
}

/// A random non-zero token.
fn new_token() -> Result<FencingToken, StoreError> {
    loop {
        let value = getrandom::u64().map_err(|e| {
            StoreError::new(
                StoreErrorKind::Backend,
                "the operating system's random number generator failed",
            )
            .with_source(e)
        })?;
        if value != 0 {
            return Ok(FencingToken::new(value));
        }
    }
}

/// Whole milliseconds, at least one (Redis rejects `PX 0`), at most [`MAX_MILLIS`].
fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_MILLIS)
}

fn value_kind(value: &Value) -> &'static str {
    match value {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::BulkString(_) => "a string",
        Value::Array(_) => "an array",
        Value::SimpleString(_) | Value::Okay => "a status",
        _ => "an unexpected value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_is_clamped() {
        assert_eq!(millis(Duration::ZERO), 1);
        assert_eq!(millis(Duration::from_micros(1500)), 1);
        assert_eq!(millis(Duration::from_secs(3)), 3000);
        assert_eq!(millis(Duration::MAX), MAX_MILLIS);
    }

    #[test]
    fn tokens_are_non_zero_and_vary() {
        let a = new_token().unwrap();
        let b = new_token().unwrap();
        assert_ne!(a.get(), 0);
        assert_ne!(a, b);
    }
}
