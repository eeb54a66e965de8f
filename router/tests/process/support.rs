//! The router binary as a child process, and a raw TCP peer that speaks AMQP frames by hand.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::BytesMut;
use fe2o3_amqp_types::performatives::{Open, Performative};
use fe2o3_amqp_types::sasl::{SaslCode, SaslInit};
use ferry_router::codec::{self, Frame, SaslFrame};
use serde_amqp::primitives::{Binary, Symbol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::harness::{Platform, ADAPTER_PASSWORD, INTERNAL};

/// The `ferry-router` binary with no `FERRY_ROUTER_*` variable inherited from the test's environment.
pub fn router_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ferry-router"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("FERRY_ROUTER_") {
            cmd.env_remove(key);
        }
    }
    cmd.stdin(Stdio::null()).kill_on_drop(true);
    cmd
}

/// A `ferry-router` child process serving AMQP on `addr`, with its admin server on `admin`.
pub struct RouterProcess {
    child: tokio::process::Child,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    stderr: Arc<Mutex<String>>,
}

impl RouterProcess {
    /// Starts the binary against the platform's registry, with its event store in `data_dir`, and waits
    /// until it is ready (it has the registry's keys) and accepts TCP connections.
    pub async fn start(p: &Platform, data_dir: &Path) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], ferry_test_support::free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], ferry_test_support::free_port()));
        let mut child = router_command()
            .env("FERRY_ROUTER_BIND", addr.to_string())
            .env("FERRY_ROUTER_ADMIN_BIND", admin.to_string())
            .env("FERRY_ROUTER_DATA_DIR", data_dir)
            .env("FERRY_ROUTER_REGISTRY_URL", &p.registry_url)
            .env("FERRY_ROUTER_REGISTRY_TOKEN", INTERNAL)
            .env("FERRY_ROUTER_ADAPTER_PASSWORD", ADAPTER_PASSWORD)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("the router binary starts");
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let stderr = stderr.clone();
            tokio::spawn(async move {
                let mut chunk = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    stderr
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            });
        }
        let mut router = Self {
            child,
            addr,
            admin,
            stderr,
        };
        router.wait_ready().await;
        router
    }

    async fn wait_ready(&mut self) {
        let http = reqwest::Client::new();
        let url = format!("http://{}/ready", self.admin);
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the router exited with {status} before it was ready:\n{}",
                    self.stderr()
                );
            }
            let ready = http
                .get(&url)
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if ready && TcpStream::connect(self.addr).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the router is not ready after 15 s:\n{}", self.stderr());
    }

    /// What the process has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// SIGKILL, and reap it.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("kill -9 the router");
    }

    /// SIGTERM.
    pub async fn sigterm(&self) {
        let pid = self.child.id().expect("the router is still running");
        let status = tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .expect("kill runs");
        assert!(status.success(), "kill -TERM {pid}: {status}");
    }

    /// The exit status, if the process ends within `within`.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()
            .map(|r| r.expect("wait for the router"))
    }
}

/// A frame the router sent, owned.
#[derive(Debug)]
pub enum Got {
    Amqp(Option<Performative>),
    Sasl(SaslFrame),
}

/// How a read from the router ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// EOF or reset: the router closed the connection.
    Closed,
    /// Nothing more arrived within the time allowed, and the connection is still open.
    StillOpen,
}

