//! `backend deploy create | get | list`: each command's request, what it prints on stdout
//! (one line of JSON) and on stderr, and its exit status.

use std::{io::Write as _, process::ExitCode};

use reqwest::header::{CONTENT_TYPE, HeaderValue};
use reqwest_idempotency::IDEMPOTENCY_KEY;
use serde::Deserialize;

use super::{
    args::{ClientArgs, CreateArgs, DeployArgs, DeployCommand, GetArgs, ListArgs},
    client::{Answer, ApiClient, Failure},
    json, retry_command,
};
use crate::api::deployments::CreateDeployment;

/// The environment variable that carries the token.
const TOKEN_ENV: &str = "BACKEND_TOKEN";

/// Runs `backend deploy ...`: 0 on success, 1 when the request was refused or cannot be
/// made, 2 when it gave up on transient failures.
pub async fn run(args: DeployArgs) -> ExitCode {
    ExitCode::from(execute(&args).await)
}

async fn execute(args: &DeployArgs) -> u8 {
    // Tokens have no whitespace: a stray newline from a file is not part of one.
    let token = args.client.token.as_deref().map(str::trim);
    let Some(token) = token.filter(|t| !t.is_empty()).map(str::to_owned) else {
        eprintln!(
            "error: no API token: pass --token TOKEN or set {TOKEN_ENV} (mint one with \
             `backend token create USER`)"
        );
        return 1;
    };
    let client = match ApiClient::new(&args.client, token) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("error: {error}");
            return 1;
        }
    };
    match &args.command {
        DeployCommand::Create(create) => create_deployment(&client, create).await,
        DeployCommand::Get(get) => get_deployment(&client, get).await,
        DeployCommand::List(list) => list_deployments(&client, list).await,
    }
}

async fn create_deployment(client: &ApiClient, args: &CreateArgs) -> u8 {
    // One key per invocation, kept by the middleware across its retries; or the caller's.
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let body = CreateDeployment {
        project: args.project.clone(),
        environment: args.environment.clone(),
        git_ref: args.git_ref.clone(),
        description: args.description.clone(),
    };
    let body = serde_json::to_vec(&body).expect("a deployment serialises");
    let request = client
        .post(client.url(&["api", "deployments"]))
        .header(IDEMPOTENCY_KEY.clone(), structured_string(&key))
        .header(CONTENT_TYPE, "application/json")
        .body(body);
    let outcome = match client.send(request).await {
        Ok(answer) => deployment(&answer).map(|printed| (answer, printed)),
        Err(failure) => Err(failure),
    };
    match outcome {
        Ok((answer, (line, id))) => {
            let attempts = answer.info.attempts();
            if answer.info.replayed() {
                let attempt = if attempts > 1 {
                    format!(" attempt {attempts}")
                } else {
                    String::new()
                };
                eprintln!(
                    "replayed: the server answered{attempt} with the response it stored for an \
                     earlier request with idempotency key {key} (Idempotent-Replayed: true): \
                     deployment {id} was created then, not again"
                );
            } else if attempts > 1 {
                eprintln!("created deployment {id} on attempt {attempts} (idempotency key {key})");
            }
            print_line(&line)
        }
        Err(failure) => {
            report_failure(&failure);
            if failure.is_transient() {
                explain_retry(client.settings(), args, &key, &failure);
            }
            failure.exit_code()
        }
    }
}

/// The `Idempotency-Key` header for `key`: a Structured-Field string, which carries any
/// printable ASCII (and names the same key as the bare token would).
fn structured_string(key: &str) -> HeaderValue {
    let escaped = key.replace('\\', r"\\").replace('"', "\\\"");
    HeaderValue::from_str(&format!("\"{escaped}\"")).expect("--key is printable ASCII")
}

/// How to finish a create whose outcome the client does not know.
fn explain_retry(settings: &ClientArgs, args: &CreateArgs, key: &str, failure: &Failure) {
    let reached = match failure {
        Failure::GaveUp { reached, .. } => *reached,
        _ => true,
    };
    if reached {
        eprintln!(
            "The server may have created the deployment. Retrying with the same idempotency \
             key tells, and creates it at most once."
        );
    } else {
        eprintln!("No attempt reached the server: nothing was created.");
    }
    eprintln!("Idempotency key: {key}");
    eprintln!("Retry by hand with the same key:");
    let program = std::env::args_os().next().map_or_else(
        || "backend".to_owned(),
        |p| p.to_string_lossy().into_owned(),
    );
    eprintln!(
        "  {}",
        retry_command::create_command(&program, settings, args, key)
    );
    if std::env::var(TOKEN_ENV).ok() != settings.token {
        eprintln!("  (add --token as before, or set {TOKEN_ENV}: the token is not printed)");
    }
}

async fn get_deployment(client: &ApiClient, args: &GetArgs) -> u8 {
    let request = client.get(client.url(&["api", "deployments", &args.id]));
    match client
        .send(request)
        .await
        .and_then(|answer| deployment(&answer))
    {
        Ok((line, _)) => print_line(&line),
        Err(failure) => fail_idempotent(&failure),
    }
}

async fn list_deployments(client: &ApiClient, args: &ListArgs) -> u8 {
    let mut url = client.url(&["api", "deployments"]);
    let query = args.query();
    if !query.is_empty() {
        url.query_pairs_mut().extend_pairs(query);
    }
    let result = client
        .send(client.get(url))
        .await
        .and_then(|answer| json::compact(&answer.body).map_err(|e| unreadable(&answer, &e)));
    match result {
        Ok(line) => print_line(&line),
        Err(failure) => fail_idempotent(&failure),
    }
}

/// A deployment answer as its compact line, and its id.
fn deployment(answer: &Answer) -> Result<(String, String), Failure> {
    #[derive(Deserialize)]
    struct Id {
        id: String,
    }
    let Id { id } = serde_json::from_slice(&answer.body).map_err(|e| unreadable(answer, &e))?;
    let line = json::compact(&answer.body).map_err(|e| unreadable(answer, &e))?;
    Ok((line, id))
}

fn unreadable(answer: &Answer, error: &serde_json::Error) -> Failure {
    Failure::Unexpected(format!(
        "the server's answer ({}) is not what the API sends: {error}",
        answer.status
    ))
}

/// Reports a failed `get` or `list`, which are safe to repeat as they are.
fn fail_idempotent(failure: &Failure) -> u8 {
    report_failure(failure);
    if failure.is_transient() {
        eprintln!("Try again later: the same command is safe to repeat.");
    }
    failure.exit_code()
}

fn report_failure(failure: &Failure) {
    match failure {
        Failure::Refused {
            status,
            problem,
            body,
        } => eprintln!(
            "{}",
            super::report::refused(*status, problem.as_deref(), body)
        ),
        Failure::GaveUp {
            attempts,
            reason,
            last,
            ..
        } => {
            let plural = if *attempts == 1 { "" } else { "s" };
            eprintln!(
                "error: gave up after {attempts} attempt{plural} ({reason}); the last one: {last}"
            );
        }
        Failure::Interrupted { status, error } => {
            eprintln!("error: the answer ({status}) broke off before its end: {error}");
        }
        Failure::Unexpected(message) => eprintln!("error: {message}"),
    }
}

/// Prints `line` on stdout: 0, or 1 if stdout is gone.
fn print_line(line: &str) -> u8 {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        Ok(()) => 0,
        Err(error) => {
            eprintln!("error: cannot write to stdout: {error}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sent_as_structured_field_strings() {
        assert_eq!(structured_string("abc-1"), "\"abc-1\"");
        assert_eq!(structured_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
    }
}
