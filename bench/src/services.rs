//! The backends: the shared Redis and PostgreSQL the load runs use, and private instances
//! (own port, own data directory) for measurements that must not see anyone else's traffic;
//! the counting proxy in front of them is [`proxy`].

mod proxy;

pub use self::proxy::CountingProxy;

use std::{
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::process::{Child, Command};
use tower_idempotency_postgres::sqlx::{self, PgPool, postgres::PgPoolOptions};

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub async fn redis(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url)?;
    let connect = client.get_multiplexed_async_connection();
    tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .context("Redis did not answer within 5 s")?
        .with_context(|| format!("connecting to Redis at {url}"))
}

pub async fn redis_version(url: &str) -> anyhow::Result<String> {
    let mut con = redis(url).await?;
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    info.lines()
        .find_map(|l| l.strip_prefix("redis_version:"))
        .map(|v| format!("Redis {}", v.trim()))
        .context("INFO server without redis_version")
}

/// Deletes every key matching `pattern` (a run's namespace), never anything else.
pub async fn redis_delete(url: &str, pattern: &str) -> anyhow::Result<u64> {
    let mut con = redis(url).await?;
    let mut cursor = 0u64;
    let mut deleted = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await?;
        if !keys.is_empty() {
            deleted += keys.len() as u64;
            redis::cmd("UNLINK")
                .arg(&keys)
                .query_async::<()>(&mut con)
                .await?;
        }
        if next == 0 {
            return Ok(deleted);
        }
        cursor = next;
    }
}

pub async fn postgres(url: &str) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to PostgreSQL")
}

pub async fn postgres_version(url: &str) -> anyhow::Result<String> {
    let pool = postgres(url).await?;
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await?;
    // What a commit costs depends on these: with both on, each one waits for an fsync.
    let (fsync, synchronous_commit): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&pool)
            .await?;
    pool.close().await;
    Ok(format!(
        "PostgreSQL {version}, fsync = {fsync}, synchronous_commit = {synchronous_commit}"
    ))
}

pub async fn postgres_drop(url: &str, table: &str) -> anyhow::Result<()> {
    let pool = postgres(url).await?;
    // `table` is ours: `loadbench_` and a `[a-z0-9_]` namespace.
    sqlx::query(&format!("DROP TABLE IF EXISTS \"{table}\""))
        .execute(&pool)
        .await?;
    pool.close().await;
    Ok(())
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut ready: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if ready().await {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not come up within {timeout:?}")
}

/// A `redis-server` of our own on a free port, without persistence; killed on drop.
pub struct PrivateRedis {
    _child: Child,
    pub url: String,
}

impl PrivateRedis {
    pub async fn start() -> anyhow::Result<Self> {
        let port = free_port()?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args([
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "yes",
            ])
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (is it installed? scripts/bench installs it)")?;
        let url = format!("redis://127.0.0.1:{port}");
        wait_for(
            "the private redis-server",
            Duration::from_secs(10),
            async || redis(&url).await.is_ok(),
        )
        .await?;
        Ok(Self { _child: child, url })
    }
}

/// A PostgreSQL cluster of our own (initdb under /tmp, free port, `pg_stat_statements`
/// preloaded, WAL flushed within 10 ms so that `roundtrips` reads it back at once), run as the `postgres` user when we are root; stopped and removed on drop.
pub struct PrivatePostgres {
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
    pub url: String,
}

impl PrivatePostgres {
    pub async fn start() -> anyhow::Result<Self> {
        let bin = postgres_bin()?;
        let port = free_port()?;
        let data = std::env::temp_dir().join(format!("loadbench-pg-{}-{port}", std::process::id()));
        let as_postgres = is_root();
        std::fs::create_dir_all(&data)?;
        if as_postgres {
            chown_postgres(&data).await?;
        }
        let data_str = data.to_string_lossy().into_owned();
        let mut this = Self {
            bin,
            data,
            as_postgres,
            url: format!("postgres://postgres@127.0.0.1:{port}/postgres"),
        };
        this.tool(
            "initdb",
            &[
                "-D",
                &data_str,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .await?;
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={data_str} \
             -c shared_preload_libraries=pg_stat_statements -c pg_stat_statements.track=all \
             -c fsync=off -c wal_writer_delay=10ms"
        );
        let log = format!("{data_str}/server.log");
        this.tool(
            "pg_ctl",
            &["-D", &data_str, "-l", &log, "-o", &options, "-w", "start"],
        )
        .await?;
        let url = this.url.clone();
        wait_for(
            "the private PostgreSQL",
            Duration::from_secs(20),
            async || postgres(&url).await.is_ok(),
        )
        .await?;
        Ok(this)
    }

    async fn tool(&mut self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(name);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !output.status.success() {
            bail!(
                "{name} failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let data = self.data.to_string_lossy().into_owned();
        let mut command = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            std::process::Command::new(&program)
        };
        let _ = command
            .args(["-D", &data, "-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

/// The newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), or `pg_config --bindir`.
fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Ok(bin);
    }
    let output = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output();
    match output {
        Ok(o) if o.status.success() => {
            let bin = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
            if bin.join("initdb").exists() {
                return Ok(bin);
            }
            bail!("no initdb in {}", bin.display())
        }
        _ => bail!("no PostgreSQL server binaries (initdb) found; install postgresql"),
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

async fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .await?;
    if !status.success() {
        bail!("chown postgres {} failed", path.display());
    }
    Ok(())
}

/// `host:port` of a `redis://` or `postgres://` URL.
pub fn socket_of(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or(rest);
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, h)| h);
    host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .with_context(|| format!("no host:port in {url}"))
}
