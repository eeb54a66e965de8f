//! One child process of the harness: spawned pinned, watched until ready, measured from `/proc`, and
//! stopped when dropped; and what `/proc` tells of other processes.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::pin;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// One child process with its log file.
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    spawned: Instant,
    /// Another pid to charge and to stop instead of the child (a script's real server, e.g. beam.smp).
    pub main_pid: Option<u32>,
}

impl Proc {
    /// Spawns `program args` pinned to `cpus` with `env` (every variable starting with one of
    /// `clear_prefixes` in our own environment removed first), logging to `log`.
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
        clear_prefixes: &[&str],
        cpus: Option<&str>,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = pin::command(cpus, program);
        cmd.args(args);
        for (key, _) in std::env::vars_os() {
            let k = key.to_string_lossy();
            if clear_prefixes.iter().any(|p| k.starts_with(p)) {
                cmd.env_remove(&key);
            }
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let spawned = Instant::now();
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Self {
            name: name.to_owned(),
            child,
            log,
            spawned,
            main_pid: None,
        })
    }

    /// The pid that does the work (taskset execs the program, so it is the child's unless overridden).
    pub fn pid(&self) -> u32 {
        self.main_pid.unwrap_or_else(|| self.child.id())
    }

    /// Time since spawn.
    pub fn age(&self) -> Duration {
        self.spawned.elapsed()
    }

    /// Fails with the log's tail when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log:\n{}",
                self.name,
                self.log_tail()
            );
        }
        Ok(())
    }

    /// Waits until `GET path` on `addr` answers 200; returns the time since spawn.
    pub async fn wait_http_ready(
        &mut self,
        addr: SocketAddr,
        path: &str,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if http_status(addr, path).await == Some(200) {
                return Ok(self.age());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Waits until `addr` accepts TCP connections; returns the time since spawn.
    pub async fn wait_port(
        &mut self,
        addr: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(self.age());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept on {addr} within {timeout:?}; its log:\n{}",
                    self.name,
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Resident memory of the working process, in KiB.
    pub fn rss_kib(&self) -> anyhow::Result<u64> {
        rss_kib(self.pid())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Our own children, by pid: the working process first (when it is not the child), then the child.
        if let Some(pid) = self.main_pid {
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline
                && std::path::Path::new(&format!("/proc/{pid}")).exists()
            {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of `pid` from `/proc/PID/status`, in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss_kib(&status).with_context(|| format!("no VmRSS in {path}"))
}

/// The `VmRSS:` line of a `/proc/PID/status` text, in KiB.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// The children of `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<(u32, String)> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        if let Some((comm, ppid)) = parse_stat_comm_ppid(&stat) {
            if ppid == pid {
                out.push((child, comm));
            }
        }
    }
    out
}

/// Pids of the processes whose command name is exactly `comm`.
pub fn pids_named(comm: &str) -> Vec<u32> {
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        if let Ok(c) = std::fs::read_to_string(format!("/proc/{pid}/comm")) {
            if c.trim() == comm {
                out.push(pid);
            }
        }
    }
    out
}

/// Command name and parent pid of a `/proc/PID/stat` line.
pub fn parse_stat_comm_ppid(stat: &str) -> Option<(String, u32)> {
    let open = stat.find('(')?;
    let (comm, rest) = stat[open + 1..].rsplit_once(')')?;
    let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
    Some((comm.to_owned(), ppid))
}

/// The status code of `GET path` on `addr` (HTTP/1.1, connection closed after), or `None`.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = [0u8; 64];
        let mut n = 0;
        while n < 12 {
            let k = s.read(&mut buf[n..]).await.ok()?;
            if k == 0 {
                break;
            }
            n += k;
        }
        parse_status_line(&buf[..n])
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .ok()
        .flatten()
}

/// The code of an `HTTP/1.x NNN` status line.
pub fn parse_status_line(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(..12)?).ok()?;
    let rest = text.strip_prefix("HTTP/1.")?;
    rest.get(2..5)?.parse().ok()
}
