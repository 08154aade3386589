//! The deployments database of a scenario: a fresh `faults_<random>` database on the shared
//! PostgreSQL server, dropped afterwards (or a SQLite file of its own, [`sqlite`]); and what
//! the scenarios check in it.

pub(crate) mod sqlite;

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    str::FromStr as _,
    time::Duration,
};

use anyhow::{Context as _, bail};
use sqlx::{
    Connection as _, Executor as _, PgConnection, PgPool,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The user every scenario's client authenticates as.
pub(crate) const USER: &str = "fault-harness";

/// A database of the scenario's own; dropped (`WITH (FORCE)`) when this is dropped.
#[derive(Debug)]
pub(crate) struct FleetDb {
    /// Its URL, for the backends.
    pub(crate) url: String,
    name: String,
    admin_url: String,
    pool: PgPool,
}

impl FleetDb {
    /// Creates `faults_<random>` on the server of `admin_url`.
    pub(crate) async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("faults_{:016x}", fastrand::u64(..));
        let mut admin = connect(admin_url).await?;
        admin
            .execute(format!("CREATE DATABASE \"{name}\"").as_str())
            .await
            .context("CREATE DATABASE (the role needs CREATEDB)")?;
        admin.close().await.ok();
        let url = with_database(admin_url, &name);
        let options = PgConnectOptions::from_str(&url)?.application_name("fault-harness");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options);
        Ok(Self {
            url,
            name,
            admin_url: admin_url.to_owned(),
            pool,
        })
    }

    /// A connection of its own (e.g. to hold a lock).
    pub(crate) async fn connect(&self) -> anyhow::Result<PgConnection> {
        connect(&self.url).await
    }

    /// `(idempotency_key, id)` of every deployment.
    pub(crate) async fn rows(&self) -> anyhow::Result<Vec<(Option<String>, String)>> {
        sqlx::query_as("SELECT idempotency_key, id FROM deployments ORDER BY seq")
            .fetch_all(&self.pool)
            .await
            .context("read deployments")
    }

    /// Checks that each key of `expected` has exactly one deployment whose id is every id
    /// the client got for it, and that nothing else exists.
    pub(crate) async fn verify(
        &self,
        expected: &HashMap<String, Vec<String>>,
    ) -> anyhow::Result<Verification> {
        Ok(Verification::of(&self.rows().await?, expected))
    }
}

/// What [`FleetDb::verify`] (or [`Verification::of`] over any rows) found.
#[derive(Debug, Default)]
pub(crate) struct Verification {
    /// Rows in `deployments`.
    pub(crate) deployments: u64,
    /// Rows beyond the first per (user, key), plus rows without a key.
    pub(crate) duplicates: u64,
    /// Expected keys without a row.
    pub(crate) missing: Vec<String>,
    /// Expected keys with several rows.
    pub(crate) duplicated: Vec<String>,
    /// Client ids that differ from the row's.
    pub(crate) id_mismatches: Vec<String>,
    /// Keys with a row that were not expected to execute.
    pub(crate) unexpected: Vec<String>,
}

impl Verification {
    /// Checks `rows` (`(idempotency_key, id)` of every deployment, all of [`USER`]): each
    /// key of `expected` has exactly one deployment whose id is every id the client got for
    /// it, and nothing else exists.
    pub(crate) fn of(
        rows: &[(Option<String>, String)],
        expected: &HashMap<String, Vec<String>>,
    ) -> Self {
        let mut by_key: HashMap<&str, Vec<&str>> = HashMap::new();
        let mut unkeyed = 0;
        for (key, id) in rows {
            match key {
                Some(key) => by_key.entry(key).or_default().push(id),
                None => unkeyed += 1,
            }
        }
        let duplicate_rows: usize = by_key.values().map(|ids| ids.len() - 1).sum();
        let mut v = Verification {
            deployments: rows.len() as u64,
            duplicates: duplicate_rows as u64 + unkeyed,
            ..Verification::default()
        };
        for (key, client_ids) in expected {
            match by_key.get(key.as_str()).map(Vec::as_slice) {
                None | Some([]) => v.missing.push(key.clone()),
                Some([db_id]) => {
                    for id in client_ids {
                        if id != db_id {
                            v.id_mismatches
                                .push(format!("{key}: client got {id}, database has {db_id}"));
                        }
                    }
                }
                Some(many) => v.duplicated.push(format!("{key}: {} rows", many.len())),
            }
        }
        let wanted: HashSet<&str> = expected.keys().map(String::as_str).collect();
        v.unexpected = by_key
            .keys()
            .filter(|k| !wanted.contains(**k))
            .map(|k| (*k).to_owned())
            .collect();
        v.unexpected.sort();
        v
    }

