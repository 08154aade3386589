//! `--idempotency-store`: where the idempotency records live.

use std::{fmt, str::FromStr};

/// A parsed `--idempotency-store` value.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreSpec {
    /// `database` (the default): in the deployments database itself (the `--database-url`
    /// pool, SQLite or PostgreSQL), committed in the same transaction as the deployment.
    Database,
    /// `memory`: in-process, lost on restart (the database guard still answers retries within
    /// the TTL), one instance only.
    Memory,
    /// `redis://host:port[/db]` or `rediss://...`: one Redis node.
    Redis(String),
    /// Several comma-separated `redis://` URLs: the nodes of a Redis Cluster.
    RedisCluster(Vec<String>),
    /// `postgres://...`: a table in a PostgreSQL database of its own choosing.
    Postgres(String),
}

impl StoreSpec {
    /// The kind of store, without any URL (for logs).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Memory => "memory",
            Self::Redis(_) => "redis",
            Self::RedisCluster(_) => "redis-cluster",
            Self::Postgres(_) => "postgres",
        }
    }
}

impl FromStr for StoreSpec {
    type Err = anyhow::Error;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let scheme = spec.split_once("://").map_or(spec, |(scheme, _)| scheme);
        match scheme {
            "database" if !spec.contains("://") => Ok(Self::Database),
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
                "unknown idempotency store `{}`: expected `database`, `memory`, `redis://...` or \
                 `postgres://...`",
                crate::db::redact(spec)
            ),
        }
    }
}

impl fmt::Debug for StoreSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URLs may carry credentials: never print them.
        match self {
            Self::Database => f.write_str("Database"),
            Self::Memory => f.write_str("Memory"),
            Self::Redis(_) => f.write_str("Redis"),
            Self::RedisCluster(urls) => write!(f, "RedisCluster({} nodes)", urls.len()),
            Self::Postgres(_) => f.write_str("Postgres"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!(
            "database".parse::<StoreSpec>().unwrap(),
            StoreSpec::Database
        );
        assert!("database://x".parse::<StoreSpec>().is_err());
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
        assert!(err.to_string().contains("expected `database`"), "{err}");
        let spec = "postgres://u:secret@h/db".parse::<StoreSpec>().unwrap();
        assert!(!format!("{spec:?}").contains("secret"));
        assert_eq!(spec.kind(), "postgres");
    }
}
