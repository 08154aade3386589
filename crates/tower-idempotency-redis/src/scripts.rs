//! The token-checked Lua scripts behind `complete`, `renew` and `release`.
//!
//! Each runs as one atomic step on the server that owns the record's key. All take the record's
//! key as `KEYS[1]` and the 8-byte big-endian fencing token as `ARGV[1]`, and answer
//! `1` (done), `0` (the record is missing, completed, or in flight under another token:
//! lease lost) or `-1` (the value does not follow the layout: corrupt).

use std::sync::LazyLock;

use redis::Script;

/// Leaves `v` bound to the record if it is in flight under `ARGV[1]`; returns otherwise.
/// Offsets are 1-based: state byte at 1, fingerprint at 2..=17, token at 18..=25.
const CHECK_OWNED: &str = r"
local v = redis.call('GET', KEYS[1])
if not v then return 0 end
local state = string.byte(v, 1)
if state == 67 and #v >= 25 then return 0 end
if state ~= 73 or #v ~= 25 then return -1 end
if string.sub(v, 18, 25) ~= ARGV[1] then return 0 end
";

/// `ARGV[2]`: TTL in milliseconds; `ARGV[3]`: the encoded response. Keeps the fingerprint and
/// token, flips the state byte to `C` and appends the response.
pub(crate) static COMPLETE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_OWNED}
redis.call('SET', KEYS[1], 'C' .. string.sub(v, 2, 25) .. ARGV[3], 'PX', ARGV[2])
return 1
"
    ))
});

/// `ARGV[2]`: the new lease in milliseconds, from now.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_OWNED}
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"
    ))
});

/// Deletes the in-flight record.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{CHECK_OWNED}
redis.call('DEL', KEYS[1])
return 1
"
    ))
});

/// Every script, for loading them up front.
pub(crate) fn all() -> [&'static Script; 3] {
    [&COMPLETE, &RENEW, &RELEASE]
}
