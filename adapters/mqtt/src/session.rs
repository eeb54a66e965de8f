//! One device connection: CONNECT and authentication, then PUBLISHes to the router, keep-alive, and the
//! registry's change stream (a device that is disabled, deleted or whose credentials change is cut off).
//!
//! QoS 1 is Hono's "PUBACK only after the consumer accepted": each PUBLISH becomes a send to the router,
//! and the PUBACKs go out in the order the PUBLISHes came in, as their outcomes arrive
//! (`FuturesOrdered`), so one slow consumer decision never reorders acknowledgements.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use ferry_adapter_core::auth::AuthError;
use ferry_adapter_core::downstream::{DeviceMessage, MessageKind, SendOutcome};
use ferry_adapter_core::registry::AssertionOutcome;
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::connack::Refusal;
use crate::topic::{self, Endpoint, OnError};
use crate::wire::{self, Incoming, Outgoing, Version};
use crate::Shared;

/// The adapter type name of HONO-CONTRACT §0.
pub const ADAPTER_TYPE: &str = ferry_core::hono::adapter_type::MQTT;

/// Application properties the adapter sets itself; a property bag cannot supply them.
const RESERVED_PROPERTIES: &[&str] = &[
    ferry_core::hono::app_property::DEVICE_ID,
    ferry_core::hono::app_property::TENANT_ID,
    ferry_core::hono::app_property::REG_ASSERTION,
    ferry_core::hono::app_property::ORIG_ADAPTER,
    ferry_core::hono::app_property::ORIG_ADDRESS,
    ferry_core::hono::app_property::QOS,
    ferry_core::hono::app_property::TTD,
    ferry_core::hono::app_property::GATEWAY_ID,
];

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Wire(#[from] wire::WireError),
    #[error("refused: {0:?}")]
    Refused(Refusal),
    #[error("CONNECT not received in time")]
    ConnectTimeout,
    #[error("keep-alive expired")]
    KeepAlive,
    #[error("{0}")]
    Closed(&'static str),
}

struct Authenticated {
    tenant: TenantId,
    device: DeviceId,
}

/// What a PUBLISH turned into, awaiting its outcome.
type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = (u16, OnError, Result<(), u16>)> + Send>>;

async fn fill<IO: AsyncRead + Unpin>(io: &mut IO, buf: &mut BytesMut) -> Result<(), SessionError> {
    if io.read_buf(buf).await? == 0 {
        return Err(SessionError::Closed("peer closed the connection"));
    }
    Ok(())
}

/// Serves one connection until it ends.
pub async fn serve<IO>(
    mut io: IO,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(4096);
    let max_packet = shared.config.max_payload_bytes + 1024;
    let connect_timeout = Duration::from_secs(shared.config.connect_timeout_secs);
    let (version, connect) = tokio::time::timeout(connect_timeout, async {
        let version = loop {
            if let Some(v) = wire::connect_version(&buf)? {
                break v;
            }
            fill(&mut io, &mut buf).await?;
        };
        loop {
            if let Some(c) = wire::read_connect(version, &mut buf, max_packet)? {
                return Ok::<_, SessionError>((version, c));
            }
            fill(&mut io, &mut buf).await?;
        }
    })
    .await
    .map_err(|_| SessionError::ConnectTimeout)??;

    let mut out = BytesMut::with_capacity(1024);
    let who = match authenticate(&shared, &connect).await {
        Ok(who) => who,
        Err(refusal) => {
            shared.metrics.attempt(refusal_outcome(refusal));
            let code = match version {
                Version::V311 => refusal.v311_code(),
                Version::V5 => refusal.v5_reason(),
            };
            wire::write(version, &Outgoing::ConnAck { code }, &mut out)?;
            io.write_all(&out).await?;
            return Err(SessionError::Refused(refusal));
        }
    };
    shared.metrics.attempt("succeeded");
    let gauge = shared.metrics.connected(&who.tenant);
    gauge.inc();
    let result = Session {
        shared: shared.clone(),
        version,
        who,
        keep_alive: Duration::from_secs(u64::from(connect.keep_alive)),
        client_id: connect.client_id,
        peer,
        out,
    }
    .run(&mut io, &mut buf, max_packet)
    .await;
    gauge.dec();
    shared.connections.fetch_sub(1, Ordering::AcqRel);
    result
}

fn refusal_outcome(r: Refusal) -> &'static str {
    match r {
        Refusal::BadCredentials => "unauthorized",
        Refusal::AdapterFull => "adapter-connections-exceeded",
        Refusal::TenantLimit => "tenant-connections-exceeded",
        Refusal::RegistryUnavailable => "unavailable",
        Refusal::NotAuthorized => "adapter-disabled",
        Refusal::Other => "unknown",
    }
}

