//! B4's cheap generator: an AMQP 1.0 client written against `ferry_router::codec` (the router's own
//! sans-IO codec) instead of a full client library, so that the generator's core is not the bound.
//!
//! - The sender encodes one Transfer frame (performative and message) once, then copies it for every
//!   message and patches three fixed-width fields in place: the delivery id (sent as a 4-byte `uint`:
//!   delivery ids start at 2^24, see [`FIRST_DELIVERY_ID`]), the 4-byte delivery tag, and the body's
//!   sequence number and send time. Everything the link credit, the session window and (unsettled) the
//!   window of `credit` messages awaiting their outcome allow goes out in one `write`.
//! - The receiver decodes each frame's performative with the codec, counts transfers, grants `credit`
//!   again once half of it is used (one Flow per refill), accepts unsettled deliveries with one
//!   Disposition per contiguous range in what one read brought, and reads the send time from the body of
//!   messages received in the window.
//!
//! It plays by the same rules as the fe2o3 generator ([`super::gen`]): one sender connection and one
//! receiver connection, SASL PLAIN or ANONYMOUS, the same messages (content-type, application
//! properties, a 12-byte body), credit 200, presettled or unsettled (`first`).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use bytes::{Buf as _, BytesMut};
use fe2o3_amqp::types::definitions::{
    DeliveryTag, Handle, ReceiverSettleMode, Role, SenderSettleMode,
};
use fe2o3_amqp::types::messaging::{
    Accepted, ApplicationProperties, DeliveryState, Properties, Source, Target, TargetArchetype,
};
use fe2o3_amqp::types::performatives::{
    Attach, Begin, Close, Disposition, Flow, Open, Performative, Transfer,
};
use fe2o3_amqp::types::primitives::Binary;
use fe2o3_amqp::types::sasl::{SaslCode, SaslInit};
use ferry_router::codec::{self, Frame, MessageParts, ProtocolId, SaslFrame};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::client::Login;
use super::gen::{decode_sent_ns, encode_body, Counts, Mode, Spec};

/// The first delivery id (and session transfer id) the sender uses: from 2^24 on, a `uint` is always
/// encoded in its 4-byte form, so every copy of the template has the same length.
pub const FIRST_DELIVERY_ID: u32 = 1 << 24;
/// The largest frame this client accepts (it announces the same).
const MAX_FRAME: u32 = 1 << 20;
/// Session windows this client announces: wide enough never to be the bound.
const WINDOW: u32 = 1 << 30;
/// Most transfers in one write.
const BATCH: u32 = 512;

/// A connection past SASL, Open and Begin, with the peer's session window.
struct Conn {
    stream: TcpStream,
    inbuf: BytesMut,
    out: BytesMut,
    /// The peer's `next-outgoing-id` from its Begin: the transfer id of its first transfer.
    peer_first_transfer: u32,
    /// The peer's `next-incoming-id` + `incoming-window`: our transfer ids must stay below it.
    peer_window_end: u32,
    our_first_transfer: u32,
}

/// An owned frame, for the handshake and the sender's incoming side.
enum Got {
    Amqp(Option<Performative>),
    Sasl(SaslFrame),
}

