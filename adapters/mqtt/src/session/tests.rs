use super::commands::{next_packet_id, NotTaken};
use super::connect::keep_alive;
use super::notify::Notification;
use super::*;
use ferry_core::hono::content_type;

#[test]
fn packet_ids_skip_zero_and_those_in_flight() {
    let mut inflight: HashMap<u16, ()> = HashMap::new();
    assert_eq!(next_packet_id(0, &inflight), Some(1));
    inflight.insert(1, ());
    inflight.insert(2, ());
    assert_eq!(next_packet_id(0, &inflight), Some(3));
    assert_eq!(next_packet_id(u16::MAX, &inflight), Some(3));
}

#[test]
fn packet_ids_run_out_instead_of_spinning() {
    // A device that never PUBACKs its commands once made this loop forever.
    let inflight: HashMap<u16, ()> = (1..=u16::MAX).map(|id| (id, ())).collect();
    assert_eq!(next_packet_id(17, &inflight), None);
    let mut one_free = inflight;
    one_free.remove(&9);
    assert_eq!(next_packet_id(17, &one_free), Some(9));
}

#[test]
fn keep_alive_0_or_above_the_maximum_gets_the_maximum() {
    assert_eq!(keep_alive(0, 1200), (1200, Some(1200)));
    assert_eq!(keep_alive(3600, 1200), (1200, Some(1200)));
    assert_eq!(keep_alive(60, 1200), (60, None));
    assert_eq!(keep_alive(1200, 1200), (1200, None));
    // No maximum: what the client asked for, 0 included.
    assert_eq!(keep_alive(0, 0), (0, None));
    assert_eq!(keep_alive(u16::MAX, 0), (u16::MAX, None));
}

#[test]
fn connection_events_carry_hono_s_body() {
    let device = DeviceId::new("d1").expect("id");
    let n = Notification::connection(device, "connected", "client-7");
    assert_eq!(n.content_type, content_type::CONNECTION_NOTIFICATION);
    let body: serde_json::Value = serde_json::from_slice(&n.payload).expect("json");
    assert_eq!(
        body,
        serde_json::json!({"cause": "connected", "remote-id": "client-7", "source": "hono-mqtt", "data": {}})
    );
    let t = Notification::ttd(DeviceId::new("d1").expect("id"), None, -1, "c///q/#".into());
    assert_eq!(t.content_type, content_type::EMPTY_NOTIFICATION);
    assert!(t.payload.is_empty());
    assert_eq!(t.ttd, Some(-1));
}

#[tokio::test]
async fn a_command_beyond_a_full_session_queue_is_handed_back_to_be_released() {
    let command = || {
        Command::unlinked(
            TenantId::new("t").expect("id"),
            DeviceId::new("d").expect("id"),
            "setBrightness",
        )
    };
    let (tx, rx) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
    let target = CommandTarget { session: 1, tx };
    for _ in 0..COMMAND_QUEUE {
        assert!(target.offer(command()).is_ok());
    }
    assert!(matches!(target.offer(command()), Err(NotTaken::Full(_))));
    drop(rx);
    assert!(matches!(target.offer(command()), Err(NotTaken::Gone(_))));
}
