//! The processes a scenario runs: `backend` instances, a private `redis-server`, a private
//! PostgreSQL cluster, and a sampler of their memory and CPU. Each is stopped when its guard
//! is dropped, on success, failure or panic alike.

use std::{
    collections::HashMap,
    fs::OpenOptions,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener as StdListener, TcpStream as StdStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};

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
            let _ = child.kill();
            let _ = child.wait();
        }
        self.pid.store(0, Ordering::Relaxed);
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

/// A PostgreSQL cluster of the harness's own (`initdb` under the temporary directory, on a
/// free loopback port, no Unix socket). Run as the `postgres` user when the harness is root.
/// Stopped (immediately) and deleted when dropped.
#[derive(Debug)]
pub(crate) struct PrivatePostgres {
    bin_dir: PathBuf,
    dir: PathBuf,
    port: u16,
    as_postgres: bool,
    running: bool,
}

impl PrivatePostgres {
    /// `initdb`, then start.
    pub(crate) async fn start(bin_dir: &Path, parent: &Path) -> anyhow::Result<Self> {
        let as_postgres = is_root();
        let dir = parent.join(format!("pg-{}", rand::random::<u32>()));
        let mut pg = Self {
            bin_dir: bin_dir.to_owned(),
            dir,
            port: free_port()?,
            as_postgres,
            running: false,
        };
        if as_postgres {
            // initdb as postgres needs a parent it may write to.
            std::fs::create_dir_all(&pg.dir)?;
            run(Command::new("chown").arg("postgres").arg(&pg.dir)).await?;
        }
        let initdb = pg.bin_dir.join("initdb");
        pg.run_pg(|c| {
            c.arg(&initdb).arg("-D").arg(&pg.dir).args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ])
        })
        .await
        .context("initdb")?;
        pg.resume().await?;
        Ok(pg)
    }

    /// A URL for its `postgres` database.
    pub(crate) fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub(crate) async fn resume(&mut self) -> anyhow::Result<()> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories= -c fsync=off \
             -c max_connections=100",
            self.port
        );
        let log = self.dir.join("server.log");
        self.run_pg(|c| {
            c.arg(&pg_ctl)
                .arg("-D")
                .arg(&self.dir)
                .arg("-l")
                .arg(&log)
                .args(["-w", "-t", "60", "-o", &options, "start"])
        })
        .await
        .with_context(|| format!("pg_ctl start; log tail:\n{}", tail(&log, 20)))?;
        self.running = true;
        Ok(())
    }

    /// `pg_ctl stop -m immediate`: every backend is killed, no checkpoint; the next start
    /// runs crash recovery.
    pub(crate) async fn stop_immediate(&mut self) -> anyhow::Result<()> {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        self.run_pg(|c| {
            c.arg(&pg_ctl)
                .arg("-D")
                .arg(&self.dir)
                .args(["-m", "immediate", "-w", "stop"])
        })
        .await
        .context("pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    async fn run_pg(&self, build: impl FnOnce(&mut Command) -> &mut Command) -> anyhow::Result<()> {
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]);
            c
        } else {
            // `build` supplies the program as its first argument: run it through `env`.
            Command::new("env")
        };
        build(&mut command);
        run(&mut command).await
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let pg_ctl = self.bin_dir.join("pg_ctl");
            let mut command = if self.as_postgres {
                let mut c = Command::new("runuser");
                c.args(["-u", "postgres", "--"]).arg(&pg_ctl);
                c
            } else {
                Command::new(&pg_ctl)
            };
            let _ = command
                .arg("-D")
                .arg(&self.dir)
                .args(["-m", "immediate", "-w", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn run(command: &mut Command) -> anyhow::Result<()> {
    let mut command =
        tokio::process::Command::from(std::mem::replace(command, Command::new("true")));
    let output = command
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .context("run a command")?;
    if !output.status.success() {
        bail!(
            "{:?} failed ({}): {}{}",
            command.as_std().get_program(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

/// Whether the harness runs as root (then PostgreSQL runs as `postgres`).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// The directory holding `initdb` and `pg_ctl`: `--pg-bin-dir`, `pg_config --bindir`, or the
/// newest `/usr/lib/postgresql/*/bin`.
pub(crate) fn find_pg_bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = explicit {
        return Ok(dir.to_owned());
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output()
        && output.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if dir.join("initdb").exists() {
            return Ok(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).context(
        "no PostgreSQL server binaries (initdb, pg_ctl) found: install postgresql or pass \
         --pg-bin-dir",
    )
}

/// One sample of one process.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    /// When.
    pub(crate) at: Instant,
    /// Which watched process.
    pub(crate) index: usize,
    /// Resident set size, KiB.
    pub(crate) rss_kib: u64,
    /// CPU time of all its lives so far (user + system), seconds.
    pub(crate) cpu_seconds: f64,
}

#[derive(Debug, Default)]
struct SamplerData {
    samples: Vec<Sample>,
    /// Per watched process: last utime+stime ticks per pid (restarts are new pids).
    ticks: Vec<HashMap<u32, u64>>,
}

/// Samples VmRSS and CPU time of some processes every `period`; stops when dropped.
#[derive(Debug)]
pub(crate) struct Sampler {
    names: Vec<String>,
    data: Arc<Mutex<SamplerData>>,
    task: tokio::task::JoinHandle<()>,
}

impl Sampler {
    /// Watches `(name, pid cell)` pairs.
    pub(crate) fn start(watched: Vec<(String, Arc<AtomicU32>)>, period: Duration) -> Self {
        let names = watched.iter().map(|(n, _)| n.clone()).collect();
        let data = Arc::new(Mutex::new(SamplerData {
            samples: Vec::new(),
            ticks: vec![HashMap::new(); watched.len()],
        }));
        let tick_hz = clock_ticks_per_second();
        let task = {
            let data = data.clone();
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(period);
                loop {
                    interval.tick().await;
                    let now = Instant::now();
                    let mut data = data.lock().expect("sampler lock");
                    for (index, (_, pid)) in watched.iter().enumerate() {
                        let pid = pid.load(Ordering::Relaxed);
                        if pid == 0 {
                            continue;
                        }
                        let (Some(rss_kib), Some(ticks)) = (read_rss_kib(pid), read_cpu_ticks(pid))
                        else {
                            continue;
                        };
                        data.ticks[index].insert(pid, ticks);
                        let total: u64 = data.ticks[index].values().sum();
                        data.samples.push(Sample {
                            at: now,
                            index,
                            rss_kib,
                            cpu_seconds: total as f64 / tick_hz,
                        });
                    }
                }
            })
        };
        Self { names, data, task }
    }

    /// The watched processes' names.
    pub(crate) fn names(&self) -> &[String] {
        &self.names
    }

    /// Every sample so far.
    pub(crate) fn samples(&self) -> Vec<Sample> {
        self.data.lock().expect("sampler lock").samples.clone()
    }

    /// Peak RSS (KiB) of each watched process.
    pub(crate) fn peaks(&self) -> Vec<u64> {
        let mut peaks = vec![0; self.names.len()];
        for sample in self.samples() {
            peaks[sample.index] = peaks[sample.index].max(sample.rss_kib);
        }
        peaks
    }

    /// CPU seconds used by each watched process so far (all its lives).
    pub(crate) fn cpu(&self) -> Vec<f64> {
        let mut cpu = vec![0.0; self.names.len()];
        for sample in self.samples() {
            cpu[sample.index] = sample.cpu_seconds;
        }
        cpu
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn read_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn read_cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces and parentheses): state is the
    // first, utime the 12th, stime the 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

fn clock_ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|hz| *hz > 0.0)
        .unwrap_or(100.0)
}
