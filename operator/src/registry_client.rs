//! The registry's management API as the `Tenant` reconcile uses it (HONO-CONTRACT §3.2 and Ferry's
//! application users): tenants by id, application users by name.

use ferry_registry_model::{ApplicationUserView, Tenant as RegistryTenant};
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A failed registry call. `Unavailable` (network, 5xx) is retried soon; `Rejected` (4xx) waits for a
/// spec change.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    #[error("registry refused {what}: {status} {message}")]
    Rejected {
        what: String,
        status: u16,
        message: String,
    },
}

/// A client of one registry.
#[derive(Debug, Clone)]
pub struct RegistryClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl RegistryClient {
    pub fn new(http: reqwest::Client, base: &str, token: String) -> Self {
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, String), RegistryError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        if status.is_server_error() {
            return Err(RegistryError::Unavailable(format!("{status}: {text}")));
        }
        Ok((status, text))
    }

    fn rejected(what: &str, status: StatusCode, body: &str) -> RegistryError {
        let message = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| body.to_owned());
        RegistryError::Rejected {
            what: what.to_owned(),
            status: status.as_u16(),
            message,
        }
    }

    /// The tenant, or `None` when the registry has no tenant of that id.
    pub async fn get_tenant(&self, id: &str) -> Result<Option<RegistryTenant>, RegistryError> {
        let (status, body) = self.call(Method::GET, &tenant_path(id), None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| RegistryError::Unavailable(format!("unreadable tenant {id}: {e}"))),
            s => Err(Self::rejected("reading the tenant", s, &body)),
        }
    }

    pub async fn create_tenant(
        &self,
        id: &str,
        tenant: &RegistryTenant,
    ) -> Result<(), RegistryError> {
        self.write(
            "creating the tenant",
            Method::POST,
            &tenant_path(id),
            tenant,
        )
        .await
    }

    pub async fn update_tenant(
        &self,
        id: &str,
        tenant: &RegistryTenant,
    ) -> Result<(), RegistryError> {
        self.write("updating the tenant", Method::PUT, &tenant_path(id), tenant)
            .await
    }

    /// Deletes the tenant; `false` when it did not exist.
    pub async fn delete_tenant(&self, id: &str) -> Result<bool, RegistryError> {
        self.delete("deleting the tenant", &tenant_path(id)).await
    }

    pub async fn get_application(
        &self,
        name: &str,
    ) -> Result<Option<ApplicationUserView>, RegistryError> {
        let (status, body) = self.call(Method::GET, &app_path(name), None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => serde_json::from_str(&body).map(Some).map_err(|e| {
                RegistryError::Unavailable(format!("unreadable application user {name}: {e}"))
            }),
            s => Err(Self::rejected("reading the application user", s, &body)),
        }
    }

    /// Creates or replaces application user `name`, scoped to `tenant` only.
    pub async fn put_application(
        &self,
        name: &str,
        password: &str,
        tenant: &str,
    ) -> Result<(), RegistryError> {
        let body = json!({ "password": password, "tenants": [tenant] });
        self.write(
            "writing the application user",
            Method::PUT,
            &app_path(name),
            &body,
        )
        .await
    }

    pub async fn delete_application(&self, name: &str) -> Result<bool, RegistryError> {
        self.delete("deleting the application user", &app_path(name))
            .await
    }

    async fn write(
        &self,
        what: &str,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
    ) -> Result<(), RegistryError> {
        let body = serde_json::to_value(body)
            .map_err(|e| RegistryError::Unavailable(format!("cannot serialize: {e}")))?;
        let (status, resp) = self.call(method, path, Some(body)).await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(Self::rejected(what, status, &resp))
        }
    }

    async fn delete(&self, what: &str, path: &str) -> Result<bool, RegistryError> {
        let (status, body) = self.call(Method::DELETE, path, None).await?;
        match status {
            StatusCode::NOT_FOUND => Ok(false),
            s if s.is_success() => Ok(true),
            s => Err(Self::rejected(what, s, &body)),
        }
    }
}

fn tenant_path(id: &str) -> String {
    format!("/v1/tenants/{}", encode(id))
}

fn app_path(name: &str) -> String {
    format!("/v1/applications/{}", encode(name))
}

/// Ids and names are validated to URL-safe alphabets before they get here, except `@` in user names.
fn encode(segment: &str) -> String {
    segment.replace('@', "%40")
}