impl Conn {
    async fn open(
        addr: SocketAddr,
        login: &Login,
        container: &str,
        first_transfer: u32,
    ) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut c = Self {
            stream,
            inbuf: BytesMut::with_capacity(256 * 1024),
            out: BytesMut::with_capacity(256 * 1024),
            peer_first_transfer: 0,
            peer_window_end: 0,
            our_first_transfer: first_transfer,
        };
        c.stream.write_all(codec::SASL_HEADER).await?;
        ensure!(
            c.header().await? == ProtocolId::Sasl,
            "{addr}: no SASL layer"
        );
        match c.next(MIN_FRAME).await? {
            Got::Sasl(SaslFrame::Mechanisms(_)) => {}
            _ => bail!("{addr}: expected sasl-mechanisms"),
        }
        let (mechanism, response) = match login {
            Login::Anonymous => ("ANONYMOUS", None),
            Login::Plain { user, password } => (
                "PLAIN",
                Some(Binary::from(format!("\0{user}\0{password}").into_bytes())),
            ),
        };
        let init = SaslInit {
            mechanism: mechanism.into(),
            initial_response: response,
            hostname: None,
        };
        codec::encode_sasl(&SaslFrame::Init(init), &mut c.out)?;
        c.flush().await?;
        match c.next(MIN_FRAME).await? {
            Got::Sasl(SaslFrame::Outcome(o)) if o.code == SaslCode::Ok => {}
            Got::Sasl(SaslFrame::Outcome(o)) => {
                bail!("{addr}: SASL {mechanism} refused: {:?}", o.code)
            }
            _ => bail!("{addr}: expected sasl-outcome"),
        }
        c.stream.write_all(codec::AMQP_HEADER).await?;
        ensure!(
            c.header().await? == ProtocolId::Amqp,
            "{addr}: no AMQP layer"
        );
        let open = Open {
            container_id: container.to_owned(),
            hostname: None,
            max_frame_size: MAX_FRAME.into(),
            channel_max: 0.into(),
            idle_time_out: None,
            outgoing_locales: None,
            incoming_locales: None,
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        let begin = Begin {
            remote_channel: None,
            next_outgoing_id: first_transfer,
            incoming_window: WINDOW,
            outgoing_window: WINDOW,
            handle_max: 0.into(),
            offered_capabilities: None,
            desired_capabilities: None,
            properties: None,
        };
        c.send(&Performative::Open(open))?;
        c.send(&Performative::Begin(begin))?;
        c.flush().await?;
        let mut opened = false;
        loop {
            match c.next(MAX_FRAME).await? {
                Got::Amqp(Some(Performative::Open(_))) => opened = true,
                Got::Amqp(Some(Performative::Begin(b))) if opened => {
                    c.peer_first_transfer = b.next_outgoing_id;
                    c.peer_window_end = first_transfer.wrapping_add(b.incoming_window);
                    return Ok(c);
                }
                Got::Amqp(Some(Performative::Close(cl))) => {
                    bail!("{addr}: the peer closed the connection: {:?}", cl.error)
                }
                Got::Amqp(_) => {}
                Got::Sasl(_) => bail!("{addr}: a SASL frame after SASL"),
            }
        }
    }

    async fn header(&mut self) -> anyhow::Result<ProtocolId> {
        loop {
            if let Some(id) = codec::parse_protocol_header(&self.inbuf)? {
                self.inbuf.advance(8);
                return Ok(id);
            }
            self.read().await?;
        }
    }

    async fn read(&mut self) -> anyhow::Result<()> {
        if self.stream.read_buf(&mut self.inbuf).await? == 0 {
            bail!("the peer closed the connection");
        }
        Ok(())
    }

    /// The next frame, owned (the payload of a transfer is dropped: only the sender reads this way).
    async fn next(&mut self, max_frame: u32) -> anyhow::Result<Got> {
        loop {
            if let Some(got) = self.try_next(max_frame)? {
                return Ok(got);
            }
            self.read().await?;
        }
    }

    fn try_next(&mut self, max_frame: u32) -> anyhow::Result<Option<Got>> {
        let Some((frame, used)) = codec::decode_frame(&self.inbuf, max_frame)? else {
            return Ok(None);
        };
        let got = match frame {
            Frame::Amqp { performative, .. } => Got::Amqp(performative),
            Frame::Sasl(s) => Got::Sasl(s),
        };
        self.inbuf.advance(used);
        Ok(Some(got))
    }

