//! Property tests (the fuzzing of this crate; `cargo fuzz` needs a nightly toolchain): the
//! CloudEvents parser never panics in any of the three modes (structured, batch, binary), and
//! what it accepts is well formed. `PROPTEST_CASES` sets
//! the budget (`scripts/test --slow` raises it); failures are kept in `proptest-regressions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchyard_events::{BatchError, Workspace, binary_attributes, parse_batch, parse_event};

/// Arbitrary JSON, nested a few levels.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A CloudEvent whose attributes are each valid, odd, or of the wrong JSON type.
fn cloudevent() -> impl Strategy<Value = Value> {
    let attr = |valid: &'static [&'static str]| {
        prop_oneof![
            prop::sample::select(valid).prop_map(|s| json!(s)),
            ".{0,300}".prop_map(Value::String),
            json_value(),
        ]
    };
    (
        attr(&["1.0", "0.3"]),
        attr(&["agent.memory.recorded.v1", "retrospective.trigger.v1", "x"]),
        attr(&["/tests", "/agents/a"]),
        attr(&["s/1", "proposal/1"]),
        attr(&["2026-12-01T00:00:00Z", "yesterday"]),
        attr(&[
            "urn:switchyard:event:agent.memory.recorded.v1",
            "http://169.254.169.254/",
        ]),
        json_value(),
        prop::collection::btree_map("[a-z]{1,12}", json_value(), 0..4),
    )
        .prop_map(|(spec, ty, source, subject, time, schema, data, extra)| {
            let mut event = Map::new();
            for (k, v) in extra {
                event.insert(k, v);
            }
            for (k, v) in [
                ("specversion", spec),
                ("type", ty),
                ("source", source),
                ("subject", subject),
                ("time", time),
                ("dataschema", schema),
                ("data", data),
            ] {
                event.insert(k.to_owned(), v);
            }
            Value::Object(event)
        })
}

proptest! {
    #[test]
    fn any_json_is_parsed_or_refused_with_a_pointer(value in json_value()) {
        let ws = Workspace::parse("fuzz").unwrap();
        if let Err(e) = parse_event(value, &ws) {
            prop_assert!(e.pointer.is_empty() || e.pointer.starts_with('/'));
        }
    }

    #[test]
    fn accepted_events_are_well_formed(event in cloudevent()) {
        let ws = Workspace::parse("fuzz").unwrap();
        if let Ok(parsed) = parse_event(event.clone(), &ws) {
            prop_assert_eq!(&event["specversion"], &json!("1.0"));
            prop_assert_eq!(parsed.workspace.as_str(), "fuzz");
            prop_assert!(!parsed.stream.as_str().is_empty());
            // Nothing named in the event is trusted: only the catalog's own schema URI passes.
            if let Some(schema) = event.get("dataschema").and_then(Value::as_str) {
                prop_assert!(schema.starts_with("urn:switchyard:event:"));
            }
        }
    }

    /// Batch mode: the whole batch or nothing, and a refusal names the first bad event.
    #[test]
    fn a_batch_is_parsed_whole_or_refused_naming_its_first_bad_event(
        events in prop::collection::vec(cloudevent(), 0..16),
        max in 1usize..20,
    ) {
        let ws = Workspace::parse("fuzz").unwrap();
        let len = events.len();
        match parse_batch(Value::Array(events.clone()), &ws, max) {
            Ok(parsed) => {
                prop_assert_eq!(parsed.len(), len);
                prop_assert!(len >= 1 && len <= max);
            }
            Err(BatchError::Empty) => prop_assert_eq!(len, 0),
            Err(BatchError::TooLarge { len: l, max: m }) => {
                prop_assert_eq!((l, m), (len, max));
                prop_assert!(len > max);
            }
            Err(BatchError::Event(e)) => {
                let index: usize = e.pointer[1..].split('/').next().unwrap().parse().unwrap();
                prop_assert!(parse_event(events[index].clone(), &ws).is_err());
                for earlier in &events[..index] {
                    prop_assert!(parse_event(earlier.clone(), &ws).is_ok());
                }
            }
            Err(other) => prop_assert!(false, "unexpected {other:?}"),
        }
    }

    /// A batch body that is not an array is refused as such.
    #[test]
    fn a_batch_that_is_not_an_array_is_refused(value in json_value()) {
        let ws = Workspace::parse("fuzz").unwrap();
        if !value.is_array() {
            prop_assert_eq!(parse_batch(value, &ws, 10).unwrap_err(), BatchError::NotAnArray);
        }
    }

    /// Binary mode: percent-encoded header values decode to exactly what was encoded.
    #[test]
    fn binary_attributes_decode_what_was_encoded(
        attrs in prop::collection::btree_map("[a-z][a-z0-9]{0,11}", ".{0,60}", 0..8),
    ) {
        let encoded: Vec<(String, Vec<u8>)> = attrs
            .iter()
            .map(|(k, v)| {
                let value = percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC);
                (format!("ce-{k}"), value.to_string().into_bytes())
            })
            .collect();
        let decoded = binary_attributes(encoded.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).unwrap();
        prop_assert_eq!(decoded.len(), attrs.len());
        for (k, v) in &attrs {
            prop_assert_eq!(decoded.get(k), Some(&json!(v)));
        }
    }

    /// Binary mode: any header bytes are decoded or refused naming the attribute, and what is
    /// accepted then follows the structured rules.
    #[test]
    fn any_binary_headers_are_decoded_or_refused_with_a_pointer(
        headers in prop::collection::vec(("ce-[a-z]{1,8}|content-type|x-[a-z]{1,4}", prop::collection::vec(any::<u8>(), 0..40)), 0..8),
    ) {
        let ws = Workspace::parse("fuzz").unwrap();
        match binary_attributes(headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()))) {
            Ok(attrs) => {
                prop_assert!(attrs.len() <= headers.len());
                let _ = parse_event(Value::Object(attrs), &ws);
            }
            Err(e) => {
                prop_assert!(e.pointer.starts_with('/'));
                let named = headers
                    .iter()
                    .any(|(k, _)| k.strip_prefix("ce-").is_some_and(|a| e.pointer == ["/", a].concat()));
                prop_assert!(named, "{e:?}");
            }
        }
    }
}

/// The corpus: CloudEvents kept because they once mattered (hand-picked hostile cases, and
/// whatever the fuzzing finds), replayed on every run. A file
/// `<structured|batch|binary>-<name>.<valid|invalid>.json`; binary cases are an object of
/// headers.
#[test]
fn the_corpus_is_replayed() {
    let ws = Workspace::parse("fuzz").unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/properties/corpus");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let (mode, rest) = name.split_once('-').unwrap();
        let valid = rest.split('.').nth(1).unwrap() == "valid";
        let value: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let accepted = match mode {
            "structured" => parse_event(value, &ws).is_ok(),
            "batch" => parse_batch(value, &ws, 10).is_ok(),
            "binary" => {
                let headers: Vec<(String, String)> = value
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                binary_attributes(headers.iter().map(|(k, v)| (k.as_str(), v.as_bytes())))
                    .is_ok_and(|attrs| parse_event(Value::Object(attrs), &ws).is_ok())
            }
            other => panic!("{name}: unknown mode {other}"),
        };
        assert_eq!(accepted, valid, "{name}");
        replayed += 1;
    }
    assert!(replayed >= 10, "the corpus holds {replayed} events");
}
