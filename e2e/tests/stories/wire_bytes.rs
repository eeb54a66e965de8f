//! What an application's AMQP library receives, byte for byte (issue 16).
//!
//! Since 590113f the MQTT and HTTP adapters write a device message's AMQP encoding themselves
//! (`DeviceMessage::encode`) where fe2o3-amqp encoded it before, and the router forwards it by splicing
//! (sections it does not change copied as bytes, `reg_assertion` cut out of the application properties,
//! the `resource` annotation added). Applications must not see the difference: what Qpid Proton and rhea
//! receive must be what they received from the build before that change, down to the encodings chosen
//! (map8 or map32, str8, smalluint or uint, null for a field at its default ...).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_e2e::amqp::{self, Value};
use ferry_e2e::{
    attached, binary, curl, mosquitto_pub, proton_app, rhea_app, text, Ferry, Process,
};

const WAIT: Duration = Duration::from_secs(10);

/// How a scenario message is sent. Its body names it (every body is different).
enum Send {
    /// `mosquitto_pub` as `user`: topic, QoS.
    Mqtt(&'static str, &'static str, &'static str),
    /// `curl` as `user`: path, headers.
    Http(&'static str, &'static str, &'static [&'static str]),
}

/// `wire-1` has no defaults; `wire-2`'s registration has `defaults` of each JSON kind Ferry turns
/// into an application property (long, double, boolean, string).
const DEVICE_2_DEFAULTS: &str =
    r#"{"defaults": {"floor": 3, "calibration": 1.5, "indoor": true, "site": "north"}}"#;

/// Telemetry, while the application is attached. QoS 1 first: a QoS 0 message that finds the adapter's
/// link to the router without credit yet would be shed at the edge.
const TELEMETRY: [(&str, Send); 4] = [
    // a property bag: a TTL (header) and a property of the device's own (application property)
    (
        "t-mqtt-qos1-bag",
        Send::Mqtt("wire1@acme", "t/?hono-ttl=30&room=kitchen", "1"),
    ),
    (
        "t-http-qos1",
        Send::Http(
            "wire1@acme:pw-1",
            "/telemetry",
            &["content-type: text/plain", "qos-level: 1"],
        ),
    ),
    (
        "t-mqtt-qos1-defaults",
        Send::Mqtt("wire2@acme", "telemetry", "1"),
    ),
    (
        "t-mqtt-qos0-json",
        Send::Mqtt(
            "wire1@acme",
            "telemetry/?content-type=application%2Fjson",
            "0",
        ),
    ),
];

/// Events, stored while no application consumes `event/acme`, then consumed.
const EVENTS: [(&str, Send); 2] = [
    (
        "e-mqtt",
        Send::Mqtt("wire1@acme", "event/?content-type=text%2Fplain", "1"),
    ),
    (
        "e-http",
        Send::Http(
            "wire1@acme:pw-1",
            "/event",
            &["content-type: application/json"],
        ),
    ),
];

