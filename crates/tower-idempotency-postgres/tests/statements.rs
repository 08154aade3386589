//! How many statements and round trips each operation costs, counted on the wire.
//!
//! The store talks to the real server through a counting TCP relay that parses the
//! frontend half of the PostgreSQL protocol: `Execute` messages are statements run with the
//! extended protocol, `Query` messages simple-protocol statements, `Parse` messages statement
//! preparations, and `Sync` messages (plus `Query`s) round trips. Counted per connection, so
//! other users of the server (and `pg_stat_statements`, which is usually not loaded) do not
//! matter.
//!
//! Round trips include sqlx's own: it pings (a lone `Sync`) every connection returned to the
//! pool, after the operation has returned, and, with `test_before_acquire` (the default),
//! every idle connection before handing it out.
//!
//! Per operation, in both protocols (prepared statements; transaction pooling's simple
//! protocol): one statement, one round trip, plus the release ping. A first request is a
//! claim and a complete; a replay, a 409 or a 422 is one claim that only reads the record
//! (no new row version, no row lock).

mod common;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};
use tower_idempotency::{
    Fingerprint,
    store::{Claim, IdempotencyStore, RecordId},
    testing::unique_id,
};
use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{self, Row, postgres::PgSslMode},
};

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Default)]
struct Counts {
    execute: AtomicU64,
    query: AtomicU64,
    parse: AtomicU64,
    sync: AtomicU64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    statements: u64,
    parses: u64,
    round_trips: u64,
}

impl Counts {
    fn snapshot(&self) -> Snapshot {
        Snapshot {
            statements: self.execute.load(Ordering::SeqCst) + self.query.load(Ordering::SeqCst),
            parses: self.parse.load(Ordering::SeqCst),
            round_trips: self.sync.load(Ordering::SeqCst) + self.query.load(Ordering::SeqCst),
        }
    }

    fn record(&self, message_type: u8) {
        let counter = match message_type {
            b'E' => &self.execute,
            b'Q' => &self.query,
            b'P' => &self.parse,
            b'S' => &self.sync,
            _ => return,
        };
        counter.fetch_add(1, Ordering::SeqCst);
    }
}

/// Starts a relay to `upstream`; returns its port.
async fn start_relay(upstream: (String, u16), counts: Arc<Counts>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (client, _) = listener.accept().await.unwrap();
            let server = TcpStream::connect((upstream.0.as_str(), upstream.1))
                .await
                .unwrap();
            tokio::spawn(relay(client, server, Arc::clone(&counts)));
        }
    });
    port
}

async fn relay(client: TcpStream, server: TcpStream, counts: Arc<Counts>) {
    const SSL_REQUEST: i32 = 80_877_103;
    const GSSENC_REQUEST: i32 = 80_877_104;
    let (mut from_client, mut to_client) = client.into_split();
    let (mut from_server, mut to_server) = server.into_split();
    tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_server, &mut to_client).await;
    });
    let mut pending = Vec::new();
    let mut startup = true;
    let mut chunk = vec![0; 64 * 1024];
    loop {
        let n = match from_client.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&chunk[..n]);
        // Count every message completed by this chunk before forwarding its last bytes, so a
        // message is counted before the server can answer it.
        loop {
            if startup {
                // Untyped: length (self included), then a code.
                if pending.len() < 8 {
                    break;
                }
                let len = i32::from_be_bytes(pending[0..4].try_into().unwrap()) as usize;
                if pending.len() < len {
                    break;
                }
                let code = i32::from_be_bytes(pending[4..8].try_into().unwrap());
                startup = code == SSL_REQUEST || code == GSSENC_REQUEST;
                pending.drain(..len);
            } else {
                // Typed: one type byte, then the length (self included).
                if pending.len() < 5 {
                    break;
                }
                let len = i32::from_be_bytes(pending[1..5].try_into().unwrap()) as usize + 1;
                if pending.len() < len {
                    break;
                }
                counts.record(pending[0]);
                pending.drain(..len);
            }
        }
        if to_server.write_all(&chunk[..n]).await.is_err() {
            return;
        }
    }
}

/// Waits until no message has been sent for a while (sqlx pings connections on release, in
/// the background).
async fn settle(counts: &Counts) -> Snapshot {
    let mut last = counts.snapshot();
    loop {
        tokio::time::sleep(Duration::from_millis(30)).await;
        let now = counts.snapshot();
        if now == last {
            return now;
        }
        last = now;
    }
}

/// The cost of `op`, as a difference of snapshots.
async fn cost<T>(counts: &Counts, op: impl Future<Output = T>) -> (T, Snapshot) {
    let before = settle(counts).await;
    let out = op.await;
    let after = settle(counts).await;
    let delta = Snapshot {
        statements: after.statements - before.statements,
        parses: after.parses - before.parses,
        round_trips: after.round_trips - before.round_trips,
    };
    (out, delta)
}

