//! Hostile and malformed input over real TCP, against SQLite and PostgreSQL: headers and
//! bodies at and past every limit, stalled and dripping uploads, broken JSON, wrong content
//! types and many users sharing key names. Every answer must be a 4xx (a problem document
//! wherever the app, not hyper's HTTP parser, answers), nothing may run twice, nothing may be
//! created by a refused request, and the server must stay up.

#[macro_use]
mod common;

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use backend::Settings;
use common::{
    Backend, Executions, Store, TYPE_BASE, TestDb, TestServer, deployment, expect_problem, token,
};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
};

backend_tests!(
    keys_at_and_past_the_length_limit,
    keys_with_hostile_bytes,
    repeated_and_list_keys,
    ten_mib_bodies_are_refused,
    bodies_at_the_limit,
    stalled_bodies_time_out_and_leave_the_key_free,
    dripping_bodies_hit_the_deadline,
    hostile_json_bodies,
    wrong_content_types,
    nul_characters_are_refused_not_stored,
    users_never_see_each_others_responses,
    hostile_status_reports,
    hostile_ids_and_queries,
);

/// Acceptable answers: (status, problem slug), an empty slug for a bare answer from hyper.
type Allowed<'a> = &'a [(u16, &'a str)];

/// The request-body timeout the slow-body tests configure.
const BODY_TIMEOUT: Duration = Duration::from_secs(1);

/// How long any single raw exchange may take before the test calls the server hung.
const RAW_DEADLINE: Duration = Duration::from_secs(15);

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// `POST /api/deployments`, authenticated; the caller adds headers and body. Bytes that are
/// not valid in a header value at all need the raw helpers instead.
fn post(server: &TestServer, token: &str) -> reqwest::RequestBuilder {
    server
        .client
        .post(server.url("/api/deployments"))
        .bearer_auth(token)
}

/// A header value from raw bytes (HTAB and obs-text, i.e. bytes >= 0x80, are allowed).
fn header_value(bytes: &[u8]) -> header::HeaderValue {
    header::HeaderValue::from_bytes(bytes).expect("a valid header value")
}

/// Asserts a 4xx answer among `allowed` (status, problem slug; an empty slug allows a bare
/// answer from hyper's HTTP parser) and returns the status.
async fn expect_4xx(response: reqwest::Response, allowed: Allowed<'_>, what: &str) -> u16 {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.unwrap_or_default();
    check_answer(status, &content_type, &body, allowed, what);
    status
}

fn check_answer(status: u16, content_type: &str, body: &[u8], allowed: Allowed<'_>, what: &str) {
    let text = String::from_utf8_lossy(&body[..body.len().min(500)]);
    assert!(
        (400..500).contains(&status),
        "{what}: expected a 4xx, got {status}: {text}"
    );
    if content_type == "application/problem+json" {
        let problem: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what}: problem is not JSON ({e}): {text}"));
        assert!(text.starts_with("{\"type\":"), "{what}: {text}");
        assert_eq!(problem["status"], status, "{what}: {problem}");
        assert!(problem["title"].is_string(), "{what}: {problem}");
        assert!(problem["detail"].is_string(), "{what}: {problem}");
        let type_uri = problem["type"].as_str().unwrap_or_default();
        let slug = type_uri.strip_prefix(TYPE_BASE).unwrap_or_else(|| {
            panic!("{what}: problem type outside the API's namespace: {problem}")
        });
        assert_eq!(
            problem["code"], slug,
            "{what}: every problem carries its code"
        );
        assert!(
            allowed.contains(&(status, slug)),
            "{what}: got {status} `{slug}`, expected one of {allowed:?}: {problem}"
        );
    } else {
        // Only hyper answers without a problem document (it refuses what it cannot parse
        // before the app sees a request).
        assert!(
            allowed.contains(&(status, "")),
            "{what}: got {status} without a problem ({content_type:?}), expected one of \
             {allowed:?}: {text}"
        );
    }
}

async fn count(t: &TestDb, user: &str) -> i64 {
    t.db.deployments().count_for_user(user).await.unwrap()
}

/// The server still answers, and nothing crashed it.
async fn assert_alive(server: &TestServer) {
    let health = server
        .client
        .get(server.url("/healthz"))
        .send()
        .await
        .expect("the server still accepts connections");
    assert_eq!(health.status(), StatusCode::OK);
}

/// A valid creation body, serialised.
fn body_bytes(project: &str) -> Vec<u8> {
    serde_json::to_vec(&deployment(project)).unwrap()
}

/// One HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn check(&self, allowed: Allowed<'_>, what: &str) {
        let content_type = self.header("content-type").unwrap_or_default();
        check_answer(self.status, content_type, &self.body, allowed, what);
    }
}

/// The request head of a `POST /api/deployments` (no blank line), for raw requests.
fn raw_head(addr: SocketAddr, token: &str, extra: &[&[u8]]) -> Vec<u8> {
    let mut head = format!(
        "POST /api/deployments HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nConnection: close\r\n"
    )
    .into_bytes();
    for line in extra {
        head.extend_from_slice(line);
        head.extend_from_slice(b"\r\n");
    }
    head
}

/// Sends `request` (tolerating a server that answers and closes before reading it all) and
/// reads the response until the server closes the connection.
async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> Raw {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // A refusal may come before the request is written; keep reading regardless.
    let _ = writer.write_all(request).await;
    read_response(&mut reader).await
}

