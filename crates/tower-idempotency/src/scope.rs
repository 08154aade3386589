//! [`Scope`]: who a key belongs to.

use std::fmt;

/// Tag byte of a scope built from text or bytes.
const BYTES: u8 = 0;
/// Tag byte of a scope built from an integer.
const INTEGER: u8 = 1;

/// Who a key belongs to: a user id, tenant id or API-key id.
///
/// Keys are only ever compared within one scope, so two users who pick the same key get two
/// records. Build one with `From`:
///
/// - text and bytes (`&str`, `String`, `&[u8]`, `Vec<u8>`): equal bytes are the same scope,
///   whichever of these types they came in;
/// - integers (`u32`, `i32`, `u64`, `i64`, `u128`, `i128`): equal numeric values are the same
///   scope, whichever of these types they came in (`-1i64` and `u64::MAX` are not equal);
/// - an integer is never the same scope as any text or bytes: `Scope::from(7u64)` and
///   `Scope::from("7")` (or any 8-byte string) are different users.
///
/// ```
/// use tower_idempotency::Scope;
///
/// assert_eq!(Scope::from("alice"), Scope::from(b"alice".to_vec()));
/// assert_eq!(Scope::from(7u64), Scope::from(7i32));
/// assert_ne!(Scope::from(7u64), Scope::from(&7u64.to_be_bytes()[..]));
/// assert_ne!(Scope::from(-1i64), Scope::from(u64::MAX));
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scope(Box<[u8]>);

impl Scope {
    /// The scope's tagged encoding: what the record id hashes (see
    /// [`RecordId::new`](crate::store::RecordId::new)).
    ///
    /// One byte says what the scope was built from, so that different kinds of scope never
    /// share bytes:
    ///
    /// - `0x00` followed by the bytes, for text and bytes (a string's UTF-8);
    /// - `0x01` followed by the integer as a 17-byte big-endian two's-complement number, for
    ///   integers (wide enough for every `i128` and every `u128`).
    ///
    /// ```
    /// use tower_idempotency::Scope;
    ///
    /// assert_eq!(Scope::from("ab").as_bytes(), b"\x00ab");
    /// assert_eq!(Scope::from(7u32).as_bytes(), [&[1][..], &[0; 16], &[7]].concat());
    /// assert_eq!(Scope::from(-1i64).as_bytes(), [1].into_iter().chain([0xff; 17]).collect::<Vec<u8>>());
    /// ```
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn bytes(bytes: &[u8]) -> Self {
        let mut tagged = Vec::with_capacity(1 + bytes.len());
        tagged.push(BYTES);
        tagged.extend_from_slice(bytes);
        Self(tagged.into_boxed_slice())
    }

    /// `low` is the value modulo 2^128; `negative` its sign (the 129th and higher bits).
    fn integer(negative: bool, low: u128) -> Self {
        let mut tagged = [0; 18];
        tagged[0] = INTEGER;
        tagged[1] = if negative { 0xff } else { 0 };
        tagged[2..].copy_from_slice(&low.to_be_bytes());
        Self(Box::new(tagged))
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
        Self::bytes(s.as_bytes())
    }
}

impl From<String> for Scope {
    fn from(s: String) -> Self {
        Self::bytes(s.as_bytes())
    }
}

impl From<&[u8]> for Scope {
    fn from(b: &[u8]) -> Self {
        Self::bytes(b)
    }
}

impl From<Vec<u8>> for Scope {
    fn from(b: Vec<u8>) -> Self {
        Self::bytes(&b)
    }
}

impl From<u128> for Scope {
    fn from(n: u128) -> Self {
        Self::integer(false, n)
    }
}

impl From<i128> for Scope {
    fn from(n: i128) -> Self {
        // Two's complement: the low 128 bits are `n as u128`, the sign extends above them.
        Self::integer(n < 0, n as u128)
    }
}

macro_rules! from_integer {
    ($($ty:ty => $wide:ty),* $(,)?) => {$(
        impl From<$ty> for Scope {
            fn from(n: $ty) -> Self {
                Self::from(<$wide>::from(n))
            }
        }
    )*};
}

