//! Topic names (with property bags) and subscription filters as devices send them, and the topics the
//! adapter builds back from what it parsed: never a panic, and a parsed publish topic's ids are
//! non-empty slices of the input.
#![no_main]

use ferry_mqtt_adapter::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(parsed) = topic::parse_publish(text) {
        let _ = parsed.error_endpoint();
        for id in [parsed.tenant, parsed.device].into_iter().flatten() {
            assert!(!id.is_empty(), "an empty id was accepted from {text:?}");
        }
        let _ = format!("{:?}", parsed.bag);
    }
    let _ = topic::error_endpoint(text);
    let _ = topic::parse_subscription(text);
    if let Some((a, b, stripped)) = topic::parse_request_id(text) {
        let _ = topic::request_id(a, b, stripped);
    }
});
