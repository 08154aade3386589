//! The answers the layer gives itself: problems and replays.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, header};

use crate::{
    body::ResponseBody,
    key::IDEMPOTENT_REPLAYED,
    layer::{Config, InFlightPolicy, StoreFailurePolicy},
    metrics::{Outcome, record_outcome},
    problem::{Problem, ProblemKind},
    record::{BodyKept, StoredResponse},
};

/// The answer to a refused request: the configured responder's, or problem+json.
pub(crate) fn reject<St, B>(config: &Config<St>, kind: ProblemKind) -> Response<ResponseBody<B>> {
    record_outcome(outcome_of(kind));
    problem_response(config, kind)
}

/// A problem answer that counts no outcome (the request's outcome is counted elsewhere).
pub(crate) fn problem_response<St, B>(
    config: &Config<St>,
    kind: ProblemKind,
) -> Response<ResponseBody<B>> {
    let retry_after = match kind {
        ProblemKind::KeyInUse => Some(match config.in_flight {
            InFlightPolicy::Reject { retry_after } | InFlightPolicy::Wait { retry_after, .. } => {
                retry_after
            }
        }),
        ProblemKind::StoreUnavailable
        | ProblemKind::StoreFull
        | ProblemKind::TransactionFailed
        | ProblemKind::OutcomeUnknown
        | ProblemKind::HandlerTimedOut => Some(match config.on_store_failure {
            StoreFailurePolicy::FailClosed { retry_after } => retry_after,
            StoreFailurePolicy::FailOpen => Duration::from_secs(1),
        }),
        _ => None,
    };
    let problem = Problem::new(kind, &config.problem_type_base, retry_after);
    let response = match &config.responder {
        Some(responder) => responder(&problem),
        None => problem.to_response(),
    };
    response.map(ResponseBody::full)
}

fn outcome_of(kind: ProblemKind) -> Outcome {
    match kind {
        ProblemKind::KeyInUse => Outcome::Conflict,
        ProblemKind::KeyReused => Outcome::Mismatch,
        ProblemKind::StoreUnavailable
        | ProblemKind::StoreFull
        | ProblemKind::TransactionFailed
        | ProblemKind::OutcomeUnknown => Outcome::StoreError,
        ProblemKind::ResponseNotKept | ProblemKind::RecordCorrupt => Outcome::Replayed,
        _ => Outcome::Rejected,
    }
}

/// Answers a retry from a completed record.
pub(crate) fn replay<St, B>(config: &Config<St>, record: &Bytes) -> Response<ResponseBody<B>> {
    let Ok(stored) = StoredResponse::decode(record) else {
        tracing::error!("a stored response could not be decoded");
        return reject(config, ProblemKind::RecordCorrupt);
    };
    let mut response = match stored.kept {
        BodyKept::Yes => {
            record_outcome(Outcome::Replayed);
            let body = ResponseBody::full_with_trailers(stored.body, stored.trailers);
            let mut response = Response::new(body);
            *response.status_mut() = stored.status;
            *response.headers_mut() = stored.headers;
            response
        }
        BodyKept::No => {
            let mut response = reject(config, ProblemKind::ResponseNotKept);
            // Where the first request created something, say where it is.
            if let Some(location) = stored.headers.get(header::LOCATION) {
                response
                    .headers_mut()
                    .insert(header::LOCATION, location.clone());
            }
            response
        }
    };
    response.headers_mut().insert(
        IDEMPOTENT_REPLAYED.clone(),
        HeaderValue::from_static("true"),
    );
    response
}