/// CONNECT checks of HONO-CONTRACT §2.2: credentials, tenant and adapter enabled, device registered and
/// enabled, connection limits.
async fn authenticate(shared: &Shared, connect: &wire::Connect) -> Result<Authenticated, Refusal> {
    let (Some(user), Some(password)) = (&connect.username, &connect.password) else {
        return Err(Refusal::BadCredentials);
    };
    let device = match shared.auth.authenticate_password(user, password).await {
        Ok(d) => d,
        Err(AuthError::BadCredentials | AuthError::UnknownTenant) => {
            return Err(Refusal::BadCredentials)
        }
        Err(AuthError::TenantDisabled) => return Err(Refusal::NotAuthorized),
        Err(AuthError::Unavailable(_)) => return Err(Refusal::RegistryUnavailable),
    };
    let tenant = match shared.registry.tenant(&device.tenant).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(Refusal::BadCredentials),
        Err(_) => return Err(Refusal::RegistryUnavailable),
    };
    if !tenant.is_enabled() || !tenant.is_adapter_enabled(ADAPTER_TYPE) {
        return Err(Refusal::NotAuthorized);
    }
    match shared
        .registry
        .assertion(&device.tenant, &device.device_id, None)
        .await
    {
        Ok(AssertionOutcome::Granted(_)) => {}
        Ok(_) => return Err(Refusal::NotAuthorized),
        Err(_) => return Err(Refusal::RegistryUnavailable),
    }
    let max = shared.config.max_connections;
    let now = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
    if max > 0 && now > max {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return Err(Refusal::AdapterFull);
    }
    if let Some(limit) = tenant.max_connections() {
        if shared.metrics.connected(&device.tenant).get()
            >= i64::try_from(limit).unwrap_or(i64::MAX)
        {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TenantLimit);
        }
    }
    Ok(Authenticated {
        tenant: device.tenant,
        device: device.device_id,
    })
}

struct Session {
    shared: Arc<Shared>,
    version: Version,
    who: Authenticated,
    keep_alive: Duration,
    client_id: String,
    peer: SocketAddr,
    out: BytesMut,
}

impl Session {
    fn write(&mut self, packet: &Outgoing<'_>) -> Result<(), SessionError> {
        wire::write(self.version, packet, &mut self.out)?;
        Ok(())
    }

