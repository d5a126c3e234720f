//! A plan as submitted: a graph of tasks, and its validation.
//!
//! Validation is pure and total: it reports every problem it finds, each with the JSON pointer
//! of the offending part of the plan, so that `POST …/plans` answers 422 naming it and appends
//! nothing.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Why a task failed, as the orchestrator classifies it from the runner's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    /// A program, file, module or earlier result the task needs is not there.
    MissingDependency,
    /// The work does not do what the task (its acceptance) asks.
    SpecMismatch,
    /// The work is wrong: the command failed, or the acceptance failed after it succeeded.
    ImplementationBug,
    /// The command or an acceptance check ran out of time, or the task went silent.
    Timeout,
    /// The same acceptance passed and failed on the same code.
    Flaky,
}

impl Cause {
    /// Every cause, in a stable order.
    pub const ALL: [Cause; 5] = [
        Cause::MissingDependency,
        Cause::SpecMismatch,
        Cause::ImplementationBug,
        Cause::Timeout,
        Cause::Flaky,
    ];

    /// Its name in plans and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingDependency => "missing_dependency",
            Self::SpecMismatch => "spec_mismatch",
            Self::ImplementationBug => "implementation_bug",
            Self::Timeout => "timeout",
            Self::Flaky => "flaky",
        }
    }

    /// Parses a cause's name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Where a failure goes: another attempt, a branch task of a role, or a person.
pub const ROUTE_RETRY: &str = "retry";
/// See [`ROUTE_RETRY`].
pub const ROUTE_ESCALATE: &str = "escalate";
/// The role that debugs failures unless the plan routes them elsewhere.
pub const DEFAULT_DEBUGGER_ROLE: &str = "debugger";

/// A command that decides whether a task passed: run without a shell (the first element is
/// the program), in the task's working directory; exit status 0 passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Check {
    /// A name for reports; defaults to the program.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Program and arguments.
    pub run: Vec<String>,
    /// Seconds before the check is killed and fails.
    #[serde(default = "default_check_timeout")]
    pub timeout_secs: u64,
}

/// A review after the task passes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Review {
    /// The role that reviews.
    pub reviewer_role: String,
    /// Reviews that may ask for changes before the task is escalated.
    #[serde(default = "default_max_cycles")]
    pub max_cycles: u32,
}

/// One task of a plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Unique in the plan: letters, digits, `.`, `_`, `-`.
    pub id: String,
    /// One line.
    pub title: String,
    /// What and why; the router reads it with the title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The role that does it.
    pub role: String,
    /// Tasks that must be done first.
    #[serde(default)]
    pub depends_on: Vec<String>,
    /// What the task needs, by name; handed to the agent in its task file.
    #[serde(default)]
    pub inputs: Map<String, Value>,
    /// Commands that decide pass or fail, run after the role's command.
    #[serde(default)]
    pub acceptance: Vec<Check>,
    /// Failed attempts before the task is escalated to a person.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Seconds the role's command may run.
    #[serde(default = "default_task_timeout")]
    pub timeout_secs: u64,
    /// A review once it passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
}

/// How many tasks may be dispatched at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Concurrency {
    /// In the whole plan (branch and review tasks included).
    #[serde(default = "default_global")]
    pub global: u32,
    /// Per role; roles not named are limited by `global` only.
    #[serde(default)]
    pub per_role: BTreeMap<String, u32>,
}

impl Default for Concurrency {
    fn default() -> Self {
        Self {
            global: default_global(),
            per_role: BTreeMap::new(),
        }
    }
}

/// A plan as submitted (`POST /v1/workspaces/{ws}/plans`, the data of `plan.submitted.v1`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSpec {
    /// The plan's id; the server makes one when it is absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// One line.
    pub title: String,
    /// What the plan is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The tasks.
    pub tasks: Vec<TaskSpec>,
    /// Dispatch limits.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Where each cause of failure goes: a role (a branch task of that role), `retry` or
    /// `escalate`. Causes not named: `timeout` and `flaky` retry, the rest go to `debugger`.
    #[serde(default)]
    pub failure_routing: BTreeMap<String, String>,
    /// How deep branch tasks may nest before a failure is escalated.
    #[serde(default = "default_branch_depth")]
    pub max_branch_depth: u32,
}

impl PlanSpec {
    /// Where a failure of `cause` goes under this plan.
    pub fn route(&self, cause: Cause) -> &str {
        match self.failure_routing.get(cause.as_str()) {
            Some(route) => route,
            None => match cause {
                Cause::Timeout | Cause::Flaky => ROUTE_RETRY,
                _ => DEFAULT_DEBUGGER_ROLE,
            },
        }
    }

