//! [`Client`]: one typed method per endpoint of the internal API, no caching.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use ferry_core::ids::{AuthId, DeviceId, TenantId};
use ferry_registry_model::DeviceCredential;
use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// Where the registry is and how long one request may take.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Base URL, e.g. `http://127.0.0.1:28080`.
    pub url: String,
    /// Bearer token of the internal API.
    pub token: String,
    /// Bound on one request (connect + answer); beyond it the registry counts as unavailable. Not applied
    /// to the change stream, which is open for as long as the process runs.
    pub request_timeout: Duration,
    /// CA certificate (PEM) that an `https` registry's certificate must chain to; without it, the
    /// public web roots.
    pub ca_file: Option<PathBuf>,
}

/// The registry could not give an answer: unreachable, timed out, an error status, or a body this client
/// cannot read. Never a denial: callers map it to "service unavailable".
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Connecting, sending or reading failed, or timed out.
    #[error("request failed: {0}")]
    Http(#[from] reqwest::Error),
    /// A status the endpoint does not answer with (a 5xx, or 401 for a wrong internal token).
    #[error("{what}: unexpected status {status}")]
    Status {
        /// The lookup (`tenant`, `credentials`, `assertion`, ...).
        what: &'static str,
        /// The HTTP status.
        status: u16,
    },
    /// A body this client cannot read.
    #[error("{what}: malformed answer: {source}")]
    Malformed {
        /// The lookup (`tenant`, `credentials`, `assertion`, ...).
        what: &'static str,
        /// The parse error.
        #[source]
        source: serde_json::Error,
    },
    /// The CA file could not be used (only when the client is made).
    #[error("registry CA: {0}")]
    Ca(#[from] ferry_core::tls::TlsError),
}

/// What a lookup came back with.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer<T> {
    /// Found (HTTP 200), with the `max-age` of the answer's `Cache-Control`, if it had one.
    Found(T, Option<Duration>),
    /// HTTP 404: unknown (or, for assertions, disabled).
    NotFound,
    /// HTTP 403: known, but not allowed.
    Forbidden,
}

/// A registration assertion as the registry issues it (`POST /internal/v1/assertions/T/D`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IssuedAssertion {
    /// The device the assertion is for.
    #[serde(rename = "device-id")]
    pub device_id: DeviceId,
    /// The signed JWT.
    pub assertion: String,
    /// Expiry (unix seconds).
    pub expires: i64,
    /// Gateways that may act for the device (members of its via-groups included).
    #[serde(default)]
    pub via: Vec<DeviceId>,
    /// The device's default message properties (`content-type`, `ttl`, ...).
    #[serde(default)]
    pub defaults: serde_json::Map<String, serde_json::Value>,
}

/// An application user as the registry reports it after authentication.
#[derive(Debug, Clone, Deserialize)]
pub struct AppUser {
    /// The user's name.
    pub name: String,
    /// Tenants the user may reach (`*`: all).
    pub tenants: Vec<String>,
    /// Operations granted (`telemetry`, `event`, `command`).
    #[serde(default)]
    pub operations: Vec<String>,
}

impl AppUser {
    /// Whether the user may reach `tenant`.
    pub fn allows_tenant(&self, tenant: &TenantId) -> bool {
        self.tenants
            .iter()
            .any(|t| t == "*" || t == tenant.as_str())
    }

    /// Whether the user was granted `operation`.
    pub fn allows(&self, operation: &str) -> bool {
        self.operations.iter().any(|o| o == operation)
    }
}

/// The client; cheap to clone (the connection pools are shared).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    /// Without a total timeout: the change stream is open for as long as the process runs.
    pub(crate) stream_http: reqwest::Client,
}

/// Idle keep-alive connections to the registry kept after a burst: enough for the steady rate of
/// lookups, while a burst of connects (thousands of devices at once) does not leave hundreds of idle
/// connections behind, each holding its buffers (about 18 KiB; bench/REPORT.md, B6).
const MAX_IDLE_CONNECTIONS: usize = 32;

impl Client {
    /// A client of the registry at `config.url`.
    pub fn new(config: &ClientConfig) -> Result<Self, Error> {
        let trust = |mut builder: reqwest::ClientBuilder| -> Result<_, Error> {
            if let Some(ca) = &config.ca_file {
                // Only the given CA: an internal link trusts nothing else.
                builder = builder.tls_built_in_root_certs(false);
                for der in ferry_core::tls::ca_certificates(ca)? {
                    builder = builder.add_root_certificate(reqwest::Certificate::from_der(&der)?);
                }
            }
            Ok(builder)
        };
        let http = trust(
            reqwest::Client::builder()
                .timeout(config.request_timeout)
                .connect_timeout(config.request_timeout)
                .pool_max_idle_per_host(MAX_IDLE_CONNECTIONS)
                .tcp_nodelay(true),
        )?
        .build()?;
        let stream_http = trust(
            reqwest::Client::builder()
                .connect_timeout(config.request_timeout)
                .tcp_nodelay(true),
        )?
        .build()?;
        Ok(Self {
            base: config.url.trim_end_matches('/').to_owned(),
            token: config.token.clone(),
            http,
            stream_http,
        })
    }

