//! Ferry's binaries (and peers) as child processes of the harness: spawned pinned, watched until ready,
//! measured from `/proc`, stopped when dropped. Used by the footprint (B9), HTTP (B8) and AMQP (B4)
//! scenarios.
//!
//! A [`Platform`] is a registry, a router and, on request, the HTTP and MQTT adapters, each its own
//! process as in a deployment, wired together with generated tokens on free loopback ports, with one
//! tenant `bench` provisioned: devices `d-N` with the hashed-password credential `a-N` / `pw-N` and the
//! application user `bench-app` / `bench-app-pw`.
//!
//! Layout: this file holds the [`Platform`] and how it is provisioned; `process` one child process and
//! what `/proc` and a readiness probe tell of it.

mod process;

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::json;
use tempfile::TempDir;

use crate::client::{Base, Conn};

pub use process::{
    children_of, http_status, parse_stat_comm_ppid, parse_status_line, parse_vm_rss_kib,
    pids_named, rss_kib, Proc,
};

/// The tenant every scenario uses.
pub const TENANT: &str = "bench";
/// The application user that consumes (SASL PLAIN at the router).
pub const APP_USER: &str = "bench-app";
pub const APP_PASSWORD: &str = "bench-app-pw";
/// The adapters' service credential at the router.
pub const ADAPTER_USER: &str = "ferry-adapter";

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
