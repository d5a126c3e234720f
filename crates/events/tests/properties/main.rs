//! Property tests (the fuzzing of this crate; `cargo fuzz` needs a nightly toolchain): the
//! CloudEvents parser never panics, and what it accepts is well formed. `PROPTEST_CASES` sets
//! the budget (`scripts/test --slow` raises it); failures are kept in `proptest-regressions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchyard_events::{Workspace, parse_event};

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

    #[test]
    fn a_batch_is_parsed_event_by_event(events in prop::collection::vec(cloudevent(), 0..16)) {
        let ws = Workspace::parse("fuzz").unwrap();
        for event in events {
            let _ = parse_event(event, &ws);
        }
    }
}
