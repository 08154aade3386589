//! [`LatencyRelay`]: a TCP relay on loopback that puts a network between a backend and its
//! database: every byte reaches the other side a fixed delay after it was sent, in both
//! directions, pipelined (a slow link, not a slow server: bytes sent back to back stay back
//! to back).
//!
//! On loopback a PostgreSQL transaction lasts about a millisecond, so a SIGKILL at a random
//! instant seldom finds one open. Through the relay each statement costs a round trip of
//! twice the delay, as to a database in another zone, and every create spends measurable time
//! in each of its phases. When one side closes (a SIGKILLed backend's sockets are closed by
//! the kernel), the bytes it had already sent are still delivered, then the other side is
//! closed: what a real network does with data already on the wire.
//!
//! It also tells which upstream ports its connections use: `pg_stat_activity.client_port`
//! then names the connections of the instance behind this relay.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{
        TcpListener, TcpStream,
        tcp::{OwnedReadHalf, OwnedWriteHalf},
    },
    sync::mpsc,
    task::{JoinHandle, JoinSet},
    time::Instant,
};

/// A relay from a free loopback port to one upstream; stops (closing every connection) when
/// dropped.
#[derive(Debug)]
pub(crate) struct LatencyRelay {
    addr: SocketAddr,
    delay: Duration,
    ports: Arc<Mutex<BTreeSet<u16>>>,
    task: JoinHandle<()>,
}

impl LatencyRelay {
    /// Relays to `upstream` (a loopback address), each byte `delay` late in each direction.
    pub(crate) async fn start(upstream: SocketAddr, delay: Duration) -> anyhow::Result<Self> {
        anyhow::ensure!(
            upstream.ip().is_loopback(),
            "the relay only forwards to loopback"
        );
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let ports = Arc::new(Mutex::new(BTreeSet::new()));
        let task = tokio::spawn(accept_loop(listener, upstream, delay, ports.clone()));
        Ok(Self {
            addr,
            delay,
            ports,
            task,
        })
    }

    /// Its address, for the client.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The one-way delay.
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    /// Local ports of the upstream connections open now (the server's `client_port`s).
    pub(crate) fn upstream_ports(&self) -> Vec<u16> {
        let ports = self.ports.lock().expect("ports lock");
        ports.iter().copied().collect()
    }
}

impl Drop for LatencyRelay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    delay: Duration,
    ports: Arc<Mutex<BTreeSet<u16>>>,
) {
    // Connection tasks live in this set: aborting the loop aborts them all.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                connections.spawn(carry(client, upstream, delay, ports.clone()));
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection, both directions, until both have ended.
async fn carry(
    client: TcpStream,
    upstream: SocketAddr,
    delay: Duration,
    ports: Arc<Mutex<BTreeSet<u16>>>,
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let port = server.local_addr().map(|a| a.port()).ok();
    if let Some(port) = port {
        ports.lock().expect("ports lock").insert(port);
    }
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_rx, client_tx) = client.into_split();
    let (server_rx, server_tx) = server.into_split();
    tokio::join!(
        one_way(client_rx, server_tx, delay),
        one_way(server_rx, client_tx, delay),
    );
    if let Some(port) = port {
        ports.lock().expect("ports lock").remove(&port);
    }
}

/// Carries `from` to `to`, each chunk `delay` after it was read; once `from` ends (EOF or
/// error), delivers what is still queued, then shuts `to` down.
async fn one_way(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Duration) {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if queue
                        .send((Instant::now() + delay, buffer[..n].to_vec()))
                        .is_err()
                    {
                        break;
                    }
                }
            }
        }
        // Dropping the sender ends the writer once the queue is empty.
    };
    let writer = async move {
        while let Some((due, bytes)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&bytes).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn delays_each_way_and_delivers_what_was_sent_before_a_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let upstream = listener.local_addr().unwrap();
        let echo = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut received = Vec::new();
            let mut buffer = [0u8; 64];
            loop {
                let n = socket.read(&mut buffer).await.unwrap();
                if n == 0 {
                    return received;
                }
                received.extend_from_slice(&buffer[..n]);
                socket.write_all(&buffer[..n]).await.unwrap();
            }
        });
        let relay = LatencyRelay::start(upstream, Duration::from_millis(30))
            .await
            .unwrap();
        let mut client = TcpStream::connect(relay.addr()).await.unwrap();
        let started = Instant::now();
        client.write_all(b"ping").await.unwrap();
        let mut reply = [0u8; 4];
        client.read_exact(&mut reply).await.unwrap();
        assert_eq!(&reply, b"ping");
        assert!(
            started.elapsed() >= Duration::from_millis(60),
            "a round trip"
        );
        assert_eq!(relay.upstream_ports().len(), 1);

        // Sent, then closed at once: the server still gets it, then the close.
        client.write_all(b"last").await.unwrap();
        drop(client);
        let received = tokio::time::timeout(Duration::from_secs(5), echo)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(received, b"pinglast");
    }
}
