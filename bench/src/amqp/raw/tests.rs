use std::time::Duration;

use fe2o3_amqp::types::performatives::Performative;
use ferry_router::codec::{self, Frame};
use ferry_test_support::platform::{TestRegistry, TestRouter, INTERNAL_TOKEN};
use serde_json::json;

use super::*;
use crate::amqp::gen::End;

fn spec(mode: Mode, addr: SocketAddr, assertion: &str) -> Spec {
    Spec {
        sender: End {
            addr,
            login: Login::Plain {
                user: "ferry-adapter".into(),
                password: INTERNAL_TOKEN.into(),
            },
            address: "telemetry/bench".into(),
        },
        receiver: End {
            addr,
            login: Login::Plain {
                user: "bench-app".into(),
                password: "app-secret".into(),
            },
            address: "telemetry/bench".into(),
        },
        mode,
        credit: 200,
        body: 12,
        properties: vec![
            ("device_id".into(), "d-0".into()),
            ("reg_assertion".into(), assertion.to_owned()),
        ],
        warmup: Duration::from_millis(300),
        duration: Duration::from_millis(700),
    }
}

#[test]
fn a_patched_template_decodes_as_its_own_transfer() {
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
    for mode in Mode::all() {
        let t = Template::new(&spec(mode, addr, "a.b.c")).expect("template");
        let mut out = BytesMut::new();
        t.put(&mut out, FIRST_DELIVERY_ID + 7, 42, 123_456_789);
        t.put(&mut out, u32::MAX, 43, 5);
        let mut at = 0;
        for (id, seq, sent) in [
            (FIRST_DELIVERY_ID + 7, 42u32, 123_456_789u64),
            (u32::MAX, 43, 5),
        ] {
            let (frame, used) = codec::decode_frame(&out[at..], MAX_FRAME)
                .expect("decodes")
                .expect("complete");
            at += used;
            let Frame::Amqp {
                performative: Some(Performative::Transfer(tr)),
                payload,
                ..
            } = frame
            else {
                panic!("not a transfer");
            };
            assert_eq!(tr.delivery_id, Some(id));
            assert_eq!(
                tr.delivery_tag.as_ref().map(|t| &t[..]),
                Some(&id.to_le_bytes()[..])
            );
            assert_eq!(tr.settled, Some(mode == Mode::Presettled));
            let m = codec::parse_message(payload).expect("message");
            let body = m.single_data().expect("one data section");
            assert_eq!(body.len(), 12);
            assert_eq!(&body[..4], &seq.to_le_bytes());
            assert_eq!(decode_sent_ns(body), Some(sent));
            assert_eq!(m.app_property_str("device_id"), Some("d-0"));
        }
        assert_eq!(at, out.len());
    }
}

#[test]
fn unsettled_deliveries_are_settled_once_in_any_order() {
    let mut u = Unsettled::default();
    for id in 10..15 {
        u.push(id);
    }
    assert_eq!(u.count, 5);
    assert!(u.settle(12));
    assert!(!u.settle(12), "twice");
    assert!(!u.settle(9) && !u.settle(99), "never sent");
    assert!(u.settle(10) && u.settle(11));
    assert_eq!(u.count, 2);
    u.push(15);
    assert!(u.settle(15) && u.settle(13) && u.settle(14));
    assert_eq!(u.count, 0);
    u.push(u32::MAX);
    u.push(0);
    assert!(u.settle(0) && u.settle(u32::MAX), "across the wrap");
    assert_eq!(u.count, 0);
}

/// The raw client through a real router (in-process, with its registry): every message sent
/// (presettled) or accepted (unsettled) arrives, with a real registration assertion on each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raw_client_sends_and_receives_through_the_router_in_both_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = TestRegistry::start(&dir.path().join("registry"), |_| {}).await;
    registry.tenant("bench", json!({})).await;
    registry.device("bench", "d-0", json!({})).await;
    registry
        .application("bench-app", "app-secret", &["bench"])
        .await;
    let router = TestRouter::start(&registry.url, &dir.path().join("router"), |_| {}).await;
    let assertion = registry.assertion("bench", "d-0").await;
    for mode in Mode::all() {
        let running = start(spec(mode, router.addr, &assertion))
            .await
            .expect("connects and attaches");
        let counts = tokio::time::timeout(Duration::from_secs(30), running.finish())
            .await
            .expect("finishes")
            .expect("runs");
        assert!(counts.sent > 1000, "{mode:?}: {counts:?}");
        assert_eq!(counts.first_error, None, "{mode:?}");
        assert_eq!(counts.lost, 0, "{mode:?}: {counts:?}");
        assert_eq!(counts.rejected, 0, "{mode:?}");
        let expected = match mode {
            Mode::Presettled => counts.sent,
            Mode::Unsettled => counts.accepted + counts.released,
        };
        assert_eq!(expected, counts.sent, "{mode:?}: every message settled");
        assert!(counts.received_total >= counts.sent - counts.released);
        assert!(counts.received_window > 0 && !counts.latencies_us.is_empty());
    }
}
