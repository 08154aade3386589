//! [`MemoryStore`]: the embedded default, for a single instance.
//!
//! Sharded by record id (each shard a short, never-awaited mutex), bounded in entries and
//! bytes, with leases and TTLs tracked in per-shard min-heaps so that expired records are
//! reclaimed a few at a time as traffic passes, never by a full scan.
//!
//! # Layout
//!
//! Each shard keeps its records in a slab: pages of 1,024 slots of 80 bytes (id, fingerprint,
//! deadline, token or completion time, response), each page allocated once and never moved,
//! with a list of freed slots to reuse. Everything else refers to a record by its 4-byte slot
//! number, so that its 32-byte id is stored once: the index (a `hashbrown` table of slot
//! numbers, hashed by the id's first bytes, which are already uniform) and the two deadline
//! heaps (12-byte `(deadline, slot)` items). A heap item is current while its slot holds a
//! record with that deadline; the lease heap drops its stale items (left by completions,
//! releases and renewals) whenever they outnumber the claims in flight by more than 64, so it
//! never holds more than twice as many items as there are claims in flight, plus 64. A completed response is one allocation, kept
//! without a [`Bytes`] header (the very buffer given to `complete` when it is its only
//! handle), and copied out for each replay. A completed record thus costs 80 to 90 bytes
//! beyond its id and response: 48 in its slot, 12 in its TTL heap item, 5 in its index entry,
//! the allocator's header on its response (8 with glibc), and the headroom of the table and
//! the heap.
//!
//! # Budgets
//!
//! - **Bytes** ([`max_bytes`](MemoryStoreBuilder::max_bytes)) are one budget for the whole
//!   store, however many shards it has: a response that fits the budget is never refused
//!   because of the shard its id falls in. A completed record is charged its response plus
//!   128 bytes for its bookkeeping; a claim in flight is charged 128 bytes plus
//!   [`RESERVED_RECORD_BYTES`], the room its completion is guaranteed.
//! - **Entries** ([`max_entries`](MemoryStoreBuilder::max_entries)) are split evenly over the
//!   shards, and a small budget gets fewer shards (at least [`MIN_ENTRIES_PER_SHARD`] entries
//!   each), so that uneven filling cannot refuse keys long before the whole budget is used.
//!
//! # What a caller can rely on
//!
//! - **An acquired claim can always be completed** (guarantee 7 of the
//!   [store contract](super)): [`Claim::Acquired`] is only handed out once the claim's entry
//!   and its reservation are charged, so its owner's `complete` with a response of at most
//!   [`RESERVED_RECORD_BYTES`] never fails for lack of room. A claim that cannot reserve
//!   fails with [`StoreErrorKind::CapacityExhausted`] before anything runs (the layer answers
//!   503).
//! - **A larger response** takes what room is free, and makes more by evicting. It fails with
//!   `CapacityExhausted` only when the store cannot hold it: at once, without evicting
//!   anything, if it exceeds [`max_record_bytes`](IdempotencyStore::max_record_bytes) (the
//!   byte budget less the 128-byte charge), or after evicting whatever may be evicted, if the
//!   records that may not be evicted leave too little room (or, under contention, other
//!   requests took what it freed). The claim then stays in flight
//!   with its reservation, so a completion of at most `RESERVED_RECORD_BYTES` still succeeds.
//! - **Eviction** makes room, on a claim or a completion, by dropping records whose lease or
//!   TTL ended, then *completed* records older than
//!   [`min_retention`](MemoryStoreBuilder::min_retention): in-flight claims and fresh records
//!   are never evicted, and the store refuses new work rather than drop a record a client may
//!   still retry against. It looks in the record's own shard first (oldest first, by TTL
//!   order, which is age order when the store's records share one TTL), then, for bytes, in
//!   the other shards in turn: expired records in all of them before any completed one.
//!   Entries are only ever made room for in the record's own shard.
//! - **Room comes back** as soon as a claim is released, a completion keeps less than its
//!   reservation, or a record expires (when reclaimed, at the latest when room is needed) or
//!   is evicted.
//! - **Time** is tokio's ([`tokio::time::Instant`]): leases, TTLs and the minimum retention
//!   follow a paused test clock (`#[tokio::test(start_paused = true)]` with
//!   `tokio::time::advance`), at millisecond resolution.
//!
//! # Concurrency
//!
//! A claim or completion takes one shard lock and, for its bytes, one compare-and-swap on the
//! shared byte counter; nothing is global but that counter. An operation never holds two shard
//! locks at once and never awaits while holding one: when its own shard has nothing left to
//! evict it lets go of it, evicts from the others one lock at a time until the bytes it needs
//! are charged to it, then locks its shard again and checks again (that the claim is still
//! free, or still owned by the completing token), giving the bytes back if not. Bytes in
//! transit this way count in [`bytes`](MemoryStore::bytes) but belong to no shard.

