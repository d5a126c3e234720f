//! Tests of the task router against the labelled set in `tests/router/tasks.json` at the repository
//! root, plus its contract: determinism, silence on irrelevant text, reasons, `limit`.

use switchyard_workflows::router::{Candidate, Recommendation, Router};

/// The labelled set: the agents, and tasks with the agent a sensible dispatcher would pick.
#[derive(Debug, serde::Deserialize)]
struct Labelled {
    agents: Vec<Candidate>,
    tasks: Vec<Task>,
}

#[derive(Debug, serde::Deserialize)]
struct Task {
    text: String,
    expected: String,
}

fn labelled() -> Labelled {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/router/tasks.json");
    let json = std::fs::read_to_string(path).expect("read tests/router/tasks.json");
    serde_json::from_str(&json).expect("parse tests/router/tasks.json")
}

/// An irrelevant text gets either nothing or only recommendations below this confidence.
const LOW_CONFIDENCE: f64 = 0.3;

#[test]
fn top_1_accuracy_on_the_labelled_set_is_at_least_90_percent() {
    let set = labelled();
    assert!(
        set.tasks.len() >= 50,
        "only {} labelled tasks",
        set.tasks.len()
    );
    let names: Vec<&str> = set.agents.iter().map(|a| a.name.as_str()).collect();
    for task in &set.tasks {
        assert!(
            names.contains(&task.expected.as_str()),
            "unknown agent {:?}",
            task.expected
        );
    }

    let router = Router::new(&set.agents);
    let mut hits = 0;
    for task in &set.tasks {
        let top = router.recommend(&task.text, 3);
        if top.first().is_some_and(|r| r.agent == task.expected) {
            hits += 1;
        } else {
            println!("MISS expected {:<16} {:?}", task.expected, task.text);
            for r in &top {
                println!(
                    "    {:<16} score {:>7.4} confidence {:.4} {:?}",
                    r.agent, r.score, r.confidence, r.reasons
                );
            }
        }
    }
    let accuracy = f64::from(hits) / set.tasks.len() as f64;
    println!("top-1 accuracy: {hits}/{} = {accuracy:.4}", set.tasks.len());
    assert!(accuracy >= 0.90, "top-1 accuracy {accuracy:.4} < 0.90");
}

#[test]
fn the_same_input_gives_the_same_output_and_ties_go_by_name() {
    let set = labelled();
    let router = Router::new(&set.agents);
    let again = Router::new(&set.agents);
    for task in &set.tasks {
        let first = router.recommend(&task.text, 10);
        assert_eq!(first, router.recommend(&task.text, 10));
        assert_eq!(first, again.recommend(&task.text, 10));
        assert_eq!(
            serde_json::to_string(&first).unwrap(),
            serde_json::to_string(&again.recommend(&task.text, 10)).unwrap()
        );
        for pair in first.windows(2) {
            assert!(
                pair[0].score > pair[1].score
                    || (pair[0].score == pair[1].score && pair[0].agent < pair[1].agent),
                "not ordered: {pair:?}"
            );
        }
    }

    // Identical tags: a tie, broken by name whatever the registration order.
    let twin = |name: &str| Candidate {
        name: name.into(),
        capabilities: vec!["test".into(), "coverage".into()],
    };
    let forward =
        Router::new(&[twin("b-tester"), twin("a-tester")]).recommend("raise the test coverage", 5);
    let backward =
        Router::new(&[twin("a-tester"), twin("b-tester")]).recommend("raise the test coverage", 5);
    assert_eq!(forward, backward);
    let agents: Vec<&str> = forward.iter().map(|r| r.agent.as_str()).collect();
    assert_eq!(agents, ["a-tester", "b-tester"]);
    assert_eq!(forward[0].score, forward[1].score);
    // A tie is a coin toss between the two, however strong the evidence.
    assert!(forward[0].confidence <= 0.5, "{forward:?}");
}

/// Decision: an empty or whitespace-only text gives no recommendation at all; a text that mentions
/// no capability gives none either, and one that brushes a tag by chance gives only low-confidence
/// recommendations (below [`LOW_CONFIDENCE`]), which the caller can treat as "no idea".
#[test]
fn empty_or_irrelevant_text_gives_nothing_or_only_low_confidence() {
    let router = Router::new(&labelled().agents);
    for text in ["", "   \n\t ", "!!! ... ???"] {
        assert_eq!(
            router.recommend(text, 5),
            Vec::<Recommendation>::new(),
            "{text:?}"
        );
    }
    assert!(
        router
            .recommend(
                "Buy milk, eggs and bread; call grandma about Sunday lunch.",
                5
            )
            .is_empty()
    );
    for text in [
        "The weather in Lisbon was lovely this weekend, we walked along the river.",
        "Please pick up the dry cleaning and water the plants on the balcony while I'm away.",
        "Our team dinner is on Thursday at eight; the restaurant has a good vegetarian menu.",
    ] {
        for r in router.recommend(text, 5) {
            assert!(r.confidence < LOW_CONFIDENCE, "{text:?} gave {r:?}");
        }
    }
}

#[test]
fn reasons_name_the_matched_capability_and_the_words() {
    let router = Router::new(&labelled().agents);
    let top = &router.recommend("The tests keep failing; testing this by hand is no fun.", 1)[0];
    assert_eq!(top.agent, "runner-tester");
    assert!(
        top.reasons
            .iter()
            .any(|r| r.starts_with("capability `test` matched")
                && r.contains("\"tests\"")
                && r.contains("\"testing\"")),
        "{:?}",
        top.reasons
    );

    let top = &router.recommend("Fix the dead links in the guide", 1)[0];
    assert_eq!(top.agent, "spec");
    assert!(
        top.reasons[0].contains("`dead-link` matched \"dead links\""),
        "{:?}",
        top.reasons
    );

    // Every reason of every recommendation names one of the agent's own capabilities.
    let set = labelled();
    for task in &set.tasks {
        for r in router.recommend(&task.text, 10) {
            let agent = set.agents.iter().find(|a| a.name == r.agent).unwrap();
            assert!(!r.reasons.is_empty(), "{r:?}");
            for reason in &r.reasons {
                assert!(
                    agent
                        .capabilities
                        .iter()
                        .any(|c| reason.contains(&format!("`{c}`"))),
                    "{reason}"
                );
            }
            assert!(
                r.score > 0.0 && (0.0..=1.0).contains(&r.confidence),
                "{r:?}"
            );
        }
    }
}

#[test]
fn limit_is_respected() {
    let router = Router::new(&labelled().agents);
    let text = "Fix the flaky CI test, review the code, update the docs and commit it on a branch.";
    let all = router.recommend(text, usize::MAX);
    assert!(all.len() >= 5, "{all:?}");
    for limit in 0..=all.len() + 1 {
        let some = router.recommend(text, limit);
        assert_eq!(some.len(), limit.min(all.len()));
        assert_eq!(some[..], all[..some.len()], "a smaller limit is a prefix");
    }
}
