//! The harness of Ferry's end-to-end suite: it starts Ferry the way a user does (`ferry up`, or each
//! component's own binary with its flags and environment), manages it with the `ferry` CLI, and drives it
//! with clients no one here wrote: `mosquitto_pub`/`mosquitto_sub`, paho-mqtt, Qpid Proton, rhea and curl.
//!
//! The stories themselves are in `tests/stories/`; docs/e2e.md lists them. Every story gets its own data
//! directory and free ports, so they run in parallel.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`):
//! `cargo nextest run --workspace` (what `scripts/test` runs) builds them all. `FERRY_E2E_BIN_DIR=DIR`
//! runs the stories against the binaries in DIR instead (another build, e.g. an older release, to see
//! what it did; `wire_bytes` captured its golden bytes that way).

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub use ferry_test_support::{free_port, require_program, test_python};

pub mod amqp;
mod cluster;

pub use cluster::Cluster;

/// The binaries the suite runs, all built by `cargo build --workspace --bins`.
pub const BINARIES: [&str; 5] = [
    "ferry",
    "ferry-registry",
    "ferry-router",
    "ferry-mqtt-adapter",
    "ferry-http-adapter",
];

/// Names the directory the stories take Ferry's binaries from instead of the test executable's.
pub const BIN_DIR_VAR: &str = "FERRY_E2E_BIN_DIR";

/// A workspace binary from the test executable's target directory (`target/<profile>/NAME`), or from
/// `$FERRY_E2E_BIN_DIR` when that is set.
///
/// Panics, saying how to build it, when it is not there.
pub fn binary(name: &str) -> PathBuf {
    if let Some(dir) = std::env::var_os(BIN_DIR_VAR) {
        let path = Path::new(&dir).join(name);
        assert!(
            path.is_file(),
            "{BIN_DIR_VAR} is {}, which has no `{name}`",
            Path::new(&dir).display()
        );
        return path;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let path = profile_dir.join(name);
    if !path.is_file() {
        let release = if profile_dir.ends_with("release") {
            " --release"
        } else {
            ""
        };
        panic!(
            "the end-to-end suite needs the `{name}` binary at {}, which is missing: build every binary \
             with `cargo build --workspace --bins{release}` (or run the suite with `scripts/test` or \
             `scripts/test -E 'package(ferry-e2e)'`, which build the whole workspace)",
            path.display()
        );
    }
    path
}

/// The directory of the end-to-end clients (`e2e/clients`).
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clients")
}

