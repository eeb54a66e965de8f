use std::borrow::Cow;

use ferry_core::ids::{DeviceId, TenantId};

use super::*;

fn ok(topic: &str) -> PublishTopic<'_> {
    match parse_publish(topic) {
        Ok(t) => t,
        Err(e) => panic!("{topic:?} should parse: {e}"),
    }
}

fn err(topic: &str) -> TopicError {
    match parse_publish(topic) {
        Ok(t) => panic!("{topic:?} should be refused, got {t:?}"),
        Err(e) => e,
    }
}

fn sub(filter: &str) -> Subscription {
    match parse_subscription(filter) {
        Ok(s) => s,
        Err(e) => panic!("{filter:?} should parse: {e}"),
    }
}

fn tid(s: &str) -> TenantId {
    TenantId::new(s).expect("test tenant id is valid")
}

fn did(s: &str) -> DeviceId {
    DeviceId::new(s).expect("test device id is valid")
}

// --- §2.2 topic table, telemetry and event ---

#[test]
fn authenticated_device_telemetry_and_event_in_both_forms() {
    for (topic, endpoint, long) in [
        ("t", Endpoint::Telemetry, false),
        ("telemetry", Endpoint::Telemetry, true),
        ("e", Endpoint::Event, false),
        ("event", Endpoint::Event, true),
        ("t//", Endpoint::Telemetry, false),
        ("event//", Endpoint::Event, true),
    ] {
        let t = ok(topic);
        assert_eq!(t.endpoint, endpoint, "{topic}");
        assert_eq!(t.long_form, long, "{topic}");
        assert_eq!((t.tenant, t.device), (None, None), "{topic}");
        assert!(t.bag.is_empty(), "{topic}");
    }
}

#[test]
fn unauthenticated_device_names_tenant_and_device_in_both_forms() {
    for (topic, endpoint) in [
        ("t/DEFAULT_TENANT/4711", Endpoint::Telemetry),
        ("telemetry/DEFAULT_TENANT/4711", Endpoint::Telemetry),
        ("e/DEFAULT_TENANT/4711", Endpoint::Event),
        ("event/DEFAULT_TENANT/4711", Endpoint::Event),
    ] {
        let t = ok(topic);
        assert_eq!(t.endpoint, endpoint);
        assert_eq!(t.tenant, Some("DEFAULT_TENANT"));
        assert_eq!(t.device, Some("4711"));
    }
}

#[test]
fn gateway_names_the_device_with_or_without_tenant() {
    for topic in ["t//4712", "telemetry//4712", "e//4712", "event//4712"] {
        let t = ok(topic);
        assert_eq!((t.tenant, t.device), (None, Some("4712")), "{topic}");
    }
    let t = ok("e/DEFAULT_TENANT/urn:dev=1");
    assert_eq!(
        (t.tenant, t.device),
        (Some("DEFAULT_TENANT"), Some("urn:dev=1"))
    );
}

#[test]
fn tenant_only_topics_are_accepted_like_hono() {
    let t = ok("t/DEFAULT_TENANT");
    assert_eq!((t.tenant, t.device), (Some("DEFAULT_TENANT"), None));
    let t = ok("event/DEFAULT_TENANT/");
    assert_eq!((t.tenant, t.device), (Some("DEFAULT_TENANT"), None));
}

// --- §2.2 topic table, command responses ---

#[test]
fn command_responses_in_every_form() {
    for (topic, long, tenant, device) in [
        ("c///s/req1/200", false, None, None),
        ("command///res/req1/200", true, None, None),
        (
            "c/DEFAULT_TENANT/4711/s/req1/200",
            false,
            Some("DEFAULT_TENANT"),
            Some("4711"),
        ),
        (
            "command/DEFAULT_TENANT/4711/res/req1/200",
            true,
            Some("DEFAULT_TENANT"),
            Some("4711"),
        ),
        ("c//4711/s/req1/200", false, None, Some("4711")),
        ("command//4711/res/req1/200", true, None, Some("4711")),
        (
            "c/DEFAULT_TENANT//s/req1/200",
            false,
            Some("DEFAULT_TENANT"),
            None,
        ),
    ] {
        let t = ok(topic);
        assert_eq!(
            t.endpoint,
            Endpoint::CommandResponse {
                request_id: "req1",
                status: 200
            },
            "{topic}"
        );
        assert_eq!(t.long_form, long, "{topic}");
        assert_eq!((t.tenant, t.device), (tenant, device), "{topic}");
    }
}

