//! MQTT packets in and out, for both protocol versions, on rumqttc's `mqttbytes` codecs.
//!
//! The session speaks one small vocabulary ([`Incoming`], [`Outgoing`]); this module maps it to the v4
//! (3.1.1) or v5 codec chosen by the CONNECT's protocol level. Only what the adapter uses is mapped.

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5;

/// Which MQTT version a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// Why input could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed packet: {0}")]
    Malformed(String),
    #[error("packet larger than {0} bytes")]
    TooLarge(usize),
    #[error("unsupported protocol level {0}")]
    UnsupportedVersion(u8),
    #[error("first packet is not CONNECT")]
    NotConnect,
}

/// A CONNECT, reduced to what the adapter uses.
#[derive(Debug, Clone)]
pub struct Connect {
    pub client_id: String,
    pub keep_alive: u16,
    pub username: Option<String>,
    pub password: Option<Vec<u8>>,
}

/// What a client sends after CONNECT.
#[derive(Debug, Clone)]
pub enum Incoming {
    Publish {
        topic: Bytes,
        qos: u8,
        pkid: u16,
        retain: bool,
        payload: Bytes,
        /// MQTT 5 content type property.
        content_type: Option<String>,
    },
    PubAck {
        pkid: u16,
    },
    Subscribe {
        pkid: u16,
        filters: Vec<(String, u8)>,
    },
    Unsubscribe {
        pkid: u16,
        filters: Vec<String>,
    },
    PingReq,
    Disconnect,
    /// A packet a client may send but the adapter does not act on (PUBREC and friends).
    Other,
}

/// The MQTT 5.0 reason codes the session sends in a PUBACK or DISCONNECT (MQTT 3.1.1 has none: a
/// 3.1.1 PUBACK is always a success, and a 3.1.1 server closes without a DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reason {
    Success = 0x00,
    UnspecifiedError = 0x80,
    KeepAliveTimeout = 0x8D,
    PacketTooLarge = 0x95,
    QuotaExceeded = 0x97,
}

/// What the adapter sends.
#[derive(Debug, Clone)]
pub enum Outgoing<'a> {
    /// `code` is the 3.1.1 return code or the 5.0 reason code (see `connack`); `server_keep_alive`
    /// (5.0 only) replaces the keep-alive the client asked for.
    ConnAck {
        code: u8,
        server_keep_alive: Option<u16>,
    },
    /// `reason` is used by 5.0 only.
    PubAck {
        pkid: u16,
        reason: Reason,
    },
    /// `Some(qos)` granted, `None` failure (0x80).
    SubAck {
        pkid: u16,
        granted: &'a [Option<u8>],
    },
    UnsubAck {
        pkid: u16,
        count: usize,
    },
    PingResp,
    Publish {
        topic: &'a str,
        qos: u8,
        pkid: u16,
        payload: Bytes,
    },
    /// 5.0 only; a 3.1.1 server just closes the connection.
    Disconnect {
        reason: Reason,
    },
}

