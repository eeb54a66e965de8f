//! Sending a command over NATS as a router does (docs/cluster.md "Routers on NATS"): where it goes
//! ([`pick_gateway`], [`target`]), the request to the adapter instance and what its answer means
//! ([`request`]); and, on top, [`Sender`], which the registry's console uses in cluster mode to send a
//! command and wait for the device's response on a reply subject of its own.
//!
//! The routers keep the route bucket mirrored in memory; the console's few commands read the keys they
//! need instead (the device's route, then its last-known gateway and its gateways' routes).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use ferry_core::console::{CommandResponse, CommandResult, TAP_PAYLOAD_MAX};
use ferry_core::ids::{DeviceId, TenantId};
use futures_util::StreamExt;
use tokio::sync::Semaphore;

use crate::outcome::Outcome;
use crate::routes::{self, RouteKind};
use crate::{message, subjects, Error};

/// The gateway that gets a command for a device without a subscription of its own, among the device's
/// gateways `via` (HONO-CONTRACT §2.2): its last-known gateway `last` when that one subscribed for all
/// its devices, else one of the subscribed ones, the `random`-th modulo their number. `subscribed`
/// says where a gateway's subscription is (`None`: it has none). The answer is the gateway's index in
/// `via`, and where its subscription is.
pub fn pick_gateway<V: AsRef<str>, I>(
    last: Option<&str>,
    via: &[V],
    mut subscribed: impl FnMut(&str) -> Option<I>,
    random: usize,
) -> Option<(usize, I)> {
    if let Some(last) = last {
        if let Some(i) = via.iter().position(|g| g.as_ref() == last) {
            if let Some(at) = subscribed(last) {
                return Some((i, at));
            }
        }
    }
    let mut candidates: Vec<(usize, I)> = via
        .iter()
        .enumerate()
        .filter_map(|(i, g)| subscribed(g.as_ref()).map(|at| (i, at)))
        .collect();
    if candidates.is_empty() {
        return None;
    }
    let index = random % candidates.len();
    Some(candidates.swap_remove(index))
}

/// Where a command for a device goes: the adapter instance, and the gateway it goes to for the device
/// (`None`: the device's own subscription).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub instance: String,
    pub gateway: Option<String>,
}

/// Gateways of one device whose routes [`target`] reads at most (a longer `via` is cut).
pub const MAX_GATEWAY_LOOKUPS: usize = 32;

async fn value(store: &kv::Store, key: &str) -> Result<Option<String>, Error> {
    let failed = |e: String| Error::Stream {
        stream: routes::BUCKET.to_owned(),
        message: e,
    };
    let v = store.get(key).await.map_err(|e| failed(e.to_string()))?;
    Ok(v.and_then(|b| String::from_utf8(b.to_vec()).ok()))
}

/// Reads where `device`'s commands go from the route bucket: its own route, else (with its gateways,
/// which `via` gives when asked) its last-known gateway's or another gateway's route for all devices.
/// `None`: nobody serves it.
pub async fn target<F: std::future::Future<Output = Vec<String>>>(
    store: &kv::Store,
    tenant: &str,
    device: &str,
    via: F,
) -> Result<Option<Target>, Error> {
    if let Some(instance) = value(store, &routes::key(RouteKind::Device, tenant, device)).await? {
        return Ok(Some(Target {
            instance,
            gateway: None,
        }));
    }
    let mut via = via.await;
    if via.is_empty() {
        return Ok(None);
    }
    via.truncate(MAX_GATEWAY_LOOKUPS);
    let last = value(store, &routes::key(RouteKind::LastGateway, tenant, device)).await?;
    let mut subscribed = std::collections::HashMap::new();
    for g in &via {
        if let Some(instance) = value(store, &routes::key(RouteKind::Gateway, tenant, g)).await? {
            subscribed.insert(g.clone(), instance);
        }
    }
    let random = usize::try_from(rand::random::<u32>()).unwrap_or(0);
    Ok(
        pick_gateway(last.as_deref(), &via, |g| subscribed.remove(g), random).map(
            |(i, instance)| Target {
                instance,
                gateway: via.get(i).cloned(),
            },
        ),
    )
}

