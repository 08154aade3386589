//! `backend token create | list | revoke` against a real `backend serve` process: revoked and
//! expired tokens get 401, the listing never shows a token or its hash, ids are random, and
//! the last use is recorded at most once a minute.

#[macro_use]
mod common;

use std::{
    process::{Command, Output},
    time::{Duration, Instant},
};

use backend::{Settings, auth::hash_token};
use common::{BIN, Backend, Store, TestDb, TestServer};

fn token_cli(t: &TestDb, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("token")
        .args(args)
        .args(["--database-url", &t.url])
        .env_clear()
        .output()
        .expect("run backend token")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `backend token create`: the token (stdout) and its id (from stderr).
fn create(t: &TestDb, args: &[&str]) -> (String, String) {
    let output = token_cli(t, &[&["create"], args].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    let token = stdout(&output).trim().to_owned();
    let id = stderr(&output)
        .split_whitespace()
        .find(|word| word.starts_with("tok_"))
        .expect("the id on stderr")
        .to_owned();
    (token, id)
}

/// The listing's row of token `id`, by column.
fn row(t: &TestDb, user: Option<&str>, id: &str) -> Vec<String> {
    let output = token_cli(t, &[&["list"], user.as_slice()].concat());
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    text.lines()
        .find(|line| line.starts_with(id))
        .unwrap_or_else(|| panic!("{id} not listed:\n{text}"))
        .split('\t')
        .map(str::to_owned)
        .collect()
}

async fn status(server: &TestServer, token: &str) -> u16 {
    server
        .get(token, "/api/deployments")
        .await
        .status()
        .as_u16()
}

async fn token_lifecycle(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Memory, &[]).await;
    let (token, id) = create(
        &t,
        &["alice", "--name", "ci deploys", "--expires-in", "30d"],
    );
    let (other, other_id) = create(&t, &["bob"]);
    assert_ne!(id, other_id);
    assert!(id.len() == 36 && !token.contains(&id[4..]) && !hash_token(&token).contains(&id[4..]));

    let listing = stdout(&token_cli(&t, &["list"]));
    assert!(listing.starts_with("ID\tUSER\tNAME\tCREATED\tLAST USED\tEXPIRES\tSTATUS\n"));
    for secret in [&token, &hash_token(&token), &other, &hash_token(&other)] {
        assert!(!listing.contains(secret.as_str()), "{listing}");
    }
    let only_bob = stdout(&token_cli(&t, &["list", "bob"]));
    assert!(
        only_bob.contains(&other_id) && !only_bob.contains(&id),
        "{only_bob}"
    );
    let alice = row(&t, Some("alice"), &id);
    assert_eq!(&alice[1..3], ["alice", "ci deploys"]);
    assert_eq!(alice[4], "-", "never used yet");
    assert_ne!(alice[5], "-", "expires");
    assert_eq!(alice[6], "active");

    // First use: recorded (off the request path, so poll).
    assert_eq!(status(&server, &token).await, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first_use = loop {
        let last_used = row(&t, None, &id)[4].clone();
        if last_used != "-" {
            break last_used;
        }
        assert!(Instant::now() < deadline, "the last use was never recorded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // More uses within the minute: no more writes.
    tokio::time::sleep(Duration::from_millis(20)).await;
    for _ in 0..5 {
        assert_eq!(status(&server, &token).await, 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(row(&t, None, &id)[4], first_use);

    // Revoked: 401 at once, listed as revoked; the other token still works.
    let revoked = token_cli(&t, &["revoke", &id]);
    assert!(revoked.status.success(), "{}", stderr(&revoked));
    common::expect_problem(
        server.get(&token, "/api/deployments").await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(row(&t, None, &id)[6], "revoked");
    assert_eq!(status(&server, &other).await, 200);
    let unknown = token_cli(&t, &["revoke", "tok_00000000000000000000000000000000"]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(
        stderr(&unknown).contains("no token has the id"),
        "{}",
        stderr(&unknown)
    );

    // Expired: works until its expiry, 401 after it.
    let (short, short_id) = create(&t, &["carol", "--expires-in", "2s"]);
    assert_eq!(status(&server, &short).await, 200);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    common::expect_problem(
        server.get(&short, "/api/deployments").await,
        401,
        "unauthenticated",
    )
    .await;
    assert_eq!(row(&t, Some("carol"), &short_id)[6], "expired");
    server.stop().await;
}

backend_tests!(token_lifecycle);
