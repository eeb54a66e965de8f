//! Who may do what on NATS: one user per component kind, with the subjects it needs and nothing more
//! (docs/cluster.md "Security"). Rendered into nats-server's `authorization` block by `ferry up
//! --cluster` (and, later, the operator), and tested against a real server.
//!
//! - **Adapters** publish device traffic (`ferry.telemetry.>`, `ferry.event.>`, `ferry.command_response.>`),
//!   take commands (`ferry.command.>`), write command routes, and create and fill the tenants' event
//!   streams. They cannot subscribe to telemetry, events or responses, and cannot read a stream's
//!   messages through the JetStream API (no consumer can be created).
//! - **Routers** take telemetry and responses, pull events through the shared durable consumers and
//!   acknowledge them, send commands, read and prune command routes, and write presence. They cannot
//!   publish telemetry or events as a device.
//!
//! - **Registries** read device presence (the presence bucket) and command routes, watch the tenants'
//!   telemetry and events for the console's live view (plain subscriptions), send the console's
//!   commands to adapter instances and take their responses. They cannot publish device traffic, write
//!   presence or routes, or read any inbox but their own ([`REGISTRY_INBOX`]).
//!
//! Adapters and routers write presence. All answer requests on `_INBOX.>` (NATS's reply subjects).

use crate::presence::BUCKET as PRESENCE;
use crate::routes::BUCKET;

/// Publish subjects that open, read and write the key-value bucket `bucket`.
fn bucket_access(bucket: &str) -> Vec<String> {
    let stream = format!("KV_{bucket}");
    vec![
        format!("$KV.{bucket}.>"),
        format!("$JS.API.STREAM.CREATE.{stream}"),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
    ]
}

/// Subjects a component kind may publish to and subscribe to, and what it may never publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub publish_deny: Vec<String>,
    pub subscribe: Vec<String>,
}

fn own(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

/// The adapters' permissions.
pub fn adapter() -> Permissions {
    Permissions {
        publish: [
            "ferry.telemetry.>",
            "ferry.event.>",
            "ferry.command_response.>",
            "_INBOX.>",
            "$JS.API.INFO",
            // Subject wildcards match whole tokens only, so "the FERRY_EVENTS_ streams" cannot be
            // said: an adapter may create and update any stream. It still cannot read one (no
            // consumer, no direct or message get but the route bucket's), so the most a stolen
            // adapter credential does with this is fill storage, not read device traffic.
            "$JS.API.STREAM.CREATE.*",
            "$JS.API.STREAM.UPDATE.*",
            "$JS.API.STREAM.INFO.*",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .chain(bucket_access(BUCKET))
        .chain(bucket_access(PRESENCE))
        // Answers to the registry's console commands, which come from its own inbox.
        .chain([format!("{REGISTRY_INBOX}.>")])
        .collect(),
        publish_deny: Vec::new(),
        subscribe: own(&["ferry.command.>", "_INBOX.>", crate::stats::STATS]),
    }
}

/// The routers' permissions.
pub fn router() -> Permissions {
    Permissions {
        publish: own(&[
            "ferry.command.>",
            "_INBOX.>",
            "$JS.API.>",
            "$JS.ACK.>",
            &format!("$KV.{BUCKET}.>"),
            // Presence: ttd, Hono's connection events and last-seen (docs/console.md).
            &format!("$KV.{PRESENCE}.>"),
            // Answers to the registry's stats requests.
            &format!("{REGISTRY_INBOX}.>"),
            // Copies of forwarded telemetry for the console's live views.
            "ferry.tap.telemetry.>",
        ]),
        publish_deny: own(&["ferry.telemetry.>", "ferry.event.>"]),
        subscribe: own(&[
            "ferry.telemetry.>",
            "ferry.command_response.>",
            "_INBOX.>",
            crate::stats::STATS,
            crate::subjects::TAP_WATCHING,
        ]),
    }
}

/// The registry's inbox prefix (its connections set it with `custom_inbox_prefix`): its request
/// replies and JetStream deliveries come there, and it may subscribe to nothing else of NATS's inboxes.
pub const REGISTRY_INBOX: &str = "_INBOX_ferry_registry";

/// The registries' permissions: read the presence bucket (a key, and its list of keys through an
/// ordered consumer) and the command routes (keys); watch telemetry and events and take command
/// responses (the console's live view and commands); send commands and answer the adapters' response
/// requests. Never publish device traffic, never write a bucket.
pub fn registry() -> Permissions {
    let stream = format!("KV_{PRESENCE}");
    let mut publish = bucket_access(PRESENCE);
    publish.extend(bucket_access(BUCKET));
    // Writing presence and routes is the adapters' and routers' job.
    publish.retain(|s| !s.starts_with("$KV."));
    publish.extend([
        "ferry.command.>".to_owned(),
        // The console's charts ask every adapter and router for a tenant's figures.
        crate::stats::STATS.to_owned(),
        // The live view tells the routers which tenant's telemetry to copy for it.
        crate::subjects::TAP_WATCHING.to_owned(),
        // Answers to the adapters' response requests, which carry their inboxes as reply subjects.
        "_INBOX.>".to_owned(),
        // Its own inbox (a round trip to the server, `ferry_nats::round_trip`).
        format!("{REGISTRY_INBOX}.>"),
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]);
    Permissions {
        publish,
        publish_deny: own(&[
            "ferry.telemetry.>",
            "ferry.event.>",
            "ferry.command_response.>",
            "$KV.>",
        ]),
        subscribe: vec![
            "ferry.tap.telemetry.*".to_owned(),
            "ferry.event.*".to_owned(),
            "ferry.command_response.*.*".to_owned(),
            format!("{REGISTRY_INBOX}.>"),
        ],
    }
}

/// nats-server's `authorization { users = [...] }` block for the given users (name, password,
/// permissions). Names and passwords are quoted; a `"` or `\` in them is refused (`None`).
pub fn authorization(users: &[(&str, &str, &Permissions)]) -> Option<String> {
    let quote = |s: &str| (!s.contains(['"', '\\', '\n'])).then(|| format!("\"{s}\""));
    let list = |l: &[String]| -> Option<String> {
        let items: Option<Vec<String>> = l.iter().map(|s| quote(s)).collect();
        Some(format!("[{}]", items?.join(", ")))
    };
    let mut out = String::from("authorization {\n  users = [\n");
    for (user, password, p) in users {
        let mut publish = format!("allow: {}", list(&p.publish)?);
        if !p.publish_deny.is_empty() {
            publish.push_str(&format!(", deny: {}", list(&p.publish_deny)?));
        }
        out.push_str(&format!(
            "    {{ user: {}, password: {}, permissions: {{ publish: {{ {publish} }}, subscribe: {{ allow: {} }} }} }}\n",
            quote(user)?,
            quote(password)?,
            list(&p.subscribe)?,
        ));
    }
    out.push_str("  ]\n}\n");
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_cannot_break_out_of_the_block() {
        assert!(authorization(&[("a\"b", "pw", &adapter())]).is_none());
        assert!(authorization(&[("a", "p\\w", &router())]).is_none());
        let block = authorization(&[("ferry-adapter", "pw", &adapter())]).expect("renders");
        assert!(block.contains("user: \"ferry-adapter\""), "{block}");
    }
}
