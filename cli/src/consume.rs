//! `ferry consume`: receive a tenant's telemetry or events over AMQP 1.0 and print them, one line each.
//!
//! ```sh
//! ferry application put my-app --password s3cret --tenant my-tenant     # once: an application user
//! ferry consume --tenant my-tenant --user my-app --password s3cret       # telemetry, readable lines
//! ferry consume --tenant my-tenant --events --json                        # events, one JSON object a line
//! FERRY_AMQP_USER=my-app FERRY_AMQP_PASSWORD=s3cret ferry consume --tenant my-tenant --count 10
//! ```
//!
//! It logs in to the router (`--amqp`, default `amqp://127.0.0.1:15672`) with SASL PLAIN as an application
//! user, attaches a receiver to `telemetry/T` (or `event/T` with `--events`), and accepts each message once
//! printed. A readable line is `device=d1 content-type=text/plain qos=0 body={"temp": 21}`: the device, the
//! content type, the other application properties, and the body last (UTF-8 text, else `base64:...`).
//! `--json` prints `{"device_id", "content_type", "body", "properties", "annotations", "creation_time"}`
//! (`"body_encoding": "base64"` when the body is not UTF-8). `--count N` exits after N messages; Ctrl-C or
//! SIGTERM detaches cleanly (exit 0; unaccepted events stay stored).
//!
//! The AMQP connection helpers shared with `ferry command` live here too.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use base64::Engine as _;
use fe2o3_amqp::connection::{ConnectionHandle, OpenError};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::link::{ReceiverAttachError, SenderAttachError};
use fe2o3_amqp::sasl_profile::SaslProfile;
use fe2o3_amqp::session::SessionHandle;
use fe2o3_amqp::types::definitions;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId};
use fe2o3_amqp::types::primitives::{Timestamp, Value};
use fe2o3_amqp::{Connection, Receiver, Session};
use serde_json::{json, Map, Value as Json};

/// How to reach the router and log in (`ferry consume`, `ferry command`).
#[derive(Debug, Clone, clap::Args)]
pub struct AmqpArgs {
    /// The router's AMQP endpoint (`amqp://HOST[:PORT]`, port 15672 when omitted; user and password may
    /// be given in it as `amqp://USER:PASSWORD@HOST:PORT`).
    #[arg(long, env = "FERRY_AMQP_URL", default_value = "amqp://127.0.0.1:15672")]
    pub amqp: String,
    /// Application user to log in as (SASL PLAIN).
    #[arg(long, env = "FERRY_AMQP_USER")]
    pub user: Option<String>,
    /// The application user's password.
    #[arg(long, env = "FERRY_AMQP_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
}

/// `ferry consume`.
#[derive(Debug, clap::Args)]
pub struct ConsumeArgs {
    /// The tenant whose messages to receive.
    #[arg(long)]
    pub tenant: String,
    /// Receive events (`event/T`, stored until accepted) instead of telemetry (`telemetry/T`).
    #[arg(long)]
    pub events: bool,
    /// Print one JSON object per message.
    #[arg(long)]
    pub json: bool,
    /// Exit after this many messages.
    #[arg(long)]
    pub count: Option<u64>,
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

/// The router's address, and the credentials to log in with.
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
}

impl AmqpArgs {
    pub(crate) fn endpoint(&self) -> anyhow::Result<Endpoint> {
        let url = url::Url::parse(&self.amqp).with_context(|| {
            format!(
                "--amqp {:?} is not a URL like amqp://127.0.0.1:15672",
                self.amqp
            )
        })?;
        match url.scheme() {
            "amqp" => {}
            "amqps" => bail!(
                "--amqp {}: amqps:// (TLS) is not supported by this command yet; use the plain AMQP listener",
                self.amqp
            ),
            other => bail!("--amqp {}: unknown scheme {other:?}, expected amqp://", self.amqp),
        }
        let host = url
            .host_str()
            .ok_or_else(|| anyhow!("--amqp {}: no host", self.amqp))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(s)
                .decode_utf8_lossy()
                .into_owned()
        };
        let url_user = Some(decode(url.username())).filter(|u| !u.is_empty());
        let url_password = url.password().map(decode);
        let user = self.user.clone().or(url_user);
        let password = self.password.clone().or(url_password);
        let (Some(user), Some(password)) = (user, password) else {
            bail!(
                "no AMQP credentials: pass --user and --password (or FERRY_AMQP_USER / FERRY_AMQP_PASSWORD) of an \
                 application user; create one with `ferry application put NAME --password SECRET --tenant TENANT`"
            );
        };
        Ok(Endpoint {
            host,
            port: url.port().unwrap_or(15672),
            user,
            password,
        })
    }
}

