//! A SQLite deployments database of a scenario's own: a file under the run directory that
//! every instance of the scenario opens (as a SQLite deployment on one machine does), deleted
//! with its `-wal` and `-shm` files afterwards.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context as _;
use sqlx::{Connection as _, SqliteConnection, sqlite::SqliteConnectOptions};

/// The file; removed when dropped.
#[derive(Debug)]
pub(crate) struct SqliteFile {
    path: PathBuf,
}

impl SqliteFile {
    /// A path for `name` under `dir` (the backends create the file when they first open it).
    pub(crate) fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(format!("{name}-{:08x}.db", fastrand::u32(..))),
        }
    }

    /// Its URL, for the backends.
    pub(crate) fn url(&self) -> String {
        format!("sqlite://{}", self.path.display())
    }

    /// The inode of its shared-memory index (`-shm`), where SQLite's WAL locks live (byte
    /// 120: the write lock), as `/proc/locks` names it.
    pub(crate) fn shm_inode(&self) -> anyhow::Result<u64> {
        let shm = self.sidecar("-shm");
        Ok(std::fs::metadata(&shm)
            .with_context(|| format!("stat {}", shm.display()))?
            .ino())
    }

    /// `(idempotency_key, id)` of every deployment (read-only, beside running instances:
    /// WAL lets a reader in while they write).
    pub(crate) async fn rows(&self) -> anyhow::Result<Vec<(Option<String>, String)>> {
        let options = SqliteConnectOptions::new()
            .filename(&self.path)
            .read_only(true)
            .busy_timeout(Duration::from_secs(5));
        let mut connection = SqliteConnection::connect_with(&options)
            .await
            .with_context(|| format!("open {}", self.path.display()))?;
        let rows = sqlx::query_as("SELECT idempotency_key, id FROM deployments ORDER BY seq")
            .fetch_all(&mut connection)
            .await
            .context("read deployments")?;
        connection.close().await.ok();
        Ok(rows)
    }

    fn sidecar(&self, suffix: &str) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(suffix);
        PathBuf::from(name)
    }
}

impl Drop for SqliteFile {
    fn drop(&mut self) {
        for path in [
            self.path.clone(),
            self.sidecar("-wal"),
            self.sidecar("-shm"),
        ] {
            let _ = std::fs::remove_file(path);
        }
    }
}
