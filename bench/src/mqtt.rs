//! The MQTT scenarios of BENCHMARKS.md, Ferry side by side with its peers in one run:
//!
//! - `b1-b2` ([`run_b1`]): QoS 0 telemetry, 32 B payloads, 100 publishers → Ferry (adapter → router →
//!   one AMQP consumer) vs Mosquitto (→ one MQTT subscriber): the highest loss-free delivered rate, and
//!   CPU seconds per delivered message of all Ferry processes summed vs Mosquitto's.
//! - `b5` ([`run_b5`]): latency device → consumer at 50 % of Mosquitto's B1 maximum.
//! - `b7` ([`run_b7`]): CONNECT → CONNACK per second with a credential check.
//! - `b6` ([`run_b6`]): 15,000 authenticated idle connections, RSS per connection.
//! - `b3` ([`run_b3`]): QoS 1 events, durable, PUBACK after store: Ferry vs Mosquitto (persistence) vs
//!   ActiveMQ Classic (MQTT transport, KahaDB).
//! - `b13` ([`run_b13`]): overload, QoS 0 offered at twice the loss-free rate with a few QoS 1
//!   devices beside it: delivered rate, QoS 1 devices cut off or messages lost, memory.
//! - `b10` ([`soak::run`]): the soak.
//!
//! Every system under test runs as its own process(es) pinned to `--server-cpus`; the generator (this
//! process, publishers and receiver) is pinned to `--client-cpus`. Each scenario writes its own section
//! of bench/REPORT.md.

pub mod connect;
pub mod ferry;
pub mod idle;
pub mod overload;
pub mod peers;
pub mod procs;
pub mod soak;
pub mod stats;
pub mod throughput;
pub mod traffic;
pub mod wire;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, Parser, ValueEnum};

use crate::cpu;
use crate::pin::Pinning;
use traffic::{PublisherSpec, ReceiverSpec};
use wire::Login;

/// A scenario of `ferry-bench mqtt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MqttScenario {
    /// B1 + B2: QoS 0 telemetry rate and CPU per message.
    B1,
    /// B7: connection setup with a credential check.
    B7,
    /// B6: idle connections, RSS per connection.
    B6,
    /// B5: latency at 50 % of Mosquitto's B1 maximum.
    B5,
    /// B3: QoS 1 durable events.
    B3,
    /// B13: overload, QoS 0 at twice the loss-free rate beside a few QoS 1 devices.
    B13,
}

/// Options of `ferry-bench mqtt` (and of the scenario functions the `all` command calls).
#[derive(Debug, Clone, Args)]
pub struct MqttArgs {
    /// Scenarios to run, in order (B5 uses B1's Mosquitto maximum when B1 ran before it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "b1,b7,b6,b5,b3,b13"
    )]
    pub scenarios: Vec<MqttScenario>,
    #[command(flatten)]
    pub pinning: Pinning,
    /// Publisher connections (B1, B3, B5).
    #[arg(long, default_value_t = 100)]
    pub publishers: usize,
    /// Warm-up before each measured run, in seconds.
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Measured time of each run, in seconds.
    #[arg(long, short = 'd', default_value_t = 5)]
    pub duration: u64,
    /// Measured runs per row; the row shows the median.
    #[arg(long, short = 'r', default_value_t = 3)]
    pub runs: usize,
    /// B1 rate search: warm-up and measured seconds of each probe.
    #[arg(long, default_value_t = 1.0)]
    pub probe_warmup: f64,
    #[arg(long, default_value_t = 2.0)]
    pub probe_duration: f64,
    /// B1 rate search: first target rate (msg/s, all publishers together), step factor, ceiling.
    #[arg(long, default_value_t = 10_000.0)]
    pub start_rate: f64,
    #[arg(long, default_value_t = 1.4)]
    pub step: f64,
    #[arg(long, default_value_t = 2_000_000.0)]
    pub max_rate: f64,
    /// Most probes of one search.
    #[arg(long, default_value_t = 14)]
    pub max_probes: usize,
    /// Each publisher writes what is due every this many milliseconds (open loop).
    #[arg(long, default_value_t = 2)]
    pub tick_ms: u64,
    /// Credit of Ferry's AMQP consumer (refreshed when half is used).
    #[arg(long, default_value_t = 5000)]
    pub credit: u32,
    /// B5: target rate; default 50 % of Mosquitto's B1 maximum (measured in this run or searched anew).
    #[arg(long)]
    pub b5_rate: Option<f64>,
    /// B7: concurrent connectors, each with one CONNECT in flight.
    #[arg(long, default_value_t = 16)]
    pub connectors: usize,
    /// B7: devices (users) the connections cycle over.
    #[arg(long, default_value_t = 1000)]
    pub connect_devices: usize,
    /// B6: idle connections.
    #[arg(long, default_value_t = 15_000)]
    pub idle_connections: usize,
    /// B6: generator processes holding them (each from its own 127.0.0.x source address).
    #[arg(long, default_value_t = 3)]
    pub idle_workers: usize,
    /// B3: unacknowledged QoS 1 messages per publisher (closed loop).
    #[arg(long, default_value_t = 10)]
    pub window: u64,
    /// B13: the loss-free QoS 0 rate (msg/s) the overload doubles, for both systems; default: each
    /// system's own, from B1 when it ran before B13, else searched anew with B1's probes.
    #[arg(long)]
    pub b13_rate_base: Option<f64>,
    /// B13: seconds of overload.
    #[arg(long, default_value_t = 30)]
    pub b13_duration: u64,
    /// B13: QoS 1 telemetry publishers beside the QoS 0 ones (own devices and connections).
    #[arg(long, default_value_t = 10)]
    pub b13_qos1_publishers: usize,
    /// B13: open-loop rate of each QoS 1 publisher, msg/s.
    #[arg(long, default_value_t = 20.0)]
    pub b13_qos1_rate: f64,
    /// B3: skip the ActiveMQ row.
    #[arg(long)]
    pub no_activemq: bool,
    /// Directory with ferry-registry, ferry-router and ferry-mqtt-adapter (default: beside this
    /// executable).
    #[arg(long)]
    pub bin_dir: Option<PathBuf>,
    /// The report to update (only the MQTT scenarios' sections are replaced).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/REPORT.md"))]
    pub report: PathBuf,
    /// Print the figures without touching the report.
    #[arg(long)]
    pub no_report: bool,
}

