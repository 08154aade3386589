//! Helpers shared by the integration tests: connecting to the servers the tests need (failing
//! loudly, with instructions, when they are missing) and running dedicated `redis-server`s
//! (single, TLS, clustered) that are killed when dropped.

#![allow(dead_code, unreachable_pub)] // each test binary uses its own subset

pub(crate) mod cluster;
pub(crate) mod tls;

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tower_idempotency::store::{Claim, RecordId};
use tower_idempotency_redis::RedisStore;

/// The single-node server of the shared suite.
pub(crate) fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The nodes of the local test cluster.
pub(crate) fn cluster_urls() -> Vec<String> {
    std::env::var("REDIS_CLUSTER_URLS")
        .unwrap_or_else(|_| {
            "redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003".to_owned()
        })
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// A prefix no other test (or test run) uses.
pub(crate) fn random_prefix(label: &str) -> String {
    let n = getrandom::u64().expect("the OS random number generator works");
    format!("test:{label}:{n:016x}:")
}

/// A store on the shared single node, under its own random prefix.
pub(crate) async fn single_node_store() -> RedisStore {
    let url = redis_url();
    match RedisStore::connect(&url).await {
        Ok(store) => store.with_prefix(random_prefix("single")),
        Err(error) => panic!(
            "\n\nThese tests need a Redis >= 7.0 server and could not reach one at {url}: \
             {error}\nStart one (`apt-get install redis-server`, then \
             `redis-server --daemonize yes`), or point REDIS_URL at one, e.g. \
             REDIS_URL=redis://127.0.0.1:6379.\n\n"
        ),
    }
}

/// A store on the local test cluster, under its own random prefix.
pub(crate) async fn cluster_store() -> RedisStore {
    let urls = cluster_urls();
    match RedisStore::connect_cluster(&urls).await {
        Ok(store) => store.with_prefix(random_prefix("cluster")),
        Err(error) => panic!(
            "\n\nThese tests need a Redis Cluster (Redis >= 7.0) and could not reach one at \
             {urls:?}: {error}\nStart the local 3-node test cluster with \
             `scripts/redis-cluster` (stop it with `scripts/redis-cluster stop`), or point \
             REDIS_CLUSTER_URLS at the nodes of another one, comma-separated.\n\n"
        ),
    }
}

/// Claims that returned `Acquired`, per id: the executions a layer would have started.
#[derive(Debug, Default)]
pub(crate) struct Executions(std::collections::HashMap<RecordId, usize>);

impl Executions {
    /// Counts `claim` if it acquired `id`.
    pub(crate) fn record<E>(&mut self, id: &RecordId, claim: &Result<Claim, E>) {
        if matches!(claim, Ok(Claim::Acquired(_))) {
            *self.0.entry(*id).or_default() += 1;
        }
    }

    /// Fails if any id was acquired more than once; returns how many ids were acquired.
    pub(crate) fn assert_at_most_once(&self) -> usize {
        for (id, n) in &self.0 {
            assert!(
                *n <= 1,
                "{id:?} was acquired {n} times: its handler would run {n} times"
            );
        }
        self.0.len()
    }

    pub(crate) fn of(&self, id: &RecordId) -> usize {
        self.0.get(id).copied().unwrap_or(0)
    }
}

/// Polls `ready` every 10 ms until it holds; fails the test naming `what` after `timeout`.
pub(crate) fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A `redis-server` of the test's own, on a free loopback port, without persistence, in a
/// directory of its own. Killed (and its directory removed) when dropped.
pub(crate) struct DedicatedServer {
    port: u16,
    args: Vec<String>,
    dir: PathBuf,
    child: Option<Child>,
}

impl DedicatedServer {
    /// Starts a server on a free port and waits until it answers.
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (`["--maxmemory", "2mb"]`).
    pub(crate) fn start_with(args: &[&str]) -> Self {
        Self::start_on(free_port(), args)
    }

    /// Starts a server on `port` with extra arguments.
    pub(crate) fn start_on(port: u16, args: &[&str]) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "tower-idempotency-redis-{port}-{:08x}",
            getrandom::u32().expect("the OS random number generator works")
        ));
        std::fs::create_dir_all(&dir).expect("a temporary directory");
        let mut server = Self {
            port,
            args: args.iter().map(|&a| a.to_owned()).collect(),
            dir,
            child: None,
        };
        server.restart();
        server
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's own directory.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// The process id (while it runs).
    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// SIGSTOP: the process keeps its sockets (the kernel still accepts connections and
    /// takes bytes) but answers nothing, until the guard is dropped (SIGCONT).
    pub(crate) fn pause(&self) -> Paused {
        signal(self.pid(), "STOP");
        Paused(self.pid())
    }

    /// Kills the server (SIGKILL: no goodbye to the clients) and waits until it is gone.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server (again) on the same port and waits until it answers PING.
    pub(crate) fn restart(&mut self) {
        self.kill();
        let bin = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".to_owned());
        let child = Command::new(&bin)
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .args(["--dir", &self.dir.to_string_lossy()])
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "\n\nThis test starts its own Redis server and could not run `{bin}`: \
                     {error}\nInstall Redis >= 7.0 (`apt-get install redis-server`), or set \
                     REDIS_SERVER_BIN to the path of a redis-server binary.\n\n"
                )
            });
        self.child = Some(child);
        let started = Instant::now();
        while ping(self.port).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server on port {} exited with {status} (arguments {:?})",
                    self.port, self.args
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A blocking connection of its own to the server.
    pub(crate) fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .expect("a valid URL")
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("the dedicated server answers")
    }

    /// Sends one command with a blocking client and returns its reply.
    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        cmd.query(&mut self.connection())
            .unwrap_or_else(|e| panic!("{cmd:?} on port {}: {e}", self.port))
    }

    /// Calls per command since the server started (`INFO commandstats`), `INFO` left out.
    pub(crate) fn command_calls(&self) -> std::collections::BTreeMap<String, u64> {
        let info: String = self.query(redis::cmd("INFO").arg("commandstats"));
        info.lines()
            .filter_map(|line| {
                let (name, stats) = line.strip_prefix("cmdstat_")?.split_once(':')?;
                let calls = stats.split(',').find_map(|s| s.strip_prefix("calls="))?;
                Some((name.to_owned(), calls.parse().ok()?))
            })
            .filter(|(name, _)| name != "info")
            .collect()
    }
}

impl Drop for DedicatedServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process stopped with SIGSTOP; continued (SIGCONT) when dropped.
#[must_use = "the process is continued when the guard is dropped"]
pub(crate) struct Paused(u32);

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .expect("`kill` runs");
    assert!(status.success(), "kill -{name} {pid} failed");
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An inline PING, without the client under test: any answer (`+PONG`, or `-NOAUTH` from a
/// server with a password) means it is up.
fn ping(port: u16) -> io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    (&stream).write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.starts_with("+PONG") || line.starts_with("-NOAUTH") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected reply {line:?}")))
    }
}
