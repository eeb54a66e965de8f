//! The device-message pipeline both adapters run (HONO-CONTRACT §2.1, §2.2, §5): tenant and adapter
//! checks → registration assertion → the tenant's data volume → build the AMQP message → send to the
//! router → [`Outcome`]. The adapters keep only what their protocol decides: how a device authenticated,
//! how its topic or URI names the subject, and how an [`Outcome`] looks on their wire (MQTT: PUBACK,
//! reason code, error topic or disconnect; HTTP: a status code), each in one function.

use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use ferry_core::ids::{DeviceId, TenantId};

use crate::auth::{AuthError, Device};
use crate::downstream::{
    CommandLink, CommandResponse, DeviceMessage, Downstream, Handed, MessageKind, PropertyValue,
    SendOutcome, RESERVED_PROPERTIES,
};
use crate::limits::{TenantVolume, VolumeMeter};
use crate::metrics::{AdapterMetrics, Status, TenantTally, Ttd};
use crate::registry::{Assertion, AssertionOutcome, RegistryClient, TenantInfo, TtlLimit};

/// What became of a device's message or command response: `Ok` the router took it (accepted by a
/// consumer, or written pre-settled for QoS 0), or why not.
pub type Outcome = Result<(), Refused>;

/// Why a device's message or command response did not go through. Denials (401/403/404) stay apart
/// from the adapter's own trouble (503) and from the tenant's quota (429).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// An unauthenticated device for a tenant that is unknown or wants its devices to authenticate
    /// (the two look alike, so tenants cannot be probed).
    Unauthorized,
    /// The tenant is disabled.
    TenantDisabled,
    /// The tenant does not use this adapter.
    AdapterDisabled,
    /// A gateway that may not act for the device.
    GatewayForbidden,
    /// The device (or, for an authenticated device, its tenant) is unknown or disabled.
    NotFound,
    /// The tenant's data volume is used up.
    QuotaExceeded,
    /// The registry could not be asked.
    RegistryUnavailable,
    /// The device asked to wait for a command, and no command subscription could be made.
    CommandsUnavailable,
    /// No consumer accepted the message.
    NoConsumer,
    /// No application accepted the command response.
    NoResponseReceiver,
}

impl Refused {
    /// Hono's error code (HONO-CONTRACT §2.2 error topic, HTTP status).
    pub fn code(self) -> u16 {
        match self {
            Self::Unauthorized => 401,
            Self::TenantDisabled | Self::AdapterDisabled | Self::GatewayForbidden => 403,
            Self::NotFound => 404,
            Self::QuotaExceeded => 429,
            Self::RegistryUnavailable
            | Self::CommandsUnavailable
            | Self::NoConsumer
            | Self::NoResponseReceiver => 503,
        }
    }

    /// Whether the device was denied (as opposed to the message failing for the tenant's quota or the
    /// adapter's own trouble).
    pub fn is_denied(self) -> bool {
        matches!(
            self,
            Self::Unauthorized
                | Self::TenantDisabled
                | Self::AdapterDisabled
                | Self::GatewayForbidden
                | Self::NotFound
        )
    }
}

/// How the pipeline learns the device's tenant.
#[derive(Debug, Clone)]
pub enum TenantCheck {
    /// Already looked up and checked by the adapter (HTTP, before the body is read).
    Checked(Arc<TenantInfo>),
    /// An authenticated device (MQTT): its tenant was checked at CONNECT and the registry's change
    /// stream ends the session when that changes; a tenant gone since is [`Refused::NotFound`].
    /// `volume` is the tenant's data volume count when the session holds it already.
    Authenticated(Option<Arc<TenantVolume>>),
    /// An unauthenticated device: the tenant must exist and be enabled, use this adapter, and not
    /// require authentication for it (HONO-CONTRACT §5 `device-authentication-required`).
    Unauthenticated,
}

/// The device, and the gateway when the authenticated device acts for another one.
#[derive(Debug, Clone)]
pub struct Subject {
    /// The device's tenant.
    pub tenant: TenantId,
    /// The device the message is from.
    pub device: DeviceId,
    /// The gateway sending for the device, if it is not the device itself.
    pub gateway: Option<DeviceId>,
}

