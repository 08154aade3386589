//! A connection that goes silent (no FIN, no reset: bytes just stop, as when a primary
//! vanishes or a NAT entry expires) is given up and replaced: claims succeed again within
//! about twice the response timeout, and no id is ever acquired twice. The store reaches a
//! `redis-server` of the test's own through the testkit's `Relay`; needs `redis-server`
//! (Redis >= 7.0) on the `PATH`, or `REDIS_SERVER_BIN`.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, RecordId, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;
use tower_idempotency_testkit::Relay;

use common::{DedicatedServer, Executions};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([7; Fingerprint::LEN]);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);
/// The promise: claims work again within about twice the response timeout.
const RECOVERY_BOUND: Duration = Duration::from_millis(2 * 400 + 200);
/// Claims running at once while the connection goes dark.
const CONCURRENT: usize = 4;

async fn store_through(relay: &Relay) -> RedisStore {
    RedisStore::builder()
        .connect_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect(&format!("redis://{}", relay.addr()))
        .await
        .expect("the server answers through the relay")
}

/// A second instance, straight to the server: what a retry elsewhere would find.
async fn direct(server: &DedicatedServer) -> RedisStore {
    RedisStore::connect(&server.url()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_recover_after_the_connection_goes_silent() {
    let server = DedicatedServer::start();
    let relay = Relay::start(server.addr()).await;
    let store = store_through(&relay).await;
    let other = direct(&server).await;
    let executions = Arc::new(Mutex::new(Executions::default()));
    let tried: Arc<Mutex<Vec<RecordId>>> = Arc::default();

    // A claim made before the fault, to be completed after it.
    let held = unique_id("held");
    let Claim::Acquired(held_token) = store.claim(&held, &FP, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let accepted_before = relay.accepted();

    relay.silence_existing();
    let silenced = Instant::now();

    // Claims keep coming, a few at a time, each with a new id, until one succeeds.
    let first_success: Arc<Mutex<Option<Duration>>> = Arc::default();
    let mut workers = Vec::new();
    for _ in 0..CONCURRENT {
        let store = store.clone();
        let executions = Arc::clone(&executions);
        let tried = Arc::clone(&tried);
        let first_success = Arc::clone(&first_success);
        workers.push(tokio::spawn(async move {
            let mut failures = 0;
            while silenced.elapsed() < RECOVERY_BOUND * 3 {
                let id = unique_id("silent");
                tried.lock().unwrap().push(id);
                let claim = store.claim(&id, &FP, HOUR).await;
                executions.lock().unwrap().record(&id, &claim);
                match claim {
                    Ok(Claim::Acquired(_)) => {
                        let mut first = first_success.lock().unwrap();
                        if first.is_none() {
                            *first = Some(silenced.elapsed());
                        }
                        return failures;
                    }
                    Ok(other) => panic!("a fresh id is acquired, got {other:?}"),
                    Err(error) => {
                        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                        failures += 1;
                    }
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for worker in workers {
        failures += worker.await.unwrap();
    }
    let recovery = first_success
        .lock()
        .unwrap()
        .expect("no claim succeeded after the connection went silent");

    // The claim held across the fault completes (the layer retries a failed complete).
    let started = Instant::now();
    let mut complete_attempts = 0;
    loop {
        complete_attempts += 1;
        match store
            .complete(&held, held_token, Bytes::from_static(b"held"), HOUR)
            .await
        {
            Ok(()) => break,
            Err(error) => {
                assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                assert!(complete_attempts < 3, "complete keeps failing: {error}");
            }
        }
    }
    let complete_took = started.elapsed();

    // Every id tried, failed claims included, is acquired at most once: retries through
    // either instance find it in flight (or acquire it, if the failed claim created nothing).
    let ids: Vec<RecordId> = tried.lock().unwrap().clone();
    for id in &ids {
        for store in [&store, &other] {
            let claim = store.claim(id, &FP, HOUR).await;
            executions.lock().unwrap().record(id, &claim);
            assert!(claim.is_ok(), "after recovery: {claim:?}");
        }
    }
    let acquired = executions.lock().unwrap().assert_at_most_once();
    println!(
        "silent connection: first claim succeeded {recovery:?} after the silence \
         (response timeout {RESPONSE_TIMEOUT:?}, bound {RECOVERY_BOUND:?}); {failures} claims \
         failed meanwhile; the held claim completed after {complete_attempts} attempt(s) in \
         {complete_took:?}; {acquired} of {} ids acquired, each once; {} new connections",
        ids.len(),
        relay.accepted() - accepted_before
    );
    assert!(
        recovery <= RECOVERY_BOUND,
        "claims recovered only after {recovery:?}"
    );
    match other.claim(&held, &FP, HOUR).await.unwrap() {
        Claim::Completed(record) => assert_eq!(&record.response[..], b"held"),
        other => panic!("expected the held claim completed, got {other:?}"),
    }
}

/// While every connection is silent (the server unreachable), operations fail fast as
/// `Unavailable`; once connections pass again, claims recover within the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_recover_after_the_server_was_unreachable() {
    let server = DedicatedServer::start();
    let relay = Relay::start(server.addr()).await;
    let store = store_through(&relay).await;
    let mut executions = Executions::default();
    let deadline = RESPONSE_TIMEOUT * 2;

    relay.silence_all();
    for attempt in 0..3 {
        let id = unique_id("dark");
        let started = Instant::now();
        let claim = store.claim(&id, &FP, HOUR).await;
        executions.record(&id, &claim);
        let error = claim.expect_err("nothing gets through");
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
        assert!(
            started.elapsed() < deadline + Duration::from_millis(200),
            "attempt {attempt} took {:?}",
            started.elapsed()
        );
        let error = store.check().await.expect_err("nothing gets through");
        assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    }

    relay.restore();
    let restored = Instant::now();
    let recovery = loop {
        let id = unique_id("back");
        let claim = store.claim(&id, &FP, HOUR).await;
        executions.record(&id, &claim);
        match claim {
            Ok(Claim::Acquired(_)) => break restored.elapsed(),
            Ok(other) => panic!("a fresh id is acquired, got {other:?}"),
            Err(error) => {
                assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                assert!(
                    restored.elapsed() < RECOVERY_BOUND * 3,
                    "still failing {:?} after the restore: {error}",
                    restored.elapsed()
                );
            }
        }
    };
    let acquired = executions.assert_at_most_once();
    println!(
        "unreachable server: claims recovered {recovery:?} after connections passed again \
         (bound {RECOVERY_BOUND:?}); {acquired} ids acquired, each once"
    );
    assert!(recovery <= RECOVERY_BOUND, "recovered after {recovery:?}");
    store.check().await.unwrap();
}