    /// Every role the plan needs an agent for: tasks', reviewers' and failure routes'.
    pub fn roles(&self) -> BTreeSet<String> {
        let mut roles = BTreeSet::new();
        for task in &self.tasks {
            roles.insert(task.role.clone());
            if let Some(review) = &task.review {
                roles.insert(review.reviewer_role.clone());
            }
        }
        for cause in Cause::ALL {
            let route = self.route(cause);
            if route != ROUTE_RETRY && route != ROUTE_ESCALATE {
                roles.insert(route.to_owned());
            }
        }
        roles
    }
}

fn default_check_timeout() -> u64 {
    300
}
fn default_max_cycles() -> u32 {
    2
}
fn default_max_attempts() -> u32 {
    3
}
fn default_task_timeout() -> u64 {
    1_800
}
fn default_global() -> u32 {
    4
}
fn default_branch_depth() -> u32 {
    2
}

/// Most tasks a plan may hold.
pub const MAX_TASKS: usize = 500;

/// One problem with a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanIssue {
    /// Stable code: `duplicate_task`, `unknown_dependency`, `dependency_cycle`, `unknown_role`,
    /// `invalid_value`.
    pub code: &'static str,
    /// JSON pointer into the plan.
    pub pointer: String,
    /// For a person.
    pub message: String,
}

fn issue(code: &'static str, pointer: impl Into<String>, message: impl Into<String>) -> PlanIssue {
    PlanIssue {
        code,
        pointer: pointer.into(),
        message: message.into(),
    }
}

