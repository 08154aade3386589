//! [`Error`]: why a logical request did not succeed, in the terms a caller acts on.

use std::{error::Error as StdError, fmt};

use reqwest::{StatusCode, header::HeaderMap};

use crate::{info::RetryInfo, policy::StopReason, problem::Problem};

/// Why a logical request did not succeed.
///
/// Obtained with `?` from what the client returns (`From<reqwest_middleware::Error>`
/// recognises [`GaveUp`]) and from [`ResponseExt::into_result`](crate::ResponseExt::into_result),
/// which turns error answers into [`GaveUp`] or [`Rejected`]:
///
/// ```no_run
/// # async fn create(client: &reqwest_middleware::ClientWithMiddleware) -> Result<(), reqwest_idempotency::Error> {
/// use reqwest_idempotency::{Error, ResponseExt};
///
/// match client.post("https://api.example.com/orders").body("{}").send().await?.into_result().await {
///     Ok(created) => println!("created: {}", created.status()),
///     // Transient failures all the way: safe to try again later with the same key.
///     Err(Error::GaveUp(gave_up)) => eprintln!("{gave_up}; key {:?}", gave_up.key()),
///     // The server refused: retrying as is will not help.
///     Err(Error::Rejected(rejected)) => eprintln!("{rejected}"),
///     Err(other) => return Err(other),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Every attempt met a transient failure (connection error, timeout, 409, 429, 5xx...)
    /// until the policy stopped. The request may or may not have been executed: retry later
    /// with the same [key](GaveUp::key) to find out without executing it twice.
    GaveUp(GaveUp),
    /// The server gave a final error answer: a 4xx other than 408, 409, 425 and 429, or a
    /// 5xx it is no use retrying (501, 505...). Usually with a [`Problem`].
    Rejected(Rejected),
    /// Anything else: building the request, a redirect loop, another middleware, a body
    /// that failed while it was read after the final answer.
    Other(reqwest_middleware::Error),
}

impl Error {
    /// The idempotency key of the logical request, when known.
    pub fn key(&self) -> Option<&str> {
        match self {
            Self::GaveUp(e) => e.key(),
            Self::Rejected(e) => e.info.key(),
            Self::Other(_) => None,
        }
    }

    /// The status of the last answer, if the last attempt got one.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::GaveUp(e) => e.status(),
            Self::Rejected(e) => Some(e.status),
            Self::Other(e) => e.status(),
        }
    }

    /// The server's problem details, if the last answer carried some.
    pub fn problem(&self) -> Option<&Problem> {
        match self {
            Self::GaveUp(e) => e.problem(),
            Self::Rejected(e) => e.problem(),
            Self::Other(_) => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::GaveUp(e) => e.fmt(f),
            Self::Rejected(e) => e.fmt(f),
            Self::Other(e) => e.fmt(f),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            Self::GaveUp(e) => e.source(),
            Self::Rejected(_) => None,
            Self::Other(e) => e.source(),
        }
    }
}

impl From<reqwest_middleware::Error> for Error {
    fn from(error: reqwest_middleware::Error) -> Self {
        match error {
            reqwest_middleware::Error::Middleware(error) => match error.downcast::<GaveUp>() {
                Ok(gave_up) => Self::GaveUp(gave_up),
                Err(error) => Self::Other(reqwest_middleware::Error::Middleware(error)),
            },
            error => Self::Other(error),
        }
    }
}

impl From<reqwest::Error> for Error {
    fn from(error: reqwest::Error) -> Self {
        Self::Other(error.into())
    }
}

impl From<GaveUp> for Error {
    fn from(error: GaveUp) -> Self {
        Self::GaveUp(error)
    }
}

impl From<Rejected> for Error {
    fn from(error: Rejected) -> Self {
        Self::Rejected(error)
    }
}

/// Every attempt of a logical request met a transient failure, and the policy stopped.
///
/// When the last failure was a connection error or a timeout, the middleware returns it as
/// `reqwest_middleware::Error::Middleware`, from which [`GaveUp::find`] (or
/// `Error::from`) gets it back; when it was an answer (503...), the middleware returns that
/// answer and [`ResponseExt::into_result`](crate::ResponseExt::into_result) makes it a
/// `GaveUp`.
#[derive(Debug)]
pub struct GaveUp {
    pub(crate) info: RetryInfo,
    pub(crate) last: LastFailure,
}

