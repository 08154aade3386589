//! The command line of `backend deploy`: its subcommands, the client flags they share, and
//! the parsers of their values.

use std::time::Duration;

use clap::{Args, Subcommand};
use reqwest::Url;

use crate::api::deployments::MAX_PAGE_SIZE;

/// Default API the client talks to: the server's own default address.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Default attempts per request, the first included.
pub const DEFAULT_MAX_ATTEMPTS: u32 = reqwest_idempotency::DEFAULT_MAX_ATTEMPTS;

/// Default time limit of one attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Default time limit of a whole command, every attempt and wait included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// The longest key the API accepts.
pub const KEY_MAX: usize = 255;

/// `backend deploy ...`: the deployments API's client.
#[derive(Debug, Clone, Args)]
#[command(after_long_help = EXIT_CODES)]
pub struct DeployArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: DeployCommand,

    /// Where and how to reach the API (allowed before or after the subcommand).
    #[command(flatten)]
    pub client: ClientArgs,
}

const EXIT_CODES: &str = "\
Exit status:
  0  success; the JSON is on stdout
  1  the request was refused (a 4xx problem, shown on stderr) or the command line is wrong:
     retrying it unchanged will not help
  2  the client gave up on transient failures (connection errors, timeouts, 409, 429, 5xx):
     retry later; for `create`, with the idempotency key it prints (`--key`), which creates
     the deployment at most once";

/// The subcommands of `backend deploy`.
#[derive(Debug, Clone, Subcommand)]
pub enum DeployCommand {
    /// Create a deployment; prints it as one line of JSON.
    ///
    /// Safe to retry: the request carries an Idempotency-Key (a new random one per
    /// invocation, or `--key`), and every retry of it, automatic or by hand with the same
    /// `--key`, gets the first answer back instead of creating a second deployment.
    Create(CreateArgs),
    /// Show one deployment as one line of JSON.
    Get(GetArgs),
    /// List deployments, newest first, as one line of JSON: `{"items":[...],"next_cursor":...}`.
    List(ListArgs),
}

/// What every subcommand needs to reach the API.
#[derive(Clone, Args)]
pub struct ClientArgs {
    /// Base URL of the deployments API.
    #[arg(
        long,
        env = "BACKEND_URL",
        default_value = DEFAULT_SERVER,
        value_parser = parse_server,
        value_name = "URL",
        global = true
    )]
    pub server: Url,

    /// API token (mint one with `backend token create USER`). Required.
    // Optional for clap, so that a missing token gets our message instead of clap's.
    #[arg(
        long,
        env = "BACKEND_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,

    /// Most attempts per request, the first included (1: never retry).
    #[arg(
        long,
        default_value_t = DEFAULT_MAX_ATTEMPTS,
        value_parser = clap::value_parser!(u32).range(1..=100),
        value_name = "N",
        global = true
    )]
    pub max_attempts: u32,

    /// Time limit of each attempt, e.g. `10s`, `500ms`.
    #[arg(
        long,
        default_value = "10s",
        value_parser = parse_duration,
        value_name = "DURATION",
        global = true
    )]
    pub timeout: Duration,

    /// Time limit of the whole command, every attempt and wait included; no attempt starts
    /// after it, and one still running when it passes is abandoned.
    #[arg(
        long,
        default_value = "60s",
        value_parser = parse_duration,
        value_name = "DURATION",
        global = true
    )]
    pub deadline: Duration,
}

impl std::fmt::Debug for ClientArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientArgs")
            .field("server", &self.server.as_str())
            // Never the token itself.
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("max_attempts", &self.max_attempts)
            .field("timeout", &self.timeout)
            .field("deadline", &self.deadline)
            .finish()
    }
}

/// `backend deploy create`.
#[derive(Debug, Clone, Args)]
pub struct CreateArgs {
    /// Project slug: lowercase letters, digits and `-`.
    #[arg(long, value_name = "P")]
    pub project: String,

    /// Environment slug, same rules as the project's.
    #[arg(long, value_name = "E")]
    pub environment: String,

    /// Git ref or image to deploy.
    #[arg(long = "ref", value_name = "R")]
    pub git_ref: String,

    /// Free text.
    #[arg(long, value_name = "D")]
    pub description: Option<String>,

