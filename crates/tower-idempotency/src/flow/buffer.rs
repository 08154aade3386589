//! Reading the handler's response to decide what to store.

use std::pin::Pin;

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Response};
use http_body::Body;
use http_body_util::BodyExt;

use super::{answer::problem_response, gather::Gathered};
use crate::{
    body::ResponseBody,
    layer::Config,
    policy::{forbids_storing, replayable},
    problem::ProblemKind,
    record::{self, BodyKept, StoredResponse},
};

/// What to do with the store once the handler's response is in.
pub(crate) enum Finished<B> {
    /// Complete the record with `record`; should the store have no room for it, and it is
    /// not `small` already, with a "ran, not kept" record of the response's status and
    /// `Location` (built only then: it fits the room every claim reserves).
    Store {
        record: Bytes,
        small: bool,
        response: Response<ResponseBody<B>>,
    },
    /// The response is not to be kept (status policy, `no-store`): free the key.
    Release { response: Response<ResponseBody<B>> },
}

/// A plain function returning an `async` block: see [`run`](super::run) for why.
pub(crate) fn finish_response<'a, St, B>(
    config: &'a Config<St>,
    response: Response<B>,
) -> impl Future<Output = Finished<B>> + 'a
where
    B: Body<Data = Bytes> + 'a,
{
    let (parts, body) = response.into_parts();
    async move {
        if !(config.store_status)(parts.status) || forbids_storing(&parts.headers) {
            return Finished::Release {
                response: Response::from_parts(parts, ResponseBody::inner(body)),
            };
        }
        let stored = |body: &[u8], trailers: Option<&HeaderMap>, kept: BodyKept| {
            let keep = |name: &HeaderName| replayable(&parts.headers, name);
            record::encode(parts.status, &parts.headers, keep, trailers, body, kept)
        };
        match buffer_response(body, config.max_response_body).await {
            Buffered::Complete { data, trailers } => Finished::Store {
                record: stored(&data, trailers.as_ref(), BodyKept::Yes),
                small: false,
                response: Response::from_parts(
                    parts,
                    ResponseBody::full_with_trailers(data, trailers),
                ),
            },
            Buffered::TooLarge { prefix, rest } => Finished::Store {
                record: stored(&[], None, BodyKept::No),
                small: false,
                response: Response::from_parts(parts, ResponseBody::prefixed(prefix, rest)),
            },
            // The body broke off before anything was sent: the caller must not mistake what
            // arrived for the whole response, and the handler's effects happened, so the key
            // stays taken ("ran, not kept") instead of inviting a silent re-run.
            Buffered::Failed => {
                tracing::error!("the response body failed after the handler ran");
                Finished::Store {
                    record: StoredResponse::not_kept(parts.status, &parts.headers),
                    small: true,
                    response: problem_response(config, ProblemKind::ResponseFailed),
                }
            }
        }
    }
}

enum Buffered<B> {
    Complete {
        data: Bytes,
        trailers: Option<HeaderMap>,
    },
    TooLarge {
        prefix: Bytes,
        rest: Pin<Box<B>>,
    },
    Failed,
}

/// Reads up to `limit` bytes of `body` (and its trailers); past the limit, hands back what
/// was read and the unread rest, so the caller still gets the whole body.
async fn buffer_response<B>(body: B, limit: usize) -> Buffered<B>
where
    B: Body<Data = Bytes>,
{
    let mut body = Box::pin(body);
    let mut data = Gathered::default();
    let mut trailers: Option<HeaderMap> = None;
    loop {
        match body.frame().await {
            None => {
                return Buffered::Complete {
                    data: data.into_bytes(),
                    trailers,
                };
            }
            Some(Err(_)) => return Buffered::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(chunk) => {
                    data.push(chunk);
                    if data.len() > limit {
                        return Buffered::TooLarge {
                            prefix: data.into_bytes(),
                            rest: body,
                        };
                    }
                }
                Err(frame) => {
                    if let Ok(more) = frame.into_trailers() {
                        trailers.get_or_insert_with(HeaderMap::new).extend(more);
                    }
                }
            },
        }
    }
}
