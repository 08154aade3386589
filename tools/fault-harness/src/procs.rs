//! The processes a scenario runs: `backend` instances, a private `redis-server`, a private
//! PostgreSQL cluster, and a sampler of their memory and CPU. Each is stopped when its guard
//! is dropped, on success, failure or panic alike.

mod postgres;
mod sampler;

use std::{
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

pub(crate) use self::{
    postgres::{PrivatePostgres, find_pg_bin_dir},
    sampler::{Sample, Sampler},
};

/// A free TCP port on 127.0.0.1 (bound, then released).
pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(StdListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A `backend serve` process on a fixed loopback port; SIGKILLed when dropped.
#[derive(Debug)]
pub(crate) struct Backend {
    name: String,
    bin: PathBuf,
    addr: SocketAddr,
    env: Vec<(String, String)>,
    log: PathBuf,
    child: Option<Child>,
    pid: Arc<AtomicU32>,
    starts: u32,
    ready_lives: u32,
    /// Lives (0-based, in log order) that ended by [`kill`](Self::kill).
    killed_lives: Vec<usize>,
}

impl Backend {
    /// Starts `bin serve` on a free port with `env`, logging to `log`, and waits until
    /// `/readyz` answers 200.
    pub(crate) async fn start(
        name: &str,
        bin: &Path,
        env: Vec<(String, String)>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let mut backend = Self {
            name: name.to_owned(),
            bin: bin.to_owned(),
            addr,
            env,
            log,
            child: None,
            pid: Arc::new(AtomicU32::new(0)),
            starts: 0,
            ready_lives: 0,
            killed_lives: Vec::new(),
        };
        backend.spawn().await?;
        Ok(backend)
    }

    async fn spawn(&mut self) -> anyhow::Result<()> {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("open {}", self.log.display()))?;
        let mut command = Command::new(&self.bin);
        command
            .arg("serve")
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("BACKEND_LISTEN", self.addr.to_string())
            .env("LOG_FORMAT", "json")
            // The backend's own INFO lines: `listening` once per life, and the execution log
            // (`backend::executions`: a line per execution of the create handler and per
            // hit of the database guard, written before the work starts, so it survives a
            // SIGKILL); everything else from warnings up. See `crate::logs`.
            .env("RUST_LOG", "warn,backend=info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in &self.env {
            command.env(name, value);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", self.bin.display()))?;
        self.pid.store(child.id(), Ordering::Relaxed);
        self.child = Some(child);
        self.starts += 1;
        self.wait_ready().await?;
        self.ready_lives += 1;
        Ok(())
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(response) = client.get(format!("{}/readyz", self.url())).send().await
                && response.status() == 200
            {
                return Ok(());
            }
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                self.pid.store(0, Ordering::Relaxed);
                bail!(
                    "backend {} exited during startup ({status}); log tail:\n{}",
                    self.name,
                    tail(&self.log, 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "backend {} not ready within 30 s; log tail:\n{}",
                    self.name,
                    tail(&self.log, 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGKILL, and reap.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // A life that logged `listening` (it became ready) ends here.
            if self.ready_lives == self.starts && matches!(child.try_wait(), Ok(None)) {
                self.killed_lives.push(self.ready_lives as usize - 1);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::Relaxed);
    }

    /// Its current pid (0 while down).
    pub(crate) fn pid(&self) -> u32 {
        self.pid.load(Ordering::Relaxed)
    }

    /// Lives (0-based, in the order of its log) that ended by a SIGKILL of the harness.
    pub(crate) fn killed_lives(&self) -> &[usize] {
        &self.killed_lives
    }

    /// Starts it again on the same port (after [`kill`](Self::kill)).
    pub(crate) async fn restart(&mut self) -> anyhow::Result<()> {
        self.kill();
        // The old listening socket is gone with the process; retry the bind briefly in case
        // the kernel has not released it yet.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match self.spawn().await {
                Ok(()) => return Ok(()),
                Err(error) if Instant::now() < deadline => {
                    eprintln!("  restart of {} failed, retrying: {error:#}", self.name);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(error) => return Err(error),
            }
        }
    }

    /// Whether the process is still alive (it has not exited on its own).
    pub(crate) fn alive(&mut self) -> bool {
        match &mut self.child {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Its base URL.
    pub(crate) fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Its address.
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name (A, B...).
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The current pid (0 while down), updated on restart.
    pub(crate) fn pid_cell(&self) -> Arc<AtomicU32> {
        self.pid.clone()
    }

    /// Its log file (all its lives).
    pub(crate) fn log(&self) -> &Path {
        &self.log
    }

    /// How many times it was started.
    pub(crate) fn starts(&self) -> u32 {
        self.starts
    }

    /// How many of its starts became ready (each logged `listening` first).
    pub(crate) fn ready_lives(&self) -> u32 {
        self.ready_lives
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// SIGSTOP to process `pid`: it stays exactly where it is (threads, open transactions,
/// sockets) until it is killed ([`Backend::kill`] works on a frozen process). A plain
/// function, so that a thread of its own can send it the moment something is seen.
pub(crate) fn freeze(pid: u32) -> anyhow::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .context("no such process")?;
    rustix::process::kill_process(pid, rustix::process::Signal::STOP).context("SIGSTOP")
}

/// The last `lines` lines of a file.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A `redis-server` of the harness's own on a free port, without persistence; killed when
/// dropped.
#[derive(Debug)]
pub(crate) struct PrivateRedis {
    bin: String,
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// Starts it and waits until it answers PING.
    pub(crate) async fn start(bin: &str) -> anyhow::Result<Self> {
        let mut redis = Self {
            bin: bin.to_owned(),
            port: free_port()?,
            child: None,
        };
        redis.resume().await?;
        Ok(redis)
    }

    /// Its URL.
    pub(crate) fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Hard stop (SIGKILL): an outage, everything it held is lost.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it (again) on the same port and waits until it answers PING.
    pub(crate) async fn resume(&mut self) -> anyhow::Result<()> {
        self.kill();
        let child = Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start `{}`: install Redis (apt-get install redis-server) or pass \
                     --redis-server",
                    self.bin
                )
            })?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ping_redis(self.port) {
            if Instant::now() > deadline {
                bail!(
                    "redis-server did not answer on port {} within 10 s",
                    self.port
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

fn ping_redis(port: u16) -> bool {
    let Ok(mut stream) =
        StdStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut reply = [0u8; 7];
    stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}
