//! The HTTP client of `backend deploy`: reqwest behind the idempotency middleware, and the
//! outcome of a request in the terms the commands act on ([`Answer`] or [`Failure`]).

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use bytes::Bytes;
use reqwest::{StatusCode, Url, header, redirect};
use reqwest_idempotency::{
    AttemptOutcome, Error, IdempotencyMiddleware, Problem, ResponseExt as _, RetryInfo,
    RetryPolicy, StopReason,
    reqwest_middleware::{ClientBuilder, ClientWithMiddleware, RequestBuilder},
};

use super::{args::ClientArgs, report};

/// The API, as one user (a token) reaches it.
pub struct ApiClient {
    http: ClientWithMiddleware,
    base: Url,
    token: String,
    settings: ClientArgs,
    /// Whether an attempt may have reached the server (anything but a failed connect).
    reached: Arc<AtomicBool>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A successful answer (2xx), read to its end.
#[derive(Debug)]
pub struct Answer {
    /// Its status.
    pub status: StatusCode,
    /// Attempts, replay, key.
    pub info: RetryInfo,
    /// Its body.
    pub body: Bytes,
}

/// Why a request did not succeed.
#[derive(Debug)]
pub enum Failure {
    /// A final error answer (4xx, or a 5xx not worth retrying): the request must change.
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its problem document, if it had one.
        problem: Option<Box<Problem>>,
        /// Its body.
        body: Vec<u8>,
    },
    /// Transient failures until the policy stopped: try again later (same key).
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// Why retrying stopped.
        reason: StopReason,
        /// What the last attempt met, in words.
        last: String,
        /// Whether any attempt may have reached the server.
        reached: bool,
    },
    /// A success's headers arrived, its body broke off: the outcome is known to the server
    /// only (for a create: ask again with the same key).
    Interrupted {
        /// The answer's status.
        status: StatusCode,
        /// Why the body broke off.
        error: String,
    },
    /// Anything else: an answer that is not what the API sends, a request that cannot be
    /// built.
    Unexpected(String),
}

impl Failure {
    /// The process exit status for it: 2 when trying again later may succeed, else 1.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::GaveUp { .. } | Self::Interrupted { .. } => 2,
            Self::Refused { .. } | Self::Unexpected(_) => 1,
        }
    }

    /// Whether the failure leaves a create's outcome unknown (retry it with its key).
    pub fn is_transient(&self) -> bool {
        self.exit_code() == 2
    }
}

impl ApiClient {
    /// A client for `settings`, authenticating with `token`. Narrates every retried attempt
    /// on stderr.
    pub fn new(settings: &ClientArgs, token: String) -> Result<Self, String> {
        let policy = RetryPolicy::builder()
            .max_attempts(settings.max_attempts)
            .deadline(settings.deadline)
            .build()
            .map_err(|e| format!("invalid retry settings: {e}"))?;
        let reached = Arc::new(AtomicBool::new(false));
        let max_attempts = settings.max_attempts;
        let timeout = settings.timeout;
        let seen = Arc::clone(&reached);
        let middleware = IdempotencyMiddleware::with_policy(policy).on_attempt(move |report| {
            let connect_failed = matches!(
                &report.outcome,
                AttemptOutcome::Error(reqwest_idempotency::reqwest_middleware::Error::Reqwest(e))
                    if e.is_connect()
            );
            if !connect_failed {
                seen.store(true, Ordering::SeqCst);
            }
            if let Some(line) = report::retry_line(report, max_attempts, timeout) {
                eprintln!("{line}");
            }
        });
        let http = reqwest::Client::builder()
            .timeout(settings.timeout)
            // A redirect would turn a POST into a GET; the API sends none.
            .redirect(redirect::Policy::none())
            .user_agent(concat!("backend-deploy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot set up the HTTP client: {}", report::root_cause(&e)))?;
        Ok(Self {
            http: ClientBuilder::new(http).with(middleware).build(),
            base: settings.server.clone(),
            token,
            settings: settings.clone(),
            reached,
        })
    }

    /// The settings it was made with.
    pub fn settings(&self) -> &ClientArgs {
        &self.settings
    }

