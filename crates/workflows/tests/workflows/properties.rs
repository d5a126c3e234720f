//! Properties of plan validation and of [`reconcile`], over generated plans and runs.

use std::{collections::BTreeSet, time::Duration};

use chrono::Utc;
use proptest::prelude::*;
use serde_json::{Value, json};
use switchyard_workflows::{
    PlanEvent, PlanSpec, PlanState, PlanStatus, ReconcileContext, TaskStatus, find_cycle,
    reconcile,
    router::{Candidate, Router},
    types, validate,
};

const ROLES: [&str; 4] = ["coder", "debugger", "reviewer", "astronaut"];

/// A plan of up to 12 tasks whose dependencies point anywhere (cycles, unknown ids, self).
fn any_graph() -> impl Strategy<Value = Value> {
    (1usize..12).prop_flat_map(|n| {
        let task = (
            prop::sample::select(ROLES.to_vec()),
            prop::collection::vec(0usize..n + 2, 0..4),
            prop::option::of(prop::sample::select(ROLES.to_vec())),
        );
        prop::collection::vec(task, n).prop_map(move |tasks| {
            let tasks: Vec<Value> = tasks
                .into_iter()
                .enumerate()
                .map(|(i, (role, deps, reviewer))| {
                    // Ids t0…t(n+1): the last two are never defined (unknown dependencies).
                    let deps: Vec<String> = deps.iter().map(|d| format!("t{d}")).collect();
                    let mut task = json!({"id": format!("t{i}"), "title": "x", "role": role,
                                          "depends_on": deps});
                    if let Some(reviewer) = reviewer {
                        task["review"] = json!({"reviewer_role": reviewer});
                    }
                    task
                })
                .collect();
            json!({"title": "p", "tasks": tasks})
        })
    })
}

/// Whether every task can be ordered after its (known) dependencies (Kahn's algorithm).
fn orderable(plan: &PlanSpec) -> bool {
    let mut done: BTreeSet<&str> = BTreeSet::new();
    let known: BTreeSet<&str> = plan.tasks.iter().map(|t| t.id.as_str()).collect();
    loop {
        let before = done.len();
        for task in &plan.tasks {
            if task
                .depends_on
                .iter()
                .all(|d| !known.contains(d.as_str()) || done.contains(d.as_str()))
            {
                done.insert(task.id.as_str());
            }
        }
        if done.len() == plan.tasks.len() {
            return true;
        }
        if done.len() == before {
            return false;
        }
    }
}

fn known_roles() -> BTreeSet<String> {
    ROLES[..3].iter().map(|r| (*r).to_owned()).collect()
}

