//! Ferry's binaries (and peers) as child processes of the harness: spawned pinned, watched until ready,
//! measured from `/proc`, stopped when dropped. Used by the footprint (B9), HTTP (B8) and AMQP (B4)
//! scenarios.
//!
//! A [`Platform`] is a registry, a router and, on request, the HTTP and MQTT adapters, each its own
//! process as in a deployment, wired together with generated tokens on free loopback ports, with one
//! tenant `bench` provisioned: devices `d-N` with the hashed-password credential `a-N` / `pw-N` and the
//! application user `bench-app` / `bench-app-pw`.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::json;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::client::{Base, Conn};
use crate::pin;

/// The tenant every scenario uses.
pub const TENANT: &str = "bench";
/// The application user that consumes (SASL PLAIN at the router).
pub const APP_USER: &str = "bench-app";
pub const APP_PASSWORD: &str = "bench-app-pw";
/// The adapters' service credential at the router.
pub const ADAPTER_USER: &str = "ferry-adapter";

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// A Ferry binary: `--name` beside this executable unless given.
pub fn binary(explicit: Option<&Path>, name: &str) -> anyhow::Result<PathBuf> {
    let bin = match explicit {
        Some(b) => b.to_owned(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .with_file_name(name),
    };
    ensure!(
        bin.is_file(),
        "{} not found: build it with `cargo build --release -p {}` (into the same target directory as \
         ferry-bench)",
        bin.display(),
        if name == "ferry" { "ferry" } else { name }
    );
    Ok(bin)
}

/// A loopback port that was free a moment ago (the child binds it right after).
pub fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}

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

/// Generated tokens and secrets of one platform.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub admin: String,
    pub internal: String,
    pub adapter: String,
}

impl Secrets {
    pub fn generate() -> Self {
        let tag = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        );
        Self {
            admin: format!("bench-admin-{tag}"),
            internal: format!("bench-internal-{tag}"),
            adapter: format!("bench-adapter-{tag}"),
        }
    }
}

/// Which Ferry binaries to find.
#[derive(Debug, Clone)]
pub struct Binaries {
    pub registry: PathBuf,
    pub router: PathBuf,
    pub http_adapter: Option<PathBuf>,
    pub mqtt_adapter: Option<PathBuf>,
}

/// Where to find Ferry's binaries.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct BinArgs {
    /// Directory holding ferry-registry, ferry-router, ferry-http-adapter, ferry-mqtt-adapter and ferry
    /// (default: the directory of this executable, i.e. the same target directory).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
}

impl BinArgs {
    /// The binary `name`, checked to exist.
    pub fn get(&self, name: &str) -> anyhow::Result<PathBuf> {
        binary(self.bin_dir.as_ref().map(|d| d.join(name)).as_deref(), name)
    }
}

/// A registry, a router, and optionally the adapters, each in its own process.
pub struct Platform {
    pub secrets: Secrets,
    pub registry_addr: SocketAddr,
    pub router_addr: SocketAddr,
    pub router_admin: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub mqtt_addr: Option<SocketAddr>,
    /// In start order: registry, router, adapters. Dropped (stopped) in reverse.
    procs: Vec<Proc>,
    pub dir: TempDir,
}