mod budget;
mod shard;
mod slab;
#[cfg(test)]
mod tests;

use std::{
    fmt,
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use tokio::time::Instant;

use self::{
    budget::{ByteBudget, Grant},
    shard::{Completion, Reach, Shard},
};
use super::{
    Claim, FencingToken, IdempotencyStore, RESERVED_RECORD_BYTES, RecordId, StoreError,
    StoreErrorKind,
};
use crate::Fingerprint;

/// Bytes charged per record on top of its response: a little more than what it costs, 110
/// to 125 bytes with its id (see the [module docs](self#layout)): its slot (80 bytes), its
/// deadline-heap item (12), its index entry (5), the allocator's header on its response (8 or
/// so) and the headroom of the index and the heaps. Keeps the byte budget honest for small
/// responses. A claim in flight is charged [`CLAIM_CHARGE`] instead.
const RECORD_OVERHEAD: usize = 128;

/// Bytes charged for a claim in flight: its own record, and the room its completion is
/// guaranteed (see guarantee 7 of the store contract).
const CLAIM_CHARGE: usize = RECORD_OVERHEAD + RESERVED_RECORD_BYTES;

/// Fewest entries a shard is given: keys spread over shards unevenly (by about the square
/// root of a shard's share), and a shard that fills first refuses keys while others have room.
pub const MIN_ENTRIES_PER_SHARD: usize = 256;

/// Expired heap items reclaimed per operation at most, so no single request pays for a
/// large batch of expiries.
const RECLAIM_BATCH: usize = 64;

/// In-memory [`IdempotencyStore`]. Cheap to share: wrap it in an `Arc` or hand it to the
/// layer, which shares it already. See the [module docs](self) for its budgets and what it
/// guarantees.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::store::{IdempotencyStore, memory::MemoryStore};
///
/// let store = MemoryStore::builder()
///     .max_entries(100_000)
///     .max_bytes(64 * 1024 * 1024)
///     .min_retention(Duration::from_secs(300))
///     .build();
/// assert_eq!(store.len(), 0);
/// // The largest response it could ever keep: the budget less the per-record charge.
/// assert_eq!(store.max_record_bytes(), Some(64 * 1024 * 1024 - 128));
/// ```
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
    budget: ByteBudget,
    origin: Instant,
    next_token: AtomicU64,
    min_retention_ms: u64,
}

/// Configures a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreBuilder {
    max_entries: usize,
    max_bytes: usize,
    min_retention: Duration,
    shards: usize,
}

impl Default for MemoryStoreBuilder {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_bytes: 256 * 1024 * 1024,
            min_retention: Duration::from_secs(300),
            shards: 64,
        }
    }
}