    /// The URL of `segments` under the server's base URL (each segment percent-encoded).
    pub fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .expect("--server is a base URL")
            .pop_if_empty()
            .extend(segments);
        url
    }

    /// `GET url` with the token.
    pub fn get(&self, url: Url) -> RequestBuilder {
        self.http
            .get(url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/json")
    }

    /// `POST url` with the token.
    pub fn post(&self, url: Url) -> RequestBuilder {
        self.http
            .post(url)
            .bearer_auth(&self.token)
            .header(header::ACCEPT, "application/json")
    }

    /// Sends `request` (retrying as the policy says) and reads its answer.
    pub async fn send(&self, request: RequestBuilder) -> Result<Answer, Failure> {
        let response = request
            .send()
            .await
            .map_err(|e| self.failure(Error::from(e)))?;
        let response = response.into_result().await.map_err(|e| self.failure(e))?;
        let status = response.status();
        if !status.is_success() {
            let location = response
                .headers()
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .map(|l| format!(" to {l}"))
                .unwrap_or_default();
            return Err(Failure::Unexpected(format!(
                "the server answered {status}{location}, which the API never does: is --server \
                 the deployments API?"
            )));
        }
        let info = response
            .retry_info()
            .cloned()
            .expect("the middleware marks every response");
        match response.bytes().await {
            Ok(body) => Ok(Answer { status, info, body }),
            Err(error) => Err(Failure::Interrupted {
                status,
                error: report::root_cause(&error),
            }),
        }
    }

    fn failure(&self, error: Error) -> Failure {
        match error {
            Error::GaveUp(gave_up) => Failure::GaveUp {
                attempts: gave_up.attempts(),
                reason: gave_up.reason(),
                last: report::last_failure(gave_up.last(), self.settings.timeout),
                reached: self.reached.load(Ordering::SeqCst),
            },
            Error::Rejected(rejected) => Failure::Refused {
                status: rejected.status(),
                problem: rejected.problem().cloned().map(Box::new),
                body: rejected.body().to_vec(),
            },
            Error::Other(error) => Failure::Unexpected(match &error {
                reqwest_idempotency::reqwest_middleware::Error::Reqwest(e) if e.is_builder() => {
                    format!("cannot build the request: {}", report::root_cause(e))
                }
                error => report::root_cause(error),
            }),
            other => Failure::Unexpected(other.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::{DEFAULT_DEADLINE, DEFAULT_MAX_ATTEMPTS, DEFAULT_TIMEOUT};

    fn client(server: &str) -> ApiClient {
        let settings = ClientArgs {
            server: server.parse().unwrap(),
            token: None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            timeout: DEFAULT_TIMEOUT,
            deadline: DEFAULT_DEADLINE,
        };
        ApiClient::new(&settings, "t".to_owned()).unwrap()
    }

    #[test]
    fn urls_keep_the_base_path_and_encode_ids() {
        assert_eq!(
            client("http://127.0.0.1:8080")
                .url(&["api", "deployments"])
                .as_str(),
            "http://127.0.0.1:8080/api/deployments"
        );
        assert_eq!(
            client("https://example.com/base/")
                .url(&["api", "deployments", "a/b c?"])
                .as_str(),
            "https://example.com/base/api/deployments/a%2Fb%20c%3F"
        );
    }

    #[test]
    fn debug_output_never_shows_the_token() {
        let mut settings = client("http://127.0.0.1:8080").settings;
        settings.token = Some("bk_secret".to_owned());
        let client = ApiClient::new(&settings, "bk_secret".to_owned()).unwrap();
        let debug = format!("{client:?}");
        assert!(!debug.contains("bk_secret"), "{debug}");
        assert!(debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn exit_codes() {
        let gave_up = Failure::GaveUp {
            attempts: 2,
            reason: StopReason::Attempts,
            last: String::new(),
            reached: false,
        };
        assert_eq!(gave_up.exit_code(), 2);
        assert!(gave_up.is_transient());
        let refused = Failure::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            problem: None,
            body: Vec::new(),
        };
        assert_eq!(refused.exit_code(), 1);
        assert_eq!(Failure::Unexpected(String::new()).exit_code(), 1);
    }
}
