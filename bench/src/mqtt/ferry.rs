//! Ferry as the system under test: `ferry-registry`, `ferry-router` and `ferry-mqtt-adapter` as three
//! processes (the binaries beside this executable), each pinned to the server cores, on free loopback
//! ports and a fresh temporary data directory; plus the management calls that set up a tenant, its
//! devices with passwords and an application user.
//!
//! Separate processes (rather than `ferry up`, which runs the same `start` functions in one process) let
//! the report split CPU time and RSS per component.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use serde_json::json;
use tempfile::TempDir;
use tokio::task::JoinSet;

use super::procs::{self, Server};
use crate::client::{Base, Conn};
use crate::pin;

pub const TENANT: &str = "bench";
pub const APP_USER: &str = "bench-app";
pub const APP_PASSWORD: &str = "bench-app-secret";
const READY: Duration = Duration::from_secs(60);

/// Where the binaries are.
pub fn bin_dir(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let dir = match explicit {
        Some(d) => d.to_owned(),
        None => std::env::current_exe()
            .context("locating this executable")?
            .parent()
            .context("this executable has no directory")?
            .to_owned(),
    };
    for bin in ["ferry-registry", "ferry-router", "ferry-mqtt-adapter"] {
        ensure!(
            dir.join(bin).is_file(),
            "{} not found: build it with `cargo build --release -p ferry-registry -p ferry-router \
             -p ferry-mqtt-adapter -p ferry-bench` (or pass --bin-dir)",
            dir.join(bin).display()
        );
    }
    Ok(dir)
}

/// The three processes, started and ready.
pub struct Platform {
    pub registry: Server,
    pub router: Server,
    pub adapter: Server,
    pub registry_addr: SocketAddr,
    pub amqp: SocketAddr,
    pub mqtt: SocketAddr,
    admin_token: String,
    _dir: TempDir,
}

/// A clean environment for a Ferry binary: nothing of the caller's `FERRY_*` leaks in.
pub(crate) fn command(cpus: Option<&str>, bin: &Path) -> std::process::Command {
    let mut cmd = pin::command(cpus, bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FERRY_") {
            cmd.env_remove(key);
        }
    }
    cmd.env_remove("RUST_LOG");
    // `FERRY_BENCH_LOG` becomes the components' RUST_LOG (e.g. `ferry_mqtt_adapter=debug` to see why a
    // device was disconnected); by default they log at their own default level.
    if let Some(filter) = std::env::var_os("FERRY_BENCH_LOG") {
        cmd.env("RUST_LOG", filter);
    }
    cmd
}

impl Platform {
    /// Starts registry, router and adapter (in that order, each waited for).
    pub async fn start(bin_dir: &Path, cpus: Option<&str>) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-platform-")
            .tempdir()?;
        let id = std::process::id();
        let admin_token = format!("bench-admin-{id}");
        let internal = format!("bench-internal-{id}");

        let registry_addr = procs::free_port()?;
        let mut cmd = command(cpus, &bin_dir.join("ferry-registry"));
        cmd.env("FERRY_REGISTRY_BIND", registry_addr.to_string())
            .env("FERRY_REGISTRY_DATA_DIR", dir.path().join("registry"))
            .env("FERRY_REGISTRY_ADMIN_TOKEN", &admin_token)
            .env("FERRY_REGISTRY_INTERNAL_TOKEN", &internal)
            // Provisioning thousands of devices (B6) at the default cost 10 would take minutes; the
            // adapter's verify cache pays bcrypt once per device either way.
            .env("FERRY_REGISTRY_BCRYPT_COST", "4");
        let mut registry = Server::spawn("ferry-registry", cmd, &dir.path().join("registry.log"))?;
        registry.wait_ready(registry_addr, READY).await?;
        let registry_url = format!("http://{registry_addr}");

        let amqp = procs::free_port()?;
        let router_admin = procs::free_port()?;
        let mut cmd = command(cpus, &bin_dir.join("ferry-router"));
        cmd.env("FERRY_ROUTER_BIND", amqp.to_string())
            .env("FERRY_ROUTER_TLS_BIND", procs::free_port()?.to_string())
            .env("FERRY_ROUTER_ADMIN_BIND", router_admin.to_string())
            .env("FERRY_ROUTER_DATA_DIR", dir.path().join("router"))
            .env("FERRY_ROUTER_REGISTRY_URL", &registry_url)
            .env("FERRY_ROUTER_REGISTRY_TOKEN", &internal)
            .env("FERRY_ROUTER_ADAPTER_PASSWORD", &internal);
        let mut router = Server::spawn("ferry-router", cmd, &dir.path().join("router.log"))?;
        router.wait_ready(router_admin, READY).await?;

