//! The conformance suite against a Redis Cluster.
//!
//! Needs a cluster (Redis >= 7.0) whose nodes are listed, comma-separated, in
//! `REDIS_CLUSTER_URLS` (default: the local test cluster of `scripts/redis-cluster`,
//! `redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003`).

mod common;

use std::time::Duration;

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore},
    testing::unique_id,
};

tower_idempotency::store_conformance_tests!(common::cluster_store());

/// Records spread over the primaries (one key per record, each in its own slot), and each
/// works wherever it lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_spread_over_the_primaries() {
    let store = common::cluster_store().await;
    let fingerprint = Fingerprint::from_bytes([3; Fingerprint::LEN]);
    let hour = Duration::from_secs(3600);
    for n in 0..64 {
        let id = unique_id("spread");
        let Claim::Acquired(token) = store.claim(&id, &fingerprint, hour).await.unwrap() else {
            panic!("a fresh id is acquired");
        };
        let body = Bytes::from(format!("response {n}"));
        store
            .complete(&id, token, body.clone(), hour)
            .await
            .unwrap();
        match store.claim(&id, &fingerprint, hour).await.unwrap() {
            Claim::Completed(record) => assert_eq!(record.response, body),
            other => panic!("expected Completed, got {other:?}"),
        }
    }
    // Ask every listed node (each answers SCAN for its own slots only) how many it holds.
    let urls = common::cluster_urls();
    let mut holding = 0;
    for url in &urls {
        let mut node = redis::Client::open(url.as_str())
            .and_then(|client| client.get_connection())
            .expect("the cluster node answers");
        let keys: Vec<String> = redis::cmd("SCAN")
            .arg(0)
            .arg("MATCH")
            .arg(format!("{}*", store.prefix()))
            .arg("COUNT")
            .arg(100_000)
            .query::<(u64, Vec<String>)>(&mut node)
            .expect("SCAN works")
            .1;
        if !keys.is_empty() {
            holding += 1;
        }
    }
    assert!(
        holding >= urls.len().min(2),
        "64 records landed on {holding} of the {} listed nodes",
        urls.len()
    );
}
