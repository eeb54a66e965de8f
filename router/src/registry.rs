//! The router's client of the registry's internal API: JWKS, application-user authentication and the
//! change stream (docs/registry.md).

use std::time::Duration;

use futures_util::StreamExt;
use serde::Deserialize;

/// An application user as the registry reports it after authentication.
#[derive(Debug, Clone, Deserialize)]
pub struct AppUser {
    pub name: String,
    pub tenants: Vec<String>,
    #[serde(default)]
    pub operations: Vec<String>,
}

impl AppUser {
    pub fn allows_tenant(&self, tenant: &ferry_core::ids::TenantId) -> bool {
        self.tenants
            .iter()
            .any(|t| t == "*" || t == tenant.as_str())
    }

    pub fn allows(&self, operation: &str) -> bool {
        self.operations.iter().any(|o| o == operation)
    }
}

/// A change announced by the registry.
#[derive(Debug, Clone, Deserialize)]
pub struct Change {
    pub kind: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tenant: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RegistryClient {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl RegistryClient {
    pub fn new(base: &str, token: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    pub async fn jwks(&self) -> Result<ferry_core::assertion::Jwks, reqwest::Error> {
        self.http
            .get(format!("{}/internal/v1/jwks", self.base))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await
    }

    /// The gateways that may act for a device (`via` of its registration assertion, members of its
    /// `viaGroups` included); empty for an unknown or disabled device.
    pub async fn via(&self, tenant: &str, device: &str) -> Result<Vec<String>, reqwest::Error> {
        #[derive(Deserialize)]
        struct Assertion {
            #[serde(default)]
            via: Vec<String>,
        }
        let resp = self
            .http
            .post(format!(
                "{}/internal/v1/assertions/{}/{}",
                self.base,
                percent_encoding::utf8_percent_encode(tenant, percent_encoding::NON_ALPHANUMERIC),
                percent_encoding::utf8_percent_encode(device, percent_encoding::NON_ALPHANUMERIC),
            ))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        Ok(resp.error_for_status()?.json::<Assertion>().await?.via)
    }

    /// `Ok(None)` for wrong credentials; `Err` when the registry cannot answer.
    /// `source`: the peer's address, so that the registry also counts failed logins per source.
    pub async fn authenticate_application(
        &self,
        name: &str,
        password: &str,
        source: Option<std::net::IpAddr>,
    ) -> Result<Option<AppUser>, reqwest::Error> {
        let resp = self
            .http
            .post(format!(
                "{}/internal/v1/applications/authenticate",
                self.base
            ))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "name": name, "password": password, "source": source }))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::FORBIDDEN
            || resp.status() == reqwest::StatusCode::BAD_REQUEST
        {
            return Ok(None);
        }
        Ok(Some(resp.error_for_status()?.json().await?))
    }

    /// Follows the change stream until `shutdown`, calling `on_change` for each change (and with `None`
    /// for a reset or a reconnect, when everything must be purged).
    pub async fn follow_changes(
        &self,
        shutdown: ferry_core::shutdown::Shutdown,
        on_change: impl Fn(Option<Change>) + Send,
    ) {
        let stop = shutdown.clone().wait();
        tokio::pin!(stop);
        loop {
            let stream = async {
                let resp = self
                    .http
                    .get(format!("{}/internal/v1/changes", self.base))
                    .bearer_auth(&self.token)
                    .timeout(Duration::from_secs(24 * 3600))
                    .send()
                    .await
                    .and_then(reqwest::Response::error_for_status);
                let Ok(resp) = resp else { return };
                on_change(None);
                let mut body = resp.bytes_stream();
                let mut buf = String::new();
                while let Some(Ok(chunk)) = body.next().await {
                    buf.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buf.find("\n\n") {
                        let block: String = buf.drain(..end + 2).collect();
                        let mut event = "";
                        let mut data = String::new();
                        for line in block.lines() {
                            if let Some(v) = line.strip_prefix("event:") {
                                event = if v.trim() == "change" {
                                    "change"
                                } else if v.trim() == "reset" {
                                    "reset"
                                } else {
                                    ""
                                };
                            } else if let Some(v) = line.strip_prefix("data:") {
                                data.push_str(v.trim());
                            }
                        }
                        match event {
                            "change" => {
                                if let Ok(c) = serde_json::from_str::<Change>(&data) {
                                    on_change(Some(c));
                                }
                            }
                            "reset" => on_change(None),
                            _ => {}
                        }
                    }
                }
            };
            tokio::select! {
                () = &mut stop => return,
                () = stream => {}
            }
            tokio::select! {
                () = &mut stop => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}
