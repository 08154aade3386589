//! The idempotency store (chosen by configuration) and the layer on `POST /api/deployments`.

use std::{fmt, str::FromStr, time::Duration};

use anyhow::Context as _;

use axum::http::{HeaderValue, Method, Response, header};
use bytes::Bytes;
use tower_idempotency::{
    IdempotencyKey, IdempotencyLayer, Scope,
    problem::{Problem, ProblemKind},
    store::{BoxStore, RecordId, memory::MemoryStore},
};
use tower_idempotency_postgres::{PostgresStore, ReaperHandle};
use tower_idempotency_redis::RedisStore;

use crate::{
    app::AppState,
    auth::AuthUser,
    config::StoreArgs,
    error::{PROBLEM_TYPE_BASE, ProblemDetails},
};

/// A parsed `--idempotency-store` value.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// `memory`: in-process, lost on restart (the database's unique key still prevents
    /// duplicate deployments), one instance only.
    Memory,
    /// `redis://host:port[/db]` or `rediss://...`: one Redis node.
    Redis(String),
    /// Several comma-separated `redis://` URLs: the nodes of a Redis Cluster.
    RedisCluster(Vec<String>),
    /// `postgres://...`: a table in PostgreSQL.
    Postgres(String),
}

impl FromStr for StoreSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let scheme = spec.split_once("://").map_or(spec, |(scheme, _)| scheme);
        match scheme {
            "memory" => Ok(Self::Memory),
            "redis" | "rediss" if spec.contains(',') => {
                let urls: Vec<String> = spec.split(',').map(|u| u.trim().to_owned()).collect();
                if let Some(bad) = urls
                    .iter()
                    .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
                {
                    anyhow::bail!(
                        "every Redis Cluster node must be a redis:// URL, not `{}`",
                        crate::db::redact(bad)
                    );
                }
                Ok(Self::RedisCluster(urls))
            }
            "redis" | "rediss" => Ok(Self::Redis(spec.to_owned())),
            "postgres" | "postgresql" => Ok(Self::Postgres(spec.to_owned())),
            _ => anyhow::bail!(
                "unknown idempotency store `{}`: expected `memory`, `redis://...` or `postgres://...`",
                crate::db::redact(spec)
            ),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URLs may carry credentials: never print them.
        match self {
            Self::Memory => f.write_str("Memory"),
            Self::Redis(_) => f.write_str("Redis"),
            Self::RedisCluster(urls) => write!(f, "RedisCluster({} nodes)", urls.len()),
            Self::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

/// The idempotency store of a running server, with what keeps it healthy.
#[derive(Debug)]
pub struct IdempotencyBackend {
    /// The store the layer and the readiness probe use.
    pub store: BoxStore,
    /// Deletes expired PostgreSQL rows in the background; stops when dropped.
    _reaper: Option<ReaperHandle>,
}

/// How often the PostgreSQL store's reaper runs, and how many rows it deletes per statement.
const REAPER_PERIOD: Duration = Duration::from_secs(60);
const REAPER_BATCH: u32 = 1000;

/// Builds (and for network stores, connects and migrates) the store `spec` names. Connecting
/// here makes a wrong URL fail at startup, not on the first request.
pub async fn build_store(spec: &str, args: &StoreArgs) -> anyhow::Result<IdempotencyBackend> {
    let (store, reaper) = match spec.parse::<StoreSpec>()? {
        StoreSpec::Memory => {
            let store = MemoryStore::builder()
                .max_entries(args.idempotency_memory_max_entries)
                .max_bytes(args.idempotency_memory_max_bytes)
                .build();
            (BoxStore::new(store), None)
        }
        StoreSpec::Redis(url) => {
            let store = RedisStore::builder()
                .prefix(args.idempotency_redis_prefix.clone())
                .connect(&url)
                .await
                .context("cannot connect to the Redis idempotency store")?;
            (BoxStore::new(store), None)
        }
        StoreSpec::RedisCluster(urls) => {
            let store = RedisStore::builder()
                .prefix(args.idempotency_redis_prefix.clone())
                .connect_cluster(&urls)
                .await
                .context("cannot connect to the Redis Cluster idempotency store")?;
            (BoxStore::new(store), None)
        }
        StoreSpec::Postgres(url) => {
            let store = PostgresStore::builder()
                .table(&args.idempotency_postgres_table)
                .connect(&url)
                .await
                .context("cannot connect to the PostgreSQL idempotency store")?;
            store
                .migrate()
                .await
                .context("cannot create the PostgreSQL idempotency table")?;
            let reaper = store.spawn_reaper(REAPER_PERIOD, REAPER_BATCH);
            (BoxStore::new(store), Some(reaper))
        }
    };
    Ok(IdempotencyBackend {
        store,
        _reaper: reaper,
    })
}

/// The layer for `POST /api/deployments`: keys are per user (the auth layer runs first and
/// leaves an [`AuthUser`]), problems share the API's type base, and the body limit matches
/// the app's so both answer 413 alike.
pub fn layer(state: &AppState) -> IdempotencyLayer<BoxStore> {
    IdempotencyLayer::new(state.idempotency_store.clone())
        .scope(|parts| parts.extensions.get::<AuthUser>().map(scope_of))
        .methods([Method::POST])
        .ttl(state.settings.idempotency_ttl)
        .lease(state.settings.idempotency_lease)
        .with_handler_tasks(state.handler_tasks.clone())
        .max_request_body(state.settings.max_body_bytes)
        .problem_type_base(PROBLEM_TYPE_BASE)
        .problem_responder(render_problem)
}

/// Whose keys a request's key is among: its authenticated user's.
fn scope_of(user: &AuthUser) -> Scope {
    Scope::from(user.id.as_str())
}

/// The layer's record id of `user`'s `key`, in hex: what the execution log names a keyed
/// request by (the same id the stores key by; neither the key nor the user can be read back
/// from it).
pub fn record_of(user: &AuthUser, key: &IdempotencyKey) -> String {
    RecordId::new(scope_of(user).as_bytes(), key).to_hex()
}

/// The layer's refusals in the app's own problem format (same members, same order), keeping
/// the layer's status and headers (`Retry-After`, `Cache-Control`).
fn render_problem(problem: &Problem) -> Response<Bytes> {
    let mut response = problem.to_response();
    let document = ProblemDetails {
        type_uri: problem.type_uri().to_owned(),
        title: problem.title().to_owned(),
        status: problem.status().as_u16(),
        detail: problem.detail().to_owned(),
        errors: None,
    };
    if let Ok(json) = serde_json::to_vec(&document) {
        *response.body_mut() = Bytes::from(json);
    }
    // A 401 must name the scheme (RFC 9110 §15.5.2). Unreachable while authentication runs
    // first, but the layer would otherwise send a bare 401.
    if problem.kind() == ProblemKind::ScopeMissing {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_execution_log_names_the_layers_record() {
        let key = IdempotencyKey::parse(b"order-1").unwrap();
        let alice = AuthUser {
            id: "alice".to_owned(),
        };
        let record = record_of(&alice, &key);
        // What the layer derives from the scope the closure above hands it.
        let scope: Scope = alice.id.clone().into();
        assert_eq!(record, RecordId::new(scope.as_bytes(), &key).to_hex());
        assert_eq!(record.len(), 64);
        assert!(!record.contains("order-1") && !record.contains("alice"));
        let bob = AuthUser {
            id: "bob".to_owned(),
        };
        assert_ne!(record, record_of(&bob, &key));
    }

    #[test]
    fn parses_specs() {
        assert_eq!("memory".parse::<StoreSpec>().unwrap(), StoreSpec::Memory);
        assert_eq!("memory://".parse::<StoreSpec>().unwrap(), StoreSpec::Memory);
        assert_eq!(
            "redis://localhost:6379".parse::<StoreSpec>().unwrap(),
            StoreSpec::Redis("redis://localhost:6379".to_owned())
        );
        assert_eq!(
            "redis://a:7001, redis://b:7002"
                .parse::<StoreSpec>()
                .unwrap(),
            StoreSpec::RedisCluster(vec![
                "redis://a:7001".to_owned(),
                "redis://b:7002".to_owned()
            ])
        );
        assert!(matches!(
            "postgres://u:secret@h/db".parse::<StoreSpec>().unwrap(),
            StoreSpec::Postgres(_)
        ));
        let err = "redis://a:1,http://b".parse::<StoreSpec>().unwrap_err();
        assert!(err.to_string().contains("redis:// URL"), "{err}");
        let err = "nonsense".parse::<StoreSpec>().unwrap_err();
        assert!(err.to_string().contains("expected `memory`"), "{err}");
        let spec = "postgres://u:secret@h/db".parse::<StoreSpec>().unwrap();
        assert!(!format!("{spec:?}").contains("secret"));
    }
}
