//! [`ResponseExt`]: what the middleware put on a [`reqwest::Response`], and its error
//! answers as typed errors.

use std::future::Future;

use reqwest::Response;

use crate::{
    error::{Error, GaveUp, LastFailure, Rejected},
    info::RetryInfo,
    key::IDEMPOTENT_REPLAYED,
    policy::{RetryPolicy, StopReason},
    problem::{Problem, is_problem},
};

/// Reads what [`IdempotencyMiddleware`](crate::IdempotencyMiddleware) tells about an answer.
pub trait ResponseExt: Sized + sealed::Sealed {
    /// Attempts, replay and key of the logical request; `None` if the response did not come
    /// through the middleware.
    fn retry_info(&self) -> Option<&RetryInfo>;

    /// Whether the server marked the answer `Idempotent-Replayed: true` (or the Structured
    /// Field boolean `?1`).
    fn is_replayed(&self) -> bool;

    /// The response itself if it is a success or a redirect (below 400). An error answer is
    /// read to its end and becomes [`Error::GaveUp`] when it is a transient failure the
    /// middleware stopped retrying (409, 503...), [`Error::Rejected`] otherwise (400, 422,
    /// 501...), with the answer's [`Problem`] if it is `application/problem+json`.
    ///
    /// A response that did not come through the middleware is judged by its status alone, as
    /// the answer to a single attempt.
    fn into_result(self) -> impl Future<Output = Result<Response, Error>> + Send;
}

impl ResponseExt for Response {
    fn retry_info(&self) -> Option<&RetryInfo> {
        self.extensions().get()
    }

    fn is_replayed(&self) -> bool {
        replayed(self.headers())
    }

    async fn into_result(self) -> Result<Response, Error> {
        let status = self.status();
        if !(status.is_client_error() || status.is_server_error()) {
            return Ok(self);
        }
        let info = self.retry_info().cloned().unwrap_or_else(|| {
            let gave_up = RetryPolicy::retries_status(status).then_some(StopReason::Attempts);
            RetryInfo::new(1, self.is_replayed(), None, gave_up)
        });
        let headers = self.headers().clone();
        let body = self.bytes().await?;
        let problem = if is_problem(&headers) {
            Problem::from_json(&body)
        } else {
            None
        };
        Err(match info.gave_up() {
            Some(_) => Error::GaveUp(GaveUp::new(info, LastFailure::Status { status, problem })),
            None => Error::Rejected(Rejected {
                info,
                status,
                headers,
                body: body.to_vec(),
                problem,
            }),
        })
    }
}

/// Whether `headers` mark a replayed answer.
pub(crate) fn replayed(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get(&IDEMPOTENT_REPLAYED)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            let v = v.trim();
            v.eq_ignore_ascii_case("true") || v == "?1"
        })
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for reqwest::Response {}
}