/// A process whose output the test reads line by line; killed (SIGKILL) when dropped.
pub struct Process {
    name: String,
    child: Child,
    lines: Receiver<String>,
    log: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Process {
    /// Spawns `cmd` with stdout and stderr captured. Stdout lines go to [`Process::line`]; both go to
    /// the log shown when a wait fails.
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped stdout");
        let out_log = log.clone();
        let out = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut l) = out_log.lock() {
                    l.push(line.clone());
                }
                let _ = tx.send(line);
            }
        });
        let stderr = child.stderr.take().expect("piped stderr");
        let err_log = log.clone();
        let err = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Ok(mut l) = err_log.lock() {
                    l.push(format!("stderr: {line}"));
                }
            }
        });
        Self {
            name: name.to_owned(),
            child,
            lines,
            log,
            readers: vec![out, err],
        }
    }

    /// The next stdout line, or `None` after `timeout` (or when the process closed its stdout).
    pub fn line(&self, timeout: Duration) -> Option<String> {
        self.lines.recv_timeout(timeout).ok()
    }

    /// Everything the process printed so far (stdout and stderr), for failure messages.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.join("\n")).unwrap_or_default()
    }

    /// Waits for a stdout line containing `needle`; panics with the log after `timeout`.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line(left) {
                Some(l) if l.contains(needle) => return l,
                Some(_) => {}
                None => panic!(
                    "{} did not print {needle:?} within {timeout:?}; its output:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// The next stdout line that is a JSON object with `key`; panics with the log after `timeout`.
    pub fn expect(&self, key: &str, timeout: Duration) -> Value {
        self.try_expect(key, timeout).unwrap_or_else(|| {
            panic!(
                "{} did not print a {key:?} line within {timeout:?}; its output:\n{}",
                self.name,
                self.log()
            )
        })
    }

    /// The next stdout line that is a JSON object with `key`, or `None` after `timeout`.
    pub fn try_expect(&self, key: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = self.line(left)?;
            if let Ok(Value::Object(mut o)) = serde_json::from_str::<Value>(&line) {
                if let Some(v) = o.remove(key) {
                    return Some(v);
                }
            }
        }
    }

    /// The next stdout line that is JSON, whatever it says; panics with the log after `timeout`.
    pub fn next_json(&self, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.line(left).map(|l| serde_json::from_str::<Value>(&l)) {
                Some(Ok(v)) => return v,
                Some(Err(_)) => {}
                None => panic!(
                    "{} printed nothing within {timeout:?}; its output:\n{}",
                    self.name,
                    self.log()
                ),
            }
        }
    }

    /// The next `n` messages (`{"message": ...}` lines) a consumer prints.
    pub fn messages(&self, n: usize, timeout: Duration) -> Vec<Value> {
        (0..n).map(|_| self.expect("message", timeout)).collect()
    }

    /// Waits for the process to exit on its own (and for the last of its output); panics with the log
    /// after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                // Everything it printed is in the log once its pipes are drained.
                for reader in self.readers.drain(..) {
                    let _ = reader.join();
                }
                return status;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} still runs after {timeout:?}; its output:\n{}",
                    self.name,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The process id (for `kill`).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL, and reap it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The `ferry` CLI pointed at a registry: management as a user does it.
pub struct Manager {
    /// The registry's base URL, e.g. `http://127.0.0.1:40001`.
    pub registry: String,
    /// Where `ferry up` wrote the admin token (used when `token` is `None`).
    pub data_dir: PathBuf,
    /// The admin token, when given explicitly (separately started registry).
    pub token: Option<String>,
}

impl Manager {
    /// `ferry ARGS --registry-url .. (--token .. | --data-dir ..)`.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(binary("ferry"));
        cmd.args(args).args(["--registry-url", &self.registry]);
        match &self.token {
            Some(t) => cmd.args(["--token", t]),
            None => cmd.arg("--data-dir").arg(&self.data_dir),
        };
        cmd.env_remove("FERRY_ADMIN_TOKEN")
            .env_remove("FERRY_REGISTRY_URL")
            .output()
            .expect("run ferry")
    }

    /// A management subcommand that must succeed; returns the JSON it printed (`null` for nothing).
    pub fn manage(&self, args: &[&str]) -> Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ferry {args:?} failed: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let printed = text(&out.stdout);
        if printed.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&printed).expect("ferry prints JSON")
        }
    }

    /// A tenant.
    pub fn tenant(&self, tenant: &str) {
        self.manage(&["tenant", "create", tenant]);
    }

    /// A device, with its registration as JSON (e.g. `{"via": ["gw"]}`) or `{}`.
    pub fn device(&self, tenant: &str, device: &str, json: &str) {
        self.manage(&["device", "create", tenant, device, "--json", json]);
    }

    /// A hashed-password credential: the device logs in as `AUTH_ID@TENANT`.
    pub fn password(&self, tenant: &str, device: &str, auth_id: &str, password: &str) {
        self.manage(&[
            "credentials",
            "add-password",
            tenant,
            device,
            "--auth-id",
            auth_id,
            "--password",
            password,
        ]);
    }

    /// A device with a hashed-password credential.
    pub fn device_with_password(&self, tenant: &str, device: &str, auth_id: &str, password: &str) {
        self.device(tenant, device, "{}");
        self.password(tenant, device, auth_id, password);
    }

    /// An application user that may consume from and command the given tenants.
    pub fn application(&self, name: &str, password: &str, tenants: &[&str]) {
        let mut args = vec!["application", "put", name, "--password", password];
        for t in tenants {
            args.extend(["--tenant", t]);
        }
        self.manage(&args);
    }
}

