//! `backend deploy ...`, the real client binary, against a real `backend serve` process
//! (SQLite), with tokens minted by the real `backend token create`; lost and slow answers
//! come from the testkit's `Relay` between them.

mod common;

use std::{
    collections::HashSet,
    process::Output,
    time::{Duration, Instant},
};

use common::{BIN, Backend, Executions, TestDb, TestServer};
use serde_json::Value;
use tokio::process::Command;
use tower_idempotency_testkit::Relay;

/// A database, a token for `alice` minted by `backend token create`, and a spawned server.
struct Setup {
    t: TestDb,
    server: TestServer,
    token: String,
}

impl Setup {
    async fn start() -> Self {
        let t = TestDb::new(Backend::Sqlite).await;
        let output = Command::new(BIN)
            .args(["token", "create", "alice", "--database-url", &t.url])
            .env_clear()
            .output()
            .await
            .expect("run backend token create");
        assert!(output.status.success(), "{}", text(&output.stderr));
        let token = text(&output.stdout).trim_end().to_owned();
        let server = TestServer::spawn(&t).await;
        Self { t, server, token }
    }

    /// `http://<server>`.
    fn url(&self) -> String {
        self.server.url("")
    }

    /// `backend deploy <args>` against the server, the token in `BACKEND_TOKEN`.
    async fn deploy(&self, args: &[&str]) -> Run {
        self.deploy_via(&self.url(), args).await
    }

    /// `backend deploy <args>` against `url` (a relay, a closed port).
    async fn deploy_via(&self, url: &str, args: &[&str]) -> Run {
        deploy(
            &[("BACKEND_URL", url), ("BACKEND_TOKEN", &self.token)],
            args,
        )
        .await
    }

    async fn rows(&self) -> i64 {
        self.t
            .db
            .deployments()
            .count_for_user("alice")
            .await
            .unwrap()
    }
}

