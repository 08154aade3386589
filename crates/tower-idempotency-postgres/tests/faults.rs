//! Real faults under real traffic: connections that go silent (the testkit [`Relay`]),
//! backends terminated by the server, claims whose answer is lost, statements the store gave
//! up on, `migrate()` while claims run. Every test asserts both halves of the promise: no
//! record is ever acquired twice (or no handler runs twice), and the store recovers within a
//! stated bound, measured and printed. Needs a real PostgreSQL server (see `tests/common`).

mod common;

use std::{
    collections::HashMap,
    future::Future,
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
use tower_idempotency_postgres::{
    PostgresStore,
    sqlx::{self, Row, postgres::PgPool},
};
use tower_idempotency_testkit::{Relay, TestServer, headers, layer, unique};

const HOUR: Duration = Duration::from_secs(3600);
const FP: Fingerprint = Fingerprint::from_bytes([9; Fingerprint::LEN]);
/// The operation timeout of the stores under fault.
const T: Duration = Duration::from_secs(1);

/// One store operation of the traffic.
#[derive(Debug, Clone)]
struct Op {
    started: Instant,
    finished: Instant,
    error: Option<String>,
}

/// Claims (and completes) from several workers until stopped, recording every operation
/// and every `Acquired` per record.
#[derive(Default)]
struct Traffic {
    ops: Mutex<Vec<Op>>,
    acquired: Mutex<HashMap<RecordId, usize>>,
    stop: AtomicBool,
}

impl Traffic {
    fn record<T>(&self, started: Instant, result: &Result<T, impl std::fmt::Display>) {
        self.ops.lock().unwrap().push(Op {
            started,
            finished: Instant::now(),
            error: result.as_ref().err().map(|e| e.to_string()),
        });
    }

    /// Half the claims are of fresh ids (then completed), half of a few hot ids every worker
    /// claims (completed by whoever acquires them, replayed by everyone after).
    async fn worker(self: Arc<Self>, store: PostgresStore, hot: Arc<[RecordId]>, n: usize) {
        let mut i = n;
        while !self.stop.load(Ordering::SeqCst) {
            i += 1;
            let id = if i.is_multiple_of(2) {
                unique_id("fresh")
            } else {
                hot[i % hot.len()]
            };
            let started = Instant::now();
            let claim = store.claim(&id, &FP, HOUR).await;
            self.record(started, &claim);
            if let Ok(Claim::Acquired(token)) = claim {
                *self.acquired.lock().unwrap().entry(id).or_default() += 1;
                let started = Instant::now();
                let done = store
                    .complete(&id, token, Bytes::from_static(b"done"), HOUR)
                    .await;
                self.record(started, &done);
            }
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    }
}

/// What the traffic saw around one fault.
#[derive(Debug)]
struct Report {
    ops: usize,
    failed: usize,
    /// From the fault to the end of the first successful operation started after it.
    recovery: Duration,
    /// Operations started later than `bound` after the fault that failed anyway.
    late_failures: Vec<Op>,
    acquired_twice: Vec<(RecordId, usize)>,
    /// The longest any operation took.
    slowest: Duration,
}

/// Runs `workers` workers of traffic on `store`, injects `fault` after `before`, keeps the
/// traffic going for `after` more, and reports. `fault` returns the instant of the fault.
async fn around_fault<F: Future<Output = Instant>>(
    store: &PostgresStore,
    workers: usize,
    before: Duration,
    after: Duration,
    bound: Duration,
    fault: F,
) -> Report {
    let traffic = Arc::new(Traffic::default());
    let hot: Arc<[RecordId]> = (0..3).map(|_| unique_id("hot")).collect();
    let tasks: Vec<_> = (0..workers)
        .map(|n| tokio::spawn(Arc::clone(&traffic).worker(store.clone(), Arc::clone(&hot), n)))
        .collect();
    tokio::time::sleep(before).await;
    let at = fault.await;
    tokio::time::sleep(after).await;
    traffic.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.unwrap();
    }
    let ops = traffic.ops.lock().unwrap().clone();
    let recovery = ops
        .iter()
        .filter(|op| op.started >= at && op.error.is_none())
        .map(|op| op.finished - at)
        .min()
        .unwrap_or_else(|| panic!("no operation started after the fault succeeded: {ops:#?}"));
    let late_failures = ops
        .iter()
        .filter(|op| op.started >= at + bound && op.error.is_some())
        .cloned()
        .collect();
    let acquired_twice = traffic
        .acquired
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, n)| (*id, *n))
        .collect();
    Report {
        slowest: ops
            .iter()
            .map(|op| op.finished - op.started)
            .max()
            .unwrap_or_default(),
        ops: ops.len(),
        failed: ops.iter().filter(|op| op.error.is_some()).count(),
        recovery,
        late_failures,
        acquired_twice,
    }
}