/// Opens a connection (TCP with `TCP_NODELAY`, SASL PLAIN) and begins a session, turning the usual failures
/// into messages a user can act on.
pub(crate) async fn connect(
    args: &AmqpArgs,
    what: &str,
) -> anyhow::Result<(ConnectionHandle<()>, SessionHandle<()>, Endpoint)> {
    let ep = args.endpoint()?;
    let addr = format!("{}:{}", ep.host, ep.port);
    let stream = match tokio::time::timeout(
        Duration::from_secs(10),
        tokio::net::TcpStream::connect((ep.host.as_str(), ep.port)),
    )
    .await
    {
        Err(_) => bail!("cannot connect to the AMQP endpoint {addr}: no answer within 10 s"),
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
            "cannot connect to the AMQP endpoint {addr}: connection refused (is Ferry running? `ferry up` \
             listens on 127.0.0.1:15672; pass --amqp for another router)"
        ),
        Ok(Err(e)) => bail!("cannot connect to the AMQP endpoint {addr}: {e}"),
        Ok(Ok(s)) => s,
    };
    stream.set_nodelay(true).context("cannot set TCP_NODELAY")?;
    let opened = Connection::builder()
        .container_id(format!("ferry-{what}-{}", uuid::Uuid::new_v4()))
        .sasl_profile(SaslProfile::Plain {
            username: ep.user.clone(),
            password: ep.password.clone(),
        })
        .open_with_stream(stream);
    let mut conn = match tokio::time::timeout(Duration::from_secs(10), opened).await {
        Err(_) => bail!("the AMQP endpoint {addr} did not complete the AMQP handshake within 10 s"),
        Ok(Err(OpenError::SaslError { code, .. })) => bail!(
            "authentication failed for user {:?} at {addr} (SASL {code:?}): wrong user name or password. \
             Applications log in as an application user: `ferry application put NAME --password SECRET \
             --tenant TENANT`",
            ep.user
        ),
        Ok(Err(OpenError::ProtocolHeaderMismatch(_))) => {
            bail!("{addr} does not speak plain AMQP 1.0 (a TLS or another protocol's port?)")
        }
        Ok(Err(e)) => bail!("cannot open an AMQP connection to {addr}: {e}"),
        Ok(Ok(c)) => c,
    };
    let session = match Session::begin(&mut conn).await {
        Ok(s) => s,
        Err(e) => {
            let _ = conn.close().await;
            bail!("cannot begin an AMQP session at {addr}: {e}");
        }
    };
    Ok((conn, session, ep))
}

/// Ends the session and closes the connection, ignoring errors (the peer may be gone already).
pub(crate) async fn close(mut conn: ConnectionHandle<()>, mut session: SessionHandle<()>) {
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        let _ = session.end().await;
        let _ = conn.close().await;
    })
    .await;
}

/// A refused attach as a message: not authorized, no such address, or the router's error.
fn refused(
    error: Option<&definitions::Error>,
    debug: String,
    ep: &Endpoint,
    address: &str,
    verb: &str,
) -> anyhow::Error {
    let Some(error) = error else {
        return anyhow!(
            "the router refused to let {:?} {verb} {address}: {debug}",
            ep.user
        );
    };
    let condition = condition_name(&error.condition);
    let description = error
        .description
        .as_deref()
        .map(|d| format!(" ({d})"))
        .unwrap_or_default();
    let tenant = address.split('/').nth(1).unwrap_or_default();
    match condition.as_str() {
        "amqp:unauthorized-access" => anyhow!(
            "not authorized: application user {:?} may not {verb} {address}{description}; it needs tenant \
             {tenant:?} and that operation (`ferry application get {}` shows them)",
            ep.user,
            ep.user
        ),
        "amqp:not-found" => anyhow!("the router has no address {address}{description}"),
        _ => anyhow!("the router refused to let {:?} {verb} {address}: {condition}{description}", ep.user),
    }
}

pub(crate) fn receiver_refused(
    e: &ReceiverAttachError,
    ep: &Endpoint,
    address: &str,
) -> anyhow::Error {
    let error = match e {
        ReceiverAttachError::RemoteClosedWithError(error) => Some(error),
        _ => None,
    };
    refused(error, format!("{e}"), ep, address, "receive from")
}

pub(crate) fn sender_refused(e: &SenderAttachError, ep: &Endpoint, address: &str) -> anyhow::Error {
    let error = match e {
        SenderAttachError::RemoteClosedWithError(error) => Some(error),
        _ => None,
    };
    refused(error, format!("{e}"), ep, address, "send to")
}

/// An error condition's symbol, e.g. `amqp:unauthorized-access`.
pub(crate) fn condition_name(c: &definitions::ErrorCondition) -> String {
    match serde_amqp::to_value(c) {
        Ok(Value::Symbol(s)) => s.0,
        _ => format!("{c:?}"),
    }
}

