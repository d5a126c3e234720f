//! The orchestrator's decisions, pure: from a plan's state (and the clock and the agent
//! registry) to the events that move it on.
//!
//! [`reconcile`] is level-triggered: it looks at the whole state, not at the event that woke
//! it, so a redelivered or duplicated trigger decides nothing new, and a crash between two
//! decisions loses nothing: the next trigger finds what is still to do. Each decision is
//! applied to a copy of the state before the next is taken, with the same [`PlanState::apply`]
//! that folds the stream, so decisions and the fold never disagree.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::{
    Cause, PlanState, PlanStatus, RunKind, TaskState, TaskStatus,
    plan::{ROUTE_ESCALATE, ROUTE_RETRY},
    router::{Candidate, Router},
    state::PlanEvent,
    types::{PLAN_FINISHED, TASK_BRANCHED, TASK_DISPATCHED, TASK_ESCALATED},
};

/// What [`reconcile`] needs besides the plan.
#[derive(Debug)]
pub struct ReconcileContext<'a> {
    /// Now.
    pub now: DateTime<Utc>,
    /// The registered agents (name and capability tags); an agent serves role `r` when it
    /// has the tag `role:r`.
    pub agents: &'a [Candidate],
    /// The router over `agents`.
    pub router: &'a Router,
    /// The first retry waits this long; each further failure doubles it (at most 5 minutes).
    pub retry_backoff: Duration,
    /// Added to a run's own time limits before it counts as silent.
    pub silence_grace: Duration,
}

/// One decision: the type and data of the event that records it.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// `task.dispatched.v1`, `task.branched.v1`, `task.escalated.v1` or `plan.finished.v1`.
    pub ty: &'static str,
    /// Its data.
    pub data: Value,
}

/// Every decision the plan needs now, in order.
pub fn reconcile(state: &PlanState, ctx: &ReconcileContext<'_>) -> Vec<Decision> {
    let mut state = state.clone();
    let mut decisions = Vec::new();
    // Each decision settles what caused it, so this ends; the bound is a guard.
    for _ in 0..10_000 {
        let Some(decision) = next(&state, ctx) else {
            break;
        };
        state.apply(PlanEvent {
            ty: decision.ty,
            data: &decision.data,
            time: ctx.now,
            version: state.version,
            correlation_id: "",
        });
        decisions.push(decision);
    }
    decisions
}

/// Classifies a failure report (the data of `task.failed.v1`, or a timeout): what the agent
/// said, when it said something valid; else the runner's facts; else by the output.
///
/// - `reported_cause` (from the agent's report file) wins;
/// - `timed_out` → timeout; `flaky` (the acceptance passed and failed on the same code) → flaky;
/// - a failure while preparing the working directory, exit code 126/127, or an output that
///   says a program, file or module is missing → missing dependency;
/// - an output that says the result does not match what was expected → spec mismatch;
/// - anything else → implementation bug.
pub fn classify(report: &Value) -> Cause {
    if let Some(cause) = report
        .get("reported_cause")
        .and_then(Value::as_str)
        .and_then(Cause::parse)
    {
        return cause;
    }
    let flag = |key: &str| report.get(key).and_then(Value::as_bool).unwrap_or(false);
    if flag("timed_out") {
        return Cause::Timeout;
    }
    if flag("flaky") {
        return Cause::Flaky;
    }
    if report.get("phase").and_then(Value::as_str) == Some("setup") {
        return Cause::MissingDependency;
    }
    if matches!(
        report.get("exit_code").and_then(Value::as_i64),
        Some(126 | 127)
    ) {
        return Cause::MissingDependency;
    }
    let output = report
        .get("output_tail")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_lowercase();
    const MISSING: &[&str] = &[
        "command not found",
        "no such file or directory",
        "modulenotfounderror",
        "cannot find module",
        "unresolved import",
        "could not find",
        "not installed",
    ];
    const MISMATCH: &[&str] = &[
        "spec mismatch",
        "does not match",
        "doesn't match",
        "mismatch",
        "expected",
    ];
    if MISSING.iter().any(|m| output.contains(m)) {
        return Cause::MissingDependency;
    }
    if MISMATCH.iter().any(|m| output.contains(m)) {
        return Cause::SpecMismatch;
    }
    Cause::ImplementationBug
}

