//! Command-line and environment configuration. Every flag has an environment variable, so
//! the same binary runs from a shell, systemd or a container without a config file.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, ValueEnum};

use crate::idempotency::StoreSpec;

/// Default database: a SQLite file next to the process, created on first start.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://backend.db";

/// Default request body limit: 1 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;

/// Default time limit for receiving a request body: 30 seconds.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default replay window of an idempotency key: 24 hours.
pub const DEFAULT_IDEMPOTENCY_TTL: Duration = Duration::from_secs(24 * 60 * 60);

/// Default period of the deletion of expired idempotency records.
pub const DEFAULT_REAPER_PERIOD: Duration = Duration::from_secs(60);

/// Default lease of a claim on a key: how long a crashed instance can block its keys.
pub const DEFAULT_IDEMPOTENCY_LEASE: Duration = Duration::from_secs(30);

/// Where deployments and API tokens live.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Database for deployments and API tokens: `sqlite://<path>` (created and migrated on
    /// start) or `postgres://user:password@host:port/database`.
    // Hidden from --help: a PostgreSQL URL can carry a password.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = DEFAULT_DATABASE_URL,
        hide_env_values = true,
        value_name = "URL"
    )]
    pub database_url: String,
}

/// `backend serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address and port to listen on.
    #[arg(
        long,
        env = "BACKEND_LISTEN",
        default_value = "127.0.0.1:8080",
        value_name = "ADDR"
    )]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Where idempotency keys and their responses are kept. `database` (the default): in the
    /// deployments database itself (the --database-url SQLite file or PostgreSQL database),
    /// each record committed in the same transaction as its deployment: records survive
    /// restarts and are shared by every instance on that database. `memory`: in-process, for
    /// a single instance (lost on restart; the database guard still answers retries within the
    /// TTL). Or a store of its own: `redis://host:6379` (a single node), a comma-separated
    /// list of `redis://` URLs (a Redis Cluster), or
    /// `postgres://user:password@host:port/database`.
    #[arg(
        long,
        env = "IDEMPOTENCY_STORE",
        default_value = "database",
        hide_env_values = true,
        value_parser = parse_store_spec,
        value_name = "SPEC"
    )]
    pub idempotency_store: String,

    /// How long an Idempotency-Key lives, e.g. `24h`, `90m`, `3600s` (1s to 366 days):
    /// retries with the key get the first response replayed, and another request with it gets
    /// 422, for this long after the first request; then the key is free and creates a new
    /// deployment. GET /openapi.yaml states the value the server runs with.
    #[arg(
        long,
        env = "IDEMPOTENCY_TTL",
        default_value = "24h",
        value_parser = parse_ttl,
        value_name = "DURATION"
    )]
    pub idempotency_ttl: Duration,

    /// How long a claim on a key outlives a crashed instance (stores other than `database`,
    /// whose claims end with their transaction). The instance running the request renews it
    /// every third of this; retries meanwhile get 409.
    #[arg(
        long,
        env = "IDEMPOTENCY_LEASE",
        default_value = "30s",
        value_parser = parse_lease,
        value_name = "DURATION"
    )]
    pub idempotency_lease: Duration,

    #[command(flatten)]
    pub store: StoreArgs,

    /// Refuse `POST /api/deployments` without an Idempotency-Key: 400 `key-required`
    /// (default: such a request runs, without deduplication). `--require-idempotency-key`
    /// alone means `true`.
    #[arg(
        long,
        env = "REQUIRE_IDEMPOTENCY_KEY",
        default_value_t = false,
        num_args = 0..=1,
        default_missing_value = "true",
        action = clap::ArgAction::Set,
        value_name = "BOOL"
    )]
    pub require_idempotency_key: bool,

    /// Largest accepted request body, in bytes; larger requests get 413.
    #[arg(
        long,
        env = "BACKEND_MAX_BODY_BYTES",
        default_value_t = DEFAULT_MAX_BODY_BYTES,
        value_parser = parse_body_limit,
        value_name = "BYTES"
    )]
    pub max_body_bytes: usize,

    /// Longest time a client may take to send a request body, e.g. `30s`, `500ms`. A slower
    /// (or stalled) upload gets 408 and is not executed, so its Idempotency-Key stays free.
    #[arg(
        long,
        env = "BACKEND_REQUEST_TIMEOUT",
        default_value = "30s",
        value_parser = parse_request_timeout,
        value_name = "DURATION"
    )]
    pub request_timeout: Duration,

    /// Longest time a client may take to send its request headers, counted from the
    /// connection's start (so a connection that sends nothing, or one byte, is closed too) and
    /// between the requests of a keep-alive connection; the connection is closed after it.
    #[arg(
        long,
        env = "BACKEND_HEADER_TIMEOUT",
        default_value = "30s",
        value_parser = parse_request_timeout,
        value_name = "DURATION"
    )]
    pub header_timeout: Duration,

    /// Most connections served at once. More wait in the listen backlog until one closes
    /// (idle ones close after --header-timeout).
    #[arg(
        long,
        env = "BACKEND_MAX_CONNECTIONS",
        default_value_t = crate::server::DEFAULT_MAX_CONNECTIONS,
        value_parser = parse_max_connections,
        value_name = "N"
    )]
    pub max_connections: usize,

    /// Invalid bearer tokens a client address may send per minute (as a burst, then one
    /// every 60/N seconds); past it the address gets 429 `too-many-auth-failures` with
    /// Retry-After, before any token lookup. 0 turns the limit off.
    #[arg(
        long,
        env = "BACKEND_AUTH_FAILURE_LIMIT",
        default_value_t = crate::ratelimit::DEFAULT_AUTH_FAILURES_PER_MINUTE,
        value_name = "N"
    )]
    pub auth_failure_limit: u32,

    /// Requests per minute one token may make (as a burst, then one every 60/N seconds);
    /// past it 429 `too-many-requests` with Retry-After. 0 (the default) turns it off.
    #[arg(
        long,
        env = "BACKEND_TOKEN_RATE_LIMIT",
        default_value_t = 0,
        value_name = "N"
    )]
    pub token_rate_limit: u32,

    /// Longest shutdown after SIGINT/SIGTERM: readiness fails, connections drain, then
    /// create handlers whose clients left finish, all within this. Stay under the
    /// orchestrator's own grace period (Kubernetes: 30 s).
    #[arg(
        long,
        env = "BACKEND_SHUTDOWN_GRACE",
        default_value = "30s",
        value_parser = parse_request_timeout,
        value_name = "DURATION"
    )]
    pub shutdown_grace: Duration,

    /// How long /readyz fails while everything else is still served, at the start of a
    /// shutdown (so load balancers stop sending first); part of --shutdown-grace. `0s` skips it.
    #[arg(
        long,
        env = "BACKEND_SHUTDOWN_READINESS_DELAY",
        default_value = "5s",
        value_parser = humantime::parse_duration,
        value_name = "DURATION"
    )]
    pub shutdown_readiness_delay: Duration,

    /// Log format on stderr: `pretty` for people, `json` for log collectors. Filter with
    /// `RUST_LOG` (default `info`).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
}

