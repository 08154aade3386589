//! Test-only views of a shard and the check of its books.

use std::cmp::Reverse;

use super::{LEASE_SLACK, Shard, cost};
use crate::store::{RecordId, memory::slab::State};

impl Shard {
    /// Items in the lease heap, current or stale.
    pub(in crate::store::memory) fn lease_items(&self) -> usize {
        self.leases.len()
    }

    /// Slots allocated, free or not.
    pub(in crate::store::memory) fn slots(&self) -> usize {
        self.slab.slots()
    }

    /// The slot of the record of `id`, if any.
    pub(in crate::store::memory) fn slot_of(&self, id: &RecordId) -> Option<u32> {
        self.lookup(id)
    }

    /// Checks the shard's books: the index holds exactly the slots in use, each under its own
    /// id; the free list the others; its byte count is what its records cost and its count of
    /// claims in flight is theirs; every record has a current heap item, and the lease heap
    /// keeps within its bound of stale items.
    pub(in crate::store::memory) fn check_books(&self) {
        use std::collections::HashSet;

        self.slab.check_books();
        let leases: HashSet<_> = self.leases.iter().map(|Reverse(item)| item.get()).collect();
        let ttls: HashSet<_> = self.ttls.iter().map(|Reverse(item)| item.get()).collect();
        let slots = self.slab.slots();
        for &(_, slot) in leases.iter().chain(&ttls) {
            assert!(
                (slot as usize) < slots,
                "heap item for slot {slot} out of range"
            );
        }
        let (mut live, mut in_flight, mut bytes) = (0, 0, 0);
        for (slot, record) in self.slab.iter() {
            let heap = match record.state() {
                State::Free => continue,
                State::InFlight { .. } => {
                    in_flight += 1;
                    &leases
                }
                State::Completed { .. } => &ttls,
            };
            live += 1;
            bytes += cost(record);
            assert_eq!(
                self.lookup(&record.id),
                Some(slot),
                "slot {slot} ({:?}) is not indexed under its id",
                record.id
            );
            assert!(
                heap.contains(&(record.deadline, slot)),
                "{:?} in slot {slot} has no current heap item",
                record.id
            );
        }
        for &slot in &self.index {
            assert!(
                (slot as usize) < slots,
                "index holds slot {slot}, out of range"
            );
            assert!(
                !self.slab.get(slot).is_free(),
                "index holds free slot {slot}"
            );
        }
        assert_eq!(self.index.len(), live, "index entries");
        assert_eq!(self.in_flight, in_flight, "claims in flight");
        assert_eq!(self.bytes, bytes, "shard bytes");
        assert!(live <= self.max_entries, "shard entries");
        assert!(
            self.leases.len() <= 2 * self.in_flight + LEASE_SLACK,
            "{} lease items for {} claims in flight",
            self.leases.len(),
            self.in_flight
        );
    }
}