#[test]
fn command_response_status_range_is_200_to_599() {
    for (status, code) in [("200", 200), ("204", 204), ("404", 404), ("599", 599)] {
        let topic = format!("c///s/r/{status}");
        assert_eq!(
            parse_publish(&topic).map(|t| t.endpoint),
            Ok(Endpoint::CommandResponse {
                request_id: "r",
                status: code
            })
        );
    }
    for status in [
        "199", "600", "20", "2000", "0200", "abc", "", "2 0", "-20", "1e2", "٢٠٠",
    ] {
        let topic = format!("c///s/r/{status}");
        assert!(
            matches!(parse_publish(&topic), Err(TopicError::BadStatus(_))),
            "{topic:?}"
        );
    }
}

#[test]
fn command_response_needs_a_request_id() {
    assert_eq!(err("c///s//200"), TopicError::EmptyRequestId);
    assert_eq!(err("command///res//200"), TopicError::EmptyRequestId);
}

#[test]
fn command_response_part_must_match_the_form() {
    for topic in [
        "c///res/r/200",
        "command///s/r/200",
        "c///q/r/200",
        "c///x/r/200",
    ] {
        assert!(matches!(err(topic), TopicError::Malformed(_)), "{topic}");
    }
}

// --- property bags ---

#[test]
fn bag_with_encoded_values_after_short_topic() {
    let t = ok("t/?content-type=text%2Fplain&hono-ttl=30");
    assert_eq!(t.endpoint, Endpoint::Telemetry);
    assert_eq!((t.tenant, t.device), (None, None));
    assert_eq!(t.bag.content_type.as_deref(), Some("text/plain"));
    assert_eq!(t.bag.ttl_secs, Some(30));
    assert_eq!(t.bag.on_error, OnError::Default);
    assert!(t.bag.extra.is_empty());
}

#[test]
fn bag_after_tenant_and_device_and_after_a_response() {
    let t = ok("event/DEFAULT_TENANT/4711/?correlation-id=abc&on-error=ignore");
    assert_eq!((t.tenant, t.device), (Some("DEFAULT_TENANT"), Some("4711")));
    assert_eq!(t.bag.correlation_id.as_deref(), Some("abc"));
    assert_eq!(t.bag.on_error, OnError::Ignore);

    let t = ok("c//4711/s/r1/503/?on-error=skip-ack");
    assert_eq!(
        t.endpoint,
        Endpoint::CommandResponse {
            request_id: "r1",
            status: 503
        }
    );
    assert_eq!(t.device, Some("4711"));
    assert_eq!(t.bag.on_error, OnError::SkipAck);
}

#[test]
fn bag_on_error_values() {
    for (value, mode) in [
        ("default", OnError::Default),
        ("disconnect", OnError::Disconnect),
        ("ignore", OnError::Ignore),
        ("skip-ack", OnError::SkipAck),
    ] {
        let topic = format!("t/?on-error={value}");
        assert_eq!(parse_publish(&topic).map(|t| t.bag.on_error), Ok(mode));
    }
    assert!(matches!(
        err("t/?on-error=Ignore"),
        TopicError::BadOnError(_)
    ));
    assert!(matches!(err("t/?on-error="), TopicError::BadOnError(_)));
}

