//! Transactional mode on SQLite: the HTTP-level suite of `tower-idempotency-testkit` (a real
//! server whose handler writes through the lent transaction) on a database file, plus what is
//! SQLite's own: a write lock held elsewhere past `busy_timeout` is 503, never 500.

mod common;

use std::{sync::Arc, time::Duration};

use sqlx::{SqliteConnection, SqlitePool};
use tower_idempotency_sqlite::SqliteTransactionalStore;
use tower_idempotency_testkit::{
    assert_problem,
    suite::ORDER,
    transactional::{BoxFuture, EffectsDb, TxServer, tx_layer},
    unique,
};

/// One database file per test, with an `effects` table beside the records.
struct Sqlite {
    store: SqliteTransactionalStore,
    pool: SqlitePool,
    _db: common::TempDb,
}

impl Sqlite {
    async fn new() -> Arc<Self> {
        let (pool, db) = common::temp_pool().await;
        Self::on(pool, db).await
    }

    async fn on(pool: SqlitePool, db: common::TempDb) -> Arc<Self> {
        let store = SqliteTransactionalStore::new(pool.clone());
        store.migrate().await.expect("create the records table");
        sqlx::query("CREATE TABLE IF NOT EXISTS effects (tag TEXT NOT NULL)")
            .execute(&pool)
            .await
            .expect("create the effects table");
        Arc::new(Self {
            store,
            pool,
            _db: db,
        })
    }
}

impl EffectsDb for Sqlite {
    type Store = SqliteTransactionalStore;

    fn store(&self) -> SqliteTransactionalStore {
        self.store.clone()
    }

    fn write<'a>(
        &'a self,
        connection: &'a mut SqliteConnection,
        tag: &'a str,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            sqlx::query("INSERT INTO effects (tag) VALUES (?)")
                .bind(tag)
                .execute(connection)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
    }

    fn committed<'a>(&'a self, tag: &'a str) -> BoxFuture<'a, usize> {
        Box::pin(async move {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM effects WHERE tag = ?")
                .bind(tag)
                .fetch_one(&self.pool)
                .await
                .expect("count effects");
            usize::try_from(n).expect("a count")
        })
    }
}

tower_idempotency_testkit::transactional_suite!(Sqlite::new());

/// Another connection holding the write lock longer than `busy_timeout` makes the claim
/// fail with SQLITE_BUSY: 503 `store-unavailable` + `Retry-After`, nothing executed; once the
/// lock is gone the request runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_lock_held_elsewhere_is_503_not_500() {
    let (_, dir) = common::temp_pool().await;
    let options = tower_idempotency_sqlite::connect_options(&dir.path)
        .busy_timeout(Duration::from_millis(200));
    let pool = tower_idempotency_sqlite::pool_options()
        .connect_with(options)
        .await
        .unwrap();
    let db = Sqlite::on(pool.clone(), dir).await;
    let server = TxServer::start(db.clone(), tx_layer(db.store())).await;
    let (user, key, tag) = (unique("alice"), unique("k"), unique("effect"));

    let mut holder = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query("INSERT INTO effects (tag) VALUES ('held')")
        .execute(&mut *holder)
        .await
        .unwrap();
    let busy = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert!(busy.headers().contains_key("retry-after"));
    assert_problem(busy, 503, "store-unavailable").await;
    assert_eq!(server.executions(), 0, "nothing ran without the lock");
    holder.rollback().await.unwrap();

    let created = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert_eq!(created.status(), 201);
    assert_eq!(db.committed(&tag).await, 1);
}

/// Records are in the file: a new store on a reopened pool replays them.
#[tokio::test]
async fn records_survive_reopening_the_database() {
    let (pool, dir) = common::temp_pool().await;
    let path = dir.path.clone();
    let db = Sqlite::on(pool.clone(), dir).await;
    let server = TxServer::start(db.clone(), tx_layer(db.store())).await;
    let (user, key, tag) = (unique("alice"), unique("k"), unique("effect"));
    let first = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert_eq!(first.status(), 201);
    let body = first.bytes().await.unwrap();
    drop(server);
    pool.close().await;

    let reopened = tower_idempotency_sqlite::pool_options()
        .connect_with(tower_idempotency_sqlite::connect_options(&path))
        .await
        .unwrap();
    let store = SqliteTransactionalStore::new(reopened.clone());
    let again = Arc::new(Sqlite {
        store,
        pool: reopened,
        _db: common::TempDb::keep(path),
    });
    let server = TxServer::start(again.clone(), tx_layer(again.store())).await;
    let retry = server.post(&user, &key, &tag, ORDER).send().await.unwrap();
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), body);
    assert_eq!(server.executions(), 0);
    assert_eq!(again.committed(&tag).await, 1);
}
