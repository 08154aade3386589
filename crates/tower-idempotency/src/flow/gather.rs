//! Gathering a body's data frames into one buffer.
//!
//! Written here rather than `http_body_util::BodyExt::collect` because nearly every body the
//! layer buffers arrives in one frame: that frame is kept as it is, and nothing is allocated
//! or copied, where `Collected` keeps a queue of frames and allocates it per body.

use bytes::{Bytes, BytesMut};

/// The data frames of a body so far.
#[derive(Debug, Default)]
pub(crate) enum Gathered {
    #[default]
    Empty,
    /// One frame, as received.
    One(Bytes),
    /// Several, copied together.
    Many(BytesMut),
}

impl Gathered {
    pub(crate) fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        *self = match std::mem::take(self) {
            Self::Empty => Self::One(data),
            Self::One(first) => {
                let mut many = BytesMut::with_capacity(first.len() + data.len());
                many.extend_from_slice(&first);
                many.extend_from_slice(&data);
                Self::Many(many)
            }
            Self::Many(mut many) => {
                many.extend_from_slice(&data);
                Self::Many(many)
            }
        };
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Empty => 0,
            Self::One(bytes) => bytes.len(),
            Self::Many(bytes) => bytes.len(),
        }
    }

    pub(crate) fn into_bytes(self) -> Bytes {
        match self {
            Self::Empty => Bytes::new(),
            Self::One(bytes) => bytes,
            Self::Many(bytes) => bytes.freeze(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_frame_is_kept_as_it_is() {
        let frame = Bytes::from(vec![1, 2, 3]);
        let mut gathered = Gathered::default();
        gathered.push(Bytes::new());
        gathered.push(frame.clone());
        let bytes = gathered.into_bytes();
        assert_eq!(bytes.as_ptr(), frame.as_ptr(), "not copied");
    }

    #[test]
    fn frames_are_joined_in_order() {
        let mut gathered = Gathered::default();
        for part in [&b"ab"[..], b"", b"c", b"def"] {
            gathered.push(Bytes::copy_from_slice(part));
        }
        assert_eq!(gathered.len(), 6);
        assert_eq!(&gathered.into_bytes()[..], b"abcdef");
        assert!(Gathered::default().into_bytes().is_empty());
    }
}
