//! The MQTT 3.1.1 client side the load generator needs, on rumqttc's `mqttbytes` codecs: CONNECT /
//! CONNACK, SUBSCRIBE / SUBACK, PUBLISH (encoded by hand on the hot path: no `String` per message) and
//! PUBACK; and the 32-byte payload every generated message carries (when it was sent, by whom, which one).

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::{BufMut as _, BytesMut};
use rumqttc::mqttbytes::v4::{self, Packet};
use rumqttc::mqttbytes::QoS;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpSocket, TcpStream};

/// Payload bytes of every generated message (BENCHMARKS.md: 32 B).
pub const PAYLOAD: usize = 32;
/// Largest packet the generator accepts from a server.
pub const MAX_PACKET: usize = 64 * 1024;

/// The generator's clock: nanoseconds since the first call in this process. Publishers and receivers
/// live in one process, so a stamp read by a receiver is exact (monotonic, no clock skew).
pub fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// What a generated message says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// [`now_ns`] when it was written to the socket.
    pub sent_ns: u64,
    /// Index of the publisher.
    pub publisher: u32,
    /// Per-publisher sequence number, from 0.
    pub seq: u64,
}

impl Stamp {
    /// The 32-byte payload: sent_ns, publisher, seq (little endian), then zero padding.
    pub fn encode(&self) -> [u8; PAYLOAD] {
        let mut out = [0u8; PAYLOAD];
        out[..8].copy_from_slice(&self.sent_ns.to_le_bytes());
        out[8..12].copy_from_slice(&self.publisher.to_le_bytes());
        out[12..20].copy_from_slice(&self.seq.to_le_bytes());
        out
    }

    /// Reads a payload written by [`Stamp::encode`]; `None` for anything else.
    pub fn decode(payload: &[u8]) -> Option<Self> {
        if payload.len() != PAYLOAD || payload[20..].iter().any(|&b| b != 0) {
            return None;
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&payload[i..i + 8]);
            u64::from_le_bytes(b)
        };
        let mut p = [0u8; 4];
        p.copy_from_slice(&payload[8..12]);
        Some(Self {
            sent_ns: u64_at(0),
            publisher: u32::from_le_bytes(p),
            seq: u64_at(12),
        })
    }
}

/// The MQTT packet id of a publisher's `seq`-th QoS 1 message: 1..=65535 in turn (0 is not allowed).
pub fn packet_id(seq: u64) -> u16 {
    u16::try_from(seq % 65_535 + 1).unwrap_or(1)
}

/// Appends one PUBLISH (MQTT 3.1.1) to `buf`. QoS 0 carries no packet id.
pub fn put_publish(buf: &mut BytesMut, topic: &[u8], qos: u8, pkid: u16, payload: &[u8]) {
    let remaining = 2 + topic.len() + if qos > 0 { 2 } else { 0 } + payload.len();
    buf.reserve(remaining + 5);
    buf.put_u8(0x30 | (qos << 1));
    put_remaining_length(buf, remaining);
    buf.put_u16(u16::try_from(topic.len()).unwrap_or(u16::MAX));
    buf.put_slice(topic);
    if qos > 0 {
        buf.put_u16(pkid);
    }
    buf.put_slice(payload);
}

/// Appends a PUBACK for `pkid`.
pub fn put_puback(buf: &mut BytesMut, pkid: u16) {
    buf.put_slice(&[0x40, 0x02]);
    buf.put_u16(pkid);
}

/// MQTT's variable-length "remaining length".
fn put_remaining_length(buf: &mut BytesMut, mut len: usize) {
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        buf.put_u8(byte);
        if len == 0 {
            break;
        }
    }
}

/// The next whole packet in `buf` (consumed), `None` when more bytes are needed.
pub fn next_packet(buf: &mut BytesMut) -> anyhow::Result<Option<Packet>> {
    match v4::read(buf, MAX_PACKET) {
        Ok(p) => Ok(Some(p)),
        Err(rumqttc::mqttbytes::Error::InsufficientBytes(_)) => Ok(None),
        Err(e) => bail!("malformed packet from the server: {e:?}"),
    }
}

/// How a client logs in.
#[derive(Debug, Clone)]
pub struct Login {
    pub client_id: String,
    pub username: String,
    pub password: String,
    pub keep_alive_secs: u16,
    /// MQTT's clean session flag; `false` asks the broker for a persistent session.
    pub clean_session: bool,
}

/// Why a connection attempt failed.
#[derive(Debug)]
pub enum ConnectError {
    /// TCP or protocol failure.
    Io(anyhow::Error),
    /// The server answered CONNACK with this return code (not 0).
    Refused(u8),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Io(e) => write!(f, "{e:#}"),
            Self::Refused(code) => write!(f, "CONNACK return code {code}"),
        }
    }
}

