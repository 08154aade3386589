//! [`MemoryStore`]: the embedded default, for a single instance.
//!
//! Sharded by record id (each shard a short, never-awaited mutex), bounded in entries and
//! bytes, with TTLs and leases tracked in a per-shard min-heap so that expired records are
//! reclaimed a few at a time as traffic passes, never by a full scan.
//!
//! When the budget is full, room is made by evicting the *oldest completed* records, and only
//! those older than [`min_retention`](MemoryStoreBuilder::min_retention): in-flight claims and
//! fresh records are never evicted. If that is not enough, the claim fails with
//! [`StoreErrorKind::CapacityExhausted`] (the layer answers 503) instead of dropping a record a
//! client may still retry against.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    fmt,
    hash::{BuildHasherDefault, Hasher},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;

use super::{
    Claim, CompletedRecord, FencingToken, IdempotencyStore, RecordId, StoreError, StoreErrorKind,
};
use crate::Fingerprint;

/// Bytes charged per record on top of its response: the map slot, the heap item and
/// allocator slack, rounded up. Keeps the byte budget honest for small responses.
const RECORD_OVERHEAD: usize = 128;

/// Fewest entries a shard is given: keys spread over shards unevenly (by about the square
/// root of a shard's share), and a shard that fills first refuses keys while others have room.
pub const MIN_ENTRIES_PER_SHARD: usize = 256;

/// Expired heap items reclaimed per operation at most, so no single request pays for a
/// large batch of expiries.
const RECLAIM_BATCH: usize = 64;

