//! Property tests of the MQTT packet reader over generated and mutated input, on stable Rust.
//!
//! The same parser is fuzzed with libFuzzer in `fuzz/` (nightly); this test runs in every `cargo nextest`
//! run. It checks two properties:
//! 1. valid packets of random content, built byte by byte from the MQTT 3.1.1 and 5.0 specifications,
//!    decode to exactly what was encoded, also when split at a random point (the reader waits);
//! 2. mutations of valid sessions (bit flips, inserted, deleted and overwritten bytes, truncation, a
//!    repaired remaining length) never panic, never yield a packet without consuming input, and keep
//!    reaching both the success and the error paths (otherwise the test would prove little).
//!
//! `MQTT_FUZZ_ITERATIONS` / `MQTT_FUZZ_SEED` run it longer or differently without editing it.

use bytes::BytesMut;
use ferry_mqtt_adapter::wire::{self, Incoming, Version};

struct Prng(u64);

impl Prng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
    fn text(&mut self, max: usize) -> String {
        const ALPHABET: &[u8] = b"abcXYZ019-_./?=&%+#";
        let len = 1 + self.below(max);
        (0..len)
            .map(|_| char::from(ALPHABET[self.below(ALPHABET.len())]))
            .collect()
    }
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let byte = (n % 128) as u8;
        n /= 128;
        out.push(if n > 0 { byte | 0x80 } else { byte });
        if n == 0 {
            return;
        }
    }
}

fn string(s: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut p = vec![first];
    varint(body.len(), &mut p);
    p.extend_from_slice(body);
    p
}

fn level(v: Version) -> u8 {
    match v {
        Version::V311 => 4,
        Version::V5 => 5,
    }
}

fn connect(v: Version, client_id: &str, login: Option<(&str, &[u8])>, keep_alive: u16) -> Vec<u8> {
    let mut body = Vec::new();
    string("MQTT", &mut body);
    body.push(level(v));
    body.push(0x02 | if login.is_some() { 0xc0 } else { 0 });
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if v == Version::V5 {
        body.push(0); // no properties
    }
    string(client_id, &mut body);
    if let Some((user, password)) = login {
        string(user, &mut body);
        body.extend_from_slice(&(password.len() as u16).to_be_bytes());
        body.extend_from_slice(password);
    }
    packet(0x10, &body)
}

fn publish(v: Version, topic: &str, qos: u8, pkid: u16, payload: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    string(topic, &mut body);
    if qos > 0 {
        body.extend_from_slice(&pkid.to_be_bytes());
    }
    if v == Version::V5 {
        body.push(0);
    }
    body.extend_from_slice(payload);
    packet(0x30 | (qos << 1), &body)
}

fn subscribe(v: Version, pkid: u16, filters: &[(&str, u8)]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v == Version::V5 {
        body.push(0);
    }
    for (filter, qos) in filters {
        string(filter, &mut body);
        body.push(*qos);
    }
    packet(0x82, &body)
}

fn unsubscribe(v: Version, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v == Version::V5 {
        body.push(0);
    }
    for filter in filters {
        string(filter, &mut body);
    }
    packet(0xa2, &body)
}

fn puback(v: Version, pkid: u16) -> Vec<u8> {
    let mut body = pkid.to_be_bytes().to_vec();
    if v == Version::V5 && pkid % 2 == 0 {
        body.push(0x00); // reason code, with the property length left out (allowed)
    }
    packet(0x40, &body)
}

/// Reads every packet in `input` the way the session does; returns how many were read.
fn read_all(v: Version, input: &[u8], max: usize) -> (usize, bool) {
    let mut buf = BytesMut::from(input);
    let mut read = 0;
    loop {
        let before = buf.len();
        match wire::read(v, &mut buf, max) {
            Ok(Some(_)) => {
                assert!(
                    buf.len() < before,
                    "a packet was read without consuming input"
                );
                read += 1;
            }
            Ok(None) => return (read, false),
            Err(_) => return (read, true),
        }
    }
}

