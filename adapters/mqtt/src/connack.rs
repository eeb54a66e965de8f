//! Why a CONNECT was refused, and the CONNACK code that says so in MQTT 3.1.1 and 5.0
//! (HONO-CONTRACT.md §2.2). The one place where connection refusals meet the wire.

use ferry_adapter_core::pipeline::Refused;

/// CONNACK code of an accepted connection (3.1.1 and 5.0).
pub const ACCEPTED: u8 = 0x00;

/// MQTT 3.1.1 §3.1.2.2: the protocol level is not supported (in the 3.1.1 form, which MQTT 3.1 clients
/// read as well).
pub const UNACCEPTABLE_PROTOCOL_LEVEL: u8 = 0x01;

/// Why the adapter refuses a connection.
///
/// Where the cases not named in the contract go, following Hono:
/// * unknown tenant, unknown device, no or wrong credentials, disabled credentials → [`BadCredentials`]:
///   the device learns only that its login failed, not which tenants or devices exist;
/// * tenant disabled, MQTT adapter disabled for the tenant, device or gateway disabled → [`NotAuthorized`]:
///   the login was right but the device may not connect, and retrying will not help until an operator
///   acts;
/// * backend failures (registry or its cache unreachable, timeouts) → [`RegistryUnavailable`], kept apart
///   from the denials so that a device may retry instead of giving up.
///
/// [`BadCredentials`]: Refusal::BadCredentials
/// [`NotAuthorized`]: Refusal::NotAuthorized
/// [`RegistryUnavailable`]: Refusal::RegistryUnavailable
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// Bad or unknown credentials.
    BadCredentials,
    /// This adapter instance has reached its connection limit.
    AdapterFull,
    /// The tenant's connection count or connection duration is exhausted.
    TenantLimit,
    /// The tenant's data volume for the current period is used up.
    DataVolume,
    /// The device registry could not be asked.
    RegistryUnavailable,
    /// Authenticated, but not allowed: tenant, adapter type or device disabled.
    NotAuthorized,
    /// Anything else.
    Other,
}

impl From<Refused> for Refusal {
    /// The device pipeline's refusals at CONNECT (its login, tenant and assertion steps).
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unauthorized => Refusal::BadCredentials,
            Refused::TenantDisabled
            | Refused::AdapterDisabled
            | Refused::NotFound
            | Refused::GatewayForbidden => Refusal::NotAuthorized,
            Refused::QuotaExceeded => Refusal::DataVolume,
            Refused::RegistryUnavailable => Refusal::RegistryUnavailable,
            Refused::CommandsUnavailable | Refused::NoConsumer | Refused::NoResponseReceiver => {
                Refusal::Other
            }
        }
    }
}

impl Refusal {
    /// The MQTT 3.1.1 CONNACK return code.
    pub fn v311_code(&self) -> u8 {
        match self {
            // 0x04: bad user name or password.
            Refusal::BadCredentials => 0x04,
            // 0x03: server unavailable.
            Refusal::AdapterFull | Refusal::RegistryUnavailable => 0x03,
            // 0x05: not authorized.
            Refusal::TenantLimit
            | Refusal::DataVolume
            | Refusal::NotAuthorized
            | Refusal::Other => 0x05,
        }
    }

    /// The MQTT 5.0 CONNACK reason code.
    pub fn v5_reason(&self) -> u8 {
        match self {
            // Bad user name or password.
            Refusal::BadCredentials => 0x86,
            // Use another server: another adapter instance may have room.
            Refusal::AdapterFull => 0x9C,
            // Quota exceeded.
            Refusal::TenantLimit | Refusal::DataVolume => 0x97,
            // Server unavailable.
            Refusal::RegistryUnavailable => 0x88,
            // Not authorized.
            Refusal::NotAuthorized | Refusal::Other => 0x87,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Refusal;

    #[test]
    fn refusals_map_to_the_contracts_connack_codes() {
        let table = [
            (Refusal::BadCredentials, 0x04, 0x86),
            (Refusal::AdapterFull, 0x03, 0x9C),
            (Refusal::TenantLimit, 0x05, 0x97),
            (Refusal::DataVolume, 0x05, 0x97),
            (Refusal::RegistryUnavailable, 0x03, 0x88),
            (Refusal::NotAuthorized, 0x05, 0x87),
            (Refusal::Other, 0x05, 0x87),
        ];
        for (refusal, v311, v5) in table {
            assert_eq!(refusal.v311_code(), v311, "{refusal:?} in 3.1.1");
            assert_eq!(refusal.v5_reason(), v5, "{refusal:?} in 5.0");
        }
    }
}
