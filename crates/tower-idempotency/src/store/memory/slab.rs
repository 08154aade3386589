//! A shard's records, in slots that never move: pages of [`PAGE`] slots and a free list.
//!
//! A record is addressed by its slot number (a `u32`) everywhere but in the shard's index, so
//! that its 32-byte id is stored once, in its slot. Pages are allocated whole and never
//! reallocated, so that growth never moves or copies a slot (and the untouched tail of the
//! last page is address space, not resident memory); freed slots are reused first.

use crate::{Fingerprint, store::RecordId};

/// Slots per page (80 KiB).
pub(super) const PAGE: usize = 1024;

/// One record, or a free slot.
pub(super) struct Slot {
    pub(super) id: RecordId,
    pub(super) fingerprint: Fingerprint,
    /// Milliseconds since the store's origin at which the lease or TTL ends.
    pub(super) deadline: u64,
    /// In flight: the claim's token (never 0). Completed: when it completed, in milliseconds
    /// since the store's origin. Free: 0.
    aux: u64,
    /// The response of a completed record; `None` in flight and free.
    response: Option<Box<[u8]>>,
}

/// What a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State<'a> {
    Free,
    InFlight {
        token: u64,
    },
    Completed {
        response: &'a [u8],
        completed_at: u64,
    },
}

impl Slot {
    /// A claim in flight under `token` (not 0).
    pub(super) fn in_flight(
        id: RecordId,
        fingerprint: Fingerprint,
        token: u64,
        deadline: u64,
    ) -> Self {
        debug_assert_ne!(token, 0, "token 0 marks a free slot");
        Self {
            id,
            fingerprint,
            deadline,
            aux: token,
            response: None,
        }
    }

    pub(super) fn state(&self) -> State<'_> {
        match (&self.response, self.aux) {
            (Some(response), completed_at) => State::Completed {
                response,
                completed_at,
            },
            (None, 0) => State::Free,
            (None, token) => State::InFlight { token },
        }
    }

    pub(super) fn is_free(&self) -> bool {
        self.state() == State::Free
    }

    pub(super) fn is_in_flight(&self) -> bool {
        matches!(self.state(), State::InFlight { .. })
    }

    /// Turns the slot into a completed record of `response`.
    pub(super) fn complete(&mut self, response: Box<[u8]>, completed_at: u64, deadline: u64) {
        self.response = Some(response);
        self.aux = completed_at;
        self.deadline = deadline;
    }

    /// Frees the slot, dropping its response.
    fn clear(&mut self) {
        self.response = None;
        self.aux = 0;
        self.deadline = 0;
    }
}

/// The slots of one shard.
#[derive(Default)]
pub(super) struct Slab {
    /// Each of capacity [`PAGE`], all full but the last.
    pages: Vec<Vec<Slot>>,
    /// Free slots, reused last freed first.
    free: Vec<u32>,
}

impl Slab {
    pub(super) fn get(&self, slot: u32) -> &Slot {
        let slot = slot as usize;
        &self.pages[slot / PAGE][slot % PAGE]
    }

    pub(super) fn get_mut(&mut self, slot: u32) -> &mut Slot {
        let slot = slot as usize;
        &mut self.pages[slot / PAGE][slot % PAGE]
    }

    /// Stores `value` in a free slot, or in a new one; returns its number. The shard's entry
    /// budget (at most `u32::MAX`) bounds the slots in use, hence their numbers.
    pub(super) fn insert(&mut self, value: Slot) -> u32 {
        debug_assert!(!value.is_free(), "inserting a free slot");
        if let Some(slot) = self.free.pop() {
            let old = self.get_mut(slot);
            debug_assert!(old.is_free(), "slot {slot} on the free list is in use");
            *old = value;
            return slot;
        }
        if self.pages.last().is_none_or(|page| page.len() == PAGE) {
            self.pages.push(Vec::with_capacity(PAGE));
        }
        let full = self.pages.len() - 1;
        let page = &mut self.pages[full];
        let slot = full * PAGE + page.len();
        page.push(value);
        u32::try_from(slot).expect("a shard holds at most u32::MAX records")
    }

    /// Frees slot `slot`, dropping its response.
    pub(super) fn free(&mut self, slot: u32) {
        let old = self.get_mut(slot);
        debug_assert!(!old.is_free(), "freeing free slot {slot}");
        old.clear();
        self.free.push(slot);
    }

    /// Every slot, free or not, with its number.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &Slot)> {
        self.pages
            .iter()
            .flatten()
            .zip(0..)
            .map(|(slot, n)| (n, slot))
    }

    /// Slots allocated, free or not.
    #[cfg(test)]
    pub(super) fn slots(&self) -> usize {
        self.pages.iter().map(Vec::len).sum()
    }

    /// Checks the slab's books: pages are never reallocated and only the last is not full;
    /// the free list holds every free slot, once.
    #[cfg(test)]
    pub(super) fn check_books(&self) {
        for (n, page) in self.pages.iter().enumerate() {
            assert_eq!(page.capacity(), PAGE, "page {n} was reallocated");
            if n + 1 < self.pages.len() {
                assert_eq!(page.len(), PAGE, "page {n} is not full but not the last");
            }
        }
        let mut listed = std::collections::HashSet::new();
        for &slot in &self.free {
            assert!(
                (slot as usize) < self.slots(),
                "free slot {slot} out of range"
            );
            assert!(listed.insert(slot), "slot {slot} listed free twice");
            assert!(
                self.get(slot).is_free(),
                "slot {slot} listed free is in use"
            );
        }
        let free = self.iter().filter(|(_, slot)| slot.is_free()).count();
        assert_eq!(free, self.free.len(), "a free slot is not on the free list");
    }
}
