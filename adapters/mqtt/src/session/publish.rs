//! PUBLISH: telemetry, events and command responses from the device, through the shared device
//! pipeline; their outcomes become PUBACKs, error-topic reports or a disconnect (HONO-CONTRACT §2.2).

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use ferry_adapter_core::downstream::{MessageKind, PropertyValue};
use ferry_adapter_core::metrics::Status;
use ferry_adapter_core::pipeline::{self, Now, Outcome, Refused, Subject, TenantCheck, Upload};
use ferry_core::ids::{DeviceId, TenantId};

use super::{Ack, Background, Done, ErrorReport, InOrder, Pending, Report, Session, SessionError};
use crate::topic::{self, Endpoint, OnError};
use crate::wire::{Outgoing, Reason, Version};

/// How often a gateway sending for a device tells the router again that it is the device's last-known
/// gateway.
pub(super) const LAST_GATEWAY_EVERY: Duration = Duration::from_secs(10);

/// Most devices a session remembers having told the router about.
pub(super) const MAX_TOLD_LAST_GATEWAY: usize = 10_000;

impl Session {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_publish(
        &mut self,
        topic_bytes: &[u8],
        qos: u8,
        pkid: u16,
        payload: Bytes,
        content_type: Option<String>,
        pending: &mut InOrder,
        background: &mut Background,
    ) -> Result<(), SessionError> {
        // HONO-CONTRACT §2.2: an oversized payload is discarded and the device disconnected, whatever
        // the endpoint (command responses included).
        if payload.len() > self.shared.config.max_payload_bytes {
            return Err(SessionError::TooLarge);
        }
        let topic_str = std::str::from_utf8(topic_bytes)
            .map_err(|_| SessionError::Closed("topic is not UTF-8"))?;
        let parsed = topic::parse_publish(topic_str)
            .map_err(|_| SessionError::Closed("not a Hono topic"))?;
        if qos > 1 {
            return Err(SessionError::Closed("QoS 2 is not supported"));
        }
        let kind = match parsed.endpoint {
            Endpoint::Telemetry => MessageKind::Telemetry,
            Endpoint::Event if qos == 1 => MessageKind::Event,
            Endpoint::Event => return Err(SessionError::Closed("events need QoS 1")),
            Endpoint::CommandResponse { request_id, status } => {
                return self.on_response(
                    &parsed,
                    request_id,
                    status,
                    qos,
                    pkid,
                    payload,
                    content_type,
                    pending,
                    background,
                )
            }
        };
        let (tenant, device, gateway) = self.subject(&parsed)?;
        // QoS 0 telemetry of a device that hears of nothing (no error topic, not a gateway's, which
        // tells the router which gateway the device last sent through) goes without waiting for
        // anything, and is shed at the edge before anything is built for it: under overload, reading and
        // dropping must cost as little as it can (docs/mqtt-adapter.md, "Backpressure").
        let fire_and_forget = kind == MessageKind::Telemetry
            && qos == 0
            && gateway.is_none()
            && self.error_sub().is_none();
        if fire_and_forget && self.shared.downstream.sheds_qos0(&tenant) {
            match &self.who {
                Some(who) => who.tally.add_qos0(Status::Undeliverable, payload.len()),
                None => self.shared.pipeline().shed(&tenant, payload.len()),
            }
            return Ok(());
        }
        let tell_last_gateway = gateway.is_some() && self.tell_last_gateway(&device);
        let content_type = parsed
            .bag
            .content_type
            .as_deref()
            .map(str::to_owned)
            .or(content_type);
        let ttl_secs = parsed.bag.ttl_secs;
        let on_error = parsed.bag.on_error;
        let extra_properties: Vec<(String, PropertyValue)> = parsed
            .bag
            .extra
            .iter()
            .map(|(k, v)| (k.to_string(), PropertyValue::String(v.to_string())))
            .collect();
        let mut subject = Subject {
            tenant,
            device,
            gateway,
        };
        let mut upload = Upload {
            kind,
            qos,
            content_type,
            payload,
            orig_address: topic_str.to_owned(),
            ttl_secs,
            extra_properties,
            tell_last_gateway,
        };
        // Handed to the router at once when the caches know the device, without a future of its own:
        // QoS 0 of a device that hears of nothing, and QoS 1 of the device itself. While earlier
        // messages of this device still wait on the slower way, later ones take it too, so that they
        // leave in order.
        let handed_now = match qos {
            0 => fire_and_forget && background.len() == 0,
            _ => {
                !pending.has_work()
                    && parsed.bag.correlation_id.is_none()
                    && parsed
                        .device
                        .is_none_or(|d| self.who.as_ref().is_some_and(|w| d == w.device.as_str()))
            }
        };
        if let (true, Some(who)) = (handed_now, &self.who) {
            match self
                .shared
                .pipeline()
                .forward_now(&who.volume, subject, upload, &who.tally)
            {
                Ok(Now::Waiting(waiting)) => {
                    pending.push_ack(Ack {
                        pkid,
                        on_error,
                        endpoint: parsed.error_endpoint(),
                        waiting,
                    });
                    return Ok(());
                }
                // QoS 0 (nobody hears of it: no error topic).
                Ok(Now::Gone | Now::Refused(_)) if qos == 0 => return Ok(()),
                Ok(Now::Gone) => return Ok(()),
                // QoS 1 refused before it left: answered in turn, as any other outcome.
                Ok(Now::Refused(refused)) => {
                    let endpoint = parsed.error_endpoint();
                    pending.push_back(Box::pin(async move {
                        Done::PubAck {
                            pkid,
                            on_error,
                            outcome: Err(refused),
                            report: Report::Plain(endpoint),
                        }
                    }));
                    return Ok(());
                }
                Err(back) => (subject, upload) = back,
            }
        }
        let check = match &self.who {
            Some(who) => TenantCheck::Authenticated(Some(who.volume.clone())),
            None => TenantCheck::Unauthenticated,
        };
        let shared = self.shared.clone();
        let send = async move {
            shared
                .pipeline()
                .forward_message(check, subject, upload)
                .await
        };
        let endpoint = parsed.error_endpoint();
        let correlation_id = parsed.bag.correlation_id.as_deref().map_or_else(
            || {
                if qos == 1 {
                    pkid.to_string()
                } else {
                    String::new()
                }
            },
            str::to_owned,
        );
        let device_in_topic = parsed
            .device
            .filter(|d| self.who.as_ref().is_none_or(|w| *d != w.device.as_str()))
            .map(str::to_owned);
        if qos == 0 {
            // Fire and forget: the device hears of a failure only on its error topic.
            if self.error_sub().is_some() {
                pending.push_back(unacknowledged(
                    send,
                    ErrorReport {
                        endpoint,
                        correlation_id,
                        device_in_topic,
                    },
                ));
            } else {
                // Counted with the session's unanswered work like everything else: a device that
                // publishes faster than its messages are forwarded or shed is read more slowly, instead
                // of each message becoming a task of its own (a QoS 0 flood held hundreds of MiB).
                background.push(Box::pin(async move {
                    let _ = send.await;
                    Done::Nothing
                }));
            }
            return Ok(());
        }
        pending.push_back(acknowledged(
            send,
            pkid,
            on_error,
            ErrorReport {
                endpoint,
                correlation_id,
                device_in_topic,
            },
        ));
        Ok(())
    }
    /// Whether the router should hear (again) that this gateway sends for `device`: the first time in
    /// this session, then at most every [`LAST_GATEWAY_EVERY`], in case another gateway took over.
    pub(super) fn tell_last_gateway(&mut self, device: &DeviceId) -> bool {
        let now = std::time::Instant::now();
        let told = &mut self.rare().told_last_gateway;
        match told.get_mut(device) {
            Some(at) if now.duration_since(*at) < LAST_GATEWAY_EVERY => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                if told.len() >= MAX_TOLD_LAST_GATEWAY {
                    told.clear();
                }
                told.insert(device.clone(), now);
                true
            }
        }
    }
    /// The tenant, device and (when the device acts for another one) gateway of a topic. Authenticated
    /// devices may leave tenant and device out; another tenant's topic is refused. Unauthenticated
    /// devices must name both.
    pub(super) fn subject(
        &self,
        parsed: &topic::PublishTopic<'_>,
    ) -> Result<(TenantId, DeviceId, Option<DeviceId>), SessionError> {
        let Some(who) = &self.who else {
            let (Some(t), Some(d)) = (parsed.tenant, parsed.device) else {
                return Err(SessionError::Closed(
                    "an unauthenticated device must name tenant and device in the topic",
                ));
            };
            let tenant = TenantId::new(t).map_err(|_| SessionError::Closed("invalid tenant id"))?;
            let device = DeviceId::new(d).map_err(|_| SessionError::Closed("invalid device id"))?;
            return Ok((tenant, device, None));
        };
        if parsed.tenant.is_some_and(|t| t != who.tenant.as_str()) {
            return Err(SessionError::Closed("another tenant's topic"));
        }
        // A gateway publishing for a device names it; the registry decides whether it may.
        let device = match parsed.device {
            Some(d) if d != who.device.as_str() => {
                DeviceId::new(d).map_err(|_| SessionError::Closed("invalid device id"))?
            }
            _ => who.device.clone(),
        };
        let gateway = (device != who.device).then(|| who.device.clone());
        Ok((who.tenant.clone(), device, gateway))
    }
    /// A PUBLISH's outcome on MQTT's wire (HONO-CONTRACT §2.2): the one place where an [`Outcome`]
    /// becomes a PUBACK (with its MQTT 5 reason), a withheld PUBACK, an error report or a disconnect.
    /// QoS 0 messages have no PUBACK: their failures only go to the error topic ([`Done::Failed`]).
    pub(super) fn answer(
        &mut self,
        pkid: u16,
        on_error: OnError,
        outcome: Outcome,
        report: &Report,
    ) -> Result<(), SessionError> {
        if let Err(refused) = outcome {
            if self.error_sub().is_some()
                && self.report_error(refused, &report.resolve(pkid))
                && on_error == OnError::Default
            {
                // With an error subscription the default is to report and go on (§2.2).
                let reason = match refused {
                    Refused::QuotaExceeded => Reason::QuotaExceeded,
                    _ => Reason::UnspecifiedError,
                };
                return self.write(&Outgoing::PubAck { pkid, reason });
            }
        }
        match (outcome, on_error) {
            (Ok(()), _) | (Err(_), OnError::Ignore) => self.write(&Outgoing::PubAck {
                pkid,
                reason: Reason::Success,
            }),
            (Err(_), OnError::SkipAck) => Ok(()),
            (Err(r), _) if r.is_denied() => {
                Err(SessionError::Closed("device not allowed to publish"))
            }
            // The tenant's data volume is used up: the message is discarded and the connection stays
            // (HONO-CONTRACT §5, "MQTT drop"). MQTT 5 says why in the PUBACK (0x97 quota exceeded);
            // MQTT 3.1.1 has no negative PUBACK, so the message stays unacknowledged.
            (Err(Refused::QuotaExceeded), OnError::Default) => match self.version {
                Version::V5 => self.write(&Outgoing::PubAck {
                    pkid,
                    reason: Reason::QuotaExceeded,
                }),
                Version::V311 => Ok(()),
            },
            (Err(_), OnError::Default | OnError::Disconnect) => {
                Err(SessionError::Closed("message not accepted downstream"))
            }
        }
    }

    /// Publishes an error report when the device subscribed to its error topic; says whether it did.
    pub(super) fn report_error(&mut self, refused: Refused, report: &ErrorReport) -> bool {
        let Some(sub) = self.error_sub().cloned() else {
            return false;
        };
        let code = refused.code();
        let topic = topic::error_topic(
            &sub,
            report.device_in_topic.as_deref(),
            report.endpoint,
            Some(&report.correlation_id),
            code,
        );
        let message = match refused {
            Refused::TenantDisabled | Refused::AdapterDisabled | Refused::GatewayForbidden => {
                "not allowed to publish for this device"
            }
            Refused::Unauthorized => "the tenant requires devices to authenticate",
            Refused::NotFound => "device unknown or disabled",
            Refused::QuotaExceeded => "the tenant's data volume is used up",
            Refused::RegistryUnavailable
            | Refused::CommandsUnavailable
            | Refused::NoConsumer
            | Refused::NoResponseReceiver => "no consumer accepted the message",
        };
        let timestamp = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let payload = topic::error_payload(code, message, &report.correlation_id, &timestamp);
        self.write(&Outgoing::Publish {
            topic: &topic,
            qos: 0,
            pkid: 0,
            payload: Bytes::from(payload),
        })
        .is_ok()
    }

    /// A command response from the device: back to the application waiting on the command's reply-to.
    /// Like a message, only from the device itself or from a gateway the registry lets act for it (the
    /// HTTP adapter's check): the registry's assertion decides, so a device cannot answer another
    /// device's commands.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_response(
        &mut self,
        parsed: &topic::PublishTopic<'_>,
        request_id: &str,
        status: u16,
        qos: u8,
        pkid: u16,
        payload: Bytes,
        content_type: Option<String>,
        pending: &mut InOrder,
        background: &mut Background,
    ) -> Result<(), SessionError> {
        let (tenant, device, gateway) = self.subject(parsed)?;
        let Some((correlation, reply, _)) = topic::parse_request_id(request_id) else {
            return Err(SessionError::Closed("unknown request id"));
        };
        let response = pipeline::Response {
            reply_to: format!("command_response/{tenant}/{reply}"),
            correlation_id: correlation.to_owned(),
            status,
            content_type: parsed
                .bag
                .content_type
                .as_deref()
                .map(str::to_owned)
                .or(content_type),
            payload,
            // Not counted against the tenant's data volume (HTTP's responses are).
            metered: false,
        };
        let check = match self.who {
            Some(_) => TenantCheck::Authenticated(None),
            None => TenantCheck::Unauthenticated,
        };
        let subject = Subject {
            tenant,
            device,
            gateway,
        };
        let shared = self.shared.clone();
        let on_error = parsed.bag.on_error;
        let endpoint = parsed.error_endpoint();
        let correlation_id = correlation.to_owned();
        let send = async move { shared.pipeline().respond(check, subject, response).await };
        if qos == 0 {
            // Fire and forget: a failure goes to the error topic, if the device subscribed to it.
            background.push(unacknowledged(
                send,
                ErrorReport {
                    endpoint,
                    correlation_id,
                    device_in_topic: None,
                },
            ));
            return Ok(());
        }
        pending.push_back(acknowledged(
            send,
            pkid,
            on_error,
            ErrorReport {
                endpoint,
                correlation_id,
                device_in_topic: None,
            },
        ));
        Ok(())
    }
}

/// A QoS 0 PUBLISH's `send`: only a failure has something to tell, on the error topic.
fn unacknowledged(
    send: impl Future<Output = Outcome> + Send + 'static,
    report: ErrorReport,
) -> Pending {
    Box::pin(async move {
        match send.await {
            Ok(()) => Done::Nothing,
            Err(refused) => Done::Failed { refused, report },
        }
    })
}

/// A QoS 1 PUBLISH's `send`: its outcome, for the PUBACK (or what stands in for it, [`Session::answer`]).
fn acknowledged(
    send: impl Future<Output = Outcome> + Send + 'static,
    pkid: u16,
    on_error: OnError,
    report: ErrorReport,
) -> Pending {
    Box::pin(async move {
        Done::PubAck {
            pkid,
            on_error,
            outcome: send.await,
            report: Report::Full(report),
        }
    })
}
