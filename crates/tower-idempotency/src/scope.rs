//! [`Scope`]: who a key belongs to.

use std::fmt;

/// Who a key belongs to: the bytes of a user id, tenant id or API-key id.
///
/// Keys are only ever compared within one scope, so two users who pick the same key get two
/// records. Build one with `From` (strings, integers, bytes).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Box<[u8]>);

impl Scope {
    /// The scope's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Scopes identify users: keep them out of logs.
        f.write_str("Scope(..)")
    }
}

impl From<&str> for Scope {
    fn from(s: &str) -> Self {
        Self(s.as_bytes().into())
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        Self(s.into_bytes().into_boxed_slice())
    }
}

impl From<&[u8]> for Scope {
    fn from(b: &[u8]) -> Self {
        Self(b.into())
    }
}

impl From<Vec<u8>> for Scope {
    fn from(b: Vec<u8>) -> Self {
        Self(b.into_boxed_slice())
    }
}

impl From<u64> for Scope {
    fn from(n: u64) -> Self {
        Self(n.to_be_bytes().into())
    }
}

impl From<i64> for Scope {
    fn from(n: i64) -> Self {
        Self(n.to_be_bytes().into())
    }
}