#[test]
fn bag_values_borrow_unless_encoded() {
    let t = ok("t/?content-type=application/json&x=a%20b");
    assert!(matches!(
        t.bag.content_type,
        Some(Cow::Borrowed("application/json"))
    ));
    assert_eq!(
        t.bag.extra,
        vec![(Cow::Borrowed("x"), Cow::Owned("a b".to_owned()))]
    );
}

#[test]
fn bag_keeps_other_keys_in_order_with_repeats() {
    let t = ok("t/?b=2&a=1&b=3&flag&k%C3%A9y=v%C3%A9");
    let extra: Vec<(&str, &str)> = t.bag.extra.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(
        extra,
        [
            ("b", "2"),
            ("a", "1"),
            ("b", "3"),
            ("flag", ""),
            ("kéy", "vé")
        ]
    );
}

#[test]
fn bag_repeated_known_keys_keep_the_first_like_hono() {
    let t = ok("t/?content-type=a%2Fb&content-type=c%2Fd&hono-ttl=5&hono-ttl=9&on-error=ignore&on-error=disconnect");
    assert_eq!(t.bag.content_type.as_deref(), Some("a/b"));
    assert_eq!(t.bag.ttl_secs, Some(5));
    assert_eq!(t.bag.on_error, OnError::Ignore);
    // Later repeats are still checked.
    assert!(matches!(
        err("t/?hono-ttl=5&hono-ttl=x"),
        TopicError::BadTtl(_)
    ));
}

#[test]
fn bag_known_keys_are_case_insensitive() {
    let t = ok("t/?Content-Type=text%2Fplain&HONO-TTL=7");
    assert_eq!(t.bag.content_type.as_deref(), Some("text/plain"));
    assert_eq!(t.bag.ttl_secs, Some(7));
}

#[test]
fn empty_bags_and_empty_pairs() {
    for topic in ["t/?", "telemetry/?", "t/T1/d1/?", "c///s/r/200/?", "t/?&&"] {
        assert!(ok(topic).bag.is_empty(), "{topic}");
    }
    let t = ok("t/T1/d1/?");
    assert_eq!((t.tenant, t.device), (Some("T1"), Some("d1")));
}

#[test]
fn bag_starts_at_the_last_slash_question_mark() {
    // A raw `/` inside a bag value is fine (Hono splits at the last `/?` too).
    let t = ok("t/?content-type=text/plain");
    assert_eq!(t.bag.content_type.as_deref(), Some("text/plain"));
    // `?` not after a `/` is not a bag.
    assert!(matches!(err("t?a=b"), TopicError::UnknownEndpoint(_)));
    assert!(matches!(err("t/?a=1/?b=2"), TopicError::BadTenant(_)));
}

#[test]
fn bag_rejections() {
    for topic in ["t/?a=%", "t/?a=%2", "t/?a=%zz", "t/?%g1=x", "t/?a=%2%41"] {
        assert_eq!(err(topic), TopicError::BadPercentEncoding, "{topic}");
    }
    assert_eq!(err("t/?a=%ff"), TopicError::NotUtf8);
    assert_eq!(err("t/?=v"), TopicError::EmptyPropertyName);
    assert_eq!(err("t/?%41=1&=2"), TopicError::EmptyPropertyName);
    for ttl in ["-1", "x", "", "1.5", "99999999999999999999"] {
        let topic = format!("t/?hono-ttl={ttl}");
        assert!(
            matches!(parse_publish(&topic), Err(TopicError::BadTtl(_))),
            "{topic}"
        );
    }
    for id in ["", "a%2Fb", "a%2Bb", "a%23b", "a%00b"] {
        let topic = format!("t/?correlation-id={id}");
        assert_eq!(
            parse_publish(&topic).err(),
            Some(TopicError::BadCorrelationId),
            "{topic}"
        );
    }
}

// --- publish rejections ---