#[derive(Parser)]
struct Wrapper {
    #[command(flatten)]
    args: MqttArgs,
}

impl MqttArgs {
    /// The defaults, as `ferry-bench mqtt` with no options; for callers that build arguments in code.
    pub fn defaults() -> Self {
        Wrapper::parse_from(["ferry-bench-mqtt"]).args
    }

    /// Parses options as on the command line (without the subcommand), e.g. `["--duration", "3"]`.
    pub fn from_options<I, S>(options: I) -> anyhow::Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: Into<std::ffi::OsString> + Clone,
    {
        let argv = std::iter::once(std::ffi::OsString::from("ferry-bench-mqtt"))
            .chain(options.into_iter().map(Into::into));
        Ok(Wrapper::try_parse_from(argv)?.args)
    }

    pub(crate) fn server_cpus(&self) -> Option<&str> {
        (!self.pinning.no_pin).then_some(self.pinning.server_cpus.as_str())
    }

    pub(crate) fn pinning_text(&self) -> String {
        if self.pinning.no_pin {
            "Nothing pinned".to_owned()
        } else {
            format!(
                "Pinning (taskset): every process of the system under test on CPU {}, the generator \
                 (publishers and receiver, one process) on CPU {}",
                self.pinning.server_cpus, self.pinning.client_cpus
            )
        }
    }

    /// The options common to every reproduce line.
    pub(crate) fn common_options(&self) -> String {
        let mut c = format!(
            "--publishers {} --warmup {} --duration {} --runs {}",
            self.publishers, self.warmup, self.duration, self.runs
        );
        if self.pinning.no_pin {
            c.push_str(" --no-pin");
        } else {
            c.push_str(&format!(
                " --server-cpus {} --client-cpus {}",
                self.pinning.server_cpus, self.pinning.client_cpus
            ));
        }
        c
    }
}

/// Runs the chosen scenarios in order; each writes its own section. Errors of one scenario are
/// reported and the next one still runs; the result is the first error.
pub async fn run(args: &MqttArgs) -> anyhow::Result<()> {
    run_keeping_b1(args).await.1
}