/// The agent that serves `role`: `runner-<role>` when registered, else the first (by name)
/// with the tag `role:<role>`.
pub fn serving_agent<'a>(agents: &'a [Candidate], role: &str) -> Option<&'a str> {
    let tag = format!("role:{role}");
    let preferred = format!("runner-{role}");
    let mut serving: Vec<&Candidate> = agents
        .iter()
        .filter(|a| a.capabilities.iter().any(|c| c == &tag))
        .collect();
    serving.sort_by(|a, b| a.name.cmp(&b.name));
    serving
        .iter()
        .find(|a| a.name == preferred)
        .or_else(|| serving.first())
        .map(|a| a.name.as_str())
}

fn escalate(state: &PlanState, task: &TaskState, reason: String) -> Decision {
    Decision {
        ty: TASK_ESCALATED,
        data: json!({
            "plan_id": state.plan_id,
            "task_id": task.id(),
            "reason": reason,
            "cause": task.cause.map(Cause::as_str),
            "attempts": task.attempts,
            "failures": task.failures,
            "review_cycle": task.review_cycle,
        }),
    }
}

/// What a task wants dispatched.
struct Want {
    kind: RunKind,
    role: String,
    not_before: DateTime<Utc>,
    why: String,
}

fn next(state: &PlanState, ctx: &ReconcileContext<'_>) -> Option<Decision> {
    if state.status != PlanStatus::Running {
        return None;
    }
    if state.cancel.is_some() || state.abort.is_some() {
        let (outcome, stop) = match (&state.cancel, &state.abort) {
            (Some(stop), _) => ("cancelled", stop),
            (None, Some(stop)) => ("aborted", stop),
            (None, None) => return None,
        };
        return Some(finished(state, outcome, Some(stop.by.as_str())));
    }
    let active: Vec<&TaskState> = state
        .tasks
        .iter()
        .filter(|t| t.status.is_active())
        .collect();
    let global_free = active.len() < state.spec.concurrency.global as usize;
    for task in &state.tasks {
        let want = match task.status {
            TaskStatus::Failed => {
                let cause = task.cause.unwrap_or(Cause::ImplementationBug);
                let reason = task
                    .last_failure
                    .as_ref()
                    .and_then(|f| f.get("reason"))
                    .and_then(Value::as_str)
                    .unwrap_or("failed")
                    .to_owned();
                if task.failures >= task.spec.max_attempts {
                    return Some(escalate(
                        state,
                        task,
                        format!(
                            "failed {} of {} attempts; last cause {}: {reason}",
                            task.failures,
                            task.spec.max_attempts,
                            cause.as_str()
                        ),
                    ));
                }
                match state.spec.route(cause) {
                    ROUTE_ESCALATE => {
                        return Some(escalate(
                            state,
                            task,
                            format!("the plan escalates {} failures: {reason}", cause.as_str()),
                        ));
                    }
                    ROUTE_RETRY => Want {
                        kind: RunKind::Work,
                        role: task.spec.role.clone(),
                        not_before: ctx.now + backoff(ctx.retry_backoff, task.failures),
                        why: format!(
                            "retry {} of {} after a {} failure",
                            task.failures,
                            task.spec.max_attempts.saturating_sub(1),
                            cause.as_str()
                        ),
                    },
                    role => {
                        let depth = task.depth + 1;
                        if depth > state.spec.max_branch_depth {
                            return Some(escalate(
                                state,
                                task,
                                format!(
                                    "a {} failure would need a branch at depth {depth}, beyond the plan's max_branch_depth {}: {reason}",
                                    cause.as_str(),
                                    state.spec.max_branch_depth
                                ),
                            ));
                        }
                        return Some(Decision {
                            ty: TASK_BRANCHED,
                            data: json!({
                                "plan_id": state.plan_id,
                                "task_id": format!("{}~{}", task.id(), task.branches.len() + 1),
                                "parent_id": task.id(),
                                "role": role,
                                "depth": depth,
                                "cause": cause.as_str(),
                                "title": format!("{} failed ({}): {}", task.spec.title, cause.as_str(), role),
                                "reason": reason,
                            }),
                        });
                    }
                }
            }
            TaskStatus::ChangesRequested => {
                let max = task.spec.review.as_ref().map_or(0, |r| r.max_cycles);
                if task.review_cycle >= max {
                    let message = task
                        .feedback
                        .as_ref()
                        .map(|f| f.message.clone())
                        .unwrap_or_default();
                    return Some(escalate(
                        state,
                        task,
                        format!(
                            "review cycle {} of {max} asked for changes again: {message}",
                            task.review_cycle
                        ),
                    ));
                }
                Want {
                    kind: RunKind::Work,
                    role: task.spec.role.clone(),
                    not_before: ctx.now,
                    why: format!(
                        "changes requested in review cycle {} of {max}",
                        task.review_cycle
                    ),
                }
            }
            TaskStatus::Passed => match &task.spec.review {
                Some(review) => Want {
                    kind: RunKind::Review,
                    role: review.reviewer_role.clone(),
                    not_before: ctx.now,
                    why: format!(
                        "review cycle {} of {}",
                        task.review_cycle + 1,
                        review.max_cycles
                    ),
                },
                None => continue,
            },
            TaskStatus::Blocked => {
                let settled = task.branches.iter().all(|b| {
                    state
                        .task(b)
                        .is_some_and(|branch| branch.status.is_settled())
                });
                if !settled {
                    continue;
                }
                Want {
                    kind: RunKind::Verify,
                    role: task.spec.role.clone(),
                    not_before: ctx.now,
                    why: format!(
                        "branch {} finished: the acceptance runs again",
                        task.branches.last().map(String::as_str).unwrap_or_default()
                    ),
                }
            }
            TaskStatus::Waiting => {
                let ready = task.parent.is_some()
                    || task
                        .spec
                        .depends_on
                        .iter()
                        .all(|d| state.task(d).is_some_and(|dep| dep.status.is_settled()));
                if !ready {
                    continue;
                }
                Want {
                    kind: RunKind::Work,
                    role: task.spec.role.clone(),
                    not_before: ctx.now,
                    why: if task.attempts == 0 {
                        "its dependencies are done".to_owned()
                    } else {
                        "a person asked for a retry".to_owned()
                    },
                }
            }
            _ => continue,
        };
        if !global_free {
            continue;
        }
        if let Some(limit) = state.spec.concurrency.per_role.get(&want.role) {
            let busy = active
                .iter()
                .filter(|t| t.current.as_ref().is_some_and(|r| r.role == want.role))
                .count();
            if busy >= *limit as usize {
                continue;
            }
        }
        let Some(agent) = serving_agent(ctx.agents, &want.role) else {
            return Some(escalate(
                state,
                task,
                format!("no registered agent serves role {}", want.role),
            ));
        };
        return Some(dispatch(state, task, want, agent, ctx));
    }
    let roots_settled = state
        .tasks
        .iter()
        .filter(|t| t.parent.is_none())
        .all(|t| t.status.is_settled());
    if roots_settled && active.is_empty() {
        return Some(finished(state, "succeeded", None));
    }
    None
}