/// `condition (description)` of an error carried by an outcome.
pub(crate) fn describe_error(e: Option<&definitions::Error>) -> String {
    match e {
        None => "no reason given".to_owned(),
        Some(e) => match &e.description {
            Some(d) => format!("{}: {d}", condition_name(&e.condition)),
            None => condition_name(&e.condition),
        },
    }
}

/// The body's bytes when it is Data sections; `None` for no body; an AMQP value or sequence as JSON text.
pub(crate) fn body_bytes(body: &Body<Value>) -> Option<Vec<u8>> {
    match body {
        Body::Data(batch) => Some(batch.iter().flat_map(|d| d.0.iter().copied()).collect()),
        Body::Value(v) => Some(value_json(&v.0).to_string().into_bytes()),
        Body::Sequence(batch) => Some(
            Json::Array(
                batch
                    .iter()
                    .map(|s| Json::Array(s.0.iter().map(value_json).collect()))
                    .collect(),
            )
            .to_string()
            .into_bytes(),
        ),
        Body::Empty => None,
    }
}

/// A body as text: UTF-8 if it is, else base64 (`true` = base64).
pub(crate) fn body_text(bytes: &[u8]) -> (String, bool) {
    match std::str::from_utf8(bytes) {
        Ok(s) => (s.to_owned(), false),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(bytes),
            true,
        ),
    }
}

/// Keeps a readable line on one line: control characters escaped.
pub(crate) fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

