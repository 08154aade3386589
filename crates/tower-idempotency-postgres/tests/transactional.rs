//! Transactional mode on PostgreSQL: the HTTP-level suite of `tower-idempotency-testkit`
//! (a real server whose handler writes through the lent transaction), and the commit
//! failures only a real server shows: a commit the server refuses (503 `transaction-failed`,
//! nothing kept) and a connection that breaks while `COMMIT` runs (503 `outcome-unknown`; the
//! retry finds the commit).

mod common;

use std::{sync::Arc, time::Duration};

use sqlx::{PgConnection, PgPool, postgres::PgPoolOptions};
use tower_idempotency_postgres::PostgresTransactionalStore;
use tower_idempotency_testkit::{
    Relay, SIGNAL_TIMEOUT, assert_problem,
    suite::ORDER,
    transactional::{BoxFuture, EffectsDb, TxServer, tx_layer},
    unique,
};

/// A records table and an effects table of the test's own. Effects tagged `fail-at-commit…`
/// are refused by a deferred trigger when their transaction commits; `slow-commit…` ones make
/// `COMMIT` sleep for a while first.
struct Postgres {
    store: PostgresTransactionalStore,
    pool: PgPool,
    effects: String,
}

impl Postgres {
    async fn new() -> Arc<Self> {
        Self::through(common::connect_options()).await
    }

    async fn through(options: sqlx::postgres::PgConnectOptions) -> Arc<Self> {
        // Creates the tables (and drops stale ones of earlier runs).
        let records = common::store_on(&common::unique_table()).await;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .expect("connect to PostgreSQL");
        let store = PostgresTransactionalStore::with_table(pool.clone(), records.table()).unwrap();
        let effects = common::unique_table();
        let setup = format!(
            "CREATE TABLE \"{effects}\" (tag TEXT NOT NULL);
             CREATE FUNCTION \"{effects}_at_commit\"() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 IF NEW.tag LIKE 'fail-at-commit%' THEN RAISE EXCEPTION 'refused at commit'; END IF;
                 IF NEW.tag LIKE 'slow-commit%' THEN PERFORM pg_sleep(3); END IF;
                 RETURN NULL;
             END $$;
             CREATE CONSTRAINT TRIGGER at_commit AFTER INSERT ON \"{effects}\"
                 DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
                 EXECUTE FUNCTION \"{effects}_at_commit\"();"
        );
        sqlx::raw_sql(&setup)
            .execute(records.pool())
            .await
            .expect("create the effects table");
        Arc::new(Self {
            store,
            pool: records.pool().clone(),
            effects,
        })
    }
}

impl EffectsDb for Postgres {
    type Store = PostgresTransactionalStore;

    fn store(&self) -> PostgresTransactionalStore {
        self.store.clone()
    }

    fn write<'a>(
        &'a self,
        connection: &'a mut PgConnection,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            sqlx::query(&format!(
                "INSERT INTO \"{}\" (tag) VALUES ($1)",
                self.effects
            ))
            .bind(tag)
            .execute(connection)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
        })
    }

    fn committed<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let sql = format!("SELECT count(*) FROM \"{}\" WHERE tag = $1", self.effects);
            let n: i64 = sqlx::query_scalar(&sql)
                .bind(tag)
                .fetch_one(&self.pool)
                .await
                .expect("count effects");
            usize::try_from(n).expect("a count")
        })
    }
}

tower_idempotency_testkit::transactional_suite!(Postgres::new());

/// A commit the server refuses (here a deferred trigger; in production a deferred constraint,
/// a serialization failure) is never answered with the handler's response: 503
/// `transaction-failed` + `Retry-After`, nothing kept, and the retry executes afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_commit_is_503_and_keeps_nothing() {
    let db = Postgres::new().await;
    let server = TxServer::start(db.clone(), tx_layer(db.store())).await;
    let (user, key) = (unique("alice"), unique("k"));
    let refused_tag = unique("fail-at-commit");
    let refused = server
        .post(&user, &key, &refused_tag, ORDER)
        .send()
        .await
        .unwrap();
    assert!(refused.headers().contains_key("retry-after"));
    assert_problem(refused, 503, "transaction-failed").await;
    assert_eq!(db.committed(&refused_tag).await, 0);

    let tag = unique("effect");
    let retry = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert!(!retry.headers().contains_key("idempotent-replayed"));
    assert_eq!(db.committed(&tag).await, 1);
    assert_eq!(server.executions(), 2);
}

