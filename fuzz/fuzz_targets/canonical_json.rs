//! `fingerprint::canonical_json` on arbitrary bytes: never panics; its output is a fixed
//! point (canonicalising it again yields the same bytes); and whatever serde_json accepts as
//! a document, the canonicaliser accepts too (otherwise a re-serialised retry of an accepted
//! body would be fingerprinted byte for byte and refused as `key-reused`).

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::fingerprint::canonical_json;

fuzz_target!(|data: &[u8]| {
    let canonical = canonical_json(data);
    if let Some(out) = &canonical {
        assert!(std::str::from_utf8(out).is_ok(), "non-UTF-8 output {out:?}");
        let again = canonical_json(out);
        assert_eq!(
            again.as_deref(),
            Some(out.as_slice()),
            "not a fixed point: {:?} -> {:?} -> {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(out),
            again.as_deref().map(String::from_utf8_lossy)
        );
    }
    if serde_json::from_slice::<serde_json::Value>(data).is_ok() {
        assert!(
            canonical.is_some(),
            "serde_json accepts {:?}, the canonicaliser does not",
            String::from_utf8_lossy(data)
        );
    }
});