/// The sections of each scenario message as a Qpid Proton application received them from the build
/// before the change (the adapters encoding with fe2o3-amqp 0.18.4: binaries from before c01f7a8 and
/// 590113f, without `ferry-amqp` or the adapters' `downstream/amqp/direct.rs`), normalized by
/// [`normalize`] (creation-time zeroed). rhea received the same.
///
/// Captured on 2026-12-07 from that build's binaries in /var/tmp/bin-before, by running this very story
/// against them (the harness takes its binaries from `FERRY_E2E_BIN_DIR`):
/// `FERRY_E2E_BIN_DIR=/var/tmp/bin-before scripts/test --no-install -E 'test(/wire_bytes/)'
/// --no-capture`, which prints what it received in this form. Do not re-capture from a newer build: the
/// point is that the bytes have not changed.
const GOLDEN: &[(&str, &[(&str, &str)])] = &[
    (
        "e-http",
        &[
            ("header", "005370c0020141"),
            ("message-annotations", "005372c11e02a3087265736f75726365a1116576656e742f61636d652f776972652d31"),
            ("properties", "005373c0240a404040404040a3106170706c69636174696f6e2f6a736f6e4040830000000000000000"),
            ("application-properties", "005374c14a08a1096465766963655f6964a106776972652d31a10c6f7269675f61646170746572a109686f6e6f2d68747470a10c6f7269675f61646472657373a1062f6576656e74a103716f735401"),
            ("data", "005375a006652d68747470"),
        ],
    ),
    (
        "e-mqtt",
        &[
            ("header", "005370c0020141"),
            ("message-annotations", "005372c11e02a3087265736f75726365a1116576656e742f61636d652f776972652d31"),
            ("properties", "005373c01e0a404040404040a30a746578742f706c61696e4040830000000000000000"),
            ("application-properties", "005374c16408a1096465766963655f6964a106776972652d31a10c6f7269675f61646170746572a109686f6e6f2d6d717474a10c6f7269675f61646472657373a1206576656e742f3f636f6e74656e742d747970653d74657874253246706c61696ea103716f735401"),
            ("data", "005375a006652d6d717474"),
        ],
    ),
    (
        "t-http-qos1",
        &[
            ("message-annotations", "005372c12202a3087265736f75726365a11574656c656d657472792f61636d652f776972652d31"),
            ("properties", "005373c01e0a404040404040a30a746578742f706c61696e4040830000000000000000"),
            ("application-properties", "005374c14e08a1096465766963655f6964a106776972652d31a10c6f7269675f61646170746572a109686f6e6f2d68747470a10c6f7269675f61646472657373a10a2f74656c656d65747279a103716f735401"),
            ("data", "005375a00b742d687474702d716f7331"),
        ],
    ),
    (
        "t-mqtt-qos0-json",
        &[
            ("message-annotations", "005372c12202a3087265736f75726365a11574656c656d657472792f61636d652f776972652d31"),
            ("properties", "005373c0240a404040404040a3106170706c69636174696f6e2f6a736f6e4040830000000000000000"),
            ("application-properties", "005374c16e08a1096465766963655f6964a106776972652d31a10c6f7269675f61646170746572a109686f6e6f2d6d717474a10c6f7269675f61646472657373a12a74656c656d657472792f3f636f6e74656e742d747970653d6170706c69636174696f6e2532466a736f6ea103716f735400"),
            ("data", "005375a010742d6d7174742d716f73302d6a736f6e"),
        ],
    ),
    (
        "t-mqtt-qos1-bag",
        &[
            ("header", "005370c0080340407000007530"),
            ("message-annotations", "005372c12202a3087265736f75726365a11574656c656d657472792f61636d652f776972652d31"),
            ("properties", "005373c02c0a404040404040a3186170706c69636174696f6e2f6f637465742d73747265616d4040830000000000000000"),
            ("application-properties", "005374c16e0aa1096465766963655f6964a106776972652d31a10c6f7269675f61646170746572a109686f6e6f2d6d717474a10c6f7269675f61646472657373a11b742f3f686f6e6f2d74746c3d333026726f6f6d3d6b69746368656ea103716f735401a104726f6f6da1076b69746368656e"),
            ("data", "005375a00f742d6d7174742d716f73312d626167"),
        ],
    ),
    (
        "t-mqtt-qos1-defaults",
        &[
            ("message-annotations", "005372c12202a3087265736f75726365a11574656c656d657472792f61636d652f776972652d32"),
            ("properties", "005373c02c0a404040404040a3186170706c69636174696f6e2f6f637465742d73747265616d4040830000000000000000"),
            ("application-properties", "005374c18210a1096465766963655f6964a106776972652d32a10c6f7269675f61646170746572a109686f6e6f2d6d717474a10c6f7269675f61646472657373a10974656c656d65747279a103716f735401a10b63616c6962726174696f6e823ff8000000000000a105666c6f6f725503a106696e646f6f7241a10473697465a1056e6f727468"),
            ("data", "005375a014742d6d7174742d716f73312d64656661756c7473"),
        ],
    ),
];