/// Tunables of the idempotency stores.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Redis store: prefix of every key it writes.
    #[arg(
        long,
        env = "IDEMPOTENCY_REDIS_PREFIX",
        default_value = "idempotency:",
        value_name = "PREFIX"
    )]
    pub idempotency_redis_prefix: String,

    /// PostgreSQL store, and the `database` store on PostgreSQL: its table (`table` or
    /// `schema.table`), created on start.
    #[arg(
        long,
        env = "IDEMPOTENCY_POSTGRES_TABLE",
        default_value = "idempotency_records",
        value_name = "TABLE"
    )]
    pub idempotency_postgres_table: String,

    /// PostgreSQL store and `database` store: how often expired records are deleted, in
    /// batches of 1000 rows per statement.
    #[arg(
        long,
        env = "IDEMPOTENCY_REAPER_PERIOD",
        default_value = "60s",
        value_parser = parse_request_timeout,
        value_name = "DURATION"
    )]
    pub idempotency_reaper_period: Duration,

    /// Memory store: most keys held at once; when full of fresh keys, new keys get 503.
    #[arg(
        long,
        env = "IDEMPOTENCY_MEMORY_MAX_ENTRIES",
        default_value_t = 1_000_000,
        value_name = "N"
    )]
    pub idempotency_memory_max_entries: usize,

    /// Memory store: most bytes of stored responses (plus a fixed charge per key).
    #[arg(
        long,
        env = "IDEMPOTENCY_MEMORY_MAX_BYTES",
        default_value_t = 256 * 1024 * 1024,
        value_name = "BYTES"
    )]
    pub idempotency_memory_max_bytes: usize,
}

