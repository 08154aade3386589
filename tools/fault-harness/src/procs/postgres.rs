//! A PostgreSQL cluster of the harness's own, for the store outages.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, bail};

use super::{free_port, tail};

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
        let dir = parent.join(format!("pg-{}", fastrand::u32(..)));
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
