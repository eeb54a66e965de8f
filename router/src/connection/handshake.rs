//! The connection's first steps: the AMQP protocol header, SASL PLAIN, the per-user connection slot, and
//! the peer's open answered with ours (or refused with open + close, so the peer learns why).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf as _, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition};
use fe2o3_amqp_types::performatives::{Open, Performative};
use fe2o3_amqp_types::primitives::Symbol;
use fe2o3_amqp_types::sasl::{SaslCode, SaslMechanisms, SaslOutcome};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{error, Conn, ConnError, Error, CHANNEL_MAX, HANDSHAKE_TIMEOUT, MAX_FRAME_SIZE};
use crate::auth::Principal;
use crate::codec::{self, Frame, ProtocolId, SaslFrame};
use crate::events::EventStore;
use crate::Shared;

/// An application user's share of `max_connections_per_user`, given back when the connection ends.
pub(super) struct UserSlot<'a, S: EventStore> {
    shared: &'a Shared<S>,
    user: Option<String>,
}

impl<'a, S: EventStore> UserSlot<'a, S> {
    /// `None` when the user already has as many connections as allowed. Adapters are not counted.
    pub(super) fn take(shared: &'a Shared<S>, principal: &Principal) -> Option<Self> {
        let Principal::Application(app) = principal else {
            return Some(Self { shared, user: None });
        };
        let mut per_user = shared
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let open = per_user.entry(app.name.clone()).or_insert(0);
        if *open >= shared.config.max_connections_per_user {
            return None;
        }
        *open += 1;
        Some(Self {
            shared,
            user: Some(app.name.clone()),
        })
    }
}

impl<S: EventStore> Drop for UserSlot<'_, S> {
    fn drop(&mut self) {
        let Some(user) = self.user.take() else {
            return;
        };
        let mut per_user = self
            .shared
            .per_user
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(open) = per_user.get_mut(&user) {
            *open = open.saturating_sub(1);
            if *open == 0 {
                per_user.remove(&user);
            }
        }
    }
}

pub(super) async fn read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<(), ConnError> {
    if io.read_buf(buf).await? == 0 {
        return Err(ConnError::Io(std::io::ErrorKind::UnexpectedEof.into()));
    }
    Ok(())
}

async fn read_header<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
) -> Result<ProtocolId, ConnError> {
    loop {
        match codec::parse_protocol_header(buf) {
            Ok(Some(id)) => {
                buf.advance(8);
                return Ok(id);
            }
            Ok(None) => read_more(io, buf).await?,
            Err(e) => return Err(ConnError::Protocol(e.to_string())),
        }
    }
}

/// Protocol header, SASL PLAIN, AMQP header. Returns who the peer is.
pub(super) async fn handshake<IO, S>(
    io: &mut IO,
    buf: &mut BytesMut,
    shared: &Shared<S>,
    peer: SocketAddr,
) -> Result<Principal, ConnError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    S: EventStore,
{
    match read_header(io, buf).await? {
        ProtocolId::Sasl => {}
        _ => {
            // We require SASL: answer with the header we speak and close (AMQP 1.0 §2.2).
            io.write_all(codec::SASL_HEADER).await?;
            return Err(ConnError::Protocol("client did not start SASL".into()));
        }
    }
    let mut out = BytesMut::new();
    out.extend_from_slice(codec::SASL_HEADER);
    codec::encode_sasl(
        &SaslFrame::Mechanisms(SaslMechanisms {
            sasl_server_mechanisms: vec![Symbol::from("PLAIN")].into(),
        }),
        &mut out,
    )
    .map_err(|e| ConnError::Protocol(e.to_string()))?;
    io.write_all(&out).await?;
    let init = loop {
        match codec::decode_frame(buf, 8192) {
            Ok(Some((Frame::Sasl(SaslFrame::Init(init)), n))) => {
                buf.advance(n);
                break init;
            }
            Ok(Some(_)) => return Err(ConnError::Protocol("expected sasl-init".into())),
            Ok(None) => read_more(io, buf).await?,
            Err(e) => return Err(ConnError::Protocol(e.to_string())),
        }
    };
    let principal = if init.mechanism.as_str() == "PLAIN" {
        let response = init
            .initial_response
            .map(|b| b.into_vec())
            .unwrap_or_default();
        let mut parts = response.split(|b| *b == 0);
        let (_authzid, user, pass) = (parts.next(), parts.next(), parts.next());
        match (user.map(std::str::from_utf8), pass.map(std::str::from_utf8)) {
            (Some(Ok(u)), Some(Ok(p))) => shared.auth.authenticate(u, p, Some(peer.ip())).await,
            _ => None,
        }
    } else {
        None
    };
    let mut out = BytesMut::new();
    let code = if principal.is_some() {
        SaslCode::Ok
    } else {
        SaslCode::Auth
    };
    codec::encode_sasl(
        &SaslFrame::Outcome(SaslOutcome {
            code,
            additional_data: None,
        }),
        &mut out,
    )
    .map_err(|e| ConnError::Protocol(e.to_string()))?;
    io.write_all(&out).await?;
    let principal = principal.ok_or(ConnError::Auth)?;
    match read_header(io, buf).await? {
        ProtocolId::Amqp => {}
        _ => {
            return Err(ConnError::Protocol(
                "expected the AMQP header after SASL".into(),
            ))
        }
    }
    io.write_all(codec::AMQP_HEADER).await?;
    Ok(principal)
}

