//! `ferry command`: send a command to a device over AMQP 1.0, one-way or waiting for the device's response.
//!
//! ```sh
//! ferry command --tenant my-tenant --device my-device --name setBrightness --payload '{"brightness": 80}' \
//!     --content-type application/json --user my-app --password s3cret        # one-way: prints the outcome
//! ferry command --tenant my-tenant --device my-device --name getState --wait --timeout 30   # prints the response
//! ```
//!
//! Logs in like `ferry consume` (`--amqp`, `--user`/`--password` or `FERRY_AMQP_USER`/`FERRY_AMQP_PASSWORD`)
//! and sends on `command/T` a message with `to` = `command/T/D`, `subject` = the command name, a generated
//! `message-id`, and the payload as one Data section (empty without `--payload`).
//!
//! One-way, it prints the router's outcome: `accepted` (exit 0), `released` (the device is not connected,
//! or its adapter did not take the command; retrying later may work) or `rejected` with the reason (both
//! exit non-zero). With `--wait` it first attaches a receiver on `command_response/T/<random reply id>`, sets
//! `reply-to` to it, and prints the device's response: `status=200 content-type=... body=...` (`--json`:
//! `{"status", "content_type", "body", "properties", "correlation_id"}`); a status outside 2xx, or no
//! response within `--timeout` seconds (default 10), exits non-zero.

use std::time::Duration;

use anyhow::{anyhow, bail};
use fe2o3_amqp::link::receiver::CreditMode;
use fe2o3_amqp::types::messaging::{Body, Message, MessageId, Outcome, Properties};
use fe2o3_amqp::types::primitives::{Binary, Value};
use fe2o3_amqp::{Receiver, Sender};
use serde_json::{json, Map, Value as Json};
use tokio::time::Instant;

use crate::consume::{
    body_bytes, body_text, close, connect, describe_error, message_id_json, one_line, properties,
    receiver_refused, sender_refused, value_json, value_text, AmqpArgs,
};

/// `ferry command`.
#[derive(Debug, clap::Args)]
pub struct CommandArgs {
    /// The device's tenant.
    #[arg(long)]
    pub tenant: String,
    /// The device to command.
    #[arg(long)]
    pub device: String,
    /// The command's name (the message's subject).
    #[arg(long)]
    pub name: String,
    /// The command's payload (sent as one Data section).
    #[arg(long)]
    pub payload: Option<String>,
    /// The payload's content type.
    #[arg(long)]
    pub content_type: Option<String>,
    /// Ask the device for a response and print it.
    #[arg(long)]
    pub wait: bool,
    /// Seconds to wait for the command's outcome and, with --wait, its response.
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print the outcome (and the response) as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub amqp: AmqpArgs,
}