#[test]
fn proton_and_rhea_receive_device_messages_byte_for_byte_as_before_the_adapters_encoded_them() {
    // Which build this is (FERRY_E2E_BIN_DIR or the workspace's), for the log.
    println!("binaries: {}", binary("ferry").display());
    let ferry = Ferry::up();
    ferry.tenant("acme");
    ferry.device_with_password("acme", "wire-1", "wire1", "pw-1");
    ferry.device("acme", "wire-2", DEVICE_2_DEFAULTS);
    ferry.password("acme", "wire-2", "wire2", "pw-2");
    ferry.application("bytes", "pw-bytes", &["acme"]);
    let url = ferry.amqp_url("bytes", "pw-bytes");

    let proton = scenario(&ferry, &url, proton_app);
    let rhea = scenario(&ferry, &url, rhea_app);

    let mut problems = Vec::new();
    // (a) Each application gets its own sends of the scenario (telemetry goes to one of competing
    // consumers; an accepted event is gone): the creation-time is the one value that may differ.
    let whole = |s: Option<&Sections>| {
        s.map_or("nothing".into(), |s| {
            amqp::hex(&s.iter().flat_map(|(_, b)| b.clone()).collect::<Vec<_>>())
        })
    };
    for (body, p) in &proton {
        if rhea.get(body) != Some(p) {
            problems.push(format!(
                "{body}: Proton and rhea received different bytes (creation-time zeroed):\n  \
                 Proton {}\n  rhea   {}",
                whole(Some(p)),
                whole(rhea.get(body)),
            ));
        }
    }
    // (b) Both against what Proton received from the build before.
    for (client, received) in [("Proton", &proton), ("rhea", &rhea)] {
        problems.extend(against_golden(client, received));
    }
    println!(
        "What Proton received, normalized (the form of GOLDEN):\n{}",
        as_golden(&proton)
    );
    assert!(
        problems.is_empty(),
        "{} difference(s) in the bytes applications receive:\n\n{}\n\nWhat Proton received, \
         normalized (the form of GOLDEN):\n{}",
        problems.len(),
        problems.join("\n\n"),
        as_golden(&proton)
    );
}