/// Our open: the same limits whether we go on or refuse the peer.
fn our_open(idle_time_out: Option<u32>) -> Open {
    Open {
        container_id: "ferry-router".into(),
        hostname: None,
        max_frame_size: MAX_FRAME_SIZE.into(),
        channel_max: CHANNEL_MAX.into(),
        idle_time_out,
        outgoing_locales: None,
        incoming_locales: None,
        offered_capabilities: None,
        desired_capabilities: None,
        properties: None,
    }
}

impl<S: EventStore> Conn<S> {
    /// Waits for the peer's open, within the handshake time; anything else is answered with open + close
    /// (AMQP 1.0 §2.4.3: a close may only follow an open) so the peer learns why.
    pub(super) async fn await_open<IO: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        inbuf: &mut BytesMut,
    ) -> Result<Open, ConnError> {
        let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            loop {
                match codec::decode_frame(inbuf, MAX_FRAME_SIZE) {
                    Ok(Some((
                        Frame::Amqp {
                            performative: Some(Performative::Open(open)),
                            ..
                        },
                        n,
                    ))) => {
                        inbuf.advance(n);
                        return Ok(open);
                    }
                    Ok(Some(_)) => {
                        return Err(error(
                            ErrorCondition::AmqpError(AmqpError::IllegalState),
                            "expected open",
                        ))
                    }
                    Ok(None) => {
                        if read_more(io, inbuf).await.is_err() {
                            return Err(error(
                                ErrorCondition::AmqpError(AmqpError::IllegalState),
                                "closed before open",
                            ));
                        }
                    }
                    Err(e) => return Err(error(e.condition(), e.to_string())),
                }
            }
        })
        .await;
        match first {
            Ok(Ok(open)) => Ok(open),
            Ok(Err(err)) => Err(self.refuse_connection(io, err).await),
            Err(_) => {
                let err = error(
                    ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                    "no open in time",
                );
                Err(self.refuse_connection(io, err).await)
            }
        }
    }

    /// Takes the peer's limits from its open and answers with ours. Returns the peer's idle time-out.
    pub(super) fn answer_open(&mut self, open: &Open) -> Option<Duration> {
        self.max_frame_out = open.max_frame_size.0.clamp(512, MAX_FRAME_SIZE);
        let peer_idle = open
            .idle_time_out
            .filter(|t| *t > 0)
            .map(|t| Duration::from_millis(u64::from(t)));
        let our_idle = self.shared.config.idle_timeout;
        self.send(
            0,
            Performative::Open(our_open(u32::try_from(our_idle.as_millis()).ok())),
        );
        peer_idle
    }

    /// Answers a peer that did not open properly: our open, then a close with the reason.
    pub(super) async fn refuse_connection<IO: AsyncWrite + Unpin>(
        &mut self,
        io: &mut IO,
        err: Error,
    ) -> ConnError {
        let description = err.description.clone().unwrap_or_default();
        self.send(0, Performative::Open(our_open(None)));
        self.close(Some(err));
        let _ = io.write_all(&self.out).await;
        let _ = io.flush().await;
        ConnError::Protocol(description)
    }
}