    fn send(&mut self, p: &Performative) -> anyhow::Result<()> {
        codec::encode_frame(0, p, &[], &mut self.out)?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Attaches link 0 and waits for the peer's Attach; a refused link (no terminus) fails.
    async fn attach(&mut self, attach: Attach) -> anyhow::Result<Attach> {
        let role = attach.role.clone();
        self.send(&Performative::Attach(attach))?;
        self.flush().await?;
        loop {
            match self.next(MAX_FRAME).await? {
                Got::Amqp(Some(Performative::Attach(a))) => {
                    let refused = match role {
                        Role::Sender => a.target.is_none(),
                        Role::Receiver => a.source.is_none(),
                    };
                    ensure!(!refused, "the peer refused the link");
                    return Ok(a);
                }
                Got::Amqp(Some(Performative::Detach(d))) => {
                    bail!("the peer detached the link: {:?}", d.error)
                }
                Got::Amqp(Some(Performative::Close(c))) => {
                    bail!("the peer closed the connection: {:?}", c.error)
                }
                _ => {}
            }
        }
    }

    /// Sends Close and gives the peer a moment to answer (best effort).
    async fn close(mut self) {
        let _ = self.send(&Performative::Close(Close { error: None }));
        let _ = self.flush().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while self.read().await.is_ok() {}
        })
        .await;
    }
}

const MIN_FRAME: u32 = codec::MIN_MAX_FRAME_SIZE;

/// The transfer frame every message is a copy of, and where its variable fields lie.
#[derive(Debug, Clone)]
pub struct Template {
    pub frame: Vec<u8>,
    /// Offset of the delivery id's 4 bytes (big-endian) and of the delivery tag's 4 bytes.
    id_at: usize,
    tag_at: usize,
    /// Offset of the body (sequence number, then send time).
    body_at: usize,
}

impl Template {
    /// Encodes the transfer twice with different ids and tags, and takes the bytes that differ as the
    /// fields to patch: no offset is computed by hand from the encoding rules.
    pub fn new(spec: &Spec) -> anyhow::Result<Self> {
        let mut props = ApplicationProperties::builder();
        for (k, v) in &spec.properties {
            props = props.insert(k.as_str(), v.as_str());
        }
        let app = props.build();
        let properties = Properties::builder()
            .content_type("application/octet-stream")
            .build();
        let body = encode_body(0, 0, spec.body);
        let mut payload = Vec::new();
        codec::build_message(
            &MessageParts {
                properties: Some(&properties),
                application_properties: Some(&app),
                data: &body,
                ..MessageParts::default()
            },
            &mut payload,
        )?;
        ensure!(
            payload.ends_with(&body),
            "the message does not end with its body"
        );
        let settled = spec.mode == Mode::Presettled;
        let encode = |id: u32, tag: u8| -> anyhow::Result<Vec<u8>> {
            let transfer = Transfer {
                handle: Handle(0),
                delivery_id: Some(id),
                delivery_tag: Some(DeliveryTag::from(vec![tag; 4])),
                message_format: Some(0),
                settled: Some(settled),
                more: false,
                rcv_settle_mode: None,
                state: None,
                resume: false,
                aborted: false,
                batchable: false,
            };
            let mut out = BytesMut::new();
            codec::encode_transfer(0, &transfer, &payload, MAX_FRAME, &mut out)?;
            Ok(out.to_vec())
        };
        let a = encode(0x0101_0101, 0x11)?;
        let b = encode(0x0202_0202, 0x22)?;
        ensure!(
            a.len() == b.len(),
            "the transfer's length depends on its id"
        );
        let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        ensure!(
            differ.len() == 8
                && differ[3] == differ[0] + 3
                && differ[7] == differ[4] + 3
                && a[differ[0]..differ[0] + 4] == [1; 4],
            "unexpected transfer encoding: bytes {differ:?} differ"
        );
        Ok(Self {
            body_at: a.len() - body.len(),
            id_at: differ[0],
            tag_at: differ[4],
            frame: a,
        })
    }