#[track_caller]
fn assert_recovered(what: &str, report: &Report, bound: Duration) {
    println!(
        "{what}: {} operations, {} failed, recovered after {:?} (bound {bound:?}), {} acquired \
         twice",
        report.ops,
        report.failed,
        report.recovery,
        report.acquired_twice.len()
    );
    assert!(
        report.acquired_twice.is_empty(),
        "{what}: records acquired more than once: {:?}",
        report.acquired_twice
    );
    assert!(
        report.recovery <= bound,
        "{what}: recovered only after {:?}",
        report.recovery
    );
    assert!(
        report.late_failures.is_empty(),
        "{what}: operations started {bound:?} after the fault still failed: {:#?}",
        report.late_failures
    );
}

/// A store through `relay` (or directly), `T` per operation, up to four connections, named
/// `app` in `pg_stat_activity`.
async fn store_via(table: &str, relay: Option<&Relay>, app: &str) -> PostgresStore {
    let options = match relay {
        Some(relay) => common::through(relay.port()),
        None => common::connect_options(),
    };
    PostgresStore::builder()
        .table(table)
        .operation_timeout(T)
        .max_connections(4)
        .connect_with(options.application_name(app))
        .await
        .expect("connect")
}

/// Silences `relay` while `waiters` statements of `app` are in flight: a transaction of the
/// test's own holds `table` in SHARE mode (claims and completions queue behind it), the
/// path goes dark, then the lock is released (the queued statements go ahead on the server;
/// their answers are lost).
async fn silence_mid_statement(
    admin: &PgPool,
    table: &str,
    app: &str,
    relay: &Relay,
    waiters: i64,
) -> Instant {
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query(&format!("LOCK TABLE \"{table}\" IN SHARE MODE"))
        .execute(&mut *blocker)
        .await
        .unwrap();
    common::until_lock_waiters(admin, app, Duration::from_secs(10), |n| n >= waiters)
        .await
        .expect("the store's statements queue behind the table lock");
    relay.silence_existing();
    let at = Instant::now();
    blocker.rollback().await.unwrap();
    at
}

/// Connections that go silent (no FIN, no RST: a failover, an expired NAT entry) while the
/// store serves traffic, idle ones and ones with a statement in flight. Operations on them
/// time out; their connections are closed, not returned (sqlx would ping them before reuse,
/// with no limit, holding the pool's permits for good: every later operation would fail with
/// "pool timed out"); idle ones opened before the failure are discarded. Traffic recovers
/// within about twice the operation timeout, like a new store through the same path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silenced_connections_recover_within_twice_the_operation_timeout() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let relay = Relay::start(common::server_addr()).await;
    let app = common::unique_app("silence");
    let store = store_via(direct.table(), Some(&relay), &app).await;
    let bound = 2 * T;
    // Every connection the pool has when the path goes dark goes silent for good.
    for (round, mid_statement) in [(1, true), (2, false), (3, true)] {
        let what = if mid_statement {
            Box::pin(silence_mid_statement(
                &admin,
                direct.table(),
                &app,
                &relay,
                4,
            )) as std::pin::Pin<Box<dyn Future<Output = Instant> + Send + '_>>
        } else {
            Box::pin(async {
                relay.silence_existing();
                Instant::now()
            })
        };
        let report = around_fault(&store, 4, Duration::from_millis(500), 3 * T, bound, what).await;
        assert_recovered(
            &format!(
                "silence, round {round} ({})",
                if mid_statement {
                    "every connection mid-statement"
                } else {
                    "connections mostly idle"
                }
            ),
            &report,
            bound,
        );
    }
    // The control: a new store through the same path works at once.
    let started = Instant::now();
    let fresh = store_via(direct.table(), Some(&relay), "control").await;
    fresh.check().await.unwrap();
    println!("a new store through the relay: {:?}", started.elapsed());
    common::drop_table(&direct).await;
}

