//! The token-checked Lua scripts behind `complete`, `renew` and `release`, and how they are run.
//!
//! Each runs as one atomic step on the server that owns the record's key. All take the record's
//! key as `KEYS[1]` and the 8-byte big-endian fencing token as `ARGV[1]`, and answer
//! `1` (done), `0` (the record is missing, completed, or in flight under another token:
//! lease lost) or `-1` (the value does not follow the layout: corrupt).
//!
//! # Memory
//!
//! The scripts declare their flags (`#!lua flags=...`, Redis 7). Those that cannot grow the
//! data set by more than a small record (`renew`, `release`, and `complete` of a response of at
//! most [`RESERVED_RECORD_BYTES`]) are `allow-oom`: they run even when Redis is at its
//! `maxmemory`, so the owner of a claim can always record that its request ran (guarantee 7 of
//! the store contract). A `complete` of a larger response is refused there (`OOM`, mapped to
//! [`CapacityExhausted`](tower_idempotency::store::StoreErrorKind::CapacityExhausted)), and the
//! layer falls back to the small record.
//!
//! # `NOSCRIPT`
//!
//! A script is run with `EVALSHA`. A server that lost it (a restart, `SCRIPT FLUSH`, a new
//! cluster node) answers `NOSCRIPT`; the script is then sent once with `EVAL`, to the same
//! node (the key's primary), which also caches it there again. Nothing else is asked of any
//! other node, so a paused or unreachable replica, or another shard, never blocks a `complete`.

use std::sync::LazyLock;

use redis::{Cmd, ErrorKind, RedisResult, ServerErrorKind, Value};
use tower_idempotency::store::RESERVED_RECORD_BYTES;

use crate::connection::{Connection, Resend};

/// One Lua script: its body and the SHA-1 `EVALSHA` names it by.
#[derive(Debug)]
pub(crate) struct Script {
    body: String,
    sha: String,
    resend: Resend,
}

impl Script {
    fn new(flags: &str, tail: &str, resend: Resend) -> Self {
        let body = format!("#!lua{flags}\n{CHECK_OWNED}{tail}");
        let sha = redis::Script::new(&body).get_hash().to_owned();
        Self { body, sha, resend }
    }

    /// `SCRIPT LOAD` of this script, for loading it up front.
    pub(crate) fn load_cmd(&self) -> Cmd {
        let mut cmd = redis::cmd("SCRIPT");
        cmd.arg("LOAD").arg(&self.body);
        cmd
    }

    /// Runs the script on `key` (one key; `args` are `ARGV`): `EVALSHA`, and on `NOSCRIPT`
    /// `EVAL` with the body, on the key's node.
    pub(crate) async fn run(
        &self,
        connection: &Connection,
        key: &str,
        args: &[&[u8]],
    ) -> RedisResult<Value> {
        let evalsha = self.command("EVALSHA", &self.sha, key, args);
        match connection.query(&evalsha, Some(key), self.resend).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let eval = self.command("EVAL", &self.body, key, args);
                connection.query(&eval, Some(key), self.resend).await
            }
            result => result,
        }
    }

    fn command(&self, name: &str, script: &str, key: &str, args: &[&[u8]]) -> Cmd {
        let mut cmd = redis::cmd(name);
        cmd.arg(script).arg(1).arg(key);
        for arg in args {
            cmd.arg(*arg);
        }
        cmd
    }
}

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

/// Keeps the fingerprint and token, flips the state byte to `C` and appends the response.
/// `ARGV[2]`: TTL in milliseconds; `ARGV[3]`: the encoded response.
const COMPLETE_TAIL: &str = "
redis.call('SET', KEYS[1], 'C' .. string.sub(v, 2, 25) .. ARGV[3], 'PX', ARGV[2])
return 1
";

/// `complete` of a response larger than [`RESERVED_RECORD_BYTES`]: refused at `maxmemory`.
/// Never re-sent by the store itself: a second `complete` of a completed record is refused,
/// so a re-sent one whose first attempt succeeded would answer "lease lost".
pub(crate) static COMPLETE: LazyLock<Script> =
    LazyLock::new(|| Script::new("", COMPLETE_TAIL, Resend::Never));

/// `complete` of a response of at most [`RESERVED_RECORD_BYTES`]: runs at `maxmemory` too.
pub(crate) static COMPLETE_SMALL: LazyLock<Script> =
    LazyLock::new(|| Script::new(" flags=allow-oom", COMPLETE_TAIL, Resend::Never));

/// `ARGV[2]`: the new lease in milliseconds, from now. Idempotent (the lease is set, not
/// added to), so it may be re-sent after its reply was lost.
pub(crate) static RENEW: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        " flags=allow-oom",
        "
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
",
        Resend::Safe,
    )
});

/// Deletes the in-flight record.
pub(crate) static RELEASE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        " flags=allow-oom",
        "
redis.call('DEL', KEYS[1])
return 1
",
        Resend::Never,
    )
});

/// The `complete` script for a response of `len` bytes.
pub(crate) fn complete_for(len: usize) -> &'static Script {
    if len <= RESERVED_RECORD_BYTES {
        &COMPLETE_SMALL
    } else {
        &COMPLETE
    }
}

/// Every script, for loading them up front.
pub(crate) fn all() -> [&'static Script; 4] {
    [&COMPLETE, &COMPLETE_SMALL, &RENEW, &RELEASE]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_declare_their_flags_and_differ() {
        assert!(COMPLETE.body.starts_with("#!lua\n"));
        for script in [&*COMPLETE_SMALL, &*RENEW, &*RELEASE] {
            assert!(script.body.starts_with("#!lua flags=allow-oom\n"));
        }
        let mut shas: Vec<_> = all().iter().map(|s| s.sha.clone()).collect();
        shas.sort();
        shas.dedup();
        assert_eq!(shas.len(), 4);
        assert_eq!(shas[0].len(), 40);
        assert!(std::ptr::eq(complete_for(0), &*COMPLETE_SMALL));
        assert!(std::ptr::eq(
            complete_for(RESERVED_RECORD_BYTES),
            &*COMPLETE_SMALL
        ));
        assert!(std::ptr::eq(
            complete_for(RESERVED_RECORD_BYTES + 1),
            &*COMPLETE
        ));
    }
}
