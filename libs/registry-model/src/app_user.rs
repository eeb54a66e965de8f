//! Application users: a Ferry extension that lets business applications log in to the AMQP network
//! (Hono leaves consumer authentication to the messaging infrastructure).
//!
//! Three forms: the input body with a clear-text password ([`ApplicationUserInput`]), the stored form with
//! a bcrypt hash ([`ApplicationUser`]), and the GET form without either ([`ApplicationUserView`]). The user
//! name travels in the URL and is a [`UserName`].

use std::borrow::Cow;
use std::fmt;

use ferry_core::ids::TenantId;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::ValidationError;
use crate::hashing::{self, HashOptions};

/// An application user's name: 1–128 characters of `[A-Za-z0-9-_.@]` (an e-mail address fits).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserName(String);

impl UserName {
    pub const MAX_LEN: usize = 128;

    pub fn new(name: &str) -> Result<Self, ValidationError> {
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return Err(ValidationError::new(format!(
                "user name must have 1 to {} characters",
                Self::MAX_LEN
            )));
        }
        if let Some(c) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')))
        {
            return Err(ValidationError::new(format!(
                "user name contains {c:?}; use letters, digits, '-', '_', '.' and '@'"
            )));
        }
        Ok(Self(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for UserName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for UserName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <Cow<'de, str>>::deserialize(d)?;
        Self::new(&name).map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for UserName {
    fn schema_name() -> Cow<'static, str> {
        "UserName".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,128}$" })
    }
}

/// One entry of a user's `tenants`: a tenant id, or `*` for every tenant.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TenantGrant {
    Any,
    Tenant(TenantId),
}

impl TenantGrant {
    pub fn allows(&self, tenant: &TenantId) -> bool {
        match self {
            Self::Any => true,
            Self::Tenant(t) => t == tenant,
        }
    }
}

impl Serialize for TenantGrant {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Any => s.serialize_str("*"),
            Self::Tenant(t) => s.serialize_str(t.as_str()),
        }
    }
}

impl<'de> Deserialize<'de> for TenantGrant {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = <Cow<'de, str>>::deserialize(d)?;
        if value == "*" {
            return Ok(Self::Any);
        }
        TenantId::new(&value)
            .map(Self::Tenant)
            .map_err(|e| serde::de::Error::custom(format!("{e} (or use \"*\" for every tenant)")))
    }
}

impl JsonSchema for TenantGrant {
    fn schema_name() -> Cow<'static, str> {
        "TenantGrant".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "description": "A tenant id, or \"*\" for every tenant.",
            "pattern": "^(\\*|[A-Za-z0-9_.-]{1,128})$"
        })
    }
}

/// What an application user may do on the AMQP network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Operation {
    /// Consume telemetry.
    Telemetry,
    /// Consume events.
    Event,
    /// Send commands and receive their responses.
    Command,
}

impl Operation {
    pub const ALL: [Operation; 3] = [Operation::Telemetry, Operation::Event, Operation::Command];

    fn all() -> Vec<Operation> {
        Self::ALL.to_vec()
    }
}

/// The body that creates or replaces an application user.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApplicationUserInput {
    /// Clear text, at most 72 bytes; stored only as a bcrypt hash.
    #[schemars(extend("writeOnly" = true))]
    pub password: String,
    /// Tenants whose data the user may access; `["*"]` for all.
    pub tenants: Vec<TenantGrant>,
    /// Defaults to every operation.
    #[serde(default = "Operation::all")]
    pub operations: Vec<Operation>,
}

// Written by hand so that a logged request never shows the password.
impl fmt::Debug for ApplicationUserInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationUserInput")
            .field("password", &"<redacted>")
            .field("tenants", &self.tenants)
            .field("operations", &self.operations)
            .finish()
    }
}

fn check_grants(tenants: &[TenantGrant], operations: &[Operation]) -> Result<(), ValidationError> {
    if tenants.is_empty() {
        return Err(ValidationError::at(
            "tenants",
            "must name at least one tenant, or \"*\" for every tenant",
        ));
    }
    if operations.is_empty() {
        return Err(ValidationError::at(
            "operations",
            "must name at least one of telemetry, event, command; omit it for all",
        ));
    }
    Ok(())
}

impl ApplicationUserInput {
    pub fn validate(&self) -> Result<(), ValidationError> {
        hashing::check_plain_password("password", &self.password)?;
        check_grants(&self.tenants, &self.operations)
    }

    /// Validates the body and hashes the password into the stored form.
    pub fn into_stored(self, opts: &HashOptions) -> Result<ApplicationUser, ValidationError> {
        self.validate()?;
        Ok(ApplicationUser {
            password_hash: hashing::bcrypt_hash(&self.password, opts)?,
            tenants: self.tenants,
            operations: self.operations,
        })
    }
}

/// An application user as the registry stores it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApplicationUser {
    /// bcrypt (`$2a$`/`$2b$`/`$2y$`).
    pub password_hash: String,
    pub tenants: Vec<TenantGrant>,
    pub operations: Vec<Operation>,
}

impl fmt::Debug for ApplicationUser {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApplicationUser")
            .field("password_hash", &"<redacted>")
            .field("tenants", &self.tenants)
            .field("operations", &self.operations)
            .finish()
    }
}

impl ApplicationUser {
    /// Whether the user may access `tenant`'s data.
    pub fn allows_tenant(&self, tenant: &TenantId) -> bool {
        self.tenants.iter().any(|g| g.allows(tenant))
    }

    pub fn allows_operation(&self, operation: Operation) -> bool {
        self.operations.contains(&operation)
    }

    /// Whether `password` matches the stored hash; false for a malformed hash.
    pub fn verify(&self, password: &str) -> bool {
        hashing::verify_hash(
            hashing::HashFunction::Bcrypt,
            &self.password_hash,
            None,
            password,
        )
    }

    /// Checks a stored user (e.g. one loaded from a configuration file).
    pub fn validate(&self) -> Result<(), ValidationError> {
        if hashing::bcrypt_cost(&self.password_hash).is_none() {
            return Err(ValidationError::at(
                "password-hash",
                "is not a bcrypt hash ($2a$, $2b$ or $2y$)",
            ));
        }
        check_grants(&self.tenants, &self.operations)
    }

    /// The GET form, without the hash.
    pub fn view(&self, name: &UserName) -> ApplicationUserView {
        ApplicationUserView {
            name: name.clone(),
            tenants: self.tenants.clone(),
            operations: self.operations.clone(),
        }
    }
}

/// An application user as the management API returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ApplicationUserView {
    pub name: UserName,
    pub tenants: Vec<TenantGrant>,
    pub operations: Vec<Operation>,
}

#[cfg(test)]
mod tests;
