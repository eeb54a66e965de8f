//! MQTT packet decoding as the adapter runs it: the protocol level sniffed from the first bytes, the
//! CONNECT, then packet after packet from one buffer, for both protocol versions and two size limits.
//! Any panic, or a decoder that claims a packet without consuming bytes, is a finding.
#![no_main]

use bytes::BytesMut;
use ferry_mqtt_adapter::wire::{self, Version};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = wire::connect_version(data);
    for version in [Version::V311, Version::V5] {
        for max in [64, 1 << 20] {
            let mut buf = BytesMut::from(data);
            let _ = wire::read_connect(version, &mut buf, max);
            let mut buf = BytesMut::from(data);
            loop {
                let before = buf.len();
                match wire::read(version, &mut buf, max) {
                    Ok(Some(_)) => assert!(buf.len() < before, "a packet was read without consuming input"),
                    Ok(None) | Err(_) => break,
                }
            }
        }
    }
});
