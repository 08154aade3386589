//! The store fails fast while its server is down and recovers by itself when it is back.
//! Starts (and kills, and restarts) a `redis-server` of its own on a free loopback port; needs
//! `redis-server` (Redis >= 7.0) on the `PATH`, or `REDIS_SERVER_BIN`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

const HOUR: Duration = Duration::from_secs(3600);
/// "Promptly": well under the 5 s a client would wait.
const PROMPT: Duration = Duration::from_millis(2500);
const FP: Fingerprint = Fingerprint::from_bytes([4; Fingerprint::LEN]);

async fn acquire(store: &RedisStore) -> tower_idempotency::store::FencingToken {
    match store.claim(&unique_id("reconnect"), &FP, HOUR).await {
        Ok(Claim::Acquired(token)) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_after_a_server_restart() {
    let mut server = common::DedicatedServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    acquire(&store).await;

    server.kill();
    // Every operation fails fast, and as Unavailable, for as long as the server is down.
    for attempt in 0..3 {
        let started = Instant::now();
        let error = store
            .claim(&unique_id("down"), &FP, HOUR)
            .await
            .expect_err("the server is down");
        let took = started.elapsed();
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(took < PROMPT, "attempt {attempt} took {took:?}");
        let started = Instant::now();
        let error = store.check().await.expect_err("the server is down");
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(
            started.elapsed() < PROMPT,
            "check took {:?}",
            started.elapsed()
        );
    }

    server.restart();
    // The same store works again: the first operation after the restart reconnects.
    let id = unique_id("after-restart");
    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    // The restarted server lost the scripts; complete loads them again.
    store
        .complete(&id, token, Bytes::from_static(b"after"), HOUR)
        .await
        .unwrap();
    match store.claim(&id, &FP, HOUR).await.unwrap() {
        Claim::Completed(record) => assert_eq!(&record.response[..], b"after"),
        other => panic!("expected Completed, got {other:?}"),
    }
    store.check().await.unwrap();
}

/// A server that stops answering (but keeps the connection open) fails operations after the
/// response timeout, not never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_server_times_out() {
    let server = common::DedicatedServer::start();
    let store = RedisStore::builder()
        .response_timeout(Duration::from_millis(300))
        .connect(&server.url())
        .await
        .unwrap();
    acquire(&store).await;

    // CLIENT PAUSE holds every client's commands (unlike DEBUG SLEEP, it is enabled by
    // default on Redis 7), for 1.5 s here.
    let paused = Instant::now();
    let () = server.query(redis::cmd("CLIENT").arg("PAUSE").arg(1500).arg("ALL"));
    let error = store
        .claim(&unique_id("paused"), &FP, HOUR)
        .await
        .expect_err("the server holds the command");
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    assert!(
        paused.elapsed() < Duration::from_millis(1200),
        "took {:?}",
        paused.elapsed()
    );
    // Once the pause is over, the store works again (on the same connection, or a new one).
    let recovered = loop {
        match store.check().await {
            Ok(()) => break paused.elapsed(),
            Err(error) => {
                assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                assert!(
                    paused.elapsed() < Duration::from_secs(10),
                    "still failing after the pause: {error}"
                );
            }
        }
    };
    assert!(
        recovered >= Duration::from_millis(1400),
        "answered during the pause"
    );
    println!("hung server: answering again {recovered:?} after a 1.5 s pause");
}
