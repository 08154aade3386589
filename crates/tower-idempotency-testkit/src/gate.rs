//! Signals instead of sleeps: [`Gate`]s that hold a handler "in flight" for exactly as long
//! as the test wants, and [`Count`]s a test can wait on.
//!
//! ```ignore
//! let gate = server.gate("first");
//! let first = tokio::spawn(server.post(&user, &key, ORDER).header(GATE, gate.name()).send());
//! gate.started().await; // the handler runs and holds the claim
//! // ... send duplicates: they meet a request that is certainly in flight ...
//! gate.open();
//! ```

use std::{
    collections::HashMap,
    fmt,
    sync::{Arc, Mutex},
};

use tokio::sync::watch;

use crate::SIGNAL_TIMEOUT;

/// Waits for `rx` to satisfy `ready`, failing the test after [`SIGNAL_TIMEOUT`].
async fn wait<T>(
    rx: &mut watch::Receiver<T>,
    what: impl fmt::Display,
    ready: impl FnMut(&T) -> bool,
) {
    match tokio::time::timeout(SIGNAL_TIMEOUT, rx.wait_for(ready)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => unreachable!("the sender lives as long as the signal"),
        Err(_) => panic!("timed out after {SIGNAL_TIMEOUT:?} waiting for {what}"),
    }
}

/// A counter that tests can read and wait on (handler executions, abandoned requests).
#[derive(Clone)]
pub struct Count {
    name: Arc<str>,
    value: Arc<watch::Sender<usize>>,
}

impl Count {
    /// A counter at zero; `name` appears in timeout messages.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            value: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The current value.
    pub fn get(&self) -> usize {
        *self.value.borrow()
    }

    /// Adds one and returns the new value.
    pub fn increment(&self) -> usize {
        let mut now = 0;
        self.value.send_modify(|n| {
            *n += 1;
            now = *n;
        });
        now
    }

    /// Resolves once the value is at least `n`; fails the test after [`SIGNAL_TIMEOUT`].
    pub async fn reached(&self, n: usize) {
        let what = format!("{} to reach {n} (it is {})", self.name, self.get());
        wait(&mut self.value.subscribe(), what, |v| *v >= n).await;
    }
}

impl fmt::Debug for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Count")
            .field("name", &self.name)
            .field("value", &self.get())
            .finish()
    }
}

#[derive(Debug, Default)]
struct GateState {
    arrived: usize,
    open: bool,
}

/// A named gate on one [`TestServer`](crate::TestServer). A handler serving a request with
/// [`GATE`](crate::headers::GATE)` = name` counts its arrival, then waits until the gate is
/// opened. Gates start closed, and once opened stay open; the server opens all its gates
/// when it is dropped, so no handler waits forever for a test that failed.
#[derive(Clone)]
pub struct Gate {
    name: Arc<str>,
    state: Arc<watch::Sender<GateState>>,
}

impl Gate {
    fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            state: Arc::new(watch::Sender::new(GateState::default())),
        }
    }

    /// The gate's name: the value of the `x-gate` header that stops at it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How many handlers have reached the gate so far.
    pub fn arrived(&self) -> usize {
        self.state.borrow().arrived
    }

    /// Whether [`open`](Self::open) was called.
    pub fn is_open(&self) -> bool {
        self.state.borrow().open
    }

    /// Resolves once a handler has reached the gate: its request is in flight (claimed and
    /// executing) until the gate opens.
    pub async fn started(&self) {
        self.arrivals(1).await;
    }

    /// Resolves once `n` handlers have reached the gate.
    pub async fn arrivals(&self, n: usize) {
        let what = format!(
            "{n} handler(s) to reach gate {:?} ({} arrived)",
            self.name,
            self.arrived()
        );
        wait(&mut self.state.subscribe(), what, |s| s.arrived >= n).await;
    }

    /// Lets every handler waiting at the gate (and every later one) through.
    pub fn open(&self) {
        self.state.send_modify(|s| s.open = true);
    }

    /// The handler's side: counts the arrival, then waits for the gate to open.
    pub(crate) async fn pass(&self) {
        let mut rx = self.state.subscribe();
        self.state.send_modify(|s| s.arrived += 1);
        // The server opens its gates when dropped; a closed sender also lets the handler go.
        let _ = rx.wait_for(|s| s.open).await;
    }
}

impl fmt::Debug for Gate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.borrow();
        f.debug_struct("Gate")
            .field("name", &self.name)
            .field("arrived", &state.arrived)
            .field("open", &state.open)
            .finish()
    }
}

/// The gates of one server, by name; a gate exists from its first mention by either side.
#[derive(Clone, Default)]
pub(crate) struct Gates(Arc<Mutex<HashMap<String, Gate>>>);

impl Gates {
    pub(crate) fn get(&self, name: &str) -> Gate {
        let mut gates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        gates
            .entry(name.to_owned())
            .or_insert_with(|| Gate::new(name))
            .clone()
    }

    pub(crate) fn open_all(&self) {
        let gates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        for gate in gates.values() {
            gate.open();
        }
    }
}

impl fmt::Debug for Gates {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let gates = self.0.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_list().entries(gates.values()).finish()
    }
}