from_integer!(u32 => u128, u64 => u128, i32 => i128, i64 => i128);

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn text_and_bytes_with_equal_bytes_are_one_scope() {
        let all = [
            Scope::from("tenant-7"),
            Scope::from(String::from("tenant-7")),
            Scope::from(&b"tenant-7"[..]),
            Scope::from(b"tenant-7".to_vec()),
        ];
        for s in &all {
            assert_eq!(s, &all[0]);
            assert_eq!(s.as_bytes(), b"\x00tenant-7");
        }
        assert_ne!(Scope::from("tenant-7"), Scope::from("tenant-8"));
        assert_ne!(Scope::from(""), Scope::from("\0"));
        assert_eq!(Scope::from("").as_bytes(), [0]);
    }

    #[test]
    fn integers_with_equal_values_are_one_scope() {
        let seven = [
            Scope::from(7u32),
            Scope::from(7i32),
            Scope::from(7u64),
            Scope::from(7i64),
            Scope::from(7u128),
            Scope::from(7i128),
        ];
        for s in &seven {
            assert_eq!(s, &seven[0]);
        }
        let minus_one = [Scope::from(-1i32), Scope::from(-1i64), Scope::from(-1i128)];
        for s in &minus_one {
            assert_eq!(s, &minus_one[0]);
        }
        assert_eq!(Scope::from(u64::MAX), Scope::from(i128::from(u64::MAX)));
        assert_eq!(Scope::from(i64::MIN), Scope::from(i128::from(i64::MIN)));
        assert_eq!(Scope::from(u32::MAX), Scope::from(i64::from(u32::MAX)));
        assert_eq!(Scope::from(0u64), Scope::from(0i32));
    }

    #[test]
    fn integers_with_different_values_differ() {
        // Negative values never meet large unsigned ones of the same bit pattern.
        assert_ne!(Scope::from(-1i64), Scope::from(u64::MAX));
        assert_ne!(Scope::from(-1i32), Scope::from(u32::MAX));
        assert_ne!(Scope::from(-1i128), Scope::from(u128::MAX));
        assert_ne!(Scope::from(i128::MIN), Scope::from(1u128 << 127));
        assert_ne!(Scope::from(i64::MIN), Scope::from(1u64 << 63));
        assert_ne!(Scope::from(7u64), Scope::from(8u64));
        assert_ne!(Scope::from(0u64), Scope::from(-1i64));
        // Every integer scope has the same length, so none is a prefix of another.
        for s in [
            Scope::from(0u32),
            Scope::from(u128::MAX),
            Scope::from(i128::MIN),
        ] {
            assert_eq!(s.as_bytes().len(), 18);
            assert_eq!(s.as_bytes()[0], 1);
        }
    }

    #[test]
    fn integers_never_equal_text_or_bytes() {
        for n in [0u64, 7, u64::MAX] {
            let int = Scope::from(n);
            assert_ne!(int, Scope::from(&n.to_be_bytes()[..]), "{n}");
            assert_ne!(int, Scope::from(n.to_be_bytes().to_vec()), "{n}");
            assert_ne!(int, Scope::from(n.to_string()), "{n}");
            // Not even the text that spells the integer's own encoding.
            assert_ne!(int, Scope::from(&int.as_bytes()[1..]), "{n}");
            assert_ne!(int, Scope::from(int.as_bytes()), "{n}");
        }
        assert_ne!(Scope::from(-1i64), Scope::from(&(-1i64).to_be_bytes()[..]));
        assert_ne!(Scope::from(0u128), Scope::from(&[0u8; 16][..]));
    }

    #[test]
    fn integer_encoding_is_seventeen_byte_twos_complement() {
        let mut minus_two = vec![1, 0xff];
        minus_two.extend_from_slice(&[0xff; 15]);
        minus_two.push(0xfe);
        assert_eq!(Scope::from(-2i64).as_bytes(), minus_two);
        let mut max = vec![1, 0];
        max.extend_from_slice(&[0xff; 16]);
        assert_eq!(Scope::from(u128::MAX).as_bytes(), max);
    }
}
