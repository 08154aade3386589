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
//! // Or over TLS, with a certificate a private CA issued.
//! let ca = std::fs::read("/etc/redis/ca.pem").expect("the CA certificate");
//! let secure = RedisStore::builder()
//!     .tls_root_certificates(ca)
//!     .connect("rediss://redis.internal:6380")
//!     .await?;
//!
//! // For readiness probes.
//! store.check().await?;
//! clustered.check().await?;
//! secure.check().await?;
//! # Ok(()) }
//! ```
//!
//! Hand the store to the layer like any other store.
//!
//! # Round trips
//!
//! Every operation is one atomic step on the server, sent as one command:
//!
//! | operation  | command                                                      |
//! |------------|--------------------------------------------------------------|
//! | `claim`    | `SET <key> <in-flight value> NX GET PX <lease ms>`           |
//! | `complete` | `EVALSHA` of a script: check token, `SET <key> ... PX <ttl>` |
//! | `renew`    | `EVALSHA` of a script: check token, `PEXPIRE <key> <lease>`  |
//! | `release`  | `EVALSHA` of a script: check token, `DEL <key>`              |
//! | `check`    | `PING` (to every primary of a cluster)                       |
//!
//! A first request therefore costs two round trips (claim, complete), and a replay, a
//! `409 Conflict` or a `422` costs one (the claim, whose reply is the existing record). The
//! scripts are loaded when the store connects (on every primary of a cluster, never on
//! replicas); should a server have lost them (a restart, `SCRIPT FLUSH`, a new cluster node),
//! its `EVALSHA` answers `NOSCRIPT` and the script is sent once with `EVAL` to the key's own
//! primary, which caches it again. No other node is involved, so a paused replica or an
//! unreachable shard never blocks a `complete` elsewhere.
//!
//! The store needs **Redis 7.0 or later** (or a compatible server, such as Valkey):
//! `SET ... NX GET`, and scripts that declare their flags.
//!
//! # TLS
//!
//! `rediss://` URLs connect over TLS (rustls). The server's certificate is verified against
//! the operating system's trusted roots, or only against the CAs given to
//! [`RedisStoreBuilder::tls_root_certificates`]; it must be valid for the host in the URL.
//! [`RedisStoreBuilder::tls_client_certificate`] adds a client certificate for servers that
//! require one. A certificate that is not trusted is a misconfiguration
//! ([`StoreErrorKind::Backend`]), not an outage.
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
//! Each claim draws a fresh non-zero 64-bit fencing token ([`FencingToken::random`]: never
//! twice in one process, and across instances equal only by a 2⁻⁶⁴-scale chance), which is
//! what fencing needs: `complete`,
//! `renew` and `release` act only while the record is in flight under the caller's token,
//! and otherwise fail with [`StoreErrorKind::LeaseLost`].
//!
//! # Failures
//!
//! Every Redis error maps to a [`StoreError`] that keeps it as its source:
//!
//! - [`StoreErrorKind::Unavailable`]: the server cannot be reached or did not answer in time,
//!   or the cluster is down, failing over or resharding. The layer answers 503 or fails open,
//!   as configured.
//! - [`StoreErrorKind::CapacityExhausted`]: Redis reached its `maxmemory` and may not evict
//!   (`OOM`). A claim of a new key is refused (503 `store-full`); a replay, a 409 or a 422 is
//!   still answered (the claim then reads the record with a `GET`, one more round trip, as
//!   `GET` is allowed at `maxmemory`). An owner can still renew, release, and complete with a
//!   record of up to [`RESERVED_RECORD_BYTES`](tower_idempotency::store::RESERVED_RECORD_BYTES)
//!   (the scripts doing so run with `allow-oom`), so a request that ran is always recorded.
//! - [`StoreErrorKind::Backend`]: what does not pass by itself: a wrong password or missing
//!   ACL permissions, an untrusted TLS certificate, a server older than 7.0, an invalid URL.
//!   The layer refuses requests on these even when it fails open.
//!
//! An operation never waits longer than the connect timeout plus the response timeout (1 s
//! each by default), so an outage fails fast instead of piling up requests.
//!
//! The store reconnects by itself; no new store needs to be built:
//!
//! - **Single node**: a connection that was closed (a restart, a reset) is replaced by the
//!   next operation, and so is one that went **silent**: a command that waited a whole
//!   response timeout while nothing at all arrived on its connection condemns it (TCP
//!   keepalive and, on Linux, `TCP_USER_TIMEOUT` also close connections to a peer that
//!   vanished). A claim or a renewal that met a dead connection is sent once more on a new
//!   one within its deadline, so claims succeed again within about one response timeout of a
//!   connection going dark.
//! - **Cluster**: the cluster client reconnects after nodes restart or slots move, but it
//!   retries a command that timed out on the same connection rather than replacing it. So the
//!   store watches for silence itself: when a command waited a whole response timeout and the
//!   node that owns its key does not answer a `GET` of that key within half a response timeout
//!   more either, the whole cluster connection is rebuilt (new connections to every node, a
//!   new slot map), checked against that node, and swapped in; what is in flight on the old
//!   one finishes there. A claim or a renewal that met the silent connection is sent once
//!   more on the new one, within its deadline, so claims on every slot succeed again within
//!   about one and a half response timeouts; `complete` and `release` are never sent twice by
//!   the store (they wait for their first attempt, and fail if it is not answered). The other
//!   nodes are not disturbed. One rebuild runs at a time, and they back off: at least a second
//!   (or the deadline) apart, doubling while they keep being needed, up to 10 s apart; a
//!   rebuilt connection that does not reach the silent node either (a node really down) is
//!   dropped, keeping the healthy nodes' connections. A node that is down is therefore
//!   noticed again within up to 10 s of coming back.
//!
//! A claim whose reply was lost may be sent again (by the cluster client, or after a
//! reconnection) and find its own in-flight record: the claim recognises its own fencing
//! token and answers [`Claim::Acquired`]. When a claim fails with its outcome unknown
//! (a timeout, a connection lost after sending), the store sends a token-checked release in
//! the background, so that a record the failed claim may have created does not block the key
//! for a whole lease while nobody runs it (the layer answered 503 and ran nothing). The
//! release is best effort: the lease bounds what it misses.
//!
//! Exactly-once holds as long as Redis keeps what it acknowledged. Two things to know:
//! replication is asynchronous, so a failover can lose the newest records (a retry may then
//! run again); and an eviction policy other than `noeviction` may evict records, in-flight
//! ones included, under memory pressure. Prefer a primary with `maxmemory-policy noeviction`
//! (or enough memory) for idempotency records.

