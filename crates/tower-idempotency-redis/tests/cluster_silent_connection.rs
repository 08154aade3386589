//! Redis Cluster: a connection to one primary that goes silent (no FIN, no reset: bytes just
//! stop, as when a primary's host vanishes or a NAT entry expires) no longer fails that
//! primary's claims until the process restarts. The store rebuilds its cluster connection;
//! claims on every slot range succeed again within about twice the response timeout, no id is
//! ever acquired twice, and the other primaries never notice. A primary that is really
//! unreachable does not cause a storm of rebuilds.
//!
//! Runs private clusters of 3 primaries whose nodes announce the ports of testkit `Relay`s, so
//! the store reaches every node only through its relay; needs `redis-server` (Redis >= 7.0)
//! on the `PATH`, or `REDIS_SERVER_BIN`.

mod common;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, RecordId, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

use common::{
    Executions,
    cluster::{RelayedCluster, key_slot},
};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([5; Fingerprint::LEN]);
const PRIMARIES: usize = 3;
const RESPONSE_TIMEOUT: Duration = Duration::from_millis(400);
/// An operation's deadline: connect timeout plus response timeout.
const DEADLINE: Duration = Duration::from_millis(2 * 400);
/// The promise: claims work again within about twice the response timeout.
const RECOVERY_BOUND: Duration = Duration::from_millis(2 * 400 + 200);
/// Claims running at once on the silenced primary's slots.
const CONCURRENT: usize = 4;
/// The primary whose connection goes silent.
const SILENT: usize = 0;

async fn store_through(cluster: &RelayedCluster, prefix: &str) -> RedisStore {
    RedisStore::builder()
        .prefix(prefix)
        .connect_timeout(RESPONSE_TIMEOUT)
        .response_timeout(RESPONSE_TIMEOUT)
        .connect_cluster(cluster.urls())
        .await
        .expect("the cluster answers through the relays")
}

/// A fresh id whose record lives on primary `primary`.
fn id_on(cluster: &RelayedCluster, store: &RedisStore, primary: usize, label: &str) -> RecordId {
    loop {
        let id = unique_id(label);
        if cluster.cluster.primary_of(&store.key(&id)) == primary {
            return id;
        }
    }
}

/// What the claims on one primary's slots saw.
#[derive(Debug, Default)]
struct Seen {
    acquired: usize,
    failed: usize,
    slowest: Duration,
    first_success: Option<Duration>,
}

/// Claims fresh ids on `primary`'s slots, `workers` at a time, until `done` says so (checked
/// after every claim); every id tried is kept in `tried`, every outcome in `executions`.
#[allow(clippy::too_many_arguments)]
fn claim_continuously(
    cluster: &Arc<RelayedCluster>,
    store: &RedisStore,
    primary: usize,
    workers: usize,
    since: Instant,
    executions: &Arc<Mutex<Executions>>,
    tried: &Arc<Mutex<Vec<RecordId>>>,
    done: impl Fn(&Seen) -> bool + Send + Sync + 'static,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let done = Arc::new(done);
    (0..workers)
        .map(|_| {
            let (cluster, store, executions, tried, done) = (
                Arc::clone(cluster),
                store.clone(),
                Arc::clone(executions),
                Arc::clone(tried),
                Arc::clone(&done),
            );
            tokio::spawn(async move {
                let mut seen = Seen::default();
                while !done(&seen) {
                    let id = id_on(&cluster, &store, primary, "silent-cluster");
                    tried.lock().unwrap().push(id);
                    let started = Instant::now();
                    let claim = store.claim(&id, &FP, HOUR).await;
                    seen.slowest = seen.slowest.max(started.elapsed());
                    executions.lock().unwrap().record(&id, &claim);
                    match claim {
                        Ok(Claim::Acquired(_)) => {
                            seen.acquired += 1;
                            seen.first_success.get_or_insert_with(|| since.elapsed());
                        }
                        Ok(other) => panic!("a fresh id is acquired, got {other:?}"),
                        Err(error) => {
                            assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                            seen.failed += 1;
                        }
                    }
                }
                seen
            })
        })
        .collect()
}