/// What became of a command request to an adapter instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The instance settled it with the device's outcome.
    Settled(Outcome),
    /// Nobody listens on the instance's subject: the instance is gone (its routes are stale).
    Gone,
    /// No answer in time.
    TimedOut,
    /// The request failed otherwise, or the answer was not an outcome.
    Failed(String),
}

/// Sends the command `payload` (an AMQP message, [`message::command`]) to adapter instance `instance`
/// and waits up to `timeout` for its answer.
pub async fn request(
    client: &async_nats::Client,
    instance: &str,
    payload: Bytes,
    timeout: Duration,
) -> Answer {
    let request = async_nats::Request::new()
        .payload(payload)
        .timeout(Some(timeout));
    match client
        .send_request(subjects::command(instance), request)
        .await
    {
        Ok(answer) => match Outcome::decode(&answer.payload) {
            Some(o) => Answer::Settled(o),
            None => Answer::Failed("the answer is not an outcome".into()),
        },
        Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => Answer::Gone,
        Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => Answer::TimedOut,
        Err(e) => Answer::Failed(e.to_string()),
    }
}

/// A command the console sends.
#[derive(Debug, Clone)]
pub struct Command {
    pub tenant: TenantId,
    pub device: DeviceId,
    pub name: String,
    pub content_type: Option<String>,
    pub payload: Vec<u8>,
    /// `false`: one-way; no response is awaited.
    pub expect_response: bool,
    pub timeout: Duration,
}

/// Console commands in flight at once per registry; more are refused (503), as in embedded mode.
pub const MAX_IN_FLIGHT: usize = 64;

/// Sends the console's commands over NATS (cluster mode).
#[derive(Debug, Clone)]
pub struct Sender {
    client: async_nats::Client,
    routes: kv::Store,
    slots: Arc<Semaphore>,
}

fn result(
    outcome: &str,
    error: Option<String>,
    response: Option<CommandResponse>,
) -> CommandResult {
    CommandResult {
        outcome: outcome.to_owned(),
        error,
        response,
    }
}

fn settled(o: Outcome) -> CommandResult {
    match o {
        Outcome::Accepted => result("accepted", None, None),
        Outcome::Released => result("released", None, None),
        Outcome::Modified => result("modified", None, None),
        Outcome::Rejected {
            condition,
            description,
        } => result("rejected", description.or(condition), None),
    }
}

fn shown(r: message::Response) -> CommandResponse {
    let body = &r.body[..r.body.len().min(TAP_PAYLOAD_MAX)];
    CommandResponse {
        status: r.status,
        content_type: r.content_type,
        payload: String::from_utf8_lossy(body).into_owned(),
    }
}

impl Sender {
    /// Opens the route bucket (read only).
    pub async fn open(client: async_nats::Client, replicas: usize) -> Result<Self, Error> {
        let js = async_nats::jetstream::new(client.clone());
        let routes = routes::bucket(&js, replicas).await?;
        Ok(Self {
            client,
            routes,
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        })
    }

    /// Sends `command` and waits for what becomes of it; `via` gives the device's gateways when its
    /// own route is missing. `None` when [`MAX_IN_FLIGHT`] commands are in flight already.
    pub async fn send<F: std::future::Future<Output = Vec<String>>>(
        &self,
        command: Command,
        via: F,
    ) -> Option<CommandResult> {
        let _slot = self.slots.clone().try_acquire_owned().ok()?;
        let deadline = tokio::time::Instant::now() + command.timeout;
        Some(self.send_inner(&command, via, deadline).await)
    }