/// [`run`], also giving B1's loss-free rates when B1 ran (for the B10 soak of `ferry-bench all`).
pub async fn run_keeping_b1(args: &MqttArgs) -> (throughput::LossFree, anyhow::Result<()>) {
    let mut b1 = throughput::LossFree::default();
    let mut first_error = None;
    for &scenario in &args.scenarios {
        let result = match scenario {
            MqttScenario::B1 => throughput::run_b1_rates(args).await.map(|rates| {
                b1 = rates;
            }),
            MqttScenario::B5 => run_b5(args, b1.mosquitto).await,
            MqttScenario::B13 => run_b13(args, b1).await,
            MqttScenario::B7 => run_b7(args).await,
            MqttScenario::B6 => run_b6(args).await,
            MqttScenario::B3 => run_b3(args).await,
        };
        if let Err(e) = result {
            eprintln!("ferry-bench mqtt: {scenario:?} failed: {e:#}");
            first_error.get_or_insert(e);
        }
    }
    (b1, first_error.map_or(Ok(()), Err))
}

/// B1 + B2; returns Mosquitto's loss-free maximum (for B5).
pub async fn run_b1(args: &MqttArgs) -> anyhow::Result<Option<f64>> {
    throughput::run_b1(args).await
}

/// B5 at `--b5-rate`, else at half of `mosquitto_max`, else half of a fresh Mosquitto search.
pub async fn run_b5(args: &MqttArgs, mosquitto_max: Option<f64>) -> anyhow::Result<()> {
    throughput::run_b5(args, mosquitto_max).await
}

/// B7.
pub async fn run_b7(args: &MqttArgs) -> anyhow::Result<()> {
    connect::run_b7(args).await
}

/// B6.
pub async fn run_b6(args: &MqttArgs) -> anyhow::Result<()> {
    idle::run_b6(args).await
}

/// B13, starting from `--b13-rate-base`, else from B1's loss-free rates in `b1`, else from a fresh
/// search with B1's probes.
pub async fn run_b13(args: &MqttArgs, b1: throughput::LossFree) -> anyhow::Result<()> {
    overload::run_b13(args, b1).await
}

/// B3.
pub async fn run_b3(args: &MqttArgs) -> anyhow::Result<()> {
    throughput::run_b3(args).await
}

/// Which system serves the MQTT side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ferry,
    Mosquitto,
    ActiveMq,
}

impl Kind {
    pub fn label(self) -> &'static str {
        match self {
            Kind::Ferry => "Ferry",
            Kind::Mosquitto => "Mosquitto",
            Kind::ActiveMq => "ActiveMQ",
        }
    }
}

/// What the publishers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Telemetry,
    Events,
}

/// A running system under test.
pub enum Sut {
    Ferry(Box<ferry::Platform>),
    Mosquitto(peers::Mosquitto),
    ActiveMq(peers::ActiveMq),
}

pub const MOSQUITTO_APP: &str = "app";
pub const MOSQUITTO_APP_PASSWORD: &str = "app-secret";

impl Sut {
    /// Starts `kind` with `devices` device users (for Ferry: provisioned through the management API).
    pub async fn start(
        kind: Kind,
        args: &MqttArgs,
        devices: usize,
        persistence: bool,
    ) -> anyhow::Result<Self> {
        let cpus = args.server_cpus();
        Ok(match kind {
            Kind::Ferry => {
                let dir = ferry::bin_dir(args.bin_dir.as_deref())?;
                let platform = ferry::Platform::start(&dir, cpus).await?;
                let began = Instant::now();
                platform.provision(devices, 8).await?;
                eprintln!(
                    "Ferry: provisioned {devices} devices in {:.1} s",
                    began.elapsed().as_secs_f64()
                );
                Sut::Ferry(Box::new(platform))
            }
            Kind::Mosquitto => {
                let mut users: Vec<(String, String)> = (0..devices)
                    .map(|i| (format!("d{i}"), ferry::password(i)))
                    .collect();
                users.push((MOSQUITTO_APP.into(), MOSQUITTO_APP_PASSWORD.into()));
                Sut::Mosquitto(peers::Mosquitto::start(cpus, &users, persistence).await?)
            }
            Kind::ActiveMq => Sut::ActiveMq(peers::ActiveMq::start(cpus).await?),
        })
    }

    pub fn kind(&self) -> Kind {
        match self {
            Sut::Ferry(_) => Kind::Ferry,
            Sut::Mosquitto(_) => Kind::Mosquitto,
            Sut::ActiveMq(_) => Kind::ActiveMq,
        }
    }

    pub fn mqtt_addr(&self) -> std::net::SocketAddr {
        match self {
            Sut::Ferry(p) => p.mqtt,
            Sut::Mosquitto(m) => m.addr,
            Sut::ActiveMq(a) => a.addr,
        }
    }

