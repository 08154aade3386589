//! The deployments database of a crash-tx run, which is also where the idempotency records
//! live (`IDEMPOTENCY_STORE=database`): a SQLite file both instances open, or a PostgreSQL
//! database both instances reach through latency relays of their own.

use std::{
    collections::HashMap,
    time::{Duration, SystemTime},
};

use anyhow::Context as _;
use sqlx::PgConnection;

use super::evidence::{self, Evidence};
use crate::{
    db::{self, FleetDb, Verification, sqlite::SqliteFile},
    latency::LatencyRelay,
    scenarios::Ctx,
};

/// One-way delay of the relays between the instances and PostgreSQL: a round trip of 10 ms,
/// a database in a nearby region. Each create's dozen round trips then take about 0.1 s,
/// so at any instant a few are open, in every phase.
pub(super) const PG_DELAY: Duration = Duration::from_millis(5);
/// What the statements already on the wire need to reach the server after a freeze.
const SETTLE: Duration = Duration::from_millis(25);

/// Which database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Sqlite,
    Postgres,
}

impl Kind {
    /// Its name in reports.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The database, its relays and an observer connection.
#[derive(Debug)]
pub(super) enum Database {
    Sqlite(SqliteFile),
    Postgres {
        db: FleetDb,
        relays: [LatencyRelay; 2],
        observer: Box<PgConnection>,
    },
}

impl Database {
    /// A fresh one: a file under the run directory, or a database on the shared server.
    pub(super) async fn create(ctx: &Ctx, kind: Kind, scenario: &str) -> anyhow::Result<Self> {
        Ok(match kind {
            Kind::Sqlite => Self::Sqlite(SqliteFile::new(&ctx.run_dir, scenario)),
            Kind::Postgres => {
                let db = FleetDb::create(&ctx.admin_url).await?;
                let server = db::server_addr(&db.url)
                    .context("cannot tell the PostgreSQL server's address from its URL")?;
                let relays = [
                    LatencyRelay::start(server, PG_DELAY).await?,
                    LatencyRelay::start(server, PG_DELAY).await?,
                ];
                let observer = Box::new(db.connect().await?);
                Self::Postgres {
                    db,
                    relays,
                    observer,
                }
            }
        })
    }

    /// The URL the harness itself uses (token minting, migrations): direct.
    pub(super) fn url(&self) -> String {
        match self {
            Self::Sqlite(file) => file.url(),
            Self::Postgres { db, .. } => db.url.clone(),
        }
    }

    /// The URL instance `index` uses: the file, or its relay.
    pub(super) fn url_for(&self, index: usize) -> String {
        match self {
            Self::Sqlite(file) => file.url(),
            Self::Postgres { db, relays, .. } => db::via(&db.url, relays[index].addr()),
        }
    }

    /// What stands between the instances and the database, for the report.
    pub(super) fn describe(&self) -> String {
        match self {
            Self::Sqlite(_) => "one SQLite file (WAL) opened by both instances".to_owned(),
            Self::Postgres { relays, .. } => format!(
                "one PostgreSQL database, each instance through a relay adding {} ms each way",
                relays[0].delay().as_millis()
            ),
        }
    }

    /// The server side of instance `index` (pid `pid`), frozen at `frozen`.
    pub(super) async fn evidence(
        &mut self,
        index: usize,
        pid: u32,
        frozen: SystemTime,
    ) -> Evidence {
        let read = match self {
            Self::Sqlite(file) => file
                .shm_inode()
                .and_then(|inode| evidence::sqlite_write_lock(pid, inode))
                .map(|write_lock| Evidence::Sqlite { write_lock }),
            Self::Postgres {
                relays, observer, ..
            } => {
                let relay = &relays[index];
                tokio::time::sleep(relay.delay() * 2 + SETTLE).await;
                let ports = relay.upstream_ports();
                evidence::postgres_phases(observer, &ports, frozen, relay.delay())
                    .await
                    .map(Evidence::Postgres)
            }
        };
        read.unwrap_or_else(|error| {
            eprintln!("  no server-side evidence of the kill: {error:#}");
            Evidence::None
        })
    }

    /// SQLite: whether `pid` holds the write lock now (false on PostgreSQL, or unreadable).
    pub(super) fn holds_write_lock(&self, pid: u32) -> bool {
        match self {
            Self::Sqlite(file) => file
                .shm_inode()
                .and_then(|inode| evidence::sqlite_write_lock(pid, inode))
                .unwrap_or(false),
            Self::Postgres { .. } => false,
        }
    }

    /// SQLite: a check, for a thread of its own, that `pid` holds the write lock (an
    /// unreadable lock table counts as free).
    pub(super) fn lock_watcher(
        &self,
        pid: u32,
    ) -> anyhow::Result<impl Fn() -> bool + Send + use<>> {
        let inode = match self {
            Self::Sqlite(file) => file.shm_inode()?,
            Self::Postgres { .. } => anyhow::bail!("PostgreSQL has no SQLite write lock"),
        };
        Ok(move || evidence::sqlite_write_lock(pid, inode).unwrap_or(false))
    }

    /// PostgreSQL: whether one of instance `index`'s transactions has just written its
    /// idempotency record (its `COMMIT` comes next); false on SQLite, or unreadable.
    pub(super) async fn record_written(&mut self, index: usize) -> bool {
        match self {
            Self::Sqlite(_) => false,
            Self::Postgres {
                relays, observer, ..
            } => evidence::record_written(observer, &relays[index].upstream_ports())
                .await
                .unwrap_or(false),
        }
    }

    /// The one-way delay between the instances and the database (zero for SQLite).
    pub(super) fn delay(&self) -> Duration {
        match self {
            Self::Sqlite(_) => Duration::ZERO,
            Self::Postgres { relays, .. } => relays[0].delay(),
        }
    }

    /// `(idempotency_key, id)` of every deployment.
    pub(super) async fn rows(&self) -> anyhow::Result<Vec<(Option<String>, String)>> {
        match self {
            Self::Sqlite(file) => file.rows().await,
            Self::Postgres { db, .. } => db.rows().await,
        }
    }

    /// The common check of the deployments against what the clients got.
    pub(super) async fn verify(
        &self,
        expected: &HashMap<String, Vec<String>>,
    ) -> anyhow::Result<Verification> {
        Ok(Verification::of(&self.rows().await?, expected))
    }
}
