//! The engine's transfers: incoming deliveries (reassembled from their frames, within link credit) handed
//! to the routing layer, outgoing ones encoded within the peer's session window, and dispositions both
//! ways with the settlements they relay.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fe2o3_amqp_types::definitions::{AmqpError, ErrorCondition, Handle, LinkError, Role};
use fe2o3_amqp_types::messaging::DeliveryState;
use fe2o3_amqp_types::performatives::{Disposition, Performative, Transfer};
use fe2o3_amqp_types::primitives::Binary;

use super::session::Partial;
use super::{accepted, error, routing, Conn, Settling, INCOMING_WINDOW, MAX_MESSAGE_SIZE};
use crate::auth::Direction;
use crate::codec;
use crate::events::EventStore;
use crate::hub::{self, Consumer, Origin};

impl<S: EventStore> Conn<S> {
    pub(super) fn on_transfer(&mut self, channel: u16, transfer: Transfer, payload: Bytes) {
        let Some(session) = self.sessions.get_mut(&channel) else {
            return self.session_error("transfer on an unknown session");
        };
        session.next_incoming_id = session.next_incoming_id.wrapping_add(1);
        session.incoming_since_flow += 1;
        let window_low = session.incoming_since_flow > INCOMING_WINDOW / 2;
        let handle = transfer.handle.0;
        let Some(link) = session.links.get_mut(&handle) else {
            return self.session_error("transfer on an unknown link");
        };
        if link.direction != Direction::In {
            return self.session_error("transfer on a link we send on");
        }
        if transfer.aborted {
            link.partial = None;
            return;
        }
        if link.partial.is_none() && link.credit == 0 {
            // A new delivery without credit: the peer ignores flow control. Credit is how the router
            // bounds what a producer makes it hold, so the link goes (what it had in flight is released).
            return self.detach_with_error(
                channel,
                handle,
                error(
                    ErrorCondition::LinkError(LinkError::TransferLimitExceeded),
                    "transfer without link credit",
                ),
            );
        }
        // Reassemble multi-frame deliveries.
        let (delivery_id, settled, message) = match (link.partial.take(), transfer.more) {
            (None, false) => {
                let Some(id) = transfer.delivery_id else {
                    return self.session_error("transfer without delivery-id");
                };
                (id, transfer.settled.unwrap_or(false), payload)
            }
            (None, true) => {
                let Some(id) = transfer.delivery_id else {
                    return self.session_error("transfer without delivery-id");
                };
                let mut buf = BytesMut::with_capacity(payload.len() * 2);
                buf.extend_from_slice(&payload);
                link.partial = Some(Partial {
                    delivery_id: id,
                    settled: transfer.settled.unwrap_or(false),
                    buf,
                });
                return;
            }
            (Some(mut p), more) => {
                if p.buf.len() + payload.len() > MAX_MESSAGE_SIZE {
                    link.partial = None;
                    return self.close(Some(error(
                        ErrorCondition::AmqpError(AmqpError::ResourceLimitExceeded),
                        "message too large",
                    )));
                }
                p.buf.extend_from_slice(&payload);
                if more {
                    link.partial = Some(p);
                    return;
                }
                (
                    p.delivery_id,
                    p.settled || transfer.settled.unwrap_or(false),
                    p.buf.freeze(),
                )
            }
        };
        link.credit = link.credit.saturating_sub(1);
        link.delivery_count = link.delivery_count.wrapping_add(1);
        let (addr, is_producer) = (link.addr.clone(), link.producer.is_some());
        if is_producer {
            self.route(channel, &addr, delivery_id, settled, message);
        }
        if window_low {
            self.session_flow(channel);
        }
        self.top_up_credit(channel, handle);
    }