        let mqtt = procs::free_port()?;
        let adapter_admin = procs::free_port()?;
        let mut cmd = command(cpus, &bin_dir.join("ferry-mqtt-adapter"));
        cmd.env("FERRY_MQTT_BIND", mqtt.to_string())
            .env("FERRY_MQTT_TLS_BIND", procs::free_port()?.to_string())
            .env("FERRY_MQTT_ADMIN_BIND", adapter_admin.to_string())
            .env("FERRY_MQTT_REGISTRY_URL", &registry_url)
            .env("FERRY_MQTT_REGISTRY_TOKEN", &internal)
            .env("FERRY_MQTT_ROUTER_ADDRESS", amqp.to_string())
            .env("FERRY_MQTT_ROUTER_PASSWORD", &internal);
        let mut adapter =
            Server::spawn("ferry-mqtt-adapter", cmd, &dir.path().join("adapter.log"))?;
        adapter.wait_ready(adapter_admin, READY).await?;
        adapter.wait_tcp(mqtt, READY).await?;
        Ok(Self {
            registry,
            router,
            adapter,
            registry_addr,
            amqp,
            mqtt,
            admin_token,
            _dir: dir,
        })
    }

    /// The processes, in order registry, router, adapter.
    pub fn servers(&self) -> [&Server; 3] {
        [&self.registry, &self.router, &self.adapter]
    }

    pub fn pids(&self) -> Vec<u32> {
        self.servers().iter().map(|s| s.pid()).collect()
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        self.registry.check_alive()?;
        self.router.check_alive()?;
        self.adapter.check_alive()
    }

    /// Tenant [`TENANT`], devices `d0..d{n-1}` with hashed-password credentials `a{i}` / [`password`],
    /// and application user [`APP_USER`] for the tenant; `parallel` requests at a time.
    pub async fn provision(&self, devices: usize, parallel: usize) -> anyhow::Result<()> {
        provision(self.registry_addr, &self.admin_token, devices, parallel).await
    }
}

/// [`Platform::provision`] against any registry (also cluster mode's).
pub async fn provision(
    registry_addr: SocketAddr,
    admin_token: &str,
    devices: usize,
    parallel: usize,
) -> anyhow::Result<()> {
    let base = Arc::new(Base::new(registry_addr, admin_token)?);
    let mut conn = Conn::open(registry_addr).await?;
    call(
        &mut conn,
        &base,
        Method::POST,
        format!("/v1/tenants/{TENANT}"),
        "{}",
    )
    .await?;
    call(
        &mut conn,
        &base,
        Method::PUT,
        format!("/v1/applications/{APP_USER}"),
        &json!({ "password": APP_PASSWORD, "tenants": [TENANT] }).to_string(),
    )
    .await?;
    let parallel = parallel.clamp(1, devices.max(1));
    let mut tasks = JoinSet::new();
    for k in 0..parallel {
        let base = base.clone();
        let addr = registry_addr;
        tasks.spawn(async move {
            let mut conn = Conn::open(addr).await?;
            for i in (k..devices).step_by(parallel) {
                call(
                    &mut conn,
                    &base,
                    Method::POST,
                    format!("/v1/devices/{TENANT}/d{i}"),
                    "{}",
                )
                .await?;
                let creds = json!([{
                    "type": "hashed-password",
                    "auth-id": format!("a{i}"),
                    "secrets": [{ "pwd-plain": password(i) }],
                }]);
                call(
                    &mut conn,
                    &base,
                    Method::PUT,
                    format!("/v1/credentials/{TENANT}/d{i}"),
                    &creds.to_string(),
                )
                .await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    Ok(())
}

/// The password of device `i` (the same for its Mosquitto user).
pub fn password(i: usize) -> String {
    format!("p{i}-secret")
}

async fn call(
    conn: &mut Conn,
    base: &Base,
    method: Method,
    path: String,
    body: &str,
) -> anyhow::Result<()> {
    let uri = Uri::try_from(path.as_str()).with_context(|| format!("bad path {path}"))?;
    let (status, answer) = conn
        .fetch(base.request(method.clone(), uri, Bytes::from(body.to_owned())))
        .await?;
    ensure!(
        status.is_success() || status == StatusCode::NOT_MODIFIED,
        "{method} {path}: HTTP {status}: {}",
        String::from_utf8_lossy(&answer)
    );
    Ok(())
}