    /// Appends the transfer of delivery `id` with body stamp (`seq`, `sent_ns`).
    pub fn put(&self, out: &mut BytesMut, id: u32, seq: u32, sent_ns: u64) {
        let start = out.len();
        out.extend_from_slice(&self.frame);
        let f = &mut out[start..];
        f[self.id_at..self.id_at + 4].copy_from_slice(&id.to_be_bytes());
        f[self.tag_at..self.tag_at + 4].copy_from_slice(&id.to_le_bytes());
        f[self.body_at..self.body_at + 4].copy_from_slice(&seq.to_le_bytes());
        f[self.body_at + 4..self.body_at + 12].copy_from_slice(&sent_ns.to_le_bytes());
    }
}

/// The sender's tally.
#[derive(Debug, Default)]
struct SendTally {
    sent: u64,
    accepted: u64,
    released: u64,
    rejected: u64,
    first_error: Option<String>,
}

/// Deliveries awaiting their outcome, as flags from the oldest one on.
#[derive(Debug, Default)]
pub struct Unsettled {
    base: u32,
    pending: VecDeque<bool>,
    pub count: u32,
}

impl Unsettled {
    pub fn push(&mut self, id: u32) {
        if self.pending.is_empty() {
            self.base = id;
        }
        let at = id.wrapping_sub(self.base) as usize;
        if at >= self.pending.len() {
            self.pending.resize(at + 1, false);
        }
        if !self.pending[at] {
            self.pending[at] = true;
            self.count += 1;
        }
    }

    /// Settles `id`; false when it was not pending.
    pub fn settle(&mut self, id: u32) -> bool {
        let at = id.wrapping_sub(self.base) as usize;
        let Some(flag) = self.pending.get_mut(at) else {
            return false;
        };
        if !*flag {
            return false;
        }
        *flag = false;
        self.count -= 1;
        while self.pending.front() == Some(&false) {
            self.pending.pop_front();
            self.base = self.base.wrapping_add(1);
        }
        true
    }
}