/// In-memory [`IdempotencyStore`]. Cheap to share: wrap it in an `Arc` or hand it to the
/// layer, which shares it already.
///
/// ```
/// use std::time::Duration;
/// use tower_idempotency::store::memory::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .max_entries(100_000)
///     .max_bytes(64 * 1024 * 1024)
///     .min_retention(Duration::from_secs(300))
///     .build();
/// assert_eq!(store.len(), 0);
/// ```
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    shard_mask: usize,
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
    /// Most records kept at once, in flight and completed (default 1,000,000).
    pub fn max_entries(mut self, n: usize) -> Self {
        self.max_entries = n;
        self
    }

    /// Most bytes kept at once: responses plus a fixed per-record charge (default 256 MiB).
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
    /// The budget is split evenly between them; a small budget gets fewer shards (at least
    /// [`MIN_ENTRIES_PER_SHARD`] entries each), so that uneven filling cannot refuse keys
    /// long before the whole budget is used.
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
        let budget = Budget {
            entries: self.max_entries.div_ceil(shards).max(1),
            bytes: self.max_bytes.div_ceil(shards).max(RECORD_OVERHEAD),
        };
        MemoryStore {
            shards: (0..shards)
                .map(|_| Mutex::new(Shard::new(budget)))
                .collect(),
            shard_mask: shards - 1,
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
        self.shards.iter().map(|s| lock(s).map.len()).sum()
    }

    /// Whether no record is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes currently charged against the budget.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| lock(s).bytes).sum()
    }

    fn shard(&self, id: &RecordId) -> MutexGuard<'_, Shard> {
        // Ids are uniform hashes: any of their bytes pick a shard evenly.
        let index = usize::from(u16::from_le_bytes([id.0[30], id.0[31]])) & self.shard_mask;
        lock(&self.shards[index])
    }

    fn now(&self) -> u64 {
        millis(self.origin.elapsed())
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
        let now = self.now();
        let mut shard = self.shard(id);
        shard.reclaim_expired(now);
        if let Some(entry) = shard.live(id, now) {
            return Ok(match &entry.state {
                State::InFlight { fingerprint, .. } => Claim::InFlight {
                    fingerprint: *fingerprint,
                },
                State::Completed {
                    fingerprint,
                    response,
                    ..
                } => Claim::Completed(CompletedRecord {
                    fingerprint: *fingerprint,
                    response: response.clone(),
                }),
            });
        }
        shard.remove(id);
        shard.make_room(1, RECORD_OVERHEAD, now, self.min_retention_ms)?;
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let deadline = now.saturating_add(millis(lease));
        shard.insert(
            *id,
            Entry {
                deadline,
                state: State::InFlight {
                    fingerprint: *fingerprint,
                    token,
                },
            },
        );
        Ok(Claim::Acquired(FencingToken::new(token)))
    }

    async fn renew(
        &self,
        id: &RecordId,
        token: FencingToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(id);
        let deadline = now.saturating_add(millis(lease));
        shard.owned(id, token, now)?.deadline = deadline;
        shard.expiry.push(Reverse((deadline, *id)));
        Ok(())
    }

    async fn complete(
        &self,
        id: &RecordId,
        token: FencingToken,
        response: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(id);
        let fingerprint = match shard.owned(id, token, now)?.state {
            State::InFlight { fingerprint, .. } => fingerprint,
            State::Completed { .. } => return Err(StoreError::lease_lost()),
        };
        // The in-flight record is charged already; make room for the body, never by
        // evicting this record (it is not completed yet, so eviction skips it).
        shard.make_room(0, response.len(), now, self.min_retention_ms)?;
        let deadline = now.saturating_add(millis(ttl));
        shard.bytes += response.len();
        let entry = shard.map.get_mut(id).ok_or_else(StoreError::lease_lost)?;
        *entry = Entry {
            deadline,
            state: State::Completed {
                fingerprint,
                response,
                completed_at: now,
            },
        };
        shard.expiry.push(Reverse((deadline, *id)));
        Ok(())
    }

    async fn release(&self, id: &RecordId, token: FencingToken) -> Result<(), StoreError> {
        let now = self.now();
        let mut shard = self.shard(id);
        shard.owned(id, token, now)?;
        shard.remove(id);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct Budget {
    entries: usize,
    bytes: usize,
}

struct Shard {
    map: HashMap<RecordId, Entry, BuildHasherDefault<IdHasher>>,
    /// Min-heap of (deadline, id). An item is current when the entry's deadline still equals
    /// it; renewals and completions push a new item and leave the old one to be skipped.
    expiry: BinaryHeap<Reverse<(u64, RecordId)>>,
    bytes: usize,
    budget: Budget,
}

struct Entry {
    /// Milliseconds since the store's origin at which the lease or TTL ends.
    deadline: u64,
    state: State,
}

enum State {
    InFlight {
        fingerprint: Fingerprint,
        token: u64,
    },
    Completed {
        fingerprint: Fingerprint,
        response: Bytes,
        completed_at: u64,
    },
}

impl Entry {
    fn cost(&self) -> usize {
        RECORD_OVERHEAD
            + match &self.state {
                State::InFlight { .. } => 0,
                State::Completed { response, .. } => response.len(),
            }
    }
}

impl Shard {
    fn new(budget: Budget) -> Self {
        Self {
            map: HashMap::default(),
            expiry: BinaryHeap::new(),
            bytes: 0,
            budget,
        }
    }

    fn live(&self, id: &RecordId, now: u64) -> Option<&Entry> {
        self.map.get(id).filter(|e| e.deadline > now)
    }

    /// The live in-flight entry owned by `token`, or `LeaseLost`.
    fn owned(
        &mut self,
        id: &RecordId,
        token: FencingToken,
        now: u64,
    ) -> Result<&mut Entry, StoreError> {
        match self.map.get_mut(id) {
            Some(entry)
                if entry.deadline > now
                    && matches!(entry.state, State::InFlight { token: t, .. } if t == token.get()) =>
            {
                Ok(entry)
            }
            _ => Err(StoreError::lease_lost()),
        }
    }

    fn insert(&mut self, id: RecordId, entry: Entry) {
        self.bytes += entry.cost();
        self.expiry.push(Reverse((entry.deadline, id)));
        if let Some(old) = self.map.insert(id, entry) {
            self.bytes -= old.cost();
        }
    }

    fn remove(&mut self, id: &RecordId) {
        if let Some(old) = self.map.remove(id) {
            self.bytes -= old.cost();
        }
    }

    /// Drops up to [`RECLAIM_BATCH`] expired records and stale heap items.
    fn reclaim_expired(&mut self, now: u64) {
        for _ in 0..RECLAIM_BATCH {
            match self.expiry.peek() {
                Some(Reverse((deadline, _))) if *deadline <= now => {}
                _ => return,
            }
            let Some(Reverse((deadline, id))) = self.expiry.pop() else {
                return;
            };
            if self.map.get(&id).is_some_and(|e| e.deadline == deadline) {
                self.remove(&id);
            }
        }
    }

    /// Ensures `entries` more records and `bytes` more bytes fit, evicting the oldest
    /// completed records past their minimum retention; fails rather than evict anything else.
    fn make_room(
        &mut self,
        entries: usize,
        bytes: usize,
        now: u64,
        min_retention: u64,
    ) -> Result<(), StoreError> {
        let fits = |s: &Self| {
            s.map.len() + entries <= s.budget.entries && s.bytes + bytes <= s.budget.bytes
        };
        if fits(self) {
            return Ok(());
        }
        if bytes > self.budget.bytes {
            return Err(capacity_exhausted());
        }
        // Items we may not evict (in flight, fresh) go back on the heap afterwards.
        let mut kept = Vec::new();
        while !fits(self) {
            let Some(Reverse((deadline, id))) = self.expiry.pop() else {
                break;
            };
            let Some(entry) = self.map.get(&id).filter(|e| e.deadline == deadline) else {
                continue; // stale heap item
            };
            let evictable = deadline <= now
                || matches!(entry.state, State::Completed { completed_at, .. }
                    if completed_at.saturating_add(min_retention) <= now);
            if evictable {
                self.remove(&id);
            } else if matches!(entry.state, State::Completed { .. }) {
                // Completed records leave the heap in deadline order; with one TTL per layer
                // every record behind this fresh one is fresher still.
                kept.push(Reverse((deadline, id)));
                break;
            } else {
                kept.push(Reverse((deadline, id)));
            }
        }
        self.expiry.extend(kept);
        if fits(self) {
            Ok(())
        } else {
            Err(capacity_exhausted())
        }
    }
}

fn capacity_exhausted() -> StoreError {
    StoreError::new(
        StoreErrorKind::CapacityExhausted,
        "the in-memory idempotency store is full of in-flight and fresh records",
    )
}

/// Record ids are SHA-256 outputs: their first eight bytes are already a uniform hash.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = self.0.rotate_left(5) ^ u64::from_le_bytes(word);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u32) -> RecordId {
        let key = crate::IdempotencyKey::parse(format!("key-{n}").as_bytes()).unwrap();
        RecordId::new(b"scope", &key)
    }

    const FP: Fingerprint = Fingerprint::from_bytes([7; 16]);
    const HOUR: Duration = Duration::from_secs(3600);

    async fn acquire(store: &MemoryStore, id: &RecordId) -> FencingToken {
        match store.claim(id, &FP, HOUR).await.unwrap() {
            Claim::Acquired(token) => token,
            other => panic!("expected Acquired, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn evicts_oldest_completed_records_past_min_retention() {
        let store = MemoryStore::builder()
            .shards(1)
            .max_entries(3)
            .min_retention(Duration::ZERO)
            .build();
        for n in 0..3 {
            let token = acquire(&store, &id(n)).await;
            store
                .complete(&id(n), token, Bytes::from_static(b"r"), HOUR)
                .await
                .unwrap();
            // Deadlines have millisecond resolution: make the completion order unambiguous.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        acquire(&store, &id(3)).await;
        assert_eq!(store.len(), 3);
        // The oldest completed record went; the newer ones are still replayable.
        assert!(matches!(
            store.claim(&id(0), &FP, HOUR).await.unwrap(),
            Claim::Acquired(_)
        ));
        assert!(matches!(
            store.claim(&id(2), &FP, HOUR).await.unwrap(),
            Claim::Completed(_)
        ));
    }

    #[tokio::test]
    async fn never_evicts_in_flight_or_fresh_records() {
        let store = MemoryStore::builder().shards(1).max_entries(2).build();
        let token = acquire(&store, &id(0)).await;
        store
            .complete(&id(0), token, Bytes::from_static(b"fresh"), HOUR)
            .await
            .unwrap();
        acquire(&store, &id(1)).await;
        let err = store.claim(&id(2), &FP, HOUR).await.unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
        assert!(matches!(
            store.claim(&id(0), &FP, HOUR).await.unwrap(),
            Claim::Completed(_)
        ));
        assert!(matches!(
            store.claim(&id(1), &FP, HOUR).await.unwrap(),
            Claim::InFlight { .. }
        ));
    }

    #[tokio::test]
    async fn byte_budget_counts_responses() {
        let store = MemoryStore::builder()
            .shards(1)
            .max_bytes(RECORD_OVERHEAD * 2 + 1000)
            .min_retention(Duration::ZERO)
            .build();
        let token = acquire(&store, &id(0)).await;
        store
            .complete(&id(0), token, Bytes::from(vec![0; 900]), HOUR)
            .await
            .unwrap();
        assert_eq!(store.bytes(), RECORD_OVERHEAD + 900);
        let token = acquire(&store, &id(1)).await;
        // 900 more bytes do not fit beside the first record: it is evicted.
        store
            .complete(&id(1), token, Bytes::from(vec![1; 900]), HOUR)
            .await
            .unwrap();
        assert_eq!(store.len(), 1);
        assert_eq!(store.bytes(), RECORD_OVERHEAD + 900);
        // A response larger than the whole budget is refused outright.
        let token = acquire(&store, &id(2)).await;
        let err = store
            .complete(&id(2), token, Bytes::from(vec![2; 5000]), HOUR)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), StoreErrorKind::CapacityExhausted);
    }

    #[test]
    fn small_budgets_get_fewer_shards() {
        assert_eq!(
            MemoryStore::builder()
                .max_entries(2000)
                .build()
                .shards
                .len(),
            8
        );
        assert_eq!(
            MemoryStore::builder().max_entries(100).build().shards.len(),
            1
        );
        assert_eq!(MemoryStore::default().shards.len(), 64);
    }

    #[tokio::test]
    async fn expired_records_are_reclaimed_by_later_traffic() {
        let store = MemoryStore::builder().shards(1).build();
        for n in 0..10 {
            let token = acquire(&store, &id(n)).await;
            store
                .complete(
                    &id(n),
                    token,
                    Bytes::from_static(b"r"),
                    Duration::from_millis(1),
                )
                .await
                .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        acquire(&store, &id(100)).await;
        assert_eq!(store.len(), 1, "the ten expired records were reclaimed");
        assert_eq!(store.bytes(), RECORD_OVERHEAD);
    }
}
