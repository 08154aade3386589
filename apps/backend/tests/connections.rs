//! Idle and silent connections are closed, and the connection cap holds, over real sockets
//! against a real `backend serve` process (the behaviour is the accept loop's, not the
//! database's, so SQLite alone).

mod common;

use std::{
    io::ErrorKind,
    time::{Duration, Instant},
};

use backend::Settings;
use common::{Backend, Store, TestDb, TestServer};
use reqwest::StatusCode;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpStream,
};

/// Waits until the server closes `socket` (EOF or a reset), for at most `within`.
async fn closed_within(socket: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, socket.read(&mut buf)).await {
            Err(_elapsed) => return false,
            Ok(Ok(0)) => return true,
            // Whatever hyper answered (a response to a complete request): keep reading.
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == ErrorKind::ConnectionReset => return true,
            Ok(Err(e)) => panic!("reading from the server: {e}"),
        }
    }
}

async fn healthz(server: &TestServer) -> StatusCode {
    // A client of its own: a fresh connection, as a load balancer's probe makes.
    reqwest::Client::new()
        .get(server.url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .expect("GET /healthz")
        .status()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_one_byte_and_idle_connections_are_closed() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn_store(
        &t,
        Settings::default(),
        Store::Memory,
        &["--header-timeout", "1s"],
    )
    .await;
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    let mut one_byte = Vec::new();
    for _ in 0..50 {
        let mut socket = TcpStream::connect(server.addr).await.expect("connect");
        socket.write_all(b"G").await.expect("send one byte");
        one_byte.push(socket);
    }
    // A keep-alive connection that made one request and then says nothing more.
    let mut idle = TcpStream::connect(server.addr).await.expect("connect");
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("send a request");
    // The server keeps answering while they hang.
    assert_eq!(healthz(&server).await, StatusCode::OK);

    let started = Instant::now();
    for socket in silent.iter_mut().chain(one_byte.iter_mut()) {
        assert!(
            closed_within(socket, Duration::from_secs(5)).await,
            "a connection that sent at most one byte was still open after 5 s"
        );
    }
    assert!(
        closed_within(&mut idle, Duration::from_secs(5)).await,
        "an idle keep-alive connection was still open after 5 s"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(healthz(&server).await, StatusCode::OK);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_for_a_free_slot() {
    let t = TestDb::new(Backend::Sqlite).await;
    let server = TestServer::spawn_store(
        &t,
        Settings::default(),
        Store::Memory,
        &["--header-timeout", "2s", "--max-connections", "20"],
    )
    .await;
    // Wait for the startup probes' connections to close.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut silent = Vec::new();
    for _ in 0..20 {
        silent.push(TcpStream::connect(server.addr).await.expect("connect"));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The 21st waits until the header timeout frees a slot.
    let started = Instant::now();
    assert_eq!(healthz(&server).await, StatusCode::OK);
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1000),
        "a connection beyond the cap was served at once ({waited:?})"
    );
    for socket in &mut silent {
        assert!(closed_within(socket, Duration::from_secs(5)).await);
    }
    server.stop().await;
}
