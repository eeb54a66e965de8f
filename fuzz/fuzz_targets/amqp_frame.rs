//! The router's AMQP 1.0 decoding of untrusted bytes: protocol header, frames (both the pre-Open
//! minimum and an unbounded maximum frame size), encoded values, and message sections with the rewrite
//! the router applies to every message from an adapter. A rewritten message must parse again.
#![no_main]

use ferry_router::codec::{
    decode_frame, encoded_len, encoded_len_shallow, parse_message, parse_protocol_header,
    rewrite_message, MessageEdit, MIN_MAX_FRAME_SIZE,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_protocol_header(data);
    for max in [MIN_MAX_FRAME_SIZE, u32::MAX] {
        let mut rest = data;
        while let Ok(Some((frame, n))) = decode_frame(rest, max) {
            assert!(n >= 8 && n <= rest.len(), "frame length {n} out of bounds");
            let _ = format!("{frame:?}");
            rest = &rest[n..];
        }
    }
    if let Ok(n) = encoded_len(data) {
        assert!(n <= data.len());
        assert_eq!(encoded_len_shallow(data).ok(), Some(n));
    }
    if let Ok(view) = parse_message(data) {
        let _ = (view.properties(), view.application_properties(), view.message_annotations());
        // The router's one pass over the application properties finds what a lookup per key finds.
        let keys = ["device_id", "reg_assertion", "orig_adapter"];
        assert_eq!(view.app_properties_raw(keys), keys.map(|k| view.app_property_raw(k)));
        let edit = MessageEdit {
            strip_app_properties: &["reg_assertion"],
            add_message_annotations: &[],
            set_app_properties: &[],
            set_ttl_ms: Some(1000),
            set_durable: None,
        };
        let mut out = Vec::new();
        if rewrite_message(&view, &edit, &mut out).is_ok() {
            if let Err(e) = parse_message(&out) {
                panic!("a rewritten message does not parse: {e:?}");
            }
        }
        // The router's `via` on a command for a gateway: set, replacing any the message had.
        let via = MessageEdit {
            strip_app_properties: &["via"],
            set_app_properties: &[("via", "gw")],
            ..MessageEdit::default()
        };
        let mut out = Vec::new();
        if rewrite_message(&view, &via, &mut out).is_ok() {
            match parse_message(&out) {
                Ok(again) => assert_eq!(again.app_property_str("via"), Some("gw")),
                Err(e) => panic!("a message with via set does not parse: {e:?}"),
            }
        }
    }
});
