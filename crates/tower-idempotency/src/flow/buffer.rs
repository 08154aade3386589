//! Reading the handler's response to decide what to store.

use std::{collections::VecDeque, pin::Pin};

use bytes::{Bytes, BytesMut};
use http::{HeaderMap, Response};
use http_body::Body;
use http_body_util::BodyExt;

use super::answer::problem_response;
use crate::{
    body::ResponseBody,
    layer::Config,
    policy::{forbids_storing, replayable_headers},
    problem::ProblemKind,
    record::{BodyKept, StoredResponse},
};

/// What to do with the store once the handler's response is in.
pub(crate) enum Finished<B> {
    /// Complete the record with `record`; should the store have no room for it, with
    /// `fallback` (status and `Location`, small enough for the room every claim reserves).
    Store {
        record: Bytes,
        fallback: Bytes,
        response: Response<ResponseBody<B>>,
    },
    /// The response is not to be kept (status policy, `no-store`): free the key.
    Release { response: Response<ResponseBody<B>> },
}

pub(crate) async fn finish_response<St, B>(
    config: &Config<St>,
    response: Response<B>,
) -> Finished<B>
where
    B: Body<Data = Bytes>,
{
    let (parts, body) = response.into_parts();
    if !(config.store_status)(parts.status) || forbids_storing(&parts.headers) {
        return Finished::Release {
            response: Response::from_parts(parts, ResponseBody::inner(body)),
        };
    }
    let fallback = StoredResponse::not_kept(parts.status, &parts.headers);
    let stored = |body: Bytes, trailers: Option<HeaderMap>, kept: BodyKept| {
        StoredResponse {
            status: parts.status,
            headers: replayable_headers(&parts.headers),
            trailers,
            body,
            kept,
        }
        .encode()
    };
    match buffer_response(body, config.max_response_body).await {
        Buffered::Complete { data, trailers } => Finished::Store {
            record: stored(data.clone(), trailers.clone(), BodyKept::Yes),
            fallback,
            response: Response::from_parts(parts, ResponseBody::full_with_trailers(data, trailers)),
        },
        Buffered::TooLarge { prefix, rest } => Finished::Store {
            record: stored(Bytes::new(), None, BodyKept::No),
            fallback,
            response: Response::from_parts(parts, ResponseBody::prefixed(prefix, rest)),
        },
        // The body broke off before anything was sent: the caller must not mistake what
        // arrived for the whole response, and the handler's effects happened, so the key
        // stays taken ("ran, not kept") instead of inviting a silent re-run.
        Buffered::Failed => {
            tracing::error!("the response body failed after the handler ran");
            Finished::Store {
                record: fallback.clone(),
                fallback,
                response: problem_response(config, ProblemKind::ResponseFailed),
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
        prefix: VecDeque<Bytes>,
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
    let mut chunks = VecDeque::new();
    let mut total = 0usize;
    let mut trailers: Option<HeaderMap> = None;
    loop {
        match body.frame().await {
            None => {
                return Buffered::Complete {
                    data: concat(chunks),
                    trailers,
                };
            }
            Some(Err(_)) => return Buffered::Failed,
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => {
                    total += data.len();
                    chunks.push_back(data);
                    if total > limit {
                        return Buffered::TooLarge {
                            prefix: chunks,
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

fn concat(mut chunks: VecDeque<Bytes>) -> Bytes {
    match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop_front().unwrap_or_default(),
        _ => {
            let mut out = BytesMut::with_capacity(chunks.iter().map(Bytes::len).sum());
            for chunk in chunks {
                out.extend_from_slice(&chunk);
            }
            out.freeze()
        }
    }
}
