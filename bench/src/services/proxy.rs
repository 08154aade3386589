//! [`CountingProxy`]: round trips, counted on the wire.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A TCP proxy that counts the writes clients send through it: each is one request the
/// client waited to send (pipelined messages arrive as one), i.e. a round trip. Writes that
/// only prepare a PostgreSQL statement (Parse, Describe, Sync: what sqlx sends the first
/// time a connection runs a statement) are left out: a running service has done them.
/// Writes that are a lone Sync (sqlx's ping: before a pooled connection is handed out, and
/// when it goes back) are counted, and also counted apart as [`pings`](Self::pings).
pub struct CountingProxy {
    pub addr: SocketAddr,
    writes: Arc<AtomicU64>,
    pings: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl CountingProxy {
    pub async fn start(upstream: SocketAddr) -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let writes = Arc::new(AtomicU64::new(0));
        let pings = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&writes);
        let ping_counter = Arc::clone(&pings);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let counter = Arc::clone(&counter);
                let ping_counter = Arc::clone(&ping_counter);
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (mut client_read, mut client_write) = client.into_split();
                    let (mut server_read, mut server_write) = server.into_split();
                    let upstream = async {
                        let mut buf = vec![0; 64 * 1024];
                        loop {
                            match client_read.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => {
                                    if !only_prepares(&buf[..n]) {
                                        counter.fetch_add(1, Ordering::Relaxed);
                                    }
                                    if buf[..n] == SYNC {
                                        ping_counter.fetch_add(1, Ordering::Relaxed);
                                    }
                                    if server_write.write_all(&buf[..n]).await.is_err() {
                                        break;
                                    }
                                }
                            }
                        }
                        let _ = server_write.shutdown().await;
                    };
                    let downstream = async {
                        let _ = tokio::io::copy(&mut server_read, &mut client_write).await;
                        let _ = client_write.shutdown().await;
                    };
                    tokio::join!(upstream, downstream);
                });
            }
        });
        Ok(Self {
            addr,
            writes,
            pings,
            task,
        })
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Of the [`writes`](Self::writes), those that were a PostgreSQL Sync alone: sqlx's pings.
    pub fn pings(&self) -> u64 {
        self.pings.load(Ordering::Relaxed)
    }
}

/// A PostgreSQL Sync message: all that sqlx's `ping` sends.
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// Whether `bytes` are whole PostgreSQL frontend messages that only prepare a statement:
/// Parse (`P`), Describe (`D`), Flush (`H`) and Sync (`S`), with a Parse among them.
/// Anything else (a startup packet, RESP, a Bind) is not.
fn only_prepares(bytes: &[u8]) -> bool {
    let (mut rest, mut parse) = (bytes, false);
    while !rest.is_empty() {
        let Some((&tag, after)) = rest.split_first() else {
            return false;
        };
        let Some(len) = after
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        else {
            return false;
        };
        if !matches!(tag, b'P' | b'D' | b'H' | b'S') || len < 4 || after.len() < len {
            return false;
        }
        parse |= tag == b'P';
        rest = &after[len..];
    }
    parse
}

impl Drop for CountingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}