    /// Settles a delivery the peer sent with `state`. Outcomes of consecutive deliveries that are alike
    /// (a consumer accepting one message after another) become one disposition frame for the run, written
    /// with whatever else is due ([`Conn::flush_settling`]) instead of one frame each.
    pub(super) fn disposition(&mut self, channel: u16, delivery_id: u32, state: DeliveryState) {
        if let Some(run) = &mut self.settling {
            if run.channel == channel
                && run.last.wrapping_add(1) == delivery_id
                && alike(&run.state, &state)
            {
                run.last = delivery_id;
                return;
            }
        }
        self.flush_settling();
        self.settling = Some(Settling {
            channel,
            first: delivery_id,
            last: delivery_id,
            state,
        });
    }

    /// Encodes the pending run of outcomes, if any.
    pub(super) fn flush_settling(&mut self) {
        let Some(run) = self.settling.take() else {
            return;
        };
        self.send(
            run.channel,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: run.first,
                last: (run.last != run.first).then_some(run.last),
                settled: true,
                state: Some(run.state),
                batchable: false,
            }),
        );
    }

    pub(super) fn on_disposition(&mut self, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            // The peer settling deliveries it sent: we settle first, so there is nothing to do.
            return;
        }
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let last = d.last.unwrap_or(d.first);
        let state = d.state.clone().unwrap_or_else(hub::release);
        let settled = take_settled_range(&mut session.unsettled, d.first, last);
        for (handle, origin) in settled {
            let consumer = session
                .links
                .get(&handle)
                .and_then(|l| l.consumer.as_deref());
            routing::settled(&self.shared, consumer, origin, state.clone());
        }
        if !d.settled {
            // The peer wants us to settle: we do, with its outcome.
            self.send(
                channel,
                Performative::Disposition(Disposition {
                    role: Role::Sender,
                    first: d.first,
                    last: d.last,
                    settled: true,
                    state: d.state,
                    batchable: false,
                }),
            );
        }
    }

    pub(super) fn send_transfer(
        &mut self,
        channel: u16,
        handle: u32,
        payload: Bytes,
        settled: bool,
        origin: Origin,
        consumer: &Arc<Consumer>,
    ) {
        self.unwritten += payload.len() + hub::DELIVERY_OVERHEAD;
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let delivery_id = session.next_delivery_id;
        session.next_delivery_id = delivery_id.wrapping_add(1);
        let start = self.out.len();
        // A message that fits one frame (every telemetry message of a device) is written by hand; a
        // larger one is split by the codec.
        let single = codec::encode_single_transfer(
            channel,
            handle,
            delivery_id,
            settled,
            &payload,
            self.max_frame_out,
            &mut self.head,
            &mut self.out,
        );
        if !single {
            self.encode_split_transfer(channel, handle, delivery_id, &payload, settled, start);
            if self.out.len() == start {
                routing::settled(&self.shared, Some(consumer), origin, hub::release());
                return;
            }
        }
        let Some(session) = self.sessions.get_mut(&channel) else {
            return;
        };
        let frames = if single {
            1
        } else {
            codec::count_frames(&self.out[start..])
        };
        session.next_outgoing_id = session.next_outgoing_id.wrapping_add(frames);
        session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
        if settled {
            routing::settled(&self.shared, Some(consumer), origin, accepted());
        } else {
            session.unsettled.insert(delivery_id, (handle, origin));
        }
    }

    /// Appends a delivery too large for one frame as several; on error nothing is appended.
    fn encode_split_transfer(
        &mut self,
        channel: u16,
        handle: u32,
        delivery_id: u32,
        payload: &[u8],
        settled: bool,
        start: usize,
    ) {
        let transfer = Transfer {
            handle: Handle(handle),
            delivery_id: Some(delivery_id),
            delivery_tag: Some(Binary::from(delivery_id.to_be_bytes().to_vec())),
            message_format: Some(0),
            settled: Some(settled),
            more: false,
            rcv_settle_mode: None,
            state: None,
            resume: false,
            aborted: false,
            batchable: false,
        };
        if let Err(e) = codec::encode_transfer(
            channel,
            &transfer,
            payload,
            self.max_frame_out,
            &mut self.out,
        ) {
            tracing::warn!(error = %e, "cannot encode a transfer");
            self.out.truncate(start);
        }
    }

    pub(super) fn flush_waiting(&mut self, channel: u16) {
        loop {
            let Some(session) = self.sessions.get_mut(&channel) else {
                return;
            };
            if session.remote_incoming_window == 0 {
                return;
            }
            let Some((handle, payload, settled, origin)) = session.waiting.pop_front() else {
                return;
            };
            let Some(consumer) = session.links.get(&handle).and_then(|l| l.consumer.clone()) else {
                self.handle.written(payload.len() + hub::DELIVERY_OVERHEAD);
                routing::settled(&self.shared, None, origin, hub::release());
                continue;
            };
            self.send_transfer(channel, handle, payload, settled, origin, &consumer);
        }
    }
}

