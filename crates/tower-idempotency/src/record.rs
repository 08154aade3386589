//! The stored response and its compact, versioned encoding.
//!
//! Every store keeps the same bytes, so a record written by one instance (or one version of
//! this crate, within a format version) replays identically on another:
//!
//! ```text
//! u8  format version (1)
//! u8  kind: 0 = complete response, 1 = response too large, body not kept
//! u16 status
//! u16 header count, then per header: u16 name length, name, u32 value length, value
//! ..  body (the rest)
//! ```
//! All integers are big-endian. Decoding slices the body out of the stored buffer: a replay
//! copies no body bytes.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

const FORMAT_V1: u8 = 1;

/// Whether the record holds the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKept {
    Yes,
    /// The body exceeded the storage limit: only status and headers were kept, so a retry
    /// learns what happened without the request running again.
    TooLarge,
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    pub(crate) kept: BodyKept,
}

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError;

impl StoredResponse {
    pub(crate) fn encode(&self) -> Bytes {
        let headers_len: usize = self
            .headers
            .iter()
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum();
        let mut out = BytesMut::with_capacity(6 + headers_len + self.body.len());
        out.put_u8(FORMAT_V1);
        out.put_u8(match self.kept {
            BodyKept::Yes => 0,
            BodyKept::TooLarge => 1,
        });
        out.put_u16(self.status.as_u16());
        // HeaderMap caps itself far below u16::MAX entries, and names below u16::MAX bytes.
        out.put_u16(self.headers.len() as u16);
        for (name, value) in &self.headers {
            out.put_u16(name.as_str().len() as u16);
            out.put_slice(name.as_str().as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value.as_bytes());
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    pub(crate) fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        let mut cursor = Cursor { bytes, pos: 0 };
        if cursor.u8()? != FORMAT_V1 {
            return Err(DecodeError);
        }
        let kept = match cursor.u8()? {
            0 => BodyKept::Yes,
            1 => BodyKept::TooLarge,
            _ => return Err(DecodeError),
        };
        let status = StatusCode::from_u16(cursor.u16()?).map_err(|_| DecodeError)?;
        let count = usize::from(cursor.u16()?);
        let mut headers = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(cursor.u16()?);
            let name = HeaderName::from_bytes(cursor.take(len)?).map_err(|_| DecodeError)?;
            let len = cursor.u32()? as usize;
            let value = HeaderValue::from_bytes(cursor.take(len)?).map_err(|_| DecodeError)?;
            headers.append(name, value);
        }
        Ok(Self {
            status,
            headers,
            body: bytes.slice(cursor.pos..),
            kept,
        })
    }
}

struct Cursor<'a> {
    bytes: &'a Bytes,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let bytes: &'a [u8] = self.bytes;
        let slice = bytes.get(self.pos..self.pos + n).ok_or(DecodeError)?;
        self.pos += n;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> StoredResponse {
        let mut headers = HeaderMap::new();
        headers.insert("location", HeaderValue::from_static("/api/deployments/1"));
        headers.append("x-multi", HeaderValue::from_static("a"));
        headers.append("x-multi", HeaderValue::from_static("b"));
        headers.insert(
            "x-binary",
            HeaderValue::from_bytes(b"caf\xe9 \xff").unwrap(),
        );
        StoredResponse {
            status: StatusCode::CREATED,
            headers,
            body: Bytes::from((0..=255u8).collect::<Vec<_>>()),
            kept: BodyKept::Yes,
        }
    }

    #[test]
    fn round_trips_byte_for_byte() {
        let original = sample();
        let encoded = original.encode();
        let decoded = StoredResponse::decode(&encoded).unwrap();
        assert_eq!(decoded, original);
        let multi: Vec<_> = decoded.headers.get_all("x-multi").iter().collect();
        assert_eq!(multi, ["a", "b"]);
    }

    #[test]
    fn rejects_truncated_and_unknown_versions() {
        let encoded = sample().encode();
        for cut in 0..encoded.len() - 256 {
            assert_eq!(
                StoredResponse::decode(&encoded.slice(..cut)),
                Err(DecodeError),
                "cut at {cut}"
            );
        }
        let mut other = encoded.to_vec();
        other[0] = 2;
        assert_eq!(
            StoredResponse::decode(&Bytes::from(other)),
            Err(DecodeError)
        );
    }
}
