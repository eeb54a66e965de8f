//! The fe2o3-amqp client as every AMQP scenario uses it: one connection per link, `TCP_NODELAY` set by
//! us (the library's `open(url)` never sets it: FE2O3-NOTES.md gap 7), and a consumer that counts what
//! it receives.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use fe2o3_amqp::connection::ConnectionHandle;
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::messaging::Body;
use fe2o3_amqp::types::primitives::Value;
use fe2o3_amqp::{Connection, Receiver, Session};
use tokio::task::JoinHandle;

/// How to log in.
#[derive(Debug, Clone)]
pub enum Login {
    Anonymous,
    Plain { user: String, password: String },
}

/// A connection with one session.
pub struct Client {
    pub conn: ConnectionHandle<()>,
    pub session: SessionHandle<()>,
}

impl Client {
    pub async fn open(addr: SocketAddr, login: &Login, container: &str) -> anyhow::Result<Self> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let profile = match login {
            Login::Anonymous => SaslProfile::Anonymous,
            Login::Plain { user, password } => SaslProfile::Plain {
                username: user.clone(),
                password: password.clone(),
            },
        };
        let mut conn = Connection::builder()
            .container_id(container.to_owned())
            .sasl_profile(profile)
            .open_with_stream(stream)
            .await
            .with_context(|| format!("AMQP open to {addr}"))?;
        let session = Session::begin(&mut conn).await.context("AMQP begin")?;
        Ok(Self { conn, session })
    }

    pub async fn close(mut self) {
        let _ = self.session.end().await;
        let _ = self.conn.close().await;
    }
}

/// What a [`Consumer`] has seen so far.
#[derive(Debug, Default)]
pub struct Tally {
    pub received: AtomicU64,
    pub errors: AtomicU64,
}

/// A receiver task that accepts and counts every message on `address` (auto-accept; credit refilled by
/// the library, `credit` at a time).
pub struct Consumer {
    pub tally: Arc<Tally>,
    task: JoinHandle<Option<String>>,
}

impl Consumer {
    /// Attaches and starts receiving; `on_message` sees each body (for latency stamps).
    pub async fn start<F>(
        client: &mut Client,
        address: &str,
        credit: u32,
        mut on_message: F,
    ) -> anyhow::Result<Self>
    where
        F: FnMut(&[u8], Instant) + Send + 'static,
    {
        let mut rx = Receiver::builder()
            .name(format!("bench-rx-{address}"))
            .source(address.to_owned())
            .credit_mode(CreditMode::Auto(credit))
            .auto_accept(true)
            .attach(&mut client.session)
            .await
            .with_context(|| format!("attaching a receiver to {address}"))?;
        let tally = Arc::new(Tally::default());
        let t = tally.clone();
        let task = tokio::spawn(async move {
            loop {
                match rx.recv::<Body<Value>>().await {
                    Ok(d) => {
                        let now = Instant::now();
                        if let Body::Data(batch) = d.body() {
                            if let Some(first) = batch.iter().next() {
                                on_message(&first.0, now);
                            }
                        }
                        t.received.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        t.errors.fetch_add(1, Ordering::Relaxed);
                        let _ = rx.close().await;
                        return Some(format!("receiver: {e}"));
                    }
                }
            }
        });
        Ok(Self { tally, task })
    }

    pub fn received(&self) -> u64 {
        self.tally.received.load(Ordering::Relaxed)
    }

    /// Waits until `expected` messages have arrived, or until none has arrived for `quiet` (a backlog
    /// still draining keeps the wait going); returns how many did.
    pub async fn wait_for(&self, expected: u64, quiet: std::time::Duration) -> u64 {
        let mut last = self.received();
        let mut progress = Instant::now();
        while last < expected && progress.elapsed() < quiet && !self.task.is_finished() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            let now = self.received();
            if now != last {
                last = now;
                progress = Instant::now();
            }
        }
        self.received()
    }

    /// Whether the receiver failed, and how.
    pub async fn stop(self) -> Option<String> {
        if self.task.is_finished() {
            return self.task.await.ok().flatten();
        }
        self.task.abort();
        None
    }
}
