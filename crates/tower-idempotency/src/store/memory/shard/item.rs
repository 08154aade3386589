//! The deadline queues' items: which slot's lease or TTL ends when.

use std::{cmp::Reverse, collections::BinaryHeap};

/// A min-heap of `(deadline, slot)`.
pub(super) type Deadlines = BinaryHeap<Reverse<Item>>;

/// A deadline-heap item: `(deadline, slot)` in 12 bytes (a `(u64, u32)` takes 16), ordered
/// as that pair is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(in crate::store::memory) struct Item {
    deadline_high: u32,
    deadline_low: u32,
    slot: u32,
}

impl Item {
    pub(in crate::store::memory) fn new(deadline: u64, slot: u32) -> Reverse<Self> {
        Reverse(Self {
            deadline_high: (deadline >> 32) as u32,
            deadline_low: deadline as u32,
            slot,
        })
    }

    pub(in crate::store::memory) fn get(self) -> (u64, u32) {
        let deadline = u64::from(self.deadline_high) << 32 | u64::from(self.deadline_low);
        (deadline, self.slot)
    }
}
