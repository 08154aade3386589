//! Where a kill lands: instants are drawn at random until one finds what the kill aims at,
//! and the victim is frozen (SIGSTOP) there.
//!
//! A kill at a uniformly random instant of the run would mostly find nothing in flight (a
//! create on SQLite takes a few milliseconds, 25 ms apart); aiming only says which random
//! instants count. Every aim except [`Aim::Release`] draws with random gaps long next to what
//! it looks for, so the instant found is anywhere in it, not at its start.

use std::time::{Duration, Instant};

use super::database::{Database, Kind};
use crate::{client::Client, procs};

/// What the instant of a kill must find.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Aim {
    /// An attempt in flight at the victim (the client's gauge): anywhere in a create's life,
    /// from its request being read to its answer leaving.
    InFlight,
    /// SQLite: the victim holding the write lock (`/proc/locks`, read without stopping it):
    /// inside a create's transaction, which on SQLite is a fraction of a create's life.
    WriteLock,
    /// SQLite: the victim's write lock just released: its `COMMIT` has returned a few tens of
    /// microseconds ago, its answer is still being built (the lock is watched from a thread
    /// of its own, which freezes the victim the moment it sees the lock free).
    Release,
    /// PostgreSQL: one of the victim's transactions has written its idempotency record
    /// (`pg_stat_activity`); the freeze comes a random 1.1 to 2.8 relay delays later, when
    /// its `COMMIT` is on the wire, executing, or acknowledged but not yet received.
    Commit,
}

impl Aim {
    /// SQLite: in turn the write lock, its release, a create in flight. PostgreSQL (through
    /// the relays a create's transaction is most of its life): two kills aimed at creates in
    /// flight, then one at a commit.
    pub(super) fn for_cycle(kind: Kind, cycle: usize) -> Self {
        match (kind, cycle % 3) {
            (Kind::Sqlite, 0) => Self::WriteLock,
            (Kind::Sqlite, 1) => Self::Release,
            (Kind::Postgres, 2) => Self::Commit,
            _ => Self::InFlight,
        }
    }

    /// Its name in reports.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::InFlight => "in flight",
            Self::WriteLock => "write lock",
            Self::Release => "lock release",
            Self::Commit => "commit",
        }
    }

    /// The longest random gap between two draws.
    fn max_gap(self) -> Duration {
        match self {
            Self::InFlight => Duration::from_millis(40),
            Self::WriteLock | Self::Release => Duration::from_millis(4),
            Self::Commit => Duration::from_millis(1),
        }
    }

    /// Draws before giving up (the kill then lands where the last draw was).
    fn max_draws(self) -> u32 {
        match self {
            Self::InFlight | Self::Commit => 200,
            Self::WriteLock | Self::Release => 1000,
        }
    }
}

/// Draws instants for `aim` on instance `index` (pid `pid`) and freezes it at the one found;
/// returns how many were drawn.
pub(super) async fn freeze_at(
    aim: Aim,
    index: usize,
    pid: u32,
    client: &Client,
    database: &mut Database,
) -> anyhow::Result<u32> {
    if aim == Aim::Release {
        return freeze_at_release(pid, database).await;
    }
    let mut draws = 1;
    loop {
        let found = match aim {
            Aim::InFlight => client.in_flight(index) > 0,
            Aim::WriteLock | Aim::Release => database.holds_write_lock(pid),
            Aim::Commit => database.record_written(index).await,
        };
        if found || draws >= aim.max_draws() {
            break;
        }
        tokio::time::sleep(random_gap(aim)).await;
        draws += 1;
    }
    if aim == Aim::Commit {
        // The record's answer reaches the instance one delay after it was written, its
        // COMMIT the server one more, the acknowledgement the instance one more.
        let factor = 1.1 + fastrand::f64() * 1.7;
        tokio::time::sleep(database.delay().mul_f64(factor)).await;
    }
    procs::freeze(pid)?;
    Ok(draws)
}

/// [`Aim::Release`], on a thread of its own (no hand-over between seeing and freezing):
/// draws until the victim holds the write lock, then spins until it is free, and freezes it.
async fn freeze_at_release(pid: u32, database: &Database) -> anyhow::Result<u32> {
    let holds = database.lock_watcher(pid)?;
    tokio::task::spawn_blocking(move || {
        let mut draws = 1;
        while !holds() && draws < Aim::Release.max_draws() {
            std::thread::sleep(random_gap(Aim::Release));
            draws += 1;
        }
        // The lock is held for a millisecond or so.
        let deadline = Instant::now() + Duration::from_secs(1);
        while holds() && Instant::now() < deadline {
            std::hint::spin_loop();
        }
        procs::freeze(pid)?;
        Ok(draws)
    })
    .await?
}

fn random_gap(aim: Aim) -> Duration {
    let most = aim.max_gap().as_micros() as u64;
    Duration::from_micros(fastrand::u64(0..=most))
}