/// Whether `id` may name a plan or a task: 1 to 64 of letters, digits, `.`, `_`, `-`,
/// starting with a letter or digit.
pub fn valid_id(id: &str) -> bool {
    let bytes = id.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 64
        && bytes[0].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `role` may name a role: 1 to 63 of `a-z`, `0-9`, `_`, `-`, starting with a letter
/// or digit.
pub fn valid_role(role: &str) -> bool {
    let bytes = role.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

/// Checks a plan against itself and the roles some agent serves. Returns every problem, in
/// the order of the plan; empty means valid.
pub fn validate(plan: &PlanSpec, known_roles: &BTreeSet<String>) -> Vec<PlanIssue> {
    let mut issues = Vec::new();
    if let Some(id) = &plan.id
        && !valid_id(id)
    {
        issues.push(issue(
            "invalid_value",
            "/id",
            format!("plan id {id:?} must be 1 to 64 letters, digits, '.', '_' or '-'"),
        ));
    }
    if plan.title.trim().is_empty() || plan.title.len() > 300 {
        issues.push(issue(
            "invalid_value",
            "/title",
            "the title must be 1 to 300 characters",
        ));
    }
    if plan.tasks.is_empty() || plan.tasks.len() > MAX_TASKS {
        issues.push(issue(
            "invalid_value",
            "/tasks",
            format!("a plan holds 1 to {MAX_TASKS} tasks"),
        ));
    }
    if !(1..=64).contains(&plan.concurrency.global) {
        issues.push(issue(
            "invalid_value",
            "/concurrency/global",
            "the global concurrency must be 1 to 64",
        ));
    }
    if plan.max_branch_depth > 10 {
        issues.push(issue(
            "invalid_value",
            "/max_branch_depth",
            "branches nest at most 10 deep",
        ));
    }
    let unknown_role = |role: &str, pointer: String, what: &str| -> Option<PlanIssue> {
        if known_roles.contains(role) {
            return None;
        }
        let known: Vec<&str> = known_roles.iter().map(String::as_str).collect();
        Some(issue(
            "unknown_role",
            pointer,
            format!(
                "{what} {role:?} is not a role any agent serves (known roles: {})",
                if known.is_empty() {
                    "none".to_owned()
                } else {
                    known.join(", ")
                }
            ),
        ))
    };
    for (role, limit) in &plan.concurrency.per_role {
        let pointer = format!("/concurrency/per_role/{}", escape(role));
        if *limit == 0 || *limit > 64 {
            issues.push(issue(
                "invalid_value",
                pointer.clone(),
                "a role's concurrency must be 1 to 64",
            ));
        }
        issues.extend(unknown_role(role, pointer, "concurrency names role"));
    }
    for (cause, route) in &plan.failure_routing {
        let pointer = format!("/failure_routing/{}", escape(cause));
        if Cause::parse(cause).is_none() {
            let causes: Vec<&str> = Cause::ALL.iter().map(|c| c.as_str()).collect();
            issues.push(issue(
                "invalid_value",
                pointer.clone(),
                format!("unknown cause {cause:?}: one of {}", causes.join(", ")),
            ));
        }
        if route != ROUTE_RETRY && route != ROUTE_ESCALATE {
            issues.extend(unknown_role(route, pointer, "failure routing names role"));
        }
    }
    // Failure routes left to their defaults need the debugger only if a plan can fail into it.
    for cause in Cause::ALL {
        if !plan.failure_routing.contains_key(cause.as_str()) {
            let route = plan.route(cause);
            if route != ROUTE_RETRY && route != ROUTE_ESCALATE && !known_roles.contains(route) {
                issues.extend(unknown_role(
                    route,
                    "/failure_routing".to_owned(),
                    &format!("failures of cause {} go by default to role", cause.as_str()),
                ));
                break;
            }
        }
    }

    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, task) in plan.tasks.iter().enumerate() {
        let at = |field: &str| format!("/tasks/{i}/{field}");
        if !valid_id(&task.id) {
            issues.push(issue(
                "invalid_value",
                at("id"),
                format!(
                    "task id {:?} must be 1 to 64 letters, digits, '.', '_' or '-'",
                    task.id
                ),
            ));
        }
        if let Some(first) = first_index.get(task.id.as_str()) {
            issues.push(issue(
                "duplicate_task",
                at("id"),
                format!(
                    "task id {:?} is used twice (also at /tasks/{first})",
                    task.id
                ),
            ));
        } else {
            first_index.insert(task.id.as_str(), i);
        }
        if task.title.trim().is_empty() || task.title.len() > 300 {
            issues.push(issue(
                "invalid_value",
                at("title"),
                "a task's title must be 1 to 300 characters",
            ));
        }
        if task.description.as_ref().is_some_and(|d| d.len() > 20_000) {
            issues.push(issue(
                "invalid_value",
                at("description"),
                "a task's description holds at most 20 000 bytes",
            ));
        }
        if !valid_role(&task.role) {
            issues.push(issue(
                "invalid_value",
                at("role"),
                format!("role {:?} must be 1 to 63 of a-z, 0-9, '_', '-'", task.role),
            ));
        } else {
            issues.extend(unknown_role(&task.role, at("role"), "task role"));
        }
        if !(1..=20).contains(&task.max_attempts) {
            issues.push(issue(
                "invalid_value",
                at("max_attempts"),
                "max_attempts must be 1 to 20",
            ));
        }
        if !(1..=86_400).contains(&task.timeout_secs) {
            issues.push(issue(
                "invalid_value",
                at("timeout_secs"),
                "timeout_secs must be 1 to 86400",
            ));
        }
        if let Some(review) = &task.review {
            issues.extend(unknown_role(
                &review.reviewer_role,
                at("review/reviewer_role"),
                "reviewer role",
            ));
            if !(1..=10).contains(&review.max_cycles) {
                issues.push(issue(
                    "invalid_value",
                    at("review/max_cycles"),
                    "max_cycles must be 1 to 10",
                ));
            }
        }
        if task.acceptance.len() > 20 {
            issues.push(issue(
                "invalid_value",
                at("acceptance"),
                "at most 20 acceptance checks",
            ));
        }
        for (k, check) in task.acceptance.iter().enumerate() {
            let pointer = format!("/tasks/{i}/acceptance/{k}");
            if check.run.is_empty() || check.run[0].is_empty() {
                issues.push(issue(
                    "invalid_value",
                    format!("{pointer}/run"),
                    "a check runs a program: `run` is [program, args…]",
                ));
            }
            if check.run.len() > 256
                || check
                    .run
                    .iter()
                    .any(|a| a.len() > 4_096 || a.contains('\0'))
            {
                issues.push(issue(
                    "invalid_value",
                    format!("{pointer}/run"),
                    "at most 256 arguments of at most 4096 bytes, without NUL",
                ));
            }
            if !(1..=86_400).contains(&check.timeout_secs) {
                issues.push(issue(
                    "invalid_value",
                    format!("{pointer}/timeout_secs"),
                    "timeout_secs must be 1 to 86400",
                ));
            }
        }
        let mut seen = BTreeSet::new();
        for (k, dep) in task.depends_on.iter().enumerate() {
            let pointer = format!("/tasks/{i}/depends_on/{k}");
            if !seen.insert(dep.as_str()) {
                issues.push(issue(
                    "invalid_value",
                    pointer,
                    format!("task {:?} names dependency {dep:?} twice", task.id),
                ));
            } else if !plan.tasks.iter().any(|t| &t.id == dep) {
                issues.push(issue(
                    "unknown_dependency",
                    pointer,
                    format!("task {:?} depends on unknown task {dep:?}", task.id),
                ));
            }
        }
    }
    if let Some((index, cycle)) = find_cycle(plan) {
        issues.push(issue(
            "dependency_cycle",
            format!("/tasks/{index}/depends_on"),
            format!("dependency cycle: {}", cycle.join(" → ")),
        ));
    }
    issues
}

/// A JSON pointer token.
fn escape(token: &str) -> String {
    token.replace('~', "~0").replace('/', "~1")
}

/// The first dependency cycle, as the index of the task where it was found and the task ids
/// along it, closed (`a → b → a`). Unknown dependencies are ignored here.
pub fn find_cycle(plan: &PlanSpec) -> Option<(usize, Vec<String>)> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Closed,
    }
    let index: HashMap<&str, usize> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (t.id.as_str(), i))
        .collect();
    let mut marks = vec![Mark::New; plan.tasks.len()];
    for start in 0..plan.tasks.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (task, next dependency to look at).
        let mut path: Vec<(usize, usize)> = vec![(start, 0)];
        marks[start] = Mark::Open;
        while let Some(&mut (task, ref mut next)) = path.last_mut() {
            let deps = &plan.tasks[task].depends_on;
            if *next >= deps.len() {
                marks[task] = Mark::Closed;
                path.pop();
                continue;
            }
            let dep = &deps[*next];
            *next += 1;
            let Some(&d) = index.get(dep.as_str()) else {
                continue;
            };
            match marks[d] {
                Mark::Closed => {}
                Mark::Open => {
                    let from = path.iter().position(|(t, _)| *t == d).unwrap_or(0);
                    let mut cycle: Vec<String> = path[from..]
                        .iter()
                        .map(|(t, _)| plan.tasks[*t].id.clone())
                        .collect();
                    cycle.push(plan.tasks[d].id.clone());
                    return Some((d, cycle));
                }
                Mark::New => {
                    marks[d] = Mark::Open;
                    path.push((d, 0));
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn roles() -> BTreeSet<String> {
        ["coder", "debugger", "reviewer"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect()
    }

    fn plan(tasks: Value) -> PlanSpec {
        serde_json::from_value(json!({"title": "t", "tasks": tasks})).unwrap()
    }

    #[test]
    fn a_diamond_is_valid() {
        let p = plan(json!([
            {"id": "a", "title": "a", "role": "coder"},
            {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]},
            {"id": "c", "title": "c", "role": "coder", "depends_on": ["a"]},
            {"id": "d", "title": "d", "role": "coder", "depends_on": ["b", "c"]},
        ]));
        assert_eq!(validate(&p, &roles()), vec![]);
    }

    #[test]
    fn a_cycle_is_named() {
        let p = plan(json!([
            {"id": "a", "title": "a", "role": "coder", "depends_on": ["c"]},
            {"id": "b", "title": "b", "role": "coder", "depends_on": ["a"]},
            {"id": "c", "title": "c", "role": "coder", "depends_on": ["b"]},
        ]));
        let issues = validate(&p, &roles());
        assert_eq!(issues.len(), 1, "{issues:?}");
        assert_eq!(issues[0].code, "dependency_cycle");
        assert_eq!(issues[0].message, "dependency cycle: a → c → b → a");
    }

    #[test]
    fn a_self_dependency_is_a_cycle() {
        let p = plan(json!([{"id": "a", "title": "a", "role": "coder", "depends_on": ["a"]}]));
        let issues = validate(&p, &roles());
        assert_eq!(issues[0].message, "dependency cycle: a → a");
    }

    #[test]
    fn unknown_dependencies_duplicates_and_roles_are_each_named() {
        let p = plan(json!([
            {"id": "a", "title": "a", "role": "coder", "depends_on": ["zz"]},
            {"id": "a", "title": "again", "role": "painter",
             "review": {"reviewer_role": "critic"}},
        ]));
        let issues = validate(&p, &roles());
        let codes: Vec<(&str, &str)> = issues
            .iter()
            .map(|i| (i.code, i.pointer.as_str()))
            .collect();
        assert_eq!(
            codes,
            vec![
                ("unknown_dependency", "/tasks/0/depends_on/0"),
                ("duplicate_task", "/tasks/1/id"),
                ("unknown_role", "/tasks/1/role"),
                ("unknown_role", "/tasks/1/review/reviewer_role"),
            ]
        );
        assert!(issues[0].message.contains("\"zz\""));
    }

    #[test]
    fn the_default_debugger_must_exist() {
        let p = plan(json!([{"id": "a", "title": "a", "role": "coder"}]));
        let only_coder: BTreeSet<String> = ["coder".to_owned()].into();
        let issues = validate(&p, &only_coder);
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].pointer, "/failure_routing");
        let mut routed = p;
        for cause in Cause::ALL {
            routed
                .failure_routing
                .insert(cause.as_str().into(), ROUTE_RETRY.into());
        }
        assert!(validate(&routed, &only_coder).is_empty());
    }
}
