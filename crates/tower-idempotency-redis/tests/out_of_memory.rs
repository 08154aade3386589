//! Redis at its `maxmemory` with `noeviction`: new claims are `CapacityExhausted` (the layer
//! answers 503 `store-full`), not a backend error; what exists is still answered (replays,
//! in flight); owners can still renew, release and record that their request ran (a record
//! of up to `RESERVED_RECORD_BYTES`); and claims work again as soon as there is room. Runs a
//! `redis-server` of its own with a small `maxmemory`; needs `redis-server` (Redis >= 7.0) on
//! the `PATH`, or `REDIS_SERVER_BIN`.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RESERVED_RECORD_BYTES, StoreErrorKind},
    testing::unique_id,
};
use tower_idempotency_redis::RedisStore;

use common::{DedicatedServer, Executions};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([6; Fingerprint::LEN]);

/// Adds 1 MiB of other data, then lowers `maxmemory` to 256 KiB below what the server uses:
/// every write that could grow the data set is refused, with a margin that the server's own
/// fluctuations (client buffers shrinking) cannot cross. Returns the filler keys.
fn fill(server: &DedicatedServer) -> usize {
    let fillers = 16;
    for n in 0..fillers {
        let () = server.query(
            redis::cmd("SET")
                .arg(format!("filler:{n}"))
                .arg(vec![b'x'; 64 * 1024]),
        );
    }
    let info: String = server.query(redis::cmd("INFO").arg("memory"));
    let used: u64 = info
        .lines()
        .find_map(|line| line.strip_prefix("used_memory:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("INFO memory has used_memory");
    let () = server.query(
        redis::cmd("CONFIG")
            .arg("SET")
            .arg("maxmemory")
            .arg(used - 256 * 1024),
    );
    fillers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_refuses_new_claims_but_serves_what_exists() {
    let server =
        DedicatedServer::start_with(&["--maxmemory", "3mb", "--maxmemory-policy", "noeviction"]);
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut executions = Executions::default();
    let mut acquire = async |id| {
        let claim = store.claim(id, &FP, HOUR).await;
        executions.record(id, &claim);
        match claim {
            Ok(Claim::Acquired(token)) => token,
            other => panic!("a fresh id is acquired, got {other:?}"),
        }
    };

    // Before: one completed record, and three claims in flight whose owners are running.
    let done = unique_id("done");
    let token = acquire(&done).await;
    store
        .complete(&done, token, Bytes::from_static(b"stored before"), HOUR)
        .await
        .unwrap();
    let (small, large, dropped) = (unique_id("small"), unique_id("large"), unique_id("drop"));
    let small_token: FencingToken = acquire(&small).await;
    let large_token = acquire(&large).await;
    let dropped_token = acquire(&dropped).await;

    let fillers = fill(&server);

    // A new key: refused as full, not as broken; nothing acquired.
    let fresh = unique_id("fresh");
    let claim = store.claim(&fresh, &FP, HOUR).await;
    executions.record(&fresh, &claim);
    let error = claim.expect_err("no room for a new claim");
    assert_eq!(error.kind(), StoreErrorKind::CapacityExhausted, "{error}");
    assert!(error.to_string().contains("memory"), "{error}");

    // What exists is still answered: a replay, and a claim in flight.
    let replay = store.claim(&done, &FP, HOUR).await;
    executions.record(&done, &replay);
    match replay {
        Ok(Claim::Completed(record)) => assert_eq!(&record.response[..], b"stored before"),
        other => panic!("expected the replay, got {other:?}"),
    }
    let busy = store.claim(&small, &FP, HOUR).await;
    executions.record(&small, &busy);
    assert!(matches!(busy, Ok(Claim::InFlight { .. })), "{busy:?}");

    // The owners keep their leases and can free their keys...
    store.renew(&small, small_token, HOUR).await.unwrap();
    store.release(&dropped, dropped_token).await.unwrap();
    // ... and record that their requests ran: a small record always fits (guarantee 7), a
    // large one is refused as full, so the layer falls back to the small one.
    let reserved = Bytes::from(vec![b'r'; RESERVED_RECORD_BYTES]);
    store
        .complete(&small, small_token, reserved.clone(), HOUR)
        .await
        .expect("a record of RESERVED_RECORD_BYTES fits at maxmemory");
    let error = store
        .complete(
            &large,
            large_token,
            Bytes::from(vec![b'l'; 256 * 1024]),
            HOUR,
        )
        .await
        .expect_err("a large record does not fit");
    assert_eq!(error.kind(), StoreErrorKind::CapacityExhausted, "{error}");
    store
        .complete(&large, large_token, Bytes::from_static(b"ran"), HOUR)
        .await
        .expect("the fallback record fits");
    for (id, body) in [(&small, &reserved[..]), (&large, b"ran")] {
        let replay = store.claim(id, &FP, HOUR).await;
        executions.record(id, &replay);
        match replay {
            Ok(Claim::Completed(record)) => assert_eq!(&record.response[..], body),
            other => panic!("expected the replay, got {other:?}"),
        }
    }

    // Room again: claims work at once.
    let keys: Vec<String> = (0..fillers).map(|k| format!("filler:{k}")).collect();
    let () = server.query(redis::cmd("DEL").arg(keys));
    let freed = Instant::now();
    let recovery = loop {
        let claim = store.claim(&fresh, &FP, HOUR).await;
        executions.record(&fresh, &claim);
        match claim {
            Ok(Claim::Acquired(_)) => break freed.elapsed(),
            Err(error) if error.kind() == StoreErrorKind::CapacityExhausted => {
                assert!(
                    freed.elapsed() < Duration::from_secs(5),
                    "still full: {error}"
                );
            }
            other => panic!("expected Acquired, got {other:?}"),
        }
    };
    // The key released at maxmemory is free (its handler never ran: a release is for
    // requests whose response is not kept, so this is not a second execution).
    let again = store.claim(&dropped, &FP, HOUR).await;
    assert!(
        matches!(again, Ok(Claim::Acquired(_))),
        "released at maxmemory: {again:?}"
    );
    let acquired = executions.assert_at_most_once();
    println!(
        "maxmemory: {fillers} filler keys; new claims CapacityExhausted, replays and in-flight \
         answered; claims recovered {recovery:?} after memory was freed; {acquired} ids, each \
         acquired once per lease"
    );
}