/// A device's telemetry message or event, as its protocol delivered it.
#[derive(Debug)]
pub struct Upload {
    /// Telemetry or event.
    pub kind: MessageKind,
    /// 0 (pre-settled) or 1 (the router's outcome is awaited).
    pub qos: u8,
    /// The content type the device gave, if any.
    pub content_type: Option<String>,
    /// The message body.
    pub payload: Bytes,
    /// The topic or URI path (`orig_address`).
    pub orig_address: String,
    /// The TTL the device asked for, before defaults and the tenant's limit.
    pub ttl_secs: Option<u64>,
    /// Application properties from the device (a property bag); reserved names are dropped.
    pub extra_properties: Vec<(String, PropertyValue)>,
    /// Tell the router that the gateway is the device's last-known one (MQTT, a gateway's message).
    pub tell_last_gateway: bool,
}

/// A device's command response.
#[derive(Debug)]
pub struct Response {
    /// `command_response/TENANT/REPLY`.
    pub reply_to: String,
    /// The command's correlation id, which the response carries back.
    pub correlation_id: String,
    /// The device's status code for the command.
    pub status: u16,
    /// The content type the device gave, if any.
    pub content_type: Option<String>,
    /// The response body.
    pub payload: Bytes,
    /// Whether the response counts against the tenant's data volume (HTTP's does; MQTT's has not).
    pub metered: bool,
}

/// What [`Pipeline::forward_now`] did with a message.
#[derive(Debug)]
pub enum Now {
    /// QoS 0 telemetry handed to the router's link; its outcome is counted there.
    Gone,
    /// Refused before it left (counted); QoS 0's refusals are heard of only on an error topic.
    Refused(Refused),
    /// A QoS 1 message on its way: resolves to its outcome, counted then.
    Waiting(Waiting),
}

/// A QoS 1 message handed to the router, resolving to its [`Outcome`] (and counting it) once the router
/// settles it: a reply channel and a counter, where a future of the whole send would be a large box
/// per message.
#[derive(Debug)]
pub struct Waiting {
    handed: Handed,
    tally: Arc<TenantTally>,
    kind: MessageKind,
    size: usize,
}

impl Waiting {
    /// A QoS 1 message of `kind` waiting for `handed` (for tests of what holds [`Waiting`]s; the pipeline
    /// makes them in [`Pipeline::forward_now`]).
    #[doc(hidden)]
    pub fn new(handed: Handed, tally: Arc<TenantTally>, kind: MessageKind, size: usize) -> Self {
        Self {
            handed,
            tally,
            kind,
            size,
        }
    }
}

impl Future for Waiting {
    type Output = Outcome;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Outcome> {
        let sent = std::task::ready!(std::pin::Pin::new(&mut self.handed).poll(cx));
        let (tally, kind, size) = (&self.tally, self.kind, self.size);
        std::task::Poll::Ready(match sent {
            Ok(o) if o.is_accepted() => {
                tally.add(kind, 1, Status::Forwarded, size);
                Ok(())
            }
            other => {
                tracing::debug!(?other, "message not accepted downstream");
                tally.add(kind, 1, Status::Undeliverable, size);
                Err(Refused::NoConsumer)
            }
        })
    }
}

/// What steps 1 and 2 found: the tenant, its data volume count when known, the device's assertion.
type Checked = (Arc<TenantInfo>, Option<Arc<TenantVolume>>, Arc<Assertion>);

/// What the pipeline works with: one adapter's registry client, router connection and counters.
#[derive(Clone, Copy)]
pub struct Pipeline<'a> {
    /// The adapter type name of HONO-CONTRACT §0 (`hono-mqtt`, `hono-http`).
    pub adapter: &'static str,
    /// Tenants and registration assertions.
    pub registry: &'a RegistryClient,
    /// The router connection messages leave on.
    pub downstream: &'a Downstream,
    /// This instance's data volume counts.
    pub volume: &'a VolumeMeter,
    /// Hono's metrics, labelled with this adapter.
    pub metrics: &'a AdapterMetrics,
    /// Where `set-last-gw` goes; `None` for an adapter without gateways' command subscriptions.
    pub command_link: Option<&'a CommandLink>,
}