fn backoff(base: Duration, failures: u32) -> chrono::Duration {
    let factor = 1u32 << failures.saturating_sub(1).min(16);
    let wait = base.saturating_mul(factor).min(Duration::from_secs(300));
    chrono::Duration::from_std(wait).unwrap_or_default()
}

fn finished(state: &PlanState, outcome: &str, by: Option<&str>) -> Decision {
    let count = |s: TaskStatus| state.tasks.iter().filter(|t| t.status == s).count();
    Decision {
        ty: PLAN_FINISHED,
        data: json!({
            "plan_id": state.plan_id,
            "outcome": outcome,
            "by": by,
            "tasks_done": count(TaskStatus::Done),
            "tasks_skipped": count(TaskStatus::Skipped),
            "branch_tasks": state.tasks.iter().filter(|t| t.parent.is_some()).count(),
        }),
    }
}

fn dispatch(
    state: &PlanState,
    task: &TaskState,
    want: Want,
    agent: &str,
    ctx: &ReconcileContext<'_>,
) -> Decision {
    let root = state.task(&task.root).unwrap_or(task);
    // What runs: the role's command and this task's checks; a verification runs the plan
    // task's checks alone; a review runs the reviewer's command.
    let checks = match want.kind {
        RunKind::Work => &task.spec.acceptance,
        RunKind::Verify => &root.spec.acceptance,
        RunKind::Review => &Vec::new(),
    };
    let checks_secs: u64 = checks.iter().map(|c| c.timeout_secs).sum();
    let command_secs = if want.kind == RunKind::Verify {
        0
    } else {
        task.spec.timeout_secs
    };
    let limit = Duration::from_secs(command_secs + checks_secs) + ctx.silence_grace;
    let deadline = want.not_before + chrono::Duration::from_std(limit).unwrap_or_default();
    let text = format!(
        "{}\n{}",
        task.spec.title,
        task.spec.description.as_deref().unwrap_or_default()
    );
    let span = tracing::info_span!(
        "router.recommend",
        task.id = task.id(),
        router.top = tracing::field::Empty,
        router.confidence = tracing::field::Empty,
        router.decision = agent,
        router.follows = tracing::field::Empty,
    );
    let recommendation = span.in_scope(|| ctx.router.recommend(&text, 3));
    let agrees = recommendation.first().is_some_and(|r| r.agent == agent);
    if let Some(top) = recommendation.first() {
        span.record("router.top", top.agent.as_str());
        span.record("router.confidence", top.confidence);
    }
    span.record("router.follows", agrees);
    let base_commits: Vec<&str> = root
        .spec
        .depends_on
        .iter()
        .filter_map(|d| state.task(d).and_then(|t| t.commit.as_deref()))
        .collect();
    let mut data = json!({
        "plan_id": state.plan_id,
        "task_id": task.id(),
        "root_task_id": task.root,
        "attempt": task.attempts + 1,
        "kind": want.kind.as_str(),
        "role": want.role,
        "agent": agent,
        "title": task.spec.title,
        "inputs": task.spec.inputs,
        "acceptance": checks,
        "timeout_secs": command_secs,
        "not_before": want.not_before.to_rfc3339(),
        "deadline": deadline.to_rfc3339(),
        "base_commits": base_commits,
        "recommendation": recommendation,
        "decision": {
            "agent": agent,
            "role": want.role,
            "reason": want.why,
            "follows_recommendation": agrees,
        },
    });
    if let Some(description) = &task.spec.description {
        data["description"] = json!(description);
    }
    if let Some(parent) = &task.parent {
        data["parent_id"] = json!(parent);
    }
    if let Some(review) = &task.spec.review {
        if want.kind == RunKind::Review {
            data["review_cycle"] = json!(task.review_cycle + 1);
        }
        data["max_cycles"] = json!(review.max_cycles);
    }
    if want.kind == RunKind::Work
        && let (Some(feedback), Some(review)) = (&task.feedback, &task.spec.review)
        && task.status == TaskStatus::ChangesRequested
    {
        data["feedback"] = json!({
            "message": feedback.message,
            "cycle": feedback.cycle,
            "max_cycles": review.max_cycles,
            "remaining_cycles": review.max_cycles.saturating_sub(feedback.cycle),
        });
    }
    if let Some(failure) = &task.last_failure
        && task.status == TaskStatus::Failed
    {
        data["previous_failure"] = failure.clone();
    }
    Decision {
        ty: TASK_DISPATCHED,
        data,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::types::*;
    use serde_json::json;

    fn agents() -> Vec<Candidate> {
        ["coder", "debugger", "reviewer"]
            .iter()
            .map(|r| Candidate {
                name: format!("runner-{r}"),
                capabilities: vec![format!("role:{r}")],
            })
            .collect()
    }

    struct Plan {
        state: PlanState,
        agents: Vec<Candidate>,
        router: Router,
        now: DateTime<Utc>,
    }

    impl Plan {
        fn new(plan: Value) -> Self {
            let now = Utc::now();
            let data = json!({"plan_id": "p", "submitted_by": "t", "plan": plan});
            let state = PlanState::fold([PlanEvent {
                ty: PLAN_SUBMITTED,
                data: &data,
                time: now,
                version: 1,
                correlation_id: "c",
            }])
            .unwrap();
            let agents = agents();
            let router = Router::new(&agents);
            Self {
                state,
                agents,
                router,
                now,
            }
        }

        /// Applies an outcome as if a runner reported it.
        fn apply(&mut self, ty: &str, data: Value) {
            let version = self.state.version + 1;
            self.state.apply(PlanEvent {
                ty,
                data: &data,
                time: self.now,
                version,
                correlation_id: "c",
            });
        }

        /// Reconciles and applies the decisions; returns them as (type, task).
        fn step(&mut self) -> Vec<(String, String)> {
            let decisions = reconcile(
                &self.state,
                &ReconcileContext {
                    now: self.now,
                    agents: &self.agents,
                    router: &self.router,
                    retry_backoff: Duration::from_secs(2),
                    silence_grace: Duration::from_secs(30),
                },
            );
            let mut out = Vec::new();
            for d in decisions {
                out.push((
                    d.ty.to_owned(),
                    d.data["task_id"].as_str().unwrap_or_default().to_owned(),
                ));
                self.apply(d.ty, d.data);
            }
            out
        }

        fn attempt(&self, task: &str) -> u32 {
            self.state
                .task(task)
                .unwrap()
                .current
                .as_ref()
                .unwrap()
                .attempt
        }

        fn complete(&mut self, task: &str) {
            let attempt = self.attempt(task);
            self.apply(
                TASK_COMPLETED,
                json!({"task_id": task, "attempt": attempt, "commit": format!("sha-{task}")}),
            );
        }
    }

    fn dispatched(tasks: &[&str]) -> Vec<(String, String)> {
        tasks
            .iter()
            .map(|t| (TASK_DISPATCHED.to_owned(), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn per_role_limits_hold_and_the_plan_finishes_once() {
        let mut plan = Plan::new(
            json!({"title": "t", "concurrency": {"global": 3, "per_role": {"coder": 1}},
            "tasks": [
                {"id": "a", "title": "a", "role": "coder"},
                {"id": "b", "title": "b", "role": "coder"},
                {"id": "r", "title": "r", "role": "reviewer"},
            ]}),
        );
        assert_eq!(plan.step(), dispatched(&["a", "r"]), "one coder at a time");
        assert_eq!(
            plan.step(),
            vec![],
            "a second reconcile decides nothing new"
        );
        plan.complete("a");
        assert_eq!(plan.step(), dispatched(&["b"]));
        plan.complete("b");
        plan.complete("r");
        assert_eq!(plan.step(), vec![(PLAN_FINISHED.to_owned(), String::new())]);
        assert_eq!(plan.state.status, PlanStatus::Succeeded);
        assert_eq!(plan.step(), vec![]);
    }

    #[test]
    fn a_silent_run_times_out_and_is_retried_with_backoff_then_escalated() {
        let mut plan = Plan::new(json!({"title": "t", "tasks": [
            {"id": "a", "title": "a", "role": "coder", "max_attempts": 2}]}));
        plan.step();
        plan.apply(TASK_TIMED_OUT, json!({"task_id": "a", "attempt": 1}));
        assert_eq!(plan.state.task("a").unwrap().cause, Some(Cause::Timeout));
        let decisions = reconcile(
            &plan.state,
            &ReconcileContext {
                now: plan.now,
                agents: &plan.agents,
                router: &plan.router,
                retry_backoff: Duration::from_secs(2),
                silence_grace: Duration::from_secs(30),
            },
        );
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].data["kind"], "work");
        assert_eq!(decisions[0].data["attempt"], 2);
        let not_before: DateTime<Utc> = decisions[0].data["not_before"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(not_before - plan.now, chrono::Duration::seconds(2));
        plan.step();
        // A late report of the first attempt changes nothing.
        plan.apply(TASK_COMPLETED, json!({"task_id": "a", "attempt": 1}));
        assert_eq!(plan.state.task("a").unwrap().status, TaskStatus::Dispatched);
        plan.apply(TASK_TIMED_OUT, json!({"task_id": "a", "attempt": 2}));
        assert_eq!(
            plan.step(),
            vec![(TASK_ESCALATED.to_owned(), "a".to_owned())]
        );
        let reason = plan.state.task("a").unwrap().escalation.clone().unwrap();
        assert!(
            reason.starts_with("failed 2 of 2 attempts; last cause timeout"),
            "{reason}"
        );
    }

    #[test]
    fn a_branch_blocks_the_dependants_and_its_success_verifies_the_parent() {
        let mut plan = Plan::new(json!({"title": "t", "tasks": [
            {"id": "a", "title": "a", "role": "coder"},
            {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]}]}));
        plan.step();
        plan.apply(
            TASK_FAILED,
            json!({"task_id": "a", "attempt": 1, "phase": "command", "exit_code": 127}),
        );
        assert_eq!(
            plan.step(),
            vec![
                (TASK_BRANCHED.to_owned(), "a~1".to_owned()),
                (TASK_DISPATCHED.to_owned(), "a~1".to_owned())
            ]
        );
        assert_eq!(
            plan.state.task("a").unwrap().cause,
            Some(Cause::MissingDependency)
        );
        plan.complete("a~1");
        assert_eq!(plan.step(), dispatched(&["a"]));
        assert_eq!(
            plan.state.task("a").unwrap().current.as_ref().unwrap().kind,
            RunKind::Verify
        );
        plan.complete("a");
        assert_eq!(plan.step(), dispatched(&["b"]));
    }

    #[test]
    fn cancelling_finishes_the_plan_and_dispatches_nothing_more() {
        let mut plan = Plan::new(json!({"title": "t", "tasks": [
            {"id": "a", "title": "a", "role": "coder"},
            {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]}]}));
        plan.step();
        plan.apply(
            PLAN_CANCELLED,
            json!({"plan_id": "p", "cancelled_by": "alice"}),
        );
        assert_eq!(plan.step(), vec![(PLAN_FINISHED.to_owned(), String::new())]);
        assert_eq!(plan.state.status, PlanStatus::Cancelled);
        plan.complete("a");
        assert_eq!(plan.step(), vec![]);
    }

    #[test]
    fn a_role_nobody_serves_is_escalated_and_skip_lets_dependants_run() {
        let mut plan = Plan::new(json!({"title": "t", "tasks": [
            {"id": "a", "title": "a", "role": "painter"},
            {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]}]}));
        assert_eq!(
            plan.step(),
            vec![(TASK_ESCALATED.to_owned(), "a".to_owned())]
        );
        plan.apply(
            TASK_RESOLVED,
            json!({"task_id": "a", "action": "skip", "resolved_by": "p"}),
        );
        assert_eq!(plan.step(), dispatched(&["b"]));
    }

    #[test]
    fn failures_are_classified_from_the_report() {
        let cases = [
            (
                json!({"reported_cause": "spec_mismatch", "timed_out": true}),
                Cause::SpecMismatch,
            ),
            (json!({"timed_out": true}), Cause::Timeout),
            (json!({"flaky": true}), Cause::Flaky),
            (json!({"phase": "setup"}), Cause::MissingDependency),
            (json!({"exit_code": 127}), Cause::MissingDependency),
            (
                json!({"output_tail": "ModuleNotFoundError: No module named 'x'"}),
                Cause::MissingDependency,
            ),
            (
                json!({"output_tail": "assertion failed: expected 3, got 4"}),
                Cause::SpecMismatch,
            ),
            (
                json!({"exit_code": 1, "output_tail": "panicked at src/lib.rs"}),
                Cause::ImplementationBug,
            ),
        ];
        for (report, cause) in cases {
            assert_eq!(classify(&report), cause, "{report}");
        }
    }
}