impl Platform {
    /// Nothing started yet: a directory, secrets and free ports.
    pub fn empty() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-platform-")
            .tempdir()
            .context("creating the platform's directory")?;
        Ok(Self {
            secrets: Secrets::generate(),
            registry_addr: free_port()?,
            router_addr: free_port()?,
            router_admin: free_port()?,
            http_addr: None,
            mqtt_addr: None,
            procs: Vec::new(),
            dir,
        })
    }

    /// Adds a started process (stopped with the platform, in reverse order).
    pub fn push(&mut self, p: Proc) {
        self.procs.push(p);
    }

    /// Starts the registry (SQLite), provisions `devices` devices, then the router and the adapters asked
    /// for, all pinned to `cpus`, and waits until each is ready.
    pub async fn start(
        bins: &Binaries,
        cpus: Option<&str>,
        devices: usize,
    ) -> anyhow::Result<Self> {
        let mut me = Self::empty()?;
        let mut registry = me.spawn_registry(&bins.registry, cpus)?;
        registry.wait_http_ready(me.registry_addr, "/ready").await?;
        me.procs.push(registry);
        provision(me.registry_addr, &me.secrets, devices).await?;
        let mut router = me.spawn_router(&bins.router, cpus)?;
        router.wait_http_ready(me.router_admin, "/ready").await?;
        me.procs.push(router);
        if let Some(bin) = &bins.http_adapter {
            let addr = free_port()?;
            let admin = free_port()?;
            let mut p = me.spawn_adapter("http", bin, cpus, addr, admin)?;
            p.wait_http_ready(admin, "/ready").await?;
            me.procs.push(p);
            me.http_addr = Some(addr);
        }
        if let Some(bin) = &bins.mqtt_adapter {
            let addr = free_port()?;
            let admin = free_port()?;
            let mut p = me.spawn_adapter("mqtt", bin, cpus, addr, admin)?;
            p.wait_http_ready(admin, "/ready").await?;
            me.procs.push(p);
            me.mqtt_addr = Some(addr);
        }
        Ok(me)
    }

    /// The registry process, not yet ready.
    pub fn spawn_registry(&self, bin: &Path, cpus: Option<&str>) -> anyhow::Result<Proc> {
        registry_proc(
            bin,
            cpus,
            self.dir.path(),
            "registry",
            self.registry_addr,
            &self.secrets,
        )
    }

    /// The router process, not yet ready (its `/ready` is on `router_admin`).
    pub fn spawn_router(&self, bin: &Path, cpus: Option<&str>) -> anyhow::Result<Proc> {
        let data = self.dir.path().join(format!("router-{}", self.procs.len()));
        let env = vec![
            ("FERRY_ROUTER_BIND".into(), self.router_addr.to_string()),
            (
                "FERRY_ROUTER_ADMIN_BIND".into(),
                self.router_admin.to_string(),
            ),
            ("FERRY_ROUTER_DATA_DIR".into(), data.display().to_string()),
            (
                "FERRY_ROUTER_REGISTRY_URL".into(),
                format!("http://{}", self.registry_addr),
            ),
            (
                "FERRY_ROUTER_REGISTRY_TOKEN".into(),
                self.secrets.internal.clone(),
            ),
            ("FERRY_ROUTER_ADAPTER_USER".into(), ADAPTER_USER.into()),
            (
                "FERRY_ROUTER_ADAPTER_PASSWORD".into(),
                self.secrets.adapter.clone(),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ];
        Proc::spawn(
            "ferry-router",
            bin,
            &[],
            &env,
            &["FERRY_ROUTER_", "RUST_LOG"],
            cpus,
            self.dir
                .path()
                .join(format!("router-{}.log", self.procs.len())),
        )
    }

    /// An adapter process (`kind` = `http` or `mqtt`), not yet ready (its `/ready` is on `admin`).
    pub fn spawn_adapter(
        &self,
        kind: &str,
        bin: &Path,
        cpus: Option<&str>,
        bind: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<Proc> {
        let prefix = if kind == "http" {
            "FERRY_HTTP_"
        } else {
            "FERRY_MQTT_"
        };
        let var = |k: &str| format!("{prefix}{k}");
        let env = vec![
            (var("BIND"), bind.to_string()),
            (var("ADMIN_BIND"), admin.to_string()),
            (
                var("REGISTRY_URL"),
                format!("http://{}", self.registry_addr),
            ),
            (var("REGISTRY_TOKEN"), self.secrets.internal.clone()),
            (var("ROUTER_ADDRESS"), self.router_addr.to_string()),
            (var("ROUTER_USER"), ADAPTER_USER.into()),
            (var("ROUTER_PASSWORD"), self.secrets.adapter.clone()),
            (
                var("INSTANCE_ID"),
                format!("{kind}-bench-{}", self.procs.len()),
            ),
            ("RUST_LOG".into(), "warn".into()),
        ];
        Proc::spawn(
            &format!("ferry-{kind}-adapter"),
            bin,
            &[],
            &env,
            &[prefix, "RUST_LOG"],
            cpus,
            self.dir
                .path()
                .join(format!("{kind}-{}.log", self.procs.len())),
        )
    }

    /// Pids of the platform's processes (registry, router, adapters), for CPU accounting.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// The running processes, by name.
    pub fn procs(&self) -> &[Proc] {
        &self.procs
    }

    /// Fails when any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.procs.iter_mut().try_for_each(Proc::check_alive)
    }

    /// A registration assertion for device `d-N`, as an adapter gets it from the internal API.
    pub async fn assertion(&self, device: usize) -> anyhow::Result<String> {
        let base = Base::new(self.registry_addr, &self.secrets.internal)?;
        let mut conn = Conn::open(self.registry_addr).await?;
        let path = format!("/internal/v1/assertions/{TENANT}/d-{device}");
        let (status, body) = conn
            .fetch(base.request(Method::POST, Uri::try_from(path.as_str())?, Bytes::new()))
            .await?;
        ensure!(status == StatusCode::OK, "{path}: HTTP {status}");
        let v: serde_json::Value = serde_json::from_slice(&body).context("assertion answer")?;
        v.get("assertion")
            .and_then(|a| a.as_str())
            .map(str::to_owned)
            .context("no `assertion` in the answer")
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        while let Some(p) = self.procs.pop() {
            drop(p);
        }
    }
}