impl std::fmt::Debug for Pipeline<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("adapter", &self.adapter)
            .finish_non_exhaustive()
    }
}

impl Pipeline<'_> {
    /// Runs a telemetry message or event through every step; `before_send` runs once the message is
    /// admitted and before it leaves, and may give it a `ttd` and make something for the caller (`W`) (HTTP subscribes for commands there, so
    /// that an application that reacts to the `ttd` at once finds the device reachable).
    ///
    /// Metrics: a refusal by the data volume counts as `unprocessable`, a failed send as
    /// `undeliverable`, a forwarded message without `ttd` as `forwarded`; a forwarded message with a
    /// `ttd` is the caller's to count once the wait is over.
    pub async fn forward<W, F, Fut>(
        &self,
        check: TenantCheck,
        subject: Subject,
        upload: Upload,
        before_send: F,
    ) -> Result<W, Refused>
    where
        F: FnOnce(&TenantInfo) -> Fut,
        Fut: Future<Output = Result<(Option<i32>, W), Refused>>,
    {
        // The caches answer nearly every message; the registry's round trip (a large future) is boxed so
        // that the common path's future stays small (it is moved into a box per message).
        let (info, volume, assertion) = match self.check_cached(&check, &subject) {
            Some(checked) => checked?,
            None => Box::pin(self.check(check, &subject)).await?,
        };
        let Subject {
            tenant,
            device,
            gateway,
        } = subject;
        if let (Some(gateway), Some(link), true) =
            (&gateway, self.command_link, upload.tell_last_gateway)
        {
            link.set_last_gateway(&tenant, &device, gateway);
        }
        let (kind, qos, size) = (upload.kind, upload.qos, upload.payload.len());
        if !self.admit(&tenant, &info, volume, size) {
            self.metrics
                .telemetry(&tenant, kind, qos, Status::Unprocessable, Ttd::None, size);
            return Err(Refused::QuotaExceeded);
        }
        // Shed at the edge: QoS 0 whose link has had no credit for a while goes no further (nothing is
        // encoded or queued), counted as undeliverable like a message the router could not take.
        if kind == MessageKind::Telemetry && qos == 0 && self.downstream.sheds_qos0(&tenant) {
            self.metrics
                .telemetry(&tenant, kind, qos, Status::Undeliverable, Ttd::None, size);
            return Err(Refused::NoConsumer);
        }
        let (ttd, waiting) = before_send(&info).await?;
        let msg = self.message(tenant.clone(), device, upload, &info, &assertion, ttd);
        let forwarded = match self.downstream.send(msg).await {
            // QoS 0 goes pre-settled: written to the router is all there is to know.
            Ok(o) if o.is_accepted() => true,
            other => {
                tracing::debug!(%tenant, ?other, "message not accepted downstream");
                false
            }
        };
        if !forwarded {
            self.metrics
                .telemetry(&tenant, kind, qos, Status::Undeliverable, Ttd::None, size);
            return Err(Refused::NoConsumer);
        }
        if ttd.is_none() {
            self.metrics
                .telemetry(&tenant, kind, qos, Status::Forwarded, Ttd::None, size);
        }
        Ok(waiting)
    }

    /// A message of an authenticated device that is not a gateway's, forwarded without a future of its
    /// own: the caches answer steps 1 and 2, the data volume admits it, and the message is encoded and
    /// handed to the router's link. QoS 0 telemetry is then done ([`Now::Gone`]): the link counts it in
    /// `tally` (the tenant's) once written or shed. QoS 1 gives back what resolves to its outcome
    /// ([`Now::Waiting`], counted in `tally` when it resolves), or its refusal. Everything is counted as
    /// [`Pipeline::forward`] counts it. Gives `subject` and `upload` back when they must take
    /// [`Pipeline::forward_message`]'s way: a cache cannot answer, a gateway sends, or the downstream is
    /// the NATS bus.
    // The message comes back by value on the rare way round; boxing it would cost every message.
    #[allow(clippy::result_large_err)]
    pub fn forward_now(
        &self,
        volume: &Arc<TenantVolume>,
        subject: Subject,
        upload: Upload,
        tally: &Arc<TenantTally>,
    ) -> Result<Now, (Subject, Upload)> {
        if subject.gateway.is_some() || !self.downstream.sends_without_waiting() {
            return Err((subject, upload));
        }
        let check = TenantCheck::Authenticated(Some(volume.clone()));
        let (info, volume, assertion) = match self.check_cached(&check, &subject) {
            None => return Err((subject, upload)),
            // Refused before anything is counted, as `forward` refuses it.
            Some(Err(refused)) => return Ok(Now::Refused(refused)),
            Some(Ok(checked)) => checked,
        };
        let (kind, qos, size) = (upload.kind, upload.qos, upload.payload.len());
        if !self.admit(&subject.tenant, &info, volume, size) {
            tally.add(kind, qos, Status::Unprocessable, size);
            return Ok(Now::Refused(Refused::QuotaExceeded));
        }
        // QoS 0 whose link sheds was dropped by the caller before it built anything (the MQTT session
        // asks `Downstream::sheds_qos0` first); one that comes anyway is shed and counted by the link.
        let presettled = kind == MessageKind::Telemetry && qos == 0;
        let msg = self.message(
            subject.tenant,
            subject.device,
            upload,
            &info,
            &assertion,
            None,
        );
        if presettled {
            if self.downstream.try_send_qos0(&msg, tally) == Some(true) {
                return Ok(Now::Gone);
            }
            tally.add_qos0(Status::Undeliverable, size);
            return Ok(Now::Refused(Refused::NoConsumer));
        }
        match self.downstream.hand_over(&msg) {
            Some(handed) => Ok(Now::Waiting(Waiting {
                handed,
                tally: tally.clone(),
                kind,
                size,
            })),
            // Not reached: `sends_without_waiting` said the downstream takes messages this way.
            None => {
                tally.add(kind, qos, Status::Undeliverable, size);
                Ok(Now::Refused(Refused::NoConsumer))
            }
        }
    }

    /// The message that leaves for the router: the upload with the adapter's properties, the
    /// assertion, and the defaults applied.
    fn message(
        &self,
        tenant: TenantId,
        device: DeviceId,
        upload: Upload,
        info: &TenantInfo,
        assertion: &Assertion,
        ttd: Option<i32>,
    ) -> DeviceMessage {
        let mut extra_properties = upload.extra_properties;
        // A device's property never overrides what the adapter itself asserts about the message.
        extra_properties.retain(|(k, _)| !RESERVED_PROPERTIES.contains(&k.as_str()));
        let mut msg = DeviceMessage {
            kind: upload.kind,
            tenant,
            device_id: device,
            qos: upload.qos,
            content_type: upload.content_type,
            payload: upload.payload,
            assertion: assertion.token.clone(),
            orig_adapter: self.adapter,
            orig_address: upload.orig_address,
            ttl_ms: None,
            ttd,
            extra_properties,
            stored_limits: None,
        };
        // Message value > device defaults > tenant defaults; TTL capped by the tenant (§2.1).
        msg.apply_defaults(info, &assertion.defaults, upload.ttl_secs);
        msg
    }

    /// Counts a QoS 0 telemetry message the adapter dropped at the edge because its link to the router
    /// sheds ([`Downstream::sheds_qos0`]): `undeliverable`, as the pipeline counts it.
    pub fn shed(&self, tenant: &TenantId, size: usize) {
        self.metrics.telemetry(
            tenant,
            MessageKind::Telemetry,
            0,
            Status::Undeliverable,
            Ttd::None,
            size,
        );
    }

    /// [`Pipeline::forward`] without a step before sending.
    pub async fn forward_message(
        &self,
        check: TenantCheck,
        subject: Subject,
        upload: Upload,
    ) -> Outcome {
        let sent = self
            .forward(check, subject, upload, |_| async { Ok((None, ())) })
            .await;
        sent.map(drop)
    }

    /// A command response: tenant, assertion (a device answers only its own commands, or a gateway
    /// those of a device it may act for), data volume when `metered`, then to the application waiting
    /// on the command's reply-to, with the tenant's TTL limit for responses.
    pub async fn respond(&self, check: TenantCheck, subject: Subject, r: Response) -> Outcome {
        let (info, volume, _) = self.check(check, &subject).await?;
        let Subject { tenant, device, .. } = subject;
        let size = r.payload.len();
        if r.metered && !self.admit(&tenant, &info, volume, size) {
            self.metrics
                .command(&tenant, "response", Status::Unprocessable, size);
            return Err(Refused::QuotaExceeded);
        }
        let response = CommandResponse {
            tenant: tenant.clone(),
            device,
            reply_to: r.reply_to,
            correlation_id: r.correlation_id,
            status: r.status,
            content_type: r.content_type,
            payload: r.payload,
            ttl_ms: info
                .max_ttl_secs(TtlLimit::CommandResponse)
                .map(|s| u32::try_from(s.saturating_mul(1000)).unwrap_or(u32::MAX)),
        };
        let accepted = matches!(
            self.downstream.send_response(response).await,
            Ok(SendOutcome::Accepted)
        );
        let status = if accepted {
            Status::Forwarded
        } else {
            Status::Undeliverable
        };
        self.metrics.command(&tenant, "response", status, size);
        if accepted {
            Ok(())
        } else {
            Err(Refused::NoResponseReceiver)
        }
    }

    /// Step 1 for a device that logged in (at CONNECT, or per HTTP request): the login's result, then its
    /// tenant: known, enabled and using this adapter (HONO-CONTRACT §2.1, §2.2). An unknown tenant
    /// looks like bad credentials, so a device cannot probe for tenants.
    pub async fn login(
        &self,
        login: Result<Device, AuthError>,
    ) -> Result<(Device, Arc<TenantInfo>), Refused> {
        let device = login.map_err(|e| match e {
            AuthError::BadCredentials | AuthError::UnknownTenant => Refused::Unauthorized,
            AuthError::TenantDisabled => Refused::TenantDisabled,
            AuthError::Unavailable(_) => Refused::RegistryUnavailable,
        })?;
        let tenant = match self.registry.tenant(&device.tenant).await {
            Ok(Some(t)) => t,
            Ok(None) => return Err(Refused::Unauthorized),
            Err(_) => return Err(Refused::RegistryUnavailable),
        };
        if !tenant.is_enabled() {
            return Err(Refused::TenantDisabled);
        }
        if !tenant.is_adapter_enabled(self.adapter) {
            return Err(Refused::AdapterDisabled);
        }
        Ok((device, tenant))
    }

    /// Steps 1 and 2: the tenant, checked as `check` says, and the device's registration assertion.
    async fn check(&self, check: TenantCheck, subject: &Subject) -> Result<Checked, Refused> {
        let (info, volume) = self.tenant(&subject.tenant, check).await?;
        let assertion = self
            .assertion(&subject.tenant, &subject.device, subject.gateway.as_ref())
            .await?;
        Ok((info, volume, assertion))
    }

    /// Steps 1 and 2 from the caches alone, when they hold both answers; `None` when the registry must
    /// be asked. Gives the same answers as [`Pipeline::check`].
    fn check_cached(
        &self,
        check: &TenantCheck,
        subject: &Subject,
    ) -> Option<Result<Checked, Refused>> {
        // The clock is read once for both lookups.
        let now = std::time::Instant::now();
        let (info, volume) = match check {
            TenantCheck::Checked(info) => (info.clone(), None),
            TenantCheck::Authenticated(volume) => {
                match self.registry.cached_tenant(&subject.tenant, now)? {
                    Some(info) => (info, volume.clone()),
                    None => return Some(Err(Refused::NotFound)),
                }
            }
            // Rare enough (and checked in several steps) to take the full path.
            TenantCheck::Unauthenticated => return None,
        };
        let assertion = match self.registry.cached_assertion(
            &subject.tenant,
            &subject.device,
            subject.gateway.as_ref(),
            now,
        )? {
            AssertionOutcome::Granted(a) => a,
            AssertionOutcome::NotFound => return Some(Err(Refused::NotFound)),
            AssertionOutcome::Forbidden => return Some(Err(Refused::GatewayForbidden)),
        };
        Some(Ok((info, volume, assertion)))
    }

    /// Step 3: the tenant's data volume (HONO-CONTRACT §5), counted by this instance with no registry
    /// call; `volume` is the tenant's count when the caller holds it.
    fn admit(
        &self,
        tenant: &TenantId,
        info: &TenantInfo,
        volume: Option<Arc<TenantVolume>>,
        size: usize,
    ) -> bool {
        // Most tenants have no data volume limit: nothing to count, and no clock to read.
        if !crate::limits::meters_volume(info) {
            return true;
        }
        let volume = volume.unwrap_or_else(|| self.volume.tenant(tenant));
        volume.admit(info, size, chrono::Utc::now())
    }

    /// Step 1: the tenant, checked as `check` says, and its data volume count when known.
    async fn tenant(
        &self,
        tenant: &TenantId,
        check: TenantCheck,
    ) -> Result<(Arc<TenantInfo>, Option<Arc<TenantVolume>>), Refused> {
        match check {
            TenantCheck::Checked(info) => Ok((info, None)),
            TenantCheck::Authenticated(volume) => match self.registry.tenant(tenant).await {
                Ok(Some(info)) => Ok((info, volume)),
                Ok(None) => Err(Refused::NotFound),
                Err(_) => Err(Refused::RegistryUnavailable),
            },
            TenantCheck::Unauthenticated => Ok((self.unauthenticated_tenant(tenant).await?, None)),
        }
    }

    /// An unauthenticated device's tenant: it must exist and be enabled, use this adapter, and let its
    /// devices go unauthenticated. An unknown tenant looks like one that wants credentials.
    pub async fn unauthenticated_tenant(
        &self,
        tenant: &TenantId,
    ) -> Result<Arc<TenantInfo>, Refused> {
        match self.registry.tenant(tenant).await {
            Ok(Some(t)) if !t.is_enabled() => Err(Refused::TenantDisabled),
            Ok(Some(t)) if !t.is_adapter_enabled(self.adapter) => Err(Refused::AdapterDisabled),
            Ok(Some(t)) if t.is_device_authentication_required(self.adapter) => {
                Err(Refused::Unauthorized)
            }
            Ok(Some(t)) => Ok(t),
            Ok(None) => Err(Refused::Unauthorized),
            Err(_) => Err(Refused::RegistryUnavailable),
        }
    }

    /// Step 2: the registration assertion for `device` (through `gateway`).
    pub async fn assertion(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: Option<&DeviceId>,
    ) -> Result<Arc<Assertion>, Refused> {
        match self.registry.assertion(tenant, device, gateway).await {
            Ok(AssertionOutcome::Granted(a)) => Ok(a),
            Ok(AssertionOutcome::NotFound) => Err(Refused::NotFound),
            Ok(AssertionOutcome::Forbidden) => Err(Refused::GatewayForbidden),
            Err(_) => Err(Refused::RegistryUnavailable),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_stay_apart_from_trouble() {
        for o in [
            Refused::Unauthorized,
            Refused::TenantDisabled,
            Refused::AdapterDisabled,
            Refused::GatewayForbidden,
            Refused::NotFound,
        ] {
            assert!(o.is_denied(), "{o:?}");
            assert!((401..=404).contains(&o.code()), "{o:?}");
        }
        for o in [
            Refused::RegistryUnavailable,
            Refused::CommandsUnavailable,
            Refused::NoConsumer,
            Refused::NoResponseReceiver,
        ] {
            assert!(!o.is_denied(), "{o:?}");
            assert_eq!(o.code(), 503, "{o:?}");
        }
        assert_eq!(Refused::QuotaExceeded.code(), 429);
        assert!(!Refused::QuotaExceeded.is_denied());
    }
}
