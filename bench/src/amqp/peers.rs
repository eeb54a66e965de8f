//! The brokers of B4, started by the harness on loopback and pinned like Ferry: Ferry's router (with its
//! registry), RabbitMQ 3.10 with the AMQP 1.0 plugin (a node of its own in a temporary directory), and the
//! Qpid Proton C example broker (built from Debian's example source with gcc when missing).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tempfile::TempDir;

use super::client::Login;
use super::gen::{End, Mode, Spec};
use super::{AmqpArgs, Peer};
use crate::platform::{self, Binaries, Platform, Proc};

const RABBITMQ_SERVER: &str = "/usr/lib/rabbitmq/bin/rabbitmq-server";
const RABBITMQ_LIB: &str = "/usr/lib/rabbitmq/lib";
const PROTON_EXAMPLES: &str = "/usr/share/proton/examples/c";
const PROTON_BUILD: &str = "/var/tmp/ferry-bench-proton/broker";

/// A running broker.
pub struct Broker {
    peer: Peer,
    addr: std::net::SocketAddr,
    pub ready: Duration,
    ferry: Option<Platform>,
    proc: Option<Proc>,
    version: String,
    /// epmd processes that ran before RabbitMQ started (any other one is RabbitMQ's, stopped after it).
    epmd_before: Option<Vec<u32>>,
    _dir: Option<TempDir>,
    /// For the peers: the assertion their messages carry (one Ferry issued, when Ferry runs too).
    pub borrowed_assertion: Option<String>,
}

impl Broker {
    /// Starts `peer`; the error says why it could not be measured.
    pub async fn start(peer: Peer, args: &AmqpArgs, cpus: Option<&str>) -> Result<Self, String> {
        let started = match peer {
            Peer::Ferry => start_ferry(args, cpus).await,
            Peer::Rabbitmq => start_rabbitmq(cpus).await,
            Peer::Proton => start_proton(args, cpus).await,
        };
        started.map_err(|e| format!("{e:#}"))
    }

    /// The process that does the broker's work.
    pub fn pid(&self) -> u32 {
        match (&self.ferry, &self.proc) {
            (Some(p), _) => p.procs().get(1).map_or(0, Proc::pid),
            (None, Some(p)) => p.pid(),
            (None, None) => 0,
        }
    }

    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(p) = &mut self.ferry {
            p.check_alive()?;
        }
        if let Some(p) = &mut self.proc {
            p.check_alive()?;
        }
        Ok(())
    }

    /// A registration assertion, when this is Ferry.
    pub async fn assertion(&self) -> Option<String> {
        self.ferry.as_ref()?.assertion(0).await.ok()
    }

    /// A line for the report's notes.
    pub fn note(&self) -> Option<String> {
        (!self.version.is_empty()).then(|| {
            format!(
                "{}: {} (ready {:.1} s after start)",
                self.peer.label(),
                self.version,
                self.ready.as_secs_f64()
            )
        })
    }

    /// The generator's setup for one run (`tag` makes the queue fresh).
    pub async fn spec(&mut self, args: &AmqpArgs, mode: Mode, tag: &str) -> anyhow::Result<Spec> {
        let (sender_login, receiver_login, address, properties) = match self.peer {
            Peer::Ferry => {
                let p = self.ferry.as_ref().context("the Ferry platform")?;
                let assertion = p.assertion(0).await?;
                (
                    Login::Plain {
                        user: platform::ADAPTER_USER.into(),
                        password: p.secrets.adapter.clone(),
                    },
                    Login::Plain {
                        user: platform::APP_USER.into(),
                        password: platform::APP_PASSWORD.into(),
                    },
                    format!("telemetry/{}", platform::TENANT),
                    assertion,
                )
            }
            Peer::Rabbitmq | Peer::Proton => {
                // The same application properties as at Ferry, so every broker carries the same bytes.
                let assertion = self
                    .borrowed_assertion
                    .clone()
                    .unwrap_or_else(fake_assertion_sized_like_a_real_one);
                let (login, address) = if self.peer == Peer::Rabbitmq {
                    let guest = Login::Plain {
                        user: "guest".into(),
                        password: "guest".into(),
                    };
                    (guest, format!("/queue/b4-{tag}"))
                } else {
                    (Login::Anonymous, format!("b4-{tag}"))
                };
                (login.clone(), login, address, assertion)
            }
        };
        Ok(Spec {
            sender: End {
                addr: self.addr,
                login: sender_login,
                address: address.clone(),
            },
            receiver: End {
                addr: self.addr,
                login: receiver_login,
                address,
            },
            mode,
            credit: args.credit,
            body: args.body,
            properties: vec![
                ("device_id".into(), "d-0".into()),
                ("reg_assertion".into(), properties),
            ],
            warmup: Duration::from_secs(args.warmup),
            duration: Duration::from_secs(args.duration),
        })
    }
}

