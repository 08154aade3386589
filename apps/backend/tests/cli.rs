//! The real binary: `backend token create`, startup errors, serving and SIGTERM.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use backend::{Db, auth::hash_token};
use common::TestServer;
use reqwest::StatusCode;

const BIN: &str = env!("CARGO_BIN_EXE_backend");

/// A command with none of the caller's configuration leaking in.
fn backend() -> Command {
    let mut command = Command::new(BIN);
    for var in [
        "DATABASE_URL",
        "BACKEND_LISTEN",
        "IDEMPOTENCY_STORE",
        "IDEMPOTENCY_TTL",
        "IDEMPOTENCY_LEASE",
        "BACKEND_REQUEST_TIMEOUT",
        "BACKEND_HEADER_TIMEOUT",
        "IDEMPOTENCY_REDIS_PREFIX",
        "IDEMPOTENCY_POSTGRES_TABLE",
        "IDEMPOTENCY_REAPER_PERIOD",
        "IDEMPOTENCY_MEMORY_MAX_ENTRIES",
        "IDEMPOTENCY_MEMORY_MAX_BYTES",
        "BACKEND_MAX_BODY_BYTES",
        "LOG_FORMAT",
    ] {
        command.env_remove(var);
    }
    command
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_create_prints_a_token_that_authenticates() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("tokens.db");
    let url = format!("sqlite://{}", path.display());

    let output = backend()
        .args(["token", "create", "alice", "--database-url", &url])
        .output()
        .expect("run backend token create");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).unwrap();
    // Exactly one line: the token, so `TOKEN=$(backend token create alice)` works.
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = stdout.trim_end().to_owned();
    assert!(token.starts_with("bk_"), "{token}");

    // The same variable works as the environment variable too.
    let second = backend()
        .args(["token", "create", "bob"])
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(second.status.success());
    let bob_token = String::from_utf8(second.stdout)
        .unwrap()
        .trim_end()
        .to_owned();
    assert_ne!(bob_token, token);

    let db = Db::connect(&url).await.unwrap();
    assert_eq!(
        db.tokens()
            .find_user(&hash_token(&token))
            .await
            .unwrap()
            .as_deref(),
        Some("alice")
    );
    let server = TestServer::start(&db).await;
    let response = server.get(&token, "/api/deployments").await;
    assert_eq!(response.status(), StatusCode::OK);
    let created = server
        .create(&token, Some("cli"), &common::deployment("cli"))
        .await;
    assert_eq!(created.status(), StatusCode::CREATED);
    assert_eq!(db.deployments().count_for_user("alice").await.unwrap(), 1);
    server.stop().await;
    db.close().await;

    // Only the hash is stored: the token appears nowhere in the database files.
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let bytes = std::fs::read(entry.unwrap().path()).unwrap();
        let secret = &token.as_bytes()[3..];
        assert!(!bytes.windows(secret.len()).any(|w| w == secret));
    }
}

#[test]
fn token_create_rejects_bad_user_ids() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let output = backend()
        .args(["token", "create", "has space", "--database-url", &url])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(output.stdout.is_empty());
    assert!(String::from_utf8_lossy(&output.stderr).contains("user id"));
}

#[test]
fn unsupported_configuration_is_a_startup_error() {
    let output = backend()
        .args([
            "serve",
            "--idempotency-store",
            "memcached://localhost:11211",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--idempotency-store"), "{stderr}");
    assert!(stderr.contains("expected `database`"), "{stderr}");

    // A shared store that cannot be reached fails the start, not the first request.
    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("x.db").display());
    let started = Instant::now();
    let output = backend()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database,
        ])
        .args(["--idempotency-store", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("cannot connect to the Redis idempotency store"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));

    let output = backend()
        .args([
            "--database-url",
            "mysql://localhost/x",
            "--listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unsupported database URL"), "{stderr}");

    let output = backend()
        .args(["serve", "--idempotency-ttl", "soon"])
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn help_names_every_setting() {
    let output = backend().args(["serve", "--help"]).output().unwrap();
    let help = String::from_utf8(output.stdout).unwrap();
    for needle in [
        "--listen",
        "BACKEND_LISTEN",
        "--database-url",
        "DATABASE_URL",
        "--idempotency-store",
        "IDEMPOTENCY_STORE",
        "--idempotency-ttl",
        "IDEMPOTENCY_TTL",
        "IDEMPOTENCY_LEASE",
        "BACKEND_REQUEST_TIMEOUT",
        "BACKEND_HEADER_TIMEOUT",
        "IDEMPOTENCY_REDIS_PREFIX",
        "IDEMPOTENCY_POSTGRES_TABLE",
        "IDEMPOTENCY_REAPER_PERIOD",
        "IDEMPOTENCY_MEMORY_MAX_ENTRIES",
        "IDEMPOTENCY_MEMORY_MAX_BYTES",
        "--max-body-bytes",
        "BACKEND_MAX_BODY_BYTES",
        "--log-format",
        "LOG_FORMAT",
    ] {
        assert!(help.contains(needle), "--help lacks {needle}");
    }
    // The expiry policy, as the flag states it: the default, and what happens after it.
    let ttl = help
        .split("--idempotency-ttl")
        .nth(1)
        .expect("the --idempotency-ttl entry");
    let ttl = &ttl[..ttl.find("\n      --").unwrap_or(ttl.len())];
    for needle in ["[default: 24h]", "creates a new", "/openapi.yaml"] {
        assert!(
            ttl.contains(needle),
            "--idempotency-ttl help lacks {needle}: {ttl}"
        );
    }
    assert!(help.contains("[default: database]"), "{help}");
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_until_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    // Reserve a free port, then hand it to the server.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = backend()
        .env("BACKEND_LISTEN", &listen)
        .env("DATABASE_URL", &url)
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.get(format!("http://{listen}/readyz")).send().await {
            Ok(response) if response.status() == StatusCode::OK => break,
            _ if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            other => {
                let _ = child.kill();
                panic!("the server did not become ready: {other:?}");
            }
        }
    }
    drop(client);

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the server ignored SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let stderr = std::io::read_to_string(child.stderr.take().unwrap()).unwrap();
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    // JSON logs: one object per line.
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
    }
}

/// A client that never finishes its request headers is disconnected after the header
/// timeout, instead of holding a connection forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let database = format!("sqlite://{}", dir.path().join("x.db").display());
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = backend()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &database, "--header-timeout", "1s"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut stream = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("backend did not start: {e}"),
        }
    };
    stream
        .write_all(b"POST /api/deployments HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut buf)).await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(read.is_ok(), "the connection was still open after 10 s");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the timeout"
    );
}
