//! A database of its own per test: a temporary SQLite file, or a fresh PostgreSQL database
//! (`DATABASE_URL`, or the local default), dropped afterwards.

use std::{str::FromStr, time::Duration};

use backend::Db;
use sqlx::{Connection, Executor, PgConnection, postgres::PgConnectOptions};

/// Where the PostgreSQL tests connect when `DATABASE_URL` is not set.
pub const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, removed when dropped.
pub struct TestDb {
    pub url: String,
    pub db: Db,
    _cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(tempfile::TempDir),
    Postgres { admin_url: String, name: String },
}

impl TestDb {
    /// A migrated database of its own.
    pub async fn new(backend: Backend) -> Self {
        let blank = BlankDb::new(backend).await;
        let db = Db::connect(&blank.url)
            .await
            .expect("open and migrate the test database");
        Self {
            url: blank.url,
            db,
            _cleanup: blank.cleanup,
        }
    }
}

/// An empty database of its own (not migrated), removed when dropped.
pub struct BlankDb {
    pub url: String,
    cleanup: Cleanup,
}

impl BlankDb {
    pub async fn new(backend: Backend) -> Self {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("create a temporary directory");
                let url = format!("sqlite://{}", dir.path().join("backend.db").display());
                Self {
                    url,
                    cleanup: Cleanup::Sqlite(dir),
                }
            }
            Backend::Postgres => {
                let admin_url = postgres_admin_url();
                let name = format!("backend_test_{}", uuid::Uuid::now_v7().simple());
                let mut admin = connect_admin(&admin_url).await;
                admin
                    .execute(format!("CREATE DATABASE \"{name}\"").as_str())
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "cannot create a test database: {e}. The role in DATABASE_URL needs \
                             the CREATEDB privilege."
                        )
                    });
                admin.close().await.ok();
                Self {
                    url: with_database(&admin_url, &name),
                    cleanup: Cleanup::Postgres { admin_url, name },
                }
            }
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Self::Postgres { admin_url, name } = self else {
            return;
        };
        let (admin_url, name) = (admin_url.clone(), name.clone());
        // Drop runs inside the test's runtime, which must not be blocked on: use a thread
        // with its own runtime. WITH (FORCE) ends connections a pool may still hold.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime");
            runtime.block_on(async move {
                let mut admin = PgConnection::connect(&admin_url).await?;
                admin
                    .execute(format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)").as_str())
                    .await?;
                admin.close().await
            })
        })
        .join();
        if let Ok(Err(error)) = dropped {
            eprintln!("warning: could not drop a test database: {error}");
        }
    }
}

/// `DATABASE_URL` (a `postgres://` URL) or the local default.
pub fn postgres_admin_url() -> String {
    match std::env::var("DATABASE_URL") {
        Ok(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => url,
        Ok(other) if !other.is_empty() => panic!(
            "DATABASE_URL is set to `{other}`, but the PostgreSQL tests need a postgres:// URL \
             (e.g. DATABASE_URL={DEFAULT_POSTGRES_URL}); unset it to use that default"
        ),
        _ => DEFAULT_POSTGRES_URL.to_owned(),
    }
}

async fn connect_admin(url: &str) -> PgConnection {
    let options = PgConnectOptions::from_str(url).unwrap_or_else(|e| {
        panic!("DATABASE_URL is not a valid PostgreSQL URL: {e}");
    });
    match tokio::time::timeout(
        Duration::from_secs(10),
        PgConnection::connect_with(&options),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => panic!("{}", postgres_help(&e.to_string())),
        Err(_) => panic!("{}", postgres_help("no answer within 10 s")),
    }
}

fn postgres_help(error: &str) -> String {
    format!(
        "the PostgreSQL tests cannot reach PostgreSQL at {} ({error}). Start PostgreSQL, or \
         point DATABASE_URL at a server where the role may CREATE DATABASE, e.g. \
         DATABASE_URL=postgres://postgres@127.0.0.1:5432/test cargo test -p backend. Each \
         test creates and drops its own database `backend_test_<id>`.",
        redact(&postgres_admin_url())
    )
}

fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}***{}", &url[..start + 3], &url[at..]),
        _ => url.to_owned(),
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let authority_and_path = &base[scheme_end..];
    let authority = authority_and_path
        .split_once('/')
        .map_or(authority_and_path, |(authority, _)| authority);
    let mut out = format!("{}{authority}/{name}", &base[..scheme_end]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

#[test]
fn replaces_the_database_name() {
    assert_eq!(
        with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    assert_eq!(
        with_database("postgres://u:p@h/test?sslmode=disable", "x"),
        "postgres://u:p@h/x?sslmode=disable"
    );
}
