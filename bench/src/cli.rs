//! Command line of `ferry-bench`: one subcommand per scenario, each with the knobs the report records.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::pin::Pinning;

#[derive(Debug, Parser)]
#[command(
    name = "ferry-bench",
    version,
    about = "Ferry's benchmark harness; writes bench/REPORT.md"
)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// Registry internal API: credential lookups and assertion issuance per second (SQLite, PostgreSQL).
    Registry(RegistryArgs),
    /// Registration assertions in-process: issue and uncached verify, µs per token.
    Assertion(crate::assertion::AssertionArgs),
    /// Durable event appends per second: the router's segment log vs SQLite (per-event and batched commits).
    Events(EventsArgs),
    /// B9: idle RSS and time to ready of every Ferry binary.
    Footprint(crate::footprint::FootprintArgs),
    /// B8: HTTP adapter, keep-alive POST /telemetry → router → AMQP consumer, vs a bare hyper server.
    Http(crate::http::HttpArgs),
    /// B4: AMQP 1.0 forwarding through the router vs RabbitMQ 3.10 and the Proton C example broker.
    Amqp(crate::amqp::AmqpArgs),
    /// Every scenario of BENCHMARKS.md (B1–B10, B13) in one run, then the summary table.
    All(crate::all::AllArgs),
    /// B1/B2, B3, B5, B6, B7: MQTT scenarios, Ferry side by side with Mosquitto (and ActiveMQ for B3).
    Mqtt(crate::mqtt::MqttArgs),
    /// B11, B12: cluster mode (NATS JetStream): CPU per message vs embedded mode; failover under load.
    Cluster(crate::cluster::ClusterArgs),
    /// B10: soak under QoS 1 load; memory growth, lost QoS 1 messages, latency drift.
    Soak(crate::mqtt::soak::SoakArgs),
    /// Holds idle MQTT connections for B6 (started by `ferry-bench mqtt`).
    #[command(hide = true)]
    MqttIdleWorker(crate::mqtt::idle::IdleWorkerArgs),
    /// Rebuilds the summary table at the top of REPORT.md from the scenario sections in it.
    Summary {
        #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
        report: PathBuf,
    },
    /// The bare hyper server B8 compares against (started by `ferry-bench http`).
    #[command(hide = true)]
    BareHyper {
        #[arg(long)]
        bind: std::net::SocketAddr,
    },
}

/// Which registry storage to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn label(self) -> &'static str {
        match self {
            Backend::Sqlite => "SQLite",
            Backend::Postgres => "PostgreSQL",
        }
    }
}

/// Which internal API endpoint to drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Endpoint {
    /// `GET /internal/v1/credentials/{tenant}?type=hashed-password&auth-id=A`
    Credentials,
    /// `POST /internal/v1/assertions/{tenant}/{device}`
    Assertions,
}

impl Endpoint {
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Credentials => "credential lookup",
            Endpoint::Assertions => "assertion issuance",
        }
    }
}

/// Load shape shared by the HTTP scenarios.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// Concurrent keep-alive HTTP/1.1 connections, one request in flight on each.
    #[arg(long, short = 'c', default_value_t = 32)]
    pub connections: usize,
    /// Warm-up before each run, in seconds (not measured).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured time of each run, in seconds.
    #[arg(long, short = 'd', default_value_t = 10)]
    pub duration: u64,
    /// Runs per row; the row shows the run with the median rate.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
}

#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    #[command(flatten)]
    pub load: LoadArgs,
    #[command(flatten)]
    pub pinning: Pinning,
    /// Devices provisioned, each with one hashed-password credential; requests cycle over all of them.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Storage backends to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "sqlite,postgres"
    )]
    pub backends: Vec<Backend>,
    /// Endpoints to drive, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "credentials,assertions"
    )]
    pub endpoints: Vec<Endpoint>,
    /// Admin URL of a PostgreSQL server; a fresh database is created in it for the run and dropped after.
    #[arg(long, env = "FERRY_TEST_POSTGRES_URL")]
    pub postgres_url: Option<String>,
    /// The `ferry-registry` binary (default: beside this executable, i.e. the same target directory).
    #[arg(long)]
    pub registry_bin: Option<PathBuf>,
    /// The report to update (only the registry's marked section is replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

/// An event store measured by the `events` scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Store {
    /// `ferry_router::events::SegmentLog`: each append awaited (durable).
    SegmentLog,
    /// The same, with an ack right after each durable append (the router's steady state).
    SegmentLogAck,
    /// SQLite (WAL, `synchronous=FULL`) via sqlx, one INSERT transaction per event, a pool of connections.
    Sqlite,
    /// SQLite as above, the appenders' events committed in batches by one writer task (group commit).
    SqliteBatched,
}

impl Store {
    pub fn label(self) -> &'static str {
        match self {
            Store::SegmentLog => "segment log",
            Store::SegmentLogAck => "segment log + ack",
            Store::Sqlite => "SQLite, commit per event",
            Store::SqliteBatched => "SQLite, batched commits",
        }
    }

    /// The name on the command line.
    pub fn arg(self) -> &'static str {
        match self {
            Store::SegmentLog => "segment-log",
            Store::SegmentLogAck => "segment-log-ack",
            Store::Sqlite => "sqlite",
            Store::SqliteBatched => "sqlite-batched",
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct EventsArgs {
    /// Concurrent appenders (tokio tasks, each with one append in flight); one row per count and store.
    #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
    pub appenders: Vec<usize>,
    /// Stores to measure, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "segment-log,segment-log-ack,sqlite,sqlite-batched"
    )]
    pub stores: Vec<Store>,
    /// Payload bytes per event.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Warm-up before each run, in seconds (not measured); every run starts on an empty store.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured time of each run, in seconds.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub duration: u64,
    /// Runs per row; the row shows the run with the median rate.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// Connections in the pool of the per-event SQLite store.
    #[arg(long, default_value_t = 4)]
    pub sqlite_pool: u32,
    /// Most events the batched SQLite writer commits in one transaction.
    #[arg(long, default_value_t = 4096)]
    pub max_batch: usize,
    /// Directory in which each run creates (and afterwards removes) its store; its file system is what
    /// is measured (default: the system's temporary directory).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Tokio worker threads (default: one per CPU the process may use).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Pin the whole process (appenders and stores) to these CPUs (taskset list); default: not pinned.
    #[arg(long)]
    pub cpus: Option<String>,
    /// The report to update (only the events section is replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}
