use serde_json::json;

use super::*;

fn device() -> Value {
    json!({
        "id": "4711",
        "enabled": true,
        "via": ["gw-1", "gw-2"],
        "ext": { "brand": "eclipse-iot", "count": 15, "a/b": "slash", "m~n": "tilde" },
        "status": { "created": "2024-01-02T03:04:05Z" }
    })
}

#[test]
fn hono_filter_examples_parse_and_match() {
    let boolean = Filter::parse(r#"{"field": "/enabled","value": true}"#).expect("valid");
    assert_eq!(boolean.op, FilterOp::Eq);
    assert!(boolean.matches(&device()));
    let number = Filter::parse(r#"{"field": "/ext/count","value": 15}"#).expect("valid");
    assert!(number.matches(&device()));
    let string = Filter::parse(r#"{"field": "/ext/brand","value": "eclipse*"}"#).expect("valid");
    assert!(string.matches(&device()));
    assert!(
        Filter::parse(r#"{"field": "/ext/brand","op":"eq","value": "eclipse-iot"}"#)
            .expect("valid")
            .matches(&device())
    );
}

#[test]
fn malformed_filters_are_rejected() {
    let err =
        Filter::parse(r#"{"field": "/enabled","op": "ne","value": true}"#).expect_err("unknown op");
    assert!(
        err.0.starts_with("filterJson: unknown variant `ne`"),
        "{err}"
    );
    let err = Filter::parse(r#"{"field": "enabled","value": true}"#).expect_err("not a pointer");
    assert!(err.0.contains("must start with '/'"), "{err}");
    assert!(Filter::parse(r#"{"field": "/ext","value": {"a": 1}}"#).is_err());
    assert!(Filter::parse(r#"{"field": "/ext","value": null}"#).is_err());
    assert!(Filter::parse(r#"{"field": "/ext","value": 1, "x": 2}"#).is_err());
    assert!(Filter::parse(r#"{"field": "/ext"}"#).is_err());
    assert!(Filter::parse("not json").is_err());
}

#[test]
fn values_match_by_type_and_value() {
    let doc = device();
    assert!(!Filter::eq("/enabled", false).expect("valid").matches(&doc));
    assert!(Filter::eq("/ext/count", 15.0).expect("valid").matches(&doc));
    assert!(!Filter::eq("/ext/count", 16).expect("valid").matches(&doc));
    // A string never equals a number, nor a boolean a string.
    assert!(!Filter::eq("/ext/count", "15").expect("valid").matches(&doc));
    assert!(!Filter::eq("/enabled", "true").expect("valid").matches(&doc));
    assert!(Filter::eq("/", 1).is_ok());
}

#[test]
fn nested_and_escaped_pointers_resolve() {
    let doc = device();
    assert!(Filter::eq("/status/created", "2024-01-*")
        .expect("valid")
        .matches(&doc));
    assert!(Filter::eq("/ext/a~1b", "slash")
        .expect("valid")
        .matches(&doc));
    assert!(Filter::eq("/ext/m~0n", "tilde")
        .expect("valid")
        .matches(&doc));
    assert!(Filter::eq("/via/1", "gw-2").expect("valid").matches(&doc));
}

#[test]
fn unresolved_pointer_never_matches() {
    let doc = device();
    assert!(!Filter::eq("/ext/missing", "*")
        .expect("valid")
        .matches(&doc));
    assert!(!Filter::eq("/status/created/deeper", "*")
        .expect("valid")
        .matches(&doc));
    assert!(!Filter::eq("/via/9", "*").expect("valid").matches(&doc));
}

#[test]
fn arrays_match_any_element() {
    let doc = device();
    assert!(Filter::eq("/via", "gw-1").expect("valid").matches(&doc));
    assert!(Filter::eq("/via", "gw-?").expect("valid").matches(&doc));
    assert!(!Filter::eq("/via", "gw-3").expect("valid").matches(&doc));
}

#[test]
fn all_filters_must_match() {
    let doc = device();
    let filters = [
        Filter::eq("/enabled", true).expect("valid"),
        Filter::eq("/ext/brand", "*iot").expect("valid"),
    ];
    assert!(matches_all(&filters, &doc));
    assert!(matches_all(&[], &doc));
    let more = [
        filters[0].clone(),
        Filter::eq("/ext/brand", "x*").expect("valid"),
    ];
    assert!(!matches_all(&more, &doc));
}

#[test]
fn wildcards() {
    let cases = [
        ("", "", true),
        ("", "a", false),
        ("*", "", true),
        ("*", "anything", true),
        ("?", "", false),
        ("?", "a", true),
        ("?", "ab", false),
        ("a*", "abc", true),
        ("*c", "abc", true),
        ("a*c", "ac", true),
        ("a*c", "abcbd", false),
        ("a*b*c", "axxbyyc", true),
        ("a*b*c", "axxbyy", false),
        ("a?c", "abc", true),
        ("a?c", "ac", false),
        ("*?", "", false),
        ("*?", "x", true),
        ("**a**", "bab", true),
        ("exact", "exact", true),
        ("exact", "Exact", false),
        ("d?vice-é", "device-é", true),
        ("???", "日本語", true),
    ];
    for (pattern, text, expected) in cases {
        assert_eq!(
            wildcard_match(pattern, text),
            expected,
            "{pattern:?} vs {text:?}"
        );
    }
}

#[test]
fn pathological_wildcards_finish_quickly() {
    let text = "a".repeat(5_000);
    let pattern = format!("{}b", "a*".repeat(200));
    let start = std::time::Instant::now();
    assert!(!wildcard_match(&pattern, &text));
    assert!(wildcard_match(&format!("{}a", "*a".repeat(200)), &text));
    assert!(
        start.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn hono_sort_examples_parse() {
    let asc = Sort::parse(r#"{"field":"/ext/brand"}"#).expect("valid");
    assert_eq!(asc.direction, Direction::Asc);
    let desc = Sort::parse(r#"{"field":"/status/created","direction":"desc"}"#).expect("valid");
    assert_eq!(desc.direction, Direction::Desc);
    let err = Sort::parse(r#"{"field":"/x","direction":"up"}"#).expect_err("unknown direction");
    assert!(err.0.starts_with("sortJson:"), "{err}");
    assert!(Sort::parse(r#"{"field":"x"}"#).is_err());
    assert!(Sort::parse(r#"{"field":"/x","order":"asc"}"#).is_err());
}

#[test]
fn sorting_puts_missing_first_and_orders_by_value() {
    let docs = [
        json!({"id": "c", "ext": {"n": 10}}),
        json!({"id": "a", "ext": {"n": 2.5}}),
        json!({"id": "b"}),
        json!({"id": "d", "ext": {"n": -1}}),
        json!({"id": "e", "ext": {"n": "text"}}),
        json!({"id": "f", "ext": {"n": null}}),
    ];
    let ids = |sorts: &[Sort]| {
        let mut sorted = docs.to_vec();
        sorted.sort_by(|a, b| compare_by(sorts, a, b));
        sorted
            .iter()
            .map(|d| d["id"].as_str().unwrap_or("?").to_owned())
            .collect::<Vec<_>>()
    };
    let asc = Sort::new("/ext/n", Direction::Asc).expect("valid");
    assert_eq!(ids(&[asc]), ["b", "f", "d", "a", "c", "e"]);
    let desc = Sort::new("/ext/n", Direction::Desc).expect("valid");
    assert_eq!(ids(&[desc]), ["e", "c", "a", "d", "f", "b"]);
}

#[test]
fn later_sorts_break_ties() {
    let docs = [
        json!({"id": "2", "enabled": true}),
        json!({"id": "1", "enabled": true}),
        json!({"id": "3", "enabled": false}),
    ];
    let sorts = [
        Sort::new("/enabled", Direction::Desc).expect("valid"),
        Sort::new("/id", Direction::Asc).expect("valid"),
    ];
    let mut sorted = docs.to_vec();
    sorted.sort_by(|a, b| compare_by(&sorts, a, b));
    let ids: Vec<_> = sorted.iter().map(|d| d["id"].clone()).collect();
    assert_eq!(ids, [json!("1"), json!("2"), json!("3")]);
}

#[test]
fn json_comparison_is_total_across_kinds() {
    use std::cmp::Ordering::*;
    assert_eq!(compare_json(None, Some(&json!(null))), Less);
    assert_eq!(compare_json(Some(&json!(false)), Some(&json!(true))), Less);
    assert_eq!(compare_json(Some(&json!(true)), Some(&json!(0))), Less);
    assert_eq!(compare_json(Some(&json!(1)), Some(&json!(1.0))), Equal);
    assert_eq!(
        compare_json(Some(&json!(u64::MAX)), Some(&json!(-1))),
        Greater
    );
    assert_eq!(compare_json(Some(&json!("b")), Some(&json!("a"))), Greater);
    assert_eq!(
        compare_json(Some(&json!([1, 2])), Some(&json!([1, 3]))),
        Less
    );
    assert_eq!(compare_json(Some(&json!([1])), Some(&json!([1, 0]))), Less);
    assert_eq!(
        compare_json(Some(&json!({"a": 1})), Some(&json!({"b": 2}))),
        Equal
    );
    assert_eq!(compare_json(Some(&json!("z")), Some(&json!([]))), Less);
}

#[test]
fn search_results_render_like_hono() {
    let page = SearchResult {
        total: 42,
        result: vec![WithId {
            id: "4711".to_owned(),
            item: crate::Device::default(),
        }],
    };
    assert_eq!(
        serde_json::to_value(&page).expect("serializes"),
        json!({"total": 42, "result": [{"id": "4711", "enabled": true}]})
    );
    let schemas = [
        schemars::schema_for!(SearchResult<WithId<crate::Tenant>>),
        schemars::schema_for!(Filter),
        schemars::schema_for!(Sort),
    ];
    let filter = serde_json::to_value(&schemas[1]).expect("schema serializes");
    assert_eq!(
        filter["properties"]["op"]["$ref"],
        json!("#/$defs/FilterOp")
    );
    assert!(
        filter["properties"]["value"]
            .to_string()
            .contains("boolean"),
        "{filter}"
    );
}