/// The failure of the last attempt before the middleware [gave up](GaveUp).
#[derive(Debug)]
#[non_exhaustive]
pub enum LastFailure {
    /// A transient answer (408, 409, 425, 429, 500, 502, 503, 504).
    Status {
        /// Its status.
        status: StatusCode,
        /// Its problem details, if it carried some.
        problem: Option<Problem>,
    },
    /// A connection error or a timeout.
    Transport(reqwest::Error),
    /// The policy's deadline passed while the attempt was still waiting for its answer.
    DeadlineElapsed,
}

impl GaveUp {
    pub(crate) fn new(info: RetryInfo, last: LastFailure) -> Self {
        Self { info, last }
    }

    /// The `GaveUp` inside an error the middleware returned, if it is one.
    pub fn find(error: &reqwest_middleware::Error) -> Option<&Self> {
        match error {
            reqwest_middleware::Error::Middleware(error) => error.downcast_ref(),
            reqwest_middleware::Error::Reqwest(_) => None,
        }
    }

    /// Attempts made.
    pub fn attempts(&self) -> u32 {
        self.info.attempts()
    }

    /// The idempotency key every attempt carried: send the request again with it later to get
    /// its result without executing it twice. `None` for an idempotent request without one.
    pub fn key(&self) -> Option<&str> {
        self.info.key()
    }

    /// Why retrying stopped.
    pub fn reason(&self) -> StopReason {
        self.info.gave_up().unwrap_or(StopReason::Attempts)
    }

    /// The whole [`RetryInfo`].
    pub fn info(&self) -> &RetryInfo {
        &self.info
    }

    /// The last attempt's failure.
    pub fn last(&self) -> &LastFailure {
        &self.last
    }

    /// The last answer's status, if the last attempt got one.
    pub fn status(&self) -> Option<StatusCode> {
        match &self.last {
            LastFailure::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The last answer's problem details, if it carried some.
    pub fn problem(&self) -> Option<&Problem> {
        match &self.last {
            LastFailure::Status { problem, .. } => problem.as_ref(),
            _ => None,
        }
    }

    /// Whether the last attempt timed out (its own timeout, or the policy's deadline).
    pub fn is_timeout(&self) -> bool {
        match &self.last {
            LastFailure::Transport(e) => e.is_timeout(),
            LastFailure::DeadlineElapsed => true,
            LastFailure::Status { .. } => false,
        }
    }

    /// Whether the last attempt could not connect.
    pub fn is_connect(&self) -> bool {
        matches!(&self.last, LastFailure::Transport(e) if e.is_connect())
    }
}

impl fmt::Display for GaveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let attempts = self.attempts();
        let plural = if attempts == 1 { "" } else { "s" };
        write!(
            f,
            "gave up after {attempts} attempt{plural} ({}): ",
            self.reason()
        )?;
        match &self.last {
            LastFailure::Status { status, problem } => {
                write!(f, "last answer {status}")?;
                if let Some(problem) = problem {
                    write!(f, " ({problem})")?;
                }
            }
            LastFailure::Transport(e) => write!(f, "{e}")?,
            LastFailure::DeadlineElapsed => {
                f.write_str("the deadline passed during the attempt")?
            }
        }
        if let Some(key) = self.key() {
            write!(f, "; idempotency key {key}")?;
        }
        Ok(())
    }
}

impl StdError for GaveUp {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.last {
            LastFailure::Transport(e) => Some(e),
            _ => None,
        }
    }
}

/// The server gave a final error answer (see [`Error::Rejected`]).
#[derive(Debug)]
pub struct Rejected {
    pub(crate) info: RetryInfo,
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Vec<u8>,
    pub(crate) problem: Option<Problem>,
}

impl Rejected {
    /// The answer's status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Whether it is a client error (4xx): the request must change before it can succeed.
    pub fn is_client_error(&self) -> bool {
        self.status.is_client_error()
    }

    /// The answer's problem details, if it was `application/problem+json`.
    pub fn problem(&self) -> Option<&Problem> {
        self.problem.as_ref()
    }

    /// The answer's headers.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The answer's body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// Attempts, replay and key of the logical request.
    pub fn info(&self) -> &RetryInfo {
        &self.info
    }
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the server refused the request: {}", self.status)?;
        if let Some(problem) = &self.problem {
            write!(f, " ({problem})")?;
        }
        Ok(())
    }
}

impl StdError for Rejected {}