#[test]
fn valid_packets_decode_to_what_was_encoded_even_when_split() {
    let iterations = env("MQTT_FUZZ_ITERATIONS", 5_000);
    let mut rng = Prng(env("MQTT_FUZZ_SEED", 0x6d71_7474_f00d_0001));
    for _ in 0..iterations {
        let v = if rng.below(2) == 0 {
            Version::V311
        } else {
            Version::V5
        };
        let topic = rng.text(40);
        let payload_len = rng.below(300);
        let payload = rng.bytes(payload_len);
        let qos = rng.below(2) as u8;
        let pkid = 1 + rng.below(65_534) as u16;
        let bytes = publish(v, &topic, qos, pkid, &payload);

        // Split at a random point: the first part is incomplete, the whole decodes.
        let cut = rng.below(bytes.len());
        let mut buf = BytesMut::from(&bytes[..cut]);
        assert!(
            matches!(wire::read(v, &mut buf, 1 << 20), Ok(None)),
            "a partial packet must wait for more input ({v:?}, cut {cut} of {})",
            bytes.len()
        );
        buf.extend_from_slice(&bytes[cut..]);
        match wire::read(v, &mut buf, 1 << 20) {
            Ok(Some(Incoming::Publish {
                topic: t,
                qos: q,
                pkid: p,
                payload: body,
                ..
            })) => {
                assert_eq!(&t[..], topic.as_bytes());
                assert_eq!(q, qos);
                if qos > 0 {
                    assert_eq!(p, pkid);
                }
                assert_eq!(&body[..], &payload[..]);
            }
            other => panic!("{v:?}: expected the PUBLISH back, got {other:?}"),
        }
        assert!(buf.is_empty(), "the whole packet was consumed");

        // The same packet over a limit smaller than itself is refused, never truncated.
        if bytes.len() > 40 {
            let mut buf = BytesMut::from(&bytes[..]);
            assert!(
                !matches!(wire::read(v, &mut buf, 16), Ok(Some(_))),
                "a packet over the limit must not be delivered"
            );
        }

        let client_id = rng.text(20);
        let user = format!("{}@{}", rng.text(10), rng.text(10));
        // MQTT calls the password binary data, but rumqttc's codecs read it as UTF-8: a password that is
        // not UTF-8 is refused as a malformed CONNECT. It could not match a registry password (text)
        // anyway, so random text passwords here.
        let password = rng.text(50).into_bytes();
        let keep_alive = rng.below(65_535) as u16;
        let bytes = connect(v, &client_id, Some((&user, &password)), keep_alive);
        assert_eq!(wire::connect_version(&bytes).ok().flatten(), Some(v));
        let mut buf = BytesMut::from(&bytes[..]);
        let c = match wire::read_connect(v, &mut buf, 1 << 16) {
            Ok(Some(c)) => c,
            other => panic!("{v:?}: a valid CONNECT must decode: {other:?} from {bytes:02x?}"),
        };
        assert_eq!(c.client_id, client_id);
        assert_eq!(c.keep_alive, keep_alive);
        assert_eq!(c.username.as_deref(), Some(user.as_str()));
        assert_eq!(c.password.as_deref(), Some(&password[..]));
    }
}

#[derive(Debug, Default)]
struct Reached {
    packets: usize,
    errors: usize,
    connects: usize,
}

fn session(v: Version, rng: &mut Prng) -> Vec<u8> {
    let mut s = Vec::new();
    let pkid = 1 + rng.below(1000) as u16;
    match rng.below(6) {
        0 => s.extend(publish(v, "telemetry", 0, 0, b"{\"temp\":5}")),
        1 => s.extend(publish(
            v,
            "event/tenant/dev-1/?content-type=text%2Fplain&hono-ttl=30",
            1,
            pkid,
            b"hello",
        )),
        2 => s.extend(subscribe(
            v,
            pkid,
            &[("command///req/#", 1), ("c///q/#", 0)],
        )),
        3 => s.extend(unsubscribe(v, pkid, &["command///req/#"])),
        4 => s.extend(puback(v, pkid)),
        _ => s.extend(packet(0xc0, &[])), // PINGREQ
    }
    s.extend(publish(v, "t//dev-2", 1, pkid.wrapping_add(1), b"x"));
    s.extend(packet(0xe0, &[])); // DISCONNECT
    s
}

fn mutate(rng: &mut Prng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        if out.is_empty() {
            out.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(5) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = rng.next() as u8,
            2 => out.insert(at, rng.next() as u8),
            3 => {
                out.remove(at);
            }
            _ => out.truncate(at),
        }
    }
    // Most mutations break the first remaining length; repairing it half the time lets the mutated
    // body behind it reach the packet decoders.
    if out.len() >= 2 && rng.below(2) == 0 && out.len() - 2 < 128 {
        out[1] = (out.len() - 2) as u8;
    }
    out
}

#[test]
fn mutated_sessions_never_panic_and_reach_both_paths() {
    let iterations = env("MQTT_FUZZ_ITERATIONS", 20_000);
    let mut rng = Prng(env("MQTT_FUZZ_SEED", 0x6d71_7474_f00d_0002));
    let mut reached = Reached::default();
    for i in 0..iterations {
        let v = if rng.below(2) == 0 {
            Version::V311
        } else {
            Version::V5
        };
        let input = if i % 7 == 0 {
            let len = rng.below(200);
            rng.bytes(len)
        } else if i % 3 == 0 {
            mutate(&mut rng, &connect(v, "dev", Some(("a@t", b"pw")), 30))
        } else {
            let valid = session(v, &mut rng);
            mutate(&mut rng, &valid)
        };
        let _ = wire::connect_version(&input);
        for version in [Version::V311, Version::V5] {
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some(_)) = wire::read_connect(version, &mut buf, 1024) {
                reached.connects += 1;
            }
            for max in [32, 1 << 20] {
                let (read, failed) = read_all(version, &input, max);
                reached.packets += read;
                reached.errors += usize::from(failed);
            }
        }
    }
    let scale = |n: usize| n * iterations as usize / 20_000;
    assert!(reached.packets > scale(10_000), "{reached:?}");
    assert!(reached.errors > scale(10_000), "{reached:?}");
    assert!(reached.connects > scale(200), "{reached:?}");
    println!("{reached:?}");
}