async fn gather(workers: Vec<tokio::task::JoinHandle<Seen>>) -> Seen {
    let mut all = Seen::default();
    for worker in workers {
        let seen = worker.await.unwrap();
        all.acquired += seen.acquired;
        all.failed += seen.failed;
        all.slowest = all.slowest.max(seen.slowest);
        all.first_success = match (all.first_success, seen.first_success) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    all
}

/// Re-claims every id tried, through `stores`: a retry finds each in flight (or acquires it,
/// if its failed claim created nothing). Then no id may have been acquired twice.
async fn assert_each_acquired_at_most_once(
    stores: &[&RedisStore],
    tried: &Mutex<Vec<RecordId>>,
    executions: &Mutex<Executions>,
) -> (usize, usize) {
    let ids: Vec<RecordId> = tried.lock().unwrap().clone();
    for id in &ids {
        for store in stores {
            let claim = store.claim(id, &FP, HOUR).await;
            executions.lock().unwrap().record(id, &claim);
            assert!(claim.is_ok(), "after recovery: {claim:?}");
        }
    }
    (executions.lock().unwrap().assert_at_most_once(), ids.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_recover_after_a_primary_connection_goes_silent() {
    let cluster = Arc::new(RelayedCluster::start(PRIMARIES).await);
    let prefix = common::random_prefix("silent-cluster");
    let store = store_through(&cluster, &prefix).await;
    let executions = Arc::new(Mutex::new(Executions::default()));
    let tried: Arc<Mutex<Vec<RecordId>>> = Arc::default();

    // The test's slot arithmetic agrees with the cluster's.
    let probe_key = store.key(&unique_id("slot"));
    let slot: u16 =
        cluster.cluster.primaries[0].query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(&probe_key));
    assert_eq!(slot, key_slot(&probe_key));

    // Every primary answers through its relay before the fault, and holds a claim to be
    // completed after it.
    let mut held = Vec::new();
    for primary in 0..PRIMARIES {
        let id = id_on(&cluster, &store, primary, "held");
        let claim = store.claim(&id, &FP, HOUR).await;
        executions.lock().unwrap().record(&id, &claim);
        let Ok(Claim::Acquired(token)) = claim else {
            panic!("primary {primary}: a fresh id is acquired, got {claim:?}");
        };
        tried.lock().unwrap().push(id);
        held.push((id, token));
    }
    // Two more on the primary that goes silent: one renewed, one completed during the fault.
    let mut during = Vec::new();
    for _ in 0..2 {
        let id = id_on(&cluster, &store, SILENT, "during");
        let claim = store.claim(&id, &FP, HOUR).await;
        executions.lock().unwrap().record(&id, &claim);
        let Ok(Claim::Acquired(token)) = claim else {
            panic!("a fresh id is acquired, got {claim:?}");
        };
        tried.lock().unwrap().push(id);
        during.push((id, token));
    }
    let accepted_before: Vec<usize> = cluster.relays.iter().map(|r| r.accepted()).collect();

    cluster.relays[SILENT].silence_existing();
    let silenced = Instant::now();

    // A renewal may be sent twice: it succeeds on the rebuilt connection. A complete may not:
    // its first attempt is lost in the silence, so it fails, and is not sent again.
    let (renewed, renew_token) = during[0];
    let renewal = tokio::spawn({
        let store = store.clone();
        async move {
            let started = Instant::now();
            (
                store.renew(&renewed, renew_token, HOUR).await,
                started.elapsed(),
            )
        }
    });
    let (unsent, unsent_token) = during[1];
    let lost_complete = tokio::spawn({
        let store = store.clone();
        async move {
            store
                .complete(&unsent, unsent_token, Bytes::from_static(b"lost"), HOUR)
                .await
        }
    });

    // Claims on the silenced primary's slots, a few at a time, each with a new id, until one
    // succeeds or three times the bound passed.
    let recovering = claim_continuously(
        &cluster,
        &store,
        SILENT,
        CONCURRENT,
        silenced,
        &executions,
        &tried,
        move |seen| seen.acquired > 0 || silenced.elapsed() > RECOVERY_BOUND * 3,
    );
    // Meanwhile, claims on the other primaries' slots, until the recovery is over.
    let recovered = Arc::new(AtomicBool::new(false));
    let others: Vec<_> = (0..PRIMARIES)
        .filter(|&p| p != SILENT)
        .map(|primary| {
            let recovered = Arc::clone(&recovered);
            claim_continuously(
                &cluster,
                &store,
                primary,
                1,
                silenced,
                &executions,
                &tried,
                move |_| recovered.load(Ordering::SeqCst),
            )
        })
        .collect();

    let silent = gather(recovering).await;
    let recovery = silent
        .first_success
        .expect("no claim on the silenced primary's slots succeeded");

    // Claims on keys of every slot range now succeed, one after another, each in time.
    let mut after = BTreeMap::new();
    for primary in 0..PRIMARIES {
        for _ in 0..8 {
            let id = id_on(&cluster, &store, primary, "after");
            tried.lock().unwrap().push(id);
            let started = Instant::now();
            let claim = store.claim(&id, &FP, HOUR).await;
            executions.lock().unwrap().record(&id, &claim);
            assert!(
                matches!(claim, Ok(Claim::Acquired(_))),
                "primary {primary} after the recovery: {claim:?}"
            );
            let slowest = after.entry(primary).or_insert(Duration::ZERO);
            *slowest = (*slowest).max(started.elapsed());
        }
    }
    recovered.store(true, Ordering::SeqCst);
    let mut unaffected = Vec::new();
    for workers in others {
        unaffected.push(gather(workers).await);
    }

    let (renewal, renew_took) = renewal.await.unwrap();
    renewal.unwrap_or_else(|error| panic!("the renewal failed after {renew_took:?}: {error}"));
    let error = lost_complete
        .await
        .unwrap()
        .expect_err("a complete whose command went into the silence is not answered");
    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");

    // The claims held across the fault complete (the layer retries a failed complete).
    let mut complete_attempts = Vec::new();
    for (primary, (id, token)) in held.iter().enumerate() {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match store
                .complete(id, *token, Bytes::from_static(b"held"), HOUR)
                .await
            {
                Ok(()) => break,
                Err(error) => {
                    assert_eq!(error.kind(), StoreErrorKind::Unavailable, "{error}");
                    assert!(
                        attempts < 3,
                        "primary {primary}: complete keeps failing: {error}"
                    );
                }
            }
        }
        complete_attempts.push(attempts);
    }

    // A second instance, connected now (its connections are new, so they pass).
    let other = store_through(&cluster, &prefix).await;
    // The failed complete was not sent again behind the caller's back: still in flight, and
    // its owner can still complete it.
    let claim = other.claim(&unsent, &FP, HOUR).await;
    assert!(
        matches!(claim, Ok(Claim::InFlight { .. })),
        "expected the record of the failed complete still in flight, got {claim:?}"
    );
    store
        .complete(&unsent, unsent_token, Bytes::from_static(b"retried"), HOUR)
        .await
        .expect("the owner's retried complete succeeds");
    let (acquired, ids) =
        assert_each_acquired_at_most_once(&[&store, &other], &tried, &executions).await;
    let new_connections: Vec<usize> = cluster
        .relays
        .iter()
        .zip(&accepted_before)
        .map(|(relay, before)| relay.accepted() - before)
        .collect();
    println!(
        "silent primary connection: the first claim on its slots succeeded {recovery:?} after \
         the silence (response timeout {RESPONSE_TIMEOUT:?}, bound {RECOVERY_BOUND:?}); \
         {} claims on them failed meanwhile, the slowest took {:?}; the other primaries' \
         claims during the fault: {:?}; slowest claim per primary after the recovery: \
         {after:?}; the renewal during the fault took {renew_took:?}; held claims completed after {complete_attempts:?} attempt(s); {acquired} \
         of {ids} ids acquired, each once; new connections per relay (second instance \
         included): {new_connections:?}",
        silent.failed,
        silent.slowest,
        unaffected
            .iter()
            .map(|s| (s.acquired, s.failed, s.slowest))
            .collect::<Vec<_>>(),
    );
    assert!(
        recovery <= RECOVERY_BOUND,
        "claims on the silenced primary recovered only after {recovery:?}"
    );
    assert!(
        renew_took <= RECOVERY_BOUND,
        "the renewal took {renew_took:?}"
    );
    for (n, seen) in unaffected.iter().enumerate() {
        assert_eq!(seen.failed, 0, "other primary #{n}: {seen:?}");
        assert!(seen.acquired > 0, "other primary #{n}: {seen:?}");
        assert!(
            seen.slowest < RESPONSE_TIMEOUT,
            "other primary #{n} was slowed down by the fault: {seen:?}"
        );
    }
    for (id, _) in &held {
        match other.claim(id, &FP, HOUR).await.unwrap() {
            Claim::Completed(record) => assert_eq!(&record.response[..], b"held"),
            claim => panic!("expected the held claim completed, got {claim:?}"),
        }
    }
}

/// A primary that is really unreachable (its existing connections silent, new ones silent
/// too): its claims fail fast as `Unavailable`, the other primaries are unaffected, and the
/// store rebuilds its cluster connection rarely (backing off) instead of on every timeout.
/// Once the primary is reachable again, claims on its slots recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_primary_causes_no_storm_of_rebuilds() {
    const OUTAGE: Duration = Duration::from_secs(6);
    /// The longest the store waits between two rebuilds.
    const MAX_REBUILD_INTERVAL: Duration = Duration::from_secs(10);
    let cluster = Arc::new(RelayedCluster::start(PRIMARIES).await);
    let prefix = common::random_prefix("unreachable-primary");
    let store = store_through(&cluster, &prefix).await;
    let executions = Arc::new(Mutex::new(Executions::default()));
    let tried: Arc<Mutex<Vec<RecordId>>> = Arc::default();
    let accepted_before: Vec<usize> = cluster.relays.iter().map(|r| r.accepted()).collect();

    cluster.relays[SILENT].silence_all();
    let darkened = Instant::now();
    let failing = claim_continuously(
        &cluster,
        &store,
        SILENT,
        CONCURRENT,
        darkened,
        &executions,
        &tried,
        move |_| darkened.elapsed() > OUTAGE,
    );
    let others: Vec<_> = (0..PRIMARIES)
        .filter(|&p| p != SILENT)
        .map(|primary| {
            claim_continuously(
                &cluster,
                &store,
                primary,
                1,
                darkened,
                &executions,
                &tried,
                move |_| darkened.elapsed() > OUTAGE,
            )
        })
        .collect();
    let dark = gather(failing).await;
    let mut unaffected = Vec::new();
    for workers in others {
        unaffected.push(gather(workers).await);
    }
    // Every rebuild opens one new connection to each node it reaches.
    let rebuilds: Vec<usize> = cluster
        .relays
        .iter()
        .zip(&accepted_before)
        .map(|(relay, before)| relay.accepted() - before)
        .collect();

    cluster.relays[SILENT].restore();
    let restored = Instant::now();
    let back = claim_continuously(
        &cluster,
        &store,
        SILENT,
        1,
        restored,
        &executions,
        &tried,
        move |seen| seen.acquired > 0 || restored.elapsed() > Duration::from_secs(15),
    );
    let back = gather(back).await;
    let recovery = back
        .first_success
        .expect("claims on the primary never recovered");
    // The next rebuild may have to wait out the backoff.
    assert!(
        recovery <= MAX_REBUILD_INTERVAL + RECOVERY_BOUND,
        "claims recovered only {recovery:?} after the primary was reachable again"
    );

    let (acquired, ids) = assert_each_acquired_at_most_once(&[&store], &tried, &executions).await;
    println!(
        "unreachable primary for {OUTAGE:?}: {} claims on its slots failed (slowest {:?}, \
         deadline {DEADLINE:?}), {} succeeded; the other primaries' claims: {:?}; new \
         connections per relay during the outage: {rebuilds:?}; claims recovered {recovery:?} \
         after it was reachable again; {acquired} of {ids} ids acquired, each once",
        dark.failed,
        dark.slowest,
        dark.acquired,
        unaffected
            .iter()
            .map(|s| (s.acquired, s.failed, s.slowest))
            .collect::<Vec<_>>(),
    );
    assert_eq!(dark.acquired, 0, "nothing gets through: {dark:?}");
    assert!(
        dark.slowest < DEADLINE + Duration::from_millis(200),
        "claims on the unreachable primary fail fast: {dark:?}"
    );
    for (n, seen) in unaffected.iter().enumerate() {
        assert_eq!(seen.failed, 0, "other primary #{n}: {seen:?}");
        assert!(
            seen.slowest < RESPONSE_TIMEOUT,
            "other primary #{n} was slowed down by the outage: {seen:?}"
        );
    }
    // Rebuilds back off (1 s, 2 s, 4 s, ... apart): three at most in six seconds (at about
    // 0.6 s, 1.6 s and 3.6 s), where back-to-back ones (each waits about three response
    // timeouts for the unreachable node) would be five or more.
    for (relay, &opened) in rebuilds.iter().enumerate().filter(|&(r, _)| r != SILENT) {
        assert!(
            opened <= 3,
            "relay {relay}: {opened} new connections in {OUTAGE:?}: a storm of rebuilds"
        );
    }
    assert!(
        rebuilds[SILENT] >= 1,
        "the store never tried to reach the primary again: {rebuilds:?}"
    );
}