async fn read_response(reader: &mut (impl AsyncReadExt + Unpin)) -> Raw {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(RAW_DEADLINE, async {
        let mut buf = [0u8; 8192];
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
                // A reset after the answer arrived is the server closing a connection whose
                // request it did not read to the end.
                Err(error) if !bytes.is_empty() => {
                    eprintln!("(connection ended with {error} after the answer)");
                    break;
                }
                Err(error) => panic!("no answer, the connection failed: {error}"),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no complete answer within {RAW_DEADLINE:?}");
    parse_response(&bytes)
}

fn parse_response(bytes: &[u8]) -> Raw {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no response head in {:?}", String::from_utf8_lossy(bytes)));
    let head = std::str::from_utf8(&bytes[..head_end]).expect("an ASCII response head");
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = bytes[head_end + 4..].to_vec();
    let chunked = headers.iter().any(|(n, v)| {
        n.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    Raw {
        status,
        headers,
        body,
    }
}

fn dechunk(mut input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = input.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = std::str::from_utf8(&input[..line_end]).unwrap_or("0");
        let size =
            usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        let start = line_end + 2;
        out.extend_from_slice(&input[start..(start + size).min(input.len())]);
        input = &input[(start + size + 2).min(input.len())..];
    }
}

/// A deterministic generator (SplitMix64): reproducible runs without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

// ---------------------------------------------------------------------------------------
// Idempotency-Key header
// ---------------------------------------------------------------------------------------

async fn keys_at_and_past_the_length_limit(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    // Exactly 255 characters: accepted, executed once, replayed in both spellings.
    let longest = "k".repeat(255);
    let first = server
        .create(&alice, Some(&longest), &deployment("longest"))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first_body = first.bytes().await.unwrap();
    for spelling in [longest.clone(), format!("\"{longest}\"")] {
        let retry = server
            .create(&alice, Some(&spelling), &deployment("longest"))
            .await;
        assert_eq!(retry.status(), StatusCode::CREATED);
        assert_eq!(retry.headers()["idempotent-replayed"], "true");
        assert_eq!(retry.bytes().await.unwrap(), first_body);
    }
    // 255 characters written as 510 escaped bytes (the 512-byte header the spec allows).
    let escaped = format!("\"{}\"", "\\\"".repeat(255));
    assert_eq!(escaped.len(), 512);
    let ok = server
        .create(&alice, Some(&escaped), &deployment("escaped"))
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(count(&t, "alice").await, 2);

    // 256 characters, in every spelling: refused before anything runs.
    let over = "k".repeat(256);
    for key in [
        over.clone(),
        format!("\"{over}\""),
        format!("\"{}\"", "\\\\".repeat(256)),
        format!("  {over}\t"),
    ] {
        let response = server.create(&alice, Some(&key), &deployment("over")).await;
        expect_problem(response, 400, "key-invalid").await;
    }

    // 8 KiB and 64 KiB: a 400 problem, or hyper's 431; never a 5xx, never a deployment.
    for size in [8 * 1024, 64 * 1024] {
        for key in ["k".repeat(size), format!("\"{}\"", "k".repeat(size - 2))] {
            let response = server.create(&alice, Some(&key), &deployment("huge")).await;
            let allowed = [(400, "key-invalid"), (431, "")];
            expect_4xx(response, &allowed, &format!("{size}-byte key")).await;
        }
    }
    // Past hyper's header buffer (about 400 KiB): hyper refuses the head. Raw, since a client
    // may see the connection closed while it still writes.
    let giant = format!("Idempotency-Key: {}", "k".repeat(1024 * 1024));
    let mut request = raw_head(server.addr, &alice, &[giant.as_bytes()]);
    request.extend_from_slice(b"Content-Length: 2\r\n\r\n{}");
    let raw = raw_exchange(server.addr, &request).await;
    raw.check(&[(431, ""), (400, "")], "1 MiB key");

    assert_eq!(count(&t, "alice").await, 2, "refused keys created nothing");
    let listed = server.list_all(&alice, 100).await;
    let projects: BTreeSet<_> = listed
        .iter()
        .map(|d| d["project"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        projects,
        BTreeSet::from(["escaped".into(), "longest".into()])
    );
    // Two runs; both retries of the longest key were the layer's replays.
    assert_eq!(server.executions().await, Executions::exactly(2));
    assert_alive(&server).await;
}

async fn keys_with_hostile_bytes(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    // Valid header values (HTAB and obs-text pass hyper's parser) that are not valid keys.
    let values: [&[u8]; 9] = [
        b"a\tb",
        b"\"a\tb\"",
        b"caf\xc3\xa9",
        b"\"caf\xc3\xa9\"",
        b"\x80\x81\x82",
        b"\xff\xfe",
        b"k\xa0k",
        b"\"",
        b"\"\\u0041\"",
    ];
    for value in values {
        let response = post(&server, &alice)
            .header("idempotency-key", header_value(value))
            .json(&deployment("bytes"))
            .send()
            .await
            .unwrap();
        expect_4xx(
            response,
            &[(400, "key-invalid")],
            &format!("key {:?}", String::from_utf8_lossy(value)),
        )
        .await;
    }

    // Control characters and bare CR/LF are not valid header values at all: only a raw
    // client can send them, and hyper's parser refuses the request (or the app does).
    let body = body_bytes("control");
    for value in [
        &b"a\x00b"[..],
        b"a\x01b",
        b"\x1b[31mred",
        b"a\x7fb",
        b"\"a\x08b\"",
        b"a\rb",
        b"a\x0bb",
    ] {
        let mut line = b"Idempotency-Key: ".to_vec();
        line.extend_from_slice(value);
        let mut request = raw_head(server.addr, &alice, &[&line]);
        request.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(&body);
        let raw = raw_exchange(server.addr, &request).await;
        raw.check(
            &[(400, ""), (400, "key-invalid")],
            &format!("key {:?}", String::from_utf8_lossy(value)),
        );
    }
    assert_eq!(count(&t, "alice").await, 0, "refused keys created nothing");

    // The server is unharmed, and a plain key works.
    let ok = server
        .create(&alice, Some("plain"), &deployment("bytes"))
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert_eq!(count(&t, "alice").await, 1);
    assert_eq!(server.executions().await, Executions::exactly(1));
    assert_alive(&server).await;
}

async fn repeated_and_list_keys(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    // 50 field lines, all different or all the same: which one the client meant is unknowable.
    for same in [false, true] {
        let mut request = post(&server, &alice).json(&deployment("many"));
        for i in 0..50 {
            let key = if same {
                "same".to_owned()
            } else {
                format!("key-{i}")
            };
            request = request.header("idempotency-key", key);
        }
        let response = request.send().await.unwrap();
        expect_problem(response, 400, "key-invalid").await;
    }
    // A valid key and an invalid one.
    let response = post(&server, &alice)
        .header("idempotency-key", "good")
        .header("idempotency-key", "")
        .json(&deployment("many"))
        .send()
        .await
        .unwrap();
    expect_problem(response, 400, "key-invalid").await;
    // 150 lines: past hyper's header count (100), so hyper may refuse the head itself.
    let mut request = post(&server, &alice).json(&deployment("many"));
    for i in 0..150 {
        request = request.header("idempotency-key", format!("key-{i}"));
    }
    match request.send().await {
        Ok(response) => {
            expect_4xx(
                response,
                &[(400, "key-invalid"), (431, ""), (400, "")],
                "150 keys",
            )
            .await;
        }
        // Refused before the client finished writing: acceptable, nothing ran.
        Err(error) => eprintln!("150 keys: connection closed early ({error})"),
    }

    // Lists and parameters in one field.
    for value in [
        "a, b",
        "a,b",
        "\"a\", \"b\"",
        "\"a\",",
        ",a",
        "a,",
        "\"a\";p=1",
        "\"a\" \"b\"",
        "\"a\"b",
        "",
        "   ",
        "\"\"",
    ] {
        let response = server
            .create(&alice, Some(value), &deployment("list"))
            .await;
        expect_problem(response, 400, "key-invalid").await;
    }
    assert_eq!(count(&t, "alice").await, 0, "refused keys created nothing");

    // None of the keys above was claimed.
    for key in ["a", "same", "key-0", "good"] {
        let ok = server.create(&alice, Some(key), &deployment("list")).await;
        assert_eq!(ok.status(), StatusCode::CREATED, "{key}");
        assert!(ok.headers().get("idempotent-replayed").is_none(), "{key}");
    }
    assert_eq!(count(&t, "alice").await, 4);
    assert_eq!(server.executions().await, Executions::exactly(4));
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------------------
// Body size
// ---------------------------------------------------------------------------------------

/// `body` in the chunked transfer coding, in chunks of `chunk` bytes.
fn chunked(body: &[u8], chunk: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / chunk * 10 + 16);
    for piece in body.chunks(chunk) {
        out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        out.extend_from_slice(piece);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A raw `POST /api/deployments` of `body`, declared (`Content-Length`) or chunked.
async fn raw_post(
    server: &TestServer,
    token: &str,
    key: Option<&str>,
    body: &[u8],
    chunked_coding: bool,
) -> Raw {
    let key_line = key.map(|key| format!("Idempotency-Key: {key}"));
    let framing = if chunked_coding {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {}", body.len())
    };
    let mut lines: Vec<&[u8]> = vec![framing.as_bytes()];
    if let Some(line) = &key_line {
        lines.push(line.as_bytes());
    }
    let mut request = raw_head(server.addr, token, &lines);
    request.extend_from_slice(b"\r\n");
    if chunked_coding {
        request.extend_from_slice(&chunked(body, 64 * 1024));
    } else {
        request.extend_from_slice(body);
    }
    raw_exchange(server.addr, &request).await
}

async fn send_body(
    server: &TestServer,
    token: &str,
    key: Option<&str>,
    body: reqwest::Body,
) -> Result<reqwest::Response, reqwest::Error> {
    let mut request = post(server, token)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await
}

async fn ten_mib_bodies_are_refused(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let ten_mib = 10 * 1024 * 1024;

    // A valid document padded to 10 MiB: only its size is wrong.
    let mut padded = body_bytes("huge");
    padded.resize(ten_mib, b' ');
    for key in [Some("ten-mib"), None] {
        // With Content-Length: refused from the header, before the body is read.
        let response = send_body(&server, &alice, key, padded.clone().into())
            .await
            .expect("a 413, not a broken connection");
        expect_problem(response, 413, "request-too-large").await;
        // The same over raw TCP, where nothing hides a reset: the answer arrives whole.
        let raw = raw_post(&server, &alice, key, &padded, false).await;
        raw.check(&[(413, "request-too-large")], "declared 10 MiB");
        // Chunked: refused once the limit is crossed.
        let raw = raw_post(&server, &alice, key, &padded, true).await;
        raw.check(&[(413, "request-too-large")], "chunked 10 MiB");
    }
    // A declared 1 GiB, or a client waiting for `100 Continue`: refused at once from the
    // header, without waiting for (or asking for) the body.
    for (what, extra) in [
        (
            "1 GiB declared",
            &[b"Content-Length: 1073741824".as_slice()][..],
        ),
        (
            "Expect: 100-continue",
            &[
                format!("Content-Length: {ten_mib}").as_bytes(),
                b"Expect: 100-continue".as_slice(),
            ][..],
        ),
    ] {
        let started = Instant::now();
        let mut lines = vec![b"Idempotency-Key: declared".as_slice()];
        lines.extend_from_slice(extra);
        let mut head = raw_head(server.addr, &alice, &lines);
        head.extend_from_slice(b"\r\n");
        let raw = raw_exchange(server.addr, &head).await;
        raw.check(&[(413, "request-too-large")], what);
        assert!(started.elapsed() < Duration::from_secs(5), "{what}");
    }
    assert_eq!(count(&t, "alice").await, 0, "nothing created");
    assert_eq!(server.executions().await, Executions::exactly(0));

    // The refused key was never claimed.
    let ok = server
        .create(&alice, Some("ten-mib"), &deployment("huge"))
        .await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(ok.headers().get("idempotent-replayed").is_none());
    assert_eq!(count(&t, "alice").await, 1);
    assert_eq!(server.executions().await, Executions::exactly(1));
    assert_alive(&server).await;
}

async fn bodies_at_the_limit(backend: Backend) {
    let t = TestDb::new(backend).await;
    // The default limit, 1 MiB.
    let server = TestServer::spawn(&t).await;
    let limit = Settings::default().max_body_bytes;
    let alice = token(&t.db, "alice").await;

    let compact = body_bytes("exact");
    let mut exact = compact.clone();
    exact.resize(limit, b' ');
    let mut over = compact.clone();
    over.resize(limit + 1, b' ');

    // Exactly the limit, declared: accepted; the compact spelling is the same request.
    let first = send_body(&server, &alice, Some("exact"), exact.clone().into())
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first_body = first.bytes().await.unwrap();
    let retry = send_body(&server, &alice, Some("exact"), compact.clone().into())
        .await
        .unwrap();
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert_eq!(retry.headers()["idempotent-replayed"], "true");
    assert_eq!(retry.bytes().await.unwrap(), first_body);

    // Exactly the limit, chunked, without a key: accepted.
    let raw = raw_post(&server, &alice, None, &exact, true).await;
    assert_eq!(raw.status, 201, "{}", String::from_utf8_lossy(&raw.body));
    assert_eq!(count(&t, "alice").await, 2);

    // One byte over, declared or chunked, with or without a key: 413, nothing created.
    for key in [Some("over"), None] {
        let response = send_body(&server, &alice, key, over.clone().into())
            .await
            .unwrap();
        expect_problem(response, 413, "request-too-large").await;
        let raw = raw_post(&server, &alice, key, &over, true).await;
        raw.check(&[(413, "request-too-large")], "chunked, one byte over");
    }
    assert_eq!(count(&t, "alice").await, 2);
    // The key of the refused body is free.
    let ok = send_body(&server, &alice, Some("over"), compact.into())
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::CREATED);
    assert!(ok.headers().get("idempotent-replayed").is_none());
    assert_eq!(count(&t, "alice").await, 3);

    // A small configured limit behaves the same at its edge.
    let small = TestServer::spawn_with(
        &t,
        Settings {
            max_body_bytes: 4096,
            ..Settings::default()
        },
    )
    .await;
    let mut at = body_bytes("small");
    at.resize(4096, b'\n');
    let response = send_body(&small, &alice, Some("small"), at.clone().into())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    at.push(b'\n');
    let response = send_body(&small, &alice, Some("small-over"), at.into())
        .await
        .unwrap();
    expect_problem(response, 413, "request-too-large").await;
    assert_eq!(count(&t, "alice").await, 4);
    // Keyed runs: `exact` (its retry a replay) and the corrected `over`; on the small
    // server `small` only. The chunked body without a key is not deduplicated, not counted.
    assert_eq!(server.executions().await, Executions::exactly(2));
    assert_eq!(small.executions().await, Executions::exactly(1));
    assert_alive(&server).await;
    assert_alive(&small).await;
}

// ---------------------------------------------------------------------------------------
// Slow bodies
// ---------------------------------------------------------------------------------------

async fn slow_server(t: &TestDb) -> TestServer {
    TestServer::spawn_with(
        t,
        Settings {
            request_timeout: BODY_TIMEOUT,
            ..Settings::default()
        },
    )
    .await
}

/// Sends `head` and `partial`, then stalls (the socket stays open) and waits for the answer.
async fn stall(addr: SocketAddr, head: Vec<u8>, partial: Vec<u8>) -> (Raw, Duration) {
    let started = Instant::now();
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(&head).await.unwrap();
    writer.write_all(&partial).await.unwrap();
    writer.flush().await.unwrap();
    let raw = read_response(&mut reader).await;
    let elapsed = started.elapsed();
    drop(writer);
    (raw, elapsed)
}

fn assert_timed_out(raw: &Raw, elapsed: Duration, what: &str) {
    raw.check(&[(408, "request-timeout")], what);
    assert_eq!(raw.header("connection"), Some("close"), "{what}");
    assert!(
        elapsed >= BODY_TIMEOUT - Duration::from_millis(50),
        "{what}: answered after {elapsed:?}, before the timeout"
    );
    assert!(
        elapsed < BODY_TIMEOUT + Duration::from_secs(4),
        "{what}: answered after {elapsed:?}"
    );
}

async fn stalled_bodies_time_out_and_leave_the_key_free(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = slow_server(&t).await;
    let alice = token(&t.db, "alice").await;
    let body = body_bytes("stalled");
    let half = &body[..body.len() / 2];

    // Declared length, half the body sent.
    let declared = |key: &str| {
        let key_line = format!("Idempotency-Key: {key}");
        let length = format!("Content-Length: {}", body.len());
        let mut head = raw_head(
            server.addr,
            &alice,
            &[key_line.as_bytes(), length.as_bytes()],
        );
        head.extend_from_slice(b"\r\n");
        head
    };
    // Chunked, one chunk sent.
    let chunked_head = |key: &str| {
        let key_line = format!("Idempotency-Key: {key}");
        let mut head = raw_head(
            server.addr,
            &alice,
            &[key_line.as_bytes(), b"Transfer-Encoding: chunked"],
        );
        head.extend_from_slice(b"\r\n");
        head
    };
    let mut one_chunk = format!("{:x}\r\n", half.len()).into_bytes();
    one_chunk.extend_from_slice(half);
    one_chunk.extend_from_slice(b"\r\n");

    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("half a declared body", declared("stall-1"), half.to_vec()),
        ("headers only", declared("stall-2"), Vec::new()),
        ("one chunk", chunked_head("stall-3"), one_chunk.clone()),
        (
            "half a chunk header",
            chunked_head("stall-4"),
            b"1".to_vec(),
        ),
    ];
    for (i, (what, head, partial)) in cases.into_iter().enumerate() {
        let key = format!("stall-{}", i + 1);
        let stalled = tokio::spawn(stall(server.addr, head, partial));
        // While it stalls the server serves others, and the key is not claimed by it: the
        // stalled request never reached the idempotency layer.
        tokio::time::sleep(BODY_TIMEOUT / 4).await;
        let other = server
            .create(
                &alice,
                Some(&format!("meanwhile-{i}")),
                &deployment("other"),
            )
            .await;
        assert_eq!(other.status(), StatusCode::CREATED, "{what}");
        let (raw, elapsed) = stalled.await.unwrap();
        assert_timed_out(&raw, elapsed, what);

        // A normal retry with the same key creates exactly one deployment...
        let retry = server.create_raw(&alice, Some(&key), body.clone()).await;
        assert_eq!(retry.status(), StatusCode::CREATED, "{what}");
        assert!(
            retry.headers().get("idempotent-replayed").is_none(),
            "{what}"
        );
        let created = retry.bytes().await.unwrap();
        // ...and is then replayed.
        let again = server.create_raw(&alice, Some(&key), body.clone()).await;
        assert_eq!(again.headers()["idempotent-replayed"], "true", "{what}");
        assert_eq!(again.bytes().await.unwrap(), created, "{what}");
        let record = t.db.deployments().find_by_key("alice", &key).await.unwrap();
        assert!(record.is_some(), "{what}");
    }
    assert_eq!(
        count(&t, "alice").await,
        8,
        "4 stalled keys and 4 others, once each"
    );

    // Stalled with a key that a normal request uses at the same time: the normal request
    // is not blocked (no 409), and the stalled one still gets its 408.
    let stalled = tokio::spawn(stall(server.addr, declared("contested"), half.to_vec()));
    tokio::time::sleep(BODY_TIMEOUT / 4).await;
    let normal = server
        .create_raw(&alice, Some("contested"), body.clone())
        .await;
    assert_eq!(normal.status(), StatusCode::CREATED);
    let (raw, elapsed) = stalled.await.unwrap();
    assert_timed_out(&raw, elapsed, "contested key");
    let replay = server
        .create_raw(&alice, Some("contested"), body.clone())
        .await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    // 4 stalled keys retried, 4 others, the contested one: each run once, every stalled
    // upload before the layer, every second request a replay of the layer's.
    assert_eq!(server.executions().await, Executions::exactly(9));

    // Without a key: 408 and nothing created.
    let before = count(&t, "alice").await;
    let length = format!("Content-Length: {}", body.len());
    let mut head = raw_head(server.addr, &alice, &[length.as_bytes()]);
    head.extend_from_slice(b"\r\n");
    let (raw, elapsed) = stall(server.addr, head, half.to_vec()).await;
    assert_timed_out(&raw, elapsed, "no key");
    assert_eq!(count(&t, "alice").await, before);
    assert_eq!(server.executions().await, Executions::exactly(9));
    assert_alive(&server).await;
}

async fn dripping_bodies_hit_the_deadline(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = slow_server(&t).await;
    let alice = token(&t.db, "alice").await;
    let body = body_bytes("drip");

    // One byte every 100 ms would take ~8 s: the timeout bounds the whole body, not the
    // gap between bytes, so the drip is cut off after about a second.
    let key_line = b"Idempotency-Key: drip";
    let length = format!("Content-Length: {}", body.len());
    let mut head = raw_head(server.addr, &alice, &[key_line, length.as_bytes()]);
    head.extend_from_slice(b"\r\n");
    let started = Instant::now();
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer.write_all(&head).await.unwrap();
    let drip_body = body.clone();
    let drip = tokio::spawn(async move {
        for byte in drip_body {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let raw = read_response(&mut reader).await;
    let elapsed = started.elapsed();
    drip.abort();
    assert_timed_out(&raw, elapsed, "drip");

    let retry = server.create_raw(&alice, Some("drip"), body.clone()).await;
    assert_eq!(retry.status(), StatusCode::CREATED);
    assert!(retry.headers().get("idempotent-replayed").is_none());
    assert_eq!(count(&t, "alice").await, 1);
    assert_eq!(server.executions().await, Executions::exactly(1));
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------------------
// Malformed JSON and content types
// ---------------------------------------------------------------------------------------

async fn hostile_json_bodies(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    let malformed: Allowed<'_> = &[(400, "malformed-body")];
    let malformed_or_invalid: Allowed<'_> = &[(400, "malformed-body"), (422, "validation-failed")];
    // A valid body with one member's value replaced by raw JSON text.
    let with = |field: &'static str, raw: &str| -> Vec<u8> {
        let mut fields = BTreeMap::from([
            ("project", "\"p\"".to_owned()),
            ("environment", "\"e\"".to_owned()),
            ("ref", "\"r\"".to_owned()),
        ]);
        fields.insert(field, raw.to_owned());
        let members: Vec<String> = fields.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
        format!("{{{}}}", members.join(",")).into_bytes()
    };
    let deep = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
    let huge_int = "9".repeat(100_000);
    let many_members: String = (0..10_000)
        .map(|i| format!("\"m{i}\":{i}"))
        .collect::<Vec<_>>()
        .join(",");

    let cases: Vec<(&str, Vec<u8>, Allowed<'_>)> = vec![
        // Not UTF-8.
        (
            "invalid UTF-8 in a string",
            b"{\"project\":\"\xff\xfe\",\"environment\":\"e\",\"ref\":\"r\"}".to_vec(),
            malformed,
        ),
        (
            "invalid UTF-8 outside strings",
            b"\xff{\"project\":\"p\"}".to_vec(),
            malformed,
        ),
        (
            "overlong UTF-8",
            b"{\"project\":\"\xc0\xaf\",\"environment\":\"e\",\"ref\":\"r\"}".to_vec(),
            malformed,
        ),
        (
            "UTF-16",
            "{\"project\":\"p\"}"
                .encode_utf16()
                .flat_map(u16::to_le_bytes)
                .collect(),
            malformed,
        ),
        (
            "byte order mark",
            [&b"\xef\xbb\xbf"[..], &body_bytes("bom")].concat(),
            malformed,
        ),
        (
            "lone surrogate",
            with("description", r#""\ud800""#),
            malformed,
        ),
        (
            "truncated escape",
            with("description", r#""\u12""#),
            malformed,
        ),
        // Nesting.
        (
            "100,000 unclosed [",
            "[".repeat(100_000).into_bytes(),
            malformed,
        ),
        (
            "100,000 nested arrays",
            deep(100_000).into_bytes(),
            malformed,
        ),
        (
            "100,000 nested objects",
            format!("{}1{}", "{\"a\":".repeat(100_000), "}".repeat(100_000)).into_bytes(),
            malformed,
        ),
        (
            "deep description",
            with("description", &deep(50_000)),
            malformed,
        ),
        (
            "nesting under serde's limit",
            with("description", &deep(100)),
            &[(422, "validation-failed")],
        ),
        // Numbers.
        ("1e999999", with("project", "1e999999"), malformed),
        ("-1e999999", with("description", "-1e999999"), malformed),
        (
            "100,000-digit integer",
            with("description", &huge_int),
            malformed_or_invalid,
        ),
        (
            "100,000-digit fraction",
            with("description", &format!("0.{huge_int}")),
            malformed_or_invalid,
        ),
        (
            "tiny exponent",
            with("description", "1e-999999"),
            &[(422, "validation-failed")],
        ),
        (
            "u64 overflow",
            with("project", "18446744073709551616"),
            &[(422, "validation-failed")],
        ),
        ("NaN", with("description", "NaN"), malformed),
        ("Infinity", with("description", "Infinity"), malformed),
        ("leading zeros", with("description", "007"), malformed),
        // Duplicates: one member, two values; which one counts would be parser-dependent.
        (
            "duplicate member",
            br#"{"project":"a","project":"b","environment":"e","ref":"r"}"#.to_vec(),
            malformed,
        ),
        (
            "duplicate member, same value",
            br#"{"project":"a","environment":"e","ref":"r","ref":"r"}"#.to_vec(),
            malformed,
        ),
        (
            "duplicate escaped member",
            br#"{"project":"a","environment":"e","ref":"r","r\u0065f":"s"}"#.to_vec(),
            malformed,
        ),
        (
            "duplicate unknown member",
            br#"{"project":"a","environment":"e","ref":"r","x":1,"x":2}"#.to_vec(),
            malformed,
        ),
        // Other shapes.
        ("empty body", Vec::new(), malformed),
        ("whitespace only", b" \n\t ".to_vec(), malformed),
        ("null", b"null".to_vec(), malformed),
        ("a string", b"\"deploy\"".to_vec(), malformed),
        ("an array", b"[{\"project\":\"p\"}]".to_vec(), malformed),
        (
            "trailing garbage",
            [body_bytes("x"), b" x".to_vec()].concat(),
            malformed,
        ),
        (
            "two documents",
            [body_bytes("x"), body_bytes("y")].concat(),
            malformed,
        ),
        (
            "trailing comma",
            br#"{"project":"p","environment":"e","ref":"r",}"#.to_vec(),
            malformed,
        ),
        ("single quotes", b"{'project':'p'}".to_vec(), malformed),
        (
            "comment",
            b"{/* hi */\"project\":\"p\"}".to_vec(),
            malformed,
        ),
        ("NUL byte", b"{\"project\":\"p\"\x00}".to_vec(), malformed),
        (
            "10,000 unknown members",
            format!("{{\"project\":\"p\",\"environment\":\"e\",\"ref\":\"r\",{many_members}}}")
                .into_bytes(),
            &[(422, "validation-failed")],
        ),
        (
            "wrong member types",
            br#"{"project":["p"],"environment":{"e":1},"ref":true,"description":[]}"#.to_vec(),
            &[(422, "validation-failed")],
        ),
    ];

    // Keyed requests refused by the handler (422 per field, or 400 for valid JSON that is not
    // an object) did enter its body; those refused by the JSON extractor (400) did not. The
    // layer ran its inner service for all of them.
    const NOT_OBJECTS: [&str; 3] = ["null", "a string", "an array"];
    let mut validated = 0;
    for (i, (what, body, allowed)) in cases.iter().enumerate() {
        for key in [Some(format!("json-{i}")), None] {
            let response = server
                .create_raw(&alice, key.as_deref(), body.clone())
                .await;
            let status = expect_4xx(response, allowed, what).await;
            if key.is_some() && (status == 422 || NOT_OBJECTS.contains(what)) {
                validated += 1;
            }
        }
    }
    assert_eq!(
        count(&t, "alice").await,
        0,
        "no hostile body created anything"
    );

    // Every key a hostile body carried is free for a corrected request.
    for what in [
        "invalid UTF-8 in a string",
        "100,000 nested arrays",
        "1e999999",
        "duplicate member",
    ] {
        let i = cases.iter().position(|case| case.0 == what).unwrap();
        let key = format!("json-{i}");
        let ok = server
            .create(&alice, Some(&key), &deployment("fixed"))
            .await;
        assert_eq!(ok.status(), StatusCode::CREATED, "{what}");
        assert!(ok.headers().get("idempotent-replayed").is_none(), "{what}");
    }
    assert_eq!(count(&t, "alice").await, 4);
    assert!(validated >= 8, "{validated} bodies reached the handler");
    assert_eq!(
        server.executions().await,
        Executions {
            handler: validated + 4,
            layer: cases.len() as u64 + 4,
            guard_hits: 0,
        }
    );
    assert_alive(&server).await;
}

async fn wrong_content_types(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let body = body_bytes("typed");
    let refused: Allowed<'_> = &[(415, "unsupported-content-type")];

    let types: [Option<&[u8]>; 12] = [
        None,
        Some(b"text/plain"),
        Some(b"text/json"),
        Some(b"application/x-www-form-urlencoded"),
        Some(b"multipart/form-data; boundary=x"),
        Some(b"application/xml"),
        Some(b"application/jsonx"),
        Some(b"application/"),
        Some(b"json"),
        Some(b""),
        Some(b"application/json\xff"),
        Some(b"\xe2\x98\x83/json"),
    ];
    for content_type in types {
        for key in [Some("typed"), None] {
            let mut request = post(&server, &alice).body(body.clone());
            if let Some(content_type) = content_type {
                request = request.header(header::CONTENT_TYPE, header_value(content_type));
            }
            if let Some(key) = key {
                request = request.header("idempotency-key", key);
            }
            let response = request.send().await.unwrap();
            expect_4xx(
                response,
                refused,
                &format!(
                    "Content-Type {:?}",
                    content_type.map(String::from_utf8_lossy)
                ),
            )
            .await;
        }
    }
    assert_eq!(count(&t, "alice").await, 0);

    // JSON under another name is JSON, and its key was never claimed by the refusals.
    for (i, content_type) in [
        "Application/JSON; charset=utf-8",
        "application/merge-patch+json",
    ]
    .into_iter()
    .enumerate()
    {
        let key = if i == 0 {
            "typed".to_owned()
        } else {
            format!("typed-{i}")
        };
        let response = post(&server, &alice)
            .header(header::CONTENT_TYPE, content_type)
            .header("idempotency-key", key)
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED, "{content_type}");
        assert!(response.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(count(&t, "alice").await, 2);
    // The 12 keyed refusals passed the layer and were refused by the JSON extractor,
    // before the handler's body; the handler ran for the two JSON requests only.
    assert_eq!(
        server.executions().await,
        Executions {
            handler: 2,
            layer: 14,
            guard_hits: 0,
        }
    );
    assert_alive(&server).await;
}

async fn nul_characters_are_refused_not_stored(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;

    // U+0000 is valid JSON, but PostgreSQL text cannot hold it: refuse it as invalid input
    // rather than fail on insert.
    for (field, value) in [
        ("description", "before\u{0}after"),
        ("description", "\u{0}"),
        ("ref", "v1\u{0}"),
        ("project", "\u{0}"),
    ] {
        let mut body = deployment("nul");
        body[field] = json!(value);
        for key in [Some("nul"), None] {
            let response = server.create(&alice, key, &body).await;
            let problem = expect_problem(response, 422, "validation-failed").await;
            assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        }
    }
    // An unknown member named U+0000 is an unknown member.
    let mut body = deployment("nul");
    body["\u{0}"] = json!(1);
    let response = server.create(&alice, None, &body).await;
    expect_problem(response, 422, "validation-failed").await;

    // Ids and cursors with NUL (or other junk) are unknown, not errors.
    for path in [
        "/api/deployments/%00",
        "/api/deployments/a%00b",
        "/api/deployments/%FF%FE",
        "/api/deployments/%C0%AF",
        "/api/deployments/%E2%80%AE",
    ] {
        let response = server.get(&alice, path).await;
        expect_problem(response, 404, "not-found").await;
    }
    for query in [
        "cursor=%00",
        "cursor=AA",
        "limit=%00",
        "limit=1%00",
        "cursor=%FF",
    ] {
        let response = server
            .get(&alice, &format!("/api/deployments?{query}"))
            .await;
        expect_problem(response, 400, "invalid-parameter").await;
    }
    assert_eq!(count(&t, "alice").await, 0);
    // Newlines and tabs in a description are fine.
    let mut body = deployment("nul");
    body["description"] = json!("line one\nline two\ttabbed");
    let ok = server.create(&alice, Some("nul"), &body).await;
    assert_eq!(ok.status(), StatusCode::CREATED);
    // Four keyed refusals by validation (each freed the key) and the accepted request.
    assert_eq!(server.executions().await, Executions::exactly(5));
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------------------
// Tenancy
// ---------------------------------------------------------------------------------------

async fn users_never_see_each_others_responses(backend: Backend) {
    const USERS: usize = 20;
    const KEYS: usize = 12;
    const REQUESTS: usize = 200;

    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let mut users = Vec::new();
    for u in 0..USERS {
        let name = format!("user-{u:02}");
        let token = token(&t.db, &name).await;
        users.push((name, token));
    }
    let seed = std::env::var("HOSTILE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_0F7E_4A47);
    eprintln!("tenancy: seed {seed} (set HOSTILE_SEED to replay)");
    let mut rng = Rng(seed);
    // Few key names for many users: most keys are used by several users, and some pairs
    // repeat (retries).
    let pairs: Vec<(usize, String)> = (0..REQUESTS)
        .map(|_| (rng.below(USERS), format!("key-{}", rng.below(KEYS))))
        .collect();

    // All at once, 16 in flight, each on its own connection; a 409 (same user and key in
    // flight) is retried until it gets the answer.
    let users = Arc::new(users);
    let limit = Arc::new(Semaphore::new(16));
    let mut tasks = JoinSet::new();
    for (index, (user, key)) in pairs.iter().cloned().enumerate() {
        let users = Arc::clone(&users);
        let limit = Arc::clone(&limit);
        let url = server.url("/api/deployments");
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.unwrap();
            let client = reqwest::Client::new();
            // The same body for every user: only the scope tells their requests apart.
            let body = deployment(&format!("shared-{key}"));
            for _ in 0..200 {
                let response = client
                    .post(&url)
                    .bearer_auth(&users[user].1)
                    .header("idempotency-key", &key)
                    .json(&body)
                    .send()
                    .await
                    .unwrap();
                let status = response.status();
                if status == StatusCode::CONFLICT {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let replayed = response.headers().get("idempotent-replayed").is_some();
                let bytes = response.bytes().await.unwrap();
                assert_eq!(
                    status,
                    StatusCode::CREATED,
                    "request {index}: {}",
                    String::from_utf8_lossy(&bytes)
                );
                return (index, user, key, replayed, bytes);
            }
            panic!("request {index}: still 409 after 200 tries");
        });
    }
    let answers = tasks.join_all().await;

    // Per (user, key): one execution, one deployment, identical bytes for every answer.
    let mut by_pair: HashMap<(usize, String), Vec<(bool, bytes::Bytes)>> = HashMap::new();
    for (_, user, key, replayed, bytes) in answers {
        by_pair
            .entry((user, key))
            .or_default()
            .push((replayed, bytes));
    }
    let mut ids: HashMap<String, (usize, String)> = HashMap::new();
    for ((user, key), answers) in &by_pair {
        let executed = answers.iter().filter(|(replayed, _)| !replayed).count();
        assert_eq!(
            executed, 1,
            "{}/{key} executed {executed} times",
            users[*user].0
        );
        let first = &answers[0].1;
        assert!(
            answers.iter().all(|(_, bytes)| bytes == first),
            "{}/{key}: answers differ",
            users[*user].0
        );
        let document: Value = serde_json::from_slice(first).unwrap();
        let id = document["id"].as_str().unwrap().to_owned();
        assert_eq!(document["project"], format!("shared-{key}"));
        let previous = ids.insert(id.clone(), (*user, key.clone()));
        assert!(
            previous.is_none(),
            "deployment {id} answered to {}/{key} and to {previous:?}",
            users[*user].0
        );
        // The deployment is the user's own, recorded under this key.
        let (name, _) = &users[*user];
        let row = t.db.deployments().get(name, &id).await.unwrap();
        let row = row.unwrap_or_else(|| panic!("{id} does not belong to {name}"));
        assert_eq!(row.user_id, *name);
        assert_eq!(row.idempotency_key.as_deref(), Some(key.as_str()));
        let by_key = t.db.deployments().find_by_key(name, key).await.unwrap();
        assert_eq!(by_key.map(|r| r.id), Some(id.clone()));
    }
    let collisions = (0..KEYS)
        .filter(|k| {
            by_pair
                .keys()
                .filter(|(_, key)| *key == format!("key-{k}"))
                .count()
                > 1
        })
        .count();
    let repeats = REQUESTS - by_pair.len();
    eprintln!(
        "tenancy: {} (user, key) pairs, {repeats} repeated requests, {collisions} keys shared by \
         several users",
        by_pair.len()
    );
    assert!(
        collisions > 0 && repeats > 0,
        "the seed must produce collisions"
    );
    // One original answer per pair would also result if the database guard had
    // answered the repeats (its answers are marked as replays): count the runs themselves.
    assert_eq!(
        server.executions().await,
        Executions::exactly(by_pair.len() as u64),
        "one execution per (user, key), each repeat a replay of the layer's"
    );
    let log = server.execution_log();
    assert_eq!(log.per_record.len(), by_pair.len());
    assert!(
        log.per_record.values().all(|n| *n == 1),
        "{:?}",
        log.per_record
    );

    // Counts, listings and cross-user reads.
    for (u, (name, token)) in users.iter().enumerate() {
        let mine: BTreeSet<String> = ids
            .iter()
            .filter(|(_, (owner, _))| *owner == u)
            .map(|(id, _)| id.clone())
            .collect();
        assert_eq!(count(&t, name).await, mine.len() as i64, "{name}");
        let listed: BTreeSet<String> = server
            .list_all(token, 100)
            .await
            .into_iter()
            .map(|d| d["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, mine, "{name} lists exactly their own deployments");
    }
    // Another user's id is a 404, over HTTP and in the database.
    for (id, (owner, _)) in ids.iter().take(40) {
        let other = (owner + 1) % USERS;
        let response = server
            .get(&users[other].1, &format!("/api/deployments/{id}"))
            .await;
        expect_problem(response, 404, "not-found").await;
        let row = t.db.deployments().get(&users[other].0, id).await.unwrap();
        assert!(row.is_none());
    }
    assert_alive(&server).await;
}

// ---------------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------------

/// The body timeout the slow-body tests rely on is a documented setting of the binary.
#[test]
fn request_timeout_is_a_setting() {
    let backend = env!("CARGO_BIN_EXE_backend");
    let help = std::process::Command::new(backend)
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8(help.stdout).unwrap();
    for needle in ["--request-timeout", "BACKEND_REQUEST_TIMEOUT", "408"] {
        assert!(help.contains(needle), "--help lacks {needle}: {help}");
    }
    // Nonsense is refused at startup, before anything binds or connects.
    for bad in ["10ms", "soon", "0s"] {
        let output = std::process::Command::new(backend)
            .args(["serve", "--request-timeout", bad])
            .env("DATABASE_URL", "sqlite:///nonexistent-dir/never-created.db")
            .output()
            .unwrap();
        assert!(!output.status.success(), "--request-timeout {bad} accepted");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("--request-timeout"), "{bad}: {stderr}");
    }
}

// ---------------------------------------------------------------------------------------
// Status reports, ids and list queries
// ---------------------------------------------------------------------------------------

async fn statuses_of(t: &TestDb, id: &str) -> i64 {
    let sql_sqlite = "SELECT COUNT(*) FROM deployment_statuses WHERE deployment_id = ?";
    let sql_postgres = "SELECT COUNT(*) FROM deployment_statuses WHERE deployment_id = $1";
    match &t.db {
        backend::Db::Sqlite(pool) => {
            sqlx::query_scalar(sql_sqlite)
                .bind(id)
                .fetch_one(pool)
                .await
        }
        backend::Db::Postgres(pool) => {
            sqlx::query_scalar(sql_postgres)
                .bind(id)
                .fetch_one(pool)
                .await
        }
    }
    .unwrap()
}

async fn hostile_status_reports(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn_store(&t, Settings::default(), Store::Database, &[]).await;
    let alice = token(&t.db, "alice").await;
    let created: Value = server
        .create(&alice, None, &deployment("target"))
        .await
        .json()
        .await
        .unwrap();
    let id = created["id"].as_str().unwrap().to_owned();
    let url = server.url(&format!("/api/deployments/{id}/statuses"));
    let refused: Allowed<'_> = &[
        (400, "malformed-body"),
        (422, "validation-failed"),
        (409, "invalid-transition"),
        (413, "request-too-large"),
    ];
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let bodies: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"null".to_vec(),
        b"[]".to_vec(),
        b"\"in_progress\"".to_vec(),
        br#"{"state":"in_progress","state":"success"}"#.to_vec(),
        br#"{"state":"in_progress\u0000"}"#.to_vec(),
        br#"{"state":"IN_PROGRESS"}"#.to_vec(),
        br#"{"state":["in_progress"]}"#.to_vec(),
        br#"{"state":"success"}"#.to_vec(),
        br#"{"state":"in_progress","log_url":"https://x/\u0000"}"#.to_vec(),
        br#"{"state":"in_progress","log_url":"https://\u00e9"}"#.to_vec(),
        format!(
            r#"{{"state":"in_progress","log_url":"https://{}"}}"#,
            "a".repeat(3000)
        )
        .into_bytes(),
        format!(
            r#"{{"state":"in_progress","description":"{}"}}"#,
            "x".repeat(1001)
        )
        .into_bytes(),
        deep.into_bytes(),
        vec![0xff, 0xfe, b'{'],
        vec![b' '; 2 * 1024 * 1024],
    ];
    for (i, body) in bodies.into_iter().enumerate() {
        let what = format!("status body #{i}");
        let response = server
            .client
            .post(&url)
            .bearer_auth(&alice)
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", format!("hostile-{i}"))
            .body(body)
            .send()
            .await
            .unwrap();
        expect_4xx(response, refused, &what).await;
    }
    assert_eq!(statuses_of(&t, &id).await, 0, "nothing was added");
    // Every refusal freed its key: a valid report with one of them runs.
    let fine = server
        .client
        .post(&url)
        .bearer_auth(&alice)
        .header("idempotency-key", "hostile-1")
        .json(&serde_json::json!({"state": "in_progress"}))
        .send()
        .await
        .unwrap();
    assert_eq!(fine.status(), StatusCode::CREATED);
    assert_alive(&server).await;
    server.stop().await;
}

async fn hostile_ids_and_queries(backend: Backend) {
    let t = TestDb::new(backend).await;
    let server = TestServer::spawn(&t).await;
    let alice = token(&t.db, "alice").await;
    let long = "a".repeat(10_000);
    for id in [
        "%00",
        "a%00b",
        "%ff%fe",
        "..%2f..%2fetc",
        "%27%20OR%201=1--",
        "%F0%9F%92%A5",
        long.as_str(),
    ] {
        for path in [
            format!("/api/deployments/{id}"),
            format!("/api/deployments/{id}/statuses"),
        ] {
            let response = server.get(&alice, &path).await;
            expect_4xx(response, &[(404, "not-found")], &path).await;
        }
        let response = server
            .client
            .post(server.url(&format!("/api/deployments/{id}/statuses")))
            .bearer_auth(&alice)
            .json(&serde_json::json!({"state": "in_progress"}))
            .send()
            .await
            .unwrap();
        expect_4xx(response, &[(404, "not-found")], id).await;
    }
    let many = vec!["project=a"; 5000].join("&");
    for query in [
        "project=%00",
        "ref=%00",
        "status=%ff",
        "%ff=1",
        "=",
        "project",
        "limit=-1",
        "limit=99999999999999999999",
        "cursor=%00",
        "cursor=djI6JyBPUiAxPTEtLQ",
        many.as_str(),
    ] {
        let response = server
            .get(&alice, &format!("/api/deployments?{query}"))
            .await;
        let what = format!("query {}", &query[..query.len().min(60)]);
        expect_4xx(response, &[(400, "invalid-parameter")], &what).await;
    }
    // Separators alone are no parameters at all.
    assert_eq!(
        server.get(&alice, "/api/deployments?&&").await.status(),
        StatusCode::OK
    );
    assert_alive(&server).await;
    server.stop().await;
}
