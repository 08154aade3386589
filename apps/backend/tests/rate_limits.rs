//! Rate limits against a real `backend serve` process: invalid tokens from one address get
//! 429 `too-many-auth-failures` once over the limit, before any token lookup (a valid token
//! from that address is refused too, unread), and a token over its request limit gets 429
//! `too-many-requests`. The limiters are in memory, so SQLite alone.

mod common;

use backend::Settings;
use common::{Backend, Store, TestDb, TestServer, expect_problem};

fn retry_after(response: &reqwest::Response) -> u64 {
    response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_per_address_and_requests_per_token_are_limited() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn_store(
        &t,
        Settings::default(),
        Store::Memory,
        &["--auth-failure-limit", "5", "--token-rate-limit", "10"],
    )
    .await;
    let token = common::token(&t.db, "alice").await;

    // Per token: a burst of 10, then 429 (not counted as an authentication failure).
    for _ in 0..10 {
        assert_eq!(server.get(&token, "/api/deployments").await.status(), 200);
    }
    let limited = server.get(&token, "/api/deployments").await;
    let wait = retry_after(&limited);
    assert!((1..=6).contains(&wait), "Retry-After {wait}");
    expect_problem(limited, 429, "too-many-requests").await;

    // Per address: 5 invalid tokens get 401, then 429.
    for _ in 0..5 {
        let refused = server.get("bk_guess", "/api/deployments").await;
        expect_problem(refused, 401, "unauthenticated").await;
    }
    let blocked = server.get("bk_guess", "/api/deployments").await;
    let wait = retry_after(&blocked);
    assert!((1..=12).contains(&wait), "Retry-After {wait}");
    let problem = expect_problem(blocked, 429, "too-many-auth-failures").await;
    assert_eq!(problem["status"], 429);
    // Blocked before the lookup: even a valid token from this address is not read.
    let other = common::token(&t.db, "bob").await;
    expect_problem(
        server.get(&other, "/api/deployments").await,
        429,
        "too-many-auth-failures",
    )
    .await;
    // The probes are not behind authentication.
    assert_eq!(
        server
            .client
            .get(server.url("/healthz"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    server.stop().await;
}
