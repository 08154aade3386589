//! The lease keeper: one task per layer that renews the claims of running handlers.
//!
//! Renewal must not depend on the handler's task being polled: a handler that blocks its
//! thread, or hogs its task, from its very first poll would otherwise lose its claim and let
//! a retry run in parallel. So every running handler registers here before it is first
//! polled (a short lock and a map insert; no task or timer per request), and the keeper
//! wakes every sixth of a lease to renew the claims that are due, each renewal on a task of
//! its own so that a slow store delays no other claim.

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{sync::Notify, task::JoinHandle, time::Instant};

use super::lease::Lease;
use crate::{
    layer::Config,
    metrics::{StoreCall, timed},
    store::{FencingToken, IdempotencyStore, RecordId, StoreErrorKind},
};

/// How long an idle keeper waits before checking whether its layer still exists.
const IDLE_CHECK: Duration = Duration::from_secs(60);

/// The running handlers of one layer. Cheap to clone; clones share the registry.
#[derive(Clone, Default)]
pub(crate) struct LeaseKeeper(Arc<Registry>);

#[derive(Default)]
struct Registry {
    running: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
    wake: Notify,
    /// The keeper wakes by itself every tick: a registration need not wake it. Written and
    /// read under `running`'s lock, so a registration either sees it or its wake-up is kept
    /// for the keeper to find.
    ticking: AtomicBool,
    /// Whether the keeper's task runs: read on every registration without taking `task`.
    alive: AtomicBool,
    task: Mutex<Option<JoinHandle<()>>>,
}

struct Entry {
    id: RecordId,
    token: FencingToken,
    lease: Lease,
    renewing: bool,
}

impl fmt::Debug for LeaseKeeper {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaseKeeper").finish_non_exhaustive()
    }
}

/// Keeps one handler's claim renewed until dropped.
pub(super) struct Registration {
    keeper: LeaseKeeper,
    entry: u64,
    /// The keeper was just started on this worker: see [`Registration::settle`].
    started_keeper: bool,
}

impl Registration {
    /// Lets a keeper that this registration started run once before the handler does.
    ///
    /// tokio puts a task spawned from a worker into that worker's LIFO slot, which no other
    /// worker can steal: if the handler then blocked the worker from its first poll, the
    /// keeper would never start. Yielding once runs it first (once per layer and runtime).
    pub(super) async fn settle(&mut self) {
        if std::mem::take(&mut self.started_keeper) {
            tokio::task::yield_now().await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.0.lock_running().remove(&self.entry);
    }
}

impl Registry {
    fn lock_running(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl LeaseKeeper {
    /// Renews `lease` (the claim `token` holds on `id`) until the registration drops.
    pub(super) fn register<St: IdempotencyStore>(
        &self,
        config: &Arc<Config<St>>,
        id: RecordId,
        token: FencingToken,
        lease: &Lease,
    ) -> Registration {
        let entry = self.0.next.fetch_add(1, Ordering::Relaxed);
        let wake = {
            let mut running = self.0.lock_running();
            running.insert(
                entry,
                Entry {
                    id,
                    token,
                    lease: lease.clone(),
                    renewing: false,
                },
            );
            !self.0.ticking.load(Ordering::Relaxed)
        };
        let started_keeper = self.ensure_task(config);
        if wake {
            self.0.wake.notify_one();
        }
        Registration {
            keeper: self.clone(),
            entry,
            started_keeper,
        }
    }

    /// Starts the keeper on the current runtime, or again if its runtime went away; says
    /// whether it did.
    fn ensure_task<St: IdempotencyStore>(&self, config: &Arc<Config<St>>) -> bool {
        if self.0.alive.load(Ordering::Acquire) {
            return false;
        }
        let mut task = self.0.task.lock().unwrap_or_else(|e| e.into_inner());
        if task.as_ref().is_some_and(|t| !t.is_finished()) {
            return false;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::error!("no tokio runtime to renew leases on");
            return false;
        };
        let registry = Arc::downgrade(&self.0);
        self.0.alive.store(true, Ordering::Release);
        *task = Some(runtime.spawn(keep(Arc::downgrade(config), registry)));
        true
    }
}

/// The keeper's task: ends when its layer is gone.
async fn keep<St: IdempotencyStore>(config: Weak<Config<St>>, registry: Weak<Registry>) {
    // However the task ends (its layer gone, its runtime shut down), the next registration
    // starts a new one.
    struct Ended(Weak<Registry>);
    impl Drop for Ended {
        fn drop(&mut self) {
            if let Some(registry) = self.0.upgrade() {
                registry.alive.store(false, Ordering::Release);
            }
        }
    }
    let _ended = Ended(registry.clone());
    // Once woken, the keeper ticks at least once before it may idle again: requests that
    // come and go between two of its runs (most of them) then wake it at most once a tick,
    // not once each.
    let mut woken = false;
    loop {
        let (Some(config), Some(registry)) = (config.upgrade(), registry.upgrade()) else {
            return;
        };
        let now = Instant::now();
        let idle = {
            let mut running = registry.lock_running();
            let idle = running.is_empty() && !woken;
            registry.ticking.store(!idle, Ordering::Relaxed);
            for (&entry, running) in running.iter_mut() {
                if running.renewing || running.lease.renew_at() > now {
                    continue;
                }
                running.renewing = true;
                tokio::spawn(renew(
                    Arc::clone(&config),
                    Arc::downgrade(&registry),
                    entry,
                    running.id,
                    running.token,
                    running.lease.clone(),
                ));
            }
            idle
        };
        let tick = config.lease / 6;
        drop(config);
        let wake = async { registry.wake.notified().await };
        woken = idle;
        if idle {
            let _ = tokio::time::timeout(IDLE_CHECK, wake).await;
        } else {
            tokio::time::sleep(tick).await;
        }
    }
}

/// One renewal of one claim.
async fn renew<St: IdempotencyStore>(
    config: Arc<Config<St>>,
    registry: Weak<Registry>,
    entry: u64,
    id: RecordId,
    token: FencingToken,
    lease: Lease,
) {
    let sent = Instant::now();
    let result = timed(
        StoreCall::Renew,
        config.store.renew(&id, token, config.lease),
    )
    .await;
    let keep_entry = match result {
        Ok(()) => {
            lease.renewed(sent, config.lease);
            true
        }
        // The handler finished meanwhile, and its record may be complete already.
        Err(_) if lease.is_finished() => false,
        Err(error) if error.kind() == StoreErrorKind::LeaseLost => {
            lease.mark_lost("the store refused to renew the claim");
            false
        }
        Err(error) => {
            let now = Instant::now();
            if now >= lease.held_until() {
                lease.mark_lost("no renewal succeeded for a whole lease");
                false
            } else {
                tracing::warn!(%error, "could not renew the lease of a running request; retrying");
                lease.retry_renewal_at((now + config.lease / 12).min(lease.held_until()));
                true
            }
        }
    };
    let Some(registry) = registry.upgrade() else {
        return;
    };
    let mut running = registry.lock_running();
    if keep_entry {
        if let Some(running) = running.get_mut(&entry) {
            running.renewing = false;
        }
    } else {
        running.remove(&entry);
    }
}
