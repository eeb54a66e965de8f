//! [`Change`]: one event of the registry's change stream (`GET /internal/v1/changes`, docs/registry.md),
//! defined once for the registry, which serialises it, and for its clients (router, adapters), which read
//! it with `ferry-registry-client`.
//!
//! It lives here, with the other wire types, rather than in the client crate so that the registry does not
//! depend on an HTTP client to name what it sends.

use ferry_core::ids::{DeviceId, TenantId};
use serde::{Deserialize, Deserializer, Serialize};

/// What a change concerns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeKind {
    /// A tenant was created, updated or deleted (deleted: everything of the tenant is gone).
    Tenant,
    /// A device was created, updated (e.g. disabled) or deleted.
    Device,
    /// A device's credentials changed.
    Credentials,
    /// An application user changed.
    Application,
    /// Changes may have been missed (the stream was reconnected, or a subscriber fell behind): whoever
    /// holds state derived from the registry should check all of it again. Never on the wire as a kind:
    /// the stream says it with a `reset` event, and clients hand it on as this kind.
    #[serde(skip)]
    Reset,
}

/// How it changed; absent for [`ChangeKind::Reset`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChangeOp {
    /// Newly created.
    Created,
    /// Changed (e.g. disabled, new secrets).
    Updated,
    /// Gone.
    Deleted,
}

/// One change: the `data:` of an SSE `change` event (`{"seq":42,"kind":"device","op":"updated",
/// "tenant":"t1","device":"d1"}`).
///
/// Ids that do not parse as ids are read as absent rather than refusing the whole change: a client that
/// cannot place a change purges more, never less.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// The registry's sequence number of the change (0 for a [`Change::reset`]).
    #[serde(default)]
    pub seq: u64,
    /// What changed.
    pub kind: ChangeKind,
    /// How; `None` for a reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<ChangeOp>,
    /// The tenant concerned (`None` for applications and resets).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_id"
    )]
    pub tenant: Option<TenantId>,
    /// The device concerned (device and credentials changes).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_id"
    )]
    pub device: Option<DeviceId>,
    /// The application user concerned (application changes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

fn lenient_id<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
{
    let s = Option::<std::borrow::Cow<'de, str>>::deserialize(d)?;
    Ok(s.and_then(|s| s.parse().ok()))
}

impl Change {
    /// The change that tells subscribers to re-check everything.
    pub fn reset() -> Self {
        Self {
            seq: 0,
            kind: ChangeKind::Reset,
            op: None,
            tenant: None,
            device: None,
            name: None,
        }
    }

    /// Whether this change may affect `device` of `tenant` (a reset affects everything).
    pub fn affects(&self, tenant: &TenantId, device: &DeviceId) -> bool {
        match self.kind {
            ChangeKind::Reset => true,
            ChangeKind::Application => false,
            ChangeKind::Tenant => self.tenant.as_ref() == Some(tenant),
            ChangeKind::Device | ChangeKind::Credentials => {
                self.tenant.as_ref() == Some(tenant) && self.device.as_ref() == Some(device)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> TenantId {
        TenantId::new(s).expect("id")
    }

    fn d(s: &str) -> DeviceId {
        DeviceId::new(s).expect("id")
    }

    #[test]
    fn wire_form_round_trips_and_omits_what_is_absent() {
        let change = Change {
            seq: 42,
            kind: ChangeKind::Device,
            op: Some(ChangeOp::Updated),
            tenant: Some(t("t1")),
            device: Some(d("d1")),
            name: None,
        };
        let json = serde_json::to_string(&change).expect("json");
        assert_eq!(
            json,
            r#"{"seq":42,"kind":"device","op":"updated","tenant":"t1","device":"d1"}"#
        );
        assert_eq!(
            serde_json::from_str::<Change>(&json).expect("parse"),
            change
        );
        let app: Change =
            serde_json::from_str(r#"{"seq":1,"kind":"application","op":"deleted","name":"a1"}"#)
                .expect("parse");
        assert_eq!(app.name.as_deref(), Some("a1"));
        // A reset is an event of its own, never a kind on the wire.
        assert!(serde_json::to_string(&Change::reset()).is_err());
        assert!(serde_json::from_str::<Change>(r#"{"kind":"reset"}"#).is_err());
    }

    #[test]
    fn unparseable_ids_read_as_absent() {
        let c: Change =
            serde_json::from_str(r#"{"kind":"device","op":"updated","tenant":"t/1","device":""}"#)
                .expect("parse");
        assert_eq!((c.tenant, c.device), (None, None));
    }

    #[test]
    fn affects_matches_tenant_and_device() {
        let (t1, d1, d2) = (t("t1"), d("d1"), d("d2"));
        let device = Change {
            seq: 1,
            kind: ChangeKind::Device,
            op: Some(ChangeOp::Updated),
            tenant: Some(t1.clone()),
            device: Some(d1.clone()),
            name: None,
        };
        assert!(device.affects(&t1, &d1));
        assert!(!device.affects(&t1, &d2));
        let tenant = Change {
            kind: ChangeKind::Tenant,
            device: None,
            ..device
        };
        assert!(tenant.affects(&t1, &d2));
        assert!(Change::reset().affects(&t1, &d2));
    }
}