/// One statement, already prepared: one round trip for it, one for sqlx's ping on release.
const ONE: Snapshot = Snapshot {
    statements: 1,
    parses: 0,
    round_trips: 2,
};

/// A store on `table` through the counting relay on `port`, one connection, no ping before
/// use unless `test_before_acquire`.
async fn relayed(
    table: &str,
    port: u16,
    test_before_acquire: bool,
    transaction_pooling: bool,
) -> PostgresStore {
    PostgresStore::builder()
        .table(table)
        .max_connections(1)
        .test_before_acquire(test_before_acquire)
        .transaction_pooling(transaction_pooling)
        .connect_with(
            common::connect_options()
                .host("127.0.0.1")
                .port(port)
                .ssl_mode(PgSslMode::Disable),
        )
        .await
        .expect("connect through the relay")
}

/// The row version of a record: a write of any kind (even of the same values) changes it.
async fn version(direct: &PostgresStore, id: &RecordId) -> String {
    sqlx::query(&format!(
        "SELECT xmin::text || '/' || ctid::text FROM \"{}\" WHERE id = $1",
        direct.table()
    ))
    .bind(&id.as_bytes()[..])
    .fetch_one(direct.pool())
    .await
    .expect("the record exists")
    .get(0)
}

/// Every operation of `store` (through the relay counting `counts`) costs one statement
/// and one round trip plus sqlx's release ping; a replay, a 422 and a 409 write nothing.
async fn assert_one_statement_each(counts: &Counts, store: &PostgresStore, direct: &PostgresStore) {
    let fp = Fingerprint::from_bytes([1; Fingerprint::LEN]);
    let other_fp = Fingerprint::from_bytes([2; Fingerprint::LEN]);
    let body = Bytes::from_static(b"HTTP/1.1 201 Created");

    // Warm up: each statement is prepared once per connection, on first use.
    let warm = unique_id("warm");
    let Claim::Acquired(token) = store.claim(&warm, &fp, HOUR).await.unwrap() else {
        panic!("warm-up claim")
    };
    store.renew(&warm, token, HOUR).await.unwrap();
    store.release(&warm, token).await.unwrap();
    let Claim::Acquired(token) = store.claim(&warm, &fp, HOUR).await.unwrap() else {
        panic!("warm-up claim")
    };
    store
        .complete(&warm, token, body.clone(), HOUR)
        .await
        .unwrap();
    store.check().await.unwrap();
    store.delete_expired(10).await.unwrap();

    // A first request: claim + complete.
    let id = unique_id("first");
    let (claim, c) = cost(counts, store.claim(&id, &fp, HOUR)).await;
    let Claim::Acquired(token) = claim.unwrap() else {
        panic!("first claim")
    };
    assert_eq!(c, ONE, "claim that acquires");
    let (done, c) = cost(counts, store.complete(&id, token, body.clone(), HOUR)).await;
    done.unwrap();
    assert_eq!(c, ONE, "complete");

    // A replay (and a 422: same key, other request) is the claim alone, and reads only.
    let before = version(direct, &id).await;
    let (claim, c) = cost(counts, store.claim(&id, &fp, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::Completed(r) if r.response == body));
    assert_eq!(c, ONE, "claim that replays");
    let (claim, c) = cost(counts, store.claim(&id, &other_fp, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::Completed(r) if r.fingerprint == fp));
    assert_eq!(c, ONE, "claim with another fingerprint");
    assert_eq!(
        version(direct, &id).await,
        before,
        "a replay wrote a new version of the record"
    );

    // A retry while in flight (409) is the claim alone too, and reads only.
    let id = unique_id("in-flight");
    let Claim::Acquired(token) = store.claim(&id, &fp, HOUR).await.unwrap() else {
        panic!("claim")
    };
    let before = version(direct, &id).await;
    let (claim, c) = cost(counts, store.claim(&id, &fp, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::InFlight { .. }));
    assert_eq!(c, ONE, "claim that finds the record in flight");
    assert_eq!(
        version(direct, &id).await,
        before,
        "a claim that found the record in flight wrote a new version of it"
    );

    // Renew, release, check, and a guarded write that fails.
    let (done, c) = cost(counts, store.renew(&id, token, HOUR)).await;
    done.unwrap();
    assert_eq!(c, ONE, "renew");
    let (done, c) = cost(counts, store.release(&id, token)).await;
    done.unwrap();
    assert_eq!(c, ONE, "release");
    let (done, c) = cost(counts, store.complete(&id, token, body.clone(), HOUR)).await;
    assert!(done.is_err());
    assert_eq!(c, ONE, "complete that loses the lease");
    let (done, c) = cost(counts, store.check()).await;
    done.unwrap();
    assert_eq!(c, ONE, "check");
    let (done, c) = cost(counts, store.delete_expired(1000)).await;
    done.unwrap();
    assert_eq!(c, ONE, "delete_expired");

    // A claim that takes over an expired record: still one statement.
    let id = unique_id("expired");
    let Claim::Acquired(_) = store
        .claim(&id, &fp, Duration::from_millis(50))
        .await
        .unwrap()
    else {
        panic!("claim")
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (claim, c) = cost(counts, store.claim(&id, &fp, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::Acquired(_)));
    assert_eq!(c, ONE, "claim that takes over an expired record");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_is_one_statement() {
    let options = common::connect_options();
    let counts = Arc::new(Counts::default());
    let port = start_relay(
        (options.get_host().to_owned(), options.get_port()),
        Arc::clone(&counts),
    )
    .await;
    // Make sure the server is reachable directly first, for a clear message if it is not.
    let direct = common::fresh_store().await;

    // Connecting costs one statement more, once per store: the check that the session
    // settings (isolation, statement and lock timeouts) took effect.
    let (store, c) = cost(&counts, relayed(direct.table(), port, false, false)).await;
    assert_eq!(c.statements, 1, "connecting: the settings check");
    assert_one_statement_each(&counts, &store, &direct).await;
    store.pool().close().await;

    // With `test_before_acquire` (the default), idle connections are pinged before use too:
    // still one statement, one more round trip.
    let store = relayed(direct.table(), port, true, false).await;
    let fp = Fingerprint::from_bytes([1; Fingerprint::LEN]);
    let id = unique_id("default-pool");
    store.claim(&id, &fp, HOUR).await.unwrap(); // prepares the claim
    let (claim, c) = cost(&counts, store.claim(&id, &fp, HOUR)).await;
    assert!(matches!(claim.unwrap(), Claim::InFlight { .. }));
    assert_eq!(
        c,
        Snapshot {
            statements: 1,
            parses: 0,
            round_trips: 3
        },
        "claim with test_before_acquire"
    );
    store.pool().close().await;

    // Transaction pooling: every operation is one simple-protocol message (its settings and
    // its statement), nothing prepared, no settings check on connecting.
    let (store, c) = cost(&counts, relayed(direct.table(), port, false, true)).await;
    assert_eq!(c.statements, 0, "connecting with transaction pooling");
    assert_one_statement_each(&counts, &store, &direct).await;
    store.pool().close().await;

    common::drop_table(&direct).await;
}

/// Concurrent replays of one key do not queue on its row: a replay is answered while
/// another transaction holds the row locked (the previous claim statement updated the row,
/// so it had to wait for that lock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replays_do_not_wait_for_the_row_lock() {
    for transaction_pooling in [false, true] {
        let direct = common::fresh_store().await;
        let store = PostgresStore::builder()
            .table(direct.table())
            .transaction_pooling(transaction_pooling)
            .operation_timeout(Duration::from_secs(10))
            .connect_with(common::connect_options())
            .await
            .unwrap();
        let fp = Fingerprint::from_bytes([1; Fingerprint::LEN]);
        let (done, live) = (unique_id("locked-done"), unique_id("locked-live"));
        let Claim::Acquired(token) = store.claim(&done, &fp, HOUR).await.unwrap() else {
            panic!("claim")
        };
        store
            .complete(&done, token, Bytes::from_static(b"kept"), HOUR)
            .await
            .unwrap();
        store.claim(&live, &fp, HOUR).await.unwrap();

        let mut blocker = direct.pool().begin().await.unwrap();
        sqlx::query(&format!(
            "SELECT 1 FROM \"{}\" WHERE id = ANY($1) FOR UPDATE",
            direct.table()
        ))
        .bind(vec![done.as_bytes().to_vec(), live.as_bytes().to_vec()])
        .execute(&mut *blocker)
        .await
        .unwrap();
        let started = Instant::now();
        for _ in 0..10 {
            let replay = store.claim(&done, &fp, HOUR).await.unwrap();
            assert!(matches!(replay, Claim::Completed(r) if &r.response[..] == b"kept"));
            let in_flight = store.claim(&live, &fp, HOUR).await.unwrap();
            assert!(matches!(in_flight, Claim::InFlight { .. }));
        }
        let took = started.elapsed();
        blocker.rollback().await.unwrap();
        println!(
            "transaction pooling {transaction_pooling}: 20 claims under a held row lock in {took:?}"
        );
        assert!(
            took < Duration::from_secs(2),
            "replays waited for the row lock: {took:?}"
        );
        store.pool().close().await;
        common::drop_table(&direct).await;
    }
}