/// `ferry command`.
pub async fn command(args: CommandArgs) -> anyhow::Result<()> {
    if args.name.is_empty() {
        bail!("--name must not be empty: it is the command's name (the message's subject)");
    }
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let (conn, mut session, ep) = connect(&args.amqp, "command").await?;
    let result = async {
        let reply = if args.wait {
            let address = format!("command_response/{}/{}", args.tenant, uuid::Uuid::new_v4());
            let receiver = Receiver::builder()
                .name(format!("ferry-command-response-{}", uuid::Uuid::new_v4()))
                .source(address.as_str())
                .credit_mode(CreditMode::Auto(10))
                .attach(&mut session)
                .await
                .map_err(|e| receiver_refused(&e, &ep, &address))?;
            Some((address, receiver))
        } else {
            None
        };
        let address = format!("command/{}", args.tenant);
        let mut sender = Sender::attach(
            &mut session,
            format!("ferry-command-{}", uuid::Uuid::new_v4()),
            address.as_str(),
        )
        .await
        .map_err(|e| sender_refused(&e, &ep, &address))?;

        let message_id = uuid::Uuid::new_v4().to_string();
        let mut props = Properties::builder()
            .to(format!("command/{}/{}", args.tenant, args.device))
            .subject(args.name.clone())
            .message_id(message_id.clone());
        if let Some(ct) = &args.content_type {
            props = props.content_type(ct.as_str());
        }
        if let Some((reply_to, _)) = &reply {
            props = props.reply_to(reply_to.clone());
        }
        let payload = args.payload.clone().unwrap_or_default().into_bytes();
        let message = Message::builder()
            .properties(props.build())
            .data(Binary::from(payload))
            .build();
        let outcome = match tokio::time::timeout_at(deadline, sender.send(message)).await {
            Err(_) => bail!(
                "no outcome for command {:?} to device {} within {} s",
                args.name,
                args.device,
                args.timeout
            ),
            Ok(Err(e)) => bail!("cannot send the command on {address}: {e}"),
            Ok(Ok(o)) => o,
        };
        let (name, reason, failure) = match &outcome {
            Outcome::Accepted(_) => ("accepted", None, None),
            Outcome::Released(_) => (
                "released",
                Some("device not connected".to_owned()),
                Some(format!(
                    "command not delivered: device {} of tenant {} is not connected (or its adapter did not \
                     take the command); it may be retried later",
                    args.device, args.tenant
                )),
            ),
            Outcome::Rejected(r) => {
                let why = describe_error(r.error.as_ref());
                (
                    "rejected",
                    Some(why.clone()),
                    Some(format!("command rejected: {why}")),
                )
            }
            Outcome::Modified(_) => (
                "modified",
                Some("not delivered".to_owned()),
                Some("command not delivered (modified)".to_owned()),
            ),
            #[allow(unreachable_patterns)]
            _ => ("unknown", None, Some(format!("unexpected outcome {outcome:?}"))),
        };
        let _ = sender.close().await;
        if failure.is_some() || reply.is_none() {
            if args.json {
                let mut o = Map::new();
                o.insert("outcome".into(), json!(name));
                if let Some(r) = &reason {
                    o.insert("reason".into(), json!(r));
                }
                o.insert("message_id".into(), json!(message_id));
                println!("{}", Json::Object(o));
            } else {
                match &reason {
                    Some(r) => println!("{name}: {r}"),
                    None => println!("{name}"),
                }
            }
            return match failure {
                Some(f) => Err(anyhow!(f)),
                None => Ok(()),
            };
        }
        let Some((reply_to, mut receiver)) = reply else {
            return Ok(());
        };
        let expected = MessageId::String(message_id.clone());
        let response = loop {
            let delivery = match tokio::time::timeout_at(deadline, receiver.recv::<Body<Value>>()).await {
                Err(_) => bail!(
                    "the command was accepted, but no response from device {} within {} s (on {reply_to})",
                    args.device,
                    args.timeout
                ),
                Ok(Err(e)) => bail!("lost the link to {reply_to}: {e}"),
                Ok(Ok(d)) => d,
            };
            let _ = receiver.accept(&delivery).await;
            let correlation = delivery
                .message()
                .properties
                .as_ref()
                .and_then(|p| p.correlation_id.clone());
            // A stray response (another command's, on a reply address nobody else knows): skip it.
            if correlation.as_ref().is_none_or(|c| *c == expected) {
                break delivery.into_message();
            }
        };
        let _ = receiver.close().await;
        print_response(&response, args.json)
    }
    .await;
    close(conn, session).await;
    result
}

/// Prints a command response; fails unless its status is 2xx.
fn print_response(m: &Message<Body<Value>>, json_out: bool) -> anyhow::Result<()> {
    let props = properties(m);
    let status = props
        .iter()
        .find(|(k, _)| k == "status")
        .and_then(|(_, v)| match v {
            Value::Int(n) => Some(i64::from(*n)),
            Value::Long(n) => Some(*n),
            Value::Uint(n) => Some(i64::from(*n)),
            Value::Short(n) => Some(i64::from(*n)),
            Value::Ushort(n) => Some(i64::from(*n)),
            Value::String(s) => s.parse().ok(),
            _ => None,
        });
    let content_type = m
        .properties
        .as_ref()
        .and_then(|p| p.content_type.as_ref())
        .map(|c| c.0.clone());
    let body = body_bytes(&m.body).map(|b| body_text(&b));
    if json_out {
        let mut o = Map::new();
        o.insert("outcome".into(), json!("accepted"));
        o.insert("status".into(), json!(status));
        o.insert("content_type".into(), json!(content_type));
        match &body {
            None => {
                o.insert("body".into(), Json::Null);
            }
            Some((text, base64)) => {
                o.insert("body".into(), json!(text));
                if *base64 {
                    o.insert("body_encoding".into(), json!("base64"));
                }
            }
        }
        o.insert(
            "properties".into(),
            Json::Object(
                props
                    .iter()
                    .map(|(k, v)| (k.clone(), value_json(v)))
                    .collect(),
            ),
        );
        o.insert(
            "correlation_id".into(),
            m.properties
                .as_ref()
                .and_then(|p| p.correlation_id.as_ref())
                .map(message_id_json)
                .unwrap_or(Json::Null),
        );
        println!("{}", Json::Object(o));
    } else {
        let mut line = format!(
            "status={} content-type={}",
            status.map_or_else(|| "-".to_owned(), |s| s.to_string()),
            content_type
                .as_deref()
                .map_or_else(|| "-".to_owned(), one_line)
        );
        for (k, v) in props.iter().filter(|(k, _)| k != "status") {
            line.push_str(&format!(" {}={}", one_line(k), value_text(v)));
        }
        match &body {
            None => line.push_str(" body="),
            Some((text, true)) => line.push_str(&format!(" body=base64:{text}")),
            Some((text, false)) => line.push_str(&format!(" body={}", one_line(text))),
        }
        println!("{line}");
    }
    match status {
        Some(s) if (200..300).contains(&s) => Ok(()),
        Some(s) => bail!("the device answered with status {s}"),
        None => bail!("the response has no status application property"),
    }
}