/// A message's normalized sections: (section name, bytes).
type Sections = Vec<(&'static str, Vec<u8>)>;

/// The scenario with one application (`app`: [`proton_app`] or [`rhea_app`] in `consume-raw` mode): the
/// telemetry while it is attached, then the events, stored until it attaches to `event/acme`. Returns
/// each message's normalized sections by body.
fn scenario(ferry: &Ferry, url: &str, app: fn(&[&str]) -> Process) -> BTreeMap<String, Sections> {
    let from = now_ms();
    let telemetry = attached(app(&["consume-raw", url, "telemetry/acme", "4", "30"]));
    for (body, how) in &TELEMETRY {
        send(ferry, body, how);
    }
    let mut received = telemetry.messages(TELEMETRY.len(), WAIT);
    for (body, how) in &EVENTS {
        send(ferry, body, how);
    }
    let events = attached(app(&["consume-raw", url, "event/acme", "2", "30"]));
    received.extend(events.messages(EVENTS.len(), WAIT));
    let window = (from, now_ms());

    let mut out = BTreeMap::new();
    for m in received {
        let body = m["body"].as_str().unwrap_or_else(|| panic!("no body: {m}"));
        let raw = amqp::unhex(m["raw"].as_str().unwrap_or_else(|| panic!("no raw: {m}")));
        let sections = normalize(&raw, window).unwrap_or_else(|e| panic!("{body}: {e}\n  raw {m}"));
        assert!(
            out.insert(body.to_owned(), sections).is_none(),
            "{body} received twice"
        );
    }
    let expected: Vec<_> = TELEMETRY.iter().chain(&EVENTS).map(|(b, _)| *b).collect();
    assert_eq!(
        out.keys().map(String::as_str).collect::<Vec<_>>(),
        {
            let mut e = expected;
            e.sort_unstable();
            e
        },
        "the scenario's messages"
    );
    out
}

fn send(ferry: &Ferry, body: &str, how: &Send) {
    match how {
        Send::Mqtt(user, topic, qos) => {
            let password = if user.starts_with("wire2") {
                "pw-2"
            } else {
                "pw-1"
            };
            let out = mosquitto_pub(
                ferry.mqtt,
                &[
                    "-u", user, "-P", password, "-q", qos, "-t", topic, "-m", body,
                ],
            );
            assert!(
                out.status.success(),
                "mosquitto_pub {body}: {}",
                text(&out.stderr)
            );
        }
        Send::Http(user, path, headers) => {
            let mut args = vec!["-u", user];
            for h in *headers {
                args.extend(["-H", h]);
            }
            let url = ferry.http_url(path);
            args.extend(["--data-binary", body, &url]);
            let answer = curl(&args);
            assert_eq!(answer.status, 202, "{body}: {answer:?}");
        }
    }
}

/// The message's sections, split by decoding every value (`ferry_e2e::amqp`), with the one value that
/// differs from run to run made constant: the 8 bytes of the properties' `creation-time` (field 9, a
/// timestamp) are set to zero, once it was checked to lie within `window` (milliseconds; the scenario's
/// start and end, with a second's slack). Lengths do not change, nothing else is touched: a message-id, an
/// `absolute-expiry-time` or anything else per run would show as a difference.
fn normalize(raw: &[u8], window: (i64, i64)) -> Result<Sections, String> {
    let sections = amqp::sections(raw)?;
    let mut bytes = raw.to_vec();
    let properties = sections
        .iter()
        .find(|s| s.name == "properties")
        .ok_or("no properties section")?;
    let Value::List(fields) = &properties.value().value else {
        return Err(format!(
            "properties are not a list: {}",
            amqp::render(properties.value())
        ));
    };
    match fields.get(9) {
        Some(n) if matches!(n.value, Value::Timestamp(_)) => {
            let Value::Timestamp(t) = n.value else {
                unreachable!()
            };
            if t < window.0 - 1000 || t > window.1 + 1000 {
                return Err(format!(
                    "creation-time {t} outside the scenario's run {window:?}"
                ));
            }
            bytes[n.start + 1..n.end].fill(0);
        }
        other => {
            return Err(format!(
                "creation-time is not a timestamp: {:?}",
                other.map(amqp::render)
            ))
        }
    }
    Ok(sections
        .iter()
        .map(|s| (s.name, bytes[s.node.start..s.node.end].to_vec()))
        .collect())
}

/// Every difference between `received` and [`GOLDEN`]: per message, which sections differ (missing,
/// extra, or their bytes, with the first differing byte and both decoded).
fn against_golden(client: &str, received: &BTreeMap<String, Sections>) -> Vec<String> {
    let mut problems = Vec::new();
    if GOLDEN.len() != received.len() {
        problems.push(format!(
            "GOLDEN has {} messages, the scenario {}",
            GOLDEN.len(),
            received.len()
        ));
    }
    for (body, golden) in GOLDEN {
        let Some(got) = received.get(*body) else {
            problems.push(format!("{client}: {body} not received"));
            continue;
        };
        let expected: Vec<(&str, Vec<u8>)> =
            golden.iter().map(|(n, h)| (*n, amqp::unhex(h))).collect();
        if names(&expected) != names(got) {
            problems.push(format!(
                "{client}: {body}: sections {:?}, before {:?}",
                names(got),
                names(&expected)
            ));
        }
        for (name, want) in &expected {
            let Some((_, have)) = got.iter().find(|(n, _)| n == name) else {
                continue;
            };
            if have != want {
                let at = have
                    .iter()
                    .zip(want)
                    .position(|(a, b)| a != b)
                    .unwrap_or(have.len().min(want.len()));
                let decoded = |b: &[u8]| {
                    amqp::decode(b, 0)
                        .map(|n| amqp::render(&n))
                        .unwrap_or_else(|e| format!("(does not decode: {e})"))
                };
                problems.push(format!(
                    "{client}: {body}: {name} differs from byte {at} of the section:\n  \
                     before {}\n  now    {}\n  before {}\n  now    {}",
                    amqp::hex(want),
                    amqp::hex(have),
                    decoded(want),
                    decoded(have)
                ));
            }
        }
    }
    problems
}

fn names<'a>(sections: &[(&'a str, Vec<u8>)]) -> Vec<&'a str> {
    sections.iter().map(|(n, _)| *n).collect()
}

/// `received` as Rust source in the form of [`GOLDEN`].
fn as_golden(received: &BTreeMap<String, Sections>) -> String {
    let mut s = String::new();
    for (body, sections) in received {
        let _ = writeln!(s, "    (\n        {body:?},\n        &[");
        for (name, bytes) in sections {
            let _ = writeln!(s, "            ({name:?}, \"{}\"),", amqp::hex(bytes));
        }
        let _ = writeln!(s, "        ],\n    ),");
    }
    s
}

fn now_ms() -> i64 {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970");
    i64::try_from(since.as_millis()).expect("in range")
}
