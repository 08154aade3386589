//! One shard: a map of records and two deadline heaps, behind one of the store's mutexes.
//!
//! Everything here runs under that mutex. Bytes are charged against the store's shared
//! [`ByteBudget`] and mirrored in the shard's own count, so that what a shard's records hold
//! is known wherever they are evicted from.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashMap},
    hash::{BuildHasherDefault, Hasher},
};

use bytes::Bytes;

use super::{
    CLAIM_CHARGE, RECLAIM_BATCH, RECORD_OVERHEAD,
    budget::{ByteBudget, Grant},
};
use crate::{
    Fingerprint,
    store::{Claim, CompletedRecord, FencingToken, RecordId, StoreError},
};

/// A min-heap of `(deadline, id)`.
type Deadlines = BinaryHeap<Reverse<(u64, RecordId)>>;

pub(super) struct Shard {
    map: HashMap<RecordId, Entry, BuildHasherDefault<IdHasher>>,
    /// Deadlines of records in flight (leases). An item is current while its entry's deadline
    /// still equals it; renewals and completions push a new item (here or in `ttls`) and
    /// leave the old one to be skipped when it comes up.
    leases: Deadlines,
    /// Deadlines of completed records (TTLs), which are also the eviction order: kept apart
    /// from `leases` so that eviction never wades through claims in flight.
    ttls: Deadlines,
    /// Bytes charged for this shard's records: its part of the store's budget.
    bytes: usize,
    max_entries: usize,
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
    /// What the record holds of the byte budget: a claim holds the reservation for its
    /// completion, a completed record what it keeps.
    fn cost(&self) -> usize {
        match &self.state {
            State::InFlight { .. } => CLAIM_CHARGE,
            State::Completed { response, .. } => RECORD_OVERHEAD + response.len(),
        }
    }
}

/// How far an eviction may go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reach {
    /// Only records whose lease or TTL ended: they no longer exist for the store's contract.
    Expired,
    /// Those, then completed records older than the minimum retention, oldest first.
    PastRetention,
}

impl Shard {
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            map: HashMap::default(),
            leases: BinaryHeap::new(),
            ttls: BinaryHeap::new(),
            bytes: 0,
            max_entries,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// What a claim finds in a live record, if one exists.
    pub(super) fn found(&self, id: &RecordId, now: u64) -> Option<Claim> {
        let entry = self.map.get(id).filter(|e| e.deadline > now)?;
        Some(match &entry.state {
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
        })
    }

    /// Whether one more record fits the shard's entry budget.
    pub(super) fn has_entry_room(&self) -> bool {
        self.map.len() < self.max_entries
    }

    /// Adds a claim in flight, holding `grant` (of [`CLAIM_CHARGE`] bytes). Any record of
    /// `id` must have been removed first.
    pub(super) fn insert_in_flight(
        &mut self,
        id: RecordId,
        fingerprint: Fingerprint,
        token: u64,
        deadline: u64,
        grant: Grant<'_>,
    ) {
        let entry = Entry {
            deadline,
            state: State::InFlight { fingerprint, token },
        };
        let charged = grant.commit();
        debug_assert_eq!(charged, entry.cost());
        self.bytes += charged;
        self.leases.push(Reverse((deadline, id)));
        let old = self.map.insert(id, entry);
        debug_assert!(old.is_none(), "a claim replaced a record");
    }

    /// Removes the record of `id`, if any, and gives its bytes back.
    pub(super) fn remove(&mut self, id: &RecordId, budget: &ByteBudget) {
        if let Some(old) = self.map.remove(id) {
            let cost = old.cost();
            self.bytes -= cost;
            budget.refund(cost);
        }
    }

    /// The fingerprint of the live claim in flight owned by `token`, or `LeaseLost`.
    pub(super) fn owned(
        &self,
        id: &RecordId,
        token: FencingToken,
        now: u64,
    ) -> Result<Fingerprint, StoreError> {
        match self.map.get(id) {
            Some(Entry {
                deadline,
                state:
                    State::InFlight {
                        fingerprint,
                        token: t,
                    },
            }) if *deadline > now && *t == token.get() => Ok(*fingerprint),
            _ => Err(StoreError::lease_lost()),
        }
    }

    /// Moves the lease of the claim owned by `token` to `deadline`.
    pub(super) fn renew(
        &mut self,
        id: &RecordId,
        token: FencingToken,
        now: u64,
        deadline: u64,
    ) -> Result<(), StoreError> {
        self.owned(id, token, now)?;
        if let Some(entry) = self.map.get_mut(id) {
            entry.deadline = deadline;
            self.leases.push(Reverse((deadline, *id)));
        }
        Ok(())
    }

