//! The conformance suite against the in-memory store.

use tower_idempotency::store::memory::MemoryStore;

tower_idempotency::store_conformance_tests!(async { MemoryStore::default() });