async fn send_loop(
    mut c: Conn,
    spec: Spec,
    template: Template,
    base: Instant,
    t1: Instant,
) -> anyhow::Result<(SendTally, Conn)> {
    let mut tally = SendTally::default();
    let mut next_id = c.our_first_transfer;
    let mut delivery_count: u32 = 0;
    let mut credit_end: u32 = 0; // the receiver's delivery-count + link-credit
    let mut unsettled = Unsettled::default();
    let unsettled_mode = spec.mode == Mode::Unsettled;
    let window = spec.credit.max(1);
    let mut seq: u32 = 0;
    let mut outcomes_deadline = None;
    loop {
        // Everything already read: credit, session window, outcomes.
        while let Some(got) = c.try_next(MAX_FRAME)? {
            match got {
                Got::Amqp(Some(Performative::Flow(f))) => {
                    if let Some(next_in) = f.next_incoming_id {
                        c.peer_window_end = next_in.wrapping_add(f.incoming_window);
                    }
                    if f.handle == Some(Handle(0)) {
                        // A receiver that has not seen our Attach yet leaves its delivery-count out:
                        // it is then our initial one, 0 (RabbitMQ's plugin does this).
                        if let Some(lc) = f.link_credit {
                            credit_end = f.delivery_count.unwrap_or(0).wrapping_add(lc);
                        }
                    }
                }
                Got::Amqp(Some(Performative::Disposition(d))) => {
                    let last = d.last.unwrap_or(d.first);
                    let mut id = d.first;
                    loop {
                        if unsettled.settle(id) {
                            match &d.state {
                                Some(DeliveryState::Accepted(_)) => tally.accepted += 1,
                                Some(DeliveryState::Released(_))
                                | Some(DeliveryState::Modified(_)) => tally.released += 1,
                                other => {
                                    tally.rejected += 1;
                                    tally
                                        .first_error
                                        .get_or_insert_with(|| format!("outcome {other:?}"));
                                }
                            }
                        }
                        if id == last {
                            break;
                        }
                        id = id.wrapping_add(1);
                    }
                }
                Got::Amqp(Some(Performative::Detach(d))) => {
                    bail!("sender: the peer detached the link: {:?}", d.error)
                }
                Got::Amqp(Some(Performative::End(e))) => {
                    bail!("sender: the peer ended the session: {:?}", e.error)
                }
                Got::Amqp(Some(Performative::Close(cl))) => {
                    bail!("sender: the peer closed the connection: {:?}", cl.error)
                }
                Got::Amqp(_) => {}
                Got::Sasl(_) => bail!("sender: a SASL frame after SASL"),
            }
        }
        let now = Instant::now();
        if now >= t1 {
            if !unsettled_mode || unsettled.count == 0 {
                break;
            }
            let deadline = *outcomes_deadline.get_or_insert(now + Duration::from_secs(15));
            if now >= deadline {
                tally.rejected += u64::from(unsettled.count);
                tally
                    .first_error
                    .get_or_insert_with(|| "outcomes never came (15 s)".to_owned());
                break;
            }
        }
        let link_room = credit_end.wrapping_sub(delivery_count);
        let session_room = c.peer_window_end.wrapping_sub(next_id);
        let room = if link_room > i32::MAX as u32 {
            0
        } else {
            link_room
        }
        .min(if session_room > i32::MAX as u32 {
            0
        } else {
            session_room
        })
        .min(if unsettled_mode {
            window.saturating_sub(unsettled.count)
        } else {
            u32::MAX
        })
        .min(BATCH);
        if room > 0 && now < t1 {
            let sent_ns = u64::try_from(base.elapsed().as_nanos()).unwrap_or(u64::MAX);
            for _ in 0..room {
                template.put(&mut c.out, next_id, seq, sent_ns);
                if unsettled_mode {
                    unsettled.push(next_id);
                }
                next_id = next_id.wrapping_add(1);
                seq = seq.wrapping_add(1);
            }
            delivery_count = delivery_count.wrapping_add(room);
            tally.sent += u64::from(room);
            c.flush().await.context("sender: writing")?;
            // Whatever has come in meanwhile, without waiting.
            match c.stream.try_read_buf(&mut c.inbuf) {
                Ok(0) => bail!("sender: the peer closed the connection"),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e).context("sender: reading"),
            }
        } else {
            // Nothing may go out: wait for credit or outcomes (or the end of the window).
            let until = if now < t1 {
                t1
            } else {
                outcomes_deadline.unwrap_or(now)
            };
            match tokio::time::timeout_at(until.into(), c.stream.read_buf(&mut c.inbuf)).await {
                Ok(Ok(0)) => bail!("sender: the peer closed the connection"),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e).context("sender: reading"),
            }
        }
    }
    Ok((tally, c))
}

/// What the receiver has counted so far (read while it runs, to know when it caught up).
#[derive(Debug, Default)]
struct Shared {
    received: AtomicU64,
}

#[derive(Debug, Default)]
struct RecvTally {
    received_window: u64,
    latencies_us: Vec<u32>,
}

/// The receiver's link state.
struct Receiving {
    credit: u32,
    /// The sender's delivery-count as the receiver tracks it.
    delivery_count: u32,
    /// Delivery-count at the last Flow sent.
    flowed_at: u32,
    /// The peer's next transfer id (frames counted).
    next_incoming: u32,
    our_next_outgoing: u32,
    /// Unsettled deliveries received in this read, as a contiguous range to accept.
    accept: Option<(u32, u32)>,
    /// The delivery id of a message still arriving in several frames, and whether it was settled.
    partial: Option<(u32, bool)>,
    /// Accept each delivery with a disposition of its own (as applications that settle one message at
    /// a time do) instead of one per contiguous range.
    one_by_one: bool,
}

impl Receiving {
    fn flow(&self) -> Performative {
        Performative::Flow(Flow {
            next_incoming_id: Some(self.next_incoming),
            incoming_window: WINDOW,
            next_outgoing_id: self.our_next_outgoing,
            outgoing_window: WINDOW,
            handle: Some(Handle(0)),
            delivery_count: Some(self.delivery_count),
            link_credit: Some(self.credit),
            available: None,
            drain: false,
            echo: false,
            properties: None,
        })
    }