    async fn send_inner<F: std::future::Future<Output = Vec<String>>>(
        &self,
        c: &Command,
        via: F,
        deadline: tokio::time::Instant,
    ) -> CommandResult {
        let timed_out = || {
            result(
                "timeout",
                Some(format!("no outcome within {} ms", c.timeout.as_millis())),
                None,
            )
        };
        let not_connected = || {
            result(
                "released",
                Some("the device is not connected for commands".into()),
                None,
            )
        };
        let found = tokio::time::timeout_at(
            deadline,
            target(&self.routes, c.tenant.as_str(), c.device.as_str(), via),
        );
        let target = match found.await {
            Ok(Ok(Some(t))) => t,
            Ok(Ok(None)) => return not_connected(),
            Ok(Err(e)) => return result("released", Some(format!("command routes: {e}")), None),
            Err(_) => return timed_out(),
        };
        let id = format!("{:032x}", rand::random::<u128>());
        let reply_id = format!("ferry-console-{id}");
        let reply_to = format!("command_response/{}/{reply_id}", c.tenant);
        let mut responses = if c.expect_response {
            let subject = subjects::command_response(c.tenant.as_str(), &reply_id);
            match self.client.subscribe(subject).await {
                Ok(s) => Some(s),
                Err(e) => return result("released", Some(e.to_string()), None),
            }
        } else {
            None
        };
        let payload = match message::command(&message::Command {
            message_id: &id,
            tenant: c.tenant.as_str(),
            device: c.device.as_str(),
            name: &c.name,
            content_type: c.content_type.as_deref(),
            payload: &c.payload,
            reply_to: c.expect_response.then_some(reply_to.as_str()),
            via: target.gateway.as_deref(),
        }) {
            Ok(p) => Bytes::from(p),
            Err(e) => return result("rejected", Some(format!("cannot encode: {e}")), None),
        };
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let sent = request(&self.client, &target.instance, payload, left);
        tokio::pin!(sent);
        // The instance's answer (the device's outcome) and the device's response may come in either
        // order; a response means the device took the command.
        let mut accepted = false;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => {
                    return if accepted {
                        let why = format!("the device sent no response within {} ms", c.timeout.as_millis());
                        result("accepted", Some(why), None)
                    } else {
                        timed_out()
                    };
                }
                answer = &mut sent, if !accepted => match answer {
                    Answer::Settled(Outcome::Accepted) if responses.is_some() => accepted = true,
                    Answer::Settled(o) => return settled(o),
                    Answer::Gone => return not_connected(),
                    Answer::TimedOut => return timed_out(),
                    Answer::Failed(e) => return result("released", Some(e), None),
                },
                m = next(&mut responses) => {
                    let Some(m) = m else {
                        return result("released", Some("the reply subscription ended".into()), None);
                    };
                    let read = message::response(&m.payload)
                        .filter(|r| r.to.as_deref() == Some(reply_to.as_str()));
                    let answer = if read.is_some() {
                        Outcome::Accepted
                    } else {
                        Outcome::Rejected {
                            condition: Some("amqp:decode-error".into()),
                            description: Some("to must be command_response/TENANT/REPLY_ID".into()),
                        }
                    };
                    if let Some(reply) = m.reply {
                        let _ = self.client.publish(reply, answer.encode()).await;
                    }
                    if let Some(r) = read {
                        return result("accepted", None, Some(shown(r)));
                    }
                }
            }
        }
    }
}

/// The next message of an optional subscription (pending forever without one).
async fn next(s: &mut Option<async_nats::Subscriber>) -> Option<async_nats::Message> {
    match s {
        Some(s) => s.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_known_gateway_wins_when_it_subscribed() {
        let via = ["g1", "g2", "g3"];
        let subscribed = |g: &str| (g != "g1").then(|| format!("i-{g}"));
        assert_eq!(
            pick_gateway(Some("g3"), &via, subscribed, 0),
            Some((2, "i-g3".to_owned()))
        );
        // Not subscribed, or not among the device's gateways: one of those that are.
        for last in [Some("g1"), Some("elsewhere"), None] {
            let mut picked = std::collections::HashSet::new();
            for random in 0..4 {
                let (i, at) = pick_gateway(last, &via, subscribed, random).expect("one");
                assert_eq!(at, format!("i-{}", via[i]));
                picked.insert(i);
            }
            assert_eq!(picked, [1, 2].into(), "both subscribed gateways get picked");
        }
        assert_eq!(pick_gateway(None, &["g1"], subscribed, 7), None);
        assert_eq!(pick_gateway::<&str, String>(None, &[], subscribed, 0), None);
    }
}
