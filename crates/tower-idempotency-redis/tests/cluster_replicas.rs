//! A replica that does not answer never blocks a `complete`: scripts lost on the primaries
//! (`SCRIPT FLUSH`, a restart) come back through the key's own primary, never through every
//! node. Runs a private cluster of 3 primaries with one replica each (6 `redis-server`s of its
//! own, on free loopback ports); needs `redis-server` (Redis >= 7.0) on the `PATH`, or
//! `REDIS_SERVER_BIN`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

use common::{Executions, cluster::PrivateCluster};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([9; Fingerprint::LEN]);
const TIMEOUT: Duration = Duration::from_millis(500);
/// Records enough to land on every shard many times over.
const RECORDS: usize = 48;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_does_not_block_completes_after_script_flush() {
    let cluster = PrivateCluster::start(3);
    // A store that knows the replicas (its slot map lists them), connected before the fault.
    let before = RedisStore::builder()
        .connect_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .connect_cluster(cluster.primary_urls())
        .await
        .expect("the private cluster answers")
        .with_prefix(common::random_prefix("paused-replica"));
    let deadline = TIMEOUT * 2;

    // One replica stops answering (its sockets stay open).
    let paused = cluster.replicas[0].pause();
    let faulted = Instant::now();

    // A store connected during the fault works too: connecting loads the scripts on the
    // primaries only.
    let during = RedisStore::builder()
        .connect_timeout(TIMEOUT)
        .response_timeout(TIMEOUT)
        .connect_cluster(cluster.primary_urls())
        .await
        .expect("connecting does not wait for the paused replica")
        .with_prefix(before.prefix().to_owned());

    // And the primaries lose the scripts.
    for primary in &cluster.primaries {
        let () = primary.query(redis::cmd("SCRIPT").arg("FLUSH"));
    }

    let mut executions = Executions::default();
    let mut slowest = Duration::ZERO;
    for (n, store) in [&before, &during]
        .into_iter()
        .cycle()
        .take(RECORDS)
        .enumerate()
    {
        let id = unique_id("paused-replica");
        let claim = store.claim(&id, &FP, HOUR).await;
        executions.record(&id, &claim);
        let Ok(Claim::Acquired(token)) = claim else {
            panic!("record {n}: a fresh id is acquired, got {claim:?}");
        };
        let body = Bytes::from(format!("response {n}"));
        let started = Instant::now();
        store
            .complete(&id, token, body.clone(), HOUR)
            .await
            .unwrap_or_else(|error| {
                panic!(
                    "record {n} ({}): complete failed after {:?} with a replica paused: {error}",
                    store.key(&id),
                    started.elapsed()
                )
            });
        slowest = slowest.max(started.elapsed());
        // The retry, through the other store, replays; nothing runs twice.
        let other = if std::ptr::eq(store, &before) {
            &during
        } else {
            &before
        };
        let replay = other.claim(&id, &FP, HOUR).await;
        executions.record(&id, &replay);
        match replay {
            Ok(Claim::Completed(record)) => assert_eq!(record.response, body),
            other => panic!("record {n}: expected the replay, got {other:?}"),
        }
    }
    let acquired = executions.assert_at_most_once();
    assert_eq!(acquired, RECORDS);
    println!(
        "paused replica + SCRIPT FLUSH: {RECORDS} completes all succeeded, slowest {slowest:?} \
         (deadline {deadline:?}), {acquired} ids each acquired once, {:?} since the fault",
        faulted.elapsed()
    );
    assert!(slowest < deadline, "a complete took {slowest:?}");

    // Each primary got the scripts back from the keys that landed on it.
    for primary in &cluster.primaries {
        let calls = primary.command_calls();
        assert!(
            calls.get("eval").copied().unwrap_or(0) >= 1,
            "primary {} never ran EVAL: {calls:?}",
            primary.port()
        );
    }
    drop(paused);
}
