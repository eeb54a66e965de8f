//! The management subcommands: thin calls of the registry's management API that print the JSON answer.

use std::path::PathBuf;

use anyhow::{bail, Context as _};
use reqwest::Method;
use serde_json::{json, Value};

/// Where the registry is and how to authenticate.
#[derive(Debug, Clone, clap::Args)]
pub struct Target {
    /// Base URL of the registry.
    #[arg(
        long,
        global = true,
        env = "FERRY_REGISTRY_URL",
        default_value = "http://127.0.0.1:28080"
    )]
    pub registry_url: String,
    /// Admin token; default: the `admin-token` file in the data directory.
    #[arg(long, global = true, env = "FERRY_ADMIN_TOKEN")]
    pub token: Option<String>,
    /// Data directory to read the admin token from.
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, clap::Subcommand)]
pub enum TenantCmd {
    /// Create a tenant (id generated when omitted).
    Create {
        id: Option<String>,
        #[arg(long)]
        json: Option<String>,
    },
    Get {
        id: String,
    },
    /// Search tenants.
    List {
        #[arg(long)]
        filter: Vec<String>,
        #[arg(long)]
        page_size: Option<u32>,
    },
    /// Replace a tenant's configuration.
    Update {
        id: String,
        #[arg(long)]
        json: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum DeviceCmd {
    /// Create a device (id generated when omitted).
    Create {
        tenant: String,
        id: Option<String>,
        #[arg(long)]
        json: Option<String>,
    },
    Get {
        tenant: String,
        id: String,
    },
    /// Search a tenant's devices.
    List {
        tenant: String,
        #[arg(long)]
        filter: Vec<String>,
        #[arg(long)]
        page_size: Option<u32>,
    },
    Update {
        tenant: String,
        id: String,
        #[arg(long)]
        json: String,
    },
    Delete {
        tenant: String,
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum CredentialsCmd {
    Get {
        tenant: String,
        device: String,
    },
    /// Replace all of a device's credentials with a JSON array.
    Set {
        tenant: String,
        device: String,
        #[arg(long)]
        json: String,
    },
    /// Add a hashed-password credential (keeps the device's other credentials).
    AddPassword {
        tenant: String,
        device: String,
        #[arg(long)]
        auth_id: String,
        #[arg(long)]
        password: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum ApplicationCmd {
    /// Create or replace an application user for AMQP consumers.
    Put {
        name: String,
        #[arg(long)]
        password: String,
        /// A tenant the user may consume from or command (repeat; `*` = every tenant).
        #[arg(long = "tenant", required = true)]
        tenants: Vec<String>,
    },
    Get {
        name: String,
    },
    List,
    Delete {
        name: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum TokenCmd {
    /// Make a token for one tenant's devices, credentials, presence, live messages and commands; prints
    /// it (the only time it is shown).
    Create {
        tenant: String,
        #[arg(long)]
        comment: Option<String>,
        /// When it stops working (RFC 3339, e.g. 2027-01-01T00:00:00Z); default: until deleted.
        #[arg(long)]
        expires_at: Option<String>,
    },
    /// The tenant's tokens, without their secrets.
    List { tenant: String },
    /// Delete a token: refused from the next request on.
    Delete { tenant: String, id: String },
}

fn token(t: &Target) -> anyhow::Result<String> {
    if let Some(tok) = &t.token {
        return Ok(tok.clone());
    }
    let dir = t.data_dir.clone().unwrap_or_else(crate::default_data_dir);
    let path = dir.join("admin-token");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "no admin token: pass --token or FERRY_ADMIN_TOKEN, or run `ferry up` first (it writes {})",
            path.display()
        )
    })?;
    Ok(text.trim().to_owned())
}

fn parse(json: &str) -> anyhow::Result<Value> {
    serde_json::from_str(json).context("--json is not valid JSON")
}

/// One API call; prints the answer and fails on an error status.
async fn call(
    t: &Target,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/v1{path}", t.registry_url.trim_end_matches('/'));
    let mut req = reqwest::Client::new()
        .request(method, &url)
        .bearer_auth(token(t)?);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("cannot reach the registry at {url}"))?;
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let value: Value = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    if !status.is_success() {
        let msg = value
            .get("error")
            .and_then(Value::as_str)
            .map_or_else(|| value.to_string(), str::to_owned);
        bail!(
            "{} {}: {msg}",
            status.as_u16(),
            status.canonical_reason().unwrap_or("")
        );
    }
    Ok(value)
}

fn print(v: &Value) {
    if !v.is_null() {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
    }
}

fn enc(s: &str) -> String {
    percent_encode(s)
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn search_query(filters: &[String], page_size: Option<u32>) -> String {
    let mut q: Vec<String> = filters
        .iter()
        .map(|f| format!("filterJson={}", enc(f)))
        .collect();
    if let Some(n) = page_size {
        q.push(format!("pageSize={n}"));
    }
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

pub async fn tenant(t: &Target, cmd: TenantCmd) -> anyhow::Result<()> {
    let v = match cmd {
        TenantCmd::Create { id, json } => {
            let body = json
                .as_deref()
                .map(parse)
                .transpose()?
                .unwrap_or_else(|| json!({}));
            let path = id.map_or_else(
                || "/tenants".to_owned(),
                |i| format!("/tenants/{}", enc(&i)),
            );
            call(t, Method::POST, &path, Some(body)).await?
        }
        TenantCmd::Get { id } => {
            call(t, Method::GET, &format!("/tenants/{}", enc(&id)), None).await?
        }
        TenantCmd::List { filter, page_size } => {
            call(
                t,
                Method::GET,
                &format!("/tenants{}", search_query(&filter, page_size)),
                None,
            )
            .await?
        }
        TenantCmd::Update { id, json } => {
            call(
                t,
                Method::PUT,
                &format!("/tenants/{}", enc(&id)),
                Some(parse(&json)?),
            )
            .await?
        }
        TenantCmd::Delete { id } => {
            call(t, Method::DELETE, &format!("/tenants/{}", enc(&id)), None).await?
        }
    };
    print(&v);
    Ok(())
}

pub async fn device(t: &Target, cmd: DeviceCmd) -> anyhow::Result<()> {
    let v = match cmd {
        DeviceCmd::Create { tenant, id, json } => {
            let body = json
                .as_deref()
                .map(parse)
                .transpose()?
                .unwrap_or_else(|| json!({}));
            let path = match id {
                Some(i) => format!("/devices/{}/{}", enc(&tenant), enc(&i)),
                None => format!("/devices/{}", enc(&tenant)),
            };
            call(t, Method::POST, &path, Some(body)).await?
        }
        DeviceCmd::Get { tenant, id } => {
            call(
                t,
                Method::GET,
                &format!("/devices/{}/{}", enc(&tenant), enc(&id)),
                None,
            )
            .await?
        }
        DeviceCmd::List {
            tenant,
            filter,
            page_size,
        } => {
            let q = search_query(&filter, page_size);
            call(
                t,
                Method::GET,
                &format!("/devices/{}{q}", enc(&tenant)),
                None,
            )
            .await?
        }
        DeviceCmd::Update { tenant, id, json } => {
            let path = format!("/devices/{}/{}", enc(&tenant), enc(&id));
            call(t, Method::PUT, &path, Some(parse(&json)?)).await?
        }
        DeviceCmd::Delete { tenant, id } => {
            call(
                t,
                Method::DELETE,
                &format!("/devices/{}/{}", enc(&tenant), enc(&id)),
                None,
            )
            .await?
        }
    };
    print(&v);
    Ok(())
}

pub async fn credentials(t: &Target, cmd: CredentialsCmd) -> anyhow::Result<()> {
    let v = match cmd {
        CredentialsCmd::Get { tenant, device } => {
            call(
                t,
                Method::GET,
                &format!("/credentials/{}/{}", enc(&tenant), enc(&device)),
                None,
            )
            .await?
        }
        CredentialsCmd::Set {
            tenant,
            device,
            json,
        } => {
            let path = format!("/credentials/{}/{}", enc(&tenant), enc(&device));
            call(t, Method::PUT, &path, Some(parse(&json)?)).await?
        }
        CredentialsCmd::AddPassword {
            tenant,
            device,
            auth_id,
            password,
        } => {
            let path = format!("/credentials/{}/{}", enc(&tenant), enc(&device));
            // GET returns secret ids without secret data; sending them back keeps the stored secrets.
            let mut creds = call(t, Method::GET, &path, None).await?;
            let list = creds
                .as_array_mut()
                .context("registry returned no credentials list")?;
            list.retain(|c| {
                !(c.get("type").and_then(Value::as_str) == Some("hashed-password")
                    && c.get("auth-id").and_then(Value::as_str) == Some(auth_id.as_str()))
            });
            list.push(json!({
                "type": "hashed-password",
                "auth-id": auth_id,
                "secrets": [{ "pwd-plain": password }],
            }));
            call(t, Method::PUT, &path, Some(creds)).await?
        }
    };
    print(&v);
    Ok(())
}

pub async fn application(t: &Target, cmd: ApplicationCmd) -> anyhow::Result<()> {
    let v = match cmd {
        ApplicationCmd::Put {
            name,
            password,
            tenants,
        } => {
            let body = json!({ "password": password, "tenants": tenants });
            call(
                t,
                Method::PUT,
                &format!("/applications/{}", enc(&name)),
                Some(body),
            )
            .await?
        }
        ApplicationCmd::Get { name } => {
            call(
                t,
                Method::GET,
                &format!("/applications/{}", enc(&name)),
                None,
            )
            .await?
        }
        ApplicationCmd::List => call(t, Method::GET, "/applications", None).await?,
        ApplicationCmd::Delete { name } => {
            call(
                t,
                Method::DELETE,
                &format!("/applications/{}", enc(&name)),
                None,
            )
            .await?
        }
    };
    print(&v);
    Ok(())
}

pub async fn tenant_token(t: &Target, cmd: TokenCmd) -> anyhow::Result<()> {
    let v = match cmd {
        TokenCmd::Create {
            tenant,
            comment,
            expires_at,
        } => {
            let mut body = json!({});
            if let Some(c) = comment {
                body["comment"] = json!(c);
            }
            if let Some(at) = expires_at {
                body["expires-at"] = json!(at);
            }
            call(
                t,
                Method::POST,
                &format!("/tokens/{}", enc(&tenant)),
                Some(body),
            )
            .await?
        }
        TokenCmd::List { tenant } => {
            call(t, Method::GET, &format!("/tokens/{}", enc(&tenant)), None).await?
        }
        TokenCmd::Delete { tenant, id } => {
            call(
                t,
                Method::DELETE,
                &format!("/tokens/{}/{}", enc(&tenant), enc(&id)),
                None,
            )
            .await?
        }
    };
    print(&v);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
        assert_eq!(enc("dev-1.x_y~"), "dev-1.x_y~");
    }

    #[test]
    fn search_query_repeats_filters() {
        let q = search_query(
            &[r#"{"field":"/enabled","value":true}"#.into(), "x".into()],
            Some(5),
        );
        assert!(q.starts_with("?filterJson=%7B"));
        assert!(q.contains("&filterJson=x&pageSize=5"));
    }
}
