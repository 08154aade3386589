//! [`FencingToken`]: what proves that a caller still owns the record it claimed.

use std::{
    fmt,
    hash::{BuildHasher as _, RandomState},
    sync::{
        LazyLock,
        atomic::{AtomicU64, Ordering},
    },
};

/// Proof of ownership of an in-flight record, handed out by
/// [`Claim::Acquired`](super::Claim::Acquired).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FencingToken(u64);

impl FencingToken {
    /// Wraps a store-chosen value. Stores must never hand the same value out twice for one id.
    pub const fn new(value: u64) -> Self {
        Self(value)
    }

    /// The raw value, for stores.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// A fresh non-zero token for a store shared by several processes.
    ///
    /// Within one process no two calls return the same token. Tokens of different processes
    /// (each with its own random seed) meet by chance only: the odds that two processes'
    /// sequences share a value at all are about `2n / 2⁶⁴` after `n` tokens each, and a shared
    /// value matters only if both were drawn for the same record id. That is what fencing
    /// (guarantee 3 of the [store contract](super)) needs.
    ///
    /// Tokens are not secrets (whoever reads one can predict the next of its process) and
    /// need not be: they never leave the server and its store.
    ///
    /// ```
    /// use tower_idempotency::store::FencingToken;
    ///
    /// let (a, b) = (FencingToken::random(), FencingToken::random());
    /// assert_ne!(a, b);
    /// assert_ne!(a.get(), 0);
    /// ```
    pub fn random() -> Self {
        // No system call per claim: a seed drawn once (std seeds its hashers from the OS) and
        // a counter, through a bijective mixer, so distinct counts give distinct tokens.
        static SEED: LazyLock<u64> = LazyLock::new(|| RandomState::new().hash_one(0x5eed_u64));
        static COUNT: AtomicU64 = AtomicU64::new(0);
        loop {
            let n = COUNT.fetch_add(1, Ordering::Relaxed);
            let token = mix(SEED.wrapping_add(n.wrapping_mul(GOLDEN_GAMMA)));
            if token != 0 {
                return Self(token);
            }
        }
    }
}

/// SplitMix64's increment: odd, so multiplying by it permutes `u64`.
const GOLDEN_GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// SplitMix64's finaliser: every step (xor-shift, odd multiply) is a bijection of `u64`.
const fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl fmt::Debug for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FencingToken({:#x})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn random_tokens_are_distinct_and_non_zero() {
        let tokens: HashSet<u64> = (0..100_000).map(|_| FencingToken::random().get()).collect();
        assert_eq!(tokens.len(), 100_000);
        assert!(!tokens.contains(&0));
    }

    #[test]
    fn random_tokens_are_distinct_across_threads() {
        let threads: Vec<_> = (0..4)
            .map(|_| {
                std::thread::spawn(|| {
                    (0..10_000)
                        .map(|_| FencingToken::random().get())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all = HashSet::new();
        for thread in threads {
            for token in thread.join().unwrap() {
                assert!(all.insert(token), "token {token:#x} drawn twice");
            }
        }
    }

    #[test]
    fn the_mixer_spreads_neighbouring_counts() {
        // Consecutive counts differ in about half their bits once mixed.
        let differing = (mix(1) ^ mix(2)).count_ones();
        assert!((16..=48).contains(&differing), "{differing} bits differ");
    }
}
