//! One shard: a slab of records, an index over it and two deadline queues, behind one of the
//! store's mutexes.
//!
//! Everything here runs under that mutex. Bytes are charged against the store's shared
//! [`ByteBudget`] and mirrored in the shard's own count, so that what a shard's records hold
//! is known wherever they are evicted from.

#[cfg(test)]
mod books;
mod item;

use std::{cmp::Reverse, collections::BinaryHeap};

use bytes::Bytes;
use hashbrown::HashTable;

use self::item::Deadlines;
pub(super) use self::item::Item;

use super::{
    CLAIM_CHARGE, RECLAIM_BATCH, RECORD_OVERHEAD,
    budget::{ByteBudget, Grant},
    slab::{Slab, Slot, State},
};
use crate::{
    Fingerprint,
    store::{Claim, CompletedRecord, FencingToken, RecordId, StoreError},
};

/// Stale lease items tolerated beyond twice the claims in flight before the lease heap is
/// rebuilt without them.
const LEASE_SLACK: usize = 64;

pub(super) struct Shard {
    /// The records, by slot number.
    slab: Slab,
    /// The slot number of every record, found by its id.
    index: HashTable<u32>,
    /// Deadlines of records in flight (leases). An item is current while its slot is in
    /// flight with that deadline; renewals, completions and releases leave the old item
    /// behind, to be skipped when it comes up or dropped when the heap is rebuilt (once it
    /// holds more than `2 × in_flight + LEASE_SLACK` items).
    leases: Deadlines,
    /// Deadlines of completed records (TTLs), which are also the eviction order: kept apart
    /// from `leases` so that eviction never wades through claims in flight. An item is
    /// current while its slot is completed with that deadline.
    ttls: Deadlines,
    /// Records in flight.
    in_flight: usize,
    /// Bytes charged for this shard's records: its part of the store's budget.
    bytes: usize,
    max_entries: usize,
}

/// Record ids are SHA-256 outputs: their first eight bytes are already a uniform hash.
fn hash(id: &RecordId) -> u64 {
    let [a, b, c, d, e, f, g, h, ..] = id.0;
    u64::from_le_bytes([a, b, c, d, e, f, g, h])
}