fn qos(q: QoS) -> u8 {
    match q {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

fn qos5(q: rumqttc::v5::mqttbytes::QoS) -> u8 {
    use rumqttc::v5::mqttbytes::QoS as Q;
    match q {
        Q::AtMostOnce => 0,
        Q::AtLeastOnce => 1,
        Q::ExactlyOnce => 2,
    }
}

fn to_qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    use rumqttc::v5::mqttbytes::QoS as Q;
    match q {
        0 => Q::AtMostOnce,
        1 => Q::AtLeastOnce,
        _ => Q::ExactlyOnce,
    }
}

fn to_qos(q: u8) -> QoS {
    match q {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// The protocol level of a CONNECT at the start of `buf`: `Ok(None)` until enough bytes are there.
pub fn connect_version(buf: &[u8]) -> Result<Option<Version>, WireError> {
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    // CONNECT's flags are reserved zeros: anything else (a TLS ClientHello on the plain port starts
    // with 0x16) is not MQTT, and waiting for the rest of it would only hold the socket.
    if first != 0x10 {
        return Err(WireError::NotConnect);
    }
    // Skip the remaining-length varint.
    let mut i = 1;
    loop {
        let Some(b) = buf.get(i) else { return Ok(None) };
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
        if i > 4 {
            return Err(WireError::Malformed("bad remaining length".into()));
        }
    }
    // Protocol name (length-prefixed) then the level byte.
    let (Some(&hi), Some(&lo)) = (buf.get(i), buf.get(i + 1)) else {
        return Ok(None);
    };
    let name_len = usize::from(u16::from_be_bytes([hi, lo]));
    let Some(&level) = buf.get(i + 2 + name_len) else {
        return Ok(None);
    };
    match level {
        4 => Ok(Some(Version::V311)),
        5 => Ok(Some(Version::V5)),
        other => Err(WireError::UnsupportedVersion(other)),
    }
}

fn malformed(e: impl std::fmt::Debug) -> WireError {
    WireError::Malformed(format!("{e:?}"))
}

/// Reads the CONNECT: `Ok(None)` until it is complete.
pub fn read_connect(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Connect>, WireError> {
    match version {
        Version::V311 => match v4::read(buf, max) {
            Ok(v4::Packet::Connect(c)) => Ok(Some(Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                username: c.login.as_ref().map(|l| l.username.clone()),
                password: c.login.map(|l| l.password.into_bytes()),
            })),
            Ok(_) => Err(WireError::NotConnect),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                Err(WireError::TooLarge(max))
            }
            Err(e) => Err(malformed(e)),
        },
        Version::V5 => match v5::Packet::read(buf, Some(max)) {
            Ok(v5::Packet::Connect(c, _will, login)) => Ok(Some(Connect {
                client_id: c.client_id,
                keep_alive: c.keep_alive,
                username: login.as_ref().map(|l| l.username.clone()),
                password: login.map(|l| l.password.into_bytes()),
            })),
            Ok(_) => Err(WireError::NotConnect),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                Err(WireError::TooLarge(max))
            }
            Err(e) => Err(malformed(e)),
        },
    }
}

/// Reads the next packet after CONNECT: `Ok(None)` until one is complete.
pub fn read(
    version: Version,
    buf: &mut BytesMut,
    max: usize,
) -> Result<Option<Incoming>, WireError> {
    match version {
        Version::V311 => match v4::read(buf, max) {
            Ok(p) => Ok(Some(match p {
                v4::Packet::Publish(p) => Incoming::Publish {
                    topic: p.topic.into_bytes().into(),
                    qos: qos(p.qos),
                    pkid: p.pkid,
                    retain: p.retain,
                    payload: p.payload,
                    content_type: None,
                },
                v4::Packet::PubAck(a) => Incoming::PubAck { pkid: a.pkid },
                v4::Packet::Subscribe(s) => Incoming::Subscribe {
                    pkid: s.pkid,
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| (f.path, qos(f.qos)))
                        .collect(),
                },
                v4::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.topics,
                },
                v4::Packet::PingReq => Incoming::PingReq,
                v4::Packet::Disconnect => Incoming::Disconnect,
                v4::Packet::Connect(_) => {
                    return Err(WireError::Malformed("a second CONNECT".into()))
                }
                _ => Incoming::Other,
            })),
            Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::mqttbytes::Error::PayloadSizeLimitExceeded(_)) => {
                Err(WireError::TooLarge(max))
            }
            Err(e) => Err(malformed(e)),
        },
        Version::V5 => match v5::Packet::read(buf, Some(max)) {
            Ok(p) => Ok(Some(match p {
                v5::Packet::Publish(p) => Incoming::Publish {
                    topic: p.topic,
                    qos: qos5(p.qos),
                    pkid: p.pkid,
                    retain: p.retain,
                    payload: p.payload,
                    content_type: p.properties.and_then(|pr| pr.content_type),
                },
                v5::Packet::PubAck(a) => Incoming::PubAck { pkid: a.pkid },
                v5::Packet::Subscribe(s) => Incoming::Subscribe {
                    pkid: s.pkid,
                    filters: s
                        .filters
                        .into_iter()
                        .map(|f| (f.path, qos5(f.qos)))
                        .collect(),
                },
                v5::Packet::Unsubscribe(u) => Incoming::Unsubscribe {
                    pkid: u.pkid,
                    filters: u.filters,
                },
                v5::Packet::PingReq(_) => Incoming::PingReq,
                v5::Packet::Disconnect(_) => Incoming::Disconnect,
                v5::Packet::Connect(..) => {
                    return Err(WireError::Malformed("a second CONNECT".into()))
                }
                _ => Incoming::Other,
            })),
            Err(rumqttc::v5::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
            Err(rumqttc::v5::mqttbytes::Error::PayloadSizeLimitExceeded { .. }) => {
                Err(WireError::TooLarge(max))
            }
            Err(e) => Err(malformed(e)),
        },
    }
}