/// The server terminates every backend of the store (`pg_terminate_backend`: a restart, a
/// failover, an administrator) while it serves traffic, three times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backends_are_replaced_at_once() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let app = common::unique_app("terminate");
    let store = store_via(direct.table(), None, &app).await;
    let bound = T;
    for round in 1..=3 {
        let report = around_fault(&store, 4, Duration::from_millis(500), 2 * T, bound, async {
            let at = Instant::now();
            let terminated: i64 = sqlx::query(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                     FROM pg_stat_activity WHERE application_name = $1",
            )
            .bind(&app)
            .fetch_one(&admin)
            .await
            .unwrap()
            .get(0);
            assert!(terminated > 0, "the store has connections to terminate");
            at
        })
        .await;
        assert_recovered(
            &format!("pg_terminate_backend, round {round}"),
            &report,
            bound,
        );
    }
    common::drop_table(&direct).await;
}

/// The same through the layer: requests with keys, each retried by its client until it gets
/// an answer, while the store's connections go silent twice. Every key's handler runs
/// exactly once, and every answer (and a final replay) carries that one execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_the_layer_each_key_executes_once_across_silenced_connections() {
    let direct = common::fresh_store().await;
    let relay = Relay::start(common::server_addr()).await;
    let admin = common::admin_pool().await;
    let app = common::unique_app("layer-silence");
    let store = store_via(direct.table(), Some(&relay), &app).await;
    let server = Arc::new(TestServer::start(layer(store).lease(Duration::from_secs(120))).await);
    let user = unique("user");
    let answers: Arc<Mutex<HashMap<String, String>>> = Arc::default();
    let silenced_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let first_success_after: Arc<Mutex<Option<Duration>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (server, answers, user, stop) = (
                Arc::clone(&server),
                Arc::clone(&answers),
                user.clone(),
                Arc::clone(&stop),
            );
            let (silenced_at, first) = (Arc::clone(&silenced_at), Arc::clone(&first_success_after));
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let key = unique("key");
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        let sent = Instant::now();
                        let response = server
                            .post(&user, &key, r#"{"sku":"A-1"}"#)
                            .send()
                            .await
                            .expect("the server answers");
                        let status = response.status().as_u16();
                        if status == 201 {
                            let execution = response.headers()[headers::EXECUTION]
                                .to_str()
                                .unwrap()
                                .to_owned();
                            let earlier = answers.lock().unwrap().insert(key.clone(), execution);
                            assert!(earlier.is_none(), "key {key} answered twice");
                            if let Some(at) = *silenced_at.lock().unwrap()
                                && sent >= at
                            {
                                let took = Instant::now() - at;
                                let mut first = first.lock().unwrap();
                                if first.is_none_or(|f| took < f) {
                                    *first = Some(took);
                                }
                            }
                            break;
                        }
                        assert!(
                            status == 503 || status == 409,
                            "unexpected status {status} for key {key}"
                        );
                        assert!(Instant::now() < deadline, "key {key} never got an answer");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
        })
        .collect();
    // Silence the store's connections twice while keys are in flight: once while they
    // are mostly idle, once with statements (claims, completions of handlers that ran) in
    // flight on them.
    // Each round starts once traffic flows (recovered from the round before): more keys
    // answered since the last look.
    let answered = || answers.lock().unwrap().len();
    let flowing = |since: usize| async move {
        let deadline = Instant::now() + 10 * T;
        while answered() < since + 20 {
            assert!(
                Instant::now() < deadline,
                "traffic did not flow again within {:?}",
                10 * T
            );
            tokio::task::yield_now().await;
            tokio::time::sleep(T / 100).await;
        }
    };
    for mid_statement in [false, true] {
        flowing(answered()).await;
        *first_success_after.lock().unwrap() = None;
        let at = if mid_statement {
            silence_mid_statement(&admin, direct.table(), &app, &relay, 2).await
        } else {
            relay.silence_existing();
            Instant::now()
        };
        *silenced_at.lock().unwrap() = Some(at);
    }
    flowing(answered()).await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.unwrap();
    }
    // A replay of every key answers its one execution.
    let answers = answers.lock().unwrap().clone();
    for (key, execution) in &answers {
        let replay = server
            .post(&user, key, r#"{"sku":"A-1"}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(replay.status(), 201, "replay of {key}");
        assert_eq!(replay.headers()["idempotent-replayed"], "true");
        assert_eq!(
            replay.headers()[headers::EXECUTION].to_str().unwrap(),
            execution,
            "key {key} answered from another execution"
        );
    }
    let recovery = first_success_after
        .lock()
        .unwrap()
        .expect("a request sent after the last silence succeeded");
    println!(
        "layer over silenced connections: {} keys, {} handler executions, first success of a \
         request sent after the last silence {recovery:?}",
        answers.len(),
        server.executions()
    );
    assert_eq!(
        server.executions(),
        answers.len(),
        "some key's handler ran more than once"
    );
    assert!(recovery <= 2 * T, "recovery took {recovery:?}");
    common::drop_table(&direct).await;
}