    async fn run<IO: AsyncRead + AsyncWrite + Unpin>(
        mut self,
        io: &mut IO,
        buf: &mut BytesMut,
        max_packet: usize,
    ) -> Result<(), SessionError> {
        self.write(&Outgoing::ConnAck { code: 0 })?;
        io.write_all(&self.out).await?;
        self.out.clear();
        tracing::debug!(peer = %self.peer, client = %self.client_id, tenant = %self.who.tenant, device = %self.who.device, "device connected");

        let mut changes = self.shared.registry.subscribe();
        let mut pending: FuturesOrdered<Pending> = FuturesOrdered::new();
        // MQTT: the server closes a connection silent for one and a half keep-alive periods.
        let idle = if self.keep_alive.is_zero() {
            Duration::from_secs(24 * 3600)
        } else {
            self.keep_alive * 3 / 2
        };
        let stop = self.shared.shutdown.clone().wait();
        tokio::pin!(stop);
        let mut closing: Option<SessionError> = None;
        loop {
            // Handle every complete packet already buffered.
            while closing.is_none() {
                match wire::read(self.version, buf, max_packet) {
                    Ok(Some(p)) => {
                        if let Err(e) = self.on_packet(p, &mut pending) {
                            closing = Some(e);
                        }
                    }
                    Ok(None) => break,
                    Err(wire::WireError::TooLarge(_)) => {
                        // HONO-CONTRACT §2.2: oversized payload: discard and disconnect.
                        closing = Some(SessionError::Closed("payload too large"));
                    }
                    Err(e) => closing = Some(e.into()),
                }
            }
            if !self.out.is_empty() {
                io.write_all(&self.out).await?;
                self.out.clear();
            }
            if let Some(e) = closing {
                if self.version == Version::V5 {
                    let reason = match e {
                        SessionError::Closed("payload too large") => 0x95,
                        SessionError::KeepAlive => 0x8D,
                        _ => 0x80,
                    };
                    self.out.clear();
                    if wire::write(
                        self.version,
                        &Outgoing::Disconnect { reason },
                        &mut self.out,
                    )
                    .is_ok()
                    {
                        let _ = io.write_all(&self.out).await;
                    }
                }
                return match e {
                    SessionError::Closed("client disconnected") => Ok(()),
                    e => Err(e),
                };
            }
            tokio::select! {
                r = tokio::time::timeout(idle, io.read_buf(buf)) => match r {
                    Err(_) => closing = Some(SessionError::KeepAlive),
                    Ok(Ok(0)) => return Ok(()),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => return Err(e.into()),
                },
                Some((pkid, on_error, result)) = pending.next(), if !pending.is_empty() => {
                    if let Err(e) = self.on_outcome(pkid, on_error, result) {
                        closing = Some(e);
                    }
                }
                change = changes.recv() => {
                    let relevant = match &change {
                        Ok(c) => c.affects(&self.who.tenant, &self.who.device),
                        Err(_) => true,
                    };
                    if relevant && !self.still_allowed().await {
                        closing = Some(SessionError::Closed("device no longer allowed by the registry"));
                    }
                }
                () = &mut stop => closing = Some(SessionError::Closed("adapter shutting down")),
            }
        }
    }

    /// After a registry change: is the device still enabled, its tenant and this adapter still enabled?
    async fn still_allowed(&self) -> bool {
        let tenant_ok = matches!(
            self.shared.registry.tenant(&self.who.tenant).await,
            Ok(Some(t)) if t.is_enabled() && t.is_adapter_enabled(ADAPTER_TYPE)
        );
        tenant_ok
            && matches!(
                self.shared
                    .registry
                    .assertion(&self.who.tenant, &self.who.device, None)
                    .await,
                Ok(AssertionOutcome::Granted(_))
            )
    }