    /// Idempotency key (1-255 printable ASCII characters). Default: a new random one.
    /// Give the key of an earlier run to retry it without creating a second deployment.
    #[arg(long, value_parser = parse_key, value_name = "K")]
    pub key: Option<String>,
}

/// `backend deploy get`.
#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    /// The deployment's id.
    pub id: String,
}

/// `backend deploy list`.
///
/// The filters are the API's own (`GET /api/deployments?project=...`): a bad value is the
/// API's 400, naming it.
#[derive(Debug, Clone, Default, Args)]
pub struct ListArgs {
    /// Only deployments of this project.
    #[arg(long, value_name = "P")]
    pub project: Option<String>,

    /// Only deployments to this environment.
    #[arg(long, value_name = "E")]
    pub environment: Option<String>,

    /// Only deployments in this state: `queued`, `in_progress`, `success`, `failure`,
    /// `error` or `cancelled`.
    #[arg(long, value_name = "S")]
    pub status: Option<String>,

    /// Only deployments of this git ref or image.
    #[arg(long = "ref", value_name = "REF")]
    pub git_ref: Option<String>,

    /// Most deployments to print, 1-100 (default: the API's page size, 20).
    #[arg(
        long,
        value_parser = clap::value_parser!(u32).range(1..=i64::from(MAX_PAGE_SIZE)),
        value_name = "N"
    )]
    pub limit: Option<u32>,

    /// Continue after an earlier page: its `next_cursor`.
    #[arg(long, value_name = "CURSOR")]
    pub cursor: Option<String>,
}

impl ListArgs {
    /// The query parameters of the request: filters, page size, cursor.
    pub fn query(&self) -> Vec<(&'static str, String)> {
        let mut query = Vec::new();
        let filters = [
            ("project", &self.project),
            ("environment", &self.environment),
            ("status", &self.status),
            ("ref", &self.git_ref),
            ("cursor", &self.cursor),
        ];
        for (name, value) in filters {
            if let Some(value) = value {
                query.push((name, value.clone()));
            }
        }
        if let Some(limit) = self.limit {
            query.push(("limit", limit.to_string()));
        }
        query
    }
}

fn parse_server(value: &str) -> Result<Url, String> {
    let url = Url::parse(value).map_err(|e| format!("not a URL: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "must be http:// or https://, not {}://",
            url.scheme()
        ));
    }
    if url.cannot_be_a_base() || url.host().is_none() {
        return Err("must name a host, e.g. http://127.0.0.1:8080".to_owned());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or a fragment".to_owned());
    }
    Ok(url)
}

fn parse_duration(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration < Duration::from_millis(1) {
        return Err("must be at least 1ms".to_owned());
    }
    Ok(duration)
}

/// A key the API can accept: sent as a Structured-Field string, which carries any printable
/// ASCII character.
fn parse_key(value: &str) -> Result<String, String> {
    if value.is_empty() || value.len() > KEY_MAX {
        return Err(format!("must be 1-{KEY_MAX} characters long"));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err("may only contain printable ASCII characters".to_owned());
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers() {
        assert_eq!(
            parse_server(DEFAULT_SERVER).unwrap().as_str(),
            "http://127.0.0.1:8080/"
        );
        assert!(parse_server("https://api.example.com/base/").is_ok());
        assert!(parse_server("127.0.0.1:8080").is_err());
        assert!(parse_server("ftp://example.com").is_err());
        assert!(parse_server("http://example.com/?x=1").is_err());
        assert!(parse_server("not a url").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), DEFAULT_TIMEOUT);
        assert_eq!(parse_duration("1m").unwrap(), DEFAULT_DEADLINE);
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn keys() {
        assert_eq!(parse_key("deploy-api-v1.4.2").unwrap(), "deploy-api-v1.4.2");
        assert!(parse_key("with \"quotes\" and spaces").is_ok());
        assert!(parse_key(&"k".repeat(KEY_MAX)).is_ok());
        assert!(parse_key(&"k".repeat(KEY_MAX + 1)).is_err());
        assert!(parse_key("").is_err());
        assert!(parse_key("tab\there").is_err());
        assert!(parse_key("clé").is_err());
    }
}