    fn accept(&mut self, id: u32, out: &mut BytesMut) -> anyhow::Result<()> {
        if self.one_by_one {
            return put_accept((id, id), out);
        }
        self.accept = match self.accept {
            Some((first, last)) if last.wrapping_add(1) == id => Some((first, id)),
            Some(range) => {
                put_accept(range, out)?;
                Some((id, id))
            }
            None => Some((id, id)),
        };
        Ok(())
    }
}

fn put_accept((first, last): (u32, u32), out: &mut BytesMut) -> anyhow::Result<()> {
    let d = Disposition {
        role: Role::Receiver,
        first,
        last: (last != first).then_some(last),
        settled: true,
        state: Some(DeliveryState::Accepted(Accepted {})),
        batchable: false,
    };
    codec::encode_frame(0, &Performative::Disposition(d), &[], out)?;
    Ok(())
}

impl Receiving {
    /// Attaches a receiving link on `address` (`name`) and grants it `credit`.
    async fn attach(
        c: &mut Conn,
        name: String,
        address: &str,
        credit: u32,
        one_by_one: bool,
    ) -> anyhow::Result<Self> {
        let peer_attach = c
            .attach(Attach {
                name,
                handle: Handle(0),
                role: Role::Receiver,
                snd_settle_mode: SenderSettleMode::Mixed,
                rcv_settle_mode: ReceiverSettleMode::First,
                source: Some(Box::new(Source {
                    address: Some(address.to_owned()),
                    ..Source::default()
                })),
                target: Some(Box::new(TargetArchetype::Target(Target::default()))),
                unsettled: None,
                incomplete_unsettled: false,
                initial_delivery_count: None,
                max_message_size: None,
                offered_capabilities: None,
                desired_capabilities: None,
                properties: None,
            })
            .await
            .with_context(|| format!("attaching a receiver to {address}"))?;
        let initial = peer_attach.initial_delivery_count.unwrap_or(0);
        let link = Self {
            credit,
            delivery_count: initial,
            flowed_at: initial,
            next_incoming: c.peer_first_transfer,
            our_next_outgoing: 0,
            accept: None,
            partial: None,
            one_by_one,
        };
        c.send(&link.flow())?;
        c.flush().await?;
        Ok(link)
    }

    /// Takes the whole frames read into `c.inbuf`: hands `each` the payload of every whole message
    /// (`None` for the last frame of one that came in several), accepts the unsettled deliveries, and
    /// queues the dispositions and, once half the credit is used, a flow (written at the next flush).
    fn take_frames(
        &mut self,
        c: &mut Conn,
        mut each: impl FnMut(Option<&[u8]>),
    ) -> anyhow::Result<()> {
        let mut at = 0;
        while let Some((frame, used)) = codec::decode_frame(&c.inbuf[at..], MAX_FRAME)? {
            at += used;
            let Frame::Amqp {
                performative,
                payload,
                ..
            } = frame
            else {
                bail!("receiver: a SASL frame after SASL");
            };
            match performative {
                Some(Performative::Transfer(t)) => {
                    self.next_incoming = self.next_incoming.wrapping_add(1);
                    let (id, settled) = match (t.delivery_id, self.partial) {
                        (Some(id), _) => (id, t.settled.unwrap_or(false)),
                        (None, Some(p)) => p,
                        (None, None) => bail!("receiver: a transfer without a delivery id"),
                    };
                    if t.more {
                        self.partial = Some((id, settled));
                        continue;
                    }
                    let whole = self.partial.take().is_none();
                    self.delivery_count = self.delivery_count.wrapping_add(1);
                    each(whole.then_some(payload));
                    if !settled {
                        self.accept(id, &mut c.out)?;
                    }
                }
                Some(Performative::Detach(d)) => {
                    bail!("receiver: the peer detached the link: {:?}", d.error)
                }
                Some(Performative::End(e)) => {
                    bail!("receiver: the peer ended the session: {:?}", e.error)
                }
                Some(Performative::Close(cl)) => {
                    bail!("receiver: the peer closed the connection: {:?}", cl.error)
                }
                _ => {}
            }
        }
        c.inbuf.advance(at);
        if let Some(range) = self.accept.take() {
            put_accept(range, &mut c.out)?;
        }
        if self.delivery_count.wrapping_sub(self.flowed_at) >= self.credit.div_ceil(2) {
            self.flowed_at = self.delivery_count;
            let flow = self.flow();
            c.send(&flow)?;
        }
        Ok(())
    }
}