/// A store on `table` directly, named `app`, with the given timeouts.
async fn store_with(
    table: &str,
    app: &str,
    operation: Duration,
    lock: Option<Duration>,
) -> PostgresStore {
    let mut builder = PostgresStore::builder()
        .table(table)
        .operation_timeout(operation)
        .max_connections(4);
    if let Some(lock) = lock {
        builder = builder.lock_timeout(lock);
    }
    builder
        .connect_with(common::connect_options().application_name(app))
        .await
        .expect("connect")
}

/// An expired record of `id`, and a transaction of the test's own holding its row lock.
async fn locked_expired_record(
    direct: &PostgresStore,
    admin: &PgPool,
    id: &RecordId,
) -> sqlx::Transaction<'static, sqlx::Postgres> {
    assert!(matches!(
        direct
            .claim(id, &FP, Duration::from_millis(50))
            .await
            .unwrap(),
        Claim::Acquired(_)
    ));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut blocker = admin.begin().await.unwrap();
    sqlx::query(&format!(
        "SELECT 1 FROM \"{}\" WHERE id = $1 FOR UPDATE",
        direct.table()
    ))
    .bind(&id.as_bytes()[..])
    .execute(&mut *blocker)
    .await
    .unwrap();
    blocker
}

/// The token stored for `id`.
async fn stored_token(admin: &PgPool, table: &str, id: &RecordId) -> Option<i64> {
    sqlx::query(&format!("SELECT token FROM \"{table}\" WHERE id = $1"))
        .bind(&id.as_bytes()[..])
        .fetch_optional(admin)
        .await
        .unwrap()
        .map(|row| row.get(0))
}