mod builder;
mod cluster;
mod codec;
mod connection;
mod error;
mod scripts;
mod single;

use std::{
    fmt,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use redis::Value;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError, StoreErrorKind},
};

pub use self::builder::RedisStoreBuilder;
use self::{
    connection::{Connection, Resend},
    error::within,
    scripts::Script,
};

/// The default key prefix.
pub const DEFAULT_PREFIX: &str = "idempotency:";

/// Largest lease or TTL sent to Redis (about 35,000 years), well inside what `PX` accepts.
const MAX_MILLIS: u64 = 1 << 50;

/// Releases of failed claims running in the background at most; past that (a long outage
/// with heavy traffic), failed claims are left to their leases.
const MAX_BACKGROUND_RELEASES: usize = 256;

/// A Redis-backed [`IdempotencyStore`]; see the [crate docs](crate) for how it stores records.
///
/// Cheap to clone: clones share one connection (a multiplexed, reconnecting connection to a
/// single node, or one self-repairing cluster connection).
#[derive(Clone)]
pub struct RedisStore {
    connection: Connection,
    prefix: Box<str>,
    /// The longest any one operation may take, reconnecting included.
    deadline: Duration,
    /// Background releases of failed claims now running.
    releases: Arc<AtomicUsize>,
}

impl RedisStore {
    fn new(connection: Connection, prefix: Box<str>, deadline: Duration) -> Self {
        Self {
            connection,
            prefix,
            deadline,
            releases: Arc::new(AtomicUsize::new(0)),
        }
    }

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
        record_key(&self.prefix, id)
    }

    fn connection(&self) -> &Connection {
        &self.connection
    }

    /// Runs a token-checked script and maps its answer.
    async fn run_script(
        &self,
        script: &Script,
        key: &str,
        token: FencingToken,
        extra: &[&[u8]],
    ) -> Result<(), StoreError> {
        let token = codec::token_bytes(token);
        let mut args: Vec<&[u8]> = Vec::with_capacity(1 + extra.len());
        args.push(&token);
        args.extend_from_slice(extra);
        // Boxed, as every command is (see `Connection::query`): kept small, the store's
        // futures do not size the layer's.
        let run = Box::pin(script.run(&self.connection, key, &args));
        let answer = within(self.deadline, run).await?;
        match answer {
            Value::Int(1) => Ok(()),
            Value::Int(0) => Err(StoreError::lease_lost()),
            Value::Int(-1) => Err(codec::corrupt(
                "a stored value does not follow the record layout",
            )),
            other => Err(StoreError::new(
                StoreErrorKind::Backend,
                format!(
                    "a store script answered {}, expected -1, 0 or 1",
                    value_kind(&other)
                ),
            )),
        }
    }

    /// After a claim failed with its outcome unknown: deletes the record the claim may have
    /// created, if it is still in flight under its token, without making the caller wait.
    fn release_in_background(&self, key: String, token: FencingToken) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if self.releases.fetch_add(1, Ordering::AcqRel) >= MAX_BACKGROUND_RELEASES {
            self.releases.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let store = self.clone();
        let running = Running(Arc::clone(&self.releases));
        runtime.spawn(async move {
            let _running = running;
            match store.run_script(&scripts::RELEASE, &key, token, &[]).await {
                Ok(()) => tracing::info!(
                    "released the record of a claim whose reply was lost; the key is free"
                ),
                // Nothing (of ours) there: the failed claim created nothing.
                Err(error) if error.kind() == StoreErrorKind::LeaseLost => {}
                Err(error) => tracing::debug!(
                    %error,
                    "could not release after a failed claim; its lease frees the key"
                ),
            }
        });
    }
}

