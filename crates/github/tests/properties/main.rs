//! Property tests (this crate's fuzzing; `cargo fuzz` needs a nightly toolchain): webhook
//! signatures, the mapping of deliveries, and the slash-command parser never panic, and accept
//! only what they should. `PROPTEST_CASES` sets the budget; failures are kept in
//! `proptest-regressions/`.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use proptest::prelude::*;
use serde_json::{Map, Value, json};
use switchyard_github::{
    commands::{Command, parse},
    webhook::{Mapped, map, sign, verify_signature},
};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u32>().prop_map(|n| json!(n)),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "action",
                    "number",
                    "pull_request",
                    "issue",
                    "comment",
                    "repository",
                    "owner",
                    "login",
                    "name",
                    "head",
                    "ref",
                    "sha",
                    "merged",
                    "check_run",
                    "workflow_run",
                    "check_suite",
                    "head_branch",
                    "conclusion",
                    "body",
                    "commits",
                    "user",
                    "x",
                ])
                .prop_map(str::to_owned),
                inner,
                0..8
            )
            .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

proptest! {
    #[test]
    fn only_the_right_secret_and_bytes_verify(
        secret in prop::collection::vec(any::<u8>(), 0..64),
        body in prop::collection::vec(any::<u8>(), 0..512),
        header in prop::collection::vec(any::<u8>(), 0..80),
        flip in any::<prop::sample::Index>(),
    ) {
        let good = sign(&secret, &body);
        prop_assert!(verify_signature(&secret, &body, Some(good.as_bytes())).is_ok());
        // Arbitrary headers never panic, and almost never verify.
        if header != good.as_bytes() {
            prop_assert!(verify_signature(&secret, &body, Some(&header)).is_err());
        }
        // One changed byte of the body fails.
        if !body.is_empty() {
            let mut changed = body;
            let i = flip.index(changed.len());
            changed[i] ^= 0x01;
            prop_assert!(verify_signature(&secret, &changed, Some(good.as_bytes())).is_err());
        }
    }

    #[test]
    fn any_payload_maps_without_panicking(
        event in prop::sample::select(vec![
            "ping", "push", "issues", "pull_request", "pull_request_review", "issue_comment",
            "pull_request_review_comment", "check_run", "workflow_run", "label", "",
        ]),
        payload in json_value(),
    ) {
        match map(event, "delivery-1", &payload) {
            Mapped::Event { ty, stream, data, .. } => {
                prop_assert_eq!(ty, format!("github.{event}.v1"));
                prop_assert!(stream.starts_with("github/"));
                prop_assert_eq!(&data["delivery_id"], &json!("delivery-1"));
            }
            Mapped::Ping => prop_assert_eq!(event, "ping"),
            Mapped::Ignored { reason, .. } => prop_assert!(!reason.is_empty()),
        }
    }

    #[test]
    fn commands_are_parsed_or_explained(body in ".{0,400}", prefix in prop::sample::select(vec!["", "/switchyard ", "/switchyard approve ", "/switchyard reject ", "/switchyard retry "])) {
        let text = format!("{prefix}{body}");
        for command in parse(&text) {
            match command {
                Command::Approve { proposal } | Command::Reject { proposal, .. } => {
                    prop_assert!(!proposal.is_empty() && proposal.len() <= 128);
                    prop_assert!(proposal.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b)));
                }
                Command::Retry { dead_letter } => {
                    prop_assert!(uuid::Uuid::parse_str(&dead_letter).is_ok());
                }
                Command::Invalid { problem, .. } => prop_assert!(problem.contains("usage")),
                Command::Retro => {}
            }
        }
    }
}