impl Default for StoreArgs {
    fn default() -> Self {
        Self {
            idempotency_redis_prefix: "idempotency:".to_owned(),
            idempotency_postgres_table: "idempotency_records".to_owned(),
            idempotency_reaper_period: DEFAULT_REAPER_PERIOD,
            idempotency_memory_max_entries: 1_000_000,
            idempotency_memory_max_bytes: 256 * 1024 * 1024,
        }
    }
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Pretty,
    /// One JSON object per line.
    Json,
}

fn parse_store_spec(spec: &str) -> Result<String, String> {
    spec.parse::<StoreSpec>()
        .map(|_| spec.to_owned())
        .map_err(|e| e.to_string())
}

fn parse_ttl(value: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if ttl < Duration::from_secs(1) {
        return Err("must be at least 1s".to_owned());
    }
    // The layer would clamp a longer one, and the published TTL would not be the real one.
    if ttl > tower_idempotency::MAX_TTL {
        return Err("must be at most 366 days".to_owned());
    }
    Ok(ttl)
}

fn parse_lease(value: &str) -> Result<Duration, String> {
    let lease = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if lease < Duration::from_millis(100) {
        return Err("must be at least 100ms".to_owned());
    }
    Ok(lease)
}

fn parse_request_timeout(value: &str) -> Result<Duration, String> {
    let timeout = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if timeout < Duration::from_millis(100) {
        return Err("must be at least 100ms".to_owned());
    }
    Ok(timeout)
}

fn parse_max_connections(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

fn parse_body_limit(value: &str) -> Result<usize, String> {
    let bytes: usize = value.parse().map_err(|e| format!("{e}"))?;
    if bytes == 0 {
        return Err("must be at least 1".to_owned());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls() {
        assert_eq!(parse_ttl("24h").unwrap(), DEFAULT_IDEMPOTENCY_TTL);
        assert_eq!(parse_ttl("90s").unwrap(), Duration::from_secs(90));
        assert!(parse_ttl("0s").is_err());
        assert_eq!(parse_ttl("366days").unwrap(), tower_idempotency::MAX_TTL);
        assert!(parse_ttl("367days").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn request_timeouts() {
        assert_eq!(
            parse_request_timeout("30s").unwrap(),
            DEFAULT_REQUEST_TIMEOUT
        );
        assert_eq!(
            parse_request_timeout("500ms").unwrap(),
            Duration::from_millis(500)
        );
        assert!(parse_request_timeout("10ms").is_err());
        assert!(parse_request_timeout("never").is_err());
    }

    #[test]
    fn body_limits() {
        assert_eq!(parse_body_limit("1048576").unwrap(), DEFAULT_MAX_BODY_BYTES);
        assert!(parse_body_limit("0").is_err());
        assert!(parse_body_limit("-1").is_err());
    }
}