fn v4_connack(code: u8) -> v4::ConnectReturnCode {
    match code {
        0 => v4::ConnectReturnCode::Success,
        1 => v4::ConnectReturnCode::RefusedProtocolVersion,
        2 => v4::ConnectReturnCode::BadClientId,
        3 => v4::ConnectReturnCode::ServiceUnavailable,
        4 => v4::ConnectReturnCode::BadUserNamePassword,
        _ => v4::ConnectReturnCode::NotAuthorized,
    }
}

fn v5_connack(reason: u8) -> v5::ConnectReturnCode {
    use v5::ConnectReturnCode as C;
    match reason {
        0x00 => C::Success,
        0x84 => C::UnsupportedProtocolVersion,
        0x85 => C::ClientIdentifierNotValid,
        0x86 => C::BadUserNamePassword,
        0x87 => C::NotAuthorized,
        0x88 => C::ServerUnavailable,
        0x89 => C::ServerBusy,
        0x95 => C::PacketTooLarge,
        0x97 => C::QuotaExceeded,
        0x9C => C::UseAnotherServer,
        _ => C::UnspecifiedError,
    }
}

fn v5_puback(reason: Reason) -> v5::PubAckReason {
    use v5::PubAckReason as R;
    match reason {
        Reason::Success => R::Success,
        Reason::QuotaExceeded => R::QuotaExceeded,
        Reason::UnspecifiedError | Reason::KeepAliveTimeout | Reason::PacketTooLarge => {
            R::UnspecifiedError
        }
    }
}

/// CONNACK properties that say only the Server Keep Alive.
fn connack_keep_alive(seconds: u16) -> v5::ConnAckProperties {
    v5::ConnAckProperties {
        session_expiry_interval: None,
        receive_max: None,
        max_qos: None,
        retain_available: None,
        max_packet_size: None,
        assigned_client_identifier: None,
        topic_alias_max: None,
        reason_string: None,
        user_properties: Vec::new(),
        wildcard_subscription_available: None,
        subscription_identifiers_available: None,
        shared_subscription_available: None,
        server_keep_alive: Some(seconds),
        response_information: None,
        server_reference: None,
        authentication_method: None,
        authentication_data: None,
    }
}

