//! A TCP proxy on loopback that loses responses.
//!
//! Each accepted connection carries one HTTP/1.1 request (the client opens a fresh
//! connection per attempt). The proxy reads the whole request (headers and `Content-Length`
//! bytes), forwards it upstream, then decides the connection's fate:
//!
//! - **drop, mid-flight**: close both sides right after the request went upstream; the server
//!   is still running the handler when its client vanishes;
//! - **drop, before the response**: wait until the server starts answering (the handler has
//!   finished and its outcome is stored), then close both sides without forwarding a byte;
//! - **drop, truncated**: forward part of the response's first chunk, then close;
//! - **delay**: hold the response for a while, then forward it;
//! - otherwise pass everything through.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// How often each fault happens.
#[derive(Debug, Clone)]
pub(crate) struct Faults {
    /// Share of connections dropped (split evenly between the three kinds of drop).
    pub(crate) drop: f64,
    /// Share of connections whose response is delayed.
    pub(crate) delay: f64,
    /// Delay range, in milliseconds.
    pub(crate) delay_ms: (u64, u64),
}

/// What the proxy did.
#[derive(Debug, Default)]
pub(crate) struct ProxyCounters {
    pub(crate) connections: AtomicU64,
    pub(crate) dropped_mid_flight: AtomicU64,
    pub(crate) dropped_before_response: AtomicU64,
    pub(crate) dropped_truncated: AtomicU64,
    pub(crate) delayed: AtomicU64,
    pub(crate) upstream_failures: AtomicU64,
}

impl ProxyCounters {
    /// Connections dropped, all kinds.
    pub(crate) fn drops(&self) -> u64 {
        self.dropped_mid_flight.load(Ordering::Relaxed)
            + self.dropped_before_response.load(Ordering::Relaxed)
            + self.dropped_truncated.load(Ordering::Relaxed)
    }
}

/// A running proxy; stops (with every connection it holds) when dropped.
#[derive(Debug)]
pub(crate) struct FaultProxy {
    addr: SocketAddr,
    counters: Arc<ProxyCounters>,
    task: JoinHandle<()>,
}

impl FaultProxy {
    /// Listens on a free loopback port and forwards to `upstream` (a loopback address).
    pub(crate) async fn start(upstream: SocketAddr, faults: Faults) -> anyhow::Result<Self> {
        anyhow::ensure!(
            upstream.ip().is_loopback(),
            "the proxy only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let counters = Arc::new(ProxyCounters::default());
        let task = tokio::spawn(accept_loop(listener, upstream, faults, counters.clone()));
        Ok(Self {
            addr,
            counters,
            task,
        })
    }

    /// The base URL clients use.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// What it did so far.
    pub(crate) fn counters(&self) -> &ProxyCounters {
        &self.counters
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    faults: Faults,
    counters: Arc<ProxyCounters>,
) {
    // Connection tasks live in this set: aborting the loop aborts them all.
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                counters.connections.fetch_add(1, Ordering::Relaxed);
                let fate = Fate::draw(&faults);
                connections.spawn(serve(client, upstream, fate, counters.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Fate {
    Pass,
    Delay(Duration),
    DropMidFlight,
    DropBeforeResponse,
    DropTruncated,
}

impl Fate {
    fn draw(faults: &Faults) -> Self {
        let roll = fastrand::f64();
        if roll < faults.drop {
            match fastrand::u8(0..3) {
                0 => Self::DropMidFlight,
                1 => Self::DropBeforeResponse,
                _ => Self::DropTruncated,
            }
        } else if roll < faults.drop + faults.delay {
            let (low, high) = faults.delay_ms;
            Self::Delay(Duration::from_millis(fastrand::u64(low..=high)))
        } else {
            Self::Pass
        }
    }
}

async fn serve(
    mut client: TcpStream,
    upstream: SocketAddr,
    fate: Fate,
    counters: Arc<ProxyCounters>,
) {
    let Ok(request) = read_request(&mut client).await else {
        return;
    };
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    if server.write_all(&request).await.is_err() {
        counters.upstream_failures.fetch_add(1, Ordering::Relaxed);
        return;
    }
    match fate {
        Fate::Pass => {
            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
        }
        Fate::DropMidFlight => {
            // Give the bytes a moment to reach the server's handler, then vanish.
            let pause = Duration::from_millis(fastrand::u64(0..=20));
            tokio::time::sleep(pause).await;
            counters.dropped_mid_flight.fetch_add(1, Ordering::Relaxed);
        }
        Fate::DropBeforeResponse | Fate::DropTruncated | Fate::Delay(_) => {
            let mut first = vec![0u8; 16 * 1024];
            let n = match server.read(&mut first).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            match fate {
                Fate::DropBeforeResponse => {
                    counters
                        .dropped_before_response
                        .fetch_add(1, Ordering::Relaxed);
                }
                Fate::DropTruncated => {
                    let _ = client.write_all(&first[..n / 2]).await;
                    let _ = client.flush().await;
                    counters.dropped_truncated.fetch_add(1, Ordering::Relaxed);
                }
                Fate::Delay(delay) => {
                    counters.delayed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                    if client.write_all(&first[..n]).await.is_ok() {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                }
                Fate::Pass | Fate::DropMidFlight => unreachable!("handled above"),
            }
        }
    }
    // Dropping both streams closes them.
}

/// Reads one request: the header block and `Content-Length` bytes of body.
pub(crate) async fn read_request(client: &mut TcpStream) -> std::io::Result<Vec<u8>> {
    let mut buffer = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(total) = request_length(&buffer)
            && buffer.len() >= total
        {
            return Ok(buffer);
        }
        let n = tokio::time::timeout_at(deadline, client.read(&mut chunk))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
        if buffer.len() > 1024 * 1024 {
            return Err(std::io::ErrorKind::InvalidData.into());
        }
    }
}

/// The full length of the request in `buffer` once its header block is complete.
fn request_length(buffer: &[u8]) -> Option<usize> {
    let end = buffer.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&buffer[..end]).ok()?;
    let body = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    Some(end + body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lengths() {
        assert_eq!(request_length(b"POST / HTTP/1.1\r\nHost: x\r\n"), None);
        assert_eq!(request_length(b"GET / HTTP/1.1\r\n\r\n"), Some(18));
        let head = b"POST / HTTP/1.1\r\ncontent-length: 5\r\n\r\n";
        assert_eq!(request_length(head), Some(head.len() + 5));
    }
}
