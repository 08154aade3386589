//! The stored response and its compact, versioned encoding.
//!
//! Every store keeps the same bytes, so a record written by one instance (or one version of
//! this crate, within a format version) replays identically on another:
//!
//! ```text
//! u8  format version (2; version 1, without trailers, is still read)
//! u8  kind: 0 = complete response, 1 = body not kept
//! u16 status
//! u16 header count, then per header: u16 name length, name, u32 value length, value
//! u16 trailer count, then the trailers as the headers            (version 2 only)
//! ..  body (the rest)
//! ```
//! All integers are big-endian. Decoding slices the body out of the stored buffer: a replay
//! copies no body bytes.

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};

use crate::store::RESERVED_RECORD_BYTES;

const FORMAT_V1: u8 = 1;
const FORMAT_V2: u8 = 2;

/// Whether the record holds the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyKept {
    Yes,
    /// The request ran, but its body could not be kept (too large for the storage limit or
    /// the store, or it broke off mid-stream): only status and headers were kept, so a retry
    /// learns what happened without the request running again.
    No,
}

/// A response as stored for replay.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) trailers: Option<HeaderMap>,
    pub(crate) body: Bytes,
    pub(crate) kept: BodyKept,
}

/// Why a stored record could not be decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DecodeError;

impl StoredResponse {
    /// The smallest record that still tells a retry what happened: the status and where the
    /// first request put what it created (`Location`), body not kept. It always fits in the
    /// room a store reserves per claim ([`RESERVED_RECORD_BYTES`]).
    pub(crate) fn not_kept(status: StatusCode, headers: &HeaderMap) -> Bytes {
        let mut kept = HeaderMap::new();
        if let Some(location) = headers.get(header::LOCATION) {
            // A Location that would not fit is dropped rather than risk the record itself.
            if location.len() <= RESERVED_RECORD_BYTES / 2 {
                kept.insert(header::LOCATION, location.clone());
            }
        }
        let record = Self {
            status,
            headers: kept,
            trailers: None,
            body: Bytes::new(),
            kept: BodyKept::No,
        }
        .encode();
        debug_assert!(record.len() <= RESERVED_RECORD_BYTES);
        record
    }

    pub(crate) fn encode(&self) -> Bytes {
        encode(
            self.status,
            &self.headers,
            |_| true,
            self.trailers.as_ref(),
            &self.body,
            self.kept,
        )
    }

    pub(crate) fn decode(bytes: &Bytes) -> Result<Self, DecodeError> {
        let mut cursor = Cursor { bytes, pos: 0 };
        let version = cursor.u8()?;
        if version != FORMAT_V1 && version != FORMAT_V2 {
            return Err(DecodeError);
        }
        let kept = match cursor.u8()? {
            0 => BodyKept::Yes,
            1 => BodyKept::No,
            _ => return Err(DecodeError),
        };
        let status = StatusCode::from_u16(cursor.u16()?).map_err(|_| DecodeError)?;
        let headers = cursor.fields()?;
        let trailers = match version {
            FORMAT_V2 => Some(cursor.fields()?).filter(|t| !t.is_empty()),
            _ => None,
        };
        Ok(Self {
            status,
            headers,
            trailers,
            body: bytes.slice(cursor.pos..),
            kept,
        })
    }
}

/// Encodes a response from its parts, keeping the header fields `keep` accepts (the layer
/// keeps the replayable ones of the handler's response, without copying them first).
pub(crate) fn encode(
    status: StatusCode,
    headers: &HeaderMap,
    keep: impl Fn(&HeaderName) -> bool,
    trailers: Option<&HeaderMap>,
    body: &[u8],
    kept: BodyKept,
) -> Bytes {
    let fields_len = |map: &HeaderMap, keep: &dyn Fn(&HeaderName) -> bool| -> usize {
        map.iter()
            .filter(|(n, _)| keep(n))
            .map(|(n, v)| 6 + n.as_str().len() + v.len())
            .sum()
    };
    let trailers_len = trailers.map_or(0, |t| fields_len(t, &|_| true));
    let mut out =
        BytesMut::with_capacity(8 + fields_len(headers, &keep) + trailers_len + body.len());
    out.put_u8(FORMAT_V2);
    out.put_u8(match kept {
        BodyKept::Yes => 0,
        BodyKept::No => 1,
    });
    out.put_u16(status.as_u16());
    put_fields(&mut out, headers, &keep);
    match trailers {
        Some(trailers) => put_fields(&mut out, trailers, &|_| true),
        None => out.put_u16(0),
    }
    out.put_slice(body);
    out.freeze()
}

fn put_fields(out: &mut BytesMut, fields: &HeaderMap, keep: &dyn Fn(&HeaderName) -> bool) {
    // HeaderMap caps itself far below u16::MAX entries, and names below u16::MAX bytes.
    let count = fields.iter().filter(|(name, _)| keep(name)).count();
    out.put_u16(count as u16);
    for (name, value) in fields.iter().filter(|(name, _)| keep(name)) {
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
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

    fn fields(&mut self) -> Result<HeaderMap, DecodeError> {
        let count = usize::from(self.u16()?);
        let mut fields = HeaderMap::with_capacity(count);
        for _ in 0..count {
            let len = usize::from(self.u16()?);
            let name = HeaderName::from_bytes(self.take(len)?).map_err(|_| DecodeError)?;
            let len = self.u32()? as usize;
            let value = HeaderValue::from_bytes(self.take(len)?).map_err(|_| DecodeError)?;
            fields.append(name, value);
        }
        Ok(fields)
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
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        StoredResponse {
            status: StatusCode::CREATED,
            headers,
            trailers: Some(trailers),
            body: Bytes::from((0..=255u8).collect::<Vec<_>>()),
            kept: BodyKept::Yes,
        }
    }

    #[test]
    fn reads_version_1_records() {
        // status 201, one header "a: b", body "xy", as version 1 wrote it.
        let v1 = Bytes::from_static(b"\x01\x00\x00\xc9\x00\x01\x00\x01a\x00\x00\x00\x01bxy");
        let decoded = StoredResponse::decode(&v1).unwrap();
        assert_eq!(decoded.status, StatusCode::CREATED);
        assert_eq!(decoded.headers["a"], "b");
        assert_eq!(decoded.trailers, None);
        assert_eq!(&decoded.body[..], b"xy");
    }

    #[test]
    fn not_kept_records_fit_the_reserved_room() {
        let mut headers = HeaderMap::new();
        headers.insert("x-large", HeaderValue::from_str(&"v".repeat(4000)).unwrap());
        headers.insert(header::LOCATION, HeaderValue::from_static("/orders/7"));
        let record = StoredResponse::not_kept(StatusCode::CREATED, &headers);
        assert!(record.len() <= RESERVED_RECORD_BYTES);
        let decoded = StoredResponse::decode(&record).unwrap();
        assert_eq!(decoded.kept, BodyKept::No);
        assert_eq!(decoded.headers.len(), 1);
        assert_eq!(decoded.headers[header::LOCATION], "/orders/7");
        let long = HeaderValue::from_str(&format!("/{}", "l".repeat(4000))).unwrap();
        headers.insert(header::LOCATION, long);
        let record = StoredResponse::not_kept(StatusCode::CREATED, &headers);
        assert!(record.len() <= RESERVED_RECORD_BYTES);
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
        other[0] = 3;
        assert_eq!(
            StoredResponse::decode(&Bytes::from(other)),
            Err(DecodeError)
        );
    }
}