/// A `ferry-registry` process on `addr` with SQLite in `dir/NAME`.
pub fn registry_proc(
    bin: &Path,
    cpus: Option<&str>,
    dir: &Path,
    name: &str,
    addr: SocketAddr,
    secrets: &Secrets,
) -> anyhow::Result<Proc> {
    let env = vec![
        ("FERRY_REGISTRY_BIND".into(), addr.to_string()),
        (
            "FERRY_REGISTRY_DATA_DIR".into(),
            dir.join(name).display().to_string(),
        ),
        ("FERRY_REGISTRY_ADMIN_TOKEN".into(), secrets.admin.clone()),
        (
            "FERRY_REGISTRY_INTERNAL_TOKEN".into(),
            secrets.internal.clone(),
        ),
        // Setup hashes a password per device; verified passwords are cached by the adapters.
        ("FERRY_REGISTRY_BCRYPT_COST".into(), "4".into()),
        ("RUST_LOG".into(), "warn".into()),
    ];
    Proc::spawn(
        "ferry-registry",
        bin,
        &[],
        &env,
        &["FERRY_REGISTRY_", "RUST_LOG"],
        cpus,
        dir.join(format!("{name}.log")),
    )
}

/// Tenant `bench`, devices `d-N` with credential `a-N` / `pw-N`, application user `bench-app`.
pub async fn provision(addr: SocketAddr, secrets: &Secrets, devices: usize) -> anyhow::Result<()> {
    let base = Base::new(addr, &secrets.admin)?;
    let mut conn = Conn::open(addr).await?;
    send(
        &mut conn,
        &base,
        Method::POST,
        format!("/v1/tenants/{TENANT}"),
        json!({}),
    )
    .await?;
    for i in 0..devices {
        send(
            &mut conn,
            &base,
            Method::POST,
            format!("/v1/devices/{TENANT}/d-{i}"),
            json!({}),
        )
        .await?;
        let credentials = json!([{
            "type": "hashed-password",
            "auth-id": format!("a-{i}"),
            "secrets": [{ "pwd-plain": device_password(i) }],
        }]);
        send(
            &mut conn,
            &base,
            Method::PUT,
            format!("/v1/credentials/{TENANT}/d-{i}"),
            credentials,
        )
        .await?;
    }
    let app = json!({ "password": APP_PASSWORD, "tenants": [TENANT] });
    send(
        &mut conn,
        &base,
        Method::PUT,
        format!("/v1/applications/{APP_USER}"),
        app,
    )
    .await?;
    Ok(())
}

/// The password of device `d-N` (auth-id `a-N`).
pub fn device_password(i: usize) -> String {
    format!("pw-{i}")
}

async fn send(
    conn: &mut Conn,
    base: &Base,
    method: Method,
    path: String,
    body: serde_json::Value,
) -> anyhow::Result<()> {
    let uri = Uri::try_from(path.as_str()).with_context(|| format!("bad path {path}"))?;
    let (status, answer) = conn
        .fetch(base.request(method.clone(), uri, Bytes::from(body.to_string())))
        .await?;
    ensure!(
        status.is_success(),
        "{method} {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rss_is_read_from_the_status_text() {
        let status = "Name:\tferry\nVmPeak:\t  9000 kB\nVmRSS:\t    7124 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(7124));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn stat_lines_give_command_and_parent() {
        let stat = "1717 (beam.smp) S 1711 1717 1 0 -1";
        assert_eq!(parse_stat_comm_ppid(stat), Some(("beam.smp".into(), 1711)));
        let odd = "42 (a) b) R 7 42";
        assert_eq!(parse_stat_comm_ppid(odd), Some(("a) b".into(), 7)));
        assert_eq!(parse_stat_comm_ppid("42 x"), None);
    }

    #[test]
    fn status_lines_parse() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503 Service"), Some(503));
        assert_eq!(parse_status_line(b"SSH-2.0-OpenSSH"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1"), None);
    }

    #[test]
    fn own_rss_is_readable() {
        assert!(rss_kib(std::process::id()).expect("own status") > 0);
    }
}
