//! Each store operation is one command, i.e. one round trip: counted with
//! `INFO commandstats` on a `redis-server` of this test's own (so nothing else moves the
//! counters). Needs `redis-server` (Redis >= 7.0) on the `PATH`, or `REDIS_SERVER_BIN`.

mod common;

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

const HOUR: Duration = Duration::from_secs(3600);

/// The commands `operation` caused, by name.
async fn commands_of<T>(
    server: &common::DedicatedServer,
    operation: impl std::future::Future<Output = T>,
) -> (T, BTreeMap<String, u64>) {
    let before = server.command_calls();
    let output = operation.await;
    let after = server.command_calls();
    let delta = after
        .into_iter()
        .filter_map(|(name, calls)| {
            let delta = calls - before.get(&name).copied().unwrap_or(0);
            (delta > 0).then_some((name, delta))
        })
        .collect();
    (output, delta)
}

fn expect(commands: &[(&str, u64)]) -> BTreeMap<String, u64> {
    commands.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
}

#[tokio::test]
async fn every_operation_is_one_round_trip() {
    let server = common::DedicatedServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let fingerprint = Fingerprint::from_bytes([1; Fingerprint::LEN]);
    let other = Fingerprint::from_bytes([2; Fingerprint::LEN]);

    // A first request: claim (one SET), complete (one EVALSHA; the GET and SET inside the
    // script run on the server, in the same step, and show up in the stats too).
    let id = unique_id("first");
    let (claim, claim_commands) = commands_of(&server, store.claim(&id, &fingerprint, HOUR)).await;
    let Claim::Acquired(token) = claim.unwrap() else {
        panic!("a fresh id is acquired");
    };
    assert_eq!(claim_commands, expect(&[("set", 1)]), "claim");
    let (done, complete_commands) = commands_of(
        &server,
        store.complete(&id, token, Bytes::from_static(b"response"), HOUR),
    )
    .await;
    done.unwrap();
    assert_eq!(
        complete_commands,
        expect(&[("evalsha", 1), ("get", 1), ("set", 1)]),
        "complete: one EVALSHA (GET and SET run inside it)"
    );

    // A replay, and a key reused for another request (422): one SET each.
    for fp in [fingerprint, other] {
        let (claim, commands) = commands_of(&server, store.claim(&id, &fp, HOUR)).await;
        assert!(matches!(claim.unwrap(), Claim::Completed(_)));
        assert_eq!(commands, expect(&[("set", 1)]), "replay / reuse");
    }

    // In flight elsewhere (409): one SET.
    let busy = unique_id("busy");
    let Claim::Acquired(busy_token) = store.claim(&busy, &fingerprint, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let (claim, commands) = commands_of(&server, store.claim(&busy, &fingerprint, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::InFlight { .. }));
    assert_eq!(commands, expect(&[("set", 1)]), "in flight");

    // Renew and release: one EVALSHA each.
    let (renewed, commands) = commands_of(&server, store.renew(&busy, busy_token, HOUR)).await;
    renewed.unwrap();
    assert_eq!(
        commands,
        expect(&[("evalsha", 1), ("get", 1), ("pexpire", 1)]),
        "renew"
    );
    let (released, commands) = commands_of(&server, store.release(&busy, busy_token)).await;
    released.unwrap();
    assert_eq!(
        commands,
        expect(&[("del", 1), ("evalsha", 1), ("get", 1)]),
        "release"
    );

    // A readiness check: one PING.
    let (checked, commands) = commands_of(&server, store.check()).await;
    checked.unwrap();
    assert_eq!(commands, expect(&[("ping", 1)]), "check");
}

/// A server that lost the scripts (a restart, SCRIPT FLUSH) gets them back on first use:
/// EVALSHA (NOSCRIPT), then EVAL with the body, which caches the script again, once. Nothing
/// is sent anywhere else (on a cluster: not to the replicas, nor to other primaries).
#[tokio::test]
async fn lost_scripts_are_loaded_again_once() {
    let server = common::DedicatedServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let fingerprint = Fingerprint::from_bytes([1; Fingerprint::LEN]);
    let () = server.query(redis::cmd("SCRIPT").arg("FLUSH"));

    let id = unique_id("flushed");
    let Claim::Acquired(token) = store.claim(&id, &fingerprint, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let (done, commands) = commands_of(
        &server,
        store.complete(&id, token, Bytes::from_static(b"response"), HOUR),
    )
    .await;
    done.unwrap();
    assert_eq!(
        commands,
        expect(&[("eval", 1), ("evalsha", 1), ("get", 1), ("set", 1)]),
        "complete after SCRIPT FLUSH"
    );

    let id = unique_id("reloaded");
    let Claim::Acquired(token) = store.claim(&id, &fingerprint, HOUR).await.unwrap() else {
        panic!("a fresh id is acquired");
    };
    let (done, commands) = commands_of(
        &server,
        store.complete(&id, token, Bytes::from_static(b"response"), HOUR),
    )
    .await;
    done.unwrap();
    assert_eq!(
        commands,
        expect(&[("evalsha", 1), ("get", 1), ("set", 1)]),
        "complete once the script is back"
    );
}
