//! Helpers shared by the integration tests: connecting to the servers the tests need (failing
//! loudly, with instructions, when they are missing) and running dedicated `redis-server`s.

#![allow(dead_code)] // each test binary uses its own subset

use std::{
    io::{self, BufRead, BufReader, Write},
    net::{TcpListener, TcpStream},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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

/// A `redis-server` of the test's own, on a free loopback port, without persistence.
/// Killed when dropped.
pub(crate) struct DedicatedServer {
    port: u16,
    child: Option<Child>,
}

impl DedicatedServer {
    /// Starts a server on a free port and waits until it answers.
    pub(crate) fn start() -> Self {
        let port = free_port();
        let mut server = Self { port, child: None };
        server.restart();
        server
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
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
            .args(["--dir", &std::env::temp_dir().to_string_lossy()])
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
                panic!("redis-server on port {} exited with {status}", self.port);
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server on port {} did not answer PING within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one command with a blocking client and returns its reply.
    pub(crate) fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> T {
        let client = redis::Client::open(self.url()).expect("a valid URL");
        let mut connection = client
            .get_connection()
            .expect("the dedicated server answers");
        cmd.query(&mut connection).expect("the command succeeds")
    }
}

impl Drop for DedicatedServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// An inline PING, without the client under test.
fn ping(port: u16) -> io::Result<()> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(1)))?;
    (&stream).write_all(b"PING\r\n")?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    if line.starts_with("+PONG") {
        Ok(())
    } else {
        Err(io::Error::other(format!("unexpected reply {line:?}")))
    }
}