/// Removes the deliveries in the (wrapping, RFC 1982) range `first..=last` from `unsettled`.
///
/// The cost is bounded by what is unsettled, not by the width of the range: a peer may name any range
/// (`first=1, last=0` spans all 2^32 ids), and walking it id by id would hold a runtime thread for
/// minutes. A range wider than the map is answered by one pass over the map instead.
fn take_settled_range<V>(unsettled: &mut HashMap<u32, V>, first: u32, last: u32) -> Vec<V> {
    let span = u64::from(last.wrapping_sub(first)) + 1;
    if span <= unsettled.len() as u64 {
        (0..span)
            .filter_map(|i| unsettled.remove(&first.wrapping_add(i as u32)))
            .collect()
    } else {
        let mut in_range: Vec<u32> = unsettled
            .keys()
            .copied()
            .filter(|id| u64::from(id.wrapping_sub(first)) < span)
            .collect();
        // Settle in delivery order, as the narrow branch does.
        in_range.sort_unstable_by_key(|id| id.wrapping_sub(first));
        in_range
            .into_iter()
            .filter_map(|id| unsettled.remove(&id))
            .collect()
    }
}

/// Whether two outcomes may settle one run: both accepted, or both released (the outcomes without
/// anything of their own; a rejection or modification carries its error or flags and stays alone).
fn alike(a: &DeliveryState, b: &DeliveryState) -> bool {
    matches!(
        (a, b),
        (DeliveryState::Accepted(_), DeliveryState::Accepted(_))
            | (DeliveryState::Released(_), DeliveryState::Released(_))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unsettled(ids: &[u32]) -> HashMap<u32, u32> {
        ids.iter().map(|&id| (id, id)).collect()
    }

    #[test]
    fn a_disposition_range_settles_only_the_ids_inside_it() {
        let mut map = unsettled(&[1, 2, 3, 10]);
        assert_eq!(take_settled_range(&mut map, 2, 3), vec![2, 3]);
        assert_eq!(map.len(), 2);
        // Wider than the map: one pass over the map, in delivery order.
        assert_eq!(take_settled_range(&mut map, 0, 1000), vec![1, 10]);
        assert!(map.is_empty());
    }

    #[test]
    fn a_wrapping_range_covers_the_ids_across_zero() {
        let mut map = unsettled(&[u32::MAX - 1, u32::MAX, 0, 1, 5]);
        assert_eq!(
            take_settled_range(&mut map, u32::MAX - 1, 1),
            vec![u32::MAX - 1, u32::MAX, 0, 1]
        );
        assert_eq!(map.keys().copied().collect::<Vec<_>>(), vec![5]);
    }

    #[test]
    fn a_range_of_all_ids_costs_what_is_unsettled() {
        // first=1, last=0 spans 2^32 ids; walking them one by one takes minutes (the test would time out).
        let mut map = unsettled(&[7, 0, 3]);
        assert_eq!(take_settled_range(&mut map, 1, 0), vec![3, 7, 0]);
    }
}