/// A first request costs two commands on the cluster (claim, complete), a replay one: the
/// recovery adds nothing while the cluster is healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_cluster_costs_no_extra_round_trips() {
    let cluster = Arc::new(RelayedCluster::start(PRIMARIES).await);
    let store = store_through(&cluster, &common::random_prefix("round-trips")).await;
    let calls = || -> BTreeMap<String, u64> {
        let mut all = BTreeMap::new();
        for primary in &cluster.cluster.primaries {
            for (name, n) in primary.command_calls() {
                *all.entry(name).or_default() += n;
            }
        }
        all
    };
    let delta = |before: &BTreeMap<String, u64>, after: BTreeMap<String, u64>| {
        after
            .into_iter()
            .filter_map(|(name, n)| {
                let d = n - before.get(&name).copied().unwrap_or(0);
                (d > 0).then_some((name, d))
            })
            .collect::<BTreeMap<_, _>>()
    };
    let expect = |commands: &[(&str, u64)]| -> BTreeMap<String, u64> {
        commands.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
    };
    for primary in 0..PRIMARIES {
        let id = id_on(&cluster, &store, primary, "round-trips");
        let before = calls();
        let Claim::Acquired(token) = store.claim(&id, &FP, HOUR).await.unwrap() else {
            panic!("a fresh id is acquired");
        };
        store
            .complete(&id, token, Bytes::from_static(b"response"), HOUR)
            .await
            .unwrap();
        assert_eq!(
            delta(&before, calls()),
            expect(&[("evalsha", 1), ("get", 1), ("set", 2)]),
            "primary {primary}: a first request is one SET and one EVALSHA (GET and SET run \
             inside it)"
        );
        let before = calls();
        assert!(matches!(
            store.claim(&id, &FP, HOUR).await.unwrap(),
            Claim::Completed(_)
        ));
        assert_eq!(
            delta(&before, calls()),
            expect(&[("set", 1)]),
            "primary {primary}: a replay"
        );
    }
}