/// The connection breaks while `COMMIT` runs on the server (which goes on to commit): the
/// client gets 503 `outcome-unknown`, and its retry replays the committed response, with no
/// second execution.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_during_commit_is_outcome_unknown_and_the_retry_replays() {
    let relay = Relay::start(common::server_addr()).await;
    let app = common::unique_app("commit");
    let options = common::through(relay.port()).application_name(&app);
    let db = Postgres::through(options).await;
    let server = TxServer::start(db.clone(), tx_layer(db.store())).await;
    let (user, key, tag) = (unique("alice"), unique("k"), unique("slow-commit"));
    let pending = tokio::spawn(server.post(&user, &key, &tag, ORDER).send());

    // Wait for the signal: the request's backend sleeps inside its COMMIT.
    let admin = common::admin_pool().await;
    let deadline = tokio::time::Instant::now() + SIGNAL_TIMEOUT;
    loop {
        let committing: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND wait_event = 'PgSleep' AND query ILIKE 'COMMIT%'",
        )
        .bind(&app)
        .fetch_one(&admin)
        .await
        .unwrap();
        if committing == 1 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "COMMIT never started"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    relay.reset_all();
    let unknown = pending.await.unwrap().unwrap();
    assert!(unknown.headers().contains_key("retry-after"));
    assert_problem(unknown, 503, "outcome-unknown").await;

    // The server finishes the commit it was running; the retry finds it.
    let deadline = tokio::time::Instant::now() + SIGNAL_TIMEOUT;
    while db.committed(&tag).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the commit never landed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let retry = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert_eq!(retry.status(), 201);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(server.executions(), 1);
    assert_eq!(db.committed(&tag).await, 1);
}

/// The contract's core guarantee, with the lock out of the way: a record committed for the
/// id by someone else while a transaction holds the claim (here the separate-mode store on the
/// same table, which takes no advisory lock) wins, and the transaction's commit fails with
/// `Conflict`, its writes rolled back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_commits_for_one_id_one_wins_and_the_other_rolls_back() {
    use tower_idempotency::{
        Fingerprint, IdempotencyKey,
        store::{Claim, IdempotencyStore, RecordId},
        transactional::{Begun, CommitError, NewRecord, TransactionalStore},
    };
    let db = Postgres::new().await;
    let store = db.store();
    let key = IdempotencyKey::parse(unique("k").as_bytes()).unwrap();
    let id = RecordId::new(b"alice", &key);
    let fingerprint = Fingerprint::from_bytes([7; Fingerprint::LEN]);
    let tag = unique("effect");
    let Begun::Claimed(mut transaction) = store.claim(&id, Duration::from_secs(30)).await.unwrap()
    else {
        panic!("a fresh id is claimed");
    };
    db.write(&mut transaction, &tag).await.unwrap();

    let separate = tower_idempotency_postgres::PostgresStore::from_pool(db.pool.clone())
        .with_table(store.table())
        .unwrap();
    let Claim::Acquired(token) = separate
        .claim(&id, &fingerprint, Duration::from_secs(30))
        .await
        .unwrap()
    else {
        panic!("the separate store sees no record: the claim is only a lock");
    };
    separate
        .complete(
            &id,
            token,
            bytes::Bytes::from_static(b"theirs"),
            Duration::from_secs(60),
        )
        .await
        .unwrap();

    let record = NewRecord {
        id: &id,
        fingerprint: &fingerprint,
        response: bytes::Bytes::from_static(b"ours"),
        ttl: Duration::from_secs(60),
    };
    let refused = store.commit(transaction, Some(record)).await.unwrap_err();
    assert!(matches!(refused, CommitError::Conflict), "{refused}");
    assert_eq!(
        db.committed(&tag).await,
        0,
        "the loser's writes rolled back"
    );
    let kept = store
        .lookup(&id)
        .await
        .unwrap()
        .expect("the winner's record");
    assert_eq!(&kept.response[..], b"theirs");
}
