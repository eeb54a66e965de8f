//! `ferry up --demo`: a tenant, a device with a password and an application user to try Ferry with.
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, Context as _};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

pub const TENANT: &str = "demo";
pub const DEVICE: &str = "demo-device";
pub const AUTH_ID: &str = "demo-device";
pub const APPLICATION: &str = "demo-app";
/// Where the generated passwords are kept, so that a second `ferry up --demo` reuses everything.
pub const FILE: &str = "demo-passwords.json";

/// The demo's passwords (generated once, kept in the data directory).
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Demo {
    pub device_password: String,
    pub application_password: String,
}

/// A password safe to paste unquoted into a shell: 32 hex digits (122 random bits).
fn password() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

struct Api<'a> {
    http: reqwest::Client,
    base: &'a str,
    token: &'a str,
}

impl Api<'_> {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let url = format!("{}/v1{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .bearer_auth(self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("demo: {method} {url}"))?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Ok((status, value))
    }

    /// POST that may find the resource there already (409): both are fine.
    async fn create(&self, path: &str) -> anyhow::Result<()> {
        let (status, body) = self.call(Method::POST, path, Some(json!({}))).await?;
        if status.is_success() || status == StatusCode::CONFLICT {
            return Ok(());
        }
        bail!("demo: creating {path} failed with {status}: {body}")
    }

    async fn put(&self, path: &str, body: Value) -> anyhow::Result<()> {
        let (status, answer) = self.call(Method::PUT, path, Some(body)).await?;
        if !status.is_success() {
            bail!("demo: updating {path} failed with {status}: {answer}");
        }
        Ok(())
    }
}

/// Creates what is missing of the demo tenant, device, credential and application user.
pub async fn ensure(registry: &str, token: &str, data_dir: &Path) -> anyhow::Result<Demo> {
    let file = data_dir.join(FILE);
    let (demo, fresh) = match std::fs::read_to_string(&file) {
        Ok(text) => (
            serde_json::from_str::<Demo>(&text).with_context(|| {
                format!(
                    "{} is not what `ferry up --demo` wrote; delete it to start the demo afresh",
                    file.display()
                )
            })?,
            false,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (
            Demo {
                device_password: password(),
                application_password: password(),
            },
            true,
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    let api = Api {
        http: reqwest::Client::new(),
        base: registry.trim_end_matches('/'),
        token,
    };
    api.create(&format!("/tenants/{TENANT}")).await?;
    api.create(&format!("/devices/{TENANT}/{DEVICE}")).await?;

    // The device's password: set unless it is there from an earlier `ferry up --demo`.
    let creds_path = format!("/credentials/{TENANT}/{DEVICE}");
    let (status, mut creds) = api.call(Method::GET, &creds_path, None).await?;
    if !status.is_success() {
        bail!("demo: reading {creds_path} failed with {status}: {creds}");
    }
    let list = creds
        .as_array_mut()
        .context("demo: the registry returned no credentials list")?;
    let is_demo = |c: &Value| {
        c.get("type").and_then(Value::as_str) == Some("hashed-password")
            && c.get("auth-id").and_then(Value::as_str) == Some(AUTH_ID)
    };
    if fresh || !list.iter().any(is_demo) {
        // Secret ids without secret data keep the device's other stored secrets as they are.
        list.retain(|c| !is_demo(c));
        list.push(json!({
            "type": "hashed-password",
            "auth-id": AUTH_ID,
            "secrets": [{ "pwd-plain": demo.device_password }],
        }));
        api.put(&creds_path, creds).await?;
    }

    let app_path = format!("/applications/{APPLICATION}");
    let (status, app) = api.call(Method::GET, &app_path, None).await?;
    let grants_demo = status.is_success()
        && app["tenants"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == TENANT));
    if fresh || !grants_demo {
        api.put(
            &app_path,
            json!({ "password": demo.application_password, "tenants": [TENANT] }),
        )
        .await?;
    }

    if fresh {
        write_private(&file, &serde_json::to_string_pretty(&demo)?)
            .with_context(|| format!("writing {}", file.display()))?;
    }
    Ok(demo)
}

#[cfg(unix)]
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())
}

#[cfg(not(unix))]
pub(crate) fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    std::fs::write(path, text)
}

impl Demo {
    /// The commands to paste, one a line, each indented by two spaces.
    pub fn instructions(
        &self,
        amqp: SocketAddr,
        mqtt_host: &str,
        mqtt_port: u16,
        http_host: &str,
        http_port: u16,
    ) -> String {
        let amqp_host = if amqp.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            amqp.ip().to_string()
        };
        let (dev_pw, app_pw) = (&self.device_password, &self.application_password);
        format!(
            "Demo: tenant {TENANT}, device {DEVICE} (logs in as {AUTH_ID}@{TENANT}), application user \
             {APPLICATION}; passwords in {FILE} in the data directory.\n\
             In a second terminal, watch the tenant's telemetry (`ferry` is `cargo run --release -p ferry --` \
             until you `cargo install --path cli`):\n\
             \x20 ferry consume --amqp amqp://{amqp_host}:{port} --tenant {TENANT} --user {APPLICATION} --password {app_pw}\n\
             In a third, send telemetry as the device over MQTT and over HTTP:\n\
             \x20 mosquitto_pub -h {mqtt_host} -p {mqtt_port} -u {AUTH_ID}@{TENANT} -P {dev_pw} -t telemetry -m '{{\"temp\": 21}}'\n\
             \x20 curl -i -u {AUTH_ID}@{TENANT}:{dev_pw} -H 'content-type: application/json' --data-binary '{{\"temp\": 22}}' http://{http_host}:{http_port}/telemetry",
            port = amqp.port(),
        )
    }
}