/// `ferry up` on free ports with its own data directory, and the `ferry` CLI pointed at it (through
/// `Deref`: `ferry.tenant("t")`).
pub struct Ferry {
    pub process: Process,
    pub manager: Manager,
    pub amqp: u16,
    pub mqtt: u16,
    pub http: u16,
    /// What `ferry up` printed up to "Press Ctrl-C".
    pub printed: Vec<String>,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for Ferry {
    type Target = Manager;

    fn deref(&self) -> &Manager {
        &self.manager
    }
}

impl Ferry {
    /// Runs `ferry up` and waits until it printed its endpoints (every component is then listening).
    pub fn up() -> Self {
        Self::up_with(&[])
    }

    /// `ferry up` with more arguments (e.g. `--demo`).
    ///
    /// Ports are picked free a moment before `ferry up` binds them; when another test took one in between,
    /// it starts again on other ports.
    pub fn up_with(extra: &[&str]) -> Self {
        let mut attempt = 1;
        loop {
            match Self::try_up(extra) {
                Ok(ferry) => return ferry,
                Err(log) if attempt < 5 && log.contains("Address already in use") => attempt += 1,
                Err(log) => panic!("ferry up did not come up; its output:\n{log}"),
            }
        }
    }

    fn try_up(extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (registry, amqp, mqtt, http) = (free_port(), free_port(), free_port(), free_port());
        let mut cmd = Command::new(binary("ferry"));
        cmd.arg("up")
            .args(["--registry-port", &registry.to_string()])
            .args(["--amqp-port", &amqp.to_string()])
            .args(["--mqtt-port", &mqtt.to_string()])
            .args(["--http-port", &http.to_string()])
            .args(["--mqtt-bind", "127.0.0.1", "--data-dir"])
            .arg(dir.path())
            .args(extra)
            .env_remove("FERRY_ADMIN_TOKEN")
            // Passwords hashed at bcrypt's lowest cost: the stories log in often.
            .env("FERRY_REGISTRY_BCRYPT_COST", "4");
        let mut process = Process::spawn("ferry up", cmd);
        let mut printed = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
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
                    // Exited (or hung): its stderr may still be on its way into the log.
                    process.kill();
                    std::thread::sleep(Duration::from_millis(50));
                    return Err(process.log());
                }
            }
        }
        Ok(Self {
            process,
            manager: Manager {
                registry: format!("http://127.0.0.1:{registry}"),
                data_dir: dir.path().to_path_buf(),
                token: None,
            },
            amqp,
            mqtt,
            http,
            printed,
            _dir: dir,
        })
    }

    /// The router's AMQP URL with an application user's credentials.
    pub fn amqp_url(&self, user: &str, password: &str) -> String {
        format!("amqp://{user}:{password}@127.0.0.1:{}", self.amqp)
    }

    /// The HTTP adapter's URL for `path`.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }
}

/// A Qpid Proton application (`e2e/clients/proton_app.py MODE ARGS`).
pub fn proton_app(args: &[&str]) -> Process {
    let mut cmd = Command::new(test_python());
    cmd.arg(clients_dir().join("proton_app.py")).args(args);
    Process::spawn("proton_app.py", cmd)
}

/// A Qpid Proton application that verifies an `amqps://` server against the CA in `ca` (a PEM file)
/// instead of the system's CAs.
pub fn proton_app_trusting(ca: &Path, args: &[&str]) -> Process {
    let mut cmd = Command::new(test_python());
    cmd.arg(clients_dir().join("proton_app.py"))
        .args(args)
        .env("PROTON_TRUSTED_CA", ca);
    Process::spawn("proton_app.py", cmd)
}

/// A rhea application (`node e2e/clients/rhea_app.js MODE ARGS`).
pub fn rhea_app(args: &[&str]) -> Process {
    let dir = clients_dir();
    if !dir.join("node_modules/rhea/package.json").is_file() {
        panic!(
            "rhea is not installed in {}: run `npm ci --prefix e2e/clients` (scripts/test does)",
            dir.join("node_modules").display()
        );
    }
    let mut cmd = Command::new(require_program("node"));
    cmd.arg(dir.join("rhea_app.js")).args(args);
    Process::spawn("rhea_app.js", cmd)
}