proptest! {
    #[test]
    fn a_cycle_is_reported_exactly_when_there_is_one(plan in any_graph()) {
        let plan: PlanSpec = serde_json::from_value(plan).unwrap();
        let cycle = find_cycle(&plan);
        prop_assert_eq!(cycle.is_none(), orderable(&plan));
        if let Some((_, path)) = cycle {
            // A closed path along real dependency edges.
            prop_assert_eq!(path.first(), path.last());
            for pair in path.windows(2) {
                let task = plan.tasks.iter().find(|t| t.id == pair[0]).unwrap();
                prop_assert!(task.depends_on.contains(&pair[1]), "{} → {}", pair[0], pair[1]);
            }
        }
        // Validation names it, with the other problems, and never panics.
        let issues = validate(&plan, &known_roles());
        prop_assert_eq!(
            issues.iter().any(|i| i.code == "dependency_cycle"),
            find_cycle(&plan).is_some()
        );
        let unknown = plan.tasks.iter().any(|t| t.depends_on.iter().any(|d| !plan.tasks.iter().any(|u| &u.id == d)));
        prop_assert_eq!(issues.iter().any(|i| i.code == "unknown_dependency"), unknown);
        for issue in &issues {
            prop_assert!(issue.pointer.starts_with('/'));
        }
    }

    #[test]
    fn arbitrary_json_never_panics_the_plan_parser(body in ".{0,400}") {
        if let Ok(plan) = serde_json::from_str::<PlanSpec>(&body) {
            let _ = validate(&plan, &known_roles());
        }
    }

    /// Runs a valid plan against agents that succeed, fail or ask for changes at random:
    /// the orchestrator never exceeds the limit, never dispatches a task before its
    /// dependencies are done, and the plan ends — succeeded, or waiting for a person.
    #[test]
    fn the_orchestrator_keeps_its_limits_and_ends(
        n in 1usize..8,
        deps in prop::collection::vec(prop::collection::vec(any::<prop::sample::Index>(), 0..3), 8),
        reviews in prop::collection::vec(any::<bool>(), 8),
        global in 1u32..4,
        outcomes in prop::collection::vec(0u8..10, 200),
    ) {
        let tasks: Vec<Value> = (0..n).map(|i| {
            let depends_on: BTreeSet<String> = if i == 0 { BTreeSet::new() } else {
                deps[i].iter().map(|d| format!("t{}", d.index(i))).collect()
            };
            let mut task = json!({"id": format!("t{i}"), "title": format!("task {i}"),
                                  "role": "coder", "depends_on": depends_on, "max_attempts": 2});
            if reviews[i] {
                task["review"] = json!({"reviewer_role": "reviewer", "max_cycles": 2});
            }
            task
        }).collect();
        let spec = json!({"title": "p", "tasks": tasks, "concurrency": {"global": global},
                          "max_branch_depth": 1});
        let data = json!({"plan_id": "p", "submitted_by": "t", "plan": spec});
        let now = Utc::now();
        let mut state = PlanState::fold([PlanEvent {
            ty: types::PLAN_SUBMITTED, data: &data, time: now, version: 1, correlation_id: "c",
        }]).unwrap();
        let agents: Vec<Candidate> = ["coder", "debugger", "reviewer"].iter().map(|r| Candidate {
            name: format!("runner-{r}"), capabilities: vec![format!("role:{r}")],
        }).collect();
        let router = Router::new(&agents);
        let mut version = 1;
        let mut apply = |state: &mut PlanState, ty: &str, data: Value| {
            version += 1;
            state.apply(PlanEvent { ty, data: &data, time: now, version, correlation_id: "c" });
        };
        let mut outcomes = outcomes.into_iter();
        for _ in 0..200 {
            let decisions = reconcile(&state, &ReconcileContext {
                now, agents: &agents, router: &router,
                retry_backoff: Duration::ZERO, silence_grace: Duration::ZERO,
            });
            for d in decisions {
                if d.ty == types::TASK_DISPATCHED && d.data["kind"] == "work" {
                    let task = state.task(d.data["task_id"].as_str().unwrap()).unwrap();
                    for dep in &task.spec.depends_on {
                        prop_assert!(state.task(dep).unwrap().status.is_settled());
                    }
                }
                apply(&mut state, d.ty, d.data);
                let active = state.tasks.iter().filter(|t| t.status.is_active()).count();
                prop_assert!(active <= global as usize, "{active} > {global}");
            }
            let Some(task) = state.tasks.iter().find(|t| t.status.is_active()) else { break };
            let run = task.current.clone().unwrap();
            let id = task.spec.id.clone();
            let roll = outcomes.next().unwrap_or(0);
            let (ty, data) = match (run.kind.as_str(), roll) {
                ("review", r) if r < 4 => (types::TASK_REVIEWED, json!({"task_id": id, "attempt": run.attempt, "verdict": "changes_requested", "message": "m"})),
                ("review", _) => (types::TASK_REVIEWED, json!({"task_id": id, "attempt": run.attempt, "verdict": "approved"})),
                (_, r) if r < 3 => (types::TASK_FAILED, json!({"task_id": id, "attempt": run.attempt, "phase": "command", "exit_code": 1})),
                (_, 3) => (types::TASK_TIMED_OUT, json!({"task_id": id, "attempt": run.attempt})),
                _ => (types::TASK_COMPLETED, json!({"task_id": id, "attempt": run.attempt})),
            };
            apply(&mut state, ty, data);
        }
        let escalated = state.tasks.iter().any(|t| t.status == TaskStatus::Escalated);
        prop_assert!(
            state.status == PlanStatus::Succeeded || escalated,
            "the plan neither ended nor waits for a person: {:?}",
            state.tasks.iter().map(|t| (t.spec.id.clone(), t.status)).collect::<Vec<_>>()
        );
    }
}

/// The corpus: plans kept because they once mattered (hand-picked edge cases, and whatever
/// the fuzzing finds), replayed on every run. A file `<name>.<expected>.json` expects `valid`,
/// `unparsed` (refused before validation), or the code of its first problem.
#[test]
fn the_corpus_is_replayed() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/workflows/corpus");
    let mut replayed = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let expected = name.split('.').nth(1).unwrap().to_owned();
        let body = std::fs::read_to_string(&path).unwrap();
        let outcome = match serde_json::from_str::<PlanSpec>(&body) {
            Err(_) => "unparsed".to_owned(),
            Ok(plan) => validate(&plan, &known_roles())
                .first()
                .map_or("valid".to_owned(), |i| i.code.to_owned()),
        };
        assert_eq!(outcome, expected, "{name}");
        replayed += 1;
    }
    assert!(replayed >= 10, "the corpus holds {replayed} plans");
}