/// A claim that reached the server and was applied, but whose answer never came back (the
/// connection went silent while the statement waited for a lock): the caller got
/// `Unavailable` and runs nothing. The store frees that claim in the background, guarded by
/// its token, so the key is not blocked for a whole lease by nobody.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_whose_answer_was_lost_is_released_in_the_background() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let relay = Relay::start(common::server_addr()).await;
    let app = common::unique_app("lost-answer");
    let store = PostgresStore::builder()
        .table(direct.table())
        .operation_timeout(T)
        .connect_with(common::through(relay.port()).application_name(&app))
        .await
        .unwrap();
    let id = unique_id("lost-answer");
    let blocker = locked_expired_record(&direct, &admin, &id).await;
    let before = stored_token(&admin, direct.table(), &id).await;

    let claim = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&id, &FP, HOUR).await }
    });
    common::until_lock_waiters(&admin, &app, Duration::from_secs(10), |n| n == 1)
        .await
        .expect("the claim waits for the row lock");
    // The answer will be lost: the connection goes silent, then the claim goes ahead.
    relay.silence_existing();
    blocker.commit().await.unwrap();
    let started = Instant::now();
    let result = claim.await.unwrap();
    assert!(
        matches!(&result, Err(e) if e.kind() == StoreErrorKind::Unavailable),
        "{result:?}"
    );
    // It was applied: the record changed hands (or it was freed already).
    let deadline = Instant::now() + Duration::from_secs(10);
    let freed_after = loop {
        match direct.claim(&id, &FP, HOUR).await.unwrap() {
            Claim::Acquired(_) => break started.elapsed(),
            Claim::InFlight { .. } => {
                assert_ne!(stored_token(&admin, direct.table(), &id).await, before);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "the orphaned claim still blocks the key after 10 s (its lease is an hour)"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    println!("orphaned claim freed {freed_after:?} after its claimer gave up");
    common::drop_table(&direct).await;
}

/// A claim the store gave up on (its operation timed out) does not keep running on the
/// server: the server's lock timeout ends it, so it cannot go on to write a claim nobody
/// owns once the lock it waited for is released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_the_store_gave_up_on_does_not_keep_running() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let app = common::unique_app("abandoned");
    let store = store_with(direct.table(), &app, T, None).await;
    let id = unique_id("abandoned");
    let blocker = locked_expired_record(&direct, &admin, &id).await;
    let before = stored_token(&admin, direct.table(), &id).await;

    let started = Instant::now();
    let claim = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&id, &FP, HOUR).await }
    });
    common::until_lock_waiters(&admin, &app, Duration::from_secs(10), |n| n == 1)
        .await
        .expect("the claim waits for the row lock");
    let ended = common::until_lock_waiters(&admin, &app, 3 * T, |n| n == 0).await;
    let result = claim.await.unwrap();
    let ended = ended.unwrap_or_else(|n| {
        panic!(
            "{n} statement(s) of the store still wait for the lock {:?} later",
            started.elapsed()
        )
    });
    println!(
        "the server ended the store's waiting claim {:?} after it started ({ended:?} after it \
         was seen waiting); the store answered {:?}",
        started.elapsed(),
        result.as_ref().map_err(|e| e.kind())
    );
    assert!(
        matches!(&result, Err(e) if e.kind() == StoreErrorKind::Unavailable),
        "{result:?}"
    );
    // Now the lock is free: nothing is left to go ahead and claim the record.
    blocker.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(stored_token(&admin, direct.table(), &id).await, before);
    assert!(matches!(
        direct.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::Acquired(_)
    ));
    common::drop_table(&direct).await;
}

/// A claim that waited for a lock longer than its lease gets a whole lease from the moment
/// its record is written, not from when its transaction began.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_claim_never_returns_an_expired_lease() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let app = common::unique_app("late");
    let store = store_with(
        direct.table(),
        &app,
        Duration::from_secs(20),
        Some(Duration::from_secs(10)),
    )
    .await;
    let lease = Duration::from_millis(800);
    let id = unique_id("late");
    let blocker = locked_expired_record(&direct, &admin, &id).await;
    let claim = tokio::spawn({
        let store = store.clone();
        async move { store.claim(&id, &FP, lease).await }
    });
    common::until_lock_waiters(&admin, &app, Duration::from_secs(10), |n| n == 1)
        .await
        .expect("the claim waits for the row lock");
    // Hold it up for longer than its lease.
    tokio::time::sleep(lease + Duration::from_millis(400)).await;
    blocker.commit().await.unwrap();
    let claim = claim.await.unwrap().unwrap();
    assert!(matches!(claim, Claim::Acquired(_)), "{claim:?}");
    let left: f64 = sqlx::query(&format!(
        "SELECT extract(epoch FROM expires_at - clock_timestamp())::float8 FROM \"{}\" \
         WHERE id = $1",
        direct.table()
    ))
    .bind(&id.as_bytes()[..])
    .fetch_one(&admin)
    .await
    .unwrap()
    .get(0);
    println!(
        "a claim that waited {:?} for a lock has {left:.3} s of its 0.8 s lease left",
        lease + Duration::from_millis(400)
    );
    assert!(left > 0.4, "the lease has only {left} s left");
    assert!(matches!(
        direct.claim(&id, &FP, HOUR).await.unwrap(),
        Claim::InFlight { .. }
    ));
    common::drop_table(&direct).await;
}