/// A JWT-shaped string of the length the registry's assertions have (the peers never check it).
fn fake_assertion_sized_like_a_real_one() -> String {
    format!(
        "eyJhbGciOiJFZERTQSJ9.{}.{}",
        "x".repeat(140),
        "y".repeat(86)
    )
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.ferry.take();
        self.proc.take();
        if let Some(before) = self.epmd_before.take() {
            for pid in platform::pids_named("epmd") {
                if !before.contains(&pid) {
                    // Started by our RabbitMQ node (epmd daemonizes, so it is no child of ours).
                    let _ = std::process::Command::new("kill")
                        .arg(pid.to_string())
                        .status();
                }
            }
        }
    }
}

async fn start_ferry(args: &AmqpArgs, cpus: Option<&str>) -> anyhow::Result<Broker> {
    let bins = Binaries {
        registry: args.bins.get("ferry-registry")?,
        router: args.bins.get("ferry-router")?,
        http_adapter: None,
        mqtt_adapter: None,
    };
    let began = std::time::Instant::now();
    let p = Platform::start(&bins, cpus, 1).await?;
    Ok(Broker {
        peer: Peer::Ferry,
        addr: p.router_addr,
        ready: began.elapsed(),
        ferry: Some(p),
        proc: None,
        version: String::new(),
        epmd_before: None,
        _dir: None,
        borrowed_assertion: None,
    })
}

async fn start_rabbitmq(cpus: Option<&str>) -> anyhow::Result<Broker> {
    let server = Path::new(RABBITMQ_SERVER);
    if !server.is_file() {
        bail!("{RABBITMQ_SERVER} not found (apt-get install -y rabbitmq-server)");
    }
    let version = std::fs::read_dir(RABBITMQ_LIB)
        .ok()
        .and_then(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_owned))
                .find_map(|n| n.strip_prefix("rabbitmq_server-").map(str::to_owned))
        })
        .map_or_else(
            || "RabbitMQ (version unknown)".to_owned(),
            |v| format!("RabbitMQ {v}"),
        );
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-rabbitmq-")
        .tempdir()
        .context("creating RabbitMQ's directory")?;
    let d = dir.path();
    std::fs::write(d.join("enabled_plugins"), "[rabbitmq_amqp1_0].\n")?;
    let amqp = platform::free_port()?;
    let dist = platform::free_port()?;
    let name = format!("ferrybench{}@localhost", std::process::id());
    let path = |p: &str| d.join(p).display().to_string();
    let env = vec![
        ("HOME".to_owned(), d.display().to_string()),
        ("RABBITMQ_NODENAME".into(), name),
        ("RABBITMQ_NODE_IP_ADDRESS".into(), "127.0.0.1".into()),
        ("RABBITMQ_NODE_PORT".into(), amqp.port().to_string()),
        ("RABBITMQ_DIST_PORT".into(), dist.port().to_string()),
        ("RABBITMQ_MNESIA_BASE".into(), path("mnesia")),
        ("RABBITMQ_LOG_BASE".into(), path("log")),
        (
            "RABBITMQ_ENABLED_PLUGINS_FILE".into(),
            path("enabled_plugins"),
        ),
        ("RABBITMQ_CONFIG_FILE".into(), path("rabbitmq")),
        ("RABBITMQ_PID_FILE".into(), path("pid")),
    ];
    let epmd_before = platform::pids_named("epmd");
    let mut proc = Proc::spawn(
        "rabbitmq-server",
        server,
        &[],
        &env,
        &["RABBITMQ_"],
        cpus,
        d.join("server.log"),
    )?;
    let mut broker = Broker {
        peer: Peer::Rabbitmq,
        addr: amqp,
        ready: Duration::ZERO,
        ferry: None,
        proc: None,
        version,
        epmd_before: Some(epmd_before),
        _dir: None,
        borrowed_assertion: None,
    };
    let ready = proc.wait_port(amqp, Duration::from_secs(120)).await;
    // The script runs the Erlang VM as its child: that is the process to charge and to stop.
    proc.main_pid = platform::children_of(proc.pid())
        .into_iter()
        .find(|(_, comm)| comm == "beam.smp")
        .map(|(pid, _)| pid);
    broker.proc = Some(proc);
    broker._dir = Some(dir);
    broker.ready = ready?;
    if broker.proc.as_ref().and_then(|p| p.main_pid).is_none() {
        bail!("RabbitMQ accepts connections but no beam.smp child of its script was found");
    }
    Ok(broker)
}