/// A paho-mqtt device (`e2e/clients/paho_device.py MODE 127.0.0.1 PORT ARGS`).
pub fn paho_device(mode: &str, port: u16, args: &[&str]) -> Process {
    let mut cmd = Command::new(test_python());
    cmd.arg(clients_dir().join("paho_device.py"))
        .args([mode, "127.0.0.1", &port.to_string()])
        .args(args);
    Process::spawn("paho_device.py", cmd)
}

/// The hostile AMQP application user of the noisy-neighbour story
/// (`e2e/clients/amqp_flooder.py MODE 127.0.0.1 PORT ARGS`), its sockets bound to `source` (a loopback
/// address other than 127.0.0.1, so the router sees another host).
pub fn amqp_flooder(mode: &str, source: &str, port: u16, args: &[&str]) -> Process {
    let mut cmd = Command::new(test_python());
    cmd.arg(clients_dir().join("amqp_flooder.py"))
        .args([mode, "127.0.0.1", &port.to_string()])
        .args(args)
        .env("FLOOD_SOURCE", source);
    Process::spawn(&format!("amqp_flooder.py {mode}"), cmd)
}

/// The resident set size of process `pid` in KiB (`VmRSS` in /proc/PID/status); `None` once it is gone.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// The sum of the Prometheus samples named `name` that carry every one of `labels` (`("tenant", "A")`),
/// in the text of a `/metrics` answer; 0 when there are none.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            let set = rest.strip_prefix('{')?.strip_suffix('}')?;
            labels
                .iter()
                .all(|(k, v)| set.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A consumer that is attached: waits for its `attached` line.
pub fn attached(consumer: Process) -> Process {
    consumer.expect("attached", Duration::from_secs(10));
    consumer
}

/// `mosquitto_pub -h 127.0.0.1 -p PORT ARGS` (give `-u`, `-P`, `-t`, `-m`, `-q` ...).
pub fn mosquitto_pub(port: u16, args: &[&str]) -> Output {
    Command::new(require_program("mosquitto_pub"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .expect("run mosquitto_pub")
}

/// What curl saw of an HTTP exchange.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    /// The first header named `name` (lower case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `curl -s -i ARGS`, parsed into status, headers and body.
pub fn curl(args: &[&str]) -> HttpResponse {
    let out = Command::new(require_program("curl"))
        .args(["-s", "-i", "--max-time", "30"])
        .args(args)
        .output()
        .expect("run curl");
    let raw = text(&out.stdout);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or_else(|| {
        panic!(
            "curl {args:?} got no HTTP response (exit {:?}): {raw}{}",
            out.status.code(),
            text(&out.stderr)
        )
    });
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("curl {args:?}: no status line in {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// [`curl`] on a thread: for requests that wait (e.g. a device waiting for a command with `hono-ttd`).
pub fn curl_in_background(args: &[&str]) -> std::thread::JoinHandle<HttpResponse> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    std::thread::spawn(move || curl(&args.iter().map(String::as_str).collect::<Vec<_>>()))
}

/// Bytes as text, lossily.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Polls `http://127.0.0.1:PORT/ready` (a component's admin endpoint) until it answers 200.
pub fn wait_ready(name: &str, port: u16, process: &Process) {
    wait_http_ok(name, port, "/ready", Duration::from_secs(20), process);
}

/// Polls `http://127.0.0.1:PORT/PATH` until it answers 200; panics with the process's output after
/// `timeout`.
pub fn wait_http_ok(name: &str, port: u16, path: &str, timeout: Duration, process: &Process) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if http_get_status(port, path) == Some(200) {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "{name} did not answer 200 on {path} within {timeout:?}; its output:\n{}",
        process.log()
    );
}

fn http_get_status(port: u16, path: &str) -> Option<u16> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut answer = String::new();
    s.read_to_string(&mut answer).ok()?;
    answer.split_whitespace().nth(1)?.parse().ok()
}
