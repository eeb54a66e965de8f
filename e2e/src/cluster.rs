//! The cluster-mode deployment of the suite: `ferry up --cluster`'s parts (NATS nodes, registries,
//! routers, adapters) as one [`Cluster`] that stops them all when dropped.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{binary, free_port, Manager, Process};

/// `ferry up --cluster` on free ports with its own data directory: three NATS nodes, two routers, two
/// MQTT adapters, an HTTP adapter, and one registry (two on PostgreSQL when a URL is given), each a
/// process of its own (docs/cluster.md).
pub struct Cluster {
    pub process: Process,
    pub manager: Manager,
    /// The registries' base URLs (two with PostgreSQL).
    pub registries: Vec<String>,
    /// AMQP ports of router 1 and router 2.
    pub amqp: [u16; 2],
    /// MQTT ports of adapter 1 and adapter 2.
    pub mqtt: [u16; 2],
    pub http: u16,
    /// Process ids by part name (`router-1`, `mqtt-2`, `nats-0`, ...), as printed.
    pub pids: std::collections::HashMap<String, u32>,
    pub printed: Vec<String>,
    _dir: tempfile::TempDir,
}

impl Drop for Cluster {
    /// Stops `ferry up --cluster` as Ctrl-C would (it stops its parts), and kills whatever part is left:
    /// a SIGKILL of the parent alone would leave every part running. A failed story first shows what
    /// every part logged last (the processes' logs die with the temp dir).
    fn drop(&mut self) {
        self.show_logs_if_failed();
        let _ = Command::new("kill")
            .args(["-TERM", &self.process.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.process.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        for pid in self.pids.values() {
            let _ = Command::new("kill")
                .args(["-9", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Cluster {
    fn show_logs_if_failed(&self) {
        if !std::thread::panicking() {
            return;
        }
        let logs = self._dir.path().join("cluster").join("logs");
        let Ok(entries) = std::fs::read_dir(&logs) else {
            return;
        };
        let mut files: Vec<_> = entries.filter_map(Result::ok).map(|e| e.path()).collect();
        files.sort();
        for file in files {
            let text = std::fs::read_to_string(&file).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(30)..];
            eprintln!("--- {} (last {} lines)", file.display(), tail.len());
            for l in tail {
                eprintln!("{l}");
            }
        }
    }
}

impl std::ops::Deref for Cluster {
    type Target = Manager;

    fn deref(&self) -> &Manager {
        &self.manager
    }
}

/// A port `p` such that `p..p+n` were free a moment ago.
fn free_ports(n: u16) -> u16 {
    loop {
        let p = free_port();
        if p < u16::MAX - n
            && (1..n).all(|i| std::net::TcpListener::bind(("127.0.0.1", p + i)).is_ok())
        {
            return p;
        }
    }
}

impl Cluster {
    /// Runs `ferry up --cluster` (with `--postgres URL` when given) and waits for its endpoints.
    pub fn up(postgres: Option<&str>) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_up(postgres) {
                Ok(c) => return c,
                Err(log) if attempt < 3 && log.contains("in use") => attempt += 1,
                Err(log) => panic!("ferry up --cluster did not come up; its output:\n{log}"),
            }
        }
    }

    fn try_up(postgres: Option<&str>) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, amqp, mqtt, http) =
            (free_ports(2), free_ports(2), free_ports(2), free_port());
        let (nats, routes) = (free_ports(3), free_ports(3));
        let mut cmd = Command::new(binary("ferry"));
        cmd.args(["up", "--cluster"])
            .args(["--registry-port", &registry.to_string()])
            .args(["--amqp-port", &amqp.to_string()])
            .args(["--mqtt-port", &mqtt.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--nats-port", &nats.to_string()])
            .args(["--nats-cluster-port", &routes.to_string()])
            .args(["--mqtt-bind", "127.0.0.1", "--data-dir"])
            .arg(dir.path())
            .env_remove("FERRY_ADMIN_TOKEN")
            .env("FERRY_REGISTRY_BCRYPT_COST", "4")
            // Events a crashed router held come back after 5 s instead of 30 s.
            .env("FERRY_ROUTER_EVENT_REDELIVERY_SECS", "5");
        if let Some(url) = postgres {
            cmd.args(["--postgres", url]);
        }
        let mut process = Process::spawn("ferry up --cluster", cmd);
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match process.line(left) {
                Some(l) => {
                    let done = l.starts_with("Press Ctrl-C");
                    printed.push(l);
                    if done {
                        break;
                    }
                }
                None => {
                    process.kill();
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(process.log());
                }
            }
        }
        let pids = printed
            .iter()
            .find_map(|l| l.trim_start().strip_prefix("processes"))
            .map(|rest| {
                rest.split_whitespace()
                    .filter_map(|kv| kv.split_once('='))
                    .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        let registries = (0..if postgres.is_some() { 2 } else { 1 })
            .map(|i| format!("http://127.0.0.1:{}", registry + i))
            .collect::<Vec<_>>();
        Ok(Self {
            process,
            manager: Manager {
                registry: registries[0].clone(),
                data_dir: dir.path().to_path_buf(),
                token: None,
            },
            registries,
            amqp: [amqp, amqp + 1],
            mqtt: [mqtt, mqtt + 1],
            http,
            pids,
            printed,
            _dir: dir,
        })
    }

    /// The AMQP URL of router `i` (0 or 1) with an application user's credentials.
    pub fn amqp_url(&self, i: usize, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}", self.amqp[i])
    }

    /// The HTTP adapter's URL for `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    /// `kill -9` of a part (`router-1`, `nats-2`, `mqtt-1`, ...), as a crash would.
    pub fn kill9(&self, part: &str) {
        let pid = self
            .pids
            .get(part)
            .unwrap_or_else(|| panic!("no part {part} in {:?}", self.pids));
        let status = Command::new("kill")
            .args(["-9", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -9 {part} ({pid})");
    }
}