#[test]
fn unknown_endpoints_are_refused() {
    for topic in [
        "x",
        "tele",
        "T",
        "Telemetry",
        "/t",
        "control///res/r/200",
        "error",
        "q",
        "$SYS/x",
    ] {
        assert!(
            matches!(err(topic), TopicError::UnknownEndpoint(_)),
            "{topic}"
        );
    }
    assert_eq!(err(""), TopicError::Empty);
}

#[test]
fn unknown_endpoint_error_echoes_at_most_a_prefix() {
    let long = "x".repeat(10_000);
    let TopicError::UnknownEndpoint(shown) = err(&long) else {
        panic!("expected unknown endpoint");
    };
    assert!(shown.chars().count() <= ECHO_MAX + 1);
}

#[test]
fn wrong_level_counts_are_refused() {
    for topic in [
        "t/T/D/x",
        "telemetry/T/D/",
        "e/T/D/x/y",
        "c",
        "c/",
        "c///s/r",
        "c///s/r/200/x",
        "command///res",
        "c/T/D/s/r/200/x/y/z",
    ] {
        assert!(matches!(err(topic), TopicError::Malformed(_)), "{topic}");
    }
}

#[test]
fn wildcards_and_nul_are_refused_anywhere() {
    for (topic, c) in [
        ("t/+/D", '+'),
        ("t/T/#", '#'),
        ("#", '#'),
        ("c///s/+/200", '+'),
        ("t/?a=1+2", '+'),
        ("e//d#", '#'),
    ] {
        assert_eq!(err(topic), TopicError::Wildcard(c), "{topic}");
    }
    assert_eq!(err("t/T/d\0"), TopicError::Nul);
}

#[test]
fn invalid_ids_are_refused() {
    for topic in ["t/a:b/D", "t/a b/D", "t/ü/D", "c/t@x//s/r/200"] {
        assert!(matches!(err(topic), TopicError::BadTenant(_)), "{topic}");
    }
    for topic in ["t/T/a b", "t//d@t", "e//ä", "c//d?x/s/r/200"] {
        assert!(matches!(err(topic), TopicError::BadDevice(_)), "{topic}");
    }
    let too_long = format!("t/{}/d", "x".repeat(TenantId::MAX_LEN + 1));
    assert!(matches!(err(&too_long), TopicError::BadTenant(_)));
}

#[test]
fn errors_name_what_is_wrong() {
    assert!(err("c///s/r/700").to_string().contains("700"));
    assert!(err("t/?on-error=never").to_string().contains("never"));
    assert!(err("t/T/a b").to_string().contains("device"));
    let e = err("t/a b/D");
    assert!(
        std::error::Error::source(&e).is_some(),
        "the IdError is kept as source"
    );
}

// --- subscriptions ---

#[test]
fn command_filters_of_devices() {
    assert_eq!(
        sub("c///q/#"),
        Subscription {
            kind: SubscriptionKind::Command,
            tenant: None,
            device: DeviceFilter::Own,
            long_form: false
        }
    );
    assert_eq!(
        sub("command///req/#"),
        Subscription {
            kind: SubscriptionKind::Command,
            tenant: None,
            device: DeviceFilter::Own,
            long_form: true
        }
    );
    let s = sub("c/DEFAULT_TENANT/4711/q/#");
    assert_eq!(s.tenant, Some(tid("DEFAULT_TENANT")));
    assert_eq!(s.device, DeviceFilter::One(did("4711")));
    let s = sub("command/DEFAULT_TENANT//req/#");
    assert_eq!(
        (s.tenant, s.device),
        (Some(tid("DEFAULT_TENANT")), DeviceFilter::Own)
    );
}

#[test]
fn command_filters_of_gateways() {
    let s = sub("c//+/q/#");
    assert_eq!(
        (s.kind, s.device, s.long_form),
        (SubscriptionKind::Command, DeviceFilter::All, false)
    );
    let s = sub("command/T1/+/req/#");
    assert_eq!((s.tenant, s.device), (Some(tid("T1")), DeviceFilter::All));
    let s = sub("c//4712/q/#");
    assert_eq!(s.device, DeviceFilter::One(did("4712")));
}