/// A finished `backend deploy` process.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Asserts exit 0 and one line of JSON on stdout, and returns it.
    fn json(&self) -> Value {
        assert_eq!(self.code, 0, "{self:#?}");
        assert!(
            self.stdout.ends_with('\n') && self.stdout.lines().count() == 1,
            "one line on stdout: {self:#?}"
        );
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {self:#?}"))
    }

    /// Asserts exit `code` with nothing on stdout.
    fn failed(&self, code: i32) -> &str {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(self.stdout.is_empty(), "{self:#?}");
        &self.stderr
    }

    /// The command line printed after "Retry by hand with the same key:".
    fn retry_command(&self) -> &str {
        let mut lines = self.stderr.lines();
        lines
            .find(|l| l.starts_with("Retry by hand"))
            .and_then(|_| lines.next())
            .unwrap_or_else(|| panic!("no retry command: {self:#?}"))
            .trim()
    }

    /// The key printed after "Idempotency key: ".
    fn key(&self) -> &str {
        self.stderr
            .lines()
            .find_map(|l| l.strip_prefix("Idempotency key: "))
            .unwrap_or_else(|| panic!("no key: {self:#?}"))
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn finished(output: Output) -> Run {
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: text(&output.stdout),
        stderr: text(&output.stderr),
    }
}

/// `backend deploy <args>` with only `env` in its environment.
async fn deploy(env: &[(&str, &str)], args: &[&str]) -> Run {
    let output = Command::new(BIN)
        .arg("deploy")
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run backend deploy");
    finished(output)
}

/// Runs `line` in a POSIX shell with only `env`.
async fn shell(line: &str, env: &[(&str, &str)]) -> Run {
    let output = Command::new("/bin/sh")
        .args(["-c", line])
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .await
        .expect("run /bin/sh");
    finished(output)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

const API: [&str; 6] = [
    "--project",
    "api",
    "--environment",
    "production",
    "--ref",
    "v1.4.2",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_get_and_list() {
    let s = Setup::start().await;
    let mut args = API.to_vec();
    args.extend(["--description", "Roll out the new invoice renderer"]);
    let created = s.deploy(&[&["create"], &args[..]].concat()).await;
    let deployment = created.json();
    assert!(created.stderr.is_empty(), "nothing to say: {created:#?}");
    // The server's member order, compact.
    assert!(created.stdout.starts_with("{\"id\":\""), "{created:#?}");
    assert!(!created.stdout.contains(": "), "{created:#?}");
    assert_eq!(deployment["project"], "api");
    assert_eq!(deployment["environment"], "production");
    assert_eq!(deployment["ref"], "v1.4.2");
    assert_eq!(
        deployment["description"],
        "Roll out the new invoice renderer"
    );
    assert_eq!(deployment["status"], "queued");
    let id = deployment["id"].as_str().unwrap().to_owned();
    assert_eq!(s.rows().await, 1);

    // get: the same deployment, with the flags instead of the environment, before or after
    // the subcommand.
    let url = s.url();
    let flags = ["--server", url.as_str(), "--token", s.token.as_str()];
    let got = deploy(&[], &[&["get", id.as_str()], &flags[..]].concat()).await;
    assert_eq!(got.json(), deployment);
    assert_eq!(got.stdout, created.stdout, "the same bytes");
    let got = deploy(&[], &[&flags[..], &["get", id.as_str()]].concat()).await;
    assert_eq!(got.json(), deployment);

    let web = s
        .deploy(&[
            "create",
            "--project",
            "web",
            "--environment",
            "staging",
            "--ref",
            "main",
        ])
        .await
        .json();
    assert_eq!(web["description"], Value::Null);

    // list: newest first, one page, the API's shape.
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all = s.deploy(&["list"]).await;
    let page = all.json();
    assert_eq!(ids(&page), [web["id"].as_str().unwrap(), id.as_str()]);
    assert_eq!(page["items"][1], deployment);
    assert!(page["next_cursor"].is_null());
    assert!(all.stderr.is_empty(), "{all:#?}");

    let first = s.deploy(&["list", "--limit", "1"]).await.json();
    assert_eq!(ids(&first), [web["id"].as_str().unwrap()]);
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = s
        .deploy(&["list", "--limit", "1", "--cursor", cursor])
        .await
        .json();
    assert_eq!(ids(&second), [id.as_str()]);

    // The filters are the API's: a bad value is its 400, naming the parameter.
    let api = s.deploy(&["list", "--project", "api"]).await;
    assert_eq!(ids(&api.json()), [id.as_str()]);
    assert!(api.stderr.is_empty(), "{api:#?}");
    let bad = s.deploy(&["list", "--status", "running"]).await;
    assert_eq!(bad.code, 1, "{bad:#?}");
    assert!(bad.stderr.contains("status"), "{bad:#?}");
    let staging = s
        .deploy(&["list", "--environment", "staging", "--status", "queued"])
        .await
        .json();
    assert_eq!(ids(&staging), [web["id"].as_str().unwrap()]);
    let none = s.deploy(&["list", "--status", "success"]).await.json();
    assert!(ids(&none).is_empty());
    assert!(none["next_cursor"].is_null());
    assert_eq!(s.rows().await, 2);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_given_twice_replays_the_same_deployment() {
    let s = Setup::start().await;
    let args = [&["create"], &API[..], &["--key", "deploy-api-v1.4.2"]].concat();
    let first = s.deploy(&args).await;
    let deployment = first.json();
    assert!(first.stderr.is_empty(), "{first:#?}");

    let second = s.deploy(&args).await;
    assert_eq!(second.json()["id"], deployment["id"]);
    assert_eq!(
        second.stdout, first.stdout,
        "the stored answer, byte for byte"
    );
    assert!(
        second.stderr.contains("Idempotent-Replayed: true"),
        "{second:#?}"
    );
    assert!(second.stderr.contains("deploy-api-v1.4.2"), "{second:#?}");
    assert!(!second.stderr.contains("retry:"), "{second:#?}");

    assert_eq!(s.rows().await, 1);
    assert_eq!(s.server.executions().await, Executions::exactly(1));
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_exit_1_with_the_problem() {
    let s = Setup::start().await;

    // 422 validation-failed: title, detail, the field; not retried.
    let invalid = s
        .deploy(&[
            "create",
            "--project=-api-",
            "--environment",
            "production",
            "--ref",
            "v1",
        ])
        .await;
    let stderr = invalid.failed(1);
    assert!(
        stderr.contains(
            "error: Invalid deployment (422 Unprocessable Entity): The request body has 1 \
             invalid field."
        ),
        "{invalid:#?}"
    );
    assert!(
        stderr.contains("project: must not start or end with '-'"),
        "{invalid:#?}"
    );
    assert!(!stderr.contains("retry:"), "{invalid:#?}");

    // 422 key-reused: the same key for another request.
    let key = ["--key", "k-1"];
    s.deploy(&[&["create"], &API[..], &key[..]].concat())
        .await
        .json();
    let reused = s
        .deploy(&[
            "create",
            "--project",
            "api",
            "--environment",
            "production",
            "--ref",
            "v9",
            "--key",
            "k-1",
        ])
        .await;
    assert!(
        reused
            .failed(1)
            .contains("Idempotency-Key reused with a different request (422"),
        "{reused:#?}"
    );

    // 401: a token the server does not know.
    let url = s.url();
    let stranger = deploy(
        &[("BACKEND_URL", &url), ("BACKEND_TOKEN", "bk_unknown")],
        &["list"],
    )
    .await;
    let stderr = stranger.failed(1);
    assert!(
        stderr.contains("Authentication required (401 Unauthorized)"),
        "{stranger:#?}"
    );
    assert!(stderr.contains("BACKEND_TOKEN"), "{stranger:#?}");

    // No token at all: said before anything is sent.
    let anonymous = deploy(&[("BACKEND_URL", &url)], &["get", "x"]).await;
    let stderr = anonymous.failed(1);
    assert!(stderr.contains("no API token"), "{anonymous:#?}");
    assert!(stderr.contains("BACKEND_TOKEN"), "{anonymous:#?}");

    // 404, and 400 for a cursor the API never gave.
    let missing = s.deploy(&["get", "no-such-id"]).await;
    assert!(
        missing
            .failed(1)
            .contains("error: Not found (404 Not Found): No such deployment."),
        "{missing:#?}"
    );
    let cursor = s.deploy(&["list", "--cursor", "bogus"]).await;
    assert!(
        cursor
            .failed(1)
            .contains("cursor: is not a cursor this API returned"),
        "{cursor:#?}"
    );

    // A wrong command line is 1 too, never 2 ("retry later").
    assert_eq!(s.deploy(&["list", "--limit", "0"]).await.code, 1);
    assert_eq!(s.deploy(&["create", "--project", "api"]).await.code, 1);
    assert_eq!(s.deploy(&["list", "--timeout", "soon"]).await.code, 1);

    assert_eq!(s.rows().await, 1);
    s.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_server_exits_2_with_the_key_and_the_command_to_retry() {
    let s = Setup::start().await;
    let closed = format!("http://127.0.0.1:{}", closed_port());
    let started = Instant::now();
    let run = s
        .deploy_via(
            &closed,
            &[&["create"], &API[..], &["--max-attempts", "2"]].concat(),
        )
        .await;
    let stderr = run.failed(2);
    assert!(started.elapsed() < Duration::from_secs(10), "{run:#?}");
    assert!(
        stderr.contains("retry: attempt 1 of 2 failed: cannot connect"),
        "{run:#?}"
    );
    assert!(
        stderr.contains("error: gave up after 2 attempts"),
        "{run:#?}"
    );
    assert!(
        stderr.contains("No attempt reached the server: nothing was created."),
        "{run:#?}"
    );
    let key = run.key();
    uuid::Uuid::parse_str(key).unwrap_or_else(|e| panic!("a fresh UUID ({e}): {run:#?}"));
    assert_eq!(
        run.retry_command(),
        format!(
            "{BIN} deploy create --server {closed} --project api --environment production \
             --ref v1.4.2 --key {key} --max-attempts 2"
        )
    );
    // The token came from the environment: the command needs nothing more.
    assert!(!stderr.contains("add --token"), "{run:#?}");

    // With --key and --token: that key, and the token is never printed.
    let flags = ["--token", s.token.as_str(), "--max-attempts", "1"];
    let run = deploy(
        &[("BACKEND_URL", &closed)],
        &[&["create"], &API[..], &["--key", "my key"], &flags[..]].concat(),
    )
    .await;
    let stderr = run.failed(2);
    assert_eq!(run.key(), "my key");
    assert!(run.retry_command().contains("--key 'my key'"), "{run:#?}");
    assert!(stderr.contains("add --token as before"), "{run:#?}");
    assert!(!stderr.contains(&s.token), "the token leaked: {run:#?}");

    // get and list give up the same way.
    let list = s
        .deploy_via(&closed, &["list", "--max-attempts", "2"])
        .await;
    assert!(
        list.failed(2).contains("error: gave up after 2 attempts"),
        "{list:#?}"
    );
    assert_eq!(s.rows().await, 0);
    s.server.stop().await;
}

/// The answers of every attempt are lost: the client gives up (2), and the command it
/// prints, run by hand, gets the deployment the first attempt created, as a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_printed_command_finishes_a_create_whose_answers_were_lost() {
    let s = Setup::start().await;
    let relay = Relay::start(s.server.addr).await;
    let via = format!("http://{}", relay.addr());
    relay.lose_replies(2);
    let args = [
        "create",
        "--project",
        "api",
        "--environment",
        "production",
        "--ref",
        "v1.4.2",
        "--description",
        "it's \"quoted\" $HOME",
        "--max-attempts",
        "2",
    ];
    let lost = s.deploy_via(&via, &args).await;
    let stderr = lost.failed(2);
    assert_eq!(relay.lost_replies(), 2);
    assert!(
        stderr.contains("retry: attempt 1 of 2 failed: the connection failed before the answer"),
        "{lost:#?}"
    );
    assert!(
        stderr.contains("The server may have created the deployment."),
        "{lost:#?}"
    );
    assert_eq!(s.rows().await, 1, "the first attempt executed");

    let retried = shell(lost.retry_command(), &[("BACKEND_TOKEN", &s.token)]).await;
    let deployment = retried.json();
    assert!(
        retried.stderr.contains("Idempotent-Replayed: true"),
        "{retried:#?}"
    );
    assert!(retried.stderr.contains(lost.key()), "{retried:#?}");
    assert_eq!(deployment["description"], "it's \"quoted\" $HOME");
    assert_eq!(s.rows().await, 1);
    assert_eq!(s.server.executions().await, Executions::exactly(1));
    s.server.stop().await;
}

/// Answers slower than `--timeout`: each attempt is abandoned after it, and the retry by
/// hand finds what the first one created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_time_out_after_the_timeout() {
    let s = Setup::start().await;
    let relay = Relay::start(s.server.addr).await;
    let via = format!("http://{}", relay.addr());
    relay.delay_replies(Duration::from_secs(3));
    let args = [
        &["create"],
        &API[..],
        &["--timeout", "300ms", "--max-attempts", "2"],
    ]
    .concat();
    let started = Instant::now();
    let slow = s.deploy_via(&via, &args).await;
    let stderr = slow.failed(2);
    assert!(started.elapsed() < Duration::from_secs(3), "{slow:#?}");
    assert!(
        stderr.contains("retry: attempt 1 of 2 failed: no answer within 300ms"),
        "{slow:#?}"
    );
    assert!(
        slow.retry_command()
            .ends_with("--max-attempts 2 --timeout 300ms"),
        "{slow:#?}"
    );

    relay.delay_replies(Duration::ZERO);
    let retried = shell(slow.retry_command(), &[("BACKEND_TOKEN", &s.token)]).await;
    retried.json();
    assert!(
        retried.stderr.contains("Idempotent-Replayed: true"),
        "{retried:#?}"
    );
    assert_eq!(s.rows().await, 1);
    assert_eq!(s.server.executions().await, Executions::exactly(1));
    s.server.stop().await;
}

/// The acceptance test: 100 `backend deploy create` runs through a network that
/// loses 30 % of the answers (the relay drops the reply of 30 runs chosen up front, after
/// the server executed them) create exactly 100 deployments, with 100 executions of the
/// handler, and each run prints its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_creates_through_a_lossy_network_create_a_hundred_deployments() {
    const RUNS: usize = 100;
    let s = Setup::start().await;
    let relay = Relay::start(s.server.addr).await;
    let via = format!("http://{}", relay.addr());
    let started = Instant::now();
    let mut printed = HashSet::new();
    let mut lossy_runs = 0;
    for run in 0..RUNS {
        // 37 is prime to 100: exactly 30 of the 100 runs, spread out.
        let lossy = (run * 37) % 100 < 30;
        if lossy {
            lossy_runs += 1;
            relay.lose_replies(1);
        }
        let git_ref = format!("v1.0.{run}");
        let result = s
            .deploy_via(
                &via,
                &[
                    "create",
                    "--project",
                    "api",
                    "--environment",
                    "production",
                    "--ref",
                    &git_ref,
                ],
            )
            .await;
        let deployment = result.json();
        assert_eq!(deployment["ref"], git_ref.as_str(), "its own: {result:#?}");
        if lossy {
            assert_eq!(relay.lost_replies(), lossy_runs, "{result:#?}");
            assert!(
                result.stderr.contains("retry: attempt 1 of 5 failed"),
                "{result:#?}"
            );
            assert!(
                result.stderr.contains("Idempotent-Replayed: true"),
                "{result:#?}"
            );
        } else {
            assert!(result.stderr.is_empty(), "{result:#?}");
        }
        let id = deployment["id"].as_str().unwrap().to_owned();
        assert!(printed.insert(id), "printed twice: {result:#?}");
    }
    let elapsed = started.elapsed();
    assert_eq!(lossy_runs, 30);
    assert_eq!(relay.lost_replies(), 30);

    assert_eq!(s.rows().await, RUNS as i64);
    let stored: HashSet<String> = s
        .server
        .list_all(&s.token, 100)
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        stored, printed,
        "every printed deployment exists, and no other"
    );
    assert_eq!(
        s.server.executions().await,
        Executions::exactly(RUNS as u64),
        "one execution per run: every retry was a replay"
    );
    eprintln!("{RUNS} runs in {elapsed:?}");
    s.server.stop().await;
}
