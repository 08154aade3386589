//! [`Relay`]: a TCP relay on loopback between a client under test and a real server, that
//! can make the network misbehave the way production networks do.
//!
//! - [`silence_existing`](Relay::silence_existing): every connection open now stops carrying
//!   bytes in both directions, without a FIN or a reset — a primary that vanished, a NAT
//!   entry that expired. New connections pass, as they would to a recovered server.
//! - [`silence_all`](Relay::silence_all): new connections are accepted and silenced too (the
//!   server is unreachable), until [`restore`](Relay::restore).
//! - [`reset_all`](Relay::reset_all): every open connection is closed at once.
//! - [`lose_replies`](Relay::lose_replies): the next replies the server sends are dropped,
//!   and their connections closed — the request was executed, its answer lost (an HTTP
//!   response, a Redis reply).
//! - [`delay_replies`](Relay::delay_replies): replies are held for a while before they pass.
//! - [`mute_replies_of_existing`](Relay::mute_replies_of_existing): on every connection open
//!   now, commands still reach the server but its replies vanish, the connection staying
//!   open — the outcome of every command in flight is unknown to the client.
//!
//! Silenced connections stay silent for good: a connection that went dark does not come
//! back in real networks either.

use std::{
    fmt, io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// A relay from `127.0.0.1:<port>` to one upstream server. Dropping it stops it and closes
/// its connections.
pub struct Relay {
    addr: SocketAddr,
    state: Arc<State>,
    task: JoinHandle<()>,
}

struct State {
    upstream: SocketAddr,
    /// Connections are numbered in accept order; those below this number are silent.
    silent_below: AtomicU64,
    next: AtomicU64,
    silence_new: AtomicBool,
    open: AtomicUsize,
    accepted: AtomicUsize,
    /// Bumped to make every connection re-check its fate (and by `reset_all`, to close).
    changes: watch::Sender<u64>,
    resets: AtomicU64,
    /// Replies still to lose.
    lose: AtomicUsize,
    lost: AtomicUsize,
    /// Milliseconds each reply waits before it passes.
    delay_ms: AtomicU64,
    /// Connections below this number carry requests but no replies.
    muted_below: AtomicU64,
    muted_bytes: AtomicU64,
}

impl Relay {
    /// Starts relaying to `upstream` (e.g. `127.0.0.1:6379`).
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a free loopback port");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let state = Arc::new(State {
            upstream,
            silent_below: AtomicU64::new(0),
            next: AtomicU64::new(0),
            silence_new: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            accepted: AtomicUsize::new(0),
            changes: watch::Sender::new(0),
            resets: AtomicU64::new(0),
            lose: AtomicUsize::new(0),
            lost: AtomicUsize::new(0),
            delay_ms: AtomicU64::new(0),
            muted_below: AtomicU64::new(0),
            muted_bytes: AtomicU64::new(0),
        });
        let task = tokio::spawn(accept(listener, Arc::clone(&state)));
        Self { addr, state, task }
    }

    /// The relay's address, to give the client under test.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The relay's port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Every connection open now goes silent; later ones pass.
    pub fn silence_existing(&self) {
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.silent_below.fetch_max(next, Ordering::SeqCst);
        self.state.changes.send_modify(|n| *n += 1);
    }

    /// Every connection, open or yet to come, is silent until [`restore`](Self::restore).
    pub fn silence_all(&self) {
        self.state.silence_new.store(true, Ordering::SeqCst);
        self.silence_existing();
    }

    /// New connections pass again; the ones silenced stay silent.
    pub fn restore(&self) {
        self.silence_existing();
        self.state.silence_new.store(false, Ordering::SeqCst);
    }

    /// Closes every open connection.
    pub fn reset_all(&self) {
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.resets.store(next, Ordering::SeqCst);
        self.state.changes.send_modify(|n| *n += 1);
    }

    /// The next `n` replies (the first bytes the server sends after a request) are dropped
    /// and their connections closed on both sides.
    pub fn lose_replies(&self, n: usize) {
        self.state.lose.store(n, Ordering::SeqCst);
    }

    /// Replies lost so far.
    pub fn lost_replies(&self) -> usize {
        self.state.lost.load(Ordering::SeqCst)
    }

    /// Every reply waits `delay` before it passes (zero: none).
    pub fn delay_replies(&self, delay: std::time::Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.state.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// On every connection open now, requests pass and replies vanish from now on.
    pub fn mute_replies_of_existing(&self) {
        let next = self.state.next.load(Ordering::SeqCst);
        self.state.muted_below.fetch_max(next, Ordering::SeqCst);
    }

    /// Reply bytes muted so far.
    pub fn muted_bytes(&self) -> u64 {
        self.state.muted_bytes.load(Ordering::SeqCst)
    }

    /// Connections open now (silent ones included).
    pub fn open_connections(&self) -> usize {
        self.state.open.load(Ordering::SeqCst)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        self.reset_all();
    }
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("addr", &self.addr)
            .field("upstream", &self.state.upstream)
            .field("open", &self.open_connections())
            .finish_non_exhaustive()
    }
}

