//! A sampler of the memory and CPU time of processes (`/proc/PID/status` and `stat`).

use std::{
    collections::HashMap,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

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