/// The Proton C example broker: `--proton-broker`, else the build in /var/tmp, else built now.
fn proton_binary(args: &AmqpArgs) -> anyhow::Result<PathBuf> {
    if let Some(p) = &args.proton_broker {
        return Ok(p.clone());
    }
    let out = PathBuf::from(PROTON_BUILD);
    if out.is_file() {
        return Ok(out);
    }
    let src = Path::new(PROTON_EXAMPLES).join("broker.c");
    if !src.is_file() {
        bail!(
            "{} not found (apt-get install -y libqpid-proton11-dev libqpid-proton11-dev-examples)",
            src.display()
        );
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent)?;
    }
    // Debian ships the split libraries without their -dev symlinks; libqpid-proton holds both.
    let mut last = String::new();
    for libs in [
        &["-lqpid-proton-core", "-lqpid-proton-proactor"][..],
        &["-lqpid-proton"][..],
    ] {
        let result = std::process::Command::new("gcc")
            .args(["-O2", "-o"])
            .arg(&out)
            .arg(&src)
            .arg(format!("-I{PROTON_EXAMPLES}"))
            .args(libs)
            .arg("-lpthread")
            .output()
            .context("running gcc")?;
        if result.status.success() {
            return Ok(out);
        }
        last = String::from_utf8_lossy(&result.stderr).into_owned();
    }
    bail!("building the Proton C example broker failed: {last}")
}

async fn start_proton(args: &AmqpArgs, cpus: Option<&str>) -> anyhow::Result<Broker> {
    let bin = proton_binary(args)?;
    let dir = tempfile::Builder::new()
        .prefix("ferry-bench-proton-")
        .tempdir()
        .context("creating the Proton broker's directory")?;
    let addr = platform::free_port()?;
    let mut proc = Proc::spawn(
        "proton broker",
        &bin,
        &["127.0.0.1".into(), addr.port().to_string()],
        &[],
        &[],
        cpus,
        dir.path().join("broker.log"),
    )?;
    let ready = proc.wait_port(addr, Duration::from_secs(20)).await?;
    let version = std::process::Command::new("dpkg-query")
        .args(["-W", "-f", "${Version}", "libqpid-proton11"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .map_or_else(
            || "examples/c/broker.c".to_owned(),
            |v| format!("examples/c/broker.c of libqpid-proton11 {v}"),
        );
    Ok(Broker {
        peer: Peer::Proton,
        addr,
        ready,
        ferry: None,
        proc: Some(proc),
        version,
        epmd_before: None,
        _dir: Some(dir),
        borrowed_assertion: None,
    })
}