/// Appends `packet` to `out`.
pub fn write(version: Version, packet: &Outgoing<'_>, out: &mut BytesMut) -> Result<(), WireError> {
    let r = match (version, packet) {
        (Version::V311, Outgoing::ConnAck { code, .. }) => {
            v4::ConnAck::new(v4_connack(*code), false)
                .write(out)
                .map(drop)
                .map_err(malformed)
        }
        (
            Version::V5,
            Outgoing::ConnAck {
                code,
                server_keep_alive,
            },
        ) => v5::ConnAck {
            session_present: false,
            code: v5_connack(*code),
            properties: server_keep_alive.map(connack_keep_alive),
        }
        .write(out)
        .map(drop)
        .map_err(malformed),
        (Version::V311, Outgoing::PubAck { pkid, .. }) => v4::PubAck::new(*pkid)
            .write(out)
            .map(drop)
            .map_err(malformed),
        (Version::V5, Outgoing::PubAck { pkid, reason }) => v5::PubAck {
            pkid: *pkid,
            reason: v5_puback(*reason),
            properties: None,
        }
        .write(out)
        .map(drop)
        .map_err(malformed),
        (Version::V311, Outgoing::SubAck { pkid, granted }) => v4::SubAck::new(
            *pkid,
            granted
                .iter()
                .map(|g| match g {
                    Some(q) => v4::SubscribeReasonCode::Success(to_qos(*q)),
                    None => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        )
        .write(out)
        .map(drop)
        .map_err(malformed),
        (Version::V5, Outgoing::SubAck { pkid, granted }) => v5::SubAck {
            pkid: *pkid,
            return_codes: granted
                .iter()
                .map(|g| match g {
                    Some(q) => v5::SubscribeReasonCode::Success(to_qos5(*q)),
                    None => v5::SubscribeReasonCode::Unspecified,
                })
                .collect(),
            properties: None,
        }
        .write(out)
        .map(drop)
        .map_err(malformed),
        (Version::V311, Outgoing::UnsubAck { pkid, .. }) => v4::UnsubAck::new(*pkid)
            .write(out)
            .map(drop)
            .map_err(malformed),
        (Version::V5, Outgoing::UnsubAck { pkid, count }) => v5::UnsubAck {
            pkid: *pkid,
            reasons: vec![v5::UnsubAckReason::Success; *count],
            properties: None,
        }
        .write(out)
        .map(drop)
        .map_err(malformed),
        (Version::V311, Outgoing::PingResp) => v4::PingResp.write(out).map(drop).map_err(malformed),
        (Version::V5, Outgoing::PingResp) => v5::PingResp::write(out).map(drop).map_err(malformed),
        (
            Version::V311,
            Outgoing::Publish {
                topic,
                qos,
                pkid,
                payload,
            },
        ) => {
            let mut p = v4::Publish::from_bytes(*topic, to_qos(*qos), payload.clone());
            p.pkid = *pkid;
            p.write(out).map(drop).map_err(malformed)
        }
        (
            Version::V5,
            Outgoing::Publish {
                topic,
                qos,
                pkid,
                payload,
            },
        ) => {
            let mut p = v5::Publish::new(*topic, to_qos5(*qos), payload.clone(), None);
            p.pkid = *pkid;
            p.write(out).map(drop).map_err(malformed)
        }
        (Version::V311, Outgoing::Disconnect { .. }) => Ok(()),
        (Version::V5, Outgoing::Disconnect { reason }) => {
            // DISCONNECT with a reason code and no properties: 0xE0, length 1, reason.
            out.extend_from_slice(&[0xE0, 0x01, *reason as u8]);
            Ok(())
        }
    };
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_bytes(level: u8) -> Vec<u8> {
        let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', level, 0x02, 0x00, 0x3c];
        if level == 5 {
            body.push(0x00); // no properties
        }
        body.extend_from_slice(&[0x00, 0x02, b'c', b'1']);
        let mut p = vec![0x10, body.len() as u8];
        p.extend_from_slice(&body);
        p
    }

    #[test]
    fn version_comes_from_the_connect() {
        assert_eq!(
            connect_version(&connect_bytes(4)).expect("ok"),
            Some(Version::V311)
        );
        assert_eq!(
            connect_version(&connect_bytes(5)).expect("ok"),
            Some(Version::V5)
        );
        assert!(matches!(
            connect_version(&connect_bytes(3)),
            Err(WireError::UnsupportedVersion(3))
        ));
        assert_eq!(connect_version(&connect_bytes(4)[..5]).expect("ok"), None);
        assert!(matches!(
            connect_version(&[0x30, 0x00]),
            Err(WireError::NotConnect)
        ));
        assert!(matches!(
            connect_version(&[0x16, 0x03, 0x01, 0x02, 0x00]),
            Err(WireError::NotConnect)
        ));
    }

    #[test]
    fn both_versions_read_a_connect() {
        for (level, version) in [(4, Version::V311), (5, Version::V5)] {
            let mut buf = BytesMut::from(&connect_bytes(level)[..]);
            let c = read_connect(version, &mut buf, 1024)
                .expect("valid")
                .expect("complete");
            assert_eq!(c.client_id, "c1");
            assert_eq!(c.keep_alive, 60);
        }
    }

    #[test]
    fn an_mqtt5_connack_can_carry_the_server_keep_alive() {
        let mut out = BytesMut::new();
        let connack = Outgoing::ConnAck {
            code: 0,
            server_keep_alive: Some(1200),
        };
        write(Version::V5, &connack, &mut out).expect("encode");
        match v5::Packet::read(&mut out, None) {
            Ok(v5::Packet::ConnAck(a)) => {
                assert_eq!(a.code, v5::ConnectReturnCode::Success);
                let props = a.properties.expect("properties");
                assert_eq!(props.server_keep_alive, Some(1200));
            }
            other => panic!("{other:?}"),
        }
        // MQTT 3.1.1 has no properties: the same CONNACK is a plain one.
        let mut out = BytesMut::new();
        write(Version::V311, &connack, &mut out).expect("encode");
        assert_eq!(&out[..], &[0x20, 0x02, 0x00, 0x00]);
    }

    #[test]
    fn garbage_never_panics() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|i| (seed >> (i % 8 * 8)) as u8 ^ i as u8)
                .collect();
            for v in [Version::V311, Version::V5] {
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = read(v, &mut buf, 256);
                let mut buf = BytesMut::from(&bytes[..]);
                let _ = read_connect(v, &mut buf, 256);
            }
            let _ = connect_version(&bytes);
        }
    }
}