/// Counts one background release as running until dropped (finished or cancelled).
struct Running(Arc<AtomicUsize>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStore")
            .field("mode", &self.connection.mode())
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
        let token = FencingToken::random();
        let key = self.key(id);
        let mut set = redis::cmd("SET");
        set.arg(&key)
            .arg(&codec::in_flight(fingerprint, token)[..])
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(millis(lease));
        match within(
            self.deadline,
            self.connection.query(&set, Some(&key), Resend::Safe),
        )
        .await
        {
            Ok(reply) => existing(reply, token, "SET ... NX GET"),
            Err(full) if full.kind() == StoreErrorKind::CapacityExhausted => {
                // At maxmemory Redis refuses every SET, even one that would change nothing;
                // a record that exists can still be read, and answered from.
                let mut get = redis::cmd("GET");
                get.arg(&key);
                match within(
                    self.deadline,
                    self.connection.query(&get, Some(&key), Resend::Safe),
                )
                .await
                {
                    Ok(Value::Nil) | Err(_) => Err(full),
                    Ok(reply) => existing(reply, token, "GET"),
                }
            }
            Err(error) => {
                if error.kind() == StoreErrorKind::Unavailable {
                    self.release_in_background(key, token);
                }
                Err(error)
            }
        }
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let lease = millis(lease).to_string();
        self.run_script(&scripts::RENEW, &self.key(id), token, &[lease.as_bytes()])
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
            scripts::complete_for(response.len()),
            &self.key(id),
            token,
            &[ttl.as_bytes(), &response],
        )
        .await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.run_script(&scripts::RELEASE, &self.key(id), token, &[])
            .await
    }

    async fn check(&self) -> Result<(), StoreError> {
        within(self.deadline, self.connection.ping()).await
    }
}

/// What a claim found: nothing (acquired), or an existing record.
fn existing(reply: Value, token: FencingToken, command: &str) -> Result<Claim, StoreError> {
    match reply {
        Value::Nil => Ok(Claim::Acquired(token)),
        Value::BulkString(existing) => codec::decode_claim(existing, token),
        other => Err(codec::corrupt(format!(
            "{command} answered {}, expected nil or a string",
            value_kind(&other)
        ))),
    }
}

/// `prefix` and the id in lower-case hex, in one string.
fn record_key(prefix: &str, id: &RecordId) -> String {
    let mut key = String::with_capacity(prefix.len() + RecordId::LEN * 2);
    key.push_str(prefix);
    id.push_hex(&mut key);
    key
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
    fn record_keys_are_prefix_and_hex_id() {
        let id = RecordId::from_bytes(std::array::from_fn(|i| {
            u8::try_from(i).unwrap().wrapping_mul(37)
        }));
        assert_eq!(record_key("p:", &id), format!("p:{}", id.to_hex()));
    }
}
