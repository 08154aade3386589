//! Errors that do not pass by themselves are `Backend` (the layer refuses requests on them
//! even when it fails open), never `Unavailable`: a wrong or missing password, missing ACL
//! permissions, a command the server does not have (as on Redis < 7). Outages are
//! `Unavailable` (see `reconnect.rs`, `silent_connection.rs`), a full server
//! `CapacityExhausted` (`out_of_memory.rs`). Uses `redis-server`s of the test's own.

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

use common::DedicatedServer;

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([5; Fingerprint::LEN]);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_credentials_are_backend_errors() {
    let server = DedicatedServer::start_with(&["--requirepass", "right"]);
    let at = |credentials: &str| format!("redis://{credentials}127.0.0.1:{}", server.port());

    for (what, url) in [
        ("a wrong password", at(":wrong@")),
        ("a wrong user", at("nobody:right@")),
        ("no password", at("")),
    ] {
        let error = RedisStore::connect(&url).await.unwrap_err();
        assert_eq!(error.kind(), StoreErrorKind::Backend, "{what}: {error}");
        assert!(error.to_string().contains("credentials"), "{what}: {error}");
    }
    let store = RedisStore::connect(&at(":right@")).await.unwrap();
    store.check().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_permissions_are_backend_errors() {
    let server = DedicatedServer::start();
    // A user that may do everything but run scripts.
    let () = server.query(
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("noscripts")
            .arg("on")
            .arg(">pw")
            .arg("~*")
            .arg("+@all")
            .arg("-evalsha")
            .arg("-eval"),
    );
    let store = RedisStore::connect(&format!("redis://noscripts:pw@127.0.0.1:{}", server.port()))
        .await
        .expect("SCRIPT LOAD is allowed");
    let id = unique_id("no-perm");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let error = store
        .complete(&id, token, Bytes::from_static(b"x"), HOUR)
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_command_is_a_backend_error() {
    // What a server without SET ... NX GET or script flags (Redis < 7), or with commands
    // renamed, looks like.
    for missing in ["SET", "EVALSHA"] {
        let server = DedicatedServer::start_with(&["--rename-command", missing, ""]);
        let store = RedisStore::connect(&server.url()).await.unwrap();
        let id = unique_id("missing-command");
        let error = match store.claim(&id, &FP, HOUR).await {
            Err(error) => error,
            Ok(Claim::Acquired(token)) => store
                .complete(&id, token, Bytes::from_static(b"x"), HOUR)
                .await
                .unwrap_err(),
            Ok(other) => panic!("a fresh id: {other:?}"),
        };
        assert_eq!(
            error.kind(),
            StoreErrorKind::Backend,
            "without {missing}: {error}"
        );
        assert!(
            error.to_string().contains("Redis 7.0"),
            "without {missing}: {error}"
        );
    }
}