    /// Turns the claim of `id` into a completed record. The caller checked ownership under
    /// this same lock. A response beyond the reservation brings `grant`, holding the excess;
    /// a smaller one gives the rest of the reservation back.
    pub(super) fn complete(
        &mut self,
        id: &RecordId,
        completed: Completion,
        grant: Option<Grant<'_>>,
        budget: &ByteBudget,
    ) {
        let Some(entry) = self.map.get_mut(id) else {
            debug_assert!(false, "completing a record that does not exist");
            return;
        };
        let before = entry.cost();
        *entry = Entry {
            deadline: completed.deadline,
            state: State::Completed {
                fingerprint: completed.fingerprint,
                response: completed.response,
                completed_at: completed.now,
            },
        };
        let after = entry.cost();
        let granted = grant.map_or(0, Grant::commit);
        debug_assert_eq!(before + granted, after.max(before));
        if after < before {
            self.bytes -= before - after;
            budget.refund(before - after);
        } else {
            self.bytes += after - before;
        }
        self.ttls.push(Reverse((completed.deadline, *id)));
    }

    /// Drops up to [`RECLAIM_BATCH`] expired records and stale heap items.
    pub(super) fn reclaim_expired(&mut self, now: u64, budget: &ByteBudget) {
        for _ in 0..RECLAIM_BATCH {
            let Some(item) = self.pop_expired(now) else {
                return;
            };
            self.remove_current(item, budget);
        }
    }

    /// Calls `attempt` until it succeeds, evicting one record before each retry: first
    /// records that expired (earliest deadline first), then, if `reach` allows, completed
    /// records older than `min_retention` in TTL order (with one TTL per layer, oldest
    /// first). Never evicts a live claim in flight or a record within its minimum
    /// retention; gives up, returning `None`, when nothing else may go.
    pub(super) fn evict_until<T>(
        &mut self,
        budget: &ByteBudget,
        now: u64,
        min_retention: u64,
        reach: Reach,
        mut attempt: impl FnMut(&Self) -> Option<T>,
    ) -> Option<T> {
        if let Some(done) = attempt(self) {
            return Some(done);
        }
        while let Some(item) = self.pop_expired(now) {
            if self.remove_current(item, budget)
                && let Some(done) = attempt(self)
            {
                return Some(done);
            }
        }
        if reach == Reach::Expired {
            return None;
        }
        while let Some(&Reverse((deadline, id))) = self.ttls.peek() {
            let current = match self.map.get(&id) {
                Some(Entry {
                    deadline: d,
                    state: State::Completed { completed_at, .. },
                }) if *d == deadline => Some(*completed_at),
                _ => None,
            };
            if let Some(completed_at) = current
                && completed_at.saturating_add(min_retention) > now
            {
                // Fresh. Completed records leave the heap in deadline order; with one TTL
                // per layer every record behind this one is fresher still.
                return None;
            }
            self.ttls.pop();
            if current.is_some() {
                self.remove(&id, budget);
                if let Some(done) = attempt(self) {
                    return Some(done);
                }
            }
        }
        None
    }

    /// Pops the earliest heap item whose deadline passed, from either heap (it may be stale).
    fn pop_expired(&mut self, now: u64) -> Option<(u64, RecordId)> {
        let front = |heap: &Deadlines| heap.peek().map(|Reverse(item)| *item);
        let heap = match (front(&self.leases), front(&self.ttls)) {
            (Some(lease), Some(ttl)) => {
                if lease <= ttl {
                    &mut self.leases
                } else {
                    &mut self.ttls
                }
            }
            (Some(_), None) => &mut self.leases,
            (None, Some(_)) => &mut self.ttls,
            (None, None) => return None,
        };
        match heap.peek() {
            Some(Reverse((deadline, _))) if *deadline <= now => heap.pop().map(|Reverse(i)| i),
            _ => None,
        }
    }

    /// Removes the record an expired heap item stands for, unless the item is stale.
    fn remove_current(&mut self, (deadline, id): (u64, RecordId), budget: &ByteBudget) -> bool {
        let current = self.map.get(&id).is_some_and(|e| e.deadline == deadline);
        if current {
            self.remove(&id, budget);
        }
        current
    }

    /// Checks the shard's books: its byte count is what its records cost, and every record
    /// has a current heap item.
    #[cfg(test)]
    pub(super) fn check_books(&self) {
        let cost: usize = self.map.values().map(Entry::cost).sum();
        assert_eq!(self.bytes, cost, "shard bytes");
        assert!(self.map.len() <= self.max_entries, "shard entries");
        for (id, entry) in &self.map {
            let heap = match entry.state {
                State::InFlight { .. } => &self.leases,
                State::Completed { .. } => &self.ttls,
            };
            assert!(
                heap.iter()
                    .any(|Reverse(item)| *item == (entry.deadline, *id)),
                "{id:?} has no current heap item"
            );
        }
    }
}

/// What a completion stores.
pub(super) struct Completion {
    pub(super) fingerprint: Fingerprint,
    pub(super) response: Bytes,
    pub(super) now: u64,
    pub(super) deadline: u64,
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