    /// (name, pid) of every process of the system.
    pub fn processes(&self) -> Vec<(String, u32)> {
        match self {
            Sut::Ferry(p) => p
                .servers()
                .iter()
                .map(|s| (s.name.clone(), s.pid()))
                .collect(),
            Sut::Mosquitto(m) => vec![(m.server.name.clone(), m.server.pid())],
            Sut::ActiveMq(a) => vec![(a.server.name.clone(), a.server.pid())],
        }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Sut::Ferry(p) => p.check_alive(),
            Sut::Mosquitto(m) => m.server.check_alive(),
            Sut::ActiveMq(a) => a.server.check_alive(),
        }
    }

    /// How device `i` logs in, with client id `client_id`.
    pub fn login(&self, i: usize, client_id: String, keep_alive_secs: u16) -> Login {
        let username = match self {
            Sut::Ferry(_) => format!("a{i}@{}", ferry::TENANT),
            Sut::Mosquitto(_) | Sut::ActiveMq(_) => format!("d{i}"),
        };
        let password = match self {
            Sut::ActiveMq(_) => peers::ACTIVEMQ_PASSWORD.to_owned(),
            _ => ferry::password(i),
        };
        let username = match self {
            Sut::ActiveMq(_) => peers::ACTIVEMQ_USER.to_owned(),
            _ => username,
        };
        Login {
            client_id,
            username,
            password,
            keep_alive_secs,
            clean_session: true,
        }
    }

    /// Publisher `i` of a flow.
    pub fn publisher(&self, i: usize, flow: Flow) -> PublisherSpec {
        let topic = match (self, flow) {
            // An authenticated device publishes on the short topics without tenant and device.
            (Sut::Ferry(_), Flow::Telemetry) => "t".to_owned(),
            (Sut::Ferry(_), Flow::Events) => "e".to_owned(),
            (_, Flow::Telemetry) => format!("t/{}/d{i}", ferry::TENANT),
            (_, Flow::Events) => format!("e/{}/d{i}", ferry::TENANT),
        };
        PublisherSpec {
            login: self.login(i, format!("pub-{i}"), 60),
            topic,
            addr: None,
            qos: None,
            rate: None,
        }
    }

    /// The one receiver of a flow.
    pub fn receiver(&self, flow: Flow, qos: u8, credit: u32) -> ReceiverSpec {
        match self {
            Sut::Ferry(p) => ReceiverSpec::Amqp {
                addr: p.amqp,
                user: ferry::APP_USER.into(),
                password: ferry::APP_PASSWORD.into(),
                address: match flow {
                    Flow::Telemetry => format!("telemetry/{}", ferry::TENANT),
                    Flow::Events => format!("event/{}", ferry::TENANT),
                },
                credit,
            },
            Sut::Mosquitto(_) | Sut::ActiveMq(_) => {
                let (user, password) = match self {
                    Sut::ActiveMq(_) => (peers::ACTIVEMQ_USER, peers::ACTIVEMQ_PASSWORD),
                    _ => (MOSQUITTO_APP, MOSQUITTO_APP_PASSWORD),
                };
                ReceiverSpec::Mqtt {
                    addr: self.mqtt_addr(),
                    login: Login {
                        client_id: "bench-subscriber".into(),
                        username: user.into(),
                        password: password.into(),
                        keep_alive_secs: 600,
                        // A persistent session: the brokers store QoS 1 messages only for those.
                        clean_session: qos == 0,
                    },
                    filter: match flow {
                        Flow::Telemetry => format!("t/{}/#", ferry::TENANT),
                        Flow::Events => format!("e/{}/#", ferry::TENANT),
                    },
                    qos,
                }
            }
        }
    }

    /// The last `lines` lines of every process's log, to explain a failure.
    pub fn log_tails(&self, lines: usize) -> String {
        let servers: Vec<&procs::Server> = match self {
            Sut::Ferry(p) => p.servers().to_vec(),
            Sut::Mosquitto(m) => vec![&m.server],
            Sut::ActiveMq(a) => vec![&a.server],
        };
        servers
            .iter()
            .map(|s| format!("--- {} log:\n{}", s.name, s.log_tail(lines)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Stops the processes (gracefully, then by force).
    pub fn stop(self) {
        match self {
            Sut::Ferry(mut p) => {
                p.adapter.stop(Duration::from_secs(3));
                p.router.stop(Duration::from_secs(3));
                p.registry.stop(Duration::from_secs(3));
            }
            Sut::Mosquitto(mut m) => m.server.stop(Duration::from_secs(3)),
            Sut::ActiveMq(mut a) => a.server.stop(Duration::from_secs(10)),
        }
    }
}

/// CPU times at one edge of a window.
#[derive(Debug, Clone)]
pub struct CpuSample {
    pub at: Instant,
    /// Per process of the system under test, in [`Sut::processes`] order.
    pub sut: Vec<std::time::Duration>,
    pub generator: std::time::Duration,
    pub machine: std::time::Duration,
}

impl CpuSample {
    pub fn take(pids: &[u32]) -> Self {
        Self {
            at: Instant::now(),
            sut: pids
                .iter()
                .map(|&p| cpu::process_cpu(p).unwrap_or_default())
                .collect(),
            generator: cpu::own_cpu().unwrap_or_default(),
            machine: cpu::machine_busy().unwrap_or_default(),
        }
    }
}

/// CPU used between two samples.
#[derive(Debug, Clone, Default)]
pub struct CpuUse {
    pub window: Duration,
    pub sut: Vec<Duration>,
    pub generator: Duration,
    /// Every other process on the machine: the background load.
    pub others: Duration,
}

impl CpuUse {
    pub fn between(a: &CpuSample, b: &CpuSample) -> Self {
        let sut: Vec<Duration> = a
            .sut
            .iter()
            .zip(&b.sut)
            .map(|(x, y)| y.saturating_sub(*x))
            .collect();
        let generator = b.generator.saturating_sub(a.generator);
        let ours: Duration = sut.iter().sum::<Duration>() + generator;
        Self {
            window: b.at.duration_since(a.at),
            others: b.machine.saturating_sub(a.machine).saturating_sub(ours),
            sut,
            generator,
        }
    }

    pub fn sut_total(&self) -> Duration {
        self.sut.iter().sum()
    }

    /// Share of one core.
    pub fn cores(&self, d: Duration) -> f64 {
        d.as_secs_f64() / self.window.as_secs_f64().max(1e-9)
    }

    /// `sut / generator / others` core percentages.
    pub fn cores_text(&self) -> String {
        format!(
            "{:.0} / {:.0} / {:.0}",
            self.cores(self.sut_total()) * 100.0,
            self.cores(self.generator) * 100.0,
            self.cores(self.others) * 100.0
        )
    }
}

/// The header every MQTT section starts its bullet list with.
pub(crate) fn preamble(args: &MqttArgs) -> String {
    let machine = crate::machine::Machine::detect();
    format!(
        "- Machine: {}\n- Commit: {}\n- Date: {}\n- {}.\n",
        machine.describe(),
        crate::machine::commit(),
        crate::machine::now(),
        args.pinning_text()
    )
}

/// Writes (or only prints) a section.
pub(crate) fn publish_section(args: &MqttArgs, name: &str, text: &str) -> anyhow::Result<()> {
    println!("{text}");
    if !args.no_report {
        crate::report::update_section(&args.report, name, text)?;
        eprintln!("updated section `{name}` of {}", args.report.display());
        // The summary at the top of the report is rebuilt from every section's summary lines.
        crate::summary::update_summary(&args.report)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_options_parse() {
        let d = MqttArgs::defaults();
        assert_eq!(d.publishers, 100);
        assert_eq!(d.scenarios.len(), 6);
        assert_eq!(d.b13_rate_base, None);
        assert_eq!(d.b13_duration, 30);
        let a = MqttArgs::from_options(["--scenarios", "b7,b1", "--duration", "3", "--no-pin"])
            .expect("parses");
        assert_eq!(a.scenarios, vec![MqttScenario::B7, MqttScenario::B1]);
        assert_eq!(a.duration, 3);
        assert!(a.common_options().ends_with("--no-pin"));
        assert!(MqttArgs::from_options(["--scenarios", "b9"]).is_err());
    }

    #[test]
    fn cpu_use_subtracts_ours_from_the_machine() {
        let t = Instant::now();
        let a = CpuSample {
            at: t,
            sut: vec![Duration::from_millis(100), Duration::from_millis(50)],
            generator: Duration::from_millis(10),
            machine: Duration::from_millis(1000),
        };
        let b = CpuSample {
            at: t + Duration::from_secs(2),
            sut: vec![Duration::from_millis(600), Duration::from_millis(150)],
            generator: Duration::from_millis(510),
            machine: Duration::from_millis(2400),
        };
        let u = CpuUse::between(&a, &b);
        assert_eq!(u.sut_total(), Duration::from_millis(600));
        assert_eq!(u.generator, Duration::from_millis(500));
        assert_eq!(u.others, Duration::from_millis(300));
        assert_eq!(u.cores_text(), "30 / 25 / 15");
    }
}
