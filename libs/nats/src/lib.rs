//! Ferry's cluster-mode bus: NATS with JetStream (docs/cluster.md).
//!
//! One place for what every component needs to take part in cluster mode: the `messaging` setting and
//! its NATS connection settings ([`config`]), the subject names that carry Hono's addresses
//! ([`subjects`]), the headers Ferry sets beside a message ([`headers`]), the outcomes carried in replies
//! ([`outcome`]), the JetStream streams it provisions ([`streams`]), the command routes ([`routes`]) and how a
//! command is sent over them ([`commands`]), the AMQP messages read outside a router ([`message`]), and
//! the console's live view ([`tap`]). The components pick embedded or NATS messaging once, at start; nothing on a
//! message's path asks which.

pub mod commands;
pub mod config;
pub mod headers;
pub mod message;
pub mod outcome;
pub mod permissions;
pub mod presence;
pub mod requests;
pub mod routes;
pub mod stats;
pub mod streams;
pub mod subjects;
pub mod tap;

use std::time::Duration;

pub use config::{Messaging, MessagingMode, NatsConfig};

/// Why a NATS operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot connect to NATS: {0}")]
    Connect(#[from] async_nats::ConnectError),
    #[error("NATS round trip: {0}")]
    RoundTrip(String),
    #[error("JetStream stream {stream}: {message}")]
    Stream { stream: String, message: String },
}

/// Connects to NATS with `config`, naming the connection `name` (shown by the server's monitoring, e.g.
/// `ferry-router-0`). The client reconnects by itself for as long as the process runs; the first
/// connection must succeed within the configured timeout.
pub async fn connect(config: &NatsConfig, name: &str) -> Result<async_nats::Client, Error> {
    connect_with(config, name, |o| o).await
}

/// [`connect`], with further client options (an inbox prefix of its own, a subscription capacity).
pub async fn connect_with(
    config: &NatsConfig,
    name: &str,
    tune: impl FnOnce(async_nats::ConnectOptions) -> async_nats::ConnectOptions,
) -> Result<async_nats::Client, Error> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_millis(config.connect_timeout_ms))
        .require_tls(config.tls_required);
    if let Some(user) = &config.user {
        options = options.user_and_password(user.clone(), config.password()?.unwrap_or_default());
    }
    if let Some(ca) = &config.tls_ca {
        options = options.add_root_certificates(ca.clone());
    }
    let client = tune(options).connect(config.urls.as_slice()).await?;
    Ok(client)
}

/// Waits until the NATS server has processed everything `client` sent before this call: its
/// subscriptions are in place and its messages routed.
///
/// `async_nats::Client::flush` only writes the client's buffer to the socket; the server may still
/// be reading it when `flush` returns, so a message another connection publishes right after can
/// find no interest and be dropped. This sends a message to a fresh inbox the client subscribes to
/// and waits for it to come back, which the server does only after everything before it. (Interest
/// reaches the other nodes of a cluster a moment later still.)
pub async fn round_trip(client: &async_nats::Client, within: Duration) -> Result<(), Error> {
    use futures_util::StreamExt;
    let fail = |e: &dyn std::fmt::Display| Error::RoundTrip(e.to_string());
    let inbox = client.new_inbox();
    let mut echo = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| fail(&e))?;
    client
        .publish(inbox, bytes::Bytes::new())
        .await
        .map_err(|e| fail(&e))?;
    client.flush().await.map_err(|e| fail(&e))?;
    match tokio::time::timeout(within, echo.next()).await {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(fail(&"the connection closed")),
        Err(_) => Err(fail(&format!("no echo within {within:?}"))),
    }
}

/// Opens the key-value bucket `config` names, creating it as configured if it does not exist yet.
///
/// Right after a NATS cluster starts, JetStream has no meta leader for a moment and its API requests go
/// unanswered: each attempt is bounded (two seconds) and tried again, for up to half a minute, instead of
/// waiting out the context's full request timeout.
pub async fn open_bucket(
    js: &async_nats::jetstream::Context,
    config: async_nats::jetstream::kv::Config,
) -> Result<async_nats::jetstream::kv::Store, Error> {
    const WITHIN: Duration = Duration::from_secs(30);
    const ATTEMPT: Duration = Duration::from_secs(2);
    let name = config.bucket.clone();
    let failed = |message: String| Error::Stream {
        stream: name.clone(),
        message,
    };
    let attempt = || async {
        if let Ok(store) = js.get_key_value(&name).await {
            return Ok(store);
        }
        js.create_key_value(config.clone())
            .await
            .map_err(|e| failed(e.to_string()))
    };
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let last = match tokio::time::timeout(ATTEMPT, attempt()).await {
            Ok(Ok(store)) => return Ok(store),
            Ok(Err(e)) => e,
            Err(_) => failed(format!("JetStream did not answer within {ATTEMPT:?}")),
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(last);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