pub(crate) fn timestamp_json(t: &Timestamp) -> Json {
    match chrono::DateTime::from_timestamp_millis(t.milliseconds()) {
        Some(d) => Json::String(d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        None => json!(t.milliseconds()),
    }
}

pub(crate) fn message_id_json(id: &MessageId) -> Json {
    match id {
        MessageId::String(s) => Json::String(s.clone()),
        MessageId::Ulong(n) => json!(n),
        MessageId::Uuid(u) => Json::String(uuid::Uuid::from_bytes(*u.as_inner()).to_string()),
        MessageId::Binary(b) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
    }
}

/// An AMQP value as JSON: numbers, strings, lists and maps as themselves; binary as base64; timestamps
/// as RFC 3339; UUIDs hyphenated.
pub(crate) fn value_json(v: &Value) -> Json {
    match v {
        Value::Null => Json::Null,
        Value::Bool(b) => json!(b),
        Value::Ubyte(n) => json!(n),
        Value::Ushort(n) => json!(n),
        Value::Uint(n) => json!(n),
        Value::Ulong(n) => json!(n),
        Value::Byte(n) => json!(n),
        Value::Short(n) => json!(n),
        Value::Int(n) => json!(n),
        Value::Long(n) => json!(n),
        Value::Float(f) => json!(f.into_inner()),
        Value::Double(f) => json!(f.into_inner()),
        Value::Char(c) => Json::String(c.to_string()),
        Value::Timestamp(t) => timestamp_json(t),
        Value::Uuid(u) => Json::String(uuid::Uuid::from_bytes(*u.as_inner()).to_string()),
        Value::Binary(b) => {
            Json::String(base64::engine::general_purpose::STANDARD.encode(b.as_slice()))
        }
        Value::String(s) => Json::String(s.clone()),
        Value::Symbol(s) => Json::String(s.0.clone()),
        Value::List(l) => Json::Array(l.iter().map(value_json).collect()),
        Value::Array(a) => Json::Array(a.0.iter().map(value_json).collect()),
        Value::Map(m) => Json::Object(
            m.iter()
                .map(|(k, v)| {
                    let key = match value_json(k) {
                        Json::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, value_json(v))
                })
                .collect(),
        ),
        Value::Described(d) => value_json(&d.value),
        other => Json::String(format!("{other:?}")),
    }
}

/// A value for a readable line: strings bare, everything else as JSON.
pub(crate) fn value_text(v: &Value) -> String {
    match value_json(v) {
        Json::String(s) => one_line(&s),
        other => other.to_string(),
    }
}

/// All application properties, in the message's order.
pub(crate) fn properties<T>(m: &Message<T>) -> Vec<(String, Value)> {
    m.application_properties
        .as_ref()
        .map(|p| {
            p.0.iter()
                .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                .collect()
        })
        .unwrap_or_default()
}

/// One received device message as a JSON object.
fn message_json(m: &Message<Body<Value>>) -> Json {
    let props = properties(m);
    let device_id = props
        .iter()
        .find(|(k, _)| k == "device_id")
        .map(|(_, v)| value_json(v))
        .unwrap_or(Json::Null);
    let mut annotations = Map::new();
    if let Some(a) = &m.message_annotations {
        for (k, v) in a.0.iter() {
            let key = match k {
                fe2o3_amqp::types::messaging::annotations::OwnedKey::Symbol(s) => s.0.clone(),
                fe2o3_amqp::types::messaging::annotations::OwnedKey::Ulong(n) => n.to_string(),
            };
            annotations.insert(key, value_json(v));
        }
    }
    let p = m.properties.as_ref();
    let mut out = Map::new();
    out.insert("device_id".into(), device_id);
    out.insert(
        "content_type".into(),
        p.and_then(|p| p.content_type.as_ref())
            .map(|c| Json::String(c.0.clone()))
            .unwrap_or(Json::Null),
    );
    match body_bytes(&m.body) {
        None => {
            out.insert("body".into(), Json::Null);
        }
        Some(bytes) => {
            let (text, base64) = body_text(&bytes);
            out.insert("body".into(), Json::String(text));
            if base64 {
                out.insert("body_encoding".into(), Json::String("base64".into()));
            }
        }
    }
    out.insert(
        "properties".into(),
        Json::Object(
            props
                .iter()
                .map(|(k, v)| (k.clone(), value_json(v)))
                .collect(),
        ),
    );
    out.insert("annotations".into(), Json::Object(annotations));
    out.insert(
        "creation_time".into(),
        p.and_then(|p| p.creation_time.as_ref())
            .map(timestamp_json)
            .unwrap_or(Json::Null),
    );
    Json::Object(out)
}

/// One received device message as a readable line.
fn message_line(m: &Message<Body<Value>>) -> String {
    let props = properties(m);
    let device = props
        .iter()
        .find(|(k, _)| k == "device_id")
        .map(|(_, v)| value_text(v))
        .unwrap_or_else(|| "?".into());
    let content_type = m
        .properties
        .as_ref()
        .and_then(|p| p.content_type.as_ref())
        .map(|c| one_line(&c.0))
        .unwrap_or_else(|| "-".into());
    let mut line = format!("device={device} content-type={content_type}");
    for (k, v) in props.iter().filter(|(k, _)| k != "device_id") {
        line.push_str(&format!(" {}={}", one_line(k), value_text(v)));
    }
    match body_bytes(&m.body) {
        None => line.push_str(" body="),
        Some(bytes) => {
            let (text, base64) = body_text(&bytes);
            if base64 {
                line.push_str(&format!(" body=base64:{text}"));
            } else {
                line.push_str(&format!(" body={}", one_line(&text)));
            }
        }
    }
    line
}

/// Ctrl-C (SIGINT) or SIGTERM; the handlers are installed when it is made, so a signal that comes before
/// the first wait still counts.
struct Stop {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Stop {
    fn new() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Self {
                signals: signal(SignalKind::interrupt())
                    .and_then(|i| Ok((i, signal(SignalKind::terminate())?)))
                    .ok(),
            }
        }
        #[cfg(not(unix))]
        Self {}
    }

    async fn wait(&mut self) {
        #[cfg(unix)]
        if let Some((int, term)) = &mut self.signals {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// `ferry consume`: prints the tenant's telemetry (or events) until `--count` messages or Ctrl-C.
pub async fn consume(args: ConsumeArgs) -> anyhow::Result<()> {
    if args.count == Some(0) {
        return Ok(());
    }
    let kind = if args.events { "event" } else { "telemetry" };
    let address = format!("{kind}/{}", args.tenant);
    let (conn, mut session, ep) = connect(&args.amqp, "consume").await?;
    // Never more credit than messages still wanted, so --count does not take messages it will not print.
    let credit = args.count.map_or(100, |n| n.min(100) as u32);
    let attached = Receiver::builder()
        .name(format!("ferry-consume-{}", uuid::Uuid::new_v4()))
        .source(address.as_str())
        .credit_mode(CreditMode::Auto(credit))
        .attach(&mut session)
        .await;
    let mut receiver = match attached {
        Ok(r) => r,
        Err(e) => {
            let err = receiver_refused(&e, &ep, &address);
            close(conn, session).await;
            return Err(err);
        }
    };
    let mut stop = Stop::new();
    eprintln!(
        "ferry: receiving {kind} of tenant {} from {}:{} as {} (Ctrl-C to stop)",
        args.tenant, ep.host, ep.port, ep.user
    );
    let mut received = 0u64;
    let result = loop {
        let delivery = tokio::select! {
            d = receiver.recv::<Body<Value>>() => d,
            _ = stop.wait() => break Ok(()),
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => break Err(anyhow!("lost the link to {address}: {e}")),
        };
        let m = delivery.message();
        if args.json {
            println!("{}", message_json(m));
        } else {
            println!("{}", message_line(m));
        }
        if let Err(e) = receiver.accept(&delivery).await {
            break Err(anyhow!("cannot accept a message on {address}: {e}"));
        }
        received += 1;
        if args.count.is_some_and(|n| received >= n) {
            break Ok(());
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), receiver.close()).await;
    close(conn, session).await;
    result
}