#[test]
fn error_filters() {
    for (filter, long) in [("e///#", false), ("error///#", true)] {
        assert_eq!(
            sub(filter),
            Subscription {
                kind: SubscriptionKind::Error,
                tenant: None,
                device: DeviceFilter::Own,
                long_form: long
            }
        );
    }
    let s = sub("error/T1/4711/#");
    assert_eq!(
        (s.tenant, s.device),
        (Some(tid("T1")), DeviceFilter::One(did("4711")))
    );
    let s = sub("e//+/#");
    assert_eq!(
        (s.kind, s.device),
        (SubscriptionKind::Error, DeviceFilter::All)
    );
}

#[test]
fn other_filters_are_refused() {
    for filter in [
        "#",
        "+",
        "t",
        "t/#",
        "c/#",
        "c///q",
        "c///q/+",
        "c///q/#/x",
        "c///req/#",
        "command///q/#",
        "c///s/#",
        "c/+/+/q/#",
        "c//#/q/#",
        "c//a+/q/#",
        "e///",
        "e//#",
        "e///x",
        "e///#/x",
        "e/+//#",
        "control/+/+/req/#",
        "$share/g/c///q/#",
        "/c///q/#",
        "c/a b//q/#",
        "c//a b/q/#",
        "",
        "c//\0/q/#",
    ] {
        assert!(
            parse_subscription(filter).is_err(),
            "{filter:?} should be refused"
        );
    }
    assert_eq!(
        parse_subscription("c/+//q/#"),
        Err(TopicError::TenantWildcard)
    );
}

// --- command delivery topics ---

#[test]
fn command_topics_mirror_the_filter() {
    let rid = Some("1010f8ab0b53-bd96-4d99-9d9c-56b868474a6a");
    let cases: [(&str, Option<&str>, Option<&str>, &str); 10] = [
        // The contract's example.
        (
            "c///q/#",
            None,
            rid,
            "c///q/1010f8ab0b53-bd96-4d99-9d9c-56b868474a6a/setBrightness",
        ),
        ("c///q/#", None, None, "c///q//setBrightness"),
        (
            "command///req/#",
            None,
            Some("r1"),
            "command///req/r1/setBrightness",
        ),
        (
            "command///req/#",
            None,
            None,
            "command///req//setBrightness",
        ),
        (
            "c/T1/4711/q/#",
            None,
            Some("r1"),
            "c/T1/4711/q/r1/setBrightness",
        ),
        (
            "command/T1/4711/req/#",
            None,
            None,
            "command/T1/4711/req//setBrightness",
        ),
        ("c/T1//q/#", None, Some("r1"), "c/T1//q/r1/setBrightness"),
        // Gateways: the device level for other devices, empty for their own commands.
        (
            "c//+/q/#",
            Some("4712"),
            Some("r1"),
            "c//4712/q/r1/setBrightness",
        ),
        (
            "command/T1/+/req/#",
            None,
            None,
            "command/T1//req//setBrightness",
        ),
        (
            "c//4712/q/#",
            Some("4712"),
            None,
            "c//4712/q//setBrightness",
        ),
    ];
    for (filter, device, request_id, expected) in cases {
        assert_eq!(
            command_topic(&sub(filter), device, request_id, "setBrightness"),
            expected,
            "{filter}"
        );
    }
}

#[test]
fn gateway_with_own_filter_still_names_other_devices() {
    assert_eq!(
        command_topic(&sub("c///q/#"), Some("4712"), None, "x"),
        "c//4712/q//x"
    );
}

// --- request ids ---

#[test]
fn request_id_encoding_matches_hono() {
    assert_eq!(request_id("abc", "r1", true).as_deref(), Some("103abcr1"));
    assert_eq!(request_id("abc", "", false).as_deref(), Some("003abc"));
    assert_eq!(request_id("", "r", false).as_deref(), Some("000r"));
    let corr = "c".repeat(255);
    assert_eq!(
        request_id(&corr, "r", false)
            .map(|s| s[..3].to_owned())
            .as_deref(),
        Some("0ff")
    );
}

