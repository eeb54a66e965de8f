//! `ferry-registry` as a child process: its own data directory, loopback port and tokens, pinned to the
//! server cores, stopped when dropped.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::{Method, StatusCode, Uri};
use tempfile::TempDir;

use crate::client::{Base, Conn};
use crate::pin;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The bearer tokens the registry is started with.
#[derive(Debug, Clone)]
pub struct Tokens {
    pub admin: String,
    pub internal: String,
}

/// A running registry.
pub struct RegistryProcess {
    child: Child,
    pub addr: SocketAddr,
    log: PathBuf,
    /// Removed (with the SQLite database) when the process is dropped.
    _data: TempDir,
}

impl RegistryProcess {
    /// Starts `bin` (pinned to `cpus` when given) on a free loopback port with SQLite in a fresh temporary
    /// directory, or on `database_url`; returns once `/ready` answers 200.
    pub async fn start(
        bin: &Path,
        cpus: Option<&str>,
        database_url: Option<&str>,
        tokens: &Tokens,
    ) -> anyhow::Result<Self> {
        let data = tempfile::Builder::new()
            .prefix("ferry-bench-registry-")
            .tempdir()
            .context("creating the registry's data directory")?;
        let addr = free_port()?;
        let log = data.path().join("registry.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = pin::command(cpus, bin);
        // Only what is set here configures the registry, whatever the caller's environment holds.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("FERRY_REGISTRY_") {
                cmd.env_remove(key);
            }
        }
        cmd.env("FERRY_REGISTRY_BIND", addr.to_string())
            .env("FERRY_REGISTRY_DATA_DIR", data.path().join("data"))
            .env("FERRY_REGISTRY_ADMIN_TOKEN", &tokens.admin)
            .env("FERRY_REGISTRY_INTERNAL_TOKEN", &tokens.internal)
            // Setup hashes 1,000 passwords; lookups never hash, so the cost does not touch the figures.
            .env("FERRY_REGISTRY_BCRYPT_COST", "4")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        if let Some(url) = database_url {
            cmd.env("FERRY_REGISTRY_DATABASE_URL", url);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (build it: cargo build --release -p ferry-registry)",
                bin.display()
            )
        })?;
        let mut me = Self {
            child,
            addr,
            log,
            _data: data,
        };
        me.wait_ready(tokens).await?;
        Ok(me)
    }

    /// The process whose CPU time is charged to the requests (taskset execs it, so the pid is the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Bytes the registry has logged so far (a log line per request would show here).
    pub fn log_bytes(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    async fn wait_ready(&mut self, tokens: &Tokens) -> anyhow::Result<()> {
        let base = Base::new(self.addr, &tokens.admin)?;
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the registry exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(mut conn) = Conn::open(self.addr).await {
                let req = base.request(Method::GET, Uri::from_static("/ready"), Bytes::new());
                if let Ok((StatusCode::OK, _)) = conn.fetch(req).await {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "the registry was not ready within {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

impl Drop for RegistryProcess {
    fn drop(&mut self) {
        // Our own child, by its pid; nothing in it needs a graceful end (the data directory goes too).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port that was free a moment ago (the registry binds it right after).
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?)
}
