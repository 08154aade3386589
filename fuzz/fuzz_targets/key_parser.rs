//! `IdempotencyKey::parse` on arbitrary bytes: never panics; what it accepts is a key of
//! 1..=255 printable ASCII characters, and both spellings of that key parse back to it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use tower_idempotency::{IdempotencyKey, MAX_KEY_LEN};

fuzz_target!(|data: &[u8]| {
    let Ok(key) = IdempotencyKey::parse(data) else {
        return;
    };
    let text = key.as_str();
    assert!(
        (1..=MAX_KEY_LEN).contains(&text.len()),
        "accepted a key of {} characters from {data:?}",
        text.len()
    );
    assert!(
        text.bytes().all(|b| (0x20..=0x7e).contains(&b)),
        "accepted a non-printable key {text:?} from {data:?}"
    );
    // The Structured-Field spelling of the key is the same key.
    let quoted = format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""));
    assert_eq!(
        IdempotencyKey::parse(quoted.as_bytes()).as_ref(),
        Ok(&key),
        "{quoted:?} is not the key {text:?}"
    );
    // So is the bare spelling, wherever the key can be written bare.
    if !text.bytes().any(|b| matches!(b, b' ' | b'"' | b',')) {
        assert_eq!(
            IdempotencyKey::parse(text.as_bytes()).as_ref(),
            Ok(&key),
            "bare {text:?} is not the same key"
        );
    }
});