#[test]
fn request_id_round_trips() {
    for (corr, reply, stripped) in [
        ("abc", "r1", true),
        ("", "", false),
        ("0ff", "123", false),
        ("1010f8ab0b53-bd96-4d99-9d9c-56b868474a6a", "rid-1", true),
        ("äöü€", "ß", false),
        ("a?b=c&d", "x.y", true),
    ] {
        let id = request_id(corr, reply, stripped).expect("representable");
        assert_eq!(
            parse_request_id(&id),
            Some((corr, reply, stripped)),
            "{id:?}"
        );
        // And it survives the device's response topic.
        let topic = format!("c///s/{id}/200");
        if !id.is_empty() && !id.starts_with('?') {
            let t = ok(&topic);
            assert_eq!(
                t.endpoint,
                Endpoint::CommandResponse {
                    request_id: &id,
                    status: 200
                }
            );
        }
    }
    let corr = "k".repeat(255);
    let id = request_id(&corr, "r", false).expect("255 bytes fit");
    assert_eq!(parse_request_id(&id), Some((&*corr, "r", false)));
}

#[test]
fn unrepresentable_request_ids_are_refused() {
    assert_eq!(request_id(&"k".repeat(256), "r", false), None);
    for bad in ["a/b", "a+b", "a#b", "a\0b"] {
        assert_eq!(request_id(bad, "r", false), None, "{bad:?}");
        assert_eq!(request_id("c", bad, false), None, "{bad:?}");
    }
}

#[test]
fn malformed_request_ids_do_not_parse() {
    for id in [
        "", "0", "00", "2ab", "x03abc", "0zzabc", "005abc", "0-1a", "éab", "0é1", "1ff",
    ] {
        assert_eq!(parse_request_id(id), None, "{id:?}");
    }
    // A length that ends inside a multi-byte character.
    assert_eq!(parse_request_id("001ä"), None);
    // Upper-case hex digits are read too.
    assert_eq!(
        parse_request_id("00Aabcdefghijr"),
        Some(("abcdefghij", "r", false))
    );
}

// --- errors ---

#[test]
fn error_endpoint_mirrors_the_devices_topic() {
    for (topic, endpoint) in [
        ("t", "t"),
        ("telemetry/T/D", "telemetry"),
        ("e//d", "e"),
        ("event/?x", "event"),
        ("c///s/r/200", "c-s"),
        ("command///res/r/200", "command-response"),
    ] {
        assert_eq!(error_endpoint(topic), endpoint, "{topic}");
        assert_eq!(ok(topic).error_endpoint(), endpoint, "{topic}");
    }
    assert_eq!(error_endpoint("x/y"), "unknown");
    assert_eq!(error_endpoint(""), "unknown");
}

#[test]
fn error_topics_mirror_the_error_filter() {
    let cases = [
        ("e///#", None, "t", Some("abc"), "e///t/abc/400"),
        (
            "error///#",
            None,
            "telemetry",
            None,
            "error///telemetry/-1/400",
        ),
        (
            "e/T1/4711/#",
            None,
            "event",
            Some("7"),
            "e/T1/4711/event/7/400",
        ),
        (
            "e//+/#",
            Some("4712"),
            "c-s",
            Some(""),
            "e//4712/c-s/-1/400",
        ),
        ("e//+/#", None, "e", Some("9"), "e///e/9/400"),
        (
            "error/T1/+/#",
            Some("4712"),
            "command-response",
            Some("x"),
            "error/T1/4712/command-response/x/400",
        ),
        ("e/T1//#", None, "unknown", None, "e/T1//unknown/-1/400"),
    ];
    for (filter, device, endpoint, corr, expected) in cases {
        assert_eq!(
            error_topic(&sub(filter), device, endpoint, corr, 400),
            expected,
            "{filter}"
        );
    }
}

