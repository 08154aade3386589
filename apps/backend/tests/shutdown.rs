//! The shutdown's order on SIGTERM, against a real `backend serve` process: `/readyz` fails
//! first while everything else is still served, then new connections are refused and the open
//! ones drain, then the process exits, all within `--shutdown-grace`.

mod common;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use backend::Settings;
use common::{Backend, Store, TestDb, TestServer, expect_problem};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_fails_first_then_connections_drain_within_the_grace() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn_store(
        &t,
        Settings::default(),
        Store::Memory,
        &["--shutdown-readiness-delay", "2s", "--shutdown-grace", "6s"],
    )
    .await;
    let client = reqwest::Client::new();
    assert_eq!(
        client
            .get(server.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let signalled = Instant::now();
    let kill = Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    tokio::time::sleep(Duration::from_millis(300)).await;

    // During the delay: not ready (with an id), yet serving, on new connections too.
    let fresh = || {
        reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .build()
            .unwrap()
    };
    let ready = fresh()
        .get(server.url("/readyz"))
        .header("x-request-id", "drain-probe-1")
        .send()
        .await
        .unwrap();
    assert_eq!(ready.headers()["x-request-id"], "drain-probe-1");
    assert!(ready.headers().contains_key("retry-after"));
    expect_problem(ready, 503, "not-ready").await;
    assert_eq!(
        fresh()
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // After it: new connections are refused, and the process is gone well within the grace.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(
        fresh().get(server.url("/healthz")).send().await.is_err(),
        "still accepting after the readiness delay"
    );
    let log = server.log_text();
    let messages: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["message"].as_str().map(str::to_owned))
        .collect();
    let position = |needle: &str| {
        messages
            .iter()
            .position(|m| m.starts_with(needle))
            .unwrap_or_else(|| panic!("no `{needle}` line in:\n{log}"))
    };
    let order = [
        position("readiness now fails"),
        position("stopped accepting connections"),
        position("connections drained"),
        position("in-flight requests finished"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}:\n{log}");
    // `stop` waits for the (already finished) exit and checks it was clean.
    server.stop().await;
    assert!(signalled.elapsed() < Duration::from_secs(6));
}

#[test]
fn the_default_grace_is_30_seconds_with_a_5_second_readiness_delay() {
    let help = Command::new(common::BIN)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--shutdown-grace"), "{help}");
    assert_eq!(
        backend::server::DEFAULT_SHUTDOWN_GRACE,
        Duration::from_secs(30)
    );
    assert_eq!(
        backend::server::DEFAULT_READINESS_DELAY,
        Duration::from_secs(5)
    );
    assert!(
        help.contains("[default: 30s]") && help.contains("[default: 5s]"),
        "{help}"
    );
}
