//! Tenant, device and auth ids as newtypes that validate their input.
//!
//! Tenant and device ids end up in AMQP addresses (`telemetry/TENANT`), MQTT topics and URL paths, so they
//! are restricted to Hono's registry id alphabet (`[A-Za-z0-9-_.:=]`, tenant ids without `:` and `=`) and
//! may never contain `/`, `@`, whitespace or control characters. Auth ids are looser: an X.509 auth id is a
//! subject DN with commas, spaces and `=`, so only emptiness, length and control characters are refused.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why an id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} is longer than {max} characters")]
    TooLong { kind: &'static str, max: usize },
    #[error("{kind} contains the character {ch:?}, which is not allowed")]
    BadChar { kind: &'static str, ch: char },
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(Arc<str>);

        impl $name {
            /// The longest id accepted.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` and wraps it.
            pub fn new(s: &str) -> Result<Self, IdError> {
                validate(s, $kind, $max, $allowed)?;
                Ok(Self(Arc::from(s)))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as a shared string (a pointer copy).
            pub fn to_arc(&self) -> Arc<str> {
                self.0.clone()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($name), &*self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn validate(
    s: &str,
    kind: &'static str,
    max: usize,
    allowed: fn(char) -> bool,
) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if s.chars().count() > max {
        return Err(IdError::TooLong { kind, max });
    }
    match s.chars().find(|c| !allowed(*c)) {
        Some(ch) => Err(IdError::BadChar { kind, ch }),
        None => Ok(()),
    }
}

fn tenant_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn device_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '=')
}

fn auth_char(c: char) -> bool {
    !c.is_control()
}

id_type!(
    /// A tenant id: 1–128 characters of `[A-Za-z0-9-_.]`.
    TenantId, "tenant id", 128, tenant_char
);
id_type!(
    /// A device id: 1–256 characters of `[A-Za-z0-9-_.:=]`.
    DeviceId, "device id", 256, device_char
);
id_type!(
    /// An auth id (the name a device logs in with): 1–512 characters, no control characters.
    AuthId, "auth id", 512, auth_char
);

/// Splits a device login `auth-id@tenant` at its last `@` (so auth ids may themselves contain `@`).
pub fn split_login(login: &str) -> Result<(AuthId, TenantId), IdError> {
    let (auth, tenant) = login
        .rsplit_once('@')
        .ok_or(IdError::Empty { kind: "tenant id" })?;
    Ok((AuthId::new(auth)?, TenantId::new(tenant)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_accept_hono_alphabet() {
        assert!(TenantId::new("DEFAULT_TENANT").is_ok());
        assert!(TenantId::new("acme-1.prod").is_ok());
        assert!(DeviceId::new("4711").is_ok());
        assert!(DeviceId::new("urn:dev=1").is_ok());
        assert!(AuthId::new("CN=Device 1,O=ACME").is_ok());
    }

    #[test]
    fn ids_refuse_separators_and_empty() {
        assert_eq!(TenantId::new(""), Err(IdError::Empty { kind: "tenant id" }));
        assert_eq!(
            TenantId::new("a/b"),
            Err(IdError::BadChar {
                kind: "tenant id",
                ch: '/'
            })
        );
        assert!(TenantId::new("a:b").is_err());
        assert!(DeviceId::new("d 1").is_err());
        assert!(DeviceId::new("d@t").is_err());
        assert!(AuthId::new("a\nb").is_err());
        assert!(TenantId::new(&"x".repeat(129)).is_err());
        assert!(TenantId::new(&"x".repeat(128)).is_ok());
    }

    #[test]
    fn login_splits_at_last_at() {
        let (a, t) = split_login("me@example.com@t1").expect("valid login");
        assert_eq!(a.as_str(), "me@example.com");
        assert_eq!(t.as_str(), "t1");
        assert!(split_login("no-tenant").is_err());
        assert!(split_login("a@").is_err());
    }

    #[test]
    fn ids_deserialize_with_validation() {
        let t: TenantId = serde_json::from_str("\"t1\"").expect("valid");
        assert_eq!(t.as_str(), "t1");
        assert!(serde_json::from_str::<TenantId>("\"t/1\"").is_err());
    }
}