#[test]
fn error_payload_is_the_contracts_json() {
    let body = error_payload(
        403,
        "device \"x\" disabled\n",
        "abc",
        "2024-05-01T12:00:00Z",
    );
    let v: serde_json::Value = serde_json::from_str(&body).expect("valid JSON");
    assert_eq!(
        v,
        serde_json::json!({
            "code": 403,
            "message": "device \"x\" disabled\n",
            "timestamp": "2024-05-01T12:00:00Z",
            "correlation-id": "abc",
        })
    );
}

// --- never panic on arbitrary input ---

/// xorshift64*: deterministic, so a failure reproduces from the printed input.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Characters that matter to the parsers, plus multi-byte ones to catch slicing inside a character.
const ALPHABET: &[char] = &[
    '/', '/', '/', '?', '&', '=', '%', '+', '#', '\0', 't', 'e', 'c', 's', 'q', 'r', 'x', '0', '1',
    '2', '5', '9', 'a', 'f', 'F', '-', '.', ':', ' ', 'é', '€', '𝄞',
];

const SEEDS: &[&str] = &[
    "t",
    "telemetry/T1/d1/?content-type=text%2Fplain&hono-ttl=30",
    "e//d1/?on-error=skip-ack&correlation-id=x",
    "c///s/103abcr1/200",
    "command/T1/d1/res/003abc/404/?a=%C3%A9",
    "c//+/q/#",
    "error/T1/+/#",
    "103abcr1",
    "0ffxyz",
];

fn random_string(rng: &mut Rng) -> String {
    let len = rng.below(24);
    (0..len).map(|_| *rng.pick(ALPHABET)).collect()
}

fn mutate(rng: &mut Rng, seed: &str) -> String {
    let mut chars: Vec<char> = seed.chars().collect();
    for _ in 0..=rng.below(4) {
        let at = rng.below(chars.len() + 1);
        match rng.below(3) {
            0 => chars.insert(at, *rng.pick(ALPHABET)),
            1 if at < chars.len() => {
                chars.remove(at);
            }
            _ if at < chars.len() => chars[at] = *rng.pick(ALPHABET),
            _ => chars.push(*rng.pick(ALPHABET)),
        }
    }
    chars.into_iter().collect()
}

fn exercise(input: &str) {
    if let Ok(t) = parse_publish(input) {
        // What parses is consistent: ids are valid and the error topic can be built.
        if let Some(tenant) = t.tenant {
            assert!(TenantId::new(tenant).is_ok(), "{input:?}");
        }
        if let Some(device) = t.device {
            assert!(DeviceId::new(device).is_ok(), "{input:?}");
        }
        if let Endpoint::CommandResponse { request_id, status } = t.endpoint {
            assert!(
                !request_id.is_empty() && (200..=599).contains(&status),
                "{input:?}"
            );
        }
        assert_eq!(t.error_endpoint(), error_endpoint(input), "{input:?}");
    }
    if let Ok(s) = parse_subscription(input) {
        let topic = match s.kind {
            SubscriptionKind::Command => command_topic(&s, Some("d"), Some("r"), "cmd"),
            SubscriptionKind::Error => error_topic(&s, Some("d"), "t", None, 400),
        };
        assert!(!topic.contains(['+', '#']), "{input:?} → {topic:?}");
    }
    if let Some((corr, reply, stripped)) = parse_request_id(input) {
        if let Some(again) = request_id(corr, reply, stripped) {
            assert!(again.eq_ignore_ascii_case(input), "{input:?}");
        }
    }
    let _ = error_endpoint(input);
}

#[test]
fn parsers_never_panic_on_arbitrary_or_mutated_input() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..20_000 {
        exercise(&random_string(&mut rng));
    }
    for _ in 0..20_000 {
        let seed = *rng.pick(SEEDS);
        exercise(&mutate(&mut rng, seed));
    }
}