impl MemoryStoreBuilder {
    /// Most records kept at once, in flight and completed (default 1,000,000), split evenly
    /// over the shards.
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Most bytes kept at once, over all shards: responses plus 128 bytes per record, and for
    /// a claim in flight the [`RESERVED_RECORD_BYTES`] its completion is guaranteed (default
    /// 256 MiB). Raised to at least one claim's charge (1,152 bytes).
    pub fn max_bytes(mut self, n: usize) -> Self {
        self.max_bytes = n;
        self
    }

    /// How long a completed record is protected from eviction (default 5 minutes). Within
    /// it a record goes only when its TTL ends.
    pub fn min_retention(mut self, d: Duration) -> Self {
        self.min_retention = d;
        self
    }

    /// Number of independently locked shards, rounded up to a power of two (default 64).
    /// The entry budget is split evenly between them; a small one gets fewer shards (at
    /// least [`MIN_ENTRIES_PER_SHARD`] entries each), so that uneven filling cannot refuse
    /// keys long before the whole budget is used. The byte budget is shared by all shards.
    pub fn shards(mut self, n: usize) -> Self {
        self.shards = n;
        self
    }

    /// Builds the store.
    pub fn build(self) -> MemoryStore {
        let by_budget = (self.max_entries / MIN_ENTRIES_PER_SHARD).max(1);
        let shards = self
            .shards
            .clamp(1, 4096)
            .min(by_budget)
            .next_power_of_two();
        let entries = self.max_entries.div_ceil(shards).max(1);
        MemoryStore {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(entries)))
                .collect(),
            shard_mask: shards - 1,
            budget: ByteBudget::new(self.max_bytes.max(CLAIM_CHARGE)),
            origin: Instant::now(),
            next_token: AtomicU64::new(1),
            min_retention_ms: millis(self.min_retention),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("len", &self.len())
            .field("bytes", &self.bytes())
            .field("max_bytes", &self.budget.max())
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A builder with the defaults.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder::default()
    }

    /// Records currently held (in flight and completed, expired ones not yet reclaimed
    /// included).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| lock(s).len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently charged against the budget: what completed records keep (plus their
    /// per-record charge) and the reservations of claims in flight. Never more than the
    /// budget.
    pub fn bytes(&self) -> usize {
        self.budget.used()
    }

    fn index(&self, id: &RecordId) -> usize {
        // Ids are uniform hashes: any of their bytes pick a shard evenly.
        usize::from(u16::from_le_bytes([id.0[30], id.0[31]])) & self.shard_mask
    }

    fn lock(&self, index: usize) -> MutexGuard<'_, Shard> {
        lock(&self.shards[index])
    }

    fn now(&self) -> u64 {
        millis(Instant::now().saturating_duration_since(self.origin))
    }

    /// Charges `bytes` by evicting from every shard in turn, holding no other lock: first
    /// only expired records everywhere, then completed records past their minimum retention.
    /// The caller must hold no shard lock. `None` if nothing more may be evicted.
    fn grant_from_anywhere(&self, bytes: usize, from: usize) -> Option<Grant<'_>> {
        for reach in [Reach::Expired, Reach::PastRetention] {
            for step in 1..=self.shards.len() {
                let index = (from + step) & self.shard_mask;
                let now = self.now();
                let granted = self.lock(index).evict_until(
                    &self.budget,
                    now,
                    self.min_retention_ms,
                    reach,
                    |_| self.budget.try_grant(bytes),
                );
                if granted.is_some() {
                    return granted;
                }
            }
        }
        None
    }

    /// Checks the books: every shard's, and that the budget holds exactly what the shards'
    /// records cost. Call it only while no operation runs.
    #[cfg(test)]
    fn check_books(&self) {
        let mut bytes = 0;
        for shard in &self.shards {
            let shard = lock(shard);
            shard.check_books();
            bytes += shard.bytes();
        }
        assert_eq!(
            self.budget.used(),
            bytes,
            "the budget is what the shards hold"
        );
        assert!(bytes <= self.budget.max(), "over budget");
    }
}

fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding the lock cannot leave a shard half-updated in a way that matters
    // more than losing the store, so recover the guard instead of propagating the poison.
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl IdempotencyStore for MemoryStore {
    async fn claim(
        &self,
        id: &RecordId,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Claim, StoreError> {
        let index = self.index(id);
        // Bytes charged by evicting from other shards, on the second round.
        let mut granted = None;
        loop {
            let now = self.now();
            let mut shard = self.lock(index);
            shard.reclaim_expired(now, &self.budget);
            if let Some(found) = shard.found(id, now) {
                return Ok(found);
            }
            shard.remove(id, &self.budget); // a dead record, not reclaimed yet
            let min_retention = self.min_retention_ms;
            let has_room = |s: &Shard| s.has_entry_room().then_some(());
            shard
                .evict_until(
                    &self.budget,
                    now,
                    min_retention,
                    Reach::PastRetention,
                    has_room,
                )
                .ok_or_else(capacity_exhausted)?;
            let grant = match granted.take() {
                Some(grant) => grant,
                None => {
                    let grant = shard.evict_until(
                        &self.budget,
                        now,
                        min_retention,
                        Reach::PastRetention,
                        |_| self.budget.try_grant(CLAIM_CHARGE),
                    );
                    match grant {
                        Some(grant) => grant,
                        None => {
                            drop(shard);
                            granted = Some(
                                self.grant_from_anywhere(CLAIM_CHARGE, index)
                                    .ok_or_else(capacity_exhausted)?,
                            );
                            continue; // look again: the id may have been claimed meanwhile
                        }
                    }
                }
            };
            let token = self.next_token.fetch_add(1, Ordering::Relaxed);
            let deadline = now.saturating_add(millis(lease));
            shard.insert_in_flight(*id, *fingerprint, token, deadline, grant);
            return Ok(Claim::Acquired(FencingToken::new(token)));
        }
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let deadline = now.saturating_add(millis(lease));
        self.lock(self.index(id)).renew(id, token, now, deadline)
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let index = self.index(id);
        // The claim holds RESERVED_RECORD_BYTES already; a larger response needs the rest.
        let excess = response.len().saturating_sub(RESERVED_RECORD_BYTES);
        // Bytes charged by evicting from other shards, on the second round.
        let mut granted = None;
        loop {
            let now = self.now();
            let mut shard = self.lock(index);
            let fingerprint = shard.owned(id, token, now)?;
            if response.len() > self.budget.max() - RECORD_OVERHEAD {
                return Err(too_large());
            }
            if excess > 0 && granted.is_none() {
                // Never evicts this record: a live claim in flight is never evicted.
                granted = shard.evict_until(
                    &self.budget,
                    now,
                    self.min_retention_ms,
                    Reach::PastRetention,
                    |_| self.budget.try_grant(excess),
                );
                if granted.is_none() {
                    drop(shard);
                    granted = Some(
                        self.grant_from_anywhere(excess, index)
                            .ok_or_else(capacity_exhausted)?,
                    );
                    continue; // look again: the lease may have been lost meanwhile
                }
            }
            let completion = Completion {
                fingerprint,
                response,
                now,
                deadline: now.saturating_add(millis(ttl)),
            };
            shard.complete(id, completion, granted, &self.budget);
            return Ok(());
        }
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.lock(self.index(id));
        shard.owned(id, token, now)?;
        shard.remove(id, &self.budget);
        Ok(())
    }

    fn max_record_bytes(&self) -> Option<usize> {
        Some(self.budget.max() - RECORD_OVERHEAD)
    }
}

fn capacity_exhausted() -> StoreError {
    StoreError::new(
        StoreErrorKind::CapacityExhausted,
        "the in-memory idempotency store is full of in-flight and fresh records",
    )
}

fn too_large() -> StoreError {
    StoreError::new(
        StoreErrorKind::CapacityExhausted,
        "the response is larger than the in-memory idempotency store's whole byte budget",
    )
}