/// A TCP peer that writes bytes and reads frames by hand.
pub struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// Writes `bytes`; the router may already have closed, so errors are returned, not raised.
    pub async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await
    }

    /// Reads more bytes into the buffer: `Ok(false)` on EOF or reset, `Err(())` on timeout.
    async fn fill(&mut self, within: Duration) -> Result<bool, ()> {
        match tokio::time::timeout(within, self.stream.read_buf(&mut self.buf)).await {
            Err(_) => Err(()),
            Ok(Ok(0)) => Ok(false),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e)) => {
                assert!(
                    matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe
                    ),
                    "unexpected read error {e}"
                );
                Ok(false)
            }
        }
    }

    /// The next 8-byte protocol header the router sends.
    pub async fn header(&mut self) -> [u8; 8] {
        while self.buf.len() < 8 {
            match self.fill(Duration::from_secs(5)).await {
                Ok(true) => {}
                Ok(false) => panic!("closed before a protocol header: {:02x?}", &self.buf[..]),
                Err(()) => panic!("no protocol header within 5 s: {:02x?}", &self.buf[..]),
            }
        }
        let h = self.buf.split_to(8);
        let mut header = [0u8; 8];
        header.copy_from_slice(&h);
        header
    }

    /// The next frame, or how the stream ended before one was complete.
    pub async fn frame(&mut self, within: Duration) -> Result<Got, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let decoded = codec::decode_frame(&self.buf, u32::MAX)
                .unwrap_or_else(|e| panic!("the router sent a bad frame: {e}"));
            if let Some((frame, n)) = decoded {
                let got = match frame {
                    Frame::Amqp { performative, .. } => Got::Amqp(performative),
                    Frame::Sasl(s) => Got::Sasl(s),
                };
                let _ = self.buf.split_to(n);
                return Ok(got);
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill(left).await {
                Ok(true) => {}
                Ok(false) => return Err(End::Closed),
                Err(()) => return Err(End::StillOpen),
            }
        }
    }

    /// Every byte until the router closes the connection (or `within` passes).
    pub async fn rest(&mut self, within: Duration) -> (Vec<u8>, End) {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.fill(left).await {
                Ok(true) => {}
                Ok(false) => return (self.buf.split().to_vec(), End::Closed),
                Err(()) => return (self.buf.split().to_vec(), End::StillOpen),
            }
        }
    }

    /// Every frame until the router closes the connection (or `within` passes).
    pub async fn frames_until_closed(&mut self, within: Duration) -> (Vec<Got>, End) {
        let deadline = tokio::time::Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.frame(left).await {
                Ok(f) => frames.push(f),
                Err(end) => return (frames, end),
            }
        }
    }

    /// Sends the SASL header and reads the router's header and mechanisms.
    pub async fn start_sasl(&mut self) {
        self.send(codec::SASL_HEADER).await.expect("send header");
        assert_eq!(&self.header().await, codec::SASL_HEADER);
        match self.frame(Duration::from_secs(5)).await {
            Ok(Got::Sasl(SaslFrame::Mechanisms(m))) => assert!(
                m.sasl_server_mechanisms
                    .0
                    .iter()
                    .any(|s| s.as_str() == "PLAIN"),
                "{m:?}"
            ),
            other => panic!("expected sasl-mechanisms, got {other:?}"),
        }
    }

    /// A peer whose socket takes only a few KiB before it must be read (a consumer that stops reading
    /// fills it at once).
    pub async fn connect_small_window(addr: SocketAddr) -> Self {
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket
            .set_recv_buffer_size(4096)
            .expect("small receive buffer");
        let stream = socket.connect(addr).await.expect("tcp connect");
        stream.set_nodelay(true).expect("nodelay");
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    /// A connection through SASL PLAIN as `user` and the AMQP header exchange, ready for Open.
    pub async fn login(addr: SocketAddr, user: &str, password: &str) -> Self {
        Self::connect(addr).await.log_in(user, password).await
    }

    /// This connection through SASL PLAIN as `user` and the AMQP header exchange, ready for Open.
    pub async fn log_in(self, user: &str, password: &str) -> Self {
        let mut raw = self;
        raw.start_sasl().await;
        let mut out = BytesMut::new();
        codec::encode_sasl(
            &SaslFrame::Init(SaslInit {
                mechanism: Symbol::from("PLAIN"),
                initial_response: Some(Binary::from(format!("\0{user}\0{password}").into_bytes())),
                hostname: None,
            }),
            &mut out,
        )
        .expect("encode sasl-init");
        raw.send(&out).await.expect("send sasl-init");
        match raw.frame(Duration::from_secs(5)).await {
            Ok(Got::Sasl(SaslFrame::Outcome(o))) => assert_eq!(o.code, SaslCode::Ok, "login"),
            other => panic!("expected sasl-outcome, got {other:?}"),
        }
        raw.send(codec::AMQP_HEADER).await.expect("send header");
        assert_eq!(&raw.header().await, codec::AMQP_HEADER);
        raw
    }

    /// Sends Open and reads the router's.
    pub async fn open(&mut self) {
        let open = Performative::Open(Open {
            container_id: "raw-test-peer".into(),
            hostname: None,
            max_frame_size: 65_536.into(),
            channel_max: 255.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        });
        let mut out = BytesMut::new();
        codec::encode_frame(0, &open, &[], &mut out).expect("encode open");
        self.send(&out).await.expect("send open");
        match self.frame(Duration::from_secs(5)).await {
            Ok(Got::Amqp(Some(Performative::Open(_)))) => {}
            other => panic!("expected open, got {other:?}"),
        }
    }
}

/// The error condition of the Close among `frames`, if there is one.
pub fn close_condition(frames: &[Got]) -> Option<Option<String>> {
    frames.iter().find_map(|f| match f {
        Got::Amqp(Some(Performative::Close(c))) => Some(c.error.as_ref().map(|e| {
            let encoded = serde_amqp::to_vec(&e.condition).expect("encode condition");
            serde_amqp::from_slice::<Symbol>(&encoded)
                .expect("a condition is a symbol")
                .0
        })),
        _ => None,
    })
}

/// A router in this process against the platform's registry, configured by `tweak`, once it is ready.
/// The platform's own router is left alone; the caller keeps the trigger (dropping it stops the router).
pub async fn router_in_process(
    p: &Platform,
    name: &str,
    tweak: impl FnOnce(&mut ferry_router::Config),
) -> (ferry_core::shutdown::Trigger, ferry_router::Started) {
    let mut config = ferry_router::Config {
        bind: "127.0.0.1:0".parse().expect("addr"),
        data_dir: p.data_dir.path().join(name),
        registry_url: p.registry_url.clone(),
        registry_token: INTERNAL.into(),
        adapter_password: ADAPTER_PASSWORD.into(),
        ..ferry_router::Config::default()
    };
    tweak(&mut config);
    let (trigger, shutdown) = ferry_core::shutdown::channel();
    let admin = ferry_core::admin::Admin::new();
    let started = ferry_router::start(config, admin.clone(), shutdown)
        .await
        .expect("router starts");
    for _ in 0..250 {
        if admin.not_ready().is_empty() {
            return (trigger, started);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("router not ready: {:?}", admin.not_ready());
}

/// Transfer frames on handle 0 of channel 0, one per id (delivery id and tag alike), each carrying
/// `message` whole.
pub fn transfers(ids: std::ops::Range<u32>, settled: bool, message: &[u8]) -> BytesMut {
    let mut out = BytesMut::new();
    for id in ids {
        let transfer = fe2o3_amqp_types::performatives::Transfer {
            handle: fe2o3_amqp_types::definitions::Handle(0),
            delivery_id: Some(id),
            delivery_tag: Some(Binary::from(id.to_be_bytes().to_vec())),
            message_format: Some(0),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        codec::encode_frame(0, &Performative::Transfer(transfer), message, &mut out)
            .expect("encode transfer");
    }
    out
}
