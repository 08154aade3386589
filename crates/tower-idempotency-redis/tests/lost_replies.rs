//! A claim whose reply was lost is not mistaken for someone else's: sent again, it finds its
//! own in-flight record and acquires. A claim that failed with its outcome unknown leaves no
//! record behind for a whole lease: the store releases it, token-checked, in the background.
//! Uses `redis-server`s of the test's own; needs `redis-server` (Redis >= 7.0) on the `PATH`,
//! or `REDIS_SERVER_BIN`.

mod common;

use std::time::{Duration, Instant};

use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

use common::{DedicatedServer, Executions, wait_for};
use tower_idempotency_testkit::Relay;

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([8; Fingerprint::LEN]);
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(300);

/// The claim reaches the server and creates the record; its reply is lost. The store gives
/// the silent connection up and sends the claim again on a new one, which answers with the
/// record the first attempt created: ours, so `Acquired`, not `InFlight` (which would block
/// the key for a whole lease with nobody running it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_sent_again_recognises_its_own_record() {
    let server = DedicatedServer::start();
    let proxy = Relay::start(server.addr()).await;
    let store = RedisStore::builder()
        .connect_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect(&format!("redis://{}", proxy.addr()))
        .await
        .unwrap();
    let other = RedisStore::connect(&server.url()).await.unwrap();
    let mut executions = Executions::default();
    let sets_before = server.command_calls().get("set").copied().unwrap_or(0);

    proxy.mute_replies_of_existing();
    let id = unique_id("lost-reply");
    let started = Instant::now();
    let claim = store.claim(&id, &FP, HOUR).await;
    let took = started.elapsed();
    executions.record(&id, &claim);
    let Ok(Claim::Acquired(token)) = claim else {
        panic!("the claim whose first reply was lost is acquired, got {claim:?}");
    };
    // It really was sent twice, and the first reply really was lost.
    let sets = server.command_calls().get("set").copied().unwrap_or(0) - sets_before;
    assert_eq!(sets, 2, "the claim reached the server twice");
    assert!(proxy.muted_bytes() > 0, "a reply was dropped");
    // The record is the one this claim owns.
    let value: Vec<u8> = server.query(redis::cmd("GET").arg(store.key(&id)));
    assert_eq!(
        &value[17..],
        &token.get().to_be_bytes(),
        "the record holds our token"
    );

    // Another instance sees it in flight; nobody else acquires it.
    let retry = other.claim(&id, &FP, HOUR).await;
    executions.record(&id, &retry);
    assert!(matches!(retry, Ok(Claim::InFlight { .. })), "{retry:?}");
    store.renew(&id, token, HOUR).await.expect("we own it");
    let acquired = executions.assert_at_most_once();
    println!(
        "lost claim reply: acquired after {took:?} (response timeout {RESPONSE_TIMEOUT:?}), \
         sent {sets} times, {acquired} id acquired once"
    );
    assert!(took < RESPONSE_TIMEOUT * 2, "took {took:?}");
}

/// The server holds the claim's `SET` (`CLIENT PAUSE ... WRITE`) past the operation's
/// deadline: the claim fails (`Unavailable`, the layer answers 503 and runs nothing), but
/// the server runs the `SET` later and creates the record. The store's background release,
/// queued behind it and token-checked, deletes it again: the key is free at once, not after
/// the lease (an hour here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_claim_leaves_no_record_behind() {
    let server = DedicatedServer::start();
    let store = RedisStore::builder()
        .connect_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect(&server.url())
        .await
        .unwrap();
    let mut executions = Executions::default();
    let id = unique_id("unknown-outcome");
    let key = store.key(&id);
    let sets_before = server.command_calls().get("set").copied().unwrap_or(0);

    let pause = Duration::from_millis(2000);
    let () = server.query(
        redis::cmd("CLIENT")
            .arg("PAUSE")
            .arg(pause.as_millis() as u64)
            .arg("WRITE"),
    );
    let paused = Instant::now();
    let claim = store.claim(&id, &FP, HOUR).await;
    executions.record(&id, &claim);
    let error = claim.expect_err("the server holds the claim past its deadline");
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
    assert!(
        paused.elapsed() < pause,
        "the claim failed before the pause ended"
    );

    // The held SET runs once the pause ends, creating the record...
    wait_for("the held SET to run", Duration::from_secs(30), || {
        server.command_calls().get("set").copied().unwrap_or(0) > sets_before
    });
    // ... and the release queued behind it deletes it.
    let gone = Instant::now();
    wait_for(
        "the failed claim's record to be released",
        Duration::from_secs(5),
        || {
            let exists: i64 = server.query(redis::cmd("EXISTS").arg(&key));
            exists == 0
        },
    );
    let freed_after = paused.elapsed();
    let retry = store.claim(&id, &FP, HOUR).await;
    executions.record(&id, &retry);
    assert!(matches!(retry, Ok(Claim::Acquired(_))), "{retry:?}");
    let acquired = executions.assert_at_most_once();
    println!(
        "failed claim: the key was free {freed_after:?} after the pause began (pause \
         {pause:?}, lease {HOUR:?}; released {:?} after the held SET ran); {acquired} id \
         acquired once, by the retry",
        gone.elapsed()
    );
}
