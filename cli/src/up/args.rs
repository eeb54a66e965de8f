//! The options of `ferry up`, shared by both of its modes (in one process, and `--cluster`).

use std::path::PathBuf;

/// Options of `ferry up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Data directory (database, tokens, keys). Default: $FERRY_DATA_DIR or ~/.local/share/ferry.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Port of the registry's management API.
    #[arg(long, default_value_t = 28080)]
    pub registry_port: u16,
    /// Port of the AMQP 1.0 endpoint for applications.
    #[arg(long, default_value_t = 15672)]
    pub amqp_port: u16,
    /// Port of the MQTT adapter.
    #[arg(long, default_value_t = 1883)]
    pub mqtt_port: u16,
    /// Port of the HTTP adapter.
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
    /// Admin token for the management API; generated into the data directory when not given.
    #[arg(long, env = "FERRY_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Address every endpoint listens on: loopback by default, as Mosquitto does unconfigured;
    /// `--listen 0.0.0.0` exposes the registry, AMQP, MQTT and HTTP to the network.
    #[arg(long, default_value = "127.0.0.1", alias = "bind")]
    pub listen: std::net::IpAddr,
    /// Only the device endpoints (MQTT, HTTP) on another address than `--listen`.
    #[arg(long, hide = true)]
    pub mqtt_bind: Option<std::net::IpAddr>,
    /// Also create a demo tenant, device and application user (once; kept in the data directory) and
    /// print the commands that send and receive telemetry with them.
    #[arg(long)]
    pub demo: bool,
    /// Cluster mode on this machine, for trying it: three nats-server nodes (from PATH), two routers, two
    /// MQTT adapters, an HTTP adapter and a registry as child processes (docs/cluster.md). Ports count
    /// up from the ones given (second router on --amqp-port + 1, ...).
    #[arg(long)]
    pub cluster: bool,
    /// With --cluster: a PostgreSQL URL for the registry, which then runs two replicas.
    #[arg(long, requires = "cluster")]
    pub postgres: Option<String>,
    /// With --cluster: client port of the first NATS node (the others follow).
    #[arg(long, default_value_t = 4222)]
    pub nats_port: u16,
    /// With --cluster: cluster (route) port of the first NATS node.
    #[arg(long, default_value_t = 6222)]
    pub nats_cluster_port: u16,
}

impl UpArgs {
    /// Where the device endpoints listen.
    pub fn device_listen(&self) -> std::net::IpAddr {
        self.mqtt_bind.unwrap_or(self.listen)
    }

    /// The line that says who can reach the endpoints.
    pub fn reach(&self) -> String {
        let (all, devices) = (self.listen, self.device_listen());
        let scope = |ip: std::net::IpAddr| {
            if ip.is_loopback() {
                "this machine only"
            } else if ip.is_unspecified() {
                "the network"
            } else {
                "that address"
            }
        };
        if all == devices {
            format!(
                "  listening on {all} ({}; --listen ADDR to change)",
                scope(all)
            )
        } else {
            format!(
                "  listening on {all} ({}), device endpoints on {devices} ({})",
                scope(all),
                scope(devices)
            )
        }
    }
}
