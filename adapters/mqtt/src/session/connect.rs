//! CONNECT: who the device is (HONO-CONTRACT §2.2), the connection limits, the keep-alive it gets, and
//! whether it is still allowed after a registry change.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;

use ferry_adapter_core::registry::AssertionOutcome;
use rustls::pki_types::CertificateDer;

use super::{Authenticated, Session, ADAPTER_TYPE};
use crate::connack::Refusal;
use crate::wire;
use crate::Shared;

/// The keep-alive a session uses, and the Server Keep Alive to tell an MQTT 5 client: the client's,
/// unless it asks for none (0) or for more than `max` (0: no maximum); then `max`. An MQTT 3.1.1
/// client cannot be told, and is held to `max` all the same.
pub(super) fn keep_alive(requested: u16, max: u16) -> (u16, Option<u16>) {
    if max > 0 && (requested == 0 || requested > max) {
        (max, Some(max))
    } else {
        (requested, None)
    }
}

pub(super) fn refusal_outcome(r: Refusal) -> &'static str {
    match r {
        Refusal::BadCredentials => "unauthorized",
        Refusal::AdapterFull => "adapter-connections-exceeded",
        Refusal::TenantLimit => "tenant-connections-exceeded",
        Refusal::DataVolume => "data-volume-exceeded",
        Refusal::RegistryUnavailable => "unavailable",
        Refusal::NotAuthorized => "adapter-disabled",
        Refusal::Other => "unknown",
    }
}

/// CONNECT checks of HONO-CONTRACT §2.2: credentials (a client certificate first, then user name and
/// password), tenant and adapter enabled, device registered and enabled, connection limits. `None`: an
/// unauthenticated device, allowed only when the adapter does not require authentication; its tenants
/// are checked per message.
pub(super) async fn authenticate(
    shared: &Shared,
    connect: &wire::Connect,
    client_cert: Option<&CertificateDer<'static>>,
    peer: SocketAddr,
) -> Result<Option<Authenticated>, Refusal> {
    let login = match (client_cert, &connect.username, &connect.password) {
        // Hono's order: a client certificate decides; a user name sent with it is not looked at.
        (Some(cert), ..) => shared.auth.authenticate_certificate(cert.as_ref()).await,
        (None, Some(user), Some(password)) => {
            shared
                .auth
                .authenticate_password(user, password, Some(peer.ip()))
                .await
        }
        (None, None, None) if !shared.config.authentication_required => {
            count_connection(shared)?;
            return Ok(None);
        }
        _ => return Err(Refusal::BadCredentials),
    };
    let pipeline = shared.pipeline();
    let (device, tenant) = pipeline.login(login).await?;
    let assertion = pipeline
        .assertion(&device.tenant, &device.device_id, None)
        .await?;
    let volume = shared.volume.tenant(&device.tenant);
    if volume.is_exhausted(&tenant, chrono::Utc::now()) {
        return Err(Refusal::DataVolume);
    }
    count_connection(shared)?;
    if let Some(limit) = tenant.max_connections() {
        if shared.metrics.connected(&device.tenant).get()
            >= i64::try_from(limit).unwrap_or(i64::MAX)
        {
            shared.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::TenantLimit);
        }
    }
    Ok(Some(Authenticated {
        tally: shared.metrics.tenant_tally(&device.tenant),
        tenant: device.tenant,
        device: device.device_id,
        assertion,
        volume,
    }))
}

/// Counts a connection of this instance, unless the instance is full.
pub(super) fn count_connection(shared: &Shared) -> Result<(), Refusal> {
    let max = shared.config.max_connections;
    let now = shared.connections.fetch_add(1, Ordering::AcqRel) + 1;
    if max > 0 && now > max {
        shared.connections.fetch_sub(1, Ordering::AcqRel);
        return Err(Refusal::AdapterFull);
    }
    Ok(())
}

impl Session {
    /// After a registry change: is the device still enabled, its tenant and this adapter still enabled?
    pub(super) async fn still_allowed(&self) -> bool {
        let Some(who) = &self.who else {
            return true;
        };
        let tenant_ok = matches!(
            self.shared.registry.tenant(&who.tenant).await,
            Ok(Some(t)) if t.is_enabled() && t.is_adapter_enabled(ADAPTER_TYPE)
        );
        tenant_ok
            && matches!(
                self.shared
                    .registry
                    .assertion(&who.tenant, &who.device, None)
                    .await,
                Ok(AssertionOutcome::Granted(_))
            )
    }
}
