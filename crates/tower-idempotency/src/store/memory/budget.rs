//! The byte budget: one atomic counter shared by every shard.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Bytes charged against the store's whole budget, by every shard.
///
/// The counter only ever admits a charge that keeps it within `max` (a compare-and-swap loop,
/// never add-then-undo, so a charge that does not fit cannot make a concurrent one fail). It
/// orders nothing else: the shard locks guard the records, so relaxed ordering suffices.
#[derive(Debug)]
pub(super) struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub(super) const fn new(max: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            max,
        }
    }

    pub(super) const fn max(&self) -> usize {
        self.max
    }

    pub(super) fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    /// Charges `bytes` if they fit, handing them out as a [`Grant`] that gives them back
    /// unless it is [committed](Grant::commit) to a record.
    pub(super) fn try_grant(&self, bytes: usize) -> Option<Grant<'_>> {
        self.used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.max)
            })
            .ok()
            .map(|_| Grant {
                budget: self,
                bytes,
            })
    }

    /// Gives back bytes a record held.
    pub(super) fn refund(&self, bytes: usize) {
        let before = self.used.fetch_sub(bytes, Ordering::Relaxed);
        debug_assert!(
            before >= bytes,
            "refunded {bytes} of {before} bytes charged"
        );
    }
}

/// Bytes charged against the budget and not yet held by a record: given back when dropped
/// (an early return, a lost lease), kept when committed.
#[must_use = "a grant dropped gives its bytes back"]
#[derive(Debug)]
pub(super) struct Grant<'a> {
    budget: &'a ByteBudget,
    bytes: usize,
}

impl Grant<'_> {
    /// Hands the bytes over to a record (whose removal will refund them); returns how many.
    pub(super) fn commit(mut self) -> usize {
        std::mem::take(&mut self.bytes)
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.refund(self.bytes);
        }
    }
}
