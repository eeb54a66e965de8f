//! The router's use of the registry's internal API (docs/registry.md): JWKS, application-user
//! authentication, a device's gateways and the change stream, all through `ferry-registry-client`.

use std::time::Duration;

use ferry_registry_client::{
    Answer, Client, ClientConfig, StreamConfig, StreamEvent, StreamSignal,
};
use ferry_registry_model::ResourceLimits;
use serde::Deserialize as _;

pub use ferry_registry_client::{AppUser, Change, ChangeKind, Error as RegistryError};

/// Bound on one request to the registry.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The registry client of a router; cheap to clone.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    client: Client,
}

impl RegistryClient {
    /// A client of the registry at `base`, authenticating with the internal API's `token`.
    pub fn new(
        base: &str,
        token: &str,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, RegistryError> {
        let client = Client::new(&ClientConfig {
            url: base.to_owned(),
            token: token.to_owned(),
            request_timeout: REQUEST_TIMEOUT,
            ca_file: ca_file.map(ToOwned::to_owned),
        })?;
        Ok(Self { client })
    }

    /// The registry's public keys for verifying assertions.
    pub async fn jwks(&self) -> Result<ferry_core::assertion::Jwks, RegistryError> {
        self.client.jwks().await
    }

    /// `tenant`'s own limits on stored events (its `resource-limits`); the defaults for a tenant the
    /// registry does not know.
    pub async fn tenant_event_limits(
        &self,
        tenant: &ferry_core::ids::TenantId,
    ) -> Result<crate::events::TenantEventLimits, RegistryError> {
        let Answer::Found(body, _) = self.client.tenant(tenant).await? else {
            return Ok(crate::events::TenantEventLimits::default());
        };
        let limits = match body.get("resource-limits") {
            None | Some(serde_json::Value::Null) => {
                return Ok(crate::events::TenantEventLimits::default())
            }
            Some(v) => {
                ResourceLimits::deserialize(v).map_err(|source| RegistryError::Malformed {
                    what: "tenant",
                    source,
                })?
            }
        };
        Ok(limits.stored_events())
    }

    /// The gateways that may act for a device (`via` of its registration assertion, members of its
    /// `viaGroups` included); empty for an unknown or disabled device.
    pub async fn via(&self, tenant: &str, device: &str) -> Result<Vec<String>, RegistryError> {
        self.client.via(tenant, device).await
    }

    /// `Ok(None)` for wrong credentials; `Err` when the registry cannot answer.
    /// `source`: the peer's address, so that the registry also counts failed logins per source.
    pub async fn authenticate_application(
        &self,
        name: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Option<AppUser>, RegistryError> {
        self.client
            .authenticate_application(name, password, source)
            .await
    }

    /// Follows the change stream until `shutdown`, calling `on_change` for each change (and with `None`
    /// for a reset or a (re)connect, when everything must be purged).
    pub async fn follow_changes(
        &self,
        shutdown: ferry_core::shutdown::Shutdown,
        mut on_change: impl FnMut(Option<Change>) + Send,
    ) {
        self.client
            .follow_changes(shutdown, &StreamConfig::default(), |signal| match signal {
                StreamSignal::Connected | StreamSignal::Event(StreamEvent::Reset) => {
                    on_change(None)
                }
                StreamSignal::Event(StreamEvent::Change(c)) => on_change(Some(c)),
                StreamSignal::Event(StreamEvent::Hello) | StreamSignal::Lost => {}
            })
            .await;
    }
}
