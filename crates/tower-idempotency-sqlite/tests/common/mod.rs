//! What the tests of both stores share: a fresh database file per test.

#![allow(dead_code, unreachable_pub)]

use std::{path::PathBuf, time::Duration};

use bytes::Bytes;
use sqlx::SqlitePool;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, FencingToken, IdempotencyStore, RecordId, StoreError},
};
use tower_idempotency_sqlite::SqliteStore;

/// A pool on a new database file in a temporary directory, opened as the crate recommends;
/// the directory is removed when the returned guard drops.
pub async fn temp_pool() -> (SqlitePool, TempDb) {
    let dir = std::env::temp_dir().join(format!(
        "tower-idempotency-sqlite-{}-{}",
        std::process::id(),
        tower_idempotency_testkit::unique("db")
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    let path = dir.join("test.db");
    let pool = tower_idempotency_sqlite::pool_options()
        .connect_with(tower_idempotency_sqlite::connect_options(&path))
        .await
        .expect("open a SQLite database");
    (pool, TempDb { dir, path })
}

/// A temporary database directory, removed on drop.
#[derive(Debug)]
pub struct TempDb {
    dir: PathBuf,
    /// The database file.
    pub path: PathBuf,
}

impl TempDb {
    /// A guard over a database that another guard removes: removes nothing itself.
    pub fn keep(path: PathBuf) -> Self {
        Self {
            dir: PathBuf::new(),
            path,
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A [`SqliteStore`] that owns its temporary database, deleted with the store.
#[derive(Debug)]
pub struct TempStore {
    store: SqliteStore,
    _db: TempDb,
}

pub async fn temp_store() -> TempStore {
    let (pool, db) = temp_pool().await;
    let store = SqliteStore::new(pool);
    store.migrate().await.expect("migrate");
    TempStore { store, _db: db }
}

impl IdempotencyStore for TempStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        self.store.claim(id, fingerprint, lease).await
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.store.renew(id, token, lease).await
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.store.complete(id, token, response, ttl).await
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        self.store.release(id, token).await
    }

    async fn check(&self) -> Result<(), StoreError> {
        self.store.check().await
    }
}