/// `migrate()` at every instance start does not stall live traffic: with the table and its
/// index in place it takes no lock on the table, even while another transaction holds one
/// that its DDL would have to wait for (claims would queue behind that wait). When the index
/// is missing, its DDL waits at most the migration lock timeout, and so do the claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_does_not_stall_claims() {
    let direct = common::fresh_store().await;
    let admin = common::admin_pool().await;
    let store = store_with(
        direct.table(),
        "migrate-traffic",
        Duration::from_secs(5),
        None,
    )
    .await;
    let table = direct.table().to_owned();

    // A long transaction that wrote to the table: it holds ROW EXCLUSIVE, which the
    // SHARE lock of CREATE INDEX waits for.
    let hold = |admin: PgPool, table: String| async move {
        let mut tx = admin.begin().await.unwrap();
        sqlx::query(&format!(
            "INSERT INTO \"{table}\" (id, fingerprint, token, response, expires_at) \
             VALUES ($1, '\\x00', 1, NULL, clock_timestamp() + interval '1 hour')"
        ))
        .bind(&unique_id("writer").as_bytes()[..])
        .execute(&mut *tx)
        .await
        .unwrap();
        tx
    };

    // Every start but the first: everything exists.
    let writer = hold(admin.clone(), table.clone()).await;
    let migrations = async {
        let started = Instant::now();
        for _ in 0..5 {
            store
                .migrate()
                .await
                .expect("migrate with everything in place");
        }
        started.elapsed()
    };
    let report = around_fault(
        &store,
        3,
        Duration::from_millis(200),
        Duration::from_millis(500),
        Duration::ZERO,
        async {
            let at = Instant::now();
            let took = migrations.await;
            println!("5 migrations next to a writing transaction: {took:?}");
            assert!(took < Duration::from_secs(2), "migrations took {took:?}");
            at
        },
    )
    .await;
    let slowest = report.slowest;
    writer.rollback().await.unwrap();
    assert!(report.acquired_twice.is_empty());
    assert_eq!(report.failed, 0, "{report:?}");
    println!("slowest operation next to migrate(): {slowest:?}");

    // The index is missing and a writer holds the table: the DDL gives up after its lock
    // timeout, claims wait at most that long, and a later migrate() creates the index.
    sqlx::query(&format!("DROP INDEX \"{table}_expires_idx\""))
        .execute(&admin)
        .await
        .unwrap();
    let writer = hold(admin.clone(), table.clone()).await;
    let report = around_fault(
        &store,
        3,
        Duration::from_millis(200),
        Duration::from_millis(500),
        Duration::ZERO,
        async {
            let started = Instant::now();
            let result = store.migrate().await;
            println!(
                "migrate() with the index missing, next to a writer: {:?} after {:?}",
                result.as_ref().map_err(|e| e.kind()),
                started.elapsed()
            );
            assert!(
                matches!(&result, Err(e) if e.kind() == StoreErrorKind::Unavailable),
                "{result:?}"
            );
            started
        },
    )
    .await;
    writer.rollback().await.unwrap();
    let slowest = report.slowest;
    println!("slowest operation while migrate() waited for its lock: {slowest:?}");
    assert!(report.acquired_twice.is_empty());
    assert_eq!(report.failed, 0, "{report:?}");
    assert!(
        slowest < Duration::from_millis(2500),
        "claims were held up {slowest:?}"
    );
    store
        .migrate()
        .await
        .expect("migrate once the writer is gone");
    let indexes: i64 = sqlx::query("SELECT count(*) FROM pg_indexes WHERE tablename = $1")
        .bind(&table)
        .fetch_one(&admin)
        .await
        .unwrap()
        .get(0);
    assert_eq!(indexes, 2, "the primary key and the expires_at index");
    common::drop_table(&direct).await;
}