    /// Nothing wrong.
    pub(crate) fn ok(&self) -> bool {
        self.duplicates == 0
            && self.missing.is_empty()
            && self.duplicated.is_empty()
            && self.id_mismatches.is_empty()
            && self.unexpected.is_empty()
    }

    /// A one-line account of what is wrong (or "ok").
    pub(crate) fn describe(&self) -> String {
        if self.ok() {
            return format!("{} deployments, one per key, ids match", self.deployments);
        }
        let sample = |v: &[String]| v.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
        format!(
            "duplicates {}; missing {} [{}]; duplicated {} [{}]; id mismatches {} [{}]; \
             unexpected {} [{}]",
            self.duplicates,
            self.missing.len(),
            sample(&self.missing),
            self.duplicated.len(),
            sample(&self.duplicated),
            self.id_mismatches.len(),
            sample(&self.id_mismatches),
            self.unexpected.len(),
            sample(&self.unexpected),
        )
    }
}

impl Drop for FleetDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside the runtime, which must not be blocked on: a thread with a
        // runtime of its own does the work. WITH (FORCE) ends connections still open.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async move {
                let mut admin = connect(&admin_url).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
                admin.close().await?;
                anyhow::Ok(())
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("warning: could not drop database {}: {error:#}", self.name);
        }
    }
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    let options = PgConnectOptions::from_str(url)
        .context("invalid PostgreSQL URL")?
        .application_name("fault-harness");
    tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    .context("connecting to PostgreSQL timed out")?
    .context("cannot connect to PostgreSQL")
}

/// `url` with its database replaced by `name`.
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_end = base
        .find("://")
        .map(|i| i + 3)
        .and_then(|start| base[start..].find('/').map(|j| start + j))
        .unwrap_or(base.len());
    let mut out = format!("{}/{name}", &base[..authority_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// The loopback socket address of the server in a `postgres://` `url` (default port 5432).
pub(crate) fn server_addr(url: &str) -> Option<SocketAddr> {
    let (_, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?']).next()?;
    let host_port = authority.rsplit('@').next()?;
    let (host, port) = if let Some(v6) = host_port.strip_prefix('[') {
        let (host, after) = v6.split_once(']')?;
        (host, after.strip_prefix(':'))
    } else {
        match host_port.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (host_port, None),
        }
    };
    let port = port.map_or(Some(5432), |p| p.parse().ok())?;
    let ip: IpAddr = match host {
        "localhost" => Ipv4Addr::LOCALHOST.into(),
        other => other.parse().ok()?,
    };
    Some(SocketAddr::new(ip, port))
}

/// `url` with its host and port replaced by `addr` (user, password, database and query kept).
pub(crate) fn via(url: &str, addr: SocketAddr) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{addr}{tail}")
}

/// Mints a token for [`USER`] with the real CLI (`backend token create`), which also creates
/// and migrates the tables.
pub(crate) fn mint_token(bin: &Path, database_url: &str) -> anyhow::Result<String> {
    let output = Command::new(bin)
        .args(["token", "create", USER])
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .output()
        .context("run backend token create")?;
    if !output.status.success() {
        bail!(
            "backend token create failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database() {
        assert_eq!(
            with_database("postgres://postgres@127.0.0.1:5432/test", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:1/db?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }

    #[test]
    fn server_addresses_and_relays() {
        let url = "postgres://u:p@127.0.0.1:5433/db?sslmode=disable";
        assert_eq!(server_addr(url), Some(([127, 0, 0, 1], 5433).into()));
        assert_eq!(
            server_addr("postgres://postgres@localhost/test"),
            Some(([127, 0, 0, 1], 5432).into())
        );
        assert_eq!(
            server_addr("postgres://[::1]:6000/x"),
            Some("[::1]:6000".parse().unwrap())
        );
        let relay: SocketAddr = ([127, 0, 0, 1], 40001).into();
        assert_eq!(
            via(url, relay),
            "postgres://u:p@127.0.0.1:40001/db?sslmode=disable"
        );
        assert_eq!(via("postgres://h/x", relay), "postgres://127.0.0.1:40001/x");
    }
}