    /// The base URL, without a trailing `/`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}/internal/v1/{path}", self.base)
    }

    pub(crate) fn token(&self) -> &str {
        &self.token
    }

    /// The tenant's management body plus its `tenant-id` (`GET /internal/v1/tenants/T`).
    pub async fn tenant(&self, id: &TenantId) -> Result<Answer<serde_json::Value>, Error> {
        let req = self.http.get(self.url(&format!("tenants/{id}")));
        self.lookup(req, "tenant").await
    }

    /// The tenants that trust a CA with this subject DN (RFC 2253), in the registry's order, each as
    /// [`Client::tenant`] returns one.
    pub async fn tenants_by_ca(
        &self,
        subject_dn: &str,
    ) -> Result<Answer<Vec<serde_json::Value>>, Error> {
        #[derive(Deserialize)]
        struct Found {
            tenants: Vec<serde_json::Value>,
        }
        let req = self
            .http
            .get(self.url("tenants"))
            .query(&[("subject-dn", subject_dn)]);
        Ok(match self.lookup::<Found>(req, "tenant").await? {
            Answer::Found(found, max_age) => Answer::Found(found.tenants, max_age),
            Answer::NotFound => Answer::NotFound,
            Answer::Forbidden => Answer::Forbidden,
        })
    }

    /// The credential of `cred_type` with this auth id, hashes included, with its device.
    pub async fn credentials(
        &self,
        tenant: &TenantId,
        cred_type: &str,
        auth_id: &AuthId,
    ) -> Result<Answer<DeviceCredential>, Error> {
        let req = self
            .http
            .get(self.url(&format!("credentials/{tenant}")))
            .query(&[("type", cred_type), ("auth-id", auth_id.as_str())]);
        self.lookup(req, "credentials").await
    }

    /// A registration assertion for `device`, or for `device` through `gateway`.
    pub async fn assertion(
        &self,
        tenant: &TenantId,
        device: &DeviceId,
        gateway: Option<&DeviceId>,
    ) -> Result<Answer<IssuedAssertion>, Error> {
        let mut req = self
            .http
            .post(self.url(&format!("assertions/{tenant}/{device}")));
        if let Some(gw) = gateway {
            req = req.query(&[("gateway", gw.as_str())]);
        }
        self.lookup(req, "assertion").await
    }

    /// The gateways that may act for a device (`via` of its registration assertion, members of its
    /// `viaGroups` included); empty for an unknown or disabled device. Takes the device as the router
    /// has it, unchecked, so it is sent percent-encoded.
    pub async fn via(&self, tenant: &str, device: &str) -> Result<Vec<String>, Error> {
        #[derive(Deserialize)]
        struct Via {
            #[serde(default)]
            via: Vec<String>,
        }
        let path = format!(
            "assertions/{}/{}",
            utf8_percent_encode(tenant, NON_ALPHANUMERIC),
            utf8_percent_encode(device, NON_ALPHANUMERIC),
        );
        let resp = self
            .http
            .post(self.url(&path))
            .bearer_auth(&self.token)
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        Ok(read::<Via>(resp, "via").await?.via)
    }

    /// The registry's public keys for verifying assertions.
    pub async fn jwks(&self) -> Result<ferry_core::assertion::Jwks, Error> {
        let resp = self.http.get(self.url("jwks")).send().await?;
        read(resp, "jwks").await
    }

    /// `Ok(None)` for wrong credentials; `Err` when the registry cannot answer. `source`: the peer's
    /// address, so that the registry also counts failed logins per source.
    pub async fn authenticate_application(
        &self,
        name: &str,
        password: &str,
        source: Option<IpAddr>,
    ) -> Result<Option<AppUser>, Error> {
        let resp = self
            .http
            .post(self.url("applications/authenticate"))
            .bearer_auth(&self.token)
            .json(&serde_json::json!({ "name": name, "password": password, "source": source }))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::FORBIDDEN
            || resp.status() == reqwest::StatusCode::BAD_REQUEST
        {
            return Ok(None);
        }
        Ok(Some(read(resp, "application").await?))
    }

    async fn lookup<T: DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
        what: &'static str,
    ) -> Result<Answer<T>, Error> {
        let resp = req.bearer_auth(&self.token).send().await?;
        match resp.status().as_u16() {
            200 => {
                let max_age = max_age(resp.headers());
                let body = resp.bytes().await?;
                Ok(Answer::Found(parse(&body, what)?, max_age))
            }
            404 => Ok(Answer::NotFound),
            403 => Ok(Answer::Forbidden),
            status => Err(Error::Status { what, status }),
        }
    }
}

/// The body of a successful answer (any 2xx), parsed.
async fn read<T: DeserializeOwned>(
    resp: reqwest::Response,
    what: &'static str,
) -> Result<T, Error> {
    let status = resp.status();
    if !status.is_success() {
        return Err(Error::Status {
            what,
            status: status.as_u16(),
        });
    }
    parse(&resp.bytes().await?, what)
}

fn parse<T: DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|source| Error::Malformed { what, source })
}

/// `max-age` of a `Cache-Control` header.
fn max_age(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|d| d.trim().strip_prefix("max-age="))
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(max_age(&h), None);
        h.insert(
            reqwest::header::CACHE_CONTROL,
            reqwest::header::HeaderValue::from_static("private, max-age=42"),
        );
        assert_eq!(max_age(&h), Some(Duration::from_secs(42)));
    }

    #[test]
    fn app_user_scopes() {
        let user: AppUser =
            serde_json::from_str(r#"{"name":"a","tenants":["t1"],"operations":["telemetry"]}"#)
                .expect("user");
        assert!(user.allows_tenant(&TenantId::new("t1").expect("id")));
        assert!(!user.allows_tenant(&TenantId::new("t2").expect("id")));
        assert!(user.allows("telemetry") && !user.allows("command"));
    }
}
