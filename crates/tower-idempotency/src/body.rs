//! The request and response body types of the layer.
//!
//! Requests with a key are buffered (up to the request limit) to be fingerprinted; the inner
//! service then reads them from memory. Responses are the inner body, a replay from the store,
//! a problem, or a response whose first part was buffered while the layer tried to store it.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives.
    #[derive(Debug)]
    pub struct RequestBody<B> {
        #[pin]
        inner: RequestInner<B>,
    }
}

pin_project! {
    #[project = RequestInnerProj]
    #[derive(Debug)]
    enum RequestInner<B> {
        Buffered { data: Option<Bytes> },
        Streaming { #[pin] body: B },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn buffered(data: Bytes) -> Self {
        Self {
            inner: RequestInner::Buffered {
                data: (!data.is_empty()).then_some(data),
            },
        }
    }

    pub(crate) fn streaming(body: B) -> Self {
        Self {
            inner: RequestInner::Streaming { body },
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            RequestInnerProj::Buffered { data } => {
                Poll::Ready(data.take().map(|d| Ok(Frame::data(d))))
            }
            RequestInnerProj::Streaming { body } => body.poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            RequestInner::Buffered { data } => data.is_none(),
            RequestInner::Streaming { body } => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            RequestInner::Buffered { data } => exact(data.as_ref()),
            RequestInner::Streaming { body } => body.size_hint(),
        }
    }
}

pin_project! {
    /// The response body of the layer.
    #[derive(Debug)]
    pub struct ResponseBody<B> {
        #[pin]
        inner: ResponseInner<B>,
    }
}

pin_project! {
    #[project = ResponseInnerProj]
    #[derive(Debug)]
    enum ResponseInner<B> {
        Full { data: Option<Bytes>, trailers: Option<HeaderMap> },
        Inner { #[pin] body: B },
        Prefixed { prefix: Option<Bytes>, rest: Pin<Box<B>> },
    }
}

impl<B> ResponseBody<B> {
    /// A body held in memory (a replay, a problem, a stored response).
    pub(crate) fn full(data: Bytes) -> Self {
        Self::full_with_trailers(data, None)
    }

    /// A body held in memory, followed by its trailers.
    pub(crate) fn full_with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            inner: ResponseInner::Full {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// The inner service's body, untouched.
    pub(crate) fn inner(body: B) -> Self {
        Self {
            inner: ResponseInner::Inner { body },
        }
    }

    /// Chunks already read from `rest`, followed by the remainder of `rest`.
    pub(crate) fn prefixed(prefix: Bytes, rest: Pin<Box<B>>) -> Self {
        Self {
            inner: ResponseInner::Prefixed {
                prefix: Some(prefix),
                rest,
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            ResponseInnerProj::Full { data, trailers } => Poll::Ready(
                data.take()
                    .map(Frame::data)
                    .or_else(|| trailers.take().map(Frame::trailers))
                    .map(Ok),
            ),
            ResponseInnerProj::Inner { body } => body.poll_frame(cx),
            ResponseInnerProj::Prefixed { prefix, rest } => match prefix.take() {
                Some(chunk) => Poll::Ready(Some(Ok(Frame::data(chunk)))),
                None => rest.as_mut().poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            ResponseInner::Full { data, trailers } => data.is_none() && trailers.is_none(),
            ResponseInner::Inner { body } => body.is_end_stream(),
            ResponseInner::Prefixed { prefix, rest } => prefix.is_none() && rest.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            ResponseInner::Full { data, .. } => exact(data.as_ref()),
            ResponseInner::Inner { body } => body.size_hint(),
            ResponseInner::Prefixed { prefix, rest } => {
                let buffered = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let rest = rest.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(rest.lower() + buffered);
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + buffered);
                }
                hint
            }
        }
    }
}

fn exact(data: Option<&Bytes>) -> SizeHint {
    SizeHint::with_exact(data.map_or(0, |d| d.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};

    #[tokio::test]
    async fn prefixed_body_yields_prefix_then_rest() {
        let rest = Full::new(Bytes::from_static(b"c"));
        let body = ResponseBody::prefixed(Bytes::from_static(b"ab"), Box::pin(rest));
        assert_eq!(body.size_hint().exact(), Some(3));
        let bytes = body.collect().await.unwrap().to_bytes();
        assert_eq!(&bytes[..], b"abc");
    }

    #[tokio::test]
    async fn full_body_ends_with_its_trailers() {
        let mut trailers = HeaderMap::new();
        trailers.insert("x-checksum", http::HeaderValue::from_static("abc"));
        let body = ResponseBody::<Full<Bytes>>::full_with_trailers(
            Bytes::from_static(b"data"),
            Some(trailers.clone()),
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers(), Some(&trailers));
        assert_eq!(&collected.to_bytes()[..], b"data");
    }

    #[tokio::test]
    async fn buffered_request_body_reports_exact_size() {
        let body = RequestBody::<Full<Bytes>>::buffered(Bytes::from_static(b"hello"));
        assert_eq!(body.size_hint().exact(), Some(5));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"hello");
        let empty = RequestBody::<Full<Bytes>>::buffered(Bytes::new());
        assert!(empty.is_end_stream());
    }
}
