//! `backend deploy`: the command-line client of the deployments API.
//!
//! `create` sends an `Idempotency-Key` (one per invocation, or `--key`) through
//! `reqwest-idempotency`, which retries connection errors, timeouts, 409, 429 and 5xx with the
//! same key: a retry whose first attempt did execute gets the stored answer back
//! (`Idempotent-Replayed: true`), never a second deployment. `get` and `list` are retried
//! the same way (GETs are idempotent). Each prints one line of JSON on stdout and exits 0
//! (success), 1 (refused: a problem, or a wrong command line) or 2 (gave up on transient
//! failures; for `create`, with the key and the command that retries it by hand).

pub mod args;
pub mod client;
pub mod deploy;
pub mod json;
pub mod report;
pub mod retry_command;
pub mod tokens;

pub use self::{args::DeployArgs, deploy::run};