async fn receive_loop(
    mut c: Conn,
    mut link: Receiving,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
    base: Instant,
    (t0, t1): (Instant, Instant),
) -> anyhow::Result<RecvTally> {
    let mut tally = RecvTally::default();
    loop {
        tokio::select! {
            read = c.stream.read_buf(&mut c.inbuf) => {
                if read.context("receiver: reading")? == 0 {
                    bail!("receiver: the peer closed the connection");
                }
            }
            _ = stop.changed() => break,
        }
        let now = Instant::now();
        let in_window = now >= t0 && now <= t1;
        let now_ns = u64::try_from(now.duration_since(base).as_nanos()).unwrap_or(u64::MAX);
        let mut received = 0u64;
        link.take_frames(&mut c, |payload| {
            received += 1;
            if in_window {
                tally.received_window += 1;
                let sent = payload
                    .and_then(|p| codec::parse_message(p).ok())
                    .and_then(|m| m.single_data().and_then(decode_sent_ns));
                if let Some(sent) = sent {
                    let us = now_ns.saturating_sub(sent) / 1000;
                    tally
                        .latencies_us
                        .push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
        })?;
        c.flush().await.context("receiver: writing")?;
        shared.received.fetch_add(received, Ordering::Relaxed);
    }
    c.close().await;
    Ok(tally)
}

/// A receiver for the MQTT scenarios (`crate::mqtt::traffic`): logs in as `login`, attaches `address`
/// granting `credit` (again once half of it is used), and hands `each` the data section of every whole
/// message (`None`: a message without one), accepting each unsettled delivery with a disposition of its
/// own, as applications that settle one message at a time do; what one read brought is answered in one
/// write. Runs until the connection fails.
pub async fn receive_each(
    addr: SocketAddr,
    login: &Login,
    address: &str,
    credit: u32,
    attached: tokio::sync::oneshot::Sender<()>,
    mut each: impl FnMut(Option<&[u8]>),
) -> anyhow::Result<()> {
    let container = format!("ferry-bench-rx-{}", std::process::id());
    let mut c = Conn::open(addr, login, &container, 0)
        .await
        .context("receiver: opening")?;
    let mut link = Receiving::attach(
        &mut c,
        format!("ferry-bench-{address}"),
        address,
        credit,
        true,
    )
    .await?;
    // The link is attached and its credit written: messages sent from now on find a consumer.
    let _ = attached.send(());
    loop {
        if c.stream
            .read_buf(&mut c.inbuf)
            .await
            .context("receiver: reading")?
            == 0
        {
            bail!("receiver: the peer closed the connection");
        }
        link.take_frames(&mut c, |payload| {
            let parsed = payload.and_then(|p| codec::parse_message(p).ok());
            each(parsed.as_ref().and_then(|m| m.single_data()));
        })?;
        c.flush().await.context("receiver: writing")?;
    }
}

/// A run under way: the caller samples CPU time at the window's edges.
pub struct Running {
    /// The sender's connection comes back open: a broker may drop presettled messages it has not
    /// processed yet when their connection closes, so it is closed only once the receiver caught up.
    sender: JoinHandle<anyhow::Result<(SendTally, Conn)>>,
    receiver: JoinHandle<anyhow::Result<RecvTally>>,
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    t0: Instant,
    t1: Instant,
    mode: Mode,
}

/// Connects both ends, attaches, grants credit and starts sending: warm-up, then the window.
pub async fn start(spec: Spec) -> anyhow::Result<Running> {
    let base = Instant::now();
    let template = Template::new(&spec)?;
    let mut rx = Conn::open(
        spec.receiver.addr,
        &spec.receiver.login,
        "ferry-bench-b4-raw-rx",
        0,
    )
    .await
    .context("receiver")?;
    let link = Receiving::attach(
        &mut rx,
        "ferry-bench-b4-raw-rx".into(),
        &spec.receiver.address,
        spec.credit,
        false,
    )
    .await?;

    let mut tx = Conn::open(
        spec.sender.addr,
        &spec.sender.login,
        "ferry-bench-b4-raw-tx",
        FIRST_DELIVERY_ID,
    )
    .await
    .context("sender")?;
    tx.attach(Attach {
        name: "ferry-bench-b4-raw-tx".into(),
        handle: Handle(0),
        role: Role::Sender,
        snd_settle_mode: match spec.mode {
            Mode::Presettled => SenderSettleMode::Settled,
            Mode::Unsettled => SenderSettleMode::Unsettled,
        },
        rcv_settle_mode: ReceiverSettleMode::First,
        source: Some(Box::new(Source::default())),
        target: Some(Box::new(TargetArchetype::Target(Target {
            address: Some(spec.sender.address.clone()),
            ..Target::default()
        }))),
        unsettled: None,
        incomplete_unsettled: false,
        initial_delivery_count: Some(0),
        max_message_size: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    })
    .await
    .with_context(|| format!("attaching a sender to {}", spec.sender.address))?;

    let t0 = Instant::now() + spec.warmup;
    let t1 = t0 + spec.duration;
    let shared = Arc::new(Shared::default());
    let (stop, stop_rx) = watch::channel(false);
    let receiver = tokio::spawn(receive_loop(
        rx,
        link,
        shared.clone(),
        stop_rx,
        base,
        (t0, t1),
    ));
    let mode = spec.mode;
    let sender = tokio::spawn(send_loop(tx, spec, template, base, t1));
    Ok(Running {
        sender,
        receiver,
        shared,
        stop,
        t0,
        t1,
        mode,
    })
}

impl Running {
    pub async fn window_start(&self) {
        tokio::time::sleep_until(self.t0.into()).await;
    }

    pub async fn window_end(&self) {
        tokio::time::sleep_until(self.t1.into()).await;
    }

    /// Waits for the sender, then for the receiver to catch up (or 5 s without progress); counts what
    /// never came.
    pub async fn finish(self) -> anyhow::Result<Counts> {
        let (tally, tx) = self.sender.await.context("the sender task")??;
        let expected = match self.mode {
            Mode::Presettled => tally.sent,
            Mode::Unsettled => tally.accepted,
        };
        let received = || self.shared.received.load(Ordering::Relaxed);
        let mut last = received();
        let mut progress = Instant::now();
        while last < expected
            && progress.elapsed() < Duration::from_secs(5)
            && !self.receiver.is_finished()
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let now = received();
            if now != last {
                last = now;
                progress = Instant::now();
            }
        }
        let received_total = received();
        self.stop.send_replace(true);
        tx.close().await;
        let (rx, rx_error) = match self.receiver.await {
            Ok(Ok(t)) => (t, None),
            Ok(Err(e)) => (RecvTally::default(), Some(format!("{e:#}"))),
            Err(e) => (RecvTally::default(), Some(format!("receiver task: {e}"))),
        };
        let mut latencies_us = rx.latencies_us;
        latencies_us.sort_unstable();
        Ok(Counts {
            sent: tally.sent,
            accepted: tally.accepted,
            released: tally.released,
            rejected: tally.rejected,
            received_window: rx.received_window,
            received_total,
            lost: expected.saturating_sub(received_total),
            window: self.t1.duration_since(self.t0),
            latencies_us,
            first_error: tally.first_error.or(rx_error),
        })
    }
}

#[cfg(test)]
mod tests;
