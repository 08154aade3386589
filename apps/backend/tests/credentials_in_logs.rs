//! No credential reaches the log: the passwords of `--database-url` and `--idempotency-store`
//! are redacted from the startup line and from everything else a real `backend serve` process
//! writes, and the startup line names the database file or server it uses.

#[macro_use]
mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use backend::Settings;
use common::{BIN, Backend, Store, TestDb, TestServer, postgres_admin_url};

const DB_SECRET: &str = "DbPa55word-never-logged";
const STORE_SECRET: &str = "St0rePa55-never-logged";
const REDIS_SECRET: &str = "Red1sPa55-never-logged";

/// `url` with `password` in its user info (PostgreSQL here trusts local connections, so any
/// password is accepted: what matters is where it ends up).
fn with_password(url: &str, password: &str) -> String {
    let start = url.find("://").expect("a URL") + 3;
    match url[start..].find('@') {
        Some(at) => format!("{}:{password}{}", &url[..start + at], &url[start + at..]),
        None => format!("{}postgres:{password}@{}", &url[..start], &url[start..]),
    }
}

async fn passwords_never_reach_the_log(backend: Backend) {
    let t = TestDb::new(backend).await;
    let database_url = match backend {
        Backend::Sqlite => t.url.clone(),
        Backend::Postgres => with_password(&t.url, DB_SECRET),
    };
    let store_url = with_password(&postgres_admin_url(), STORE_SECRET);
    let server = TestServer::spawn_on(
        &database_url,
        Settings::default(),
        Store::Unset,
        &[
            "--idempotency-store",
            &store_url,
            "--idempotency-postgres-table",
            "credentials_log_test_records",
        ],
    )
    .await;
    let token = common::token(&t.db, "alice").await;
    let created = server
        .create(&token, Some("log-key-1"), &common::deployment("api"))
        .await;
    assert_eq!(created.status(), 201);
    let refused = server.get("bk_wrong", "/api/deployments").await;
    assert_eq!(refused.status(), 401);

    let listening = server.listening_line();
    let location = listening["database_location"]
        .as_str()
        .expect("database_location");
    match backend {
        Backend::Sqlite => {
            let file = t.url.trim_start_matches("sqlite://");
            assert_eq!(location, file, "listening line: {listening}");
        }
        Backend::Postgres => {
            assert!(location.contains("@127.0.0.1:5432/"), "{listening}");
        }
    }
    let store = listening["idempotency_store_url"]
        .as_str()
        .expect("store URL");
    assert!(store.contains(":***@"), "listening line: {listening}");
    let log = server.log_text();
    server.stop().await;
    for secret in [DB_SECRET, STORE_SECRET] {
        assert!(!log.contains(secret), "a password reached the log:\n{log}");
    }
}

backend_tests!(passwords_never_reach_the_log);

/// A store that refuses the password fails the startup, and its error does not show it either.
#[test]
fn a_failed_startup_does_not_print_the_password() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("LOG_FORMAT", "json")
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("b.db").display()),
        )
        // Redis here has no password: AUTH fails (or the server is unreachable).
        .env(
            "IDEMPOTENCY_STORE",
            format!("redis://:{REDIS_SECRET}@127.0.0.1:6379"),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start backend");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("wait").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = child.wait_with_output().expect("output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!output.status.success(), "{text}");
    assert!(
        !text.contains(REDIS_SECRET),
        "the password was printed:\n{text}"
    );
}

/// A rejected `--idempotency-store` is quoted in the error, with its password redacted.
#[test]
fn a_rejected_url_is_quoted_without_its_password() {
    let output = Command::new(BIN)
        .args(["serve", "--idempotency-store"])
        .arg(format!("redis://:{REDIS_SECRET}@127.0.0.1:7001,not-a-url"))
        .env_clear()
        .output()
        .expect("run backend");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("redis://:***@127.0.0.1:7001"), "{stderr}");
    assert!(!stderr.contains(REDIS_SECRET), "{stderr}");
}
