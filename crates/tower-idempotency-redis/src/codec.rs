//! The value layout of one record (see the crate docs).

use bytes::Bytes;
use tower_idempotency::{
    Fingerprint,
    store::{Claim, CompletedRecord, FencingToken, StoreError, StoreErrorKind},
};

/// State byte of an in-flight record.
pub(crate) const IN_FLIGHT: u8 = b'I';
/// State byte of a completed record.
pub(crate) const COMPLETED: u8 = b'C';
/// State byte, fingerprint, token.
pub(crate) const HEADER_LEN: usize = 1 + Fingerprint::LEN + TOKEN_LEN;
/// A fencing token, big-endian.
pub(crate) const TOKEN_LEN: usize = 8;

/// The value of a fresh in-flight record.
pub(crate) fn in_flight(fingerprint: &Fingerprint, token: FencingToken) -> [u8; HEADER_LEN] {
    let mut value = [0; HEADER_LEN];
    value[0] = IN_FLIGHT;
    value[1..=Fingerprint::LEN].copy_from_slice(fingerprint.as_bytes());
    value[1 + Fingerprint::LEN..].copy_from_slice(&token.get().to_be_bytes());
    value
}

/// The token as the scripts compare it.
pub(crate) fn token_bytes(token: FencingToken) -> [u8; TOKEN_LEN] {
    token.get().to_be_bytes()
}

/// Decodes what the claiming `SET ... NX GET` found under the key, for the claim that tried
/// to create it with `token`.
///
/// An in-flight record under `token` itself is this very claim: an earlier attempt of the same
/// command (re-sent after its reply was lost, by the cluster client or after a reconnection)
/// created it. It is [`Claim::Acquired`], not someone else's claim in flight.
pub(crate) fn decode_claim(value: Vec<u8>, token: FencingToken) -> Result<Claim, StoreError> {
    if value.len() == HEADER_LEN
        && value[0] == IN_FLIGHT
        && value[1 + Fingerprint::LEN..] == token_bytes(token)
    {
        return Ok(Claim::Acquired(token));
    }
    decode(value)
}

/// Decodes an existing record (the reply of the claiming `SET ... GET`).
///
/// Takes the value by ownership so a completed response is sliced out without a copy.
pub(crate) fn decode(value: Vec<u8>) -> Result<Claim, StoreError> {
    if value.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "a stored value is {} bytes, shorter than the {HEADER_LEN}-byte header",
            value.len()
        )));
    }
    let mut fingerprint = [0; Fingerprint::LEN];
    fingerprint.copy_from_slice(&value[1..=Fingerprint::LEN]);
    let fingerprint = Fingerprint::from_bytes(fingerprint);
    match value[0] {
        IN_FLIGHT if value.len() == HEADER_LEN => Ok(Claim::InFlight { fingerprint }),
        IN_FLIGHT => Err(corrupt(format!(
            "an in-flight value is {} bytes, not {HEADER_LEN}",
            value.len()
        ))),
        COMPLETED => Ok(Claim::Completed(CompletedRecord {
            fingerprint,
            response: Bytes::from(value).slice(HEADER_LEN..),
        })),
        other => Err(corrupt(format!(
            "a stored value has the unknown state byte {other:#04x}"
        ))),
    }
}

pub(crate) fn corrupt(message: impl Into<Box<str>>) -> StoreError {
    StoreError::new(StoreErrorKind::Corrupt, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FP: Fingerprint = Fingerprint::from_bytes([0xab; Fingerprint::LEN]);

    #[test]
    fn in_flight_round_trips() {
        let value = in_flight(&FP, FencingToken::new(0x0102_0304_0506_0708));
        assert_eq!(value[0], b'I');
        assert_eq!(&value[17..], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(
            decode(value.to_vec()).unwrap(),
            Claim::InFlight { fingerprint: FP }
        );
    }

    #[test]
    fn a_claim_recognises_its_own_record() {
        let token = FencingToken::new(0x0102_0304_0506_0708);
        let own = in_flight(&FP, token).to_vec();
        assert_eq!(decode_claim(own, token).unwrap(), Claim::Acquired(token));
        // Someone else's claim in flight, even with our fingerprint, is in flight.
        let other = in_flight(&FP, FencingToken::new(9)).to_vec();
        assert_eq!(
            decode_claim(other, token).unwrap(),
            Claim::InFlight { fingerprint: FP }
        );
        // A completed record keeps the token of its owner: it is completed, not ours to run.
        let mut completed = in_flight(&FP, token).to_vec();
        completed[0] = COMPLETED;
        assert!(matches!(
            decode_claim(completed, token).unwrap(),
            Claim::Completed(_)
        ));
    }

    #[test]
    fn completed_keeps_the_response_bytes() {
        let mut value = in_flight(&FP, FencingToken::new(7)).to_vec();
        value[0] = b'C';
        value.extend_from_slice(b"\0\xffbody");
        match decode(value).unwrap() {
            Claim::Completed(record) => {
                assert_eq!(record.fingerprint, FP);
                assert_eq!(&record.response[..], b"\0\xffbody");
            }
            other => panic!("expected Completed, got {other:?}"),
        }
        let mut empty = in_flight(&FP, FencingToken::new(7)).to_vec();
        empty[0] = b'C';
        assert!(matches!(decode(empty).unwrap(), Claim::Completed(r) if r.response.is_empty()));
    }

    #[test]
    fn malformed_values_are_corrupt() {
        let mut long_in_flight = in_flight(&FP, FencingToken::new(7)).to_vec();
        long_in_flight.push(0);
        let mut unknown_state = in_flight(&FP, FencingToken::new(7));
        unknown_state[0] = b'X';
        for value in [
            Vec::new(),
            b"hello".to_vec(),
            long_in_flight,
            unknown_state.to_vec(),
        ] {
            let error = decode(value).unwrap_err();
            assert_eq!(error.kind(), StoreErrorKind::Corrupt);
        }
    }
}
