//! The conformance suite and the record layout against one Redis server.
//!
//! Needs Redis >= 7.0 at `REDIS_URL` (default `redis://127.0.0.1:6379`). Every store uses its
//! own random key prefix, so the tests share the server with each other and with other data.

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};

tower_idempotency::store_conformance_tests!(common::single_node_store());

const FP: Fingerprint = Fingerprint::from_bytes([0x5a; Fingerprint::LEN]);
const HOUR: Duration = Duration::from_secs(3600);

fn raw_connection() -> redis::Connection {
    redis::Client::open(common::redis_url())
        .and_then(|client| client.get_connection())
        .expect("the Redis server of REDIS_URL answers")
}

#[tokio::test]
async fn records_follow_the_documented_layout() {
    let store = common::single_node_store().await;
    let mut raw = raw_connection();
    let id = unique_id("layout");
    let key = store.key(&id);
    assert_eq!(key, format!("{}{}", store.prefix(), id.to_hex()));

    let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut raw).unwrap();
    let mut expected = vec![b'I'];
    expected.extend_from_slice(FP.as_bytes());
    expected.extend_from_slice(&token.get().to_be_bytes());
    assert_eq!(value, expected);
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(
        (3_500_000..=3_600_000).contains(&pttl),
        "the lease is the server's PX: {pttl}"
    );

    store
        .complete(
            &id,
            token,
            Bytes::from_static(b"\0body\xff"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();
    let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut raw).unwrap();
    expected[0] = b'C';
    expected.extend_from_slice(b"\0body\xff");
    assert_eq!(value, expected);
    let pttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut raw).unwrap();
    assert!(
        (55_000..=60_000).contains(&pttl),
        "the TTL is the server's PX: {pttl}"
    );
}

#[tokio::test]
async fn malformed_values_are_corrupt_and_left_alone() {
    let store = common::single_node_store().await;
    let mut raw = raw_connection();
    let some_token = match store.claim(&unique_id("token"), &FP, HOUR).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    };

    let cases: [(&str, &[u8]); 4] = [
        ("empty", b""),
        ("short", b"I too short"),
        ("unknown state", &[b'X'; 25]),
        ("in flight with a tail", &[b'I'; 26]),
    ];
    for (what, garbage) in cases {
        let id = unique_id("corrupt");
        let key = store.key(&id);
        let () = redis::cmd("SET")
            .arg(&key)
            .arg(garbage)
            .arg("PX")
            .arg(60_000)
            .query(&mut raw)
            .unwrap();
        let kind = |r: Result<(), tower_idempotency::store::StoreError>| r.unwrap_err().kind();
        assert_eq!(
            store.claim(&id, &FP, HOUR).await.unwrap_err().kind(),
            StoreErrorKind::Corrupt,
            "claim over {what}"
        );
        assert_eq!(
            kind(store.complete(&id, some_token, Bytes::new(), HOUR).await),
            StoreErrorKind::Corrupt,
            "complete over {what}"
        );
        assert_eq!(
            kind(store.renew(&id, some_token, HOUR).await),
            StoreErrorKind::Corrupt,
            "renew over {what}"
        );
        assert_eq!(
            kind(store.release(&id, some_token).await),
            StoreErrorKind::Corrupt,
            "release over {what}"
        );
        let value: Vec<u8> = redis::cmd("GET").arg(&key).query(&mut raw).unwrap();
        assert_eq!(value, garbage, "{what} is never overwritten");
    }

    // A key of another type under the prefix.
    let id = unique_id("wrongtype");
    let () = redis::cmd("HSET")
        .arg(store.key(&id))
        .arg("field")
        .arg("value")
        .query(&mut raw)
        .unwrap();
    assert_eq!(
        store.claim(&id, &FP, HOUR).await.unwrap_err().kind(),
        StoreErrorKind::Corrupt
    );
    assert_eq!(
        store.release(&id, some_token).await.unwrap_err().kind(),
        StoreErrorKind::Corrupt
    );
    let () = redis::cmd("DEL")
        .arg(store.key(&id))
        .query(&mut raw)
        .unwrap();
}

#[tokio::test]
async fn prefixes_keep_stores_apart() {
    let first = common::single_node_store().await;
    let second = first.clone().with_prefix(common::random_prefix("other"));
    let id = unique_id("prefix");
    assert!(matches!(
        first.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
    assert!(matches!(
        second.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_at_once() {
    // A port nothing listens on: bind one, note it, let it go.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = std::time::Instant::now();
    let error = tower_idempotency_redis::RedisStore::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        std::error::Error::source(&error).is_some(),
        "keeps the cause"
    );

    let error = tower_idempotency_redis::RedisStore::connect("not a url")
        .await
        .unwrap_err();
    assert_eq!(error.kind(), StoreErrorKind::Backend, "{error}");
}