/// Opens a TCP connection (from `source` when given, e.g. 127.0.0.2, to spread over source addresses).
pub async fn dial(addr: SocketAddr, source: Option<IpAddr>) -> anyhow::Result<TcpStream> {
    let stream = match source {
        None => TcpStream::connect(addr).await,
        Some(ip) => {
            let socket = TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(addr).await
        }
    }
    .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// CONNECT with `login` over `stream`, waiting up to `timeout` for CONNACK. Bytes read past the CONNACK
/// are left in `rest`.
pub async fn handshake(
    stream: &mut TcpStream,
    login: &Login,
    rest: &mut BytesMut,
    timeout: Duration,
) -> Result<(), ConnectError> {
    let mut connect = v4::Connect::new(login.client_id.clone());
    connect.keep_alive = login.keep_alive_secs;
    connect.clean_session = login.clean_session;
    connect.set_login(login.username.clone(), login.password.clone());
    let mut buf = BytesMut::with_capacity(128);
    connect
        .write(&mut buf)
        .map_err(|e| ConnectError::Io(anyhow::anyhow!("encoding CONNECT: {e:?}")))?;
    let exchange = async {
        stream.write_all(&buf).await?;
        loop {
            if let Some(packet) = next_packet(rest)? {
                return match packet {
                    Packet::ConnAck(ack) => Ok(ack.code as u8),
                    other => Err(anyhow::anyhow!("expected CONNACK, got {other:?}")),
                };
            }
            if stream.read_buf(rest).await? == 0 {
                bail!("the server closed the connection before CONNACK");
            }
        }
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(ConnectError::Io(anyhow::anyhow!(
            "no CONNACK within {timeout:?}"
        ))),
        Ok(Err(e)) => Err(ConnectError::Io(e)),
        Ok(Ok(0)) => Ok(()),
        Ok(Ok(code)) => Err(ConnectError::Refused(code)),
    }
}

/// Dials and logs in; an error says where and why.
pub async fn connect(
    addr: SocketAddr,
    source: Option<IpAddr>,
    login: &Login,
    rest: &mut BytesMut,
) -> anyhow::Result<TcpStream> {
    let mut stream = dial(addr, source).await?;
    handshake(&mut stream, login, rest, Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("{} at {addr}: {e}", login.username))?;
    Ok(stream)
}

/// SUBSCRIBE to `filter` and wait for a SUBACK that grants it.
pub async fn subscribe(
    stream: &mut TcpStream,
    filter: &str,
    qos: u8,
    rest: &mut BytesMut,
) -> anyhow::Result<()> {
    let qos = if qos == 0 {
        QoS::AtMostOnce
    } else {
        QoS::AtLeastOnce
    };
    let mut sub = v4::Subscribe::new(filter, qos);
    sub.pkid = 1;
    let mut buf = BytesMut::new();
    sub.write(&mut buf)
        .map_err(|e| anyhow::anyhow!("encoding SUBSCRIBE: {e:?}"))?;
    stream.write_all(&buf).await?;
    let wait = async {
        loop {
            if let Some(packet) = next_packet(rest)? {
                match packet {
                    Packet::SubAck(ack) => {
                        let granted = ack
                            .return_codes
                            .iter()
                            .all(|c| !matches!(c, v4::SubscribeReasonCode::Failure));
                        anyhow::ensure!(granted, "SUBSCRIBE {filter} refused");
                        return Ok(());
                    }
                    other => bail!("expected SUBACK, got {other:?}"),
                }
            }
            if stream.read_buf(rest).await? == 0 {
                bail!("the server closed the connection before SUBACK");
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .context("no SUBACK within 10 s")?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_round_trip_and_foreign_payloads_are_refused() {
        let s = Stamp {
            sent_ns: 123_456_789_012,
            publisher: 77,
            seq: 1 << 40,
        };
        let p = s.encode();
        assert_eq!(p.len(), 32);
        assert_eq!(Stamp::decode(&p), Some(s));
        assert_eq!(Stamp::decode(&p[..31]), None);
        let mut bad = p;
        bad[31] = 1;
        assert_eq!(Stamp::decode(&bad), None);
    }

    #[test]
    fn packet_ids_skip_zero_and_wrap() {
        assert_eq!(packet_id(0), 1);
        assert_eq!(packet_id(65_534), 65_535);
        assert_eq!(packet_id(65_535), 1);
    }

    #[test]
    fn hand_encoded_publishes_decode_with_mqttbytes() {
        let payload = Stamp {
            sent_ns: 1,
            publisher: 2,
            seq: 3,
        }
        .encode();
        let mut buf = BytesMut::new();
        put_publish(&mut buf, b"t/bench/d7", 0, 0, &payload);
        put_publish(&mut buf, b"e", 1, 513, &payload);
        put_puback(&mut buf, 9);
        // A topic long enough to need two bytes of remaining length.
        let long = vec![b'x'; 200];
        put_publish(&mut buf, &long, 1, 2, &payload);
        let mut packets = Vec::new();
        while let Some(p) = next_packet(&mut buf).expect("well formed") {
            packets.push(p);
        }
        assert!(buf.is_empty());
        assert_eq!(packets.len(), 4);
        match &packets[0] {
            Packet::Publish(p) => {
                assert_eq!(p.topic, "t/bench/d7");
                assert_eq!(p.qos, QoS::AtMostOnce);
                assert_eq!(&p.payload[..], &payload[..]);
            }
            other => panic!("not a publish: {other:?}"),
        }
        match &packets[1] {
            Packet::Publish(p) => {
                assert_eq!(
                    (p.topic.as_str(), p.qos, p.pkid),
                    ("e", QoS::AtLeastOnce, 513)
                );
            }
            other => panic!("not a publish: {other:?}"),
        }
        assert_eq!(packets[2], Packet::PubAck(v4::PubAck::new(9)));
        match &packets[3] {
            Packet::Publish(p) => assert_eq!((p.topic.len(), p.pkid), (200, 2)),
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn half_a_packet_waits_for_more() {
        let mut buf = BytesMut::new();
        put_puback(&mut buf, 1);
        let mut half = buf.split_to(3);
        assert!(next_packet(&mut half).expect("no error").is_none());
        let mut junk = BytesMut::from(&[0xF0u8, 0x00][..]);
        assert!(next_packet(&mut junk).is_err());
    }
}