    fn on_packet(
        &mut self,
        packet: Incoming,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<(), SessionError> {
        match packet {
            Incoming::Publish {
                topic,
                qos,
                pkid,
                payload,
                content_type,
                ..
            } => self.on_publish(&topic, qos, pkid, payload, content_type, pending),
            Incoming::Subscribe { pkid, filters } => {
                // Command and error subscriptions arrive with the command path (issue #4, not done yet):
                // refuse them honestly so the device knows.
                let granted: Vec<Option<u8>> = filters.iter().map(|_| None).collect();
                self.write(&Outgoing::SubAck {
                    pkid,
                    granted: &granted,
                })
            }
            Incoming::Unsubscribe { pkid, filters } => self.write(&Outgoing::UnsubAck {
                pkid,
                count: filters.len(),
            }),
            Incoming::PingReq => self.write(&Outgoing::PingResp),
            Incoming::Disconnect => Err(SessionError::Closed("client disconnected")),
            Incoming::PubAck { .. } | Incoming::Other => Ok(()),
        }
    }

    fn on_publish(
        &mut self,
        topic_bytes: &[u8],
        qos: u8,
        pkid: u16,
        payload: Bytes,
        content_type: Option<String>,
        pending: &mut FuturesOrdered<Pending>,
    ) -> Result<(), SessionError> {
        let topic_str = std::str::from_utf8(topic_bytes)
            .map_err(|_| SessionError::Closed("topic is not UTF-8"))?;
        let parsed = topic::parse_publish(topic_str)
            .map_err(|_| SessionError::Closed("not a Hono topic"))?;
        if qos > 1 {
            return Err(SessionError::Closed("QoS 2 is not supported"));
        }
        let kind = match parsed.endpoint {
            Endpoint::Telemetry => MessageKind::Telemetry,
            Endpoint::Event if qos == 1 => MessageKind::Event,
            Endpoint::Event => return Err(SessionError::Closed("events need QoS 1")),
            Endpoint::CommandResponse { .. } => {
                return Err(SessionError::Closed(
                    "command responses are not supported yet",
                ))
            }
        };
        if payload.len() > self.shared.config.max_payload_bytes {
            return Err(SessionError::Closed("payload too large"));
        }
        if parsed.tenant.is_some_and(|t| t != self.who.tenant.as_str()) {
            return Err(SessionError::Closed("another tenant's topic"));
        }
        // A gateway publishing for a device names it; the registry decides whether it may.
        let device = match parsed.device {
            Some(d) if d != self.who.device.as_str() => {
                DeviceId::new(d).map_err(|_| SessionError::Closed("invalid device id"))?
            }
            _ => self.who.device.clone(),
        };
        let gateway = (device != self.who.device).then(|| self.who.device.clone());
        let content_type = parsed
            .bag
            .content_type
            .as_deref()
            .map(str::to_owned)
            .or(content_type);
        let ttl_ms = parsed
            .bag
            .ttl_secs
            .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX));
        let on_error = parsed.bag.on_error;
        let extra_properties: Vec<(String, String)> = parsed
            .bag
            .extra
            .iter()
            // A bag entry never overrides what the adapter itself asserts about the message.
            .filter(|(k, _)| !RESERVED_PROPERTIES.contains(&k.as_ref()))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let tenant = self.who.tenant.clone();
        let shared = self.shared.clone();
        let orig_address = topic_str.to_owned();
        let size = payload.len();
        let send = async move {
            let assertion = match shared
                .registry
                .assertion(&tenant, &device, gateway.as_ref())
                .await
            {
                Ok(AssertionOutcome::Granted(a)) => a,
                Ok(AssertionOutcome::NotFound) => return Err(404),
                Ok(AssertionOutcome::Forbidden) => return Err(403),
                Err(_) => return Err(503),
            };
            let msg = DeviceMessage {
                kind,
                tenant: tenant.clone(),
                device_id: device,
                qos,
                content_type,
                payload,
                assertion: assertion.token.clone(),
                orig_adapter: ADAPTER_TYPE,
                orig_address,
                ttl_ms,
                ttd: None,
                extra_properties,
            };
            let result = match shared.downstream.send(msg).await {
                Ok(SendOutcome::Accepted) => Ok(()),
                Ok(_) | Err(_) => Err(503),
            };
            shared
                .metrics
                .telemetry(&tenant, kind, qos, result.is_ok(), size);
            result
        };
        if qos == 0 {
            // Fire and forget: the outcome only counts in metrics.
            tokio::spawn(send);
            return Ok(());
        }
        pending.push_back(Box::pin(async move { (pkid, on_error, send.await) }));
        Ok(())
    }

    /// A QoS 1 PUBLISH's outcome: PUBACK when accepted; otherwise HONO-CONTRACT §2.2's `on-error`.
    fn on_outcome(
        &mut self,
        pkid: u16,
        on_error: OnError,
        result: Result<(), u16>,
    ) -> Result<(), SessionError> {
        match (result, on_error) {
            (Ok(()), _) | (Err(_), OnError::Ignore) => {
                self.write(&Outgoing::PubAck { pkid, reason: 0 })
            }
            (Err(_), OnError::SkipAck) => Ok(()),
            (Err(404 | 403), _) => Err(SessionError::Closed("device not allowed to publish")),
            (Err(_), OnError::Default | OnError::Disconnect) => {
                Err(SessionError::Closed("message not accepted downstream"))
            }
        }
    }
}