/// What the record in `slot` holds of the byte budget: a claim holds the reservation for its
/// completion, a completed record what it keeps.
fn cost(slot: &Slot) -> usize {
    match slot.state() {
        State::Free => 0,
        State::InFlight { .. } => CLAIM_CHARGE,
        State::Completed { response, .. } => RECORD_OVERHEAD + response.len(),
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
    /// A shard of at most `max_entries` records (and never more than `u32::MAX`, the most
    /// slot numbers there are).
    pub(super) fn new(max_entries: usize) -> Self {
        Self {
            slab: Slab::default(),
            index: HashTable::new(),
            leases: BinaryHeap::new(),
            ttls: BinaryHeap::new(),
            in_flight: 0,
            bytes: 0,
            max_entries: max_entries.min(usize::try_from(u32::MAX).unwrap_or(usize::MAX)),
        }
    }

    pub(super) fn len(&self) -> usize {
        self.index.len()
    }

    #[cfg(test)]
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// The slot of the record of `id`, if any.
    fn lookup(&self, id: &RecordId) -> Option<u32> {
        let slab = &self.slab;
        self.index
            .find(hash(id), |&slot| slab.get(slot).id == *id)
            .copied()
    }

    /// The record of `id`, if any.
    fn record(&self, id: &RecordId) -> Option<&Slot> {
        self.lookup(id).map(|slot| self.slab.get(slot))
    }

    /// What a claim finds in a live record, if one exists.
    pub(super) fn found(&self, id: &RecordId, now: u64) -> Option<Claim> {
        let slot = self.record(id).filter(|s| s.deadline > now)?;
        match slot.state() {
            State::Free => None,
            State::InFlight { .. } => Some(Claim::InFlight {
                fingerprint: slot.fingerprint,
            }),
            State::Completed { response, .. } => Some(Claim::Completed(CompletedRecord {
                fingerprint: slot.fingerprint,
                response: Bytes::copy_from_slice(response),
            })),
        }
    }

    /// Whether one more record fits the shard's entry budget.
    pub(super) fn has_entry_room(&self) -> bool {
        self.index.len() < self.max_entries
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
        debug_assert!(self.lookup(&id).is_none(), "a claim replaced a record");
        let record = Slot::in_flight(id, fingerprint, token, deadline);
        let charged = grant.commit();
        debug_assert_eq!(charged, cost(&record));
        self.bytes += charged;
        let slot = self.slab.insert(record);
        let slab = &self.slab;
        self.index
            .insert_unique(hash(&id), slot, |&s| hash(&slab.get(s).id));
        self.in_flight += 1;
        self.leases.push(Item::new(deadline, slot));
        self.compact_leases();
    }

    /// Removes the record of `id`, if any, and gives its bytes back.
    pub(super) fn remove(&mut self, id: &RecordId, budget: &ByteBudget) {
        if let Some(slot) = self.lookup(id) {
            self.remove_slot(slot, budget);
        }
    }

    /// Removes the record in `slot` (which must hold one) and gives its bytes back.
    fn remove_slot(&mut self, slot: u32, budget: &ByteBudget) {
        let id = self.slab.get(slot).id;
        match self.index.find_entry(hash(&id), |&s| s == slot) {
            Ok(entry) => {
                entry.remove();
            }
            Err(_) => debug_assert!(false, "slot {slot} is not indexed"),
        }
        let record = self.slab.get(slot);
        let cost = cost(record);
        let was_in_flight = record.is_in_flight();
        self.bytes -= cost;
        budget.refund(cost);
        self.slab.free(slot);
        if was_in_flight {
            self.in_flight -= 1;
            self.compact_leases();
        }
    }

    /// The fingerprint of the live claim in flight owned by `token`, or `LeaseLost`.
    pub(super) fn owned(
        &self,
        id: &RecordId,
        token: FencingToken,
        now: u64,
    ) -> Result<Fingerprint, StoreError> {
        match self.record(id) {
            Some(slot)
                if slot.deadline > now
                    && slot.state() == (State::InFlight { token: token.get() }) =>
            {
                Ok(slot.fingerprint)
            }
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
        if let Some(slot) = self.lookup(id) {
            let record = self.slab.get_mut(slot);
            if record.deadline != deadline {
                record.deadline = deadline;
                self.leases.push(Item::new(deadline, slot));
                self.compact_leases();
            }
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
        let Some(slot) = self.lookup(id) else {
            debug_assert!(false, "completing a record that does not exist");
            return;
        };
        // One allocation, without the `Bytes` header: the buffer itself when the response
        // is the only handle on a vector (as the layer's encoded records are).
        let response = Vec::from(completed.response).into_boxed_slice();
        let record = self.slab.get_mut(slot);
        debug_assert!(record.is_in_flight(), "completing a completed record");
        let before = cost(record);
        record.fingerprint = completed.fingerprint;
        record.complete(response, completed.now, completed.deadline);
        let after = cost(record);
        let granted = grant.map_or(0, Grant::commit);
        debug_assert_eq!(before + granted, after.max(before));
        if after < before {
            self.bytes -= before - after;
            budget.refund(before - after);
        } else {
            self.bytes += after - before;
        }
        self.ttls.push(Item::new(completed.deadline, slot));
        self.in_flight -= 1;
        self.compact_leases();
    }

    /// Rebuilds the lease heap with only its current items once stale ones (left by
    /// completions, releases and renewals) outnumber the claims in flight plus
    /// [`LEASE_SLACK`]. Each rebuild leaves at most one item per claim in flight, and the
    /// next one waits for about half as many operations as it had items: amortised, a few
    /// comparisons per operation, and stale items never outgrow the claims in flight.
    fn compact_leases(&mut self) {
        if self.leases.len() <= 2 * self.in_flight + LEASE_SLACK {
            return;
        }
        let slab = &self.slab;
        let mut items = std::mem::take(&mut self.leases).into_vec();
        items.retain(|&Reverse(item)| {
            let (deadline, slot) = item.get();
            let record = slab.get(slot);
            record.is_in_flight() && record.deadline == deadline
        });
        // A reused slot can meet a stale item of an earlier claim with the same deadline.
        items.sort_unstable();
        items.dedup();
        items.shrink_to(2 * self.in_flight + LEASE_SLACK);
        self.leases = BinaryHeap::from(items);
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
        while let Some(&Reverse(item)) = self.ttls.peek() {
            let (deadline, slot) = item.get();
            let record = self.slab.get(slot);
            let current = match record.state() {
                State::Completed { completed_at, .. } if record.deadline == deadline => {
                    Some(completed_at)
                }
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
                self.remove_slot(slot, budget);
                if let Some(done) = attempt(self) {
                    return Some(done);
                }
            }
        }
        None
    }

    /// Pops the earliest heap item whose deadline passed, from either heap (it may be stale).
    fn pop_expired(&mut self, now: u64) -> Option<(u64, u32)> {
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
            Some(Reverse(item)) if item.get().0 <= now => heap.pop().map(|Reverse(i)| i.get()),
            _ => None,
        }
    }

    /// Removes the record an expired heap item stands for, unless the item is stale.
    fn remove_current(&mut self, (deadline, slot): (u64, u32), budget: &ByteBudget) -> bool {
        let record = self.slab.get(slot);
        let current = !record.is_free() && record.deadline == deadline;
        if current {
            self.remove_slot(slot, budget);
        }
        current
    }
}

/// What a completion stores.
pub(super) struct Completion {
    pub(super) fingerprint: Fingerprint,
    pub(super) response: Bytes,
    pub(super) now: u64,
    pub(super) deadline: u64,
}
