use http::{HeaderMap, HeaderValue, Method};

use super::*;

fn t(s: &str) -> Option<TenantId> {
    Some(TenantId::new(s).expect("tenant"))
}

fn d(s: &str) -> Option<DeviceId> {
    Some(DeviceId::new(s).expect("device"))
}

#[test]
fn hono_uris_map_to_targets() {
    let post = Method::POST;
    let put = Method::PUT;
    assert_eq!(
        route(&post, "/telemetry"),
        Ok(Target {
            kind: Kind::Telemetry,
            tenant: None,
            device: None,
            request_id: None
        })
    );
    assert_eq!(route(&post, "/event").map(|t| t.kind), Ok(Kind::Event));
    assert_eq!(
        route(&put, "/telemetry/t1/d1"),
        Ok(Target {
            kind: Kind::Telemetry,
            tenant: t("t1"),
            device: d("d1"),
            request_id: None
        })
    );
    assert_eq!(
        route(&put, "/event//d1"),
        Ok(Target {
            kind: Kind::Event,
            tenant: None,
            device: d("d1"),
            request_id: None
        })
    );
    assert_eq!(
        route(&post, "/command/res/005cmd-1r"),
        Ok(Target {
            kind: Kind::CommandResponse,
            tenant: None,
            device: None,
            request_id: Some("005cmd-1r")
        })
    );
    assert_eq!(
        route(&put, "/command/res/t1/d1/005cmd-1r"),
        Ok(Target {
            kind: Kind::CommandResponse,
            tenant: t("t1"),
            device: d("d1"),
            request_id: Some("005cmd-1r")
        })
    );
    assert_eq!(
        route(&put, "/command/res//d1/0001").map(|t| (t.tenant, t.device)),
        Ok((None, d("d1")))
    );
}

#[test]
fn other_uris_and_methods_are_refused() {
    for path in [
        "",
        "/",
        "/telemetry/",
        "/telemetry/t1",
        "/telemetry/t1/d1/x",
        "/telemetry/t1/",
        "/command",
        "/command/res",
        "/command/res/",
        "/command/req/x",
        "/command/res/t1/d1/",
        "/command/res/t1//x",
        "/telemetry//",
        "/t",
        "/telemetryx",
    ] {
        let e = route(&Method::POST, path).and(route(&Method::PUT, path));
        assert_eq!(e, Err(RequestError::NotFound), "{path:?}");
    }
    assert_eq!(
        route(&Method::PUT, "/telemetry"),
        Err(RequestError::MethodNotAllowed("POST"))
    );
    assert_eq!(
        route(&Method::POST, "/event/t1/d1"),
        Err(RequestError::MethodNotAllowed("PUT"))
    );
    assert_eq!(
        route(&Method::GET, "/command/res/0001"),
        Err(RequestError::MethodNotAllowed("POST"))
    );
    assert!(matches!(
        route(&Method::PUT, "/telemetry/t1/d%201"),
        Err(RequestError::BadRequest(_))
    ));
    assert!(matches!(
        route(&Method::PUT, "/telemetry/t@1/d1"),
        Err(RequestError::BadRequest(_))
    ));
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).expect("value"));
    }
    h
}

#[test]
fn telemetry_options() {
    let none = options(Kind::Telemetry, &HeaderMap::new(), None).expect("ok");
    assert_eq!(none, Options::default());
    let o = options(
        Kind::Telemetry,
        &headers(&[("qos-level", "1"), ("hono-ttd", "30"), ("hono-ttl", "5")]),
        None,
    )
    .expect("ok");
    assert_eq!((o.qos, o.ttd, o.ttl), (1, Some(30), None));
    let o = options(Kind::Telemetry, &HeaderMap::new(), Some("a=b&hono-ttd=7")).expect("ok");
    assert_eq!(o.ttd, Some(7));
    // The header wins over the query.
    let o = options(
        Kind::Telemetry,
        &headers(&[("hono-ttd", "3")]),
        Some("hono-ttd=7"),
    )
    .expect("ok");
    assert_eq!(o.ttd, Some(3));
    for bad in [
        headers(&[("qos-level", "2")]),
        headers(&[("qos-level", "")]),
        headers(&[("hono-ttd", "0")]),
        headers(&[("hono-ttd", "-1")]),
        headers(&[("hono-ttd", "ten")]),
        headers(&[("hono-ttd", "99999999999")]),
    ] {
        assert!(
            matches!(
                options(Kind::Telemetry, &bad, None),
                Err(RequestError::BadRequest(_))
            ),
            "{bad:?}"
        );
    }
    assert!(options(Kind::Telemetry, &HeaderMap::new(), Some("hono-ttd=")).is_err());
}

#[test]
fn event_options() {
    let o = options(Kind::Event, &HeaderMap::new(), Some("hono-ttl=60")).expect("ok");
    assert_eq!((o.qos, o.ttl), (1, Some(60)));
    assert!(options(Kind::Event, &headers(&[("hono-ttl", "x")]), None).is_err());
    assert!(options(Kind::Event, &headers(&[("qos-level", "3")]), None).is_err());
}

#[test]
fn command_response_needs_a_status() {
    assert_eq!(
        options(
            Kind::CommandResponse,
            &headers(&[("hono-cmd-status", "200")]),
            None
        )
        .map(|o| o.status),
        Ok(Some(200))
    );
    assert_eq!(
        options(
            Kind::CommandResponse,
            &HeaderMap::new(),
            Some("hono-cmd-status=503")
        )
        .map(|o| o.status),
        Ok(Some(503))
    );
    for bad in ["", "99", "600", "+200", "0200", "2000", "abc"] {
        assert!(
            options(
                Kind::CommandResponse,
                &headers(&[("hono-cmd-status", bad)]),
                None
            )
            .is_err(),
            "{bad:?}"
        );
    }
    assert_eq!(
        options(Kind::CommandResponse, &HeaderMap::new(), None),
        Err(RequestError::BadRequest("hono-cmd-status is missing"))
    );
}

#[test]
fn query_params() {
    assert_eq!(query_param(Some("a=1&b=2"), "b"), Some("2"));
    assert_eq!(query_param(Some("a&b=2"), "a"), Some(""));
    assert_eq!(query_param(Some("ab=1"), "a"), None);
    assert_eq!(query_param(None, "a"), None);
}

#[test]
fn basic_credentials_are_split_at_the_first_colon() {
    // "sensor1@t1:hunter:2"
    let h = headers(&[("authorization", "Basic c2Vuc29yMUB0MTpodW50ZXI6Mg==")]);
    assert_eq!(
        basic_credentials(&h),
        Some(("sensor1@t1".to_owned(), b"hunter:2".to_vec()))
    );
    let h = headers(&[("authorization", "basic   c2Vuc29yMUB0MTpodW50ZXI6Mg==  ")]);
    assert!(basic_credentials(&h).is_some());
    for bad in [
        "Bearer abc",
        "Basic",
        "Basic !!!",
        "Basic c2Vuc29yMQ==",
        "Basi",
    ] {
        assert_eq!(
            basic_credentials(&headers(&[("authorization", bad)])),
            None,
            "{bad:?}"
        );
    }
    assert_eq!(basic_credentials(&HeaderMap::new()), None);
}