async fn accept(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let number = state.next.fetch_add(1, Ordering::SeqCst);
        state.accepted.fetch_add(1, Ordering::SeqCst);
        if state.silence_new.load(Ordering::SeqCst) {
            state.silent_below.fetch_max(number + 1, Ordering::SeqCst);
        }
        let state = Arc::clone(&state);
        tokio::spawn(async move {
            state.open.fetch_add(1, Ordering::SeqCst);
            let _ = connection(client, number, &state).await;
            state.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// Carries one connection until either side closes, it is reset, or forever silently.
async fn connection(client: TcpStream, number: u64, state: &State) -> io::Result<()> {
    let silent = || state.silent_below.load(Ordering::SeqCst) > number;
    let reset = || state.resets.load(Ordering::SeqCst) > number;
    let mut changes = state.changes.subscribe();
    if silent() {
        // Accepted but never answered: hold the socket open until reset or dropped.
        while !reset() {
            if changes.changed().await.is_err() {
                break;
            }
        }
        return Ok(());
    }
    let server = TcpStream::connect(state.upstream).await?;
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut client_rx, mut client_tx) = client.into_split();
    let (mut server_rx, mut server_tx) = server.into_split();
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        if reset() {
            return Ok(());
        }
        if silent() {
            // Keep both sockets open, move no byte, until reset or dropped.
            while !reset() {
                if changes.changed().await.is_err() {
                    break;
                }
            }
            return Ok(());
        }
        tokio::select! {
            read = client_rx.read(&mut up) => match read? {
                0 => return Ok(()),
                n if !silent() => server_tx.write_all(&up[..n]).await?,
                _ => {}
            },
            read = server_rx.read(&mut down) => match read? {
                0 => return Ok(()),
                _ if take_one(&state.lose) => {
                    state.lost.fetch_add(1, Ordering::SeqCst);
                    return Ok(()); // both halves drop: the connection closes, the reply is gone
                }
                n if state.muted_below.load(Ordering::SeqCst) > number => {
                    state.muted_bytes.fetch_add(n as u64, Ordering::SeqCst);
                }
                n if !silent() => {
                    let delay = state.delay_ms.load(Ordering::SeqCst);
                    if delay > 0 {
                        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
                    }
                    client_tx.write_all(&down[..n]).await?;
                }
                _ => {}
            },
            _ = changes.changed() => {}
        }
    }
}

/// Takes one unit from `counter` if it has any.
fn take_one(counter: &AtomicUsize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = socket.read(&mut buf).await {
                        if n == 0 || socket.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(stream: &mut TcpStream) -> io::Result<Vec<u8>> {
        stream.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await?;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn silences_existing_connections_but_passes_new_ones() {
        let relay = Relay::start(echo_server().await).await;
        let mut old = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old).await.unwrap(), b"ping");
        relay.silence_existing();
        let silent =
            tokio::time::timeout(std::time::Duration::from_millis(200), round_trip(&mut old)).await;
        assert!(silent.is_err(), "the old connection carries nothing");
        let mut new = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new).await.unwrap(), b"ping");

        relay.silence_all();
        let mut dark = TcpStream::connect(relay.addr()).await.unwrap();
        let dark_trip =
            tokio::time::timeout(std::time::Duration::from_millis(200), round_trip(&mut dark))
                .await;
        assert!(
            dark_trip.is_err(),
            "while all is silent, new ones carry nothing"
        );
        relay.restore();
        let mut back = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut back).await.unwrap(), b"ping");

        relay.reset_all();
        let mut buf = [0u8; 4];
        assert!(
            matches!(back.read(&mut buf).await, Ok(0) | Err(_)),
            "reset closes"
        );
    }

    #[tokio::test]
    async fn loses_the_next_replies_then_passes_them() {
        let relay = Relay::start(echo_server().await).await;
        relay.lose_replies(1);
        let mut first = TcpStream::connect(relay.addr()).await.unwrap();
        assert!(
            round_trip(&mut first).await.is_err(),
            "the reply is lost, the connection closed"
        );
        assert_eq!(relay.lost_replies(), 1);
        let mut second = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut second).await.unwrap(), b"ping");
    }

    #[tokio::test]
    async fn muted_connections_carry_requests_but_no_replies() {
        let relay = Relay::start(echo_server().await).await;
        let mut old = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut old).await.unwrap(), b"ping");
        relay.mute_replies_of_existing();
        let muted =
            tokio::time::timeout(std::time::Duration::from_millis(200), round_trip(&mut old)).await;
        assert!(muted.is_err(), "no reply on the muted connection");
        assert_eq!(
            relay.muted_bytes(),
            4,
            "the request reached the server, its echo was muted"
        );
        let mut new = TcpStream::connect(relay.addr()).await.unwrap();
        assert_eq!(round_trip(&mut new).await.unwrap(), b"ping");
    }
}
